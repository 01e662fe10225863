"""The practice's organisations and clinicians (few: built once per population, kept in memory)
and their FHIR resources: Organization, Practitioner, PractitionerRole."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Final

from fhirpanel.domain.records import NPI, NUCC
from fhirpanel.sandbox.catalogue import CATALOGUE
from fhirpanel.sandbox.common import Resource, coding, concept, seeded

V2_0360: Final = "http://terminology.hl7.org/CodeSystem/v2-0360"  # degree / licence
PRACTITIONER_ROLE: Final = "http://terminology.hl7.org/CodeSystem/practitioner-role"
ORGANIZATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/organization-type"

TAXONOMY: Final = CATALOGUE.taxonomy
PCP_HIRING_ORDER: Final = CATALOGUE.pcp_hiring_order
TEXT_LABELS: Final = CATALOGUE.text_labels
PCP_PREFERENCE: Final = CATALOGUE.pcp_preference
QUALIFICATIONS: Final = CATALOGUE.qualifications
CLINICS: Final = CATALOGUE.clinics
HOSPITAL: Final = CATALOGUE.hospital
STATE: Final = CATALOGUE.state
GIVEN_FEMALE: Final = CATALOGUE.given_female
GIVEN_MALE: Final = CATALOGUE.given_male
FAMILY_NAMES: Final = CATALOGUE.family_names

MIN_PCPS: Final = 8
PATIENTS_PER_PCP: Final = 1500


def npi_check_digit(first_nine: str) -> str:
    """The NPI check digit: Luhn over the 80840 prefix and the first nine digits (CMS NPI
    standard)."""
    total = 0
    for position, char in enumerate(reversed("80840" + first_nine)):
        digit = int(char)
        if position % 2 == 0:  # rightmost payload digit is doubled
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def is_valid_npi(value: str) -> bool:
    return (
        len(value) == 10
        and value.isdigit()
        and value[0] in "12"
        and npi_check_digit(value[:9]) == value[9]
    )


@dataclass(slots=True)
class Clinician:
    number: int
    kind: str  # a TAXONOMY key: a primary-care kind, a specialist kind, or "rn"
    organization: str
    text_only: bool
    weight: float
    given: str
    family: str
    gender: str
    qualification: str
    npi: str
    id: str = ""
    role_id: str = ""
    reference: dict[str, str] = field(default_factory=dict)
    role_reference: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = f"prac-{self.number:04d}"
        self.role_id = f"role-{self.number:04d}"
        self.reference = {"reference": f"Practitioner/{self.id}"}
        self.role_reference = {"reference": f"PractitionerRole/{self.role_id}"}


@dataclass(slots=True)
class Directory:
    """The organisations and clinicians of the practice (few: built once, kept in memory)."""

    pcps: list[Clinician]
    specialists: dict[str, list[Clinician]]  # cardiology, endocrinology, ... emergency, rn
    nurses_by_clinic: dict[str, list[Clinician]]
    pools: dict[str, tuple[list[Clinician], list[float]]]  # age group -> PCPs, cumulative weights

    @property
    def clinicians(self) -> list[Clinician]:
        out = list(self.pcps)
        for group in self.specialists.values():
            out.extend(group)
        return out

    def nurse(self, rng: random.Random, main: Clinician) -> Clinician:
        """A nurse of `main`'s clinic (any nurse when the clinic has none)."""
        nurses = self.nurses_by_clinic.get(main.organization) or self.specialists["rn"]
        return rng.choice(nurses)


def pcp_count(patients: int) -> int:
    return max(MIN_PCPS, round(patients / PATIENTS_PER_PCP))


def build_directory(patients: int, seed: int) -> Directory:
    rng = seeded(f"fhirpanel-sandbox/{seed}/directory")
    used_npis: set[str] = set()
    number = 0

    def hire(kind: str, organization: str, text_only: bool = False) -> Clinician:
        nonlocal number
        number += 1
        gender = rng.choice(("female", "male"))
        given = rng.choice(GIVEN_FEMALE if gender == "female" else GIVEN_MALE)
        if kind == "fnp":
            qualification = "NP"
        elif kind == "pa":
            qualification = "PA"
        elif kind == "rn":
            qualification = "RN"
        else:
            qualification = "DO" if rng.random() < 0.2 else "MD"
        npi = ""
        while not npi or npi in used_npis:  # clinicians are few: collisions are rare
            first_nine = f"1{rng.randrange(10**8):08d}"
            npi = first_nine + npi_check_digit(first_nine)
        used_npis.add(npi)
        return Clinician(
            number,
            kind,
            organization,
            text_only,
            rng.uniform(0.7, 1.3),
            given,
            rng.choice(FAMILY_NAMES),
            gender,
            qualification,
            npi,
        )

    pcps = []
    for i in range(pcp_count(patients)):
        slot = PCP_HIRING_ORDER[i % len(PCP_HIRING_ORDER)]
        pcps.append(hire(slot.rstrip("*"), CLINICS[i % len(CLINICS)].id, slot.endswith("*")))
    n_pcp = len(pcps)
    specialists: dict[str, list[Clinician]] = {}
    for kind, count in (
        ("cardiology", max(1, round(n_pcp / 10))),
        ("endocrinology", max(1, round(n_pcp / 15))),
        ("nephrology", max(1, round(n_pcp / 15))),
        ("emergency", max(2, round(n_pcp / 6))),
        ("hospitalist", max(2, round(n_pcp / 6))),
    ):
        specialists[kind] = [hire(kind, HOSPITAL.id) for _ in range(count)]
    nurses = [hire("rn", CLINICS[i % len(CLINICS)].id) for i in range(max(3, round(n_pcp / 2)))]
    specialists["rn"] = nurses
    nurses_by_clinic = {
        clinic.id: [n for n in nurses if n.organization == clinic.id] for clinic in CLINICS
    }
    pools: dict[str, tuple[list[Clinician], list[float]]] = {}
    for group, preference in PCP_PREFERENCE.items():
        members = [c for c in pcps if c.kind in preference]
        cumulative, total = [], 0.0
        for member in members:
            total += preference[member.kind] * member.weight
            cumulative.append(total)
        pools[group] = (members, cumulative)
    return Directory(pcps, specialists, nurses_by_clinic, pools)


def organization_resources(seed: int) -> list[Resource]:
    rng = seeded(f"fhirpanel-sandbox/{seed}/organizations")
    out = []
    for org_id, name, city, postal in (*CLINICS, HOSPITAL):
        first_nine = f"1{rng.randrange(10**8):08d}"
        out.append(
            {
                "resourceType": "Organization",
                "id": org_id,
                "identifier": [{"system": NPI, "value": first_nine + npi_check_digit(first_nine)}],
                "active": True,
                "type": [concept(coding(ORGANIZATION_TYPE, "prov", "Healthcare Provider"))],
                "name": name,
                "address": [{"city": city, "state": STATE, "postalCode": postal, "country": "US"}],
            }
        )
    return out


def practitioner_resource(clinician: Clinician) -> Resource:
    name: dict[str, Any] = {
        "use": "official",
        "family": clinician.family,
        "given": [clinician.given],
    }
    if clinician.qualification in ("MD", "DO"):
        name["prefix"] = ["Dr."]
    return {
        "resourceType": "Practitioner",
        "id": clinician.id,
        "identifier": [{"system": NPI, "value": clinician.npi}],
        "active": True,
        "name": [name],
        "gender": clinician.gender,
        "qualification": [
            {
                "code": concept(
                    coding(
                        V2_0360, clinician.qualification, QUALIFICATIONS[clinician.qualification]
                    )
                )
            }
        ],
    }


def practitioner_role_resource(clinician: Clinician) -> Resource:
    role: Resource = {
        "resourceType": "PractitionerRole",
        "id": clinician.role_id,
        "active": True,
        "practitioner": clinician.reference,
        "organization": {"reference": f"Organization/{clinician.organization}"},
    }
    if clinician.text_only:
        # Many EHRs send the specialty as a label only, with no role code either.
        role["specialty"] = [{"text": TEXT_LABELS[clinician.kind]}]
        return role
    if clinician.qualification in ("MD", "DO"):
        role["code"] = [concept(coding(PRACTITIONER_ROLE, "doctor", "Doctor"))]
    elif clinician.qualification in ("NP", "RN"):
        role["code"] = [concept(coding(PRACTITIONER_ROLE, "nurse", "Nurse"))]
    code, display = TAXONOMY[clinician.kind]
    role["specialty"] = [concept(coding(NUCC, code, display))]
    return role
