"""Risk tiers from ordered threshold rules (`mappings/tiers.toml`; docs/methods.md s.5).

A rule matches when every condition in its `all` list holds and, if it has an `any` list, at least
one of those does; a condition is a table of thresholds that must all hold, e.g.
`{hcc_gte = 1.5, chronic_gte = 3}`. Rules are tried from the top and the first match wins; a
patient no rule matches gets the default tier. A threshold on `hcc` never holds for a patient
without an HCC score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhirpanel.domain.conditions import mapping_text
from fhirpanel.errors import MappingError

METRICS = ("hcc", "charlson", "ed", "inpatient", "chronic")
OPERATORS = {"gte": ">=", "lt": "<"}


@dataclass(frozen=True, slots=True)
class TierMetrics:
    """What a tier rule can look at for one patient."""

    hcc: float | None
    charlson: int
    ed: int  # emergency visits in the look-back window
    inpatient: int  # inpatient stays in the look-back window
    chronic: int  # distinct chronic condition groups

    def values(self) -> tuple[float | None, ...]:
        """The metrics in METRICS order."""
        return (self.hcc, self.charlson, self.ed, self.inpatient, self.chronic)


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

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TierShape:
        values: dict[str, float] = {}
        for key in ("high_min_share", "high_max_share", "complex_max_share"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise MappingError(f"tiers [shape]: {key} must be a share between 0 and 1")
            values[key] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class TierRules:
    rules: tuple[TierRule, ...]
    default_tier: int
    labels: Mapping[int, str]
    shape: TierShape

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TierRules:
        raw_labels = data.get("tiers")
        if not isinstance(raw_labels, Mapping) or not raw_labels:
            raise MappingError("tiers: [tiers] must label each tier")
        labels: dict[int, str] = {}
        for key, label in raw_labels.items():
            if not str(key).isdigit() or not isinstance(label, str) or not label.strip():
                raise MappingError(f"tiers: bad tier label {key!r} = {label!r}")
            labels[int(key)] = label.strip()
        default = data.get("default_tier")
        if not isinstance(default, int) or default not in labels:
            raise MappingError(f"tiers: default_tier must be one of {sorted(labels)}")
        raw_rules = data.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise MappingError("tiers: needs a non-empty [[rules]] list")
        rules = tuple(_rule(raw, index, labels) for index, raw in enumerate(raw_rules))
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise MappingError("tiers: rule names must be unique")
        shape = data.get("shape", {})
        if not isinstance(shape, Mapping):
            raise MappingError("tiers: [shape] must be a table")
        return cls(rules, default, labels, TierShape.from_mapping(shape) if shape else TierShape())

    @property
    def tiers(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels))

    def assign(self, metrics: TierMetrics) -> tuple[int, str]:
        """(tier, the rule and clause that decided it); first match wins."""
        values = metrics.values()
        for rule in self.rules:
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


def _rule(raw: Any, index: int, labels: Mapping[int, str]) -> TierRule:
    where = f"tiers rule {index + 1}"
    if not isinstance(raw, Mapping):
        raise MappingError(f"{where}: not a table")
    tier = raw.get("tier")
    if not isinstance(tier, int) or tier not in labels:
        raise MappingError(f"{where}: tier must be one of {sorted(labels)}")
    unknown = set(raw) - {"tier", "name", "all", "any"}
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(unknown)}")
    all_of = _clauses(raw.get("all", []), where)
    any_of = _clauses(raw.get("any", []), where)
    if not all_of and not any_of:
        raise MappingError(f"{where}: needs an `all` or an `any` list")
    return TierRule(tier, mapping_text(raw, "name", where), all_of, any_of)


def _clauses(value: Any, where: str) -> tuple[Clause, ...]:
    if not isinstance(value, list):
        raise MappingError(f"{where}: `all` and `any` must be lists of tables")
    clauses: list[Clause] = []
    for raw in value:
        if not isinstance(raw, Mapping) or not raw:
            raise MappingError(f"{where}: each condition must be a non-empty table")
        thresholds: list[Threshold] = []
        for key, number in sorted(raw.items()):
            metric, _, operator = str(key).rpartition("_")
            if metric not in METRICS or operator not in OPERATORS:
                raise MappingError(
                    f"{where}: unknown threshold {key!r}; use <metric>_gte or <metric>_lt with "
                    f"metric one of {', '.join(METRICS)}"
                )
            if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
                raise MappingError(f"{where}: {key} must be a number >= 0")
            thresholds.append(Threshold(metric, operator, float(number), METRICS.index(metric)))
        clauses.append(Clause(tuple(thresholds)))
    return tuple(clauses)
