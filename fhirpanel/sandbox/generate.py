"""Synthetic primary-care population (FHIR R4 JSON), streamed patient by patient from a seed.

`generate_population` yields the resources; `write_population` writes them as Bulk Data NDJSON
plus FHIR transaction Bundles. The same (patients, seed, as_of, malformed_rate) always gives
byte-identical output: every random choice comes from `random.Random` instances seeded from those
arguments, nothing reads the clock, and nothing iterates over a hash-ordered set.

The population is shaped so that every rule in docs/methods.md sections 1-5 is exercised: visit
patterns are dealt from a shuffled deck per block of patients (so each pattern occurs in any
population of a few hundred), and condition prevalence follows US primary care by age band.
Figures are approximations from published prevalence surveys; the codes are real, the people are
not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from fhirpanel.domain.dates import months_before
from fhirpanel.domain.records import (
    CPT,
    HCPCS,
    ICD10CM,
    NPI,
    NUCC,
    PARTICIPATION_TYPE,
    SNOMED,
    V3_ACT_CODE,
)
from fhirpanel.errors import ConfigError

Resource = dict[str, Any]

RESOURCE_TYPES: Final = (
    "Patient", "Encounter", "Condition", "Practitioner", "PractitionerRole", "Organization",
)

V2_0360: Final = "http://terminology.hl7.org/CodeSystem/v2-0360"  # degree / licence
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type
PRACTITIONER_ROLE: Final = "http://terminology.hl7.org/CodeSystem/practitioner-role"
ORGANIZATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/organization-type"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER_STATUS: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
VISIT_TYPE: Final = "urn:fhirpanel:sandbox:visit-type"  # an EHR's local appointment types
MRN: Final = "urn:fhirpanel:sandbox:mrn"

# Malformed copies carry this id suffix so tests can find them; nothing else marks them.
MALFORMED_ID_SUFFIX: Final = "-x"
ENCOUNTER_DEFECTS: Final = (
    "no-subject", "unknown-subject", "bad-date", "participant-no-individual", "no-participant",
)
CONDITION_DEFECTS: Final = ("no-subject", "unknown-subject", "bad-date")
# Defects a conformant server still stores (Encounter.subject and .participant are optional);
# the others are refused by any server, so they live in the NDJSON export only.
STORABLE_DEFECTS: Final = ("participant-no-individual", "no-participant")
BAD_DATE: Final = "2025-13-45"

# Look-back windows (docs/methods.md s.1): designed visits stay clear of the window edges so a
# day's difference in how a window is cut does not change which pattern a patient shows.
WINDOW_MONTHS: Final = 18
LAPSED_FROM_MONTHS: Final = 24
HISTORY_MONTHS: Final = 36
EDGE_MARGIN_DAYS: Final = 10

BLOCK_SIZE: Final = 200  # patterns and statuses are dealt per block of this many patients


# ---------------------------------------------------------------- the condition catalogue


@dataclass(frozen=True, slots=True)
class ConditionDef:
    key: str
    icd10cm: str
    snomed: str
    display: str
    chronic: bool


# Shared with the risk crosswalk (brief: "the condition catalogue").
CONDITION_CATALOGUE: Final[tuple[ConditionDef, ...]] = (
    ConditionDef("hypertension", "I10", "59621000", "Essential hypertension", True),
    ConditionDef("hyperlipidemia", "E78.5", "55822004", "Hyperlipidemia", True),
    ConditionDef("t2dm", "E11.9", "44054006", "Type 2 diabetes mellitus", True),
    ConditionDef("t2dm_ckd", "E11.22", "127013003",
                 "Disorder of kidney due to diabetes mellitus", True),
    ConditionDef("t1dm", "E10.9", "46635009", "Type 1 diabetes mellitus", True),
    ConditionDef("heart_failure", "I50.9", "84114007", "Heart failure", True),
    ConditionDef("ckd3", "N18.30", "433144002", "Chronic kidney disease stage 3", True),
    ConditionDef("ckd4", "N18.4", "431857002", "Chronic kidney disease stage 4", True),
    ConditionDef("copd", "J44.9", "13645005", "Chronic obstructive lung disease", True),
    ConditionDef("asthma", "J45.909", "195967001", "Asthma", True),
    ConditionDef("afib", "I48.91", "49436004", "Atrial fibrillation", True),
    ConditionDef("cad", "I25.10", "53741008", "Coronary arteriosclerosis", True),
    ConditionDef("old_mi", "I25.2", "1755008", "Old myocardial infarction", True),
    ConditionDef("depression", "F32.9", "35489007", "Depressive disorder", True),
    ConditionDef("alzheimers", "G30.9", "26929004", "Alzheimer's disease", True),
    ConditionDef("rheumatoid", "M06.9", "69896004", "Rheumatoid arthritis", True),
    ConditionDef("osteoarthritis", "M17.9", "239873007", "Osteoarthritis of knee", True),
    ConditionDef("obesity", "E66.9", "414916001", "Obesity", True),
    ConditionDef("stroke", "I63.9", "230690007", "Cerebrovascular accident", True),
    ConditionDef("pvd", "I73.9", "400047006", "Peripheral vascular disease", True),
    ConditionDef("hypothyroidism", "E03.9", "40930008", "Hypothyroidism", True),
    ConditionDef("lung_cancer", "C34.90", "93880001", "Primary malignant neoplasm of lung", True),
    ConditionDef("lung_metastasis", "C78.00", "94391008",
                 "Secondary malignant neoplasm of lung", True),
    ConditionDef("breast_cancer", "C50.919", "254837009", "Malignant neoplasm of breast", True),
    ConditionDef("hiv", "B20", "86406008", "Human immunodeficiency virus infection", True),
    ConditionDef("hepatitis_c", "B18.2", "128302006", "Chronic hepatitis C", True),
    ConditionDef("cirrhosis", "K74.60", "19943007", "Cirrhosis of liver", True),
    ConditionDef("peptic_ulcer", "K27.9", "13200003", "Peptic ulcer", True),
    ConditionDef("uri", "J06.9", "54150009", "Upper respiratory infection", False),
    ConditionDef("sprain", "S93.401A", "44465007", "Sprain of ankle", False),
    ConditionDef("sinusitis", "J01.90", "36971009", "Sinusitis", False),
)
CONDITIONS: Final = {c.key: c for c in CONDITION_CATALOGUE}

# Prevalence of each independently drawn chronic condition by age band:
# 0-17, 18-39, 40-64, 65-79, 80+. Approximate US primary-care figures (CDC NHANES / NHIS,
# Medicare chronic-condition data); among 65+ they give hypertension ~60%, hyperlipidemia ~50%,
# type 2 diabetes ~25%, heart failure ~8%, CKD 3 ~15%, COPD ~10%, AF ~9%, CAD ~15%,
# depression ~12%, dementia ~5%. Dependent conditions (diabetic CKD, CKD 4, old MI, metastasis,
# cirrhosis) are drawn from their parent condition below.
PREVALENCE: Final[dict[str, tuple[float, float, float, float, float]]] = {
    "hypertension": (0.01, 0.10, 0.35, 0.61, 0.71),
    "hyperlipidemia": (0.005, 0.08, 0.30, 0.53, 0.52),
    "t2dm": (0.002, 0.03, 0.12, 0.26, 0.27),
    "t1dm": (0.003, 0.005, 0.004, 0.004, 0.003),
    "heart_failure": (0.0, 0.002, 0.015, 0.06, 0.13),
    "ckd3": (0.0, 0.005, 0.035, 0.13, 0.24),
    "copd": (0.0, 0.005, 0.04, 0.10, 0.11),
    "asthma": (0.08, 0.08, 0.08, 0.07, 0.06),
    "afib": (0.0, 0.002, 0.015, 0.07, 0.14),
    "cad": (0.0, 0.004, 0.05, 0.14, 0.20),
    "depression": (0.03, 0.11, 0.12, 0.12, 0.12),
    "alzheimers": (0.0, 0.0, 0.001, 0.025, 0.10),
    "rheumatoid": (0.0005, 0.004, 0.01, 0.015, 0.015),
    "osteoarthritis": (0.0, 0.02, 0.10, 0.25, 0.30),
    "obesity": (0.06, 0.18, 0.25, 0.20, 0.10),
    "stroke": (0.0, 0.002, 0.01, 0.04, 0.07),
    "pvd": (0.0, 0.001, 0.01, 0.05, 0.08),
    "hypothyroidism": (0.003, 0.03, 0.07, 0.12, 0.14),
    "lung_cancer": (0.0, 0.0, 0.002, 0.01, 0.012),
    "breast_cancer": (0.0, 0.003, 0.015, 0.03, 0.035),
    "hiv": (0.0, 0.003, 0.0035, 0.003, 0.0015),
    "hepatitis_c": (0.0, 0.005, 0.01, 0.008, 0.005),
    "peptic_ulcer": (0.0, 0.003, 0.008, 0.015, 0.02),
}
# Share of a parent condition's patients who also carry the dependent one.
DEPENDENT_CONDITIONS: Final = (
    ("t2dm", "t2dm_ckd", 0.20),
    ("ckd3", "ckd4", 0.12),  # progressed: ckd4 replaces ckd3
    ("cad", "old_mi", 0.25),
    ("lung_cancer", "lung_metastasis", 0.30),
    ("breast_cancer", "lung_metastasis", 0.08),
    ("hepatitis_c", "cirrhosis", 0.20),
)
# Multiplier per sex where prevalence differs markedly (female, male).
SEX_FACTOR: Final = {"hypothyroidism": (1.6, 0.4), "breast_cancer": (1.98, 0.02)}
FRAILTY_SIGMA: Final = 0.5  # log-normal spread that correlates multimorbidity within a patient

# US primary-care age mix: children ~20%, 65+ ~20% (years from, years to, weight in percent).
AGE_BANDS: Final = (
    (0, 1, 1.2), (1, 5, 4.0), (5, 12, 7.8), (12, 18, 7.0),
    (18, 40, 28.0), (40, 65, 32.0), (65, 80, 15.0), (80, 96, 5.0),
)

# ---------------------------------------------------------------- clinicians

# NUCC taxonomy codes with their classification / specialization names.
TAXONOMY: Final = {
    "family": ("207Q00000X", "Family Medicine"),
    "internal": ("207R00000X", "Internal Medicine"),
    "pediatrics": ("208000000X", "Pediatrics"),
    "general": ("208D00000X", "General Practice"),
    "geriatric": ("207QG0300X", "Family Medicine, Geriatric Medicine"),
    "fnp": ("363LF0000X", "Nurse Practitioner, Family"),
    "pa": ("363A00000X", "Physician Assistant"),
    "cardiology": ("207RC0000X", "Internal Medicine, Cardiovascular Disease"),
    "endocrinology": ("207RE0101X", "Internal Medicine, Endocrinology, Diabetes & Metabolism"),
    "nephrology": ("207RN0300X", "Internal Medicine, Nephrology"),
    "emergency": ("207P00000X", "Emergency Medicine"),
    "hospitalist": ("208M00000X", "Hospitalist"),
    "rn": ("163W00000X", "Registered Nurse"),
}
# The order PCPs are hired in; "*" marks a role whose specialty the EHR sends as text only
# (3 in 20 = 15%). The first eight cover every primary-care code and one text-only role.
PCP_HIRING_ORDER: Final = (
    "family", "internal", "pediatrics", "fnp", "pa", "general", "geriatric", "family*",
    "internal", "family", "pediatrics", "fnp", "internal*", "family", "pa", "general*",
    "family", "internal", "pediatrics", "fnp",
)
TEXT_LABELS: Final = {"family": "Family Medicine", "internal": "Internal Medicine",
                      "general": "General Practice"}
MIN_PCPS: Final = 8
PATIENTS_PER_PCP: Final = 1500
# Which PCPs a patient may choose, by age group, with a preference weight.
PCP_PREFERENCE: Final = {
    "child": {"pediatrics": 3.0, "family": 1.5, "general": 1.0, "fnp": 1.0, "pa": 0.7},
    "adult": {"family": 1.5, "internal": 1.5, "general": 1.0, "fnp": 0.8, "pa": 0.6},
    "senior": {"geriatric": 2.5, "internal": 1.5, "family": 1.2, "general": 1.0, "fnp": 0.6,
               "pa": 0.4},
}
QUALIFICATIONS: Final = {
    "MD": "Doctor of Medicine", "DO": "Doctor of Osteopathy", "NP": "Nurse Practitioner",
    "PA": "Physician Assistant", "RN": "Registered Nurse",
}
# Which specialist follows which conditions.
SPECIALIST_FOR: Final = {
    "cardiology": ("cad", "heart_failure", "afib", "old_mi"),
    "endocrinology": ("t1dm", "t2dm_ckd"),
    "nephrology": ("ckd4", "t2dm_ckd"),
}

CLINICS: Final = (
    ("org-clinic-1", "Riverside Family Health", "Springfield", "62701"),
    ("org-clinic-2", "Northgate Primary Care", "Springfield", "62704"),
    ("org-clinic-3", "Lakeview Community Clinic", "Chatham", "62629"),
)
HOSPITAL: Final = ("org-hospital", "Sangamon Valley Regional Hospital", "Springfield", "62702")
STATE: Final = "IL"

GIVEN_FEMALE: Final = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Lisa", "Nancy", "Betty", "Sandra", "Margaret", "Ashley", "Kimberly", "Emily",
    "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca",
    "Sharon", "Laura", "Cynthia", "Amy", "Angela", "Helen", "Anna", "Brenda", "Pamela", "Emma",
    "Nicole", "Samantha", "Katherine", "Christine", "Olivia", "Sophia", "Ava", "Isabella", "Mia",
    "Rosa", "Maria", "Lucia", "Mei", "Aisha", "Priya", "Fatima", "Grace", "Chloe", "Zoe",
)
GIVEN_MALE: Final = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Christopher", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul",
    "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Jason",
    "Edward", "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen",
    "Larry", "Justin", "Scott", "Noah", "Liam", "Ethan", "Lucas", "Mason", "Carlos", "Luis",
    "Jose", "Wei", "Hiroshi", "Omar", "Raj", "Ahmed", "Samuel", "Owen", "Elijah",
)
FAMILY_NAMES: Final = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans",
    "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris",
    "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson",
    "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson", "Watson",
    "Brooks", "Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes", "Price",
    "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "Jimenez",
    "Okafor", "Chen", "Wang", "Singh", "Kowalski", "Novak", "Schmidt", "Yamamoto", "Haddad",
)

# ---------------------------------------------------------------- visit patterns

# One deck per block of BLOCK_SIZE patients: (pattern, cards). "merge" is a pair of records: a
# surviving patient and, right after it, the duplicate chart merged into it (~0.5% of records).
PATTERN_DECK: Final = (
    ("none", 12),  # no encounters at all
    ("lapsed", 10),  # visits 24-36 months ago only: a 36-month cascade picks them up
    ("specialist_only", 5),  # active, no qualifying visit -> unassigned
    ("ed_only", 4),
    ("excluded_only", 3),  # nurse / lab / vaccine / anticoagulation visits only
    ("tie_sentinel_tied", 4),  # tie; a tied clinician did the wellness exam (not the last visit)
    ("tie_sentinel_other", 3),  # tie; the wellness exam was by a clinician outside the tie
    ("tie_last_visit", 4),  # tie, no wellness exam: the last visit decides
    ("tie_same_day", 2),  # tie, the tied clinicians' last visits on the same day
    ("tie_same_time", 1),  # ... at the same instant: only the clinician id breaks it
    ("tie_three", 2),  # three clinicians with equal counts
    ("noise_matters", 4),  # non-qualifying visits with the runner-up would flip the plurality
    ("split", 24),  # two PCPs, unequal counts
    ("single", 30),  # only one PCP ever
    ("merge", 1),
)
PATTERN_DECK_FILL: Final = "loyal"  # mostly one PCP, occasionally covered by a colleague
# ~1% inactive, ~1% deceased; every other block sends one death as a bare deceasedBoolean.
STATUS_DECK: Final = (("inactive", 2), ("deceased", 1), ("deceased_or_flag", 1))

# Office visits per year by age band (0-17, 18-39, 40-64, 65-79, 80+), before morbidity.
OFFICE_RATE: Final = (1.6, 1.1, 1.5, 2.4, 3.0)
OFFICE_RATE_PER_CONDITION: Final = 0.35
WELLNESS_SHARE: Final = (0.7, 0.35, 0.45, 0.6, 0.5)  # chance a period has a wellness exam
TELEHEALTH_SHARE: Final = 0.10
CANCELLED_SHARE: Final = 0.06
COVERING_SHARE: Final = 0.18
DECLARED_PCP_SHARE: Final = 0.10
DECLARED_OTHER_SHARE: Final = 0.30
ROLE_REFERENCE_SHARE: Final = 0.10
UTC_STAMP_SHARE: Final = 0.40

# ---------------------------------------------------------------- fixed FHIR fragments


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def _concept(*codings: dict[str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": list(codings)}
    if text is not None:
        out["text"] = text
    return out


ENCOUNTER_CLASS: Final = {
    "AMB": _coding(V3_ACT_CODE, "AMB", "ambulatory"),
    "VR": _coding(V3_ACT_CODE, "VR", "virtual"),
    "EMER": _coding(V3_ACT_CODE, "EMER", "emergency"),
    "IMP": _coding(V3_ACT_CODE, "IMP", "inpatient encounter"),
    "HH": _coding(V3_ACT_CODE, "HH", "home health"),
}
PARTICIPANT_TYPE: Final = {
    code: [_concept(_coding(PARTICIPATION_TYPE, code, display))]
    for code, display in (("PPRF", "primary performer"), ("ATND", "attender"),
                          ("SPRF", "secondary performer"))
}
LOCAL_OFFICE: Final = _coding(VISIT_TYPE, "OFFICE", "Office visit")
LOCAL_WELLNESS: Final = _coding(VISIT_TYPE, "WELLNESS", "Wellness visit")
CHECKUP: Final = _coding(SNOMED, "185349003", "Encounter for check up")
FOLLOW_UP: Final = _coding(SNOMED, "390906007", "Follow-up encounter")
GENERAL_EXAM: Final = _coding(SNOMED, "162673000", "General examination of patient")
WELL_CHILD: Final = _coding(SNOMED, "410620009", "Well child visit")
OFFICE_TYPES: Final = {
    "checkup": [_concept(CHECKUP, LOCAL_OFFICE, text="Office visit")],
    "followup": [_concept(FOLLOW_UP, LOCAL_OFFICE, text="Follow-up visit")],
}
WELLNESS_LOCAL_ONLY: Final = [_concept(LOCAL_WELLNESS, text="Annual physical")]
EXCLUDED_TYPES: Final = {
    "NURSE": [_concept(_coding(VISIT_TYPE, "NURSE", "Nurse-only visit"), text="Nurse visit")],
    "LAB": [_concept(
        _coding(SNOMED, "82078001", "Collection of blood specimen for laboratory"),
        _coding(VISIT_TYPE, "LAB", "Lab draw"), text="Lab draw")],
    "VACCINE": [_concept(
        _coding(SNOMED, "33879002", "Administration of vaccine to produce active immunity"),
        _coding(VISIT_TYPE, "VACCINE", "Vaccine-only visit"), text="Vaccine visit")],
    "ANTICOAG": [_concept(_coding(VISIT_TYPE, "ANTICOAG", "Anticoagulation clinic"),
                          text="Anticoagulation clinic")],
}
EMERGENCY_TYPE: Final = [_concept(_coding(SNOMED, "50849002", "Emergency room admission"))]
INPATIENT_TYPE: Final = [_concept(_coding(SNOMED, "32485007", "Hospital admission"))]
HOME_TYPE: Final = [_concept(_coding(VISIT_TYPE, "HOME", "Home health visit"),
                             text="Home health visit")]
CLINICAL_STATUS: Final = {
    s: _concept(_coding(CONDITION_CLINICAL, s)) for s in ("active", "remission", "resolved")
}
VERIFICATION_STATUS: Final = {
    s: _concept(_coding(CONDITION_VER_STATUS, s))
    for s in ("confirmed", "refuted", "entered-in-error")
}
PROBLEM_LIST: Final = [_concept(_coding(CONDITION_CATEGORY, "problem-list-item",
                                        "Problem List Item"))]
ENCOUNTER_DIAGNOSIS: Final = [_concept(_coding(CONDITION_CATEGORY, "encounter-diagnosis",
                                               "Encounter Diagnosis"))]
MRN_TYPE: Final = _concept(_coding(V2_0203, "MR", "Medical record number"))


# ---------------------------------------------------------------- small helpers


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
    return (len(value) == 10 and value.isdigit() and value[0] in "12"
            and npi_check_digit(value[:9]) == value[9])




def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; means here are small (<= ~30), and the loop is bounded."""
    if mean <= 0:
        return 0
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit and count < 200:
        product *= rng.random()
        count += 1
    return count


def _weekday(ordinal: int) -> int:
    return (ordinal + 6) % 7  # date.fromordinal(1) is a Monday


def _office_days(rng: random.Random, lo: int, hi: int, count: int) -> list[int]:
    """`count` weekday ordinals in [lo, hi], distinct when the range allows, sorted."""
    if count <= 0 or hi < lo:
        return []
    chosen: list[int] = []
    for _ in range(count * 40):
        if len(chosen) == count:
            break
        day = rng.randint(lo, hi)
        if _weekday(day) >= 5 and hi - lo > 7:
            continue
        if day in chosen and hi - lo + 1 > 2 * count:
            continue
        chosen.append(day)
    while len(chosen) < count:  # a range of a few days (a newborn): repeat days
        chosen.append(rng.randint(lo, hi))
    chosen.sort()
    return chosen


def _office_minute(rng: random.Random) -> int:
    return 8 * 60 + 15 * rng.randrange(37)  # 08:00-17:00 local, on the quarter hour


def _stamp(ordinal: int, minute: int, utc: bool) -> str:
    """A dateTime with a US Central-style offset, or the same instant in UTC with `Z`.
    Daylight time is approximated by month; either way the instant is a real one."""
    local = datetime.fromordinal(ordinal) + timedelta(minutes=minute)
    offset = 5 if 4 <= local.month <= 10 else 6
    if utc:
        return (local + timedelta(hours=offset)).isoformat() + "Z"
    return f"{local.isoformat()}-0{offset}:00"


# ---------------------------------------------------------------- clinicians and organisations


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


def pcp_count(patients: int) -> int:
    return max(MIN_PCPS, round(patients / PATIENTS_PER_PCP))


def build_directory(patients: int, seed: int) -> Directory:
    rng = random.Random(f"fhirpanel-sandbox/{seed}/directory")
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
        return Clinician(number, kind, organization, text_only, rng.uniform(0.7, 1.3), given,
                         rng.choice(FAMILY_NAMES), gender, qualification, npi)

    pcps = []
    for i in range(pcp_count(patients)):
        slot = PCP_HIRING_ORDER[i % len(PCP_HIRING_ORDER)]
        pcps.append(hire(slot.rstrip("*"), CLINICS[i % len(CLINICS)][0], slot.endswith("*")))
    n_pcp = len(pcps)
    specialists: dict[str, list[Clinician]] = {}
    for kind, count in (("cardiology", max(1, round(n_pcp / 10))),
                        ("endocrinology", max(1, round(n_pcp / 15))),
                        ("nephrology", max(1, round(n_pcp / 15))),
                        ("emergency", max(2, round(n_pcp / 6))),
                        ("hospitalist", max(2, round(n_pcp / 6)))):
        specialists[kind] = [hire(kind, HOSPITAL[0]) for _ in range(count)]
    nurses = [hire("rn", CLINICS[i % len(CLINICS)][0]) for i in range(max(3, round(n_pcp / 2)))]
    specialists["rn"] = nurses
    nurses_by_clinic = {clinic[0]: [n for n in nurses if n.organization == clinic[0]]
                        for clinic in CLINICS}
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
    rng = random.Random(f"fhirpanel-sandbox/{seed}/organizations")
    out = []
    for org_id, name, city, postal in (*CLINICS, HOSPITAL):
        first_nine = f"1{rng.randrange(10**8):08d}"
        out.append({
            "resourceType": "Organization",
            "id": org_id,
            "identifier": [{"system": NPI, "value": first_nine + npi_check_digit(first_nine)}],
            "active": True,
            "type": [_concept(_coding(ORGANIZATION_TYPE, "prov", "Healthcare Provider"))],
            "name": name,
            "address": [{"city": city, "state": STATE, "postalCode": postal, "country": "US"}],
        })
    return out


def practitioner_resource(clinician: Clinician) -> Resource:
    name: dict[str, Any] = {"use": "official", "family": clinician.family,
                            "given": [clinician.given]}
    if clinician.qualification in ("MD", "DO"):
        name["prefix"] = ["Dr."]
    return {
        "resourceType": "Practitioner",
        "id": clinician.id,
        "identifier": [{"system": NPI, "value": clinician.npi}],
        "active": True,
        "name": [name],
        "gender": clinician.gender,
        "qualification": [{"code": _concept(_coding(
            V2_0360, clinician.qualification, QUALIFICATIONS[clinician.qualification]))}],
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
        role["code"] = [_concept(_coding(PRACTITIONER_ROLE, "doctor", "Doctor"))]
    elif clinician.qualification in ("NP", "RN"):
        role["code"] = [_concept(_coding(PRACTITIONER_ROLE, "nurse", "Nurse"))]
    code, display = TAXONOMY[clinician.kind]
    role["specialty"] = [_concept(_coding(NUCC, code, display))]
    return role


# ---------------------------------------------------------------- one patient


@dataclass(slots=True)
class Visit:
    day: int  # local date ordinal
    minute: int  # local minutes after midnight
    clinician: Clinician
    kind: str  # office | wellness | excluded | specialist | ed | inpatient | home
    klass: str = "AMB"
    status: str = "finished"
    subtype: str = ""  # the excluded visit type (NURSE, LAB, VACCINE, ANTICOAG)
    length: int = 20  # minutes
    organization: str = ""


@dataclass(slots=True)
class Person:
    index: int
    id: str
    gender: str
    birth: int  # ordinal
    given: list[str]
    family: str
    main_pcp: Clinician


@dataclass(frozen=True, slots=True)
class Calendar:
    """Ordinal day ranges derived from the as-of date."""

    as_of: int
    window_lo: int  # inside the 18-month window, clear of its edge
    window_hi: int
    history_lo: int  # 36 months back, clear of the edge
    pre_window_hi: int  # before the 18-month window
    lapsed_hi: int  # before 24 months

    @classmethod
    def for_as_of(cls, as_of: date) -> Calendar:
        window_start = months_before(as_of, WINDOW_MONTHS).toordinal()
        return cls(
            as_of=as_of.toordinal(),
            window_lo=window_start + EDGE_MARGIN_DAYS,
            window_hi=as_of.toordinal() - 1,
            history_lo=months_before(as_of, HISTORY_MONTHS).toordinal() + EDGE_MARGIN_DAYS,
            pre_window_hi=window_start - EDGE_MARGIN_DAYS,
            lapsed_hi=months_before(as_of, LAPSED_FROM_MONTHS).toordinal() - EDGE_MARGIN_DAYS,
        )


def deal_block(seed: int, block: int, patients: int) -> tuple[list[str], list[str]]:
    """The visit pattern and the status of each patient in one block, from shuffled decks."""
    rng = random.Random(f"fhirpanel-sandbox/{seed}/deck/{block}")
    units: list[str] = []
    for pattern, cards in PATTERN_DECK:
        units.extend([pattern] * cards)
    used = sum(2 if u == "merge" else 1 for u in units)
    units.extend([PATTERN_DECK_FILL] * (BLOCK_SIZE - used))
    rng.shuffle(units)
    patterns: list[str] = []
    for unit in units:
        patterns.extend(("merge_survivor", "merged_duplicate") if unit == "merge" else (unit,))
    statuses: list[str] = []
    for status, cards in STATUS_DECK:
        if status == "deceased_or_flag":
            status = "deceased_flag" if block % 2 == 0 else "deceased"
        statuses.extend([status] * cards)
    statuses.extend(["active"] * (BLOCK_SIZE - len(statuses)))
    rng.shuffle(statuses)
    size = min(BLOCK_SIZE, patients - block * BLOCK_SIZE)
    patterns, statuses = patterns[:size], statuses[:size]
    if patterns and patterns[-1] == "merge_survivor":  # its duplicate fell past the end
        patterns[-1] = PATTERN_DECK_FILL
    for i, pattern in enumerate(patterns):
        if pattern in ("merge_survivor", "merged_duplicate"):
            statuses[i] = "active"
    return patterns, statuses


class PatientGenerator:
    """Builds one patient's resources at a time; holds only the directory and the calendar."""

    def __init__(self, patients: int, seed: int, as_of: date, malformed_rate: float) -> None:
        self.patients = patients
        self.seed = seed
        self.calendar = Calendar.for_as_of(as_of)
        self.directory = build_directory(patients, seed)
        self.malformed_odds = malformed_rate / (1.0 - malformed_rate)  # extra per good record
        self.frailty_norm = math.exp(FRAILTY_SIGMA**2 / 2)  # so frailty averages 1
        self._mrn_offset = random.Random(f"fhirpanel-sandbox/{seed}/mrn").randrange(10**7)

    # -- the stream

    def groups(self) -> Iterator[list[tuple[Resource, bool]]]:
        """Per patient (a merged pair together): (resource, a server would store it)."""
        survivor: list[tuple[Resource, bool]] | None = None
        survivor_person: Person | None = None
        for block in range(math.ceil(self.patients / BLOCK_SIZE)):
            patterns, statuses = deal_block(self.seed, block, self.patients)
            for offset, (pattern, status) in enumerate(zip(patterns, statuses, strict=True)):
                index = block * BLOCK_SIZE + offset + 1
                rng = random.Random(f"fhirpanel-sandbox/{self.seed}/patient/{index}")
                if pattern == "merged_duplicate" and survivor is not None:
                    group, _ = self._patient(rng, index, pattern, status, survivor_person)
                    yield survivor + group
                    survivor = survivor_person = None
                    continue
                group, person = self._patient(rng, index, pattern, status, None)
                if pattern == "merge_survivor":
                    survivor, survivor_person = group, person
                else:
                    yield group

    # -- one patient

    def _patient(self, rng: random.Random, index: int, pattern: str, status: str,
                 survivor: Person | None) -> tuple[list[tuple[Resource, bool]], Person]:
        cal = self.calendar
        pid = f"pat-{index:06d}"
        if survivor is not None:  # the duplicate chart of the same person, merged away
            person = Person(index, pid, survivor.gender, survivor.birth, survivor.given,
                            survivor.family, survivor.main_pcp)
        else:
            person = self._person(rng, index, pid, pattern)
        age = (cal.as_of - person.birth) / 365.25
        band = _age_band(age)
        group = "child" if age < 18 else "senior" if age >= 65 else "adult"

        death = None
        if status.startswith("deceased"):
            death = max(cal.as_of - rng.randint(1, 150), person.birth + 1)
        # Half the never-seen patients still have a problem list (imported from elsewhere).
        has_history = pattern not in ("none", "merged_duplicate") or (
            pattern == "none" and rng.random() < 0.5)
        chronic = self._chronic_conditions(rng, age, person.gender) if has_history else []
        visits = self._visits(rng, person, pattern, band, group, chronic)
        if death is not None:
            visits = [v for v in visits if v.day <= death]
        visits.sort(key=lambda v: (v.day, v.minute))

        patient = self._patient_resource(rng, person, status, death, survivor, group,
                                         links_next=pattern == "merge_survivor")
        out: list[tuple[Resource, bool]] = [(patient, True)]
        encounter_ids: list[tuple[str, Visit]] = []
        for seq, visit in enumerate(visits, start=1):
            enc = self._encounter(rng, person, seq, visit, chronic, age)
            out.append((enc, True))
            encounter_ids.append((enc["id"], visit))
            self._maybe_malformed(rng, out, enc, ENCOUNTER_DEFECTS, index)
        for cond in self._conditions(rng, person, chronic, encounter_ids, band, death):
            out.append((cond, True))
            self._maybe_malformed(rng, out, cond, CONDITION_DEFECTS, index)
        return out, person

    def _person(self, rng: random.Random, index: int, pid: str, pattern: str) -> Person:
        cal = self.calendar
        lo, hi, _ = rng.choices(AGE_BANDS, weights=[b[2] for b in AGE_BANDS])[0]
        if pattern == "lapsed":
            lo = max(lo, 4)  # old enough to have had visits 24-36 months ago
            hi = max(hi, lo + 1)
        age_days = int((lo + rng.random() * (hi - lo)) * 365.25)
        birth = cal.as_of - max(age_days, 20)
        age = (cal.as_of - birth) / 365.25
        roll = rng.random()
        if age < 18:
            gender = "female" if roll < 0.49 else "male" if roll < 0.998 else "unknown"
        else:
            gender = "female" if roll < 0.53 else "male" if roll < 0.997 else "other"
        first_names: tuple[str, ...] = GIVEN_FEMALE if gender == "female" else GIVEN_MALE
        if gender in ("other", "unknown"):
            first_names = GIVEN_FEMALE + GIVEN_MALE
        given = [rng.choice(first_names)]
        if rng.random() < 0.3:
            given.append(rng.choice(first_names))
        group = "child" if age < 18 else "senior" if age >= 65 else "adult"
        members, cumulative = self.directory.pools[group]
        main_pcp = rng.choices(members, cum_weights=cumulative)[0]
        return Person(index, pid, gender, birth, given, rng.choice(FAMILY_NAMES), main_pcp)

    def _patient_resource(self, rng: random.Random, person: Person, status: str,
                          death: int | None, survivor: Person | None, group: str,
                          links_next: bool) -> Resource:
        mrn = (person.index * 7919 + self._mrn_offset) % 10**8  # 7919 prime: one per index
        res: Resource = {
            "resourceType": "Patient",
            "id": person.id,
            "identifier": [{"use": "usual", "type": MRN_TYPE, "system": MRN,
                            "value": f"M{mrn:08d}"}],
        }
        if status == "inactive":
            res["active"] = False
        elif rng.random() < 0.85:  # the rest leave `active` out, which means active
            res["active"] = True
        res["name"] = [{"use": "official", "family": person.family, "given": person.given}]
        res["gender"] = person.gender
        res["birthDate"] = date.fromordinal(person.birth).isoformat()
        if death is not None:
            if status == "deceased_flag":
                res["deceasedBoolean"] = True
            else:
                res["deceasedDateTime"] = _stamp(death, rng.randrange(24 * 60), utc=True)
        clinic = next(c for c in CLINICS if c[0] == person.main_pcp.organization)
        res["address"] = [{"city": clinic[2], "state": STATE, "postalCode": clinic[3],
                           "country": "US"}]
        if rng.random() < DECLARED_PCP_SHARE and survivor is None:
            declared = person.main_pcp
            if rng.random() < DECLARED_OTHER_SHARE:
                members = self.directory.pools[group][0]
                others = [c for c in members if c is not person.main_pcp]
                declared = rng.choice(others) if others else declared
            use_role = rng.random() < 0.4
            res["generalPractitioner"] = [declared.role_reference if use_role
                                          else declared.reference]
        res["managingOrganization"] = {"reference": f"Organization/{person.main_pcp.organization}"}
        if survivor is not None:
            res["link"] = [{"other": {"reference": f"Patient/{survivor.id}"},
                            "type": "replaced-by"}]
        elif links_next:  # the duplicate chart is the next patient record
            res["link"] = [{"other": {"reference": f"Patient/pat-{person.index + 1:06d}"},
                            "type": "replaces"}]
        return res

    # -- conditions drawn before visits (visit rates follow morbidity)

    def _chronic_conditions(self, rng: random.Random, age: float, gender: str) -> list[str]:
        band = _age_band(age)
        frailty = math.exp(rng.gauss(0.0, FRAILTY_SIGMA)) / self.frailty_norm
        if band == 0:
            frailty *= min(1.0, age / 6)  # infants and toddlers rarely carry a chronic diagnosis
        found: list[str] = []
        for key, by_band in PREVALENCE.items():
            chance = by_band[band] * frailty
            if key in SEX_FACTOR:
                chance *= SEX_FACTOR[key][0 if gender == "female" else 1]
            if key == "heart_failure" and ("cad" in found or "afib" in found):
                chance *= 2.0
            if key == "t2dm" and "t1dm" in found:
                continue
            if rng.random() < min(chance, 0.95):
                found.append(key)
        for parent, child, share in DEPENDENT_CONDITIONS:
            if parent in found and child not in found and rng.random() < share:
                found.append(child)
                if child == "ckd4":
                    found.remove("ckd3")
                elif child == "t2dm_ckd" and rng.random() < 0.5:
                    found.remove("t2dm")  # else both stay coded, as problem lists often do
        return found

    # -- visits

    def _visits(self, rng: random.Random, person: Person, pattern: str, band: int, group: str,
                chronic: list[str]) -> list[Visit]:
        cal = self.calendar
        lo_window = max(cal.window_lo, person.birth + 3)
        lo_history = max(cal.history_lo, person.birth + 3)
        yearly = min(10.0, OFFICE_RATE[band] * (3.0 if band == 0 and
                                                cal.as_of - person.birth < 730 else 1.0)
                     + OFFICE_RATE_PER_CONDITION * len(chronic))
        per_period = yearly * WINDOW_MONTHS / 12
        main = person.main_pcp
        visits: list[Visit] = []

        def office(day: int, who: Clinician, kind: str = "office") -> Visit:
            return Visit(day, _office_minute(rng), who, kind, length=rng.choice((15, 20, 30)))

        def others(*exclude: Clinician) -> list[Clinician]:
            members = self.directory.pools[group][0]
            return [c for c in members if c not in exclude]

        def colleague(*exclude: Clinician) -> Clinician:
            """Another PCP for this age group, usually from the same clinic."""
            candidates = others(*exclude)
            same_clinic = [c for c in candidates if c.organization == main.organization]
            return rng.choice(same_clinic if same_clinic and rng.random() < 0.7 else candidates)

        designed_pcp = True  # the pattern has PCP visits: add PCP noise around them
        background_hi = cal.window_hi
        if pattern in ("single", "loyal", "split", "merge_survivor"):
            least = {"single": 1, "split": 3}.get(pattern, 2)
            count = max(least, _poisson(rng, per_period))
            days = _office_days(rng, lo_window, cal.window_hi, count)
            if pattern == "split":  # the second PCP has fewer visits: a strict plurality
                second = colleague(main)
                seconds = set(rng.sample(range(count), rng.randint(1, (count - 1) // 2)))
                visits += [office(d, second if i in seconds else main)
                           for i, d in enumerate(days)]
            elif pattern == "single":
                visits += [office(d, main) for d in days]
            else:  # loyal: covering visits stay below the main PCP's count
                covering = min(sum(rng.random() < COVERING_SHARE for _ in days),
                               (count - 1) // 2)
                covered = set(rng.sample(range(count), covering))
                visits += [office(d, colleague(main) if i in covered else main)
                           for i, d in enumerate(days)]
            self._wellness(rng, visits, band, lambda v: v.clinician is main)
            before = _office_days(rng, lo_history, cal.pre_window_hi,
                                  _poisson(rng, per_period))
            history = [office(d, main if pattern == "single" or rng.random() > COVERING_SHARE
                              else colleague(main)) for d in before]
            self._wellness(rng, history, band, lambda v: v.clinician is main)
            visits += history
        elif pattern.startswith("tie_"):
            visits += self._tie(rng, pattern, main, colleague, lo_window, office)
            before = _office_days(rng, lo_history, cal.pre_window_hi, _poisson(rng, 1.0))
            visits += [office(d, main) for d in before]
        elif pattern == "noise_matters":
            # Qualifying visits: the main PCP 2, the runner-up 1; the runner-up's two later
            # visits do not qualify (visit type, status or class), so counting them flips it.
            second = colleague(main)
            d1, d2, d3, d4, d5 = _office_days(rng, lo_window, cal.window_hi, 5)
            visits += [office(d1, main), office(d2, second), office(d3, main)]
            for day in (d4, d5):
                noise = office(day, second)
                flavour = rng.random()
                if flavour < 0.5:
                    noise.kind = "excluded"
                    noise.subtype = rng.choice(("NURSE", "LAB", "VACCINE", "ANTICOAG"))
                elif flavour < 0.75:
                    noise.status = "cancelled"
                else:
                    noise.kind, noise.klass, noise.length = "home", "HH", 45
                visits.append(noise)
        elif pattern == "lapsed":
            days = _office_days(rng, lo_history, cal.lapsed_hi, rng.randint(1, 4))
            visits += [office(d, main if rng.random() < 0.75 else colleague(main))
                       for d in days]
            self._wellness(rng, visits, band, lambda v: v.clinician is main)
            background_hi = cal.lapsed_hi  # nothing at all in the last 24 months
        elif pattern == "specialist_only":
            designed_pcp = False
            kinds = [k for k, keys in SPECIALIST_FOR.items() if any(c in chronic for c in keys)]
            kind = rng.choice(kinds or list(SPECIALIST_FOR))
            who = rng.choice(self.directory.specialists[kind])
            for day in _office_days(rng, lo_window, cal.window_hi, rng.randint(1, 4)):
                visits.append(self._specialist_visit(rng, day, who))
        elif pattern == "ed_only":
            designed_pcp = False
            for day in sorted(rng.randint(lo_window, cal.window_hi)
                              for _ in range(rng.randint(1, 3))):
                visits += self._emergency(rng, day, admit=rng.random() < 0.25)
        elif pattern == "excluded_only":
            designed_pcp = False
            days = _office_days(rng, lo_window, cal.window_hi, rng.randint(1, 3))
            for i, day in enumerate(days):
                who = main if i == 0 or rng.random() < 0.3 else self._nurse(rng, main)
                visits.append(self._excluded(rng, day, who,
                                             rng.choice(("NURSE", "LAB", "VACCINE", "ANTICOAG"))))
        elif pattern == "merged_duplicate":
            days = _office_days(rng, lo_window, cal.window_hi, rng.randint(1, 2))
            return [office(d, main) for d in days]
        elif pattern == "none":
            return []

        visits += self._background(rng, person, band, group, chronic, lo_history, background_hi,
                                   designed_pcp)
        for visit in visits:  # telehealth: ordinary office visits held by video
            if visit.kind == "office" and visit.klass == "AMB" and visit.status == "finished" \
                    and rng.random() < (TELEHEALTH_SHARE if band else TELEHEALTH_SHARE / 2):
                visit.klass = "VR"
        return visits

    def _tie(self, rng: random.Random, pattern: str, main: Clinician,
             colleague: Callable[..., Clinician], lo: int,
             office: Callable[..., Visit]) -> list[Visit]:
        """Equal qualifying-visit counts in the window between two or three PCPs."""
        cal = self.calendar
        tied = [main, colleague(main)]
        if pattern == "tie_three":
            tied.append(colleague(*tied))
        each = rng.choice((1, 2, 2, 3)) if pattern != "tie_sentinel_other" else rng.choice((2, 3))
        slots = [who for who in tied for _ in range(each)]
        rng.shuffle(slots)
        same_day = pattern in ("tie_same_day", "tie_same_time")
        n_days = len(slots) - 1 if same_day else len(slots)
        outsider = colleague(*tied) if pattern == "tie_sentinel_other" else None
        days = _office_days(rng, lo, cal.window_hi, n_days + (1 if outsider else 0))
        visits: list[Visit] = []
        if outsider is not None:
            # The outsider's wellness exam comes before the last visit; it does not count
            # among the tied clinicians (Four Cut, step 3).
            outsider_day = days.pop(rng.randrange(len(days) - 1))
            visits.append(office(outsider_day, outsider, "wellness"))
        if same_day:
            # The last day is shared by the two tied clinicians; the other visits come earlier.
            first, second = tied[0], tied[1]
            earlier = list(slots)
            earlier.remove(first)
            earlier.remove(second)
            for day, who in zip(days[:-1], earlier, strict=True):
                visits.append(office(day, who))
            last_day = days[-1]
            a, b = office(last_day, first), office(last_day, second)
            if pattern == "tie_same_time":
                b.minute = a.minute
            else:  # a different hour of the same clinic day
                step = 15 * rng.randint(1, 8)
                b.minute = a.minute + step if a.minute < 12 * 60 else a.minute - step
            visits += [a, b]
            return visits
        # The last visit goes to one tied clinician; the sentinel exam to another.
        last_by = rng.choice(tied)
        slots.remove(last_by)
        rng.shuffle(slots)
        for day, who in zip(days[:-1], slots, strict=True):
            visits.append(office(day, who))
        visits.append(office(days[-1], last_by))
        if pattern == "tie_sentinel_tied":
            candidates = [v for v in visits if v.clinician is not last_by]
            rng.choice(candidates).kind = "wellness"
        return visits

    def _wellness(self, rng: random.Random, visits: list[Visit], band: int,
                  eligible: Callable[[Visit], bool]) -> None:
        candidates = [v for v in visits if v.kind == "office" and eligible(v)]
        if candidates and rng.random() < WELLNESS_SHARE[band]:
            rng.choice(candidates).kind = "wellness"

    def _nurse(self, rng: random.Random, main: Clinician) -> Clinician:
        nurses = self.directory.nurses_by_clinic.get(main.organization) or \
            self.directory.specialists["rn"]
        return rng.choice(nurses)

    def _excluded(self, rng: random.Random, day: int, who: Clinician, subtype: str) -> Visit:
        return Visit(day, _office_minute(rng), who, "excluded", subtype=subtype,
                     length=rng.choice((10, 15)))

    def _specialist_visit(self, rng: random.Random, day: int, who: Clinician) -> Visit:
        return Visit(day, _office_minute(rng), who, "specialist", length=rng.choice((20, 30, 40)),
                     organization=HOSPITAL[0])

    def _emergency(self, rng: random.Random, day: int, admit: bool) -> list[Visit]:
        minute = rng.randrange(24 * 60)
        stay = rng.randint(120, 480)
        doctor = rng.choice(self.directory.specialists["emergency"])
        out = [Visit(day, minute, doctor, "ed", klass="EMER", length=stay,
                     organization=HOSPITAL[0])]
        if admit:
            start = minute + stay
            out.append(self._inpatient(rng, day + start // 1440, start % 1440))
        return out

    def _inpatient(self, rng: random.Random, day: int, minute: int) -> Visit:
        length = rng.randint(1, 6) * 1440 + rng.randrange(-300, 300)
        hospitalist = rng.choice(self.directory.specialists["hospitalist"])
        visit = Visit(day, minute, hospitalist, "inpatient", klass="IMP", length=length,
                      organization=HOSPITAL[0])
        if day * 1440 + minute + length >= (self.calendar.as_of + 1) * 1440:
            visit.status = "in-progress"  # still in hospital on the as-of date
        return visit

    def _background(self, rng: random.Random, person: Person, band: int, group: str,
                    chronic: list[str], lo: int, hi: int, designed_pcp: bool) -> list[Visit]:
        """Visits that never qualify under the default rules: emergency, inpatient, specialist,
        and, around PCP care, excluded visit types, home health, cancelled and future
        appointments."""
        cal = self.calendar
        main = person.main_pcp
        out: list[Visit] = []
        if hi < lo:
            return out
        years = (hi - lo) / 365.25
        n_chronic = len(chronic)
        ed_rate = (0.25 if band == 0 else 0.15) + 0.05 * n_chronic + \
            (0.2 if "heart_failure" in chronic or "copd" in chronic else 0.0)
        for _ in range(min(_poisson(rng, ed_rate * years), 12)):
            out += self._emergency(rng, rng.randint(lo, hi),
                                   admit=band >= 2 and rng.random() < 0.2)
        imp_rate = 0.01 + (0.04 if band >= 3 else 0.0) + 0.015 * n_chronic
        for _ in range(min(_poisson(rng, imp_rate * years), 6)):
            out.append(self._inpatient(rng, rng.randint(lo, hi),
                                       rng.randrange(24 * 60)))
        for kind, keys in SPECIALIST_FOR.items():
            if any(k in chronic for k in keys) or (kind == "endocrinology" and "t2dm" in chronic
                                                   and rng.random() < 0.3):
                who = self.directory.specialists[kind][
                    person.index % len(self.directory.specialists[kind])]
                for day in _office_days(rng, lo, hi,
                                        min(_poisson(rng, 1.2 * years), 8)):
                    out.append(self._specialist_visit(rng, day, who))
        if not designed_pcp:
            return out
        # Excluded visit types: mostly with a nurse, some with the PCP (so that excluding them
        # changes a PCP's count).
        excluded: list[str] = []
        if chronic:
            excluded += ["LAB"] * min(_poisson(rng, 0.5 * years), 6)
        if "hypertension" in chronic:
            excluded += ["NURSE"] * _poisson(rng, 0.4 * years)
        if "afib" in chronic:
            excluded += ["ANTICOAG"] * min(_poisson(rng, 3.0 * years), 12)
        excluded += ["VACCINE"] * sum(rng.random() < (0.45 if band in (0, 4) else 0.3)
                                      for _ in range(3))
        for subtype in excluded:
            who = main if rng.random() < 0.3 else self._nurse(rng, main)
            day = _office_days(rng, lo, hi, 1)[0]
            out.append(self._excluded(rng, day, who, subtype))
        if band >= 4 or "alzheimers" in chronic or "heart_failure" in chronic:
            for day in _office_days(rng, lo, hi, min(_poisson(rng, 0.6 * years), 6)):
                who = main if rng.random() < 0.3 else self._nurse(rng, main)
                out.append(Visit(day, 9 * 60 + 30 * rng.randrange(16), who, "home", klass="HH",
                                 length=45))
        for _ in range(_poisson(rng, CANCELLED_SHARE * 3 * years)):
            day = _office_days(rng, lo, hi, 1)[0]
            who = main if rng.random() < 0.6 else rng.choice(self.directory.pools[group][0])
            out.append(Visit(day, _office_minute(rng), who, "office", status="cancelled"))
        if hi < cal.window_hi:  # lapsed: no recent activity of any kind
            return out
        if rng.random() < 0.04:  # a booked appointment in the weeks after the as-of date
            day = _office_days(rng, cal.as_of + 1, cal.as_of + 30, 1)[0]
            out.append(Visit(day, _office_minute(rng), main, "office", status="planned"))
        if rng.random() < 0.003:  # in the building on the as-of date
            out.append(Visit(cal.as_of, _office_minute(rng), main, "office",
                             status="in-progress"))
        if rng.random() < 0.003:  # admitted in the last few days, not yet discharged
            out.append(self._inpatient(rng, cal.as_of - rng.randint(0, 3), rng.randrange(1440)))
        return out

    # -- resources

    def _encounter(self, rng: random.Random, person: Person, seq: int, visit: Visit,
                   chronic: list[str], age_now: float) -> Resource:
        res: Resource = {
            "resourceType": "Encounter",
            "id": f"enc-{person.index:06d}-{seq:03d}",
            "status": visit.status,
            "class": ENCOUNTER_CLASS[visit.klass],
        }
        reasons: list[dict[str, Any]] = []
        kind = visit.kind
        if kind in ("office", "specialist"):
            followup = bool(chronic) and rng.random() < 0.5
            res["type"] = OFFICE_TYPES["followup" if followup else "checkup"]
            if followup and rng.random() < 0.5:
                cond = CONDITIONS[rng.choice(chronic)]
                reasons.append(_concept(_coding(SNOMED, cond.snomed, cond.display)))
        elif kind == "wellness":
            age = age_now - (self.calendar.as_of - visit.day) / 365.25
            concepts, where = _wellness_codes(rng, age)
            if where == "type":
                res["type"] = [_concept(*concepts, LOCAL_WELLNESS, text="Annual physical")]
            else:
                res["type"] = WELLNESS_LOCAL_ONLY
                if where == "serviceType":
                    res["serviceType"] = _concept(*concepts)
                else:
                    reasons.append(_concept(*concepts))
        elif kind == "excluded":
            res["type"] = EXCLUDED_TYPES[visit.subtype]
        elif kind == "ed":
            res["type"] = EMERGENCY_TYPE
        elif kind == "inpatient":
            res["type"] = INPATIENT_TYPE
        else:
            res["type"] = HOME_TYPE
        res["subject"] = {"reference": f"Patient/{person.id}"}
        res["participant"] = self._participants(rng, visit)
        utc = rng.random() < UTC_STAMP_SHARE
        period = {"start": _stamp(visit.day, visit.minute, utc)}
        if visit.status == "finished":
            period["end"] = _stamp(visit.day, visit.minute + visit.length, utc)
        res["period"] = period
        if reasons:
            res["reasonCode"] = reasons
        res["serviceProvider"] = {
            "reference": f"Organization/{visit.organization or visit.clinician.organization}"}
        return res

    def _participants(self, rng: random.Random, visit: Visit) -> list[dict[str, Any]]:
        """The visit's clinician is found by docs/methods.md s.1 (PPRF, else ATND, else the first
        participant with an individual) whichever of these shapes an EHR sends."""
        who = visit.clinician
        individual = who.role_reference if rng.random() < ROLE_REFERENCE_SHARE else who.reference
        if visit.kind in ("ed", "inpatient"):
            return [{"type": PARTICIPANT_TYPE["ATND" if visit.kind == "inpatient" or
                                              rng.random() < 0.5 else "PPRF"],
                     "individual": individual}]
        shape = rng.random()
        if shape < 0.70:
            return [{"type": PARTICIPANT_TYPE["PPRF"], "individual": individual}]
        if shape < 0.80:
            return [{"type": PARTICIPANT_TYPE["ATND"], "individual": individual}]
        helper = self._nurse(rng, who) if who.kind != "rn" else None
        if shape < 0.88 and helper is not None:  # a secondary performer listed first
            return [{"type": PARTICIPANT_TYPE["SPRF"], "individual": helper.reference},
                    {"type": PARTICIPANT_TYPE["PPRF"], "individual": individual}]
        if shape < 0.93:  # older interfaces send no participant type
            return [{"individual": individual}]
        out = [{"type": PARTICIPANT_TYPE["PPRF"], "individual": individual}]
        if helper is not None:
            out.append({"type": PARTICIPANT_TYPE["SPRF"], "individual": helper.reference})
        return out

    def _conditions(self, rng: random.Random, person: Person, chronic: list[str],
                    encounters: list[tuple[str, Visit]], band: int,
                    death: int | None) -> list[Resource]:
        cal = self.calendar
        last_day = death if death is not None else cal.as_of
        out: list[Resource] = []
        seq = 0
        for key in chronic:
            seq += 1
            hi = max(person.birth, last_day - 14)
            lo = min(max(person.birth + (30 if key == "asthma" else 365), last_day - 7300), hi)
            onset = rng.randint(lo, hi)
            recorded = min(onset + rng.randrange(90), last_day)
            verification = _verification(rng)
            clinical: str | None = "active"
            roll = rng.random()
            if verification == "entered-in-error":
                clinical = None  # R4 con-5: no clinicalStatus on an entered-in-error record
            elif roll < 0.04:
                clinical = None  # some problem lists carry no status at all
            elif roll < 0.07:
                clinical = "remission"
            out.append(self._condition(rng, person, seq, CONDITIONS[key], clinical,
                                       verification, PROBLEM_LIST, onset, recorded, None, None))
        acute_share = 0.30 if band == 0 else 0.15
        for enc_id, visit in encounters:
            if visit.status != "finished" or visit.kind not in ("office", "ed"):
                continue
            if rng.random() >= (0.4 if visit.kind == "ed" else acute_share):
                continue
            if visit.kind == "ed" and rng.random() < 0.5:
                key = "sprain"
            else:
                key = "uri" if rng.random() < 0.65 else "sinusitis"
            seq += 1
            verification = _verification(rng)
            abatement = visit.day + rng.randint(7, 21)
            clinical = "resolved"
            if abatement > last_day:
                clinical, abatement_day = "active", None
            else:
                abatement_day = abatement
            if verification == "entered-in-error":
                clinical, abatement_day = None, None
            out.append(self._condition(rng, person, seq, CONDITIONS[key], clinical, verification,
                                       ENCOUNTER_DIAGNOSIS, visit.day, visit.day, enc_id,
                                       abatement_day))
        return out

    def _condition(self, rng: random.Random, person: Person, seq: int, cond: ConditionDef,
                   clinical: str | None, verification: str, category: list[dict[str, Any]],
                   onset: int, recorded: int, encounter: str | None,
                   abatement: int | None) -> Resource:
        res: Resource = {"resourceType": "Condition", "id": f"cond-{person.index:06d}-{seq:03d}"}
        if clinical is not None:
            res["clinicalStatus"] = CLINICAL_STATUS[clinical]
        res["verificationStatus"] = VERIFICATION_STATUS[verification]
        res["category"] = category
        mix = rng.random()  # ~60% both codings, ~30% SNOMED only, ~10% ICD-10-CM only
        codings = []
        if mix < 0.9:
            codings.append(_coding(SNOMED, cond.snomed, cond.display))
        if mix < 0.6 or mix >= 0.9:
            codings.append(_coding(ICD10CM, cond.icd10cm, cond.display))
        res["code"] = _concept(*codings, text=cond.display)
        res["subject"] = {"reference": f"Patient/{person.id}"}
        if encounter is not None:
            res["encounter"] = {"reference": f"Encounter/{encounter}"}
        res["onsetDateTime"] = date.fromordinal(onset).isoformat()
        if abatement is not None:
            res["abatementDateTime"] = date.fromordinal(abatement).isoformat()
        res["recordedDate"] = date.fromordinal(recorded).isoformat()
        return res

    def _maybe_malformed(self, rng: random.Random, out: list[tuple[Resource, bool]],
                         good: Resource, defects: tuple[str, ...], index: int) -> None:
        """Now and then, a broken copy of the resource just made (an extra record, so the
        designed visit patterns stay intact)."""
        if self.malformed_odds <= 0 or rng.random() >= self.malformed_odds:
            return
        defect = rng.choice(defects)
        bad = dict(good)
        bad["id"] = good["id"] + MALFORMED_ID_SUFFIX
        if defect == "no-subject":
            del bad["subject"]
        elif defect == "unknown-subject":
            # A patient number past the end of the population: the reference resolves to none.
            bad["subject"] = {"reference": f"Patient/pat-{self.patients + index:06d}"}
        elif defect == "bad-date":
            if bad["resourceType"] == "Encounter":
                bad["period"] = {"start": BAD_DATE}
            else:
                bad["onsetDateTime"] = BAD_DATE
        elif defect == "participant-no-individual":
            bad["participant"] = [{"type": PARTICIPANT_TYPE["PPRF"]}]
        else:
            del bad["participant"]
        storable = defect in STORABLE_DEFECTS or (
            defect == "no-subject" and bad["resourceType"] == "Encounter")
        out.append((bad, storable))


def _age_band(age: float) -> int:
    if age < 18:
        return 0
    if age < 40:
        return 1
    if age < 65:
        return 2
    return 3 if age < 80 else 4


def _verification(rng: random.Random) -> str:
    roll = rng.random()
    return "refuted" if roll < 0.02 else "entered-in-error" if roll < 0.03 else "confirmed"


def _preventive_cpt(age: float, new_patient: bool) -> str:
    """CPT preventive medicine visit codes by age band (new 99381-99387, established
    99391-99397)."""
    bounds = (1, 5, 12, 18, 40, 65)
    step = next((i for i, bound in enumerate(bounds) if age < bound), len(bounds))
    return str((99381 if new_patient else 99391) + step)


def _wellness_codes(rng: random.Random, age: float) -> tuple[list[dict[str, str]], str]:
    """The codings of a sentinel exam and where the EHR puts them (type ~85%, else serviceType
    or reasonCode; docs/methods.md s.2 looks at all three)."""
    snomed = WELL_CHILD if age < 18 else GENERAL_EXAM
    cpt = _coding(CPT, _preventive_cpt(age, rng.random() < 0.2))
    roll = rng.random()
    if age >= 65 and rng.random() < 0.4:  # Medicare annual wellness visit (HCPCS)
        awv = (_coding(HCPCS, "G0438", "Annual wellness visit, initial") if rng.random() < 0.25
               else _coding(HCPCS, "G0439", "Annual wellness visit, subsequent"))
        codings = [awv] if roll < 0.5 else [snomed, awv]
    elif roll < 0.55:
        codings = [snomed]
    elif roll < 0.8:
        codings = [snomed, cpt]
    else:
        codings = [cpt]
    place = rng.random()
    where = "type" if place < 0.85 else "serviceType" if place < 0.925 else "reasonCode"
    return codings, where


# ---------------------------------------------------------------- public API


def _check_arguments(patients: int, malformed_rate: float, bundle_size: int = 1) -> None:
    if patients < 0:
        raise ConfigError(f"patients must be zero or more, not {patients}")
    if not 0.0 <= malformed_rate < 0.5:
        raise ConfigError(f"malformed rate must be in [0, 0.5), not {malformed_rate}")
    if bundle_size < 1:
        raise ConfigError(f"bundle size must be at least 1, not {bundle_size}")


def _directory_resources(seed: int, directory: Directory) -> list[Resource]:
    out = organization_resources(seed)
    clinicians = directory.clinicians
    out += [practitioner_resource(c) for c in clinicians]
    out += [practitioner_role_resource(c) for c in clinicians]
    return out


def _as_date(as_of: date) -> date:
    return date(as_of.year, as_of.month, as_of.day)  # a datetime passed in loses its time


def generate_population(patients: int, seed: int, as_of: date, malformed_rate: float = 0.01
                        ) -> Iterator[dict[str, Any]]:
    """FHIR R4 resources of a synthetic primary-care practice, streamed: organisations,
    practitioners and roles first, then each patient with their encounters and conditions."""
    _check_arguments(patients, malformed_rate)
    generator = PatientGenerator(patients, seed, _as_date(as_of), malformed_rate)
    yield from _directory_resources(seed, generator.directory)
    for group in generator.groups():
        for resource, _ in group:
            yield resource


def write_population(out_dir: Path, patients: int, seed: int, as_of: date,
                     malformed_rate: float = 0.01, bundle_size: int = 500) -> dict[str, int]:
    """Write `<Type>.ndjson` (Bulk Data style) and `bundles/transaction-NNNN.json` (PUT by id,
    at most `bundle_size` entries, organisations and clinicians first). A patient's resources
    share a bundle when they fit (a merged pair too), so references point at the same or an
    earlier bundle. Malformed records no server would store (a bad date, a dangling or missing
    Condition subject) are left out of the bundles. Returns NDJSON counts per resource type."""
    _check_arguments(patients, malformed_rate, bundle_size)
    out_dir = Path(out_dir)
    bundle_dir = out_dir / "bundles"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    for stale in bundle_dir.glob("transaction-*.json"):  # a rerun must not leave extra bundles
        stale.unlink()
    generator = PatientGenerator(patients, seed, _as_date(as_of), malformed_rate)
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    handles = {rtype: (out_dir / f"{rtype}.ndjson").open("wb", buffering=1 << 20)
               for rtype in RESOURCE_TYPES}
    writer = _BundleWriter(bundle_dir, bundle_size)
    try:
        directory = [(res, True) for res in _directory_resources(seed, generator.directory)]
        writer.add_group(_serialise(directory, handles, counts))
        for group in generator.groups():
            writer.add_group(_serialise(group, handles, counts))
        writer.flush()
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def _serialise(group: list[tuple[Resource, bool]], handles: dict[str, Any],
               counts: dict[str, int]) -> list[bytes]:
    """Write each resource's NDJSON line; return the bundle entries of the storable ones."""
    entries = []
    for resource, storable in group:
        rtype = resource["resourceType"]
        line = orjson.dumps(resource)
        handles[rtype].write(line + b"\n")
        counts[rtype] += 1
        if storable:
            url = f'{rtype}/{resource["id"]}'.encode()
            entries.append(b'{"resource":' + line + b',"request":{"method":"PUT","url":"'
                           + url + b'"}}')
    return entries


class _BundleWriter:
    """Packs entries into transaction Bundles of at most `size` entries, keeping a group in one
    bundle when it fits. One entry per line: compact, and readable in a diff."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size
        self.pending: list[bytes] = []
        self.written = 0

    def add_group(self, entries: list[bytes]) -> None:
        if len(self.pending) + len(entries) > self.size:
            self.flush()
        while len(entries) > self.size:  # a group larger than a bundle is split in order
            self.pending = entries[: self.size]
            entries = entries[self.size:]
            self.flush()
        self.pending.extend(entries)

    def flush(self) -> None:
        if not self.pending:
            return
        self.written += 1
        body = (b'{"resourceType":"Bundle","type":"transaction","entry":[\n'
                + b",\n".join(self.pending) + b"\n]}\n")
        (self.directory / f"transaction-{self.written:04d}.json").write_bytes(body)
        self.pending = []
