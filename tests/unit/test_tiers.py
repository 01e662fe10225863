"""Tier rules: first match wins, every boundary of the shipped rules, the shape check."""

from __future__ import annotations

from typing import Any

import pytest

from fhirpanel.domain.risk import check_tier_shape
from fhirpanel.domain.tiers import TierMetrics, TierRules, TierShape, shape_warnings
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables
from fhirpanel.tables.loader import parse_tier_rules

LABELS = {"1": "low", "2": "rising", "3": "high", "4": "complex"}


def rules(*raw_rules: dict[str, Any], **extra: Any) -> TierRules:
    data: dict[str, Any] = {
        "meta": {"source": "tests", "version": "1"},
        "default_tier": 1,
        "tiers": LABELS,
        "rules": list(raw_rules),
    }
    data.update(extra)
    return parse_tier_rules(data)


def metrics(
    hcc: float | None = 0.0, charlson: int = 0, ed: int = 0, inpatient: int = 0, chronic: int = 0
) -> TierMetrics:
    return TierMetrics(hcc=hcc, charlson=charlson, ed=ed, inpatient=inpatient, chronic=chronic)


EXAMPLE = rules(
    {"tier": 4, "name": "complex", "any": [{"hcc_gte": 2.5}, {"inpatient_gte": 2}]},
    {"tier": 3, "name": "high", "any": [{"hcc_gte": 1.5}, {"inpatient_gte": 1}]},
    {
        "tier": 2,
        "name": "rising",
        "all": [{"chronic_gte": 2}],
        "any": [{"ed_gte": 1}, {"charlson_gte": 2}],
    },
)


def test_first_match_wins() -> None:
    # matches both "complex" (hcc 2.5) and "high" (inpatient 1): the first rule decides
    assert EXAMPLE.assign(metrics(hcc=2.5, inpatient=1)) == (4, "complex: hcc>=2.5")
    assert EXAMPLE.assign(metrics(hcc=1.0, inpatient=1)) == (3, "high: inpatient>=1")


def test_boundaries_are_inclusive_for_gte() -> None:
    assert EXAMPLE.assign(metrics(hcc=2.5))[0] == 4
    assert EXAMPLE.assign(metrics(hcc=2.4999))[0] == 3
    assert EXAMPLE.assign(metrics(hcc=1.5))[0] == 3
    assert EXAMPLE.assign(metrics(hcc=1.4999))[0] == 1


def test_all_and_any_combine() -> None:
    # rising needs chronic >= 2 AND (ed >= 1 OR charlson >= 2)
    assert EXAMPLE.assign(metrics(chronic=2, ed=1)) == (2, "rising: chronic>=2 & ed>=1")
    assert EXAMPLE.assign(metrics(chronic=2, charlson=2)) == (2, "rising: chronic>=2 & charlson>=2")
    assert EXAMPLE.assign(metrics(chronic=1, ed=3)) == (1, "default")
    assert EXAMPLE.assign(metrics(chronic=5)) == (1, "default")


def test_a_clause_needs_all_its_thresholds() -> None:
    tiers = rules({"tier": 3, "name": "x", "any": [{"hcc_gte": 1.0, "chronic_gte": 3}]})
    assert tiers.assign(metrics(hcc=1.0, chronic=3)) == (3, "x: chronic>=3 & hcc>=1")
    assert tiers.assign(metrics(hcc=1.0, chronic=2))[0] == 1


def test_less_than_operator() -> None:
    tiers = rules({"tier": 2, "name": "young-sick", "all": [{"hcc_lt": 0.5, "chronic_gte": 2}]})
    assert tiers.assign(metrics(hcc=0.49, chronic=2))[0] == 2
    assert tiers.assign(metrics(hcc=0.5, chronic=2))[0] == 1


def test_hcc_threshold_never_holds_without_a_score() -> None:
    assert EXAMPLE.assign(metrics(hcc=None)) == (1, "default")
    assert EXAMPLE.assign(metrics(hcc=None, inpatient=2))[0] == 4
    lt_rule = rules({"tier": 2, "name": "low-hcc", "any": [{"hcc_lt": 1.0}]})
    assert lt_rule.assign(metrics(hcc=None))[0] == 1


@pytest.fixture(scope="module")
def shipped(tables: Tables) -> TierRules:
    return tables.method.risk.tiers


def test_shipped_rules_every_boundary(shipped: TierRules) -> None:
    """Each `any` clause of each shipped rule: met exactly -> that rule's tier (or a higher one
    listed earlier); just below -> a lower tier."""
    checked = 0
    for rule in shipped.rules:
        for clause in rule.any_of:
            at: dict[str, float] = {}
            below: dict[str, float] = {}
            for threshold in clause.thresholds:
                assert threshold.operator == "gte"
                at[threshold.metric] = threshold.value
                step = 0.001 if threshold.metric == "hcc" else 1
                below[threshold.metric] = threshold.value - step
            tier_at, reason = shipped.assign(_metrics(at))
            assert tier_at == rule.tier, (rule.name, clause.describe(), reason)
            assert reason.startswith(rule.name + ":")
            assert shipped.assign(_metrics(below))[0] < rule.tier, (rule.name, clause.describe())
            checked += 1
    assert checked >= 8


def _metrics(values: dict[str, float]) -> TierMetrics:
    return TierMetrics(
        hcc=values.get("hcc", 0.0),
        charlson=int(values.get("charlson", 0)),
        ed=int(values.get("ed", 0)),
        inpatient=int(values.get("inpatient", 0)),
        chronic=int(values.get("chronic", 0)),
    )


def test_shipped_rules_are_ordered_from_tier_4_down(shipped: TierRules) -> None:
    tiers = [r.tier for r in shipped.rules]
    assert tiers == sorted(tiers, reverse=True)
    assert tiers[0] == 4
    assert shipped.default_tier == 1
    assert shipped.assign(metrics()) == (1, "default")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # the rules' own checks (TierRules, tiers.clauses)
        (
            {"tier": 5, "name": "x", "any": [{"hcc_gte": 1}]},
            r"rules\[1\]\.tier: must be one of \[1, 2, 3, 4\]",
        ),
        ({"tier": 3, "name": "x"}, r"rules\[1\]: needs an `all` or an `any` list"),
        (
            {"tier": 3, "name": "x", "any": [{"risk_gte": 1}]},
            r"rules\[1\]\.any\[1\]: unknown threshold 'risk_gte'",
        ),
        (
            {"tier": 3, "name": "x", "all": [{"hcc_gt": 1}]},
            r"rules\[1\]\.all\[1\]: unknown threshold 'hcc_gt'",
        ),
        # the file's shape (schemas)
        (
            {"tier": 3, "name": "x", "any": [{"hcc_gte": "high"}]},
            r"rules\[1\]\.any\[1\]\.hcc_gte: Input should be a valid number \(got 'high'\)",
        ),
        (
            {"tier": 3, "name": "x", "any": [{"hcc_gte": -1}]},
            r"rules\[1\]\.any\[1\]\.hcc_gte: Input should be greater than or equal to 0",
        ),
        (
            {"tier": 3, "name": "x", "any": [{}]},
            r"rules\[1\]\.any\[1\]: Dictionary should have at least 1 item",
        ),
        (
            {"tier": 3, "name": "x", "any": [{"hcc_gte": 1}], "when": 1},
            r"rules\[1\]\.when: Extra inputs are not permitted",
        ),
        ({"tier": 3, "any": [{"hcc_gte": 1}]}, r"rules\[1\]\.name: Field required"),
    ],
)
def test_invalid_rules_are_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=rf"^tiers: {message}"):
        rules(raw)


def test_duplicate_rule_names_and_bad_default_are_rejected() -> None:
    rule = {"tier": 3, "name": "x", "any": [{"hcc_gte": 1}]}
    with pytest.raises(MappingError, match=r"^tiers: rules: rule names must be unique$"):
        rules(rule, rule)
    with pytest.raises(MappingError, match=r"^tiers: default_tier: must be one of \[1, 2, 3, 4\]$"):
        rules(rule, default_tier=7)
    with pytest.raises(MappingError, match=r"^tiers: tiers\.x \(the key\): String should match "):
        rules(rule, tiers={**LABELS, "x": "extra"})


def test_shape_within_bounds_has_no_warning() -> None:
    assert check_tier_shape({"1": 70, "2": 18, "3": 10, "4": 2}) == []
    # the bounds themselves are allowed: 3+4 at exactly 5% and 25%, tier 4 at exactly 5%
    assert check_tier_shape({"1": 80, "2": 15, "3": 4, "4": 1}) == []
    assert check_tier_shape({"1": 60, "2": 15, "3": 20, "4": 5}) == []


def test_shape_warnings() -> None:
    too_few = check_tier_shape({"1": 85, "2": 11, "3": 3, "4": 1})
    assert len(too_few) == 1 and "tiers 3+4 hold 4.0%" in too_few[0]
    too_many = check_tier_shape({"1": 60, "2": 14, "3": 22, "4": 4})
    assert len(too_many) == 1 and "26.0%" in too_many[0]
    heavy_top = check_tier_shape({"1": 70, "2": 14, "3": 10, "4": 6})
    assert len(heavy_top) == 1 and "tier 4 holds 6.0%" in heavy_top[0]
    both = check_tier_shape({"1": 50, "2": 10, "3": 30, "4": 10})
    assert len(both) == 2
    assert check_tier_shape({"1": 0, "2": 0, "3": 0, "4": 0}) == [
        "no patients in the tier distribution"
    ]


def test_shape_bounds_come_from_the_file(shipped: TierRules) -> None:
    assert shipped.shape == TierShape(0.05, 0.25, 0.05)
    strict = TierShape(high_min_share=0.10, high_max_share=0.20, complex_max_share=0.02)
    assert len(shape_warnings({"1": 70, "2": 22, "3": 5, "4": 3}, strict)) == 2
    with pytest.raises(
        MappingError,
        match=r"^tiers: shape\.high_min_share: Input should be "
        r"less than or equal to 1 \(got 5\)$",
    ):
        rules(
            {"tier": 3, "name": "x", "any": [{"hcc_gte": 1}]},
            shape={"high_min_share": 5, "high_max_share": 0.2, "complex_max_share": 0.05},
        )
