"""One synthetic patient at a time: who they are, what they have (chronic conditions drawn by
age band, sex and a shared frailty), and their FHIR resources: the Patient, an Encounter per
visit, a Condition per problem-list entry and acute diagnosis, and now and then a malformed copy
of one (an extra record, so the designed visit patterns stay intact)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any, Final

from fhirpanel.domain.records import CPT, HCPCS, ICD10CM, PARTICIPATION_TYPE, SNOMED, V3_ACT_CODE
from fhirpanel.sandbox.catalogue import CATALOGUE, ConditionDef
from fhirpanel.sandbox.common import Resource, coding, concept, seeded
from fhirpanel.sandbox.directory import (
    CLINICS,
    FAMILY_NAMES,
    GIVEN_FEMALE,
    GIVEN_MALE,
    STATE,
    build_directory,
)
from fhirpanel.sandbox.visits import (
    BLOCK_SIZE,
    Calendar,
    Person,
    Visit,
    VisitPlanner,
    deal_block,
)

V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER_STATUS: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
VISIT_TYPE: Final = "urn:fhirpanel:sandbox:visit-type"  # an EHR's local appointment types
MRN: Final = "urn:fhirpanel:sandbox:mrn"

# Malformed copies carry this id suffix so tests can find them; nothing else marks them.
MALFORMED_ID_SUFFIX: Final = "-x"
ENCOUNTER_DEFECTS: Final = (
    "no-subject",
    "unknown-subject",
    "bad-date",
    "participant-no-individual",
    "no-participant",
)
CONDITION_DEFECTS: Final = ("no-subject", "unknown-subject", "bad-date")
# Defects a conformant server still stores (Encounter.subject and .participant are optional);
# the others are refused by any server, so they live in the NDJSON export only.
STORABLE_DEFECTS: Final = ("participant-no-individual", "no-participant")
BAD_DATE: Final = "2025-13-45"

CONDITION_CATALOGUE: Final = CATALOGUE.conditions
CONDITIONS: Final = {c.key: c for c in CONDITION_CATALOGUE}
PREVALENCE: Final = CATALOGUE.prevalence
DEPENDENT_CONDITIONS: Final = CATALOGUE.dependent_conditions
SEX_FACTOR: Final = CATALOGUE.sex_factor
AGE_BANDS: Final = CATALOGUE.age_bands
FRAILTY_SIGMA: Final = 0.5  # log-normal spread that correlates multimorbidity within a patient

DECLARED_PCP_SHARE: Final = 0.10
DECLARED_OTHER_SHARE: Final = 0.30
ROLE_REFERENCE_SHARE: Final = 0.10
UTC_STAMP_SHARE: Final = 0.40

ENCOUNTER_CLASS: Final = {
    "AMB": coding(V3_ACT_CODE, "AMB", "ambulatory"),
    "VR": coding(V3_ACT_CODE, "VR", "virtual"),
    "EMER": coding(V3_ACT_CODE, "EMER", "emergency"),
    "IMP": coding(V3_ACT_CODE, "IMP", "inpatient encounter"),
    "HH": coding(V3_ACT_CODE, "HH", "home health"),
}
PARTICIPANT_TYPE: Final = {
    code: [concept(coding(PARTICIPATION_TYPE, code, display))]
    for code, display in (
        ("PPRF", "primary performer"),
        ("ATND", "attender"),
        ("SPRF", "secondary performer"),
    )
}
LOCAL_OFFICE: Final = coding(VISIT_TYPE, "OFFICE", "Office visit")
LOCAL_WELLNESS: Final = coding(VISIT_TYPE, "WELLNESS", "Wellness visit")
CHECKUP: Final = coding(SNOMED, "185349003", "Encounter for check up")
FOLLOW_UP: Final = coding(SNOMED, "390906007", "Follow-up encounter")
GENERAL_EXAM: Final = coding(SNOMED, "162673000", "General examination of patient")
WELL_CHILD: Final = coding(SNOMED, "410620009", "Well child visit")
OFFICE_TYPES: Final = {
    "checkup": [concept(CHECKUP, LOCAL_OFFICE, text="Office visit")],
    "followup": [concept(FOLLOW_UP, LOCAL_OFFICE, text="Follow-up visit")],
}
WELLNESS_LOCAL_ONLY: Final = [concept(LOCAL_WELLNESS, text="Annual physical")]
EXCLUDED_TYPES: Final = {
    "NURSE": [concept(coding(VISIT_TYPE, "NURSE", "Nurse-only visit"), text="Nurse visit")],
    "LAB": [
        concept(
            coding(SNOMED, "82078001", "Collection of blood specimen for laboratory"),
            coding(VISIT_TYPE, "LAB", "Lab draw"),
            text="Lab draw",
        )
    ],
    "VACCINE": [
        concept(
            coding(SNOMED, "33879002", "Administration of vaccine to produce active immunity"),
            coding(VISIT_TYPE, "VACCINE", "Vaccine-only visit"),
            text="Vaccine visit",
        )
    ],
    "ANTICOAG": [
        concept(
            coding(VISIT_TYPE, "ANTICOAG", "Anticoagulation clinic"), text="Anticoagulation clinic"
        )
    ],
}
EMERGENCY_TYPE: Final = [concept(coding(SNOMED, "50849002", "Emergency room admission"))]
INPATIENT_TYPE: Final = [concept(coding(SNOMED, "32485007", "Hospital admission"))]
HOME_TYPE: Final = [
    concept(coding(VISIT_TYPE, "HOME", "Home health visit"), text="Home health visit")
]
CLINICAL_STATUS: Final = {
    s: concept(coding(CONDITION_CLINICAL, s)) for s in ("active", "remission", "resolved")
}
VERIFICATION_STATUS: Final = {
    s: concept(coding(CONDITION_VER_STATUS, s))
    for s in ("confirmed", "refuted", "entered-in-error")
}
PROBLEM_LIST: Final = [
    concept(coding(CONDITION_CATEGORY, "problem-list-item", "Problem List Item"))
]
ENCOUNTER_DIAGNOSIS: Final = [
    concept(coding(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis"))
]
MRN_TYPE: Final = concept(coding(V2_0203, "MR", "Medical record number"))


class PatientGenerator:
    """Builds one patient's resources at a time; holds only the directory and the calendar."""

    def __init__(
        self,
        patients: int,
        seed: int,
        as_of: date,
        malformed_rate: float,
        utilisation: str = "mild",
    ) -> None:
        self.patients = patients
        self.seed = seed
        self.calendar = Calendar.for_as_of(as_of)
        self.directory = build_directory(patients, seed)
        self.malformed_odds = malformed_rate / (1.0 - malformed_rate)  # extra per good record
        self.frailty_norm = math.exp(FRAILTY_SIGMA**2 / 2)  # so frailty averages 1
        self._mrn_offset = seeded(f"fhirpanel-sandbox/{seed}/mrn").randrange(10**7)
        self.planner = VisitPlanner(self.calendar, self.directory, utilisation)

    # -- the stream

    def groups(self) -> Iterator[list[tuple[Resource, bool]]]:
        """Per patient (a merged pair together): (resource, a server would store it)."""
        survivor: list[tuple[Resource, bool]] | None = None
        survivor_person: Person | None = None
        for block in range(math.ceil(self.patients / BLOCK_SIZE)):
            patterns, statuses = deal_block(self.seed, block, self.patients)
            for offset, (pattern, status) in enumerate(zip(patterns, statuses, strict=True)):
                index = block * BLOCK_SIZE + offset + 1
                rng = seeded(f"fhirpanel-sandbox/{self.seed}/patient/{index}")
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

    def _patient(
        self, rng: random.Random, index: int, pattern: str, status: str, survivor: Person | None
    ) -> tuple[list[tuple[Resource, bool]], Person]:
        cal = self.calendar
        pid = f"pat-{index:06d}"
        if survivor is not None:  # the duplicate chart of the same person, merged away
            person = Person(
                index,
                pid,
                survivor.gender,
                survivor.birth,
                survivor.given,
                survivor.family,
                survivor.main_pcp,
            )
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
            pattern == "none" and rng.random() < 0.5
        )
        chronic = self._chronic_conditions(rng, age, person.gender) if has_history else []
        visits = self.planner.plan(rng, person, pattern, band, group, chronic)
        if death is not None:
            visits = [v for v in visits if v.day <= death]
        visits.sort(key=lambda v: (v.day, v.minute))

        patient = self._patient_resource(
            rng, person, status, death, survivor, group, links_next=pattern == "merge_survivor"
        )
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
        lo, hi, _ = rng.choices(AGE_BANDS, weights=[b.weight for b in AGE_BANDS])[0]
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

    def _patient_resource(
        self,
        rng: random.Random,
        person: Person,
        status: str,
        death: int | None,
        survivor: Person | None,
        group: str,
        links_next: bool,
    ) -> Resource:
        mrn = (person.index * 7919 + self._mrn_offset) % 10**8  # 7919 prime: one per index
        res: Resource = {
            "resourceType": "Patient",
            "id": person.id,
            "identifier": [
                {"use": "usual", "type": MRN_TYPE, "system": MRN, "value": f"M{mrn:08d}"}
            ],
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
        clinic = next(c for c in CLINICS if c.id == person.main_pcp.organization)
        res["address"] = [
            {"city": clinic.city, "state": STATE, "postalCode": clinic.postal_code, "country": "US"}
        ]
        if rng.random() < DECLARED_PCP_SHARE and survivor is None:
            declared = person.main_pcp
            if rng.random() < DECLARED_OTHER_SHARE:
                members = self.directory.pools[group][0]
                others = [c for c in members if c is not person.main_pcp]
                declared = rng.choice(others) if others else declared
            use_role = rng.random() < 0.4
            res["generalPractitioner"] = [
                declared.role_reference if use_role else declared.reference
            ]
        res["managingOrganization"] = {"reference": f"Organization/{person.main_pcp.organization}"}
        if survivor is not None:
            res["link"] = [
                {"other": {"reference": f"Patient/{survivor.id}"}, "type": "replaced-by"}
            ]
        elif links_next:  # the duplicate chart is the next patient record
            res["link"] = [
                {"other": {"reference": f"Patient/pat-{person.index + 1:06d}"}, "type": "replaces"}
            ]
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

    # -- resources

    def _encounter(
        self,
        rng: random.Random,
        person: Person,
        seq: int,
        visit: Visit,
        chronic: list[str],
        age_now: float,
    ) -> Resource:
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
                reasons.append(concept(coding(SNOMED, cond.snomed, cond.display)))
        elif kind == "wellness":
            age = age_now - (self.calendar.as_of - visit.day) / 365.25
            concepts, where = _wellness_codes(rng, age)
            if where == "type":
                res["type"] = [concept(*concepts, LOCAL_WELLNESS, text="Annual physical")]
            else:
                res["type"] = WELLNESS_LOCAL_ONLY
                if where == "serviceType":
                    res["serviceType"] = concept(*concepts)
                else:
                    reasons.append(concept(*concepts))
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
            "reference": f"Organization/{visit.organization or visit.clinician.organization}"
        }
        return res

    def _participants(self, rng: random.Random, visit: Visit) -> list[dict[str, Any]]:
        """The visit's clinician is found by docs/methods.md s.1 (PPRF, else ATND, else the first
        participant with an individual) whichever of these shapes an EHR sends."""
        who = visit.clinician
        individual = who.role_reference if rng.random() < ROLE_REFERENCE_SHARE else who.reference
        if visit.kind in ("ed", "inpatient"):
            return [
                {
                    "type": PARTICIPANT_TYPE[
                        "ATND" if visit.kind == "inpatient" or rng.random() < 0.5 else "PPRF"
                    ],
                    "individual": individual,
                }
            ]
        shape = rng.random()
        if shape < 0.70:
            return [{"type": PARTICIPANT_TYPE["PPRF"], "individual": individual}]
        if shape < 0.80:
            return [{"type": PARTICIPANT_TYPE["ATND"], "individual": individual}]
        helper = self.directory.nurse(rng, who) if who.kind != "rn" else None
        if shape < 0.88 and helper is not None:  # a secondary performer listed first
            return [
                {"type": PARTICIPANT_TYPE["SPRF"], "individual": helper.reference},
                {"type": PARTICIPANT_TYPE["PPRF"], "individual": individual},
            ]
        if shape < 0.93:  # older interfaces send no participant type
            return [{"individual": individual}]
        out = [{"type": PARTICIPANT_TYPE["PPRF"], "individual": individual}]
        if helper is not None:
            out.append({"type": PARTICIPANT_TYPE["SPRF"], "individual": helper.reference})
        return out

    def _conditions(
        self,
        rng: random.Random,
        person: Person,
        chronic: list[str],
        encounters: list[tuple[str, Visit]],
        band: int,
        death: int | None,
    ) -> list[Resource]:
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
            out.append(
                self._condition(
                    rng,
                    person,
                    seq,
                    CONDITIONS[key],
                    clinical,
                    verification,
                    PROBLEM_LIST,
                    onset,
                    recorded,
                    None,
                    None,
                )
            )
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
            out.append(
                self._condition(
                    rng,
                    person,
                    seq,
                    CONDITIONS[key],
                    clinical,
                    verification,
                    ENCOUNTER_DIAGNOSIS,
                    visit.day,
                    visit.day,
                    enc_id,
                    abatement_day,
                )
            )
        return out

    def _condition(
        self,
        rng: random.Random,
        person: Person,
        seq: int,
        cond: ConditionDef,
        clinical: str | None,
        verification: str,
        category: list[dict[str, Any]],
        onset: int,
        recorded: int,
        encounter: str | None,
        abatement: int | None,
    ) -> Resource:
        res: Resource = {"resourceType": "Condition", "id": f"cond-{person.index:06d}-{seq:03d}"}
        if clinical is not None:
            res["clinicalStatus"] = CLINICAL_STATUS[clinical]
        res["verificationStatus"] = VERIFICATION_STATUS[verification]
        res["category"] = category
        mix = rng.random()  # ~60% both codings, ~30% SNOMED only, ~10% ICD-10-CM only
        codings = []
        if mix < 0.9:
            codings.append(coding(SNOMED, cond.snomed, cond.display))
        if mix < 0.6 or mix >= 0.9:
            codings.append(coding(ICD10CM, cond.icd10cm, cond.display))
        res["code"] = concept(*codings, text=cond.display)
        res["subject"] = {"reference": f"Patient/{person.id}"}
        if encounter is not None:
            res["encounter"] = {"reference": f"Encounter/{encounter}"}
        res["onsetDateTime"] = date.fromordinal(onset).isoformat()
        if abatement is not None:
            res["abatementDateTime"] = date.fromordinal(abatement).isoformat()
        res["recordedDate"] = date.fromordinal(recorded).isoformat()
        return res

    def _maybe_malformed(
        self,
        rng: random.Random,
        out: list[tuple[Resource, bool]],
        good: Resource,
        defects: tuple[str, ...],
        index: int,
    ) -> None:
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
            defect == "no-subject" and bad["resourceType"] == "Encounter"
        )
        out.append((bad, storable))


def _stamp(ordinal: int, minute: int, utc: bool) -> str:
    """A dateTime with a US Central-style offset, or the same instant in UTC with `Z`.
    Daylight time is approximated by month; either way the instant is a real one."""
    local = datetime.fromordinal(ordinal) + timedelta(minutes=minute)
    offset = 5 if 4 <= local.month <= 10 else 6
    if utc:
        return (local + timedelta(hours=offset)).isoformat() + "Z"
    return f"{local.isoformat()}-0{offset}:00"


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
    cpt = coding(CPT, _preventive_cpt(age, rng.random() < 0.2))
    roll = rng.random()
    if age >= 65 and rng.random() < 0.4:  # Medicare annual wellness visit (HCPCS)
        awv = (
            coding(HCPCS, "G0438", "Annual wellness visit, initial")
            if rng.random() < 0.25
            else coding(HCPCS, "G0439", "Annual wellness visit, subsequent")
        )
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
