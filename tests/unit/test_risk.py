"""score_patients end to end on hand-built records: condition filters, the SNOMED crosswalk,
Charlson, HCC, utilisation, CCM, tiers, determinism and the report shape."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from fhirpanel.config import Settings
from fhirpanel.domain.records import (
    ICD10,
    ICD10CM,
    SNOMED,
    Code,
    ConditionRecord,
    EncounterRecord,
    PatientRecord,
    Population,
)
from fhirpanel.domain.risk import (
    RiskConfig,
    RiskResult,
    age_on,
    check_tier_shape,
    months_before,
    score_patients,
    tier_distribution,
    tier_distribution_by_panel,
)
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables

AS_OF = date(2026, 11, 22)
BORN_72 = date(1954, 3, 1)  # 72 on the as-of date


SHIPPED = Tables.load(Settings.load(env={})).method.risk


def config(**overrides: Any) -> RiskConfig:
    """The shipped risk tables with a weight set, age points, model or segment changed, as
    settings would change them (RiskConfig checks the names)."""
    return dataclasses.replace(SHIPPED, **overrides)


DEFAULT = config()


def patient(
    pid: str = "Patient/p1", sex: str | None = "female", born: date | None = BORN_72
) -> PatientRecord:
    return PatientRecord(id=pid, sex=sex, birth_date=born)


def icd(
    cid: str, code: str, pid: str = "Patient/p1", system: str = ICD10CM, **kwargs: Any
) -> ConditionRecord:
    return ConditionRecord(id=cid, patient=pid, codes=(Code(system, code),), **kwargs)


def snomed(cid: str, code: str, pid: str = "Patient/p1", **kwargs: Any) -> ConditionRecord:
    return ConditionRecord(id=cid, patient=pid, codes=(Code(SNOMED, code),), **kwargs)


def encounter(
    eid: str, klass: str, day: date, status: str = "finished", pid: str = "Patient/p1"
) -> EncounterRecord:
    start = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    return EncounterRecord(id=eid, patient=pid, status=status, class_code=klass, start=start)


def score_one(
    conditions: list[ConditionRecord],
    *,
    pat: PatientRecord | None = None,
    encounters: list[EncounterRecord] | None = None,
    cfg: RiskConfig = DEFAULT,
) -> RiskResult:
    pat = pat or patient()
    pop = Population(patients={pat.id: pat}, conditions=conditions, encounters=encounters or [])
    return score_patients(pop, AS_OF, cfg)[pat.id]


THREE_ICD = [
    icd("Condition/c1", "E11.9"),
    icd("Condition/c2", "I50.9"),
    icd("Condition/c3", "N18.4"),
]
# The same three diagnoses as SNOMED CT only (type 2 diabetes, heart failure, CKD stage 4).
THREE_SNOMED = [
    snomed("Condition/c1", "44054006"),
    snomed("Condition/c2", "84114007"),
    snomed("Condition/c3", "431857002"),
]


def test_the_worked_example() -> None:
    result = score_one(THREE_ICD)
    # Charlson 1987: diab 1 + chf 1 + rend 2 = 4
    assert result.charlson == 4
    assert result.charlson_categories == ("chf", "diab", "rend")
    # V28, 72F CNA: 0.395 + 0.166 + 0.360 + 0.514 + 0.112 + 0.176 = 1.723
    assert result.hcc == pytest.approx(1.723)
    assert result.hccs == ("HCC38", "HCC226", "HCC327")
    assert result.interactions == ("DIABETES_HF_V28", "HF_KIDNEY_V28")
    assert result.chronic_conditions == ("diabetes", "heart_failure", "ckd")
    assert result.ccm_eligible is True
    assert result.basis_conditions == ("Condition/c1", "Condition/c2", "Condition/c3")
    assert result.hcc_note is None
    # below every "complex" threshold of tiers.toml, above a "high" one
    assert result.tier == 3
    assert result.tier_rule.startswith("high: ")


def test_snomed_only_scores_the_same_through_the_crosswalk() -> None:
    by_icd, by_snomed = score_one(THREE_ICD), score_one(THREE_SNOMED)
    assert by_snomed == by_icd


@pytest.mark.parametrize(
    ("overrides", "charlson", "hcc"),
    [
        ({"charlson_weights": "quan2011"}, 3, 1.723),  # chf 2 + rend 1 + diab 0
        ({"charlson_age_points": True}, 7, 1.723),  # 4 + 3 points for age 70-79
        ({"hcc_model": "V24"}, 4, 1.388),
    ],
)
def test_configuration_overrides(overrides: dict[str, Any], charlson: int, hcc: float) -> None:
    result = score_one(THREE_ICD, cfg=config(**overrides))
    assert result.charlson == charlson
    assert result.hcc == pytest.approx(hcc)


def test_unknown_overrides_are_mapping_errors() -> None:
    with pytest.raises(MappingError, match="weight set"):
        config(charlson_weights="elixhauser")
    with pytest.raises(MappingError, match="HCC model"):
        config(hcc_model="V22")
    with pytest.raises(MappingError, match="HCC segment"):
        config(hcc_segment="INS")


def test_hierarchy_examples_through_the_pipeline() -> None:
    # E11.22 + E11.9: diabwc 2, diab dropped
    assert score_one([icd("Condition/a", "E11.22"), icd("Condition/b", "E11.9")]).charlson == 2
    # C78.00 + C34.90: metacanc 6, canc dropped
    assert score_one([icd("Condition/a", "C78.00"), icd("Condition/b", "C34.90")]).charlson == 6
    assert score_one([icd("Condition/a", "B20")]).charlson == 6
    assert (
        score_one([icd("Condition/a", "B20")], cfg=config(charlson_weights="quan2011")).charlson
        == 4
    )


@pytest.mark.parametrize(
    ("kwargs", "counted"),
    [
        ({}, True),  # clinicalStatus absent counts
        ({"clinical_status": "active"}, True),
        ({"clinical_status": "recurrence"}, True),
        ({"clinical_status": "relapse"}, True),
        ({"clinical_status": "inactive"}, False),
        ({"clinical_status": "remission"}, False),
        ({"clinical_status": "resolved"}, False),
        ({"clinical_status": "active", "verification_status": "refuted"}, False),
        ({"clinical_status": "active", "verification_status": "entered-in-error"}, False),
        ({"clinical_status": "active", "verification_status": "provisional"}, True),
        ({"clinical_status": "active", "verification_status": "confirmed"}, True),
        ({"categories": ("encounter-diagnosis",)}, True),
        ({"categories": ("problem-list-item",)}, True),
    ],
)
def test_condition_filters(kwargs: dict[str, Any], counted: bool) -> None:
    result = score_one([icd("Condition/c1", "I50.9", **kwargs)])
    assert result.charlson == (1 if counted else 0)
    assert result.basis_conditions == (("Condition/c1",) if counted else ())


def test_code_normalisation_and_systems() -> None:
    # lower case with a dot, WHO ICD-10, spaces: all match as I509
    for cond in (
        icd("Condition/a", "i50.9"),
        icd("Condition/a", "I50.9", system=ICD10),
        icd("Condition/a", " I509 "),
    ):
        assert score_one([cond]).charlson_categories == ("chf",)
    # another system is ignored
    other = ConditionRecord(
        id="Condition/a", patient="Patient/p1", codes=(Code("http://example.org/local", "I50.9"),)
    )
    assert score_one([other]).charlson == 0


def test_icd_coding_wins_over_the_crosswalk() -> None:
    # ICD E11.9 plus SNOMED "disorder of kidney due to diabetes" on one Condition: only the ICD
    # code counts (the crosswalk is for SNOMED-only Conditions), so diab 1, not diabwc 2.
    both = ConditionRecord(
        id="Condition/a",
        patient="Patient/p1",
        codes=(Code(ICD10CM, "E11.9"), Code(SNOMED, "127013003")),
    )
    assert score_one([both]).charlson == 1


def test_unmapped_snomed_and_acute_conditions_add_nothing() -> None:
    result = score_one(
        [
            snomed("Condition/a", "999999999999"),  # not in the crosswalk
            snomed("Condition/b", "54150009"),
        ]
    )  # URI, acute: J06.9
    assert (result.charlson, result.chronic_conditions, result.basis_conditions) == (0, (), ())
    assert result.hcc == pytest.approx(0.395)  # demographics only


def test_utilisation_window_and_classes() -> None:
    start = months_before(AS_OF, 12)  # 2025-11-22, outside the window
    encounters = [
        encounter("Encounter/e1", "EMER", AS_OF),  # as-of day: in
        encounter("Encounter/e2", "EMER", start + timedelta(days=1)),  # first day in
        encounter("Encounter/e3", "EMER", start),  # window start: out
        encounter("Encounter/e4", "EMER", AS_OF - timedelta(days=30), status="cancelled"),
        encounter("Encounter/e5", "EMER", AS_OF + timedelta(days=1)),  # after as-of: out
        encounter("Encounter/e6", "IMP", AS_OF - timedelta(days=100)),
        encounter("Encounter/e7", "ACUTE", AS_OF - timedelta(days=3), status="in-progress"),
        encounter("Encounter/e8", "AMB", AS_OF - timedelta(days=3)),  # office: not counted
        encounter("Encounter/e9", "IMP", AS_OF - timedelta(days=400)),  # too old
        EncounterRecord(
            id="Encounter/e10",
            patient="Patient/p1",
            status="finished",
            class_code="EMER",
            start=None,
        ),  # no date: not counted
    ]
    result = score_one([], encounters=encounters)
    assert (result.ed_visits, result.inpatient_stays) == (2, 2)
    # two inpatient stays make the patient complex whatever the diagnoses
    assert (result.tier, result.tier_rule) == (4, "complex: inpatient>=2")


def test_ccm_needs_two_distinct_chronic_groups() -> None:
    one_group = score_one([icd("Condition/a", "I10"), icd("Condition/b", "I11.9")])
    assert one_group.chronic_conditions == ("hypertension",)
    assert one_group.ccm_eligible is False
    two = score_one([icd("Condition/a", "I10"), icd("Condition/b", "E78.5")])
    assert two.chronic_conditions == ("hypertension", "hyperlipidemia")
    assert two.ccm_eligible is True
    # E11.22 alone is two groups: diabetes and CKD
    assert score_one([icd("Condition/a", "E11.22")]).ccm_eligible is True
    # acute conditions are not chronic
    acute = score_one([icd("Condition/a", "J06.9"), icd("Condition/b", "S93.401A")])
    assert acute.chronic_conditions == ()


@pytest.mark.parametrize(
    ("pat", "note"),
    [
        (patient(sex="other"), "no CMS-HCC cell for sex other"),
        (patient(sex="unknown"), "no CMS-HCC cell for sex unknown"),
        (patient(sex=None), "no CMS-HCC cell for sex absent"),
        (patient(born=None), "no birth date on or before the as-of date"),
        (patient(born=AS_OF + timedelta(days=1)), "no birth date on or before the as-of date"),
    ],
)
def test_no_hcc_score_is_explained(pat: PatientRecord, note: str) -> None:
    result = score_one(THREE_ICD, pat=pat)
    assert (result.hcc, result.hccs, result.hcc_note) == (None, (), note)
    assert result.charlson == 4  # the rest is still scored
    assert result.as_report()["hcc_note"] == note


def test_requested_patient_without_a_record() -> None:
    pop = Population(patients={}, conditions=[icd("Condition/a", "I50.9", pid="Patient/zz")])
    result = score_patients(pop, AS_OF, DEFAULT, patients=["Patient/zz"])["Patient/zz"]
    assert (result.charlson, result.hcc, result.hcc_note) == (1, None, "no Patient record")


def test_patients_argument_selects_and_orders() -> None:
    pats = {f"Patient/{n}": patient(f"Patient/{n}") for n in ("b", "a", "c")}
    pop = Population(patients=pats)
    assert list(score_patients(pop, AS_OF, DEFAULT)) == ["Patient/a", "Patient/b", "Patient/c"]
    chosen = score_patients(pop, AS_OF, DEFAULT, patients=["Patient/c", "Patient/a", "Patient/c"])
    assert list(chosen) == ["Patient/a", "Patient/c"]


def _random_population(seed: int) -> Population:
    rng = random.Random(seed)
    codes = [
        "E11.9",
        "E11.22",
        "I50.9",
        "N18.30",
        "N18.4",
        "J44.9",
        "I48.91",
        "I25.2",
        "C34.90",
        "C78.00",
        "B20",
        "K74.60",
        "I10",
        "E78.5",
        "F32.9",
        "G30.9",
        "J06.9",
    ]
    pop = Population()
    for n in range(60):
        pid = f"Patient/r{n}"
        born = date(1930 + rng.randrange(90), rng.randint(1, 12), rng.randint(1, 28))
        pop.patients[pid] = patient(pid, sex=rng.choice(["male", "female", "other"]), born=born)
        for k in range(rng.randint(0, 5)):
            status = rng.choice(["active", None, "resolved", "relapse"])
            pop.conditions.append(
                icd(f"Condition/r{n}-{k}", rng.choice(codes), pid=pid, clinical_status=status)
            )
        for k in range(rng.randint(0, 3)):
            day = AS_OF - timedelta(days=rng.randrange(500))
            pop.encounters.append(
                encounter(f"Encounter/r{n}-{k}", rng.choice(["EMER", "IMP"]), day, pid=pid)
            )
    return pop


def test_same_output_whatever_the_input_order() -> None:
    pop = _random_population(11)
    first = score_patients(pop, AS_OF, DEFAULT)
    rng = random.Random(5)
    shuffled = Population(
        patients=dict(rng.sample(list(pop.patients.items()), len(pop.patients))),
        conditions=rng.sample(pop.conditions, len(pop.conditions)),
        encounters=rng.sample(pop.encounters, len(pop.encounters)),
    )
    second = score_patients(shuffled, AS_OF, DEFAULT)
    assert list(first) == list(second) == sorted(pop.patients)
    assert first == second
    assert [r.as_report() for r in first.values()] == [r.as_report() for r in second.values()]


def test_report_shape_and_rounding() -> None:
    report = score_one(THREE_ICD).as_report()
    assert report == {
        "charlson": 4,
        "hcc": 1.723,
        "tier": 3,
        "ccm_eligible": True,
        "charlson_categories": ["chf", "diab", "rend"],
        "hccs": ["HCC38", "HCC226", "HCC327"],
        "interactions": ["DIABETES_HF_V28", "HF_KIDNEY_V28"],
        "ed_visits": 0,
        "inpatient_stays": 0,
        "chronic_conditions": ["diabetes", "heart_failure", "ckd"],
        "tier_rule": "high: hcc>=1.6",
        "framework": "adult",
    }


def test_tier_distribution_overall_and_per_panel() -> None:
    pop = _random_population(3)
    results = score_patients(pop, AS_OF, DEFAULT)
    overall = tier_distribution(results.values())
    assert list(overall) == ["1", "2", "3", "4"]
    assert sum(overall.values()) == len(results)
    ids = sorted(results)
    panel_of = {
        pid: ("Practitioner/d1" if i % 2 else "Practitioner/d2") for i, pid in enumerate(ids[:50])
    }
    by_panel = tier_distribution_by_panel(results, panel_of)
    assert list(by_panel) == ["Practitioner/d1", "Practitioner/d2"]
    assert sum(sum(d.values()) for d in by_panel.values()) == 50
    # The Kaiser pyramid: tiers 3+4 within 5-25% and tier 4 at most 5% pass; outside, warnings.
    assert check_tier_shape({"1": 70, "2": 18, "3": 10, "4": 2}) == []
    too_sick = check_tier_shape({"1": 50, "2": 20, "3": 20, "4": 10})
    assert len(too_sick) == 2
    assert any("30.0%" in w for w in too_sick) and any("10.0%" in w for w in too_sick)


def test_age_and_window_helpers() -> None:
    assert age_on(date(1954, 11, 22), AS_OF) == 72  # birthday on the as-of date
    assert age_on(date(1954, 11, 23), AS_OF) == 71
    assert age_on(None, AS_OF) is None
    assert months_before(date(2024, 2, 29), 12) == date(2023, 2, 28)
    assert months_before(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert months_before(date(2026, 1, 15), 13) == date(2024, 12, 15)


def test_a_shared_scorer_must_match_the_config() -> None:
    pop = Population(patients={"Patient/p1": patient()}, conditions=THREE_ICD)
    scorer = DEFAULT.hcc_scorer()
    first = score_patients(pop, AS_OF, DEFAULT, scorer=scorer)
    again = score_patients(pop, AS_OF, DEFAULT, scorer=scorer)
    assert first == again and scorer.hits == 1
    with pytest.raises(ValueError, match="another model"):
        score_patients(pop, AS_OF, config(hcc_model="V24"), scorer=scorer)
