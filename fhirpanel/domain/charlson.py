"""Charlson Comorbidity Index on ICD-10 codes: Quan 2005 categories, Charlson 1987 or Quan 2011
weights, the Quan hierarchy and optional age points (docs/methods.md s.4)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fhirpanel.domain.conditions import check_icd10_prefix
from fhirpanel.errors import MappingError


@dataclass(frozen=True, slots=True)
class CharlsonCategory:
    key: str
    label: str
    prefixes: tuple[str, ...]  # dot-less ICD-10, prefix match


@dataclass(frozen=True, slots=True)
class AgeBand:
    min_age: int
    max_age: int | None  # None: no upper bound
    points: int

    def contains(self, age: int) -> bool:
        return age >= self.min_age and (self.max_age is None or age <= self.max_age)


@dataclass(frozen=True, slots=True)
class CategoryHit:
    key: str
    weight: int
    codes: tuple[str, ...]  # the dot-less codes that hit it


@dataclass(frozen=True, slots=True)
class CharlsonResult:
    score: int  # comorbidity points plus age points (when asked for)
    hits: tuple[CategoryHit, ...]  # categories counted after the hierarchy, in table order
    dropped: tuple[str, ...] = ()  # categories present but dropped by the hierarchy
    age_points: int = 0

    @property
    def scoring_categories(self) -> tuple[str, ...]:
        """Categories that added points (a weight of 0 under Quan 2011 adds none)."""
        return tuple(h.key for h in self.hits if h.weight > 0)

    @property
    def codes(self) -> frozenset[str]:
        """Codes behind the scoring categories."""
        return frozenset(c for h in self.hits if h.weight > 0 for c in h.codes)


@dataclass(frozen=True)
class CharlsonTable:
    """`mappings/charlson_quan2005.toml` as typed data."""

    categories: tuple[CharlsonCategory, ...]
    weights: Mapping[str, Mapping[str, int]]  # weight set -> category -> weight
    hierarchy: tuple[tuple[str, str], ...]  # (dropped, when this one is present)
    age_bands: tuple[AgeBand, ...]
    _prefix_lengths: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _by_prefix: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        *,
        weight_sets: Sequence[str],
        categories: Sequence[tuple[CharlsonCategory, Mapping[str, int]]],
        hierarchy: Sequence[tuple[str, str]] = (),
        age_bands: Sequence[AgeBand] = (),
    ) -> CharlsonTable:
        """The table, checked: each category once, with dot-less ICD-10 prefixes and a weight
        in every weight set; the hierarchy names known categories; age bands do not overlap.
        `categories` pairs each category with its weight per set."""
        weights: dict[str, dict[str, int]] = {name: {} for name in weight_sets}
        by_prefix: dict[str, list[str]] = {}
        seen: set[str] = set()
        for number, (category, category_weights) in enumerate(categories, start=1):
            where, key = f"categories[{number}]", category.key
            if key in seen:
                raise MappingError(f"{where}: category {key!r} appears twice")
            seen.add(key)
            if len(set(category.prefixes)) != len(category.prefixes):
                raise MappingError(f"{where}.icd10_prefixes: {key} lists a prefix twice")
            for prefix in category.prefixes:
                check_icd10_prefix(prefix, f"{where}.icd10_prefixes")
                by_prefix.setdefault(prefix, []).append(key)
            if set(category_weights) != set(weights):
                raise MappingError(
                    f"{where}.weights: {key} needs a weight for each of {sorted(weights)}"
                )
            for name, value in category_weights.items():
                weights[name][key] = value
        for number, (drop, when) in enumerate(hierarchy, start=1):
            if drop not in seen or when not in seen:
                raise MappingError(f"hierarchy[{number}]: unknown category in {drop} / {when}")
        return cls(
            categories=tuple(category for category, _ in categories),
            weights=weights,
            hierarchy=tuple(hierarchy),
            age_bands=_age_bands(age_bands),
            _prefix_lengths=tuple(sorted({len(p) for p in by_prefix})),
            _by_prefix={p: tuple(keys) for p, keys in by_prefix.items()},
        )

    @property
    def weight_sets(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def categories_for_code(self, code: str) -> tuple[str, ...]:
        """Categories whose prefix starts the dot-less code (Quan 2005 prefix match)."""
        cached = self._cache.get(code)
        if cached is None:
            keys: set[str] = set()
            for length in self._prefix_lengths:
                if length > len(code):
                    break
                keys.update(self._by_prefix.get(code[:length], ()))
            cached = tuple(sorted(keys))
            self._cache[code] = cached
        return cached

    def age_points(self, age: int | None) -> int:
        if age is None:
            return 0
        return next((band.points for band in self.age_bands if band.contains(age)), 0)

    def score(
        self,
        codes: Iterable[str],
        weight_set: str,
        *,
        age: int | None = None,
        with_age_points: bool = False,
    ) -> CharlsonResult:
        """Charlson index of one patient's dot-less ICD-10 codes."""
        set_weights = self.weights.get(weight_set)
        if set_weights is None:
            raise MappingError(f"charlson: unknown weight set {weight_set!r}")
        hits: dict[str, set[str]] = {}
        for code in codes:
            for key in self.categories_for_code(code):
                hits.setdefault(key, set()).add(code)
        # Quan 2005 hierarchy: the milder form is not counted next to the severe one.
        dropped = sorted({drop for drop, when in self.hierarchy if drop in hits and when in hits})
        for key in dropped:
            del hits[key]
        counted = tuple(
            CategoryHit(c.key, set_weights[c.key], tuple(sorted(hits[c.key])))
            for c in self.categories
            if c.key in hits
        )
        points = self.age_points(age) if with_age_points else 0
        return CharlsonResult(
            score=sum(h.weight for h in counted) + points,
            hits=counted,
            dropped=tuple(dropped),
            age_points=points,
        )


def _age_bands(value: Sequence[AgeBand]) -> tuple[AgeBand, ...]:
    for number, band in enumerate(value, start=1):
        if band.max_age is not None and band.max_age < band.min_age:
            raise MappingError(f"age_points[{number}]: max_age {band.max_age} is below min_age")
    bands = sorted(value, key=lambda b: b.min_age)
    for before, after in itertools.pairwise(bands):
        if before.max_age is None or before.max_age >= after.min_age:
            raise MappingError("age_points: bands overlap")
    return tuple(bands)
