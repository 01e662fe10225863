"""Tier behaviour that mutation testing (`make mutation`) showed no test pinned: a distribution
missing a tier, a tier outside the configured ones."""

from __future__ import annotations

from fhirpanel.domain.tiers import TierShape, shape_warnings, tier_counts


def test_a_tier_outside_the_configured_ones_is_still_counted() -> None:
    assert tier_counts([1, 5, 5, 2], (1, 2, 3)) == {"1": 1, "2": 1, "3": 0, "5": 2}


def test_a_distribution_without_tier_4_counts_it_as_none() -> None:
    # Tiers 3+4 at exactly the 25% maximum; no tier 4 at all against a maximum of 0.
    shape = TierShape(high_min_share=0.05, high_max_share=0.25, complex_max_share=0.0)
    assert shape_warnings({"1": 75, "3": 25}, shape) == []
    assert len(shape_warnings({"1": 74, "3": 25, "4": 1}, shape)) == 2


def test_a_distribution_without_tier_3_counts_it_as_none() -> None:
    # Tier 4 alone at exactly the 5% that is both the high minimum and maximum.
    shape = TierShape(high_min_share=0.05, high_max_share=0.05, complex_max_share=0.05)
    assert shape_warnings({"1": 95, "4": 5}, shape) == []
    assert len(shape_warnings({"1": 94, "3": 1, "4": 5}, shape)) == 1
