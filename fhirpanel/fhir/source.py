"""Where resources come from: a FHIR server, a Bulk Data NDJSON directory or export, or memory.

A source yields raw resources (plain dicts) per type. A line or entry it cannot even read as a
resource comes out as an `Issue` instead, so one bad line never stops a run.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

import orjson

from fhirpanel.config import BulkSettings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import ConfigError, FhirHttpError, SourceError, one_line
from fhirpanel.fhir.batching import BatchReader
from fhirpanel.fhir.referenced import (
    REFERENCED_TYPES,
    ReferencedReads,
    References,
    refused_search,
)
from fhirpanel.fhir.roster import Roster, RosterSpec, load_roster, parse_roster_spec

if TYPE_CHECKING:
    from fhirpanel.fhir.client import FhirClient

log = logging.getLogger(__name__)

Item = dict[str, Any] | Issue


class FhirSource(Protocol):
    """What ingest needs from anything that holds FHIR resources."""

    def describe(self) -> str:
        """A short label for logs and reports (no credentials)."""
        ...

    def read(self, resource_type: str) -> Iterator[Item]:
        """Every resource of a type."""
        ...

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        """Resources of a type belonging to the given patients (`Patient/id`); for Patient
        itself, those patients."""
        ...


class MemorySource:
    """An in-memory fake for unit tests and for replays."""

    def __init__(self, resources: Iterable[Mapping[str, Any]]) -> None:
        self._resources = [dict(r) for r in resources]

    def describe(self) -> str:
        return f"memory ({len(self._resources)} resources)"

    def read(self, resource_type: str) -> Iterator[Item]:
        for res in self._resources:
            if res.get("resourceType") == resource_type:
                yield res

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        wanted = set(patients)
        for res in self.read(resource_type):
            assert isinstance(res, dict)  # noqa: S101 - read() yields dicts here
            if _belongs_to(res, wanted):
                yield res


def _belongs_to(res: Mapping[str, Any], patients: set[str]) -> bool:
    if res.get("resourceType") == "Patient":
        return f"Patient/{res.get('id')}" in patients
    subject = res.get("subject")
    ref = subject.get("reference") if isinstance(subject, Mapping) else None
    return isinstance(ref, str) and "/".join(ref.split("/")[-2:]) in patients


_NDJSON_NAME = re.compile(
    r"^(?:\d+\.)?(?P<type>[A-Za-z]+)(?:[.-]\d+)*\.ndjson(?:\.gz)?$", re.IGNORECASE
)
# Without these a run would read a population with no patients or no visits: refused.
REQUIRED_TYPES = ("Patient", "Encounter")
# What a truncated or corrupt file raises part-way through a read.
_BROKEN_FILE = (EOFError, gzip.BadGzipFile, zlib.error, OSError)


class NdjsonSource:
    """A directory of Bulk Data NDJSON files: `Patient.ndjson`, `Patient.1.ndjson`,
    `1.Patient.ndjson`, optionally gzipped (`.ndjson.gz`); names match in any case
    (`patient.ndjson`, `PATIENT.NDJSON.GZ`). Streams line by line: constant memory per line.

    Reading a type in `require` (Patient and Encounter unless told otherwise) with no file for it
    is a SourceError, and so is a file that cannot be read to its end (a truncated or corrupt
    `.gz`): a short read is never taken for a small population. A bad line is an `Issue`."""

    def __init__(self, directory: str | Path, require: Sequence[str] = REQUIRED_TYPES) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(f"NDJSON source directory not found: {self.directory}")
        self.require = frozenset(require)

    def describe(self) -> str:
        return f"ndjson:{self.directory}"

    def files_for(self, resource_type: str) -> list[Path]:
        found = []
        wanted = resource_type.lower()
        try:
            for path in sorted(self.directory.iterdir()):
                match = _NDJSON_NAME.match(path.name)
                if match and match.group("type").lower() == wanted and path.is_file():
                    found.append(path)
        except OSError as exc:
            raise SourceError(f"cannot list {self.directory}: {_why(exc)}") from exc
        return found

    def read(self, resource_type: str) -> Iterator[Item]:
        files = self.files_for(resource_type)
        if not files and resource_type in self.require:
            raise SourceError(
                f"{self.describe()} has no {resource_type} file (looked for "
                f"{resource_type}*.ndjson[.gz], any case)"
            )
        for path in files:
            yield from self._read_file(path, resource_type)

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        wanted = set(patients)
        for item in self.read(resource_type):
            if isinstance(item, Issue) or _belongs_to(item, wanted):
                yield item

    def _read_file(self, path: Path, resource_type: str) -> Iterator[Item]:
        try:
            handle = cast(
                IO[bytes],
                gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb"),
            )
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {_why(exc)}") from exc
        with handle:
            lines = enumerate(handle, start=1)
            while True:
                try:
                    lineno, line = next(lines)
                except StopIteration:
                    return
                except _BROKEN_FILE as exc:
                    raise SourceError(
                        f"{self.describe()}: {path.name} could not be read to its "
                        f"end ({_why(exc)}): a truncated or corrupt file; nothing "
                        "from this source was used"
                    ) from exc
                if not line.strip():
                    continue
                where = f"{path.name}:{lineno}"
                try:
                    res = orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield Issue(f"{resource_type}/? ({where})", "invalid JSON line")
                    continue
                if not isinstance(res, dict):
                    yield Issue(f"{resource_type}/? ({where})", "line is not a JSON object")
                    continue
                if res.get("resourceType") != resource_type:
                    yield Issue(
                        f"{resource_type}/? ({where})",
                        f"resourceType {repr(res.get('resourceType'))[:60]} in a "
                        f"{resource_type} file",
                    )
                    continue
                yield res


def _why(exc: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Patients and their records first, then what they reference: a source that must read clinicians
# and organisations by reference (referenced.py) knows the references by then. Ingest reads in
# this order where a source gives it (`read_order`); the report does not depend on the order.
PATIENTS_FIRST = (
    "Patient",
    "Encounter",
    "Condition",
    "PractitionerRole",
    "Practitioner",
    "Organization",
)


class ServerSource:
    """A FHIR server through `FhirClient` (paged searches). Clinicians and organisations whose
    population search the server refuses (400, 403, 405, 422) are read by the references to them
    in what was read before (referenced.py); a refused Patient, Encounter or Condition search
    fails with a pointer to roster reads."""

    read_order = PATIENTS_FIRST

    def __init__(self, client: FhirClient) -> None:
        self.client = client
        self.references = References()
        self.refused: dict[str, str] = {}  # type -> the refusal of its population search
        self._reader: BatchReader | None = None
        self._referenced: ReferencedReads | None = None

    def describe(self) -> str:
        return str(self.client.base_url)

    @property
    def reader(self) -> BatchReader:
        if self._reader is None:
            self._reader = BatchReader(self.client)
        return self._reader

    @property
    def referenced(self) -> ReferencedReads:
        if self._referenced is None:
            self._referenced = ReferencedReads(self.reader, self.references)
        return self._referenced

    def read(self, resource_type: str) -> Iterator[Item]:
        if resource_type in REFERENCED_TYPES and (
            self.client.settings.read_mode == "roster" or resource_type in self.refused
        ):
            yield from self.read_referenced(resource_type)
            return
        started = False
        try:
            for resource in self.client.search(resource_type):
                started = True
                self.references.note(resource)
                yield resource
        except FhirHttpError as exc:
            if started or not refused_search(exc):
                raise
            if resource_type not in REFERENCED_TYPES:
                raise population_refused(resource_type, exc) from exc
            self.refused[resource_type] = one_line(exc)
            log.warning(
                "%s?: population search refused (HTTP %d): reading those referenced instead",
                resource_type,
                exc.status,
            )
            yield from self.read_referenced(resource_type)

    def read_referenced(self, resource_type: str) -> Iterator[Item]:
        """Those of a type that what was read so far references (referenced.py)."""
        try:
            yield from self.referenced.read(resource_type)
        finally:
            self.reader.close()  # the extra clients; the reader opens new ones when asked

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        if resource_type == "Patient":
            ids = [p.split("/", 1)[1] for p in patients]
            found = self.client.search_by_patients("Patient", ids, param="_id")
        else:
            found = self.client.search_by_patients(resource_type, list(patients))
        for resource in found:
            self.references.note(resource)
            yield resource

    def close(self) -> None:
        """The extra clients of batched reads (the client itself stays: write-back uses it)."""
        if self._reader is not None:
            self._reader.close()


def population_refused(resource_type: str, exc: FhirHttpError) -> FhirHttpError:
    """The refusal of a population search, of the same class, saying how to read instead."""
    prefix = f"HTTP {exc.status} from {exc.url or 'server'}: "
    message = str(exc).removeprefix(prefix)
    hint = (
        f"the server refuses {resource_type}? population searches: read by roster (--roster "
        "Group/ID or a CSV file, fhir.roster), or from a bulk:BASE/Group/ID export; "
        "`fhirpanel check-server` recommends the profile"
    )
    return type(exc)(
        exc.status,
        f"{message}; {hint}",
        url=exc.url,
        outcome=exc.outcome,
        hapi_code=exc.hapi_code,
    )


class RosterSource(ServerSource):
    """A server that will not list its patients (Epic, Oracle Health: docs/profiles.md), read
    through a roster (roster.py): Patient by `_id=a,b,c`, Encounter and Condition by
    `patient=a,b,c` in batches (batching.py), Encounter from a date floor (`set_encounter_floor`),
    clinicians and organisations by reference (referenced.py). The analysis is unchanged: this
    is a `FhirSource` like the others. Never a population search."""

    def __init__(self, client: FhirClient, roster: RosterSpec) -> None:
        super().__init__(client)
        self.spec = roster
        self.encounter_floor: date | None = None
        self._roster: Roster | None = None
        self._pending: list[Issue] = []

    def describe(self) -> str:
        return f"{self.client.base_url} (roster {self.spec.describe()})"

    def set_encounter_floor(self, day: date | None) -> None:
        """Read only encounters on or after `day` (`Encounter?date=ge{day}`); None: all."""
        self.encounter_floor = day

    def roster(self) -> Roster:
        """The roster, read once (a Group read, or the file and its identifiers)."""
        if self._roster is None:
            roster = load_roster(self.spec, self.reader)
            if not roster.patients:
                # Surely a wrong Group or file: read as it is, a refresh would empty the store.
                raise SourceError(
                    f"roster {self.spec.describe()} lists no patient the server knows "
                    f"({len(roster.issues)} issues): nothing was read"
                )
            self._roster = roster
            self._pending = list(roster.issues)
        return self._roster

    def patient_ids(self) -> list[str]:
        return list(self.roster().patients)

    def read(self, resource_type: str) -> Iterator[Item]:
        if resource_type in REFERENCED_TYPES:
            yield from self.read_referenced(resource_type)
            return
        roster = self.roster()
        pending, self._pending = self._pending, []
        yield from pending
        if resource_type != "Patient":
            yield from self._scoped(resource_type, roster.patients)
            return
        found: set[str] = set()
        for item in self._scoped("Patient", roster.patients):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                found.add(item["id"])
            yield item
        for rid in roster.patients:
            if rid not in found:
                yield Issue(
                    f"Patient/{rid}", "on the roster but not found on the server", "recorded"
                )

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        ids = [p.rsplit("/", 1)[-1] for p in patients]
        yield from self._scoped(resource_type, ids)

    def _scoped(
        self, resource_type: str, ids: Sequence[str], params: Sequence[tuple[str, str]] = ()
    ) -> Iterator[Item]:
        try:
            if resource_type == "Patient":
                found = self.reader.search("Patient", "_id", ids, params)
            else:
                extra = list(params)
                if resource_type == "Encounter" and self.encounter_floor is not None:
                    extra.append(("date", f"ge{self.encounter_floor.isoformat()}"))
                found = self.reader.search(resource_type, "patient", ids, extra)
            yield from self.references.noting(found)
        finally:
            self.reader.close()

    def changed_since(self, resource_type: str, since: str) -> Iterator[dict[str, Any]]:
        """The incremental pass's poll over the roster, batch by batch: what changed after
        `since` (`_lastUpdated=gt{since}`), or with `fhir.roster_poll = "date"`, Encounters
        dated on or after its day (`date=ge{day}`; Patient and Condition then wait for the
        full refresh)."""
        ids = self.roster().patients
        if self.client.settings.roster_poll == "date":
            if resource_type != "Encounter":
                return
            params = [("date", f"ge{since[:10]}")]
        else:
            params = [("_lastUpdated", f"gt{since}")]
        for item in self._scoped(resource_type, ids, params):
            if isinstance(item, dict):
                yield item


def source_from_spec(
    spec: str, client_factory: Any = None, bulk: BulkSettings | None = None
) -> FhirSource:
    """`ndjson:DIR`, an http(s) FHIR base URL, or `bulk:BASE[/Group/ID]` (a Bulk Data export
    with `bulk` settings). `client_factory(base_url)` builds the client; its settings'
    `roster` (or `read_mode = "roster"`) makes a server source a `RosterSource`, and a Bulk
    export without a Group exports the roster's Group."""
    if spec.startswith("ndjson:"):
        return NdjsonSource(spec.removeprefix("ndjson:"))
    if spec.startswith("bulk:"):
        from fhirpanel.fhir.bulk import BulkExport, BulkSource, parse_bulk_spec

        target = parse_bulk_spec(spec)
        if client_factory is None:
            raise ConfigError("a bulk: source needs a client")
        client = client_factory(target.base_url)
        group = target.group_id or None
        roster = getattr(client.settings, "roster", "")
        if roster and group is None and not (bulk and bulk.group_id):
            roster_spec = parse_roster_spec(roster)
            if not roster_spec.group_id:
                raise ConfigError(
                    "a bulk: source exports a Group: give bulk:BASE/Group/ID, or a Group "
                    "roster (fhir.roster = Group/ID), not a roster file"
                )
            group = roster_spec.group_id
        return BulkSource(BulkExport(client, bulk, group_id=group))
    if spec.startswith(("http://", "https://")):
        if client_factory is None:
            raise ConfigError("a FHIR base URL source needs a client")
        client = client_factory(spec)
        settings = client.settings
        if settings.roster:
            return RosterSource(client, parse_roster_spec(settings.roster))
        if settings.read_mode == "roster":
            raise ConfigError(
                "fhir.read_mode = roster (profile "
                f"{settings.profile}) needs a roster: --roster Group/ID or a CSV file of "
                "patients (fhir.roster, FHIRPANEL_FHIR_ROSTER), or a bulk:BASE/Group/ID source"
            )
        return ServerSource(client)
    raise ConfigError(
        f"unknown source {spec!r}: give a FHIR base URL (http://...), ndjson:DIRECTORY or "
        "bulk:FHIR-BASE-URL"
    )
