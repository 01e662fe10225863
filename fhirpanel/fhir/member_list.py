"""The payer's member attribution list the `risk-product` step follows (a setting:
`attribution.risk_product_list`).

Three forms:

- a JSON file holding a Da Vinci ATR-style Group: `member[].entity` a Patient reference, the
  attributed clinician in the member's `ext-attributedProvider` extension (a Practitioner or
  PractitionerRole reference; HL7 Da Vinci Member Attribution List IG, STU 2,
  StructureDefinition-ext-attributedProvider);
- `Group/ID` on the FHIR server, read through the client (roster.py `fetch_group`);
- a CSV file with `patient,practitioner` columns (FHIR references or bare ids; a bare
  clinician id is a Practitioner).

A member the list says is no longer one is left out with an issue: `member.inactive = true`, a
`member.period` that ended before (or starts after) the as-of date, or the ATR `ext-changeType`
code `dropped` ("member removed"; `new`, `changed` and `nochange` are members, per the IG's
CodeSystem atr-changetype). A patient listed twice with different clinicians, an Organization in
place of a clinician and a malformed entry are issues too. A list that cannot be read at all
(missing file, not JSON, no Group) is a ConfigError; a Group the server does not have is a
SourceError. Whether the patient is ours and the clinician eligible is decided against the
population (domain/members.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from fhirpanel.domain.members import MemberList
from fhirpanel.domain.records import Issue
from fhirpanel.errors import ConfigError
from fhirpanel.fhir.parse import reference_id
from fhirpanel.fhir.roster import GroupReader, fetch_group

log = logging.getLogger(__name__)

ATR = "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/"
ATTRIBUTED_PROVIDER = ATR + "ext-attributedProvider"
CHANGE_TYPE = ATR + "ext-changeType"
DROPPED = "dropped"  # CodeSystem atr-changetype: "Member has been dropped from the list"
CLINICIAN_TYPES = ("Practitioner", "PractitionerRole")
MAX_LIST_ROWS = 5_000_000

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_GROUP = re.compile(r"^(?:.*/)?Group/(?P<id>[A-Za-z0-9\-.]{1,64})$")
SETTING = "attribution.risk_product_list"


@dataclass(frozen=True)
class MemberListSpec:
    """`Group/ID` or a file path, as given in the setting."""

    group_id: str = ""
    path: str = ""

    @property
    def label(self) -> str:
        return f"Group/{self.group_id}" if self.group_id else Path(self.path).name


def parse_member_list_spec(text: str) -> MemberListSpec:
    value = text.strip()
    if not value:
        raise ConfigError(f"{SETTING}: empty; give a Group JSON file, Group/ID or a CSV file")
    match = _GROUP.match(value)
    if match is not None and not Path(value).is_file():
        return MemberListSpec(group_id=match.group("id"))
    if not Path(value).is_file():
        raise ConfigError(f"{SETTING}: {value!r} is neither Group/ID nor a file")
    return MemberListSpec(path=value)


@dataclass
class _Collector:
    """Members in list order; a patient listed again with another clinician is dropped."""

    label: str
    members: dict[str, str] = field(default_factory=dict)
    clashes: set[str] = field(default_factory=set)
    issues: list[Issue] = field(default_factory=list)
    entries: int = 0

    def issue(self, resource: str, where: str, problem: str) -> None:
        place = f"risk-product list {self.label}" + (f" {where}" if where else "")
        self.issues.append(Issue(resource, f"{place}: {problem}"))

    def add(self, patient: str, clinician: str, where: str) -> None:
        if patient in self.clashes:
            return
        listed = self.members.get(patient)
        if listed is None:
            self.members[patient] = clinician
        elif listed != clinician:
            del self.members[patient]
            self.clashes.add(patient)
            self.issue(
                patient,
                where,
                f"listed with {listed} and {clinician}: left to the other steps",
            )

    def result(self) -> MemberList:
        return MemberList(self.label, dict(self.members), tuple(self.issues), self.entries)


def _clinician(value: Any) -> tuple[str | None, str]:
    """(a Practitioner or PractitionerRole reference, or None with why)."""
    text = value.get("reference") if isinstance(value, Mapping) else value
    if not isinstance(text, str) or not text.strip():
        return None, "no attributed clinician"
    text = text.strip()
    if "/" not in text:
        return (f"Practitioner/{text}", "") if _FHIR_ID.match(text) else (None, "bad clinician")
    ref = reference_id(text)
    if ref is None:
        return None, "clinician is not a resolvable reference"
    if ref.split("/", 1)[0] not in CLINICIAN_TYPES:
        return None, f"attributed to {ref}, not a Practitioner or PractitionerRole"
    return ref, ""


def _patient(value: Any) -> str | None:
    text = value.get("reference") if isinstance(value, Mapping) else value
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    if "/" not in text:
        return f"Patient/{text}" if _FHIR_ID.match(text) else None
    return reference_id(text, "Patient")


def _extension(member: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    for ext in member.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == url:
            return ext
    return None


def _day(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _inactive_reason(member: Mapping[str, Any], as_of: date) -> str | None:
    if member.get("inactive") is True:
        return "inactive member: ignored"
    change = _extension(member, CHANGE_TYPE)
    if change is not None:
        code = change.get("valueCode")
        if code is None and isinstance(change.get("valueCoding"), Mapping):
            code = change["valueCoding"].get("code")
        if code == DROPPED:
            return "dropped from the list (ATR changeType): ignored"
    period = member.get("period")
    if isinstance(period, Mapping):
        end, start = _day(period.get("end")), _day(period.get("start"))
        if end is not None and end < as_of:
            return f"membership ended {end.isoformat()}: ignored"
        if start is not None and start > as_of:
            return f"membership starts {start.isoformat()}, after the as-of date: ignored"
    return None


def members_from_group(group: Mapping[str, Any], label: str, as_of: date) -> MemberList:
    """An ATR-style Group's members as of `as_of`."""
    out = _Collector(label)
    members = group.get("member")
    listed = members if isinstance(members, list) else []
    for number, member in enumerate(listed, start=1):
        out.entries += 1
        where = f"member {number}"
        if not isinstance(member, Mapping):
            out.issue(label, where, "not a member object: skipped")
            continue
        patient = _patient(member.get("entity"))
        if patient is None:
            out.issue(label, where, "entity is not a Patient reference: skipped")
            continue
        inactive = _inactive_reason(member, as_of)
        if inactive is not None:
            out.issue(patient, where, inactive)
            continue
        provider = _extension(member, ATTRIBUTED_PROVIDER)
        clinician, why = _clinician(provider.get("valueReference") if provider else None)
        if clinician is None:
            out.issue(patient, where, f"{why}: skipped")
            continue
        out.add(patient, clinician, where)
    quantity = group.get("quantity")
    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity > len(listed):
        # Members a server leaves out of the Group carry no attributed clinician anywhere else.
        out.issue(label, "", f"lists {len(listed)} of its {quantity} members: the rest are unused")
    return out.result()


def members_from_csv(text: str, label: str) -> MemberList:
    """`patient,practitioner` rows; a header naming both columns may put them anywhere."""
    out = _Collector(label)
    rows = csv.reader(io.StringIO(text))
    columns = (0, 1)
    first = True  # the first row that is neither blank nor a comment may be the header
    for number, row in enumerate(rows, start=1):
        if number > MAX_LIST_ROWS:
            raise ConfigError(f"{SETTING}: {label} has more than {MAX_LIST_ROWS} lines")
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        lowered = [c.lower() for c in cells]
        header, first = first and "patient" in lowered, False
        if header:
            if "practitioner" not in lowered:
                raise ConfigError(f"{SETTING}: {label} has no `practitioner` column")
            columns = (lowered.index("patient"), lowered.index("practitioner"))
            continue
        out.entries += 1
        where = f"line {number}"
        if len(cells) <= max(columns):
            out.issue(label, where, "fewer than two columns: skipped")
            continue
        patient = _patient(cells[columns[0]])
        if patient is None:
            out.issue(label, where, "not a Patient id or reference: skipped")
            continue
        clinician, why = _clinician(cells[columns[1]])
        if clinician is None:
            out.issue(patient, where, f"{why}: skipped")
            continue
        out.add(patient, clinician, where)
    return out.result()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{SETTING}: cannot read {path}: {type(exc).__name__}") from exc


def read_member_list(
    spec: MemberListSpec, as_of: date, client: Callable[[], GroupReader] | None = None
) -> MemberList:
    """The list as of `as_of`. `client` gives a FHIR client for `Group/ID` (None: no server)."""
    if spec.group_id:
        if client is None:
            raise ConfigError(
                f"{SETTING}: Group/{spec.group_id} is read from a FHIR server; this pass has "
                "none (give fhir.base_url, or a Group JSON or CSV file)"
            )
        group = fetch_group(client(), spec.group_id, "risk-product list")
        found = members_from_group(group, spec.label, as_of)
    else:
        path = Path(spec.path)
        text = _read_text(path)
        if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            found = members_from_group(_group_json(text, path), spec.label, as_of)
        else:
            found = members_from_csv(text, spec.label)
    log.info(
        "risk-product list %s: %d members of %d entries, %d issues",
        spec.label,
        len(found.members),
        found.entries,
        len(found.issues),
    )
    return found


def _group_json(text: str, path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{SETTING}: {path.name} is not JSON (line {exc.lineno})") from exc
    if not isinstance(data, Mapping) or data.get("resourceType") != "Group":
        raise ConfigError(f"{SETTING}: {path.name} holds no Group resource")
    return data


__all__ = [
    "ATTRIBUTED_PROVIDER",
    "CHANGE_TYPE",
    "MemberListSpec",
    "members_from_csv",
    "members_from_group",
    "parse_member_list_spec",
    "read_member_list",
]
