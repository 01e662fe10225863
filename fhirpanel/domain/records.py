"""Small immutable records the domain works on; built from FHIR JSON by `fhirpanel.fhir.parse`.

References are always in the `Type/id` form. Dates are `datetime.date`; instants are timezone-aware
`datetime` in UTC. Codes are (system, code) pairs with the display kept for people, not matching.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

# Code systems we match on. Kept here so every module spells them the same way.
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "urn:oid:2.16.840.1.113883.6.285"
NUCC = "http://nucc.org/provider-taxonomy"
NPI = "http://hl7.org/fhir/sid/us-npi"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@dataclass(frozen=True, slots=True, order=True)
class Code:
    """A coding: system and code identify it; display is for people."""

    system: str
    code: str
    display: str | None = field(default=None, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.system, self.code)


@dataclass(frozen=True, slots=True)
class PatientRecord:
    id: str  # "Patient/123"
    active: bool = True  # FHIR: an absent `active` means active
    birth_date: date | None = None
    sex: str | None = None  # administrative gender: male | female | other | unknown
    deceased: bool = False  # deceasedBoolean true, or any deceasedDateTime
    deceased_date: date | None = None
    replaced_by: str | None = None  # Patient.link type replaced-by: this record was merged away
    general_practitioners: tuple[str, ...] = ()  # Practitioner/, PractitionerRole/, Organization/
    managing_organization: str | None = None
    last_updated: datetime | None = None


@dataclass(frozen=True, slots=True)
class EncounterRecord:
    id: str  # "Encounter/e1"
    patient: str  # "Patient/123"
    status: str  # planned | arrived | in-progress | finished | cancelled | ...
    class_code: str | None  # v3 ActCode: AMB, VR, EMER, IMP, ACUTE, HH, OBSENC, ...
    start: datetime | None  # period.start (UTC); date-only values are midnight UTC
    end: datetime | None = None
    types: tuple[Code, ...] = ()  # Encounter.type
    service_types: tuple[Code, ...] = ()  # Encounter.serviceType
    reasons: tuple[Code, ...] = ()  # Encounter.reasonCode
    type_texts: tuple[str, ...] = ()  # text-only type / serviceType labels (lower-cased)
    # The clinician of the visit (docs/methods.md s.1): participant PPRF, else ATND, else the first
    # with an individual. A PractitionerRole individual is kept in `practitioner_role`;
    # `practitioner` is set when the individual is a Practitioner, or by ingest from the role.
    practitioner: str | None = None
    practitioner_role: str | None = None
    service_provider: str | None = None  # Organization/
    last_updated: datetime | None = None

    @property
    def codes(self) -> tuple[Code, ...]:
        """Every code that can classify the visit (type, serviceType, reasonCode)."""
        return self.types + self.service_types + self.reasons

    @property
    def day(self) -> date | None:
        return self.start.date() if self.start else None


@dataclass(frozen=True, slots=True)
class ConditionRecord:
    id: str
    patient: str
    codes: tuple[Code, ...]  # all codings as sent (ICD-10-CM codes keep their dots here)
    clinical_status: str | None = None  # active | recurrence | relapse | inactive | resolved ...
    verification_status: str | None = None  # confirmed | refuted | entered-in-error | ...
    categories: tuple[str, ...] = ()  # problem-list-item | encounter-diagnosis | health-concern
    onset: date | None = None
    abatement: date | None = None
    recorded: date | None = None
    encounter: str | None = None
    text: str | None = None  # code.text, for display only
    last_updated: datetime | None = None


@dataclass(frozen=True, slots=True)
class PractitionerRecord:
    id: str
    npi: str | None = None
    name: str | None = None  # the clinician's display name (not patient data)
    active: bool = True
    qualifications: tuple[Code, ...] = ()  # qualification.code codings (MD, DO, NP, PA)
    qualification_texts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PractitionerRoleRecord:
    id: str
    practitioner: str | None
    organization: str | None = None
    active: bool = True
    # PractitionerRole.period: the role is held from start through end (either may be open).
    start: date | None = None
    end: date | None = None
    codes: tuple[Code, ...] = ()  # PractitionerRole.code
    specialties: tuple[Code, ...] = ()  # PractitionerRole.specialty
    texts: tuple[str, ...] = ()  # code/specialty text and displays, for text-label matching

    def held_on(self, day: date) -> bool:
        """Active and within its period on that day: a role that ended (or has not begun) is not
        one the clinician holds."""
        return (
            self.active
            and (self.start is None or self.start <= day)
            and (self.end is None or day <= self.end)
        )


@dataclass(frozen=True, slots=True)
class OrganizationRecord:
    id: str
    name: str | None = None
    active: bool = True
    part_of: str | None = None


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem with one input resource, and what was done about it."""

    resource: str  # "Encounter/e9", or "Encounter/?" with the line or position when there is no id
    problem: str
    action: str = "skipped"  # skipped | recorded | defaulted

    def as_dict(self) -> dict[str, str]:
        return {"resource": self.resource, "problem": self.problem, "action": self.action}


@dataclass(slots=True)
class Population:
    """Everything read for one run. Built by ingest; the domain only reads it."""

    patients: dict[str, PatientRecord] = field(default_factory=dict)
    encounters: list[EncounterRecord] = field(default_factory=list)
    conditions: list[ConditionRecord] = field(default_factory=list)
    practitioners: dict[str, PractitionerRecord] = field(default_factory=dict)
    roles: dict[str, PractitionerRoleRecord] = field(default_factory=dict)
    organizations: dict[str, OrganizationRecord] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def encounters_by_patient(self) -> dict[str, list[EncounterRecord]]:
        out: dict[str, list[EncounterRecord]] = {}
        for enc in self.encounters:
            out.setdefault(enc.patient, []).append(enc)
        return out

    def conditions_by_patient(self) -> dict[str, list[ConditionRecord]]:
        out: dict[str, list[ConditionRecord]] = {}
        for cond in self.conditions:
            out.setdefault(cond.patient, []).append(cond)
        return out

    def counts(self) -> dict[str, int]:
        return {
            "Patient": len(self.patients),
            "Encounter": len(self.encounters),
            "Condition": len(self.conditions),
            "Practitioner": len(self.practitioners),
            "PractitionerRole": len(self.roles),
            "Organization": len(self.organizations),
        }


def sorted_codes(codes: Iterable[Code]) -> tuple[Code, ...]:
    """Codes in a stable order, duplicates removed (determinism across input orders)."""
    return tuple(sorted(set(codes)))
