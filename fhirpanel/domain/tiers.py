"""Risk tiers from ordered threshold rules (`mappings/tiers.toml`; docs/methods.md s.5).

A rule matches when every condition in its `all` list holds and, if it has an `any` list, at least
one of those does; a condition is a table of thresholds that must all hold, e.g.
`{hcc_gte = 1.5, chronic_gte = 3}`. Rules are tried from the top and the first match wins; a
patient no rule matches gets the default tier. A threshold on `hcc` never holds for a patient
without an HCC score (a child: the pediatric framework), nor one on `pmca` for an adult.

Tiers per framework: children (domain/pediatric.py) go through the `pediatric_rules` when the
file has them, adults through `rules`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fhirpanel.errors import MappingError

METRICS = ("hcc", "charlson", "ed", "inpatient", "chronic", "pmca")
OPERATORS = {"gte": ">=", "lt": "<"}


@dataclass(frozen=True, slots=True)
class TierMetrics:
    """What a tier rule can look at for one patient."""

    hcc: float | None
    charlson: int
    ed: int  # emergency visits in the look-back window
    inpatient: int  # inpatient stays in the look-back window
    chronic: int  # distinct chronic condition groups
    pmca: int | None = None  # a child's PMCA level: 2 complex, 1 non-complex, 0 no chronic

    def values(self) -> tuple[float | None, ...]:
        """The metrics in METRICS order."""
        return (self.hcc, self.charlson, self.ed, self.inpatient, self.chronic, self.pmca)


@dataclass(frozen=True, slots=True)
class Threshold:
    metric: str
    operator: str  # gte | lt
    value: float
    index: int = 0  # position of the metric in METRICS

    def holds(self, values: tuple[float | None, ...]) -> bool:
        actual = values[self.index]
        if actual is None:
            return False
        return actual >= self.value if self.operator == "gte" else actual < self.value

    def describe(self) -> str:
        value = int(self.value) if self.value.is_integer() else self.value
        return f"{self.metric}{OPERATORS[self.operator]}{value}"


@dataclass(frozen=True, slots=True)
class Clause:
    """Thresholds that must all hold."""

    thresholds: tuple[Threshold, ...]

    def holds(self, values: tuple[float | None, ...]) -> bool:
        for threshold in self.thresholds:
            if not threshold.holds(values):
                return False
        return True

    def describe(self) -> str:
        return " & ".join(t.describe() for t in self.thresholds)


@dataclass(frozen=True, slots=True)
class TierRule:
    tier: int
    name: str
    all_of: tuple[Clause, ...] = ()
    any_of: tuple[Clause, ...] = ()

    def match(self, values: tuple[float | None, ...]) -> str | None:
        """A description of why the rule matches (metric values in METRICS order), or None."""
        for clause in self.all_of:
            if not clause.holds(values):
                return None
        first = None
        if self.any_of:
            first = next((c for c in self.any_of if c.holds(values)), None)
            if first is None:
                return None
        reasons = [c.describe() for c in self.all_of]
        if first is not None:
            reasons.append(first.describe())
        return f"{self.name}: {' & '.join(reasons)}"


@dataclass(frozen=True, slots=True)
class TierShape:
    """Expected shares of a primary-care panel, after the Kaiser pyramid (docs/methods.md s.5)."""

    high_min_share: float = 0.05  # tiers 3 and 4 together
    high_max_share: float = 0.25
    complex_max_share: float = 0.05  # tier 4


@dataclass(frozen=True)
class TierRules:
    rules: tuple[TierRule, ...]
    default_tier: int
    labels: Mapping[int, str]
    shape: TierShape
    pediatric_rules: tuple[TierRule, ...] = ()  # empty: children go through `rules`

    def __post_init__(self) -> None:
        known = sorted(self.labels)
        if self.default_tier not in self.labels:
            raise MappingError(f"default_tier: must be one of {known}")
        for where, rules in (("rules", self.rules), ("pediatric.rules", self.pediatric_rules)):
            for number, rule in enumerate(rules, start=1):
                if rule.tier not in self.labels:
                    raise MappingError(f"{where}[{number}].tier: must be one of {known}")
                if not rule.all_of and not rule.any_of:
                    raise MappingError(f"{where}[{number}]: needs an `all` or an `any` list")
            names = [r.name for r in rules]
            if len(set(names)) != len(names):
                raise MappingError(f"{where}: rule names must be unique")

    @property
    def tiers(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels))

    def assign(self, metrics: TierMetrics, framework: str = "adult") -> tuple[int, str]:
        """(tier, the rule and clause that decided it); first match wins, among the pediatric
        rules for a child (`framework` "pediatric") when there are some."""
        values = metrics.values()
        rules = self.pediatric_rules if framework == "pediatric" and self.pediatric_rules else None
        for rule in rules if rules is not None else self.rules:
            reason = rule.match(values)
            if reason is not None:
                return rule.tier, reason
        return self.default_tier, "default"


def tier_counts(tiers: Iterable[int], all_tiers: Iterable[int]) -> dict[str, int]:
    """{"1": n, ...} with every tier present, in tier order."""
    counts = {str(t): 0 for t in sorted(all_tiers)}
    for tier in tiers:
        counts[str(tier)] = counts.get(str(tier), 0) + 1
    return counts


def shape_warnings(distribution: Mapping[str, int], shape: TierShape) -> list[str]:
    """Warnings when the distribution strays from the expected pyramid."""
    total = sum(distribution.values())
    if total == 0:
        return ["no patients in the tier distribution"]
    high = distribution.get("3", 0) + distribution.get("4", 0)
    complex_ = distribution.get("4", 0)
    warnings: list[str] = []
    high_share, complex_share = high / total, complex_ / total
    if not shape.high_min_share <= high_share <= shape.high_max_share:
        warnings.append(
            f"tiers 3+4 hold {high_share:.1%} of patients; expected "
            f"{shape.high_min_share:.0%}-{shape.high_max_share:.0%}: "
            "recalibrate mappings/tiers.toml"
        )
    if complex_share > shape.complex_max_share:
        warnings.append(
            f"tier 4 holds {complex_share:.1%} of patients; expected at most "
            f"{shape.complex_max_share:.0%}: recalibrate mappings/tiers.toml"
        )
    return warnings


def clauses(conditions: Sequence[Mapping[str, float]], where: str) -> tuple[Clause, ...]:
    """A rule's `all` or `any` list: each condition a table of `<metric>_<operator>` thresholds
    (values already checked to be numbers >= 0)."""
    out: list[Clause] = []
    for number, condition in enumerate(conditions, start=1):
        thresholds: list[Threshold] = []
        for key, value in sorted(condition.items()):
            metric, _, operator = key.rpartition("_")
            if metric not in METRICS or operator not in OPERATORS:
                raise MappingError(
                    f"{where}[{number}]: unknown threshold {key!r}; use <metric>_gte or "
                    f"<metric>_lt with metric one of {', '.join(METRICS)}"
                )
            thresholds.append(Threshold(metric, operator, float(value), METRICS.index(metric)))
        out.append(Clause(tuple(thresholds)))
    return tuple(out)
