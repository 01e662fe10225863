"""The pediatric framework: children are scored with the Pediatric Medical Complexity Algorithm,
never with CMS-HCC (a Medicare model; docs/methods.md s.4.7).

PMCA (Simon TD, Cawthon ML, Stanford S, et al. "Pediatric Medical Complexity Algorithm: a new
method to stratify children by medical complexity." Pediatrics 2014;133(6):e1647-e1654) sorts a
child's diagnoses into body systems, some codes flagged progressive, and calls the child

- complex chronic: more than one body system involved, or any progressive condition, or a
  malignancy;
- non-complex chronic: one body system, neither progressive nor malignant;
- no chronic disease: none of the listed codes.

That is the algorithm's "less conservative" version, the one that needs no count of claims per
year (fhirpanel sees a patient's conditions, not claims). The ICD-10-CM code lists per body
system are in `mappings/pediatric_complexity.toml`, with their source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fhirpanel.errors import MappingError

COMPLEX = "complex-chronic"
NON_COMPLEX = "non-complex-chronic"
NO_CHRONIC = "no-chronic"
# The complexity as a number a tier rule can compare (`pmca_gte = 2`): 2 complex, 1 non-complex.
LEVELS = {NO_CHRONIC: 0, NON_COMPLEX: 1, COMPLEX: 2}
ADULT = "adult"
PEDIATRIC = "pediatric"
# Dot-less ICD-10-CM: PMCA lists U09.9 (post-COVID), so U is allowed here.
_PREFIX = re.compile(r"[A-Z][0-9][0-9A-Z]{0,5}")


@dataclass(frozen=True, slots=True)
class BodySystem:
    key: str
    label: str
    prefixes: tuple[str, ...] = ()
    progressive_prefixes: tuple[str, ...] = ()
    codes: frozenset[str] = frozenset()  # whole codes only (a category that is a code)
    progressive_codes: frozenset[str] = frozenset()
    malignant: bool = False

    def match(self, code: str) -> tuple[bool, bool]:
        """(in this system, progressive) for a dot-less code."""
        if code in self.progressive_codes or code.startswith(self.progressive_prefixes):
            return True, True
        if code in self.codes or code.startswith(self.prefixes):
            return True, False
        return False, False


@dataclass(frozen=True, slots=True)
class Complexity:
    """A child's PMCA result: the category and what led to it."""

    category: str  # complex-chronic | non-complex-chronic | no-chronic
    systems: tuple[str, ...] = ()  # body systems involved, in file order
    progressive: bool = False
    malignant: bool = False

    @property
    def level(self) -> int:
        return LEVELS[self.category]


@dataclass(frozen=True)
class PediatricComplexity:
    """The PMCA body systems and the age below which a patient is scored as a child."""

    systems: tuple[BodySystem, ...]
    adult_age: int = 18
    _cache: dict[str, tuple[tuple[str, bool], ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.systems:
            raise MappingError("systems: at least one body system is needed")
        if self.adult_age < 1:
            raise MappingError("framework.adult_age: must be at least 1")
        seen: set[str] = set()
        for number, system in enumerate(self.systems, start=1):
            where = f"systems[{number}]"
            if system.key in seen:
                raise MappingError(f"{where}: key {system.key!r} appears twice")
            seen.add(system.key)
            lists = {
                "prefixes": system.prefixes,
                "progressive_prefixes": system.progressive_prefixes,
                "codes": tuple(system.codes),
                "progressive_codes": tuple(system.progressive_codes),
            }
            if not any(lists.values()):
                raise MappingError(f"{where}: {system.key} lists no code")
            for name, values in lists.items():
                for value in values:
                    if not _PREFIX.fullmatch(value):
                        raise MappingError(
                            f"{where}.{name}: {value!r} is not a dot-less ICD-10-CM code"
                        )
            for name in ("prefixes", "progressive_prefixes"):
                values = lists[name]
                if len(set(values)) != len(values):
                    raise MappingError(f"{where}.{name}: {system.key} lists a code twice")

    def framework(self, age: int | None) -> str:
        """pediatric under `adult_age` on the as-of date; adult otherwise, and when the age is
        not known (CMS-HCC then says why it has no score)."""
        return PEDIATRIC if age is not None and age < self.adult_age else ADULT

    def _systems_for(self, code: str) -> tuple[tuple[str, bool], ...]:
        found = self._cache.get(code)
        if found is None:
            hits = []
            for system in self.systems:
                hit, progressive = system.match(code)
                if hit:
                    hits.append((system.key, progressive))
            found = tuple(hits)
            self._cache[code] = found
        return found

    def classify(self, codes: Iterable[str]) -> Complexity:
        """The PMCA category of a child's dot-less ICD-10-CM codes."""
        involved: set[str] = set()
        progressive = False
        for code in codes:
            for key, flagged in self._systems_for(code):
                involved.add(key)
                progressive = progressive or flagged
        malignant = any(s.malignant and s.key in involved for s in self.systems)
        ordered = tuple(s.key for s in self.systems if s.key in involved)
        if len(ordered) > 1 or progressive or malignant:
            category = COMPLEX
        elif ordered:
            category = NON_COMPLEX
        else:
            category = NO_CHRONIC
        return Complexity(category, ordered, progressive, malignant)


def body_system(
    key: str,
    label: str,
    prefixes: Sequence[str] = (),
    progressive_prefixes: Sequence[str] = (),
    codes: Sequence[str] = (),
    progressive_codes: Sequence[str] = (),
    *,
    malignant: bool = False,
) -> BodySystem:
    return BodySystem(
        key,
        label,
        tuple(prefixes),
        tuple(progressive_prefixes),
        frozenset(codes),
        frozenset(progressive_codes),
        malignant,
    )


__all__ = [
    "ADULT",
    "COMPLEX",
    "LEVELS",
    "NON_COMPLEX",
    "NO_CHRONIC",
    "PEDIATRIC",
    "BodySystem",
    "Complexity",
    "PediatricComplexity",
    "body_system",
]
