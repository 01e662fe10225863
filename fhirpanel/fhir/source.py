"""Where resources come from: a FHIR server, a Bulk Data NDJSON directory or export, or memory.

A source yields raw resources (plain dicts) per type. A line or entry it cannot even read as a
resource comes out as an `Issue` instead, so one bad line never stops a run.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

import orjson

from fhirpanel.config import BulkSettings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from fhirpanel.fhir.client import FhirClient

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


class ServerSource:
    """A FHIR server through `FhirClient` (paged searches)."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client

    def describe(self) -> str:
        return str(self.client.base_url)

    def read(self, resource_type: str) -> Iterator[Item]:
        yield from self.client.search(resource_type)

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        if resource_type == "Patient":
            ids = [p.split("/", 1)[1] for p in patients]
            yield from self.client.search_by_patients("Patient", ids, param="_id")
        else:
            yield from self.client.search_by_patients(resource_type, list(patients))


def source_from_spec(
    spec: str, client_factory: Any = None, bulk: BulkSettings | None = None
) -> FhirSource:
    """`ndjson:DIR`, an http(s) FHIR base URL, or `bulk:BASE[/Group/ID]` (a Bulk Data export
    with `bulk` settings). `client_factory(base_url)` builds the client."""
    if spec.startswith("ndjson:"):
        return NdjsonSource(spec.removeprefix("ndjson:"))
    if spec.startswith("bulk:"):
        from fhirpanel.fhir.bulk import BulkExport, BulkSource, parse_bulk_spec

        target = parse_bulk_spec(spec)
        if client_factory is None:
            raise ConfigError("a bulk: source needs a client")
        export = BulkExport(client_factory(target.base_url), bulk, group_id=target.group_id or None)
        return BulkSource(export)
    if spec.startswith(("http://", "https://")):
        if client_factory is None:
            raise ConfigError("a FHIR base URL source needs a client")
        return ServerSource(client_factory(spec))
    raise ConfigError(
        f"unknown source {spec!r}: give a FHIR base URL (http://...), ndjson:DIRECTORY or "
        "bulk:FHIR-BASE-URL"
    )
