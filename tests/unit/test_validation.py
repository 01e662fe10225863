"""The validation statistics (domain/validation.py) and the monthly snapshot's pure parts
(domain/snapshot.py), on hand-computed cases."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from fhirpanel.domain.records import ConditionRecord, EncounterRecord, PatientRecord, Population
from fhirpanel.domain.risk import UtilisationRules
from fhirpanel.domain.snapshot import differences, is_closed, month_end, parse_month
from fhirpanel.domain.validation import (
    baseline_of,
    c_statistic,
    calibration_svg,
    canonical_json,
    condition_as_of,
    decile_table,
    next_year_events,
    population_on,
    tier_capture,
    validate,
)
from fhirpanel.errors import ConfigError

RULES = UtilisationRules(
    lookback_months=6,  # validation counts 12 months whatever the risk window
    statuses=frozenset({"finished", "in-progress"}),
    ed_classes=frozenset({"EMER"}),
    inpatient_classes=frozenset({"IMP", "ACUTE"}),
)


def enc(
    eid: str, patient: str, day: str, klass: str = "EMER", status: str = "finished"
) -> EncounterRecord:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return EncounterRecord(f"Encounter/{eid}", patient, status, klass, start)


# --- c-statistic -----------------------------------------------------------------------------


def test_perfect_separation_is_one_and_reversed_is_zero() -> None:
    scores = [1.0, 2.0, 3.0, 4.0]
    assert c_statistic(scores, [False, False, True, True]) == 1.0
    assert c_statistic(scores, [True, True, False, False]) == 0.0


def test_all_ties_is_one_half() -> None:
    assert c_statistic([2.0] * 5, [True, False, True, False, False]) == 0.5


def test_hand_computed_with_ties() -> None:
    # Positives score 3 and 2, negatives 2 and 1. Pairs (pos, neg): (3,2) win, (3,1) win,
    # (2,2) tie = 1/2, (2,1) win: 3.5 of 4 pairs.
    assert c_statistic([3.0, 2.0, 2.0, 1.0], [True, True, False, False]) == 3.5 / 4
    # One positive (score 2) against negatives 1, 2, 3: 1 win, 1 tie, 1 loss = 1.5 / 3.
    assert c_statistic([1.0, 2.0, 3.0, 2.0], [False, False, False, True]) == 0.5
    # Input order does not matter.
    assert c_statistic([1.0, 2.0, 2.0, 3.0], [False, False, True, True]) == 3.5 / 4


def test_c_statistic_needs_both_groups() -> None:
    assert c_statistic([1.0, 2.0], [True, True]) is None
    assert c_statistic([], []) is None
    with pytest.raises(ValueError):
        c_statistic([1.0], [True, False])


# --- deciles ---------------------------------------------------------------------------------


def test_decile_table_of_twenty_patients() -> None:
    # Patient pNN scores NN; patients 11-20 each had one event, 19 and 20 had two.
    scores = {f"p{n:02d}": float(n) for n in range(1, 21)}
    events = {f"p{n:02d}": (2 if n >= 19 else 1) for n in range(11, 21)}
    table = decile_table(scores, events)
    assert [d.decile for d in table] == list(range(1, 11))
    assert [d.patients for d in table] == [2] * 10
    assert [d.mean_score for d in table] == [1.5 + 2 * k for k in range(10)]
    assert [d.observed_rate for d in table] == [0.0] * 5 + [1.0] * 5
    assert [d.events_per_patient for d in table] == [0.0] * 5 + [1.0] * 4 + [2.0]


def test_decile_ties_split_by_patient_id_and_uneven_sizes() -> None:
    # 12 patients, all the same score: ordered by id, group k*10//12 -> sizes 2,1,1,1,1,2,1,1,1,1.
    scores = {f"p{n:02d}": 0.0 for n in range(12)}
    table = decile_table(scores, {"p00": 1, "p01": 1})
    assert [d.patients for d in table] == [2, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert table[0].observed_rate == 1.0 and table[1].observed_rate == 0.0


def test_fewer_patients_than_deciles_leaves_groups_out() -> None:
    table = decile_table({"a": 1.0, "b": 2.0, "c": 3.0}, {"c": 1})
    assert [(d.decile, d.patients) for d in table] == [(1, 1), (4, 1), (7, 1)]


# --- tiers 3-4 -------------------------------------------------------------------------------


def test_tier_capture_shares() -> None:
    tiers = {"a": 1, "b": 2, "c": 3, "d": 4}
    events = {"a": 1, "c": 2, "d": 5}
    capture = tier_capture(tiers, events)
    assert (capture.patients, capture.high_tier_patients) == (4, 2)
    assert (capture.events, capture.high_tier_events) == (8, 7)
    assert capture.patient_share == 0.5
    assert capture.event_share == 7 / 8
    assert tier_capture({"a": 1}, {}).event_share is None


# --- the record on a day ---------------------------------------------------------------------


def test_population_on_keeps_only_what_was_on_record() -> None:
    day = date(2025, 6, 30)
    pop = Population(
        patients={
            "Patient/old": PatientRecord(
                "Patient/old", deceased=True, deceased_date=date(2025, 9, 1)
            ),
            "Patient/new": PatientRecord("Patient/new", birth_date=date(2025, 7, 1)),
        },
        encounters=[
            enc("e1", "Patient/old", "2025-06-30T23:00:00"),
            enc("e2", "Patient/old", "2025-07-01T00:00:00"),
            EncounterRecord("Encounter/e3", "Patient/old", "finished", "EMER", None),
        ],
        conditions=[
            ConditionRecord("c1", "Patient/old", (), recorded=date(2025, 6, 1)),
            ConditionRecord("c2", "Patient/old", (), recorded=date(2025, 7, 2)),
            ConditionRecord("c3", "Patient/old", (), onset=date(2025, 8, 1)),
            ConditionRecord("c4", "Patient/old", ()),  # no date: kept
            ConditionRecord(
                "c5",
                "Patient/old",
                (),
                clinical_status="resolved",
                onset=date(2025, 1, 1),
                abatement=date(2025, 8, 1),
            ),
        ],
    )
    then = population_on(pop, day)
    assert list(then.patients) == ["Patient/old"]
    assert then.patients["Patient/old"].deceased is False  # died after the day
    assert [e.id for e in then.encounters] == ["Encounter/e1"]
    assert [c.id for c in then.conditions] == ["c1", "c4", "c5"]
    assert then.conditions[2].clinical_status == "active"  # still going on the day
    # The original is unchanged.
    assert len(pop.encounters) == 3 and pop.conditions[4].clinical_status == "resolved"


def test_condition_that_ended_before_the_day_stays_ended() -> None:
    cond = ConditionRecord(
        "c", "Patient/p", (), clinical_status="resolved", abatement=date(2025, 1, 1)
    )
    assert condition_as_of(cond, date(2025, 6, 1)) is cond


def test_next_year_events_count_the_twelve_months_to_the_as_of_date() -> None:
    as_of = date(2026, 11, 22)
    assert baseline_of(as_of) == date(2025, 11, 22)
    assert baseline_of(date(2025, 2, 28)) == date(2024, 2, 28)
    pop = Population(
        encounters=[
            enc("e1", "Patient/a", "2025-11-22T10:00:00"),  # on the baseline: not counted
            enc("e2", "Patient/a", "2025-11-23T10:00:00"),
            enc("e3", "Patient/a", "2026-11-22T10:00:00", "IMP"),
            enc("e4", "Patient/a", "2026-11-23T10:00:00"),  # after the as-of date
            enc("e5", "Patient/a", "2026-01-01T10:00:00", "EMER", "cancelled"),
            enc("e6", "Patient/a", "2026-01-01T10:00:00", "AMB"),
            enc("e7", "Patient/c", "2026-01-01T10:00:00"),  # not in the cohort
        ]
    )
    events = next_year_events(pop, ["Patient/a", "Patient/b"], as_of, RULES)
    assert events == {"Patient/a": (1, 1), "Patient/b": (0, 0)}


# --- the whole result ------------------------------------------------------------------------


def test_validate_puts_it_together() -> None:
    outcomes = {"a": (0, 0), "b": (0, 0), "c": (1, 0), "d": (2, 1)}
    metrics = {
        "charlson": {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0},
        "hcc": {"c": 1.5, "d": 0.5, "x": 9.0},  # x is not in the cohort
        "tier": {"a": 1.0, "b": 1.0, "c": 3.0, "d": 2.0},
    }
    result = validate(date(2026, 11, 22), metrics, outcomes)
    assert result.baseline == date(2025, 11, 22)
    assert (result.patients, result.with_outcome) == (4, 2)
    assert (result.ed_visits, result.inpatient_stays) == (3, 1)
    assert result.c_statistics() == {"charlson": 1.0, "hcc": None, "tier": 1.0}
    assert [m.patients for m in result.metrics] == [4, 2, 4]
    assert result.capture.high_tier_events == 1 and result.capture.events == 4
    data = json.loads(canonical_json(result.as_dict()))
    assert data["tier_capture"]["event_share"] == 0.25
    assert data["metrics"][0]["label"] == "Charlson index"
    svg = calibration_svg(result)
    assert svg.startswith("<svg") and svg.count("<polyline") == 3
    assert "Charlson index (c=1.00)" in svg and "(c=n/a)" in svg


def test_canonical_json_is_stable() -> None:
    text = canonical_json({"b": 0.1 + 0.2, "a": [1.0, -0.0000001], "c": None})
    assert text == '{\n  "a": [\n    1.0,\n    0.0\n  ],\n  "b": 0.3,\n  "c": null\n}\n'


# --- months ----------------------------------------------------------------------------------


def test_months() -> None:
    assert parse_month("2026-02") == (2026, 2)
    assert month_end(2024, 2) == date(2024, 2, 29)
    assert is_closed(2026, 11, date(2026, 12, 1))
    assert not is_closed(2026, 11, date(2026, 11, 30))
    for bad in ("2026-13", "2026-1", "26-01", "2026-00", "november"):
        with pytest.raises(ConfigError):
            parse_month(bad)


def test_differences_in_counts() -> None:
    old = {
        "counts": {"assigned": 2},
        "tiers": {"1": 2},
        "panels": [{"practitioner": "Practitioner/a", "size": 2}],
        "patients": {"p1": {"tier": 1}, "p2": {"tier": 1}},
    }
    new = {
        "counts": {"assigned": 3},
        "tiers": {"1": 2, "3": 1},
        "panels": [{"practitioner": "Practitioner/a", "size": 3}],
        "patients": {"p1": {"tier": 1}, "p2": {"tier": 3}, "p3": {"tier": 1}},
    }
    assert differences(old, new) == [
        "count assigned: 2 -> 3",
        "tier 3: 0 -> 1",
        "panel Practitioner/a: 2 -> 3 patients",
        "patients: 1 changed, 1 added, 0 removed",
    ]
    assert differences(old, old) == []
