"""Attribution: every Four Cut cut and edge, qualifying visits, eligibility, exclusions,
declared PCP, manual overrides, risk-product members and cascaded windows, on records built
directly here with small factories."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from fhirpanel.domain.attribution import (
    PERSON_STATUSES,
    Assignment,
    AttributionResult,
    AttributionRules,
    ManualAssignment,
    Pipeline,
    PipelineStep,
    assess_eligibility,
    attribute_patients,
    in_window,
    months_before,
    verhoeff_valid,
)
from fhirpanel.domain.records import (
    CPT,
    NUCC,
    SNOMED,
    Code,
    EncounterRecord,
    PatientRecord,
    Population,
    PractitionerRecord,
    PractitionerRoleRecord,
)
from fhirpanel.errors import MappingError
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import (
    parse_pipeline,
    parse_primary_care,
    parse_sentinel_exams,
    parse_visit_rules,
)

AS_OF = date(2026, 11, 22)
VISIT_TYPE = "urn:fhirpanel:sandbox:visit-type"
META = {"source": "tests", "version": "1"}
PREVENTIVE = Code(CPT, "99396", "Preventive visit, established patient, 40-64")
OFFICE = Code(SNOMED, "185349003", "Encounter for check up")
FAMILY = "207Q00000X"
CARDIOLOGY = "207RC0000X"
PEDIATRICS = "208000000X"


def load_rules() -> AttributionRules:
    return AttributionRules(
        visits=parse_visit_rules(load_mapping_ref("qualifying_visits")),
        sentinel=parse_sentinel_exams(load_mapping_ref("sentinel_exams")),
        primary_care=parse_primary_care(load_mapping_ref("primary_care")),
    )


RULES = load_rules()
MGMA = parse_pipeline(load_mapping_ref("pipelines/mgma"))
CASE_1 = parse_pipeline(load_mapping_ref("pipelines/case_study_1"))
CASE_3 = parse_pipeline(load_mapping_ref("pipelines/case_study_3"))
CASCADE = Pipeline(
    "cascade",
    (PipelineStep("four-cut", 12), PipelineStep("four-cut", 18), PipelineStep("four-cut", 36)),
)


# --- factories ---------------------------------------------------------------------------------


def pid(n: int | str) -> str:
    return f"Patient/p{n}"


def doc(n: int | str) -> str:
    return f"Practitioner/d{n}"


def days_ago(days: int, hour: int = 9, minute: int = 0) -> datetime:
    day = AS_OF - timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def visit(
    eid: str,
    patient: str,
    practitioner: str | None,
    when: datetime,
    *,
    status: str = "finished",
    class_code: str = "AMB",
    types: Iterable[Code] = (OFFICE,),
    service_types: Iterable[Code] = (),
    reasons: Iterable[Code] = (),
    texts: Iterable[str] = (),
    role: str | None = None,
) -> EncounterRecord:
    return EncounterRecord(
        id=f"Encounter/{eid}",
        patient=patient,
        status=status,
        class_code=class_code,
        start=when,
        types=tuple(types),
        service_types=tuple(service_types),
        reasons=tuple(reasons),
        type_texts=tuple(texts),
        practitioner=practitioner,
        practitioner_role=role,
    )


def role(
    rid: str,
    practitioner: str,
    code: str | None = FAMILY,
    *,
    system: str = NUCC,
    texts: Iterable[str] = (),
    active: bool = True,
) -> PractitionerRoleRecord:
    specialties = (Code(system, code),) if code else ()
    return PractitionerRoleRecord(
        id=f"PractitionerRole/{rid}",
        practitioner=practitioner,
        specialties=specialties,
        texts=tuple(texts),
        active=active,
    )


def pcp_roles(*numbers: int) -> list[PractitionerRoleRecord]:
    return [role(f"r{n}", doc(n)) for n in numbers]


def build(
    encounters: Iterable[EncounterRecord] = (),
    patients: Iterable[PatientRecord | str] = (),
    roles: Iterable[PractitionerRoleRecord] | None = None,
) -> Population:
    """A population; every patient an encounter names exists; PCP roles for d1..d5 unless
    roles are given."""
    encounters = list(encounters)
    table: dict[str, PatientRecord] = {}
    for item in patients:
        record = PatientRecord(id=item) if isinstance(item, str) else item
        table[record.id] = record
    for enc in encounters:
        table.setdefault(enc.patient, PatientRecord(id=enc.patient))
    role_list = pcp_roles(1, 2, 3, 4, 5) if roles is None else list(roles)
    practitioners = {
        r.practitioner: PractitionerRecord(id=r.practitioner) for r in role_list if r.practitioner
    }
    return Population(
        patients=table,
        encounters=encounters,
        practitioners=practitioners,
        roles={r.id: r for r in role_list},
    )


def attribute(
    population: Population, pipeline: Pipeline = MGMA, as_of: date = AS_OF, **kwargs: Any
) -> AttributionResult:
    return attribute_patients(population, as_of, pipeline, RULES, **kwargs)


def one(
    population: Population, patient: str = "Patient/p1", pipeline: Pipeline = MGMA, **kwargs: Any
) -> Assignment:
    return attribute(population, pipeline, **kwargs).by_patient()[patient]


# --- windows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 11, 22), 18, date(2025, 5, 22)),
        (date(2026, 8, 31), 6, date(2026, 2, 28)),  # clamped to the month's end
        (date(2024, 3, 31), 1, date(2024, 2, 29)),  # leap year
        (date(2026, 1, 15), 1, date(2025, 12, 15)),  # across a year
        (date(2026, 1, 15), 36, date(2023, 1, 15)),
        (date(2026, 5, 31), 0, date(2026, 5, 31)),
    ],
)
def test_months_before_is_calendar_month_arithmetic(day: date, months: int, expected: date) -> None:
    assert months_before(day, months) == expected


def test_window_excludes_its_start_and_includes_the_as_of_date() -> None:
    start = months_before(AS_OF, 18)
    assert not in_window(start, AS_OF, 18)
    assert in_window(start + timedelta(days=1), AS_OF, 18)
    assert in_window(AS_OF, AS_OF, 18)
    assert not in_window(AS_OF + timedelta(days=1), AS_OF, 18)
    assert in_window(date(1990, 1, 1), AS_OF, None)


def test_as_of_boundaries_decide_which_visits_count() -> None:
    start = months_before(AS_OF, 18)
    at_start = datetime(start.year, start.month, start.day, 12, tzinfo=UTC)
    after_start = at_start + timedelta(days=1)
    on_as_of = datetime(AS_OF.year, AS_OF.month, AS_OF.day, 23, 59, tzinfo=UTC)
    future = on_as_of + timedelta(minutes=2)
    pop = build(
        [
            visit("e1", pid(1), doc(1), at_start),
            visit("e2", pid(1), doc(2), after_start),
            visit("e3", pid(1), doc(2), on_as_of),
            visit("e4", pid(1), doc(3), future),
            visit("e5", pid(1), doc(3), future + timedelta(days=30)),
        ]
    )
    a = one(pop)
    assert a.visits == ((doc(2), 2),)
    assert (a.practitioner, a.rule) == (doc(2), "single-provider")
    assert a.last_visit == AS_OF
    # A day later the window starts on e2's day, so e2 drops out, and e4 now counts.
    later = one(pop, as_of=AS_OF + timedelta(days=1))
    assert later.visits == ((doc(2), 1), (doc(3), 1))


# --- the four cuts -----------------------------------------------------------------------------


def test_one_visit_single_provider_with_explanation() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(40), role="PractitionerRole/r1")])
    a = one(pop)
    assert a == Assignment(
        patient=pid(1),
        status="assigned",
        practitioner=doc(1),
        practitioner_role="PractitionerRole/r1",
        rule="single-provider",
        step="four-cut-18m",
        window_months=18,
        visits=((doc(1), 1),),
        evidence=("Encounter/e1",),
        last_visit=AS_OF - timedelta(days=40),
    )


def test_plurality_of_visits_wins_even_against_a_later_visit() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(300)),
            visit("e2", pid(1), doc(1), days_ago(200)),
            visit("e3", pid(1), doc(1), days_ago(100)),
            visit("e4", pid(1), doc(2), days_ago(5)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.tie_broken) == (doc(1), "plurality", False)
    assert a.visits == ((doc(1), 3), (doc(2), 1))
    assert a.evidence == ("Encounter/e1", "Encounter/e2", "Encounter/e3")
    assert a.last_visit == AS_OF - timedelta(days=100)


def test_two_way_tie_resolved_by_sentinel_exam() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(300), types=[PREVENTIVE]),
            visit("e2", pid(1), doc(1), days_ago(250)),
            visit("e3", pid(1), doc(2), days_ago(100)),
            visit("e4", pid(1), doc(2), days_ago(10)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule) == (doc(1), "sentinel-exam")
    assert a.sentinel_exam == "Encounter/e1"
    assert a.evidence == ("Encounter/e1",)
    assert a.visits == ((doc(1), 2), (doc(2), 2))
    assert not a.tie_broken


def test_three_way_tie_resolved_by_the_most_recent_sentinel_exam() -> None:
    wellness = Code(SNOMED, "162673000", "General examination of patient")
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(400), types=[PREVENTIVE]),
            # the sentinel code may sit on serviceType or reasonCode too
            visit("e2", pid(1), doc(2), days_ago(200), service_types=[wellness]),
            visit("e3", pid(1), doc(3), days_ago(3)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.sentinel_exam) == (doc(2), "sentinel-exam", "Encounter/e2")
    assert a.visits == ((doc(1), 1), (doc(2), 1), (doc(3), 1))
    by_reason = build(
        [
            visit("e1", pid(1), doc(1), days_ago(100)),
            visit("e2", pid(1), doc(2), days_ago(90), reasons=[wellness]),
        ]
    )
    assert one(by_reason).rule == "sentinel-exam"


def test_sentinel_exam_by_a_clinician_outside_the_tie_is_ignored() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(300)),
            visit("e2", pid(1), doc(1), days_ago(200)),
            visit("e3", pid(1), doc(2), days_ago(250)),
            visit("e4", pid(1), doc(2), days_ago(20)),
            visit("e5", pid(1), doc(3), days_ago(5), types=[PREVENTIVE]),  # d3 is not tied
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule) == (doc(2), "last-visit")
    assert a.sentinel_exam is None
    assert a.evidence == ("Encounter/e4",)
    # Step 3 looks among the tied only: d1's older sentinel exam decides, d3's later one not.
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(300), types=[PREVENTIVE]),
            visit("e2", pid(1), doc(1), days_ago(200)),
            visit("e3", pid(1), doc(2), days_ago(250)),
            visit("e4", pid(1), doc(2), days_ago(20)),
            visit("e5", pid(1), doc(3), days_ago(5), types=[PREVENTIVE]),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.sentinel_exam) == (doc(1), "sentinel-exam", "Encounter/e1")


def test_not_a_sentinel_exam_code_does_not_decide() -> None:
    checkup = Code(SNOMED, "185349003", "Encounter for check up")
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(100), types=[checkup]),
            visit("e2", pid(1), doc(2), days_ago(50)),
        ]
    )
    assert (one(pop).practitioner, one(pop).rule) == (doc(2), "last-visit")


def test_tie_without_sentinel_goes_to_the_clinician_seen_last() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(2), days_ago(300)),
            visit("e2", pid(1), doc(1), days_ago(200)),
            visit("e3", pid(1), doc(1), days_ago(100)),
            visit("e4", pid(1), doc(2), days_ago(60)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.tie_broken) == (doc(2), "last-visit", False)
    assert a.last_visit == AS_OF - timedelta(days=60)


def test_same_day_tie_broken_by_start_time_and_flagged() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(10, hour=9)),
            visit("e2", pid(1), doc(2), days_ago(10, hour=15)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.tie_broken) == (doc(2), "last-visit", True)
    assert a.evidence == ("Encounter/e2",)


def test_same_day_same_time_tie_broken_by_clinician_id() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(3), days_ago(10)),
            visit("e2", pid(1), doc(2), days_ago(10)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.tie_broken) == (doc(2), True)


def test_same_day_sentinel_exams_by_tied_clinicians_are_a_flagged_tie() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(10, hour=8), types=[PREVENTIVE]),
            visit("e2", pid(1), doc(2), days_ago(10, hour=11), types=[PREVENTIVE]),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.sentinel_exam, a.tie_broken) == (
        doc(2),
        "sentinel-exam",
        "Encounter/e2",
        True,
    )


def test_two_visits_with_one_clinician_on_the_same_day_are_not_a_tie() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(10, hour=8)),
            visit("e2", pid(1), doc(1), days_ago(10, hour=11)),
            visit("e3", pid(1), doc(2), days_ago(40)),
            visit("e4", pid(1), doc(2), days_ago(50)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.tie_broken) == (doc(1), "last-visit", False)
    assert a.evidence == ("Encounter/e1", "Encounter/e2")


# --- qualifying visits -------------------------------------------------------------------------


def test_visits_outside_the_window_do_not_count() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(600)),
            visit("e2", pid(1), doc(1), days_ago(580)),
            visit("e3", pid(1), doc(2), days_ago(30)),
            visit("e4", pid(2), doc(1), days_ago(700)),
        ]
    )
    result = attribute(pop).by_patient()
    assert (result[pid(1)].practitioner, result[pid(1)].rule) == (doc(2), "single-provider")
    assert result[pid(1)].visits == ((doc(2), 1),)
    assert result[pid(2)].status == "unassigned"
    assert result[pid(2)].reason == "no qualifying visit in the last 18 months"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_code": "EMER"},
        {"class_code": "IMP"},
        {"class_code": "ACUTE"},
        {"class_code": "HH"},
        {"class_code": "OBSENC"},
        {"class_code": None},
        {"status": "cancelled"},
        {"status": "in-progress"},
        {"status": "entered-in-error"},
        {"types": [Code(VISIT_TYPE, "NURSE")]},
        {"types": [Code(VISIT_TYPE, "ANTICOAG")]},
        {"types": [Code(SNOMED, "82078001")]},
        {"service_types": [Code(VISIT_TYPE, "VACCINE")]},
        {"service_types": [Code(SNOMED, "33879002")]},
        {"types": [], "texts": ["lab draw"]},
        {"types": [], "texts": ["Coumadin   Clinic"]},
        {"types": [], "texts": ["NURSE ONLY"]},
    ],
)
def test_non_qualifying_visits_do_not_count(kwargs: dict[str, Any]) -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(100)),
            visit("e2", pid(1), doc(2), days_ago(10), **kwargs),
            visit("e3", pid(1), doc(2), days_ago(11), **kwargs),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.visits) == (doc(1), ((doc(1), 1),))


def test_visit_type_labels_match_whole_labels_and_reasons_do_not_exclude() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(100)),
            visit(
                "e2", pid(1), doc(2), days_ago(10), texts=["nurse visit follow-up with physician"]
            ),
            visit("e3", pid(1), doc(2), days_ago(11), reasons=[Code(SNOMED, "33879002")]),
        ]
    )
    assert one(pop).visits == ((doc(1), 1), (doc(2), 2))


def test_virtual_visits_qualify() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(5), class_code="VR")])
    assert one(pop).rule == "single-provider"


def test_a_visit_without_a_clinician_or_a_start_cannot_count() -> None:
    pop = build(
        [
            visit("e1", pid(1), None, days_ago(5)),
            EncounterRecord(
                id="Encounter/e2",
                patient=pid(1),
                status="finished",
                class_code="AMB",
                start=None,
                practitioner=doc(1),
            ),
        ]
    )
    a = one(pop)
    assert a.status == "unassigned"
    assert a.reason == "no qualifying visit in the last 18 months"


def test_practitioner_role_participant_counts_for_its_practitioner_and_keeps_the_role() -> None:
    # Ingest resolved the PractitionerRole participant to its Practitioner and kept the role.
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(100), role="PractitionerRole/r1"),
            visit("e2", pid(1), doc(1), days_ago(50)),
            visit("e3", pid(1), doc(2), days_ago(20), role="PractitionerRole/r2"),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.practitioner_role, a.rule) == (
        doc(1),
        "PractitionerRole/r1",
        "plurality",
    )


# --- eligibility -------------------------------------------------------------------------------


def test_ineligible_specialists_do_not_count_for_attribution() -> None:
    roles = [*pcp_roles(1), role("r9", doc(9), CARDIOLOGY)]
    pop = build(
        [
            visit("e1", pid(1), doc(9), days_ago(100)),
            visit("e2", pid(1), doc(9), days_ago(90)),
            visit("e3", pid(1), doc(9), days_ago(80)),
            visit("e4", pid(1), doc(1), days_ago(300)),
            visit("e5", pid(2), doc(9), days_ago(30)),
        ],
        roles=roles,
    )
    result = attribute(pop).by_patient()
    assert (result[pid(1)].practitioner, result[pid(1)].rule) == (doc(1), "single-provider")
    assert result[pid(1)].visits == ((doc(1), 1),)
    assert result[pid(2)].status == "unassigned"
    assert result[pid(2)].reason == (
        "qualifying visits in the last 18 months were only with "
        "clinicians not eligible for primary care"
    )
    report = attribute(pop).eligibility
    assert report.not_matched == (doc(9),)
    assert not report.is_eligible(doc(9))


def test_eligibility_by_code_text_and_not_at_all() -> None:
    roles = [
        role("r1", doc(1), FAMILY),
        role("r2a", doc(2), None, texts=["  FAMILY   Medicine "]),  # text only
        role("r3a", doc(3), CARDIOLOGY, texts=["Internal Medicine, Cardiology"]),  # neither
        role("r4a", doc(4), None, texts=["Internal Medicine"]),  # code on another role wins
        role("r4b", doc(4), "419772000", system=SNOMED),
        role("r5", doc(5), FAMILY, active=False),  # an inactive role is not held
        role("r6", doc(6), "207RG0300X"),  # a listed 207R* sub-code
    ]
    pop = build(roles=roles)
    pop.practitioners[doc(7)] = PractitionerRecord(id=doc(7))  # no role at all
    report = assess_eligibility(pop, AS_OF, RULES)
    assert report.by_code == (doc(1), doc(4), doc(6))
    assert report.by_text == (doc(2),)
    assert report.not_matched == (doc(3), doc(5), doc(7))
    assert not report.fallback_all_on_visits
    assert report.eligible == (doc(1), doc(2), doc(4), doc(6))


def test_text_only_specialty_makes_a_clinician_eligible_for_attribution() -> None:
    roles = [role("r1", doc(1), CARDIOLOGY), role("r2", doc(2), None, texts=["general practice"])]
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(30)),
            visit("e2", pid(1), doc(1), days_ago(20)),
            visit("e3", pid(1), doc(2), days_ago(200)),
        ],
        roles=roles,
    )
    a = one(pop)
    assert (a.practitioner, a.rule) == (doc(2), "single-provider")


def test_pediatric_subset_is_reported() -> None:
    roles = [
        role("r1", doc(1), PEDIATRICS),
        role("r2a", doc(2), FAMILY),
        role("r2b", doc(2), "363LP0200X"),
        role("r3", doc(3), None, texts=["Pediatrics"]),
        role("r4", doc(4), FAMILY),
    ]
    report = assess_eligibility(build(roles=roles), AS_OF, RULES)
    assert report.pediatric == (doc(1), doc(2), doc(3))
    assert report.pediatric_only == (doc(1), doc(3))


def test_no_practitioner_role_falls_back_to_everyone_on_a_qualifying_visit() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(8), days_ago(100)),
            visit("e2", pid(1), doc(9), days_ago(50)),
            visit("e3", pid(1), doc(9), days_ago(40)),
            visit("e4", pid(2), doc(7), days_ago(10), class_code="EMER"),
        ],
        roles=[],
    )
    result = attribute(pop)
    report = result.eligibility
    assert report.fallback_all_on_visits
    assert report.eligible == (doc(8), doc(9))
    assert (report.by_code, report.by_text, report.not_matched) == ((), (), (doc(7),))
    by_patient = result.by_patient()
    assert (by_patient[pid(1)].practitioner, by_patient[pid(1)].rule) == (doc(9), "plurality")
    assert by_patient[pid(2)].status == "unassigned"


def test_roles_present_but_none_primary_care_is_not_the_fallback() -> None:
    pop = build([visit("e1", pid(1), doc(9), days_ago(10))], roles=[role("r9", doc(9), CARDIOLOGY)])
    result = attribute(pop)
    assert not result.eligibility.fallback_all_on_visits
    assert result.assignments[0].status == "unassigned"


# --- pipelines ---------------------------------------------------------------------------------


def _with_gp(patient: str, *refs: str) -> PatientRecord:
    return PatientRecord(id=patient, general_practitioners=refs)


def test_declared_pcp_outranks_four_cut() -> None:
    encounters = [
        visit("e1", pid(1), doc(1), days_ago(100)),
        visit("e2", pid(1), doc(1), days_ago(90)),
        visit("e3", pid(1), doc(2), days_ago(300)),
    ]
    pop = build(encounters, patients=[_with_gp(pid(1), doc(3))])
    a = one(pop, pipeline=CASE_3)
    assert (a.practitioner, a.rule, a.step, a.window_months) == (
        doc(3),
        "declared-pcp",
        "declared-pcp",
        18,
    )
    assert a.visits == ((doc(1), 2), (doc(2), 1))  # shown for review
    assert a.last_visit is None and a.evidence == ()
    # The MGMA pipeline has no declared-PCP step.
    assert one(pop).practitioner == doc(1)


def test_declared_pcp_by_practitioner_role_resolves_to_the_clinician() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(100))],
        patients=[_with_gp(pid(1), "Organization/o1", "PractitionerRole/r2")],
    )
    a = one(pop, pipeline=CASE_3)
    assert (a.practitioner, a.practitioner_role, a.rule) == (
        doc(2),
        "PractitionerRole/r2",
        "declared-pcp",
    )


@pytest.mark.parametrize(
    "refs",
    [
        ("Organization/o1",),
        (doc(9),),  # a cardiologist
        ("Practitioner/unknown",),
        ("PractitionerRole/unknown",),
        ("PractitionerRole/r9",),  # the cardiologist's role
    ],
)
def test_declared_pcp_that_is_not_an_eligible_clinician_falls_through(
    refs: tuple[str, ...],
) -> None:
    roles = [*pcp_roles(1, 2), role("r9", doc(9), CARDIOLOGY)]
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(100))],
        patients=[_with_gp(pid(1), *refs)],
        roles=roles,
    )
    a = one(pop, pipeline=CASE_3)
    assert (a.practitioner, a.rule, a.step) == (doc(1), "single-provider", "four-cut-18m")


def test_declared_pcp_needs_a_visit_in_its_window() -> None:
    # Last seen 30 months ago: not active for the 18-month declared-PCP step; four-cut 36m.
    pop = build([visit("e1", pid(1), doc(1), days_ago(915))], patients=[_with_gp(pid(1), doc(2))])
    a = one(pop, pipeline=CASE_3)
    assert (a.practitioner, a.rule, a.step) == (doc(1), "single-provider", "four-cut-36m")


@pytest.mark.parametrize(
    ("days", "step"),
    [
        (180, "four-cut-12m"),
        (450, "four-cut-18m"),
        (900, "four-cut-36m"),
    ],
)
def test_cascaded_windows_use_the_first_window_with_visits(days: int, step: str) -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(days))])
    a = one(pop, pipeline=CASCADE)
    assert (a.practitioner, a.step, a.window_months) == (doc(1), step, int(step[9:-1]))


def test_cascade_stops_at_the_first_window_that_decides() -> None:
    # Three visits with d1 fifteen months ago, one with d2 last month: the 12-month cut decides.
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(450)),
            visit("e2", pid(1), doc(1), days_ago(460)),
            visit("e3", pid(1), doc(1), days_ago(470)),
            visit("e4", pid(1), doc(2), days_ago(30)),
        ]
    )
    a = one(pop, pipeline=CASCADE)
    assert (a.practitioner, a.rule, a.step, a.visits) == (
        doc(2),
        "single-provider",
        "four-cut-12m",
        ((doc(2), 1),),
    )
    assert one(pop).practitioner == doc(1)  # MGMA 18 months: plurality


def test_nothing_in_the_widest_window_is_unassigned_with_the_reason() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(1200))])
    a = one(pop, pipeline=CASCADE)
    assert (a.status, a.reason, a.window_months) == (
        "unassigned",
        "no qualifying visit in the last 36 months",
        36,
    )


def test_manual_assignment_outranks_every_step() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(10)), visit("e2", pid(1), doc(2), days_ago(400))],
        patients=[_with_gp(pid(1), doc(3)), pid(2)],
    )
    manual = {
        pid(1): ManualAssignment(
            pid(1),
            doc(2),
            reason="patient preference",
            requested_by="patient",
            confirmation="confirmed-with-patient",
        ),
        pid(2): ManualAssignment(pid(2), doc(4), practitioner_role="PractitionerRole/r4"),
    }
    result = attribute(pop, CASE_3, manual=manual).by_patient()
    a = result[pid(1)]
    assert (a.practitioner, a.rule, a.step, a.confirmation) == (
        doc(2),
        "manual",
        "manual",
        "confirmed-with-patient",
    )
    assert a.visits == ((doc(1), 1), (doc(2), 1))
    assert a.last_visit == AS_OF - timedelta(days=400)
    assert a.practitioner_role is None
    b = result[pid(2)]  # no visits at all: the manual choice still stands
    assert (b.status, b.practitioner, b.practitioner_role, b.confirmation) == (
        "assigned",
        doc(4),
        "PractitionerRole/r4",
        "proposed",
    )


def test_manual_assignment_does_not_bring_back_an_excluded_patient() -> None:
    pop = build(patients=[PatientRecord(id=pid(1), active=False)])
    a = one(pop, manual={pid(1): ManualAssignment(pid(1), doc(1))})
    assert (a.status, a.reason, a.practitioner) == ("excluded", "inactive", None)


@pytest.mark.parametrize(("status", "reason"), sorted(PERSON_STATUSES.items()))
def test_a_status_a_person_recorded_takes_the_patient_off_every_panel(
    status: str, reason: str
) -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(10)), visit("e2", pid(2), doc(1), days_ago(9))]
    )
    manual = {pid(1): ManualAssignment(pid(1), doc(2))}  # the status outranks an override too
    result = attribute(pop, statuses={pid(1): status}, manual=manual).by_patient()
    a = result[pid(1)]
    assert (a.status, a.reason, a.practitioner, a.rule) == ("excluded", reason, None, None)
    assert result[pid(2)].practitioner == doc(1)  # nobody else moves
    # Clearing the status (the next pass gets none) restores the patient.
    back = attribute(pop, manual=manual).by_patient()[pid(1)]
    assert (back.status, back.practitioner, back.rule) == ("assigned", doc(2), "manual")


def test_the_records_own_exclusion_comes_before_a_status() -> None:
    pop = build(patients=[PatientRecord(id=pid(1), active=False)])
    assert one(pop, statuses={pid(1): "moved-away"}).reason == "inactive"


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown patient status"):
        attribute(build(patients=[pid(1)]), statuses={pid(1): "on-holiday"})


def test_risk_product_members_come_first_and_the_step_is_skipped_without_a_list() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(10)), visit("e2", pid(2), doc(1), days_ago(10))],
        patients=[pid(3)],
    )
    members = {pid(1): doc(2), pid(3): "PractitionerRole/r3"}
    result = attribute(pop, CASE_1, risk_product_members=members).by_patient()
    assert (result[pid(1)].practitioner, result[pid(1)].rule, result[pid(1)].step) == (
        doc(2),
        "risk-product",
        "risk-product",
    )
    assert (result[pid(2)].rule, result[pid(2)].step) == ("single-provider", "four-cut-12m")
    assert (result[pid(3)].practitioner, result[pid(3)].practitioner_role) == (
        doc(3),
        "PractitionerRole/r3",
    )
    without = attribute(pop, CASE_1).by_patient()
    assert without[pid(1)].rule == "single-provider"
    assert without[pid(3)].status == "unassigned"


# --- exclusions and completeness ---------------------------------------------------------------


def test_excluded_patients_are_reported_with_the_reason_and_never_assigned() -> None:
    patients = [
        PatientRecord(id=pid(1), active=False),
        PatientRecord(id=pid(2), deceased=True),  # deceasedBoolean
        PatientRecord(id=pid(3), deceased=True, deceased_date=AS_OF - timedelta(days=30)),
        PatientRecord(id=pid(4), deceased=True, deceased_date=AS_OF),
        PatientRecord(id=pid(5), deceased=True, deceased_date=AS_OF + timedelta(days=1)),
        PatientRecord(id=pid(6), replaced_by=pid(7)),
        PatientRecord(id=pid(7)),
        PatientRecord(id=pid(8), active=False, replaced_by=pid(7), deceased=True),
    ]
    pop = build(
        [visit(f"e{n}", pid(n), doc(1), days_ago(60)) for n in range(1, 9)], patients=patients
    )
    result = attribute(pop).by_patient()
    reasons = {p: (a.status, a.reason) for p, a in result.items()}
    assert reasons == {
        pid(1): ("excluded", "inactive"),
        pid(2): ("excluded", "deceased"),
        pid(3): ("excluded", "deceased"),
        pid(4): ("excluded", "deceased"),
        pid(5): ("assigned", None),  # died after the as-of date: alive as of then
        pid(6): ("excluded", "merged"),
        pid(7): ("assigned", None),
        pid(8): ("excluded", "merged"),
    }
    assert all(a.practitioner is None for a in result.values() if a.status == "excluded")


def test_every_patient_appears_once_sorted_by_id() -> None:
    pop = build(
        [visit("e1", pid(3), doc(1), days_ago(5))],
        patients=[pid(9), pid(1), PatientRecord(id=pid(2), active=False)],
    )
    result = attribute(pop)
    assert [a.patient for a in result.assignments] == [pid(1), pid(2), pid(3), pid(9)]
    assert [a.status for a in result.assignments] == [
        "unassigned",
        "excluded",
        "assigned",
        "unassigned",
    ]
    assert result.as_of == AS_OF and result.pipeline == "mgma"


def test_encounters_of_unknown_patients_are_ignored() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(5))])
    pop.encounters.append(visit("e2", pid(99), doc(1), days_ago(5)))
    assert [a.patient for a in attribute(pop).assignments] == [pid(1)]


# --- rules from mapping tables -----------------------------------------------------------------


def _pipeline(*steps: Mapping[str, Any], name: str = "p") -> Pipeline:
    return parse_pipeline({"meta": META, "name": name, "steps": list(steps)})


def test_pipeline_names_its_steps() -> None:
    p = _pipeline(
        {"kind": "manual"},
        {"kind": "declared-pcp"},
        {"kind": "four-cut", "window_months": 12},
        {"kind": "risk-product"},
    )
    assert [s.name for s in p.steps] == ["manual", "declared-pcp", "four-cut-12m", "risk-product"]
    assert p.widest_window == 12


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        # the file's shape (fhirpanel.tables.schemas)
        (
            [{"kind": "four-cuts", "window_months": 12}],
            r"^pipeline: steps\[1\]\.kind: Input should be 'manual', 'declared-pcp', "
            r"'risk-product' or 'four-cut' \(got 'four-cuts'\)$",
        ),
        (
            [{"kind": "four-cut", "window_months": 0}],
            r"^pipeline: steps\[1\]\.window_months: Input should be greater than or equal to 1 ",
        ),
        (
            [{"kind": "four-cut", "window_months": 500}],
            r"^pipeline: steps\[1\]\.window_months: Input should be less than or equal to 120 ",
        ),
        (
            [{"kind": "four-cut", "window_months": "18"}],
            r"^pipeline: steps\[1\]\.window_months: Input should be a valid integer \(got '18'\)$",
        ),
        (
            [{"kind": "four-cut", "window_months": True}],
            r"^pipeline: steps\[1\]\.window_months: Input should be a valid integer \(got True\)$",
        ),
        (
            [{"kind": "four-cut", "window_months": 18, "windows": 3}],
            r"^pipeline: steps\[1\]\.windows: Extra inputs are not permitted",
        ),
        ([], r"^pipeline: steps: List should have at least 1 item after validation, not 0$"),
        # the pipeline's own rules (Pipeline)
        ([{"kind": "four-cut"}], r"^pipeline: steps\[1\]: a four-cut step needs window_months$"),
        (
            [{"kind": "four-cut", "window_months": 18}, {"kind": "four-cut", "window_months": 18}],
            r"^pipeline: steps: duplicate step\(s\) four-cut-18m$",
        ),
        (
            [{"kind": "four-cut", "window_months": 18}, {"kind": "manual"}],
            r"^pipeline: steps\[2\]: a manual step outranks all others and may only come first$",
        ),
        (
            [{"kind": "manual", "window_months": 3}],
            r"^pipeline: steps\[1\]: a manual step takes no window_months$",
        ),
    ],
)
def test_bad_pipelines_are_refused(steps: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        _pipeline(*steps)


def test_a_pipeline_needs_a_name_and_meta() -> None:
    with pytest.raises(MappingError, match=r"^pipeline: name: Field required$"):
        parse_pipeline({"meta": META, "steps": [{"kind": "manual"}]})
    with pytest.raises(MappingError, match=r"^pipeline: meta: Field required$"):
        parse_pipeline({"name": "p", "steps": [{"kind": "manual"}]})


def _visit_table(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "meta": META,
        "statuses": {"qualifying": ["finished"]},
        "classes": {"qualifying": ["AMB"], "not_qualifying": ["EMER"]},
        "excluded_codes": [{"system": VISIT_TYPE, "code": "NURSE"}],
        "excluded_texts": {"labels": ["Nurse visit"]},
    }
    data.update(changes)
    return data


def test_visit_rules_from_a_table_and_their_errors() -> None:
    rules = parse_visit_rules(_visit_table())
    assert rules.excluded_texts == frozenset({"nurse visit"})
    with pytest.raises(
        MappingError,
        match=r"^qualifying_visits: classes: AMB both qualifying "
        "and not$",
    ):
        parse_visit_rules(_visit_table(classes={"qualifying": ["AMB"], "not_qualifying": ["AMB"]}))
    with pytest.raises(
        MappingError,
        match=r"^qualifying_visits: excluded_codes: duplicate code "
        f"{VISIT_TYPE}\\|NURSE$",
    ):
        parse_visit_rules(
            _visit_table(
                excluded_codes=[
                    {"system": VISIT_TYPE, "code": "NURSE"},
                    {"system": VISIT_TYPE, "code": "NURSE"},
                ]
            )
        )
    with pytest.raises(
        MappingError,
        match=r"^qualifying_visits: excluded_texts\.labels: "
        r"duplicate labels \(compared case-insensitively\)$",
    ):
        parse_visit_rules(_visit_table(excluded_texts={"labels": ["Lab", "lab"]}))
    with pytest.raises(
        MappingError,
        match=r"^qualifying_visits: statuses\.qualifying: List "
        "should have at least 1 item",
    ):
        parse_visit_rules(_visit_table(statuses={"qualifying": []}))
    with pytest.raises(
        MappingError,
        match=r"^qualifying_visits: excluded_codes\[1\]: code "
        "system 'local' is not a URI$",
    ):
        parse_visit_rules(_visit_table(excluded_codes=[{"system": "local", "code": "X"}]))


@pytest.mark.parametrize(
    ("system", "code", "message"),
    [
        (NUCC, "207Q0000X", "not a well-formed code"),
        (NUCC, "207q00000x", "not a well-formed code"),
        (CPT, "9939", "not a well-formed code"),
        (SNOMED, "162673001", "check digit"),
        (SNOMED, "16267300A", "not a well-formed code"),
        ("urn:oid:2.16.840.1.113883.6.285", "G043", "not a well-formed code"),
        (VISIT_TYPE, "NURSE ONLY", "not a well-formed code"),
    ],
)
def test_malformed_codes_are_refused(system: str, code: str, message: str) -> None:
    with pytest.raises(MappingError, match=rf"^sentinel_exams: codes\[1\]: .*{message}"):
        parse_sentinel_exams({"meta": META, "codes": [{"system": system, "code": code}]})


def test_snomed_check_digit() -> None:
    assert all(verhoeff_valid(c) for c in ("162673000", "444971000124105", "73211009"))
    assert not verhoeff_valid("162673001")


def test_sentinel_and_not_sentinel_may_not_overlap() -> None:
    row = {"system": SNOMED, "code": "185349003"}
    with pytest.raises(
        MappingError,
        match=r"^sentinel_exams: not_sentinel: listed as sentinel "
        "and not: ",
    ):
        parse_sentinel_exams({"meta": META, "codes": [row], "not_sentinel": [row]})


def test_primary_care_table_errors() -> None:
    good = {
        "meta": META,
        "codes": [{"system": NUCC, "code": FAMILY, "pediatric": False}],
        "texts": {"labels": ["Family Medicine"], "pediatric_labels": []},
    }
    assert parse_primary_care(good).labels == frozenset({"family medicine"})
    with pytest.raises(
        MappingError,
        match=r"^primary_care: codes\[1\]\.pediatric: Input "
        r"should be a valid boolean \(got 'yes'\)$",
    ):
        parse_primary_care(
            {**good, "codes": [{"system": NUCC, "code": FAMILY, "pediatric": "yes"}]}
        )
    with pytest.raises(
        MappingError,
        match=r"^primary_care: texts: pediatric labels not in "
        r"labels: \['pediatrics'\]$",
    ):
        parse_primary_care({**good, "texts": {"labels": ["x"], "pediatric_labels": ["pediatrics"]}})
    with pytest.raises(MappingError, match=r"^primary_care: texts: Field required$"):
        parse_primary_care({"meta": META, "codes": good["codes"]})
