"""Blend, population counts, per-panel tier counts and the HCC scorer's segment: behaviour that
mutation testing (`make mutation`) showed no test pinned."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.blend import METRICS, BlendWeights, blend_factors, practice_means
from fhirpanel.domain.records import Population
from fhirpanel.domain.risk import tier_distribution_by_panel
from fhirpanel.tables import Tables
from tests.unit.test_attribution import build, days_ago, doc, pid, visit
from tests.unit.test_blend import risk

WEIGHTS = BlendWeights(age_sex=0.4, hcc=0.3, charlson=0.2, utilisation=0.1)


def test_the_weights_as_a_mapping_in_metric_order() -> None:
    assert WEIGHTS.as_dict() == {"age_sex": 0.4, "hcc": 0.3, "charlson": 0.2, "utilisation": 0.1}
    assert list(WEIGHTS.as_dict()) == list(METRICS)


def test_a_metric_with_no_values_at_all_counts_as_the_mean() -> None:
    metrics: dict[str, dict[str, float | None]] = {"age_sex": {"a": 2.0, "b": 1.0}}  # only one
    assert practice_means(["a", "b"], metrics) == {
        "age_sex": 1.5,
        "hcc": 0.0,
        "charlson": 0.0,
        "utilisation": 0.0,
    }
    blend = blend_factors(["a", "b"], metrics, WEIGHTS)
    assert blend.patients["a"].as_dict() == {
        "age_sex": pytest.approx(2.0 / 1.5),
        "hcc": 1.0,
        "charlson": 1.0,
        "utilisation": 1.0,
    }


def test_a_metric_missing_from_the_means_given_counts_as_the_mean() -> None:
    metrics: dict[str, dict[str, float | None]] = {"hcc": {"a": 3.0}, "charlson": {"a": 4.0}}
    blend = blend_factors(["a"], metrics, WEIGHTS, means={"charlson": 2.0})
    assert blend.patients["a"].as_dict() == {
        "age_sex": 1.0,
        "hcc": 1.0,  # no mean given for it
        "charlson": 2.0,
        "utilisation": 1.0,
    }


def test_the_blend_names_its_patients_and_keeps_its_weights() -> None:
    blend = blend_factors(["b", "a"], {"age_sex": {"a": 1.0, "b": 3.0}}, WEIGHTS)
    assert blend.weights is WEIGHTS
    assert [(p, found.patient) for p, found in blend.patients.items()] == [("a", "a"), ("b", "b")]
    assert blend.factor("nobody") == 1.0


def test_population_counts_name_each_resource_type() -> None:
    pop: Population = build(
        [visit("e1", pid(1), doc(1), days_ago(5)), visit("e2", pid(2), doc(1), days_ago(5))]
    )
    assert pop.counts() == {
        "Patient": 2,
        "Encounter": 2,
        "Condition": 0,
        "Practitioner": 5,
        "PractitionerRole": 5,
        "Organization": 0,
    }


def test_tier_counts_per_panel_use_the_tiers_given() -> None:
    results = {pid(1): risk(pid(1), 0, None, 0, 0), pid(2): risk(pid(2), 0, None, 0, 0)}
    panels = {pid(1): doc(1), pid(2): doc(2), pid(3): doc(2)}  # p3 has no risk result
    assert tier_distribution_by_panel(results, panels, tiers=(1, 2)) == {
        doc(1): {"1": 1, "2": 0},
        doc(2): {"1": 1, "2": 0},
    }


def test_the_risk_settings_scorer_uses_the_segment_they_name(tables: Tables) -> None:
    config = dataclasses.replace(tables.method.risk, hcc_segment="CFA")
    assert config.hcc_scorer().segment.key == "CFA"
    assert tables.method.risk.hcc_scorer().segment.key == "CNA"


def test_a_metric_may_weigh_nothing() -> None:
    only_age_sex = BlendWeights(age_sex=1.0, hcc=0.0, charlson=0.0, utilisation=0.0)
    blend = blend_factors(["a", "b"], {"age_sex": {"a": 3.0, "b": 1.0}}, only_age_sex)
    assert blend.factor("a") == pytest.approx(1.5)
