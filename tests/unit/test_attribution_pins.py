"""Attribution behaviour that mutation testing (`make mutation`) showed no test pinned: a pipeline
with a manual step, the role and visits reported with each kind of outcome, tie-breaks on
unsorted input, window bounds. Factories from test_attribution."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from fhirpanel.domain.attribution import (
    ManualAssignment,
    Pipeline,
    PipelineStep,
    PrimaryCareSpecialties,
    QualifyingVisit,
    SentinelExamCodes,
    VisitRules,
    assess_eligibility,
    four_cut,
)
from fhirpanel.domain.records import PractitionerRoleRecord
from fhirpanel.errors import MappingError
from fhirpanel.tables.loader import parse_visit_rules
from tests.unit.test_attribution import (
    AS_OF,
    CARDIOLOGY,
    CASE_3,
    NUCC,
    PREVENTIVE,
    RULES,
    _pipeline,
    _visit_table,
    _with_gp,
    attribute,
    build,
    days_ago,
    doc,
    one,
    pcp_roles,
    pid,
    role,
    visit,
)

R1A = "PractitionerRole/r1a"
MANUAL_FIRST = Pipeline("manual-first", (PipelineStep("manual"), PipelineStep("four-cut", 18)))


# --- a pipeline with a manual step -------------------------------------------------------------


def test_a_manual_step_in_the_pipeline_leaves_the_other_steps_to_everyone_else() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(10)),
            visit("e2", pid(2), doc(1), days_ago(20)),
            visit("e3", pid(3), doc(2), days_ago(30)),
        ]
    )
    result = attribute(
        pop, MANUAL_FIRST, manual={pid(1): ManualAssignment(pid(1), doc(3))}
    ).by_patient()
    assert (result[pid(1)].practitioner, result[pid(1)].rule) == (doc(3), "manual")
    # The manual step has no override for these two: the Four Cut step still decides.
    assert (result[pid(2)].status, result[pid(2)].practitioner, result[pid(2)].step) == (
        "assigned",
        doc(1),
        "four-cut-18m",
    )
    assert (result[pid(3)].status, result[pid(3)].practitioner) == ("assigned", doc(2))


def test_a_manual_step_with_no_overrides_at_all_changes_nothing() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(10))])
    with_step = one(pop, pipeline=MANUAL_FIRST)
    without = one(pop, pipeline=Pipeline("plain", (PipelineStep("four-cut", 18),)))
    assert (with_step.practitioner, with_step.rule, with_step.step) == (
        without.practitioner,
        without.rule,
        without.step,
    )


# --- the role reported with a decision ---------------------------------------------------------


def test_the_role_comes_from_the_deciding_visit_not_the_latest_one() -> None:
    # d1 and d2 tie 2-2; d1's sentinel exam (under role r1a) decides. d1's later, ordinary visit
    # was under another role: the assignment names the role of the visit that decided.
    pop = build(
        [
            visit(
                "e1",
                pid(1),
                doc(1),
                days_ago(200),
                types=(PREVENTIVE,),
                role="PractitionerRole/r1a",
            ),
            visit("e2", pid(1), doc(1), days_ago(10), role="PractitionerRole/r1b"),
            visit("e3", pid(1), doc(2), days_ago(50)),
            visit("e4", pid(1), doc(2), days_ago(40)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule, a.sentinel_exam) == (doc(1), "sentinel-exam", "Encounter/e1")
    assert a.practitioner_role == R1A


def test_without_a_role_on_the_deciding_visit_the_clinicians_latest_role_in_the_window() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(200), types=(PREVENTIVE,)),
            visit("e2", pid(1), doc(1), days_ago(100), role="PractitionerRole/r1a"),
            visit("e3", pid(1), doc(1), days_ago(10), role="PractitionerRole/r1b"),
            visit("e4", pid(1), doc(2), days_ago(50), role="PractitionerRole/r2"),
            visit("e5", pid(1), doc(2), days_ago(40)),
            visit("e6", pid(1), doc(2), days_ago(30)),
        ]
    )
    a = one(pop)
    assert (a.practitioner, a.rule) == (doc(1), "sentinel-exam")
    assert a.practitioner_role == "PractitionerRole/r1b"


def test_a_declared_pcp_by_practitioner_takes_the_role_seen_on_their_visits() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(2), days_ago(300), role="PractitionerRole/r2a"),
            visit("e2", pid(1), doc(2), days_ago(100), role="PractitionerRole/r2b"),
            visit("e3", pid(1), doc(2), days_ago(50)),  # no role: does not hide r2b
            visit("e4", pid(1), doc(1), days_ago(20), role="PractitionerRole/r1"),
        ],
        patients=[_with_gp(pid(1), doc(2))],
    )
    a = one(pop, pipeline=CASE_3)
    assert (a.practitioner, a.rule) == (doc(2), "declared-pcp")
    assert a.practitioner_role == "PractitionerRole/r2b"


def test_a_manual_choice_with_no_role_takes_none_from_another_clinicians_visits() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(20), role="PractitionerRole/r1")])
    a = one(pop, manual={pid(1): ManualAssignment(pid(1), doc(2))})
    assert (a.practitioner, a.practitioner_role) == (doc(2), None)


# --- the visits reported with declared-PCP and manual outcomes ---------------------------------


def _history() -> list:  # type: ignore[type-arg]
    # d1 within 18 months; d2 twice, once within 18 months, once 30 months ago (within 36).
    return [
        visit("e1", pid(1), doc(1), days_ago(60)),
        visit("e2", pid(1), doc(2), days_ago(100)),
        visit("e3", pid(1), doc(2), days_ago(915)),
        visit("e4", pid(1), doc(3), days_ago(1500)),  # beyond every window
    ]


def test_a_declared_pcp_step_with_a_window_reports_the_visits_in_that_window() -> None:
    pop = build(_history(), patients=[_with_gp(pid(1), doc(2))])
    a = one(pop, pipeline=CASE_3)
    assert (a.practitioner, a.step, a.window_months) == (doc(2), "declared-pcp", 18)
    assert a.visits == ((doc(1), 1), (doc(2), 1))
    assert a.last_visit == AS_OF - timedelta(days=100)


def test_a_declared_pcp_step_without_a_window_reports_the_pipelines_widest() -> None:
    pipeline = Pipeline("no-window", (PipelineStep("declared-pcp"), PipelineStep("four-cut", 36)))
    pop = build(_history(), patients=[_with_gp(pid(1), doc(2))])
    a = one(pop, pipeline=pipeline)
    assert (a.practitioner, a.step, a.window_months) == (doc(2), "declared-pcp", 36)
    assert a.visits == ((doc(1), 1), (doc(2), 2))
    assert a.last_visit == AS_OF - timedelta(days=100)


def test_a_manual_choice_reports_the_visits_in_the_widest_window() -> None:
    pop = build(_history())
    a = one(pop, pipeline=CASE_3, manual={pid(1): ManualAssignment(pid(1), doc(3))})
    assert (a.practitioner, a.step, a.window_months) == (doc(3), "manual", 36)
    assert a.visits == ((doc(1), 1), (doc(2), 2))
    assert a.last_visit is None  # d3's only visit is outside the window


def test_without_any_window_the_unassigned_reason_names_no_window() -> None:
    # A declared-PCP-only pipeline has no look-back: the reason names the as-of date.
    pipeline = Pipeline("declared-only", (PipelineStep("declared-pcp"),))
    pop = build(patients=[pid(1)])
    a = one(pop, pipeline=pipeline)
    assert (a.status, a.window_months, a.visits) == ("unassigned", None, ())
    assert a.reason == "no qualifying visit on or before the as-of date"


def test_a_pipeline_that_did_not_look_does_not_blame_the_clinicians() -> None:
    # Declared PCP only, and a patient without one seen by eligible clinicians: no step chose,
    # but their visits were with eligible clinicians.
    pipeline = Pipeline("declared-only", (PipelineStep("declared-pcp"),))
    a = one(build(_history()), pipeline=pipeline)
    assert a.status == "unassigned"
    assert a.reason == (
        "no step of the pipeline chose among the qualifying visits on or before the as-of date"
    )
    # Declared PCP over 36 months, then Four Cut over 12: seen only 30 months ago by d2.
    pipeline = Pipeline(
        "short-four-cut", (PipelineStep("declared-pcp", 36), PipelineStep("four-cut", 12))
    )
    pop = build([visit("e3", pid(1), doc(2), days_ago(915))])
    a = one(pop, pipeline=pipeline)
    assert (a.status, a.window_months) == ("unassigned", 36)
    assert (
        a.reason
        == "no step of the pipeline chose among the qualifying visits in the last 36 months"
    )


# --- tie-breaks that do not rely on sorted input -----------------------------------------------


def _qv(eid: str, practitioner: str, days: int, *, sentinel: bool = False) -> QualifyingVisit:
    when = days_ago(days)
    return QualifyingVisit(when.date(), when, f"Encounter/{eid}", practitioner, sentinel=sentinel)


def test_two_sentinel_exams_at_the_same_time_name_the_lowest_encounter_id() -> None:
    visits = [
        _qv("e9", doc(1), 30, sentinel=True),
        _qv("e8", doc(1), 30, sentinel=True),
        _qv("e2", doc(2), 60),
        _qv("e1", doc(2), 70),
    ]
    for order in (visits, visits[::-1]):
        decision = four_cut(order)
        assert decision is not None
        assert (decision.practitioner, decision.rule) == (doc(1), "sentinel-exam")
        assert decision.sentinel_exam == "Encounter/e8"
        assert not decision.tie_broken


# --- window bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize("months", [1, 120])
def test_window_months_from_1_to_120_are_accepted(months: int) -> None:
    pipeline = _pipeline({"kind": "four-cut", "window_months": months})
    assert pipeline.steps[0].window_months == months


@pytest.mark.parametrize("months", [0, 121])
def test_window_months_outside_1_to_120_are_refused(months: int) -> None:
    with pytest.raises(MappingError):
        _pipeline({"kind": "four-cut", "window_months": months})


def test_an_unassigned_patient_reports_the_visits_in_the_widest_window() -> None:
    # Seen by d2 within 36 months but not within 12, no declared PCP: nothing decides.
    pipeline = Pipeline(
        "declared-then-12", (PipelineStep("declared-pcp", 36), PipelineStep("four-cut", 12))
    )
    pop = build(
        [
            visit("e2", pid(1), doc(2), days_ago(915)),
            visit("e3", pid(1), doc(2), days_ago(700)),
            visit("e4", pid(1), doc(3), days_ago(1500)),  # beyond every window
        ]
    )
    a = one(pop, pipeline=pipeline)
    assert (a.status, a.window_months) == ("unassigned", 36)
    assert a.visits == ((doc(2), 2),)


# --- duplicate and blank entries in mapping lists ----------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"statuses": ["finished", "finished"], "classes": ["AMB"]},
        {"statuses": ["finished"], "classes": ["AMB", "VR", "AMB"]},
        {"statuses": ["finished"], "classes": ["AMB"], "not_qualifying": ["EMER", "EMER"]},
        {"statuses": ["finished"], "classes": ["AMB"], "excluded_texts": ["Nurse", "nurse "]},
        {
            "statuses": ["finished"],
            "classes": ["AMB"],
            "excluded_texts": ["Nurse  visit", "nurse visit"],
        },
    ],
)
def test_a_visit_rule_list_with_a_duplicate_is_refused(kwargs: dict[str, list[str]]) -> None:
    with pytest.raises(MappingError):
        VisitRules.create(**kwargs)


def test_visit_rules_keep_every_distinct_entry() -> None:
    rules = VisitRules.create(
        statuses=["finished", "in-progress"],
        classes=["AMB", "VR"],
        not_qualifying=["EMER", "IMP"],
        excluded_texts=["Nurse  Visit", "Lab"],
    )
    assert rules.statuses == frozenset({"finished", "in-progress"})
    assert rules.classes == frozenset({"AMB", "VR"})
    assert rules.excluded_texts == frozenset({"nurse visit", "lab"})


def test_primary_care_lists_with_a_duplicate_or_a_stray_pediatric_entry_are_refused() -> None:
    family, pediatrics = (NUCC, "207Q00000X"), (NUCC, "208000000X")
    ok = PrimaryCareSpecialties.create(
        codes=[family, pediatrics],
        labels=["Family Medicine", "Pediatrics"],
        pediatric_codes=[pediatrics],
        pediatric_labels=["pediatrics"],
    )
    assert ok.pediatric_codes == frozenset({pediatrics})
    assert ok.pediatric_labels == frozenset({"pediatrics"})
    for kwargs in [
        {"codes": [family, family], "labels": ["Family Medicine"]},
        {"codes": [family], "labels": ["Family Medicine", "family medicine"]},
        {"codes": [family], "labels": ["Family Medicine"], "pediatric_codes": [pediatrics]},
        {"codes": [family], "labels": ["Family Medicine"], "pediatric_labels": ["Pediatrics"]},
        {
            "codes": [family],
            "labels": ["Family Medicine", "Pediatrics"],
            "pediatric_labels": ["Pediatrics", "pediatrics"],
        },
    ]:
        with pytest.raises(MappingError):
            PrimaryCareSpecialties.create(**kwargs)  # type: ignore[arg-type]


def test_a_sentinel_code_listed_twice_or_also_as_not_sentinel_is_refused() -> None:
    code = (PREVENTIVE.system, PREVENTIVE.code)
    assert SentinelExamCodes.create(codes=[code]).codes == frozenset({code})
    with pytest.raises(MappingError):
        SentinelExamCodes.create(codes=[code, code])
    with pytest.raises(MappingError):
        SentinelExamCodes.create(codes=[code], not_sentinel=[code])


@pytest.mark.parametrize(
    "change",
    [
        {"statuses": {"qualifying": ["finished", " "]}},
        {"excluded_texts": {"labels": ["Lab", ""]}},
    ],
)
def test_a_blank_entry_in_a_mapping_list_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(MappingError):
        parse_visit_rules(_visit_table(**change))


# --- eligibility -------------------------------------------------------------------------------


def test_with_roles_the_report_says_plainly_it_is_not_the_fallback() -> None:
    report = assess_eligibility(build([visit("e1", pid(1), doc(1), days_ago(5))]), AS_OF, RULES)
    assert report.fallback_all_on_visits is False
    assert report.eligible == (doc(1), doc(2), doc(3), doc(4), doc(5))


def test_a_role_without_a_practitioner_does_not_stop_the_others_being_read() -> None:
    roles = [
        PractitionerRoleRecord(id="PractitionerRole/orphan", practitioner=None),
        *pcp_roles(1, 2),
    ]
    report = assess_eligibility(build(roles=roles), AS_OF, RULES)
    assert report.eligible == (doc(1), doc(2))


def test_only_clinicians_who_held_a_primary_care_role_can_have_departed() -> None:
    roles = [
        *pcp_roles(1),
        role("r2", doc(2), active=False),  # left
        role("r9", doc(9), CARDIOLOGY),  # never primary care, still working
    ]
    pop = build([visit("e1", pid(1), doc(8), days_ago(5))], roles=roles)  # d8: no role at all
    report = assess_eligibility(pop, AS_OF, RULES)
    assert report.departed == (doc(2),)
    assert report.not_matched == (doc(2), doc(8), doc(9))


def test_without_roles_a_clinician_seen_only_on_the_as_of_date_is_eligible() -> None:
    on_the_day = days_ago(0, hour=8)
    report = assess_eligibility(
        build([visit("e1", pid(1), doc(7), on_the_day)], roles=[]), AS_OF, RULES
    )
    assert report.fallback_all_on_visits is True
    assert report.eligible == (doc(7),)


def test_a_role_is_held_from_its_first_day() -> None:
    starts_today = dataclasses.replace(role("r1", doc(1)), start=AS_OF)
    starts_tomorrow = dataclasses.replace(role("r2", doc(2)), start=AS_OF + timedelta(days=1))
    report = assess_eligibility(build(roles=[starts_today, starts_tomorrow]), AS_OF, RULES)
    assert report.eligible == (doc(1),)
