"""Risk scoring behaviour that mutation testing (`make mutation`) showed no test pinned: each
metric reaches the tier rules, the conditions behind the risk come from every source, and a
result names its patient. Helpers from test_risk."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.charlson import CharlsonCategory, CharlsonTable
from fhirpanel.domain.conditions import ChronicConditions, ChronicGroup
from fhirpanel.domain.risk import RiskConfig
from fhirpanel.domain.tiers import TierRule, TierRules, TierShape, clauses
from tests.unit.test_risk import AS_OF, DEFAULT, encounter, icd, score_one


def _tiered_on(metric: str) -> RiskConfig:
    """The shipped settings with one rule: tier 4 when `metric` is at least 1."""
    rule = TierRule(4, "one", any_of=clauses([{f"{metric}_gte": 1}], "rules[1].any"))
    tiers = TierRules((rule,), 1, {1: "low", 4: "high"}, TierShape())
    return dataclasses.replace(DEFAULT, tiers=tiers)


@pytest.mark.parametrize("metric", ["charlson", "chronic", "ed"])
def test_each_metric_reaches_the_tier_rules(metric: str) -> None:
    conditions = [icd("Condition/c1", "E11.9")]  # Charlson 1, one chronic group
    emergency = [encounter("Encounter/e1", "EMER", AS_OF)]
    result = score_one(conditions, encounters=emergency, cfg=_tiered_on(metric))
    assert (result.tier, result.tier_rule) == (4, f"one: {metric}>=1")
    quiet = score_one([], cfg=_tiered_on(metric))
    assert quiet.tier == 1


def test_the_conditions_behind_the_risk_come_from_charlson_hcc_and_chronic_groups() -> None:
    # Charlson counts only diabetes (E11), the chronic groups only kidney disease (N18); the
    # HCC model counts all three, heart failure (I50) through it alone.
    charlson = CharlsonTable.create(
        weight_sets=["charlson1987"],
        categories=[(CharlsonCategory("diab", "Diabetes", ("E11",)), {"charlson1987": 1})],
    )
    chronic = ChronicConditions(
        groups=(ChronicGroup("ckd", "Chronic kidney disease", ("N18",)),), min_for_ccm=2
    )
    cfg = dataclasses.replace(DEFAULT, charlson=charlson, chronic=chronic)
    conditions = [
        icd("Condition/c1", "E11.9"),
        icd("Condition/c2", "I50.9"),
        icd("Condition/c3", "N18.4"),
        icd("Condition/c4", "Z00.00"),  # a check-up: behind nothing
    ]
    result = score_one(conditions, cfg=cfg)
    assert result.charlson_categories == ("diab",) and result.chronic_conditions == ("ckd",)
    assert result.hcc is not None and len(result.hccs) == 3
    assert result.basis_conditions == ("Condition/c1", "Condition/c2", "Condition/c3")


def test_a_result_names_its_patient() -> None:
    result = score_one([icd("Condition/c1", "E11.9")])
    assert result.patient == "Patient/p1"
