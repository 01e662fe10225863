"""Panel behaviour that mutation testing (`make mutation`) showed no test pinned: where the blend
takes its HCC scores and means from, patients the risk scores leave out, the default look-back of
age/sex weights, patients the weights skip, the basis reported without visits. Helpers from
test_attribution, test_panels and test_blend."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from fhirpanel.domain.panels import (
    AgeSexWeights,
    compute_age_sex_weights,
    compute_panels,
    relative_to_peers,
)
from fhirpanel.domain.records import PatientRecord, Population
from tests.unit.test_attribution import (
    AS_OF,
    RULES,
    attribute,
    build,
    days_ago,
    doc,
    pcp_roles,
    pid,
    visit,
)
from tests.unit.test_blend import EVEN, risk
from tests.unit.test_panels import CAPACITY, capacities, person, sized

NEUTRAL = AgeSexWeights(weights={})


def _two_patients() -> Population:
    return build(
        [visit("e1", pid(1), doc(1), days_ago(10)), visit("e2", pid(2), doc(1), days_ago(10))],
        [person(1, 40), person(2, 40)],
    )


# --- the blend ---------------------------------------------------------------------------------


def test_the_blend_takes_the_hcc_scores_given_over_those_in_the_risk_results() -> None:
    pop = _two_patients()
    scores = {pid(1): risk(pid(1), 0, 1.0, 0, 0), pid(2): risk(pid(2), 0, 1.0, 0, 0)}
    given = {pid(1): 3.0, pid(2): 1.0}  # e.g. another model's scores
    summary = compute_panels(
        pop, attribute(pop), AS_OF, CAPACITY, NEUTRAL, hcc_scores=given, risk=scores, blend=EVEN
    )
    assert summary.blend is not None
    assert summary.blend.means["hcc"] == pytest.approx(2.0)
    assert summary.blend.patients[pid(1)].as_dict()["hcc"] == pytest.approx(1.5)


def test_without_hcc_scores_given_the_blend_uses_the_scored_risk_results() -> None:
    pop = _two_patients()
    scores = {pid(1): risk(pid(1), 0, 3.0, 0, 0), pid(2): risk(pid(2), 0, None, 0, 0)}
    summary = compute_panels(pop, attribute(pop), AS_OF, CAPACITY, NEUTRAL, risk=scores, blend=EVEN)
    assert summary.blend is not None
    assert summary.blend.means["hcc"] == pytest.approx(3.0)  # p2 has no score: not in the mean
    assert summary.blend.patients[pid(1)].as_dict()["hcc"] == pytest.approx(1.0)
    assert summary.blend.patients[pid(2)].as_dict()["hcc"] == 1.0  # counts as the mean


def test_a_patient_without_a_risk_result_counts_as_the_mean_in_the_blend() -> None:
    pop = _two_patients()
    scores = {pid(1): risk(pid(1), 2, 1.0, 1, 1)}  # p2 was not scored
    summary = compute_panels(pop, attribute(pop), AS_OF, CAPACITY, NEUTRAL, risk=scores, blend=EVEN)
    assert summary.blend is not None
    assert summary.blend.means["charlson"] == pytest.approx(2.0)
    assert summary.blend.means["utilisation"] == pytest.approx(2.0)
    assert summary.blend.patients[pid(2)].as_dict() == {
        "age_sex": 1.0,
        "hcc": 1.0,
        "charlson": 1.0,
        "utilisation": 1.0,
    }


def test_the_practice_means_given_are_the_ones_the_blend_divides_by() -> None:
    pop = _two_patients()
    scores = {pid(1): risk(pid(1), 2, 2.0, 2, 0), pid(2): risk(pid(2), 2, 2.0, 2, 0)}
    means = {"age_sex": 1.0, "hcc": 4.0, "charlson": 4.0, "utilisation": 1.0}
    summary = compute_panels(
        pop,
        attribute(pop),
        AS_OF,
        CAPACITY,
        NEUTRAL,
        risk=scores,
        blend=EVEN,
        blend_means=means,
    )
    assert summary.blend is not None
    assert summary.blend.means == means
    # 0.25 * (1 + 2/4 + 2/4 + 2/1) for each
    assert summary.blend.factor(pid(1)) == pytest.approx(1.0)
    assert summary.by_practitioner()[doc(1)].blended_size == pytest.approx(2.0)


def test_a_patient_the_population_does_not_hold_weighs_one() -> None:
    pop = _two_patients()
    attribution = attribute(pop)
    weights = AgeSexWeights(weights={("30-44", "female"): 2.0})
    # The same attribution against a population without p2 (its record gone since).
    partial = build(
        [visit("e1", pid(1), doc(1), days_ago(10))], [person(1, 40)], roles=pcp_roles(1, 2, 3)
    )
    panel = compute_panels(partial, attribution, AS_OF, CAPACITY, weights).by_practitioner()
    assert panel[doc(1)].size == 2
    assert panel[doc(1)].risk_adjusted_size == pytest.approx(2.0 + 1.0)


# --- age/sex weights ---------------------------------------------------------------------------


def test_age_sex_weights_look_back_12_months_by_default() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(300)),
            visit("e2", pid(2), doc(1), days_ago(380)),  # 12 to 13 months ago: not counted
        ],
        [person(1, 40), person(2, 70)],
    )
    weights = compute_age_sex_weights(pop, AS_OF, RULES)
    assert weights.basis == (("30-44", "female", 1, 1), ("65-74", "female", 1, 0))


def test_skipped_patients_do_not_stop_the_count() -> None:
    # Sorted by id, the excluded p1, the unknown-sex p2 and the unborn p3 come first.
    pop = build(
        [visit("e4", pid(4), doc(1), days_ago(10))],
        [
            PatientRecord(id=pid(1), active=False, birth_date=date(1980, 1, 1), sex="female"),
            PatientRecord(id=pid(2), birth_date=date(1980, 1, 1), sex="unknown"),
            PatientRecord(id=pid(3), birth_date=date(2030, 1, 1), sex="female"),
            person(4, 40),
        ],
    )
    weights = compute_age_sex_weights(pop, AS_OF, RULES)
    assert weights.basis == (("30-44", "female", 1, 1),)
    assert weights.weights == {("30-44", "female"): 1.0}


def test_weights_are_computed_as_of_the_date_given_for_roles_with_a_period() -> None:
    roles = [dataclasses.replace(r, start=date(2020, 1, 1)) for r in pcp_roles(1)]
    pop = build([visit("e1", pid(1), doc(1), days_ago(10))], [person(1, 40)], roles=roles)
    weights = compute_age_sex_weights(pop, AS_OF, RULES)
    assert weights.basis == (("30-44", "female", 1, 1),)


def test_without_visits_the_basis_still_lists_the_patients_per_cell() -> None:
    weights = compute_age_sex_weights(build(patients=[person(1, 40), person(2, 41)]), AS_OF, RULES)
    assert weights.weights == {}
    assert weights.basis == (("30-44", "female", 2, 0),)


# --- panels, placement and peers ---------------------------------------------------------------


def test_compute_panels_places_the_highest_tier_first_when_room_is_short() -> None:
    pop = build(patients=[person(1, 40), person(2, 40)], roles=pcp_roles(1))
    # Room for one patient: p2 (tier 4) goes before p1 (tier 1), though p1 sorts first.
    summary = compute_panels(
        pop, attribute(pop), AS_OF, capacities(d1=1), NEUTRAL, tiers={pid(1): 1, pid(2): 4}
    )
    assert [(s.patient, s.practitioner) for s in summary.suggestions] == [
        (pid(1), None),
        (pid(2), doc(1)),
    ]


def test_without_tiers_a_panel_has_an_empty_tier_count() -> None:
    pop = _two_patients()
    panel = compute_panels(pop, attribute(pop), AS_OF, CAPACITY, NEUTRAL).by_practitioner()[doc(1)]
    assert panel.tiers == ()


def test_no_blended_comparison_unless_every_peer_has_a_blended_size() -> None:
    panels = [sized(1, 10.0, 5.0), sized(2, 20.0), sized(3, 30.0, 7.0)]
    got = relative_to_peers(panels, [doc(1), doc(2), doc(3)], pediatric_only=[])
    for ref in (doc(1), doc(2), doc(3)):
        assert (got[ref].blended_ratio, got[ref].blended_percentile) == (None, None)
    assert got[doc(2)].risk_adjusted_ratio == 1.0
