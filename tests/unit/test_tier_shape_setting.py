"""The `[shape]` table of tiers.toml sets the bounds a pass checks its tier distribution against
(it was read, then ignored: every pass used the built-in Kaiser-pyramid defaults)."""

from __future__ import annotations

import dataclasses

from fhirpanel.config import Settings
from fhirpanel.domain.tiers import TierShape
from fhirpanel.run import analyse
from fhirpanel.tables import MethodTables, Tables
from tests.unit.test_attribution import AS_OF, build, days_ago, doc, pid, visit


def _with_shape(tables: MethodTables, shape: TierShape) -> MethodTables:
    tiers = dataclasses.replace(tables.risk.tiers, shape=shape)
    return dataclasses.replace(tables, risk=dataclasses.replace(tables.risk, tiers=tiers))


def _high_warnings(warnings: list[str]) -> list[str]:
    return [w for w in warnings if w.startswith("tiers 3+4 hold")]


def test_a_pass_checks_the_tiers_against_the_shape_of_tiers_toml() -> None:
    method = Tables.load(Settings.load(env={})).method
    # Ten low-risk patients, each with one visit: all tier 1, no high-risk tier at all.
    population = build([visit(f"e{n}", pid(n), doc(1), days_ago(30 + n)) for n in range(10)])
    shipped = analyse(population, AS_OF, method)
    assert shipped.tier_distribution == {"1": 10, "2": 0, "3": 0, "4": 0}
    assert len(_high_warnings(shipped.warnings)) == 1  # the shipped shape wants 5-25%
    # A practice whose [shape] allows no high-risk patients gets no warning...
    allowing = _with_shape(method, TierShape(high_min_share=0.0))
    assert _high_warnings(analyse(population, AS_OF, allowing).warnings) == []
    # ... and one whose [shape] wants more than the defaults is warned with its own bounds.
    demanding = _with_shape(method, TierShape(high_min_share=0.5, high_max_share=0.9))
    (warning,) = _high_warnings(analyse(population, AS_OF, demanding).warnings)
    assert "50%-90%" in warning
