"""Where the patients come from when the server will not list them: a roster.

`fhir.roster` (`--roster`) names a Group (`Group/ID`: its `member[].entity` Patient references) or
a CSV file of FHIR patient ids (`abc`, `Patient/abc`) or identifiers (`system|value`, resolved
with `Patient?identifier=system|value,...`). An identifier that matches no patient or several,
a line that is neither, or a Group member that is not a Patient is an `Issue`, never a failure.
Issues name the file's line or the Group's member number, never the identifier's value (an MRN).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fhirpanel.domain.records import Issue
from fhirpanel.errors import ConfigError, FhirHttpError, NotFoundError, SourceError
from fhirpanel.fhir.batching import BatchReader
from fhirpanel.fhir.parse import reference_id
from fhirpanel.fhir.referenced import refused_search
from fhirpanel.vocabulary import FHIR_ID_PATTERN

log = logging.getLogger(__name__)

_FHIR_ID = re.compile(rf"^{FHIR_ID_PATTERN}$")
_GROUP = re.compile(rf"^(?:.*/)?Group/(?P<id>{FHIR_ID_PATTERN})$")
# A header line: its first cell names the column rather than holding a patient.
_HEADERS = frozenset({"id", "patient", "patient_id", "fhir_id", "identifier", "mrn"})
MAX_ROSTER_LINES = 5_000_000  # a bound on reading a roster file


@dataclass(frozen=True)
class RosterSpec:
    """`Group/ID` or a file path, as given in `fhir.roster`."""

    group_id: str = ""
    path: str = ""

    def describe(self) -> str:
        return f"Group/{self.group_id}" if self.group_id else Path(self.path).name


def parse_roster_spec(text: str) -> RosterSpec:
    """`Group/ID` (also a Group's full URL) or the path of an existing file."""
    value = text.strip()
    match = _GROUP.match(value)
    if match is not None and not Path(value).is_file():
        return RosterSpec(group_id=match.group("id"))
    if not value:
        raise ConfigError("empty roster: give Group/ID or a CSV file (fhir.roster, --roster)")
    if not Path(value).is_file():
        raise ConfigError(
            f"roster {value!r} is neither Group/ID nor a file (fhir.roster, --roster)"
        )
    return RosterSpec(path=value)


@dataclass(frozen=True)
class RosterIdentifier:
    line: int
    system: str
    value: str = field(repr=False)  # an MRN or the like: kept out of repr and logs


@dataclass
class RosterLines:
    """A roster file read: ids (bare, in file order, once each), identifiers to resolve, issues."""

    ids: list[str] = field(default_factory=list)
    identifiers: list[RosterIdentifier] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def parse_roster_text(text: str, name: str = "roster") -> RosterLines:
    """One patient per line in the first CSV column: a FHIR id (`abc`, `Patient/abc`, a full
    URL) or an identifier (`system|value`, `|value`). Blank lines, `#` comments and a header
    line (`id`, `patient`, `identifier`, ...) are skipped; other columns are ignored."""
    out = RosterLines()
    seen_ids: set[str] = set()
    seen_identifiers: set[tuple[str, str]] = set()
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if number > MAX_ROSTER_LINES:
            raise ConfigError(f"{name}: more than {MAX_ROSTER_LINES} lines")
        cell = row[0].strip() if row else ""
        if not cell or cell.startswith("#"):
            continue
        if number == 1 and cell.lower() in _HEADERS:
            continue
        where = f"roster {name} line {number}"
        if "|" in cell:
            system, _, value = cell.partition("|")
            if not value.strip():
                out.issues.append(Issue(where, "identifier without a value", "skipped"))
                continue
            key = (system.strip(), value.strip())
            if key not in seen_identifiers:
                seen_identifiers.add(key)
                out.identifiers.append(RosterIdentifier(number, *key))
            continue
        ref = reference_id(cell, "Patient") if "/" in cell else f"Patient/{cell}"
        rid = ref.split("/", 1)[1] if ref else ""
        if not _FHIR_ID.match(rid):
            out.issues.append(
                Issue(where, "neither a Patient id nor a system|value identifier", "skipped")
            )
            continue
        if rid not in seen_ids:
            seen_ids.add(rid)
            out.ids.append(rid)
    return out


def read_roster_file(path: str | Path) -> RosterLines:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read roster file {file}: {type(exc).__name__}") from exc
    return parse_roster_text(text, file.name)


@dataclass
class Roster:
    """The patients to read (bare ids, in roster order) and what could not be used."""

    patients: list[str]
    issues: list[Issue] = field(default_factory=list)
    label: str = ""


def load_roster(spec: RosterSpec, reader: BatchReader) -> Roster:
    """The roster's patients, read from the server (a Group, or a file's identifiers)."""
    if spec.group_id:
        return read_group(reader, spec.group_id)
    lines = read_roster_file(spec.path)
    issues = list(lines.issues)
    ids = list(lines.ids)
    if lines.identifiers:
        resolved, problems = resolve_identifiers(reader, lines.identifiers, spec.describe())
        issues.extend(problems)
        known = set(ids)
        for rid in resolved:
            if rid not in known:
                known.add(rid)
                ids.append(rid)
    log.info(
        "roster %s: %d patients (%d ids, %d identifiers), %d issues",
        spec.describe(),
        len(ids),
        len(lines.ids),
        len(lines.identifiers),
        len(issues),
    )
    return Roster(ids, issues, spec.describe())


def read_group(reader: BatchReader, group_id: str) -> Roster:
    """`Group/ID`'s Patient members (inactive members left out). A Group that lists fewer
    members than its `quantity` says (a server that cuts large Groups short) is completed with
    `Patient?_has:Group:member:_id=ID`; if that is refused the read fails rather than use part
    of the roster."""
    group = fetch_group(reader.client, group_id, "roster")
    issues: list[Issue] = []
    ids: dict[str, None] = {}
    members = group.get("member")
    listed = members if isinstance(members, list) else []
    for number, member in enumerate(listed, start=1):
        if not isinstance(member, Mapping) or member.get("inactive") is True:
            continue
        ref = reference_id(member.get("entity"), "Patient")
        if ref is None:
            issues.append(
                Issue(f"Group/{group_id}", f"member {number} is not a Patient reference", "skipped")
            )
            continue
        ids.setdefault(ref.split("/", 1)[1], None)
    quantity = group.get("quantity")
    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity > len(listed):
        log.info(
            "Group/%s lists %d of its %d members: reading the rest by search",
            group_id,
            len(listed),
            quantity,
        )
        for rid in _group_members_by_search(reader, group_id, len(listed), quantity):
            ids.setdefault(rid, None)
    log.info("roster Group/%s: %d patients", group_id, len(ids))
    return Roster(list(ids), issues, f"Group/{group_id}")


class GroupReader(Protocol):
    def read(self, resource_type: str, resource_id: str) -> Mapping[str, Any]: ...


def fetch_group(client: GroupReader, group_id: str, what: str) -> Mapping[str, Any]:
    """`Group/ID` read from the server (a roster, a payer's member list); not found, or not a
    Group, is a SourceError naming `what` it was read for."""
    try:
        group = client.read("Group", group_id)
    except NotFoundError as exc:
        raise SourceError(f"{what} Group/{group_id} not found: {exc}") from exc
    if not isinstance(group, Mapping) or group.get("resourceType") not in (None, "Group"):
        raise SourceError(f"{what} Group/{group_id}: the server did not return a Group")
    return group


def _group_members_by_search(
    reader: BatchReader, group_id: str, listed: int, quantity: int
) -> Iterator[str]:
    client = reader.client
    try:
        for patient in client.search("Patient", [("_has:Group:member:_id", group_id)]):
            rid = patient.get("id")
            if isinstance(rid, str):
                yield rid
    except FhirHttpError as exc:
        if not refused_search(exc):
            raise
        raise SourceError(
            f"roster Group/{group_id} lists {listed} of its {quantity} members and the server "
            f"refuses Patient?_has:Group:member:_id (HTTP {exc.status}): use a Bulk Group "
            "export (bulk:BASE/Group/ID) or a roster file"
        ) from exc


def resolve_identifiers(
    reader: BatchReader, identifiers: Sequence[RosterIdentifier], name: str
) -> tuple[list[str], list[Issue]]:
    """Patient ids for `system|value` identifiers: `Patient?identifier=s|v1,s|v2,...` in
    batches (one at a time where the server refuses lists). Exactly one patient per identifier
    is used; none or several is an issue naming the line and the system only."""
    tokens = [f"{i.system}|{i.value}" if i.system else f"|{i.value}" for i in identifiers]
    matches: dict[tuple[str, str], set[str]] = {(i.system, i.value): set() for i in identifiers}
    for patient in reader.search("Patient", "identifier", tokens):
        rid = patient.get("id")
        if not isinstance(rid, str):
            continue
        for carried in _list(patient.get("identifier")):
            system, value = carried.get("system") or "", carried.get("value")
            if not isinstance(value, str):
                continue
            if (system, value) in matches:
                matches[(system, value)].add(rid)
    resolved: list[str] = []
    issues: list[Issue] = []
    for ident in identifiers:
        found = matches[(ident.system, ident.value)]
        where = f"roster {name} line {ident.line}"
        system = ident.system or "no system"
        if len(found) == 1:
            resolved.append(next(iter(found)))
        elif not found:
            issues.append(Issue(where, f"identifier ({system}) matches no patient", "skipped"))
        else:
            issues.append(
                Issue(
                    where,
                    f"identifier ({system}) matches {len(found)} patients: left out",
                    "skipped",
                )
            )
    return resolved, issues


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
