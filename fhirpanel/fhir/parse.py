"""FHIR R4 JSON (plain dicts) to domain records. Bad input becomes an `Issue`, never an exception.

Incoming resources are never parsed into `fhir.resources` models: those are slow and large
(docs/architecture.md); these functions read only the fields the domain needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from fhirpanel.domain.records import (
    NPI,
    Code,
    ConditionRecord,
    EncounterRecord,
    Issue,
    OrganizationRecord,
    PatientRecord,
    PractitionerRecord,
    PractitionerRoleRecord,
)

Resource = Mapping[str, Any]
Record = (
    PatientRecord
    | EncounterRecord
    | ConditionRecord
    | PractitionerRecord
    | PractitionerRoleRecord
    | OrganizationRecord
)

# Participant types in the order docs/methods.md s.1 prefers them: primary performer, then attender.
PREFERRED_PARTICIPANT_TYPES = ("PPRF", "ATND")


class ParseProblem(ValueError):
    """A resource this module cannot turn into a record; the message says why."""


class _Interner:
    """Share equal Code objects and strings across records: a large population repeats a few
    hundred codes millions of times."""

    def __init__(self) -> None:
        self._codes: dict[tuple[str, str, str | None], Code] = {}
        self._strings: dict[str, str] = {}

    def code(self, system: str, code: str, display: str | None) -> Code:
        key = (system, code, display)
        found = self._codes.get(key)
        if found is None:
            found = self._codes[key] = Code(system, code, display)
        return found

    def string(self, value: str) -> str:
        return self._strings.setdefault(value, value)


_INTERN = _Interner()


# ---------------------------------------------------------------- references, dates, codes


def reference_id(value: Any, expected_type: str | None = None) -> str | None:
    """`Type/id` from a Reference dict or string; absolute URLs and `_history` suffixes are cut.

    Returns None for contained (`#x`), `urn:` and conditional references, and for a type other
    than `expected_type`.
    """
    ref = value.get("reference") if isinstance(value, Mapping) else value
    if not isinstance(ref, str) or not ref or ref.startswith(("#", "urn:")) or "?" in ref:
        return None
    parts = [p for p in ref.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2:
        return None
    rtype, rid = parts[-2], parts[-1]
    if not rtype[:1].isupper() or (expected_type is not None and rtype != expected_type):
        return None
    return f"{rtype}/{rid}"


def parse_date(value: Any) -> date | None:
    """A FHIR date or dateTime to a date; partial dates (YYYY, YYYY-MM) take the first day.
    Raises ParseProblem on a malformed value; None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseProblem(f"bad date {_shown(value)}")
    text = value.strip()
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        if len(text) == 10:
            return date.fromisoformat(text)
        return parse_instant(text).date() if "T" in text else date.fromisoformat(text[:10])
    except ValueError as exc:
        raise ParseProblem(f"bad date {_shown(value)}") from exc


def _shown(value: Any) -> str:
    """A value for an issue line: its repr, cut short (a server may send anything)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fhir_instant(moment: datetime) -> str:
    """An aware datetime as a FHIR instant in UTC with milliseconds, always. A search value's
    precision sets its range (FHIR search, "date"): `gt2026-11-23T13:00:31Z` means after
    13:00:32, so a value with whole seconds would skip the rest of its second."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a FHIR instant needs a timezone-aware datetime")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(value: Any) -> datetime:
    """A FHIR dateTime/instant to an aware UTC datetime; date-only values are midnight UTC.
    HAPI sends local offsets (-05:00) as well as Z: both are honoured."""
    if not isinstance(value, str) or not value:
        raise ParseProblem(f"bad dateTime {_shown(value)}")
    try:
        if "T" not in value:
            day = parse_date(value)
            assert day is not None  # noqa: S101 - parse_date returns a date for a str
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:  # FHIR requires a zone when there is a time; assume UTC
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # OverflowError: 0001-01-01T00:00:00+01:00
        raise ParseProblem(f"bad dateTime {_shown(value)}") from exc


def _optional_instant(value: Any) -> datetime | None:
    return None if value is None else parse_instant(value)


def codings(concept: Any) -> tuple[Code, ...]:
    """The (system, code) codings of a CodeableConcept (or a bare Coding)."""
    if not isinstance(concept, Mapping):
        return ()
    items = concept.get("coding") if "coding" in concept else [concept]
    out = []
    for item in items or ():
        if not isinstance(item, Mapping):
            continue
        system, code = item.get("system"), item.get("code")
        if isinstance(system, str) and isinstance(code, str) and code:
            display = item.get("display")
            out.append(_INTERN.code(system, code, display if isinstance(display, str) else None))
    return tuple(out)


def _concepts(values: Any) -> tuple[Code, ...]:
    if isinstance(values, Mapping):
        values = [values]
    if not isinstance(values, list):
        return ()
    out: list[Code] = []
    for concept in values:
        out.extend(codings(concept))
    return tuple(out)


def _texts(values: Any) -> tuple[str, ...]:
    """Lower-cased `text` and coding displays of CodeableConcepts, for text-label matching."""
    if isinstance(values, Mapping):
        values = [values]
    if not isinstance(values, list):
        return ()
    out: list[str] = []
    for concept in values:
        if not isinstance(concept, Mapping):
            continue
        if isinstance(concept.get("text"), str):
            out.append(_INTERN.string(concept["text"].strip().lower()))
        for code in codings(concept):
            if code.display:
                out.append(_INTERN.string(code.display.strip().lower()))
    return tuple(dict.fromkeys(out))


def _first_code(concept: Any) -> str | None:
    """The first code of a concept, with or without a system (status and class codes are
    sometimes sent bare; their system is implied by the element)."""
    if not isinstance(concept, Mapping):
        return None
    items = concept.get("coding") if "coding" in concept else [concept]
    for item in items or ():
        if isinstance(item, Mapping) and isinstance(item.get("code"), str) and item["code"]:
            return _INTERN.string(item["code"])
    return None


def _mapping(resource: Resource, key: str) -> Mapping[str, Any]:
    value = resource.get(key)
    return value if isinstance(value, Mapping) else {}


def _id(resource: Resource, rtype: str) -> str:
    rid = resource.get("id")
    if not isinstance(rid, str) or not rid:
        raise ParseProblem("no id")
    return f"{rtype}/{rid}"


def _last_updated(resource: Resource) -> datetime | None:
    meta = resource.get("meta")
    if isinstance(meta, Mapping) and meta.get("lastUpdated"):
        try:
            return parse_instant(meta["lastUpdated"])
        except ParseProblem:
            return None
    return None


def _subject(resource: Resource, field: str = "subject") -> str:
    value = resource.get(field)
    if value is None:
        raise ParseProblem(f"no {field}")
    ref = reference_id(value, "Patient")
    if ref is None:
        raise ParseProblem(f"{field} is not a Patient reference")
    return ref


# ---------------------------------------------------------------- one function per type


def parse_patient(res: Resource) -> PatientRecord:
    rid = _id(res, "Patient")
    deceased_date = None
    deceased = bool(res.get("deceasedBoolean") is True)
    if res.get("deceasedDateTime") is not None:
        deceased = True
        deceased_date = parse_date(res["deceasedDateTime"])
    replaced_by = None
    for link in res.get("link") or ():
        if isinstance(link, Mapping) and link.get("type") == "replaced-by":
            replaced_by = reference_id(link.get("other"), "Patient") or "Patient/?"
    gps = tuple(
        ref for ref in (reference_id(gp) for gp in res.get("generalPractitioner") or ()) if ref
    )
    gender = res.get("gender")
    return PatientRecord(
        id=rid,
        active=res.get("active") is not False,
        birth_date=parse_date(res.get("birthDate")),
        sex=gender if isinstance(gender, str) else None,
        deceased=deceased,
        deceased_date=deceased_date,
        replaced_by=replaced_by,
        general_practitioners=gps,
        managing_organization=reference_id(res.get("managingOrganization"), "Organization"),
        last_updated=_last_updated(res),
    )


def _participant_individual(res: Resource) -> tuple[str | None, str | None, bool]:
    """(Practitioner ref, PractitionerRole ref, had any participant) per docs/methods.md s.1:
    PPRF, else ATND, else the first participant with a clinician individual."""
    candidates: list[tuple[int, int, str]] = []
    participants = res.get("participant") or ()
    for position, part in enumerate(participants):
        if not isinstance(part, Mapping):
            continue
        ref = reference_id(part.get("individual"))
        if ref is None or not ref.startswith(("Practitioner/", "PractitionerRole/")):
            continue
        type_codes = {c.code for c in _concepts(part.get("type"))}
        rank = next(
            (i for i, t in enumerate(PREFERRED_PARTICIPANT_TYPES) if t in type_codes),
            len(PREFERRED_PARTICIPANT_TYPES),
        )
        candidates.append((rank, position, ref))
    if not candidates:
        return None, None, bool(participants)
    ref = min(candidates)[2]
    if ref.startswith("PractitionerRole/"):
        return None, ref, True
    return ref, None, True


def parse_encounter(res: Resource) -> EncounterRecord:
    rid = _id(res, "Encounter")
    patient = _subject(res)
    period = _mapping(res, "period")
    start = _optional_instant(period.get("start"))
    end = _optional_instant(period.get("end"))
    if start is None:
        start = end  # a visit with only an end still happened on that day
    if start is None:
        raise ParseProblem("no period.start")
    klass = res.get("class")
    if isinstance(klass, list):  # R5 and some servers send class as a list of concepts
        klass = klass[0] if klass else None
    practitioner, role, _ = _participant_individual(res)
    status = res.get("status")
    return EncounterRecord(
        id=rid,
        patient=patient,
        status=_INTERN.string(status) if isinstance(status, str) else "unknown",
        class_code=_first_code(klass),
        start=start,
        end=end,
        types=_concepts(res.get("type")),
        service_types=_concepts(res.get("serviceType")),
        reasons=_concepts(res.get("reasonCode")),
        type_texts=_texts(res.get("type")) + _texts(res.get("serviceType")),
        practitioner=practitioner,
        practitioner_role=role,
        service_provider=reference_id(res.get("serviceProvider"), "Organization"),
        last_updated=_last_updated(res),
    )


def parse_condition(res: Resource) -> ConditionRecord:
    rid = _id(res, "Condition")
    patient = _subject(res)
    code = _mapping(res, "code")
    categories = tuple(
        code for code in (_first_code(c) for c in res.get("category") or () if c) if code
    )
    text = code.get("text")
    return ConditionRecord(
        id=rid,
        patient=patient,
        codes=codings(code),
        clinical_status=_first_code(res.get("clinicalStatus")),
        verification_status=_first_code(res.get("verificationStatus")),
        categories=categories,
        onset=parse_date(res.get("onsetDateTime")),
        abatement=parse_date(res.get("abatementDateTime")),
        recorded=parse_date(res.get("recordedDate")),
        encounter=reference_id(res.get("encounter"), "Encounter"),
        text=text if isinstance(text, str) else None,
        last_updated=_last_updated(res),
    )


def human_name(names: Any) -> str | None:
    """A display string for a clinician's HumanName list: `text`, else prefix given family."""
    if not isinstance(names, list):
        return None
    for name in names:
        if not isinstance(name, Mapping):
            continue
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        parts = [*(name.get("prefix") or ()), *(name.get("given") or ()), name.get("family")]
        text = " ".join(p for p in parts if isinstance(p, str) and p)
        if text:
            return text
    return None


def parse_practitioner(res: Resource) -> PractitionerRecord:
    rid = _id(res, "Practitioner")
    npi = None
    for ident in res.get("identifier") or ():
        if isinstance(ident, Mapping) and ident.get("system") == NPI and ident.get("value"):
            npi = str(ident["value"])
    quals = [q.get("code") for q in res.get("qualification") or () if isinstance(q, Mapping)]
    return PractitionerRecord(
        id=rid,
        npi=npi,
        name=human_name(res.get("name")),
        active=res.get("active") is not False,
        qualifications=_concepts(quals),
        qualification_texts=_texts(quals),
    )


def parse_practitioner_role(res: Resource) -> PractitionerRoleRecord:
    rid = _id(res, "PractitionerRole")
    period = _mapping(res, "period")
    return PractitionerRoleRecord(
        id=rid,
        practitioner=reference_id(res.get("practitioner"), "Practitioner"),
        organization=reference_id(res.get("organization"), "Organization"),
        active=res.get("active") is not False,
        start=parse_date(period.get("start")),
        end=_period_end(period.get("end")),
        codes=_concepts(res.get("code")),
        specialties=_concepts(res.get("specialty")),
        texts=_texts(res.get("code")) + _texts(res.get("specialty")),
    )


def _period_end(value: Any) -> date | None:
    """A Period's end as the last day it covers: a partial date (YYYY, YYYY-MM) runs to the end
    of that year or month (FHIR R4 Period: the end is inclusive)."""
    day = parse_date(value)
    if day is None or not isinstance(value, str):
        return day
    text = value.strip()
    if len(text) == 4:
        return date(day.year, 12, 31)
    if len(text) == 7:
        following = date(day.year + day.month // 12, day.month % 12 + 1, 1)
        return date.fromordinal(following.toordinal() - 1)
    return day


def parse_organization(res: Resource) -> OrganizationRecord:
    rid = _id(res, "Organization")
    name = res.get("name")
    return OrganizationRecord(
        id=rid,
        name=name if isinstance(name, str) else None,
        active=res.get("active") is not False,
        part_of=reference_id(res.get("partOf"), "Organization"),
    )


PARSERS: dict[str, Callable[[Resource], Record]] = {
    "Patient": parse_patient,
    "Encounter": parse_encounter,
    "Condition": parse_condition,
    "Practitioner": parse_practitioner,
    "PractitionerRole": parse_practitioner_role,
    "Organization": parse_organization,
}
RESOURCE_TYPES = tuple(PARSERS)


def describe(res: Any, fallback: str) -> str:
    """`Type/id` of a raw resource for an issue line, or the fallback when it has none."""
    if isinstance(res, Mapping):
        rtype, rid = res.get("resourceType"), res.get("id")
        if isinstance(rtype, str) and isinstance(rid, str) and rid:
            return f"{rtype}/{rid}"
        if isinstance(rtype, str):
            return f"{rtype}/? ({fallback})" if fallback else f"{rtype}/?"
    return fallback or "?"


def parse_resource(res: Any, expected_type: str | None = None, where: str = "") -> Record | Issue:
    """One resource to its record, or an Issue saying why it was skipped."""
    if not isinstance(res, Mapping):
        return Issue(where or "?", "not a JSON object")
    rtype = res.get("resourceType")
    if expected_type is not None and rtype != expected_type:
        return Issue(describe(res, where), f"expected {expected_type}, got {_shown(rtype)}")
    parser = PARSERS.get(rtype) if isinstance(rtype, str) else None
    if parser is None:
        return Issue(describe(res, where), f"unsupported resourceType {_shown(rtype)}")
    try:
        return parser(res)
    except ParseProblem as exc:
        return Issue(describe(res, where), str(exc))
    # Wrong JSON shapes deep inside (a number where a list belongs, a year 0, ...).
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, OverflowError) as exc:
        return Issue(describe(res, where), f"malformed: {type(exc).__name__}")


def parse_all(resources: Iterable[Any]) -> tuple[list[Record], list[Issue]]:
    records: list[Record] = []
    issues: list[Issue] = []
    for res in resources:
        out = parse_resource(res)
        (issues if isinstance(out, Issue) else records).append(out)  # type: ignore[arg-type]
    return records, issues
