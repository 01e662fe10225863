"""Attribution rules built from the mapping tables, checked as they are built: what makes a
visit qualify, the sentinel exam codes, the primary-care specialties, and the pipelines (their
steps in order; docs/methods.md s.1-2)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from fhirpanel.domain.codes import verhoeff_valid
from fhirpanel.domain.records import CPT, HCPCS, NUCC, SNOMED, EncounterRecord
from fhirpanel.errors import MappingError

StepKind = Literal["manual", "declared-pcp", "risk-product", "four-cut"]
STEP_KINDS: tuple[str, ...] = get_args(StepKind)
# Guards against typos such as 180 for 18; the white paper's windows are 12 to 36 months.
MAX_WINDOW_MONTHS = 120


# --- checks on rules from mapping tables --------------------------------------------------------
# fhirpanel.tables has checked each file's shape (types, required keys, non-empty lists); these
# are the checks a schema cannot make. `where` is a key path in the file: list positions count
# from 1, as a reader counts [[rows]].

_CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    NUCC: re.compile(r"^[0-9]{3}[0-9A-Z]{6}X$"),
    SNOMED: re.compile(r"^[1-9][0-9]{5,17}$"),
    CPT: re.compile(r"^[0-9]{4}[0-9A-Z]$"),
    HCPCS: re.compile(r"^[A-V][0-9]{4}$"),
}
_ANY_CODE = re.compile(r"^\S+$")
_SYSTEM = re.compile(r"^(https?://\S+|urn:\S+)$")


def check_code(system: str, code: str, where: str) -> None:
    """Raise MappingError unless (system, code) is well formed for its code system."""
    if not _SYSTEM.match(system):
        raise MappingError(f"{where}: code system {system!r} is not a URI")
    pattern = _CODE_PATTERNS.get(system, _ANY_CODE)
    if not pattern.match(code):
        raise MappingError(f"{where}: {code!r} is not a well-formed code of {system}")
    if system == SNOMED and not verhoeff_valid(code):
        raise MappingError(f"{where}: {code!r} fails the SNOMED CT check digit")


def _unique(values: Sequence[str], where: str) -> tuple[str, ...]:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise MappingError(f"{where}: duplicate entries {', '.join(dupes)}")
    return tuple(values)


@lru_cache(maxsize=65536)
def normalise_label(text: str) -> str:
    """Case-insensitive, whitespace-collapsed form used for every text-label comparison."""
    return " ".join(text.casefold().split())


def _labels(values: Sequence[str], where: str) -> frozenset[str]:
    labels = [normalise_label(v) for v in _unique(values, where)]
    if len(set(labels)) != len(labels):
        raise MappingError(f"{where}: duplicate labels (compared case-insensitively)")
    return frozenset(labels)


def _codes(codes: Sequence[tuple[str, str]], where: str) -> frozenset[tuple[str, str]]:
    """Well-formed, distinct (system, code) pairs."""
    seen: set[tuple[str, str]] = set()
    for number, (system, code) in enumerate(codes, start=1):
        check_code(system, code, f"{where}[{number}]")
        if (system, code) in seen:
            raise MappingError(f"{where}: duplicate code {system}|{code}")
        seen.add((system, code))
    return frozenset(seen)


# --- rules built from mapping tables -----------------------------------------------------------


@dataclass(frozen=True)
class VisitRules:
    """What makes an Encounter a qualifying visit (docs/methods.md s.1;
    mappings/qualifying_visits)."""

    statuses: frozenset[str]
    classes: frozenset[str]
    excluded_codes: frozenset[tuple[str, str]] = frozenset()
    excluded_texts: frozenset[str] = frozenset()  # normalised labels

    @classmethod
    def create(
        cls,
        *,
        statuses: Sequence[str],
        classes: Sequence[str],
        not_qualifying: Sequence[str] = (),
        excluded_codes: Sequence[tuple[str, str]] = (),
        excluded_texts: Sequence[str] = (),
    ) -> VisitRules:
        """The rules, checked: no duplicates, no class both qualifying and not qualifying (the
        file lists the latter for the reader), well-formed codes."""
        qualifying_statuses = _unique(statuses, "statuses.qualifying")
        qualifying = _unique(classes, "classes.qualifying")
        both = sorted(set(qualifying) & set(_unique(not_qualifying, "classes.not_qualifying")))
        if both:
            raise MappingError(f"classes: {', '.join(both)} both qualifying and not")
        return cls(
            statuses=frozenset(qualifying_statuses),
            classes=frozenset(qualifying),
            excluded_codes=_codes(excluded_codes, "excluded_codes"),
            excluded_texts=_labels(excluded_texts, "excluded_texts.labels"),
        )

    def is_excluded_type(self, encounter: EncounterRecord) -> bool:
        """Visit type on the exclusion list: Encounter.type / serviceType codes, or type texts."""
        for code in encounter.types + encounter.service_types:
            if code.key in self.excluded_codes:
                return True
        return any(normalise_label(t) in self.excluded_texts for t in encounter.type_texts)

    def qualifies(self, encounter: EncounterRecord) -> bool:
        """Status, class and visit type qualify and the visit has a start (clinician aside)."""
        return (
            encounter.start is not None
            and encounter.status in self.statuses
            and encounter.class_code in self.classes
            and not self.is_excluded_type(encounter)
        )


@dataclass(frozen=True)
class SentinelExamCodes:
    """Codes marking a physical or health check, Four Cut step 3 (mappings/sentinel_exams)."""

    codes: frozenset[tuple[str, str]]

    @classmethod
    def create(
        cls, *, codes: Sequence[tuple[str, str]], not_sentinel: Sequence[tuple[str, str]] = ()
    ) -> SentinelExamCodes:
        """The codes, checked; `not_sentinel` lists look-alikes kept out on purpose, and a code
        may not be in both."""
        sentinel = _codes(codes, "codes")
        both = sorted(f"{s}|{c}" for s, c in sentinel & _codes(not_sentinel, "not_sentinel"))
        if both:
            raise MappingError(f"not_sentinel: listed as sentinel and not: {', '.join(both)}")
        return cls(codes=sentinel)

    def is_sentinel(self, encounter: EncounterRecord) -> bool:
        # Encounter.type, serviceType and reasonCode all count (docs/methods.md s.2).
        return any(code.key in self.codes for code in encounter.codes)


@dataclass(frozen=True)
class PrimaryCareSpecialties:
    """Primary-care role/specialty codes and text labels, with the pediatric subset
    (docs/methods.md s.1; mappings/primary_care)."""

    codes: frozenset[tuple[str, str]]
    labels: frozenset[str]  # normalised
    pediatric_codes: frozenset[tuple[str, str]] = frozenset()
    pediatric_labels: frozenset[str] = frozenset()

    @classmethod
    def create(
        cls,
        *,
        codes: Sequence[tuple[str, str]],
        labels: Sequence[str],
        pediatric_codes: Sequence[tuple[str, str]] = (),
        pediatric_labels: Sequence[str] = (),
    ) -> PrimaryCareSpecialties:
        """The codes and labels, checked; the pediatric ones must be among them."""
        all_codes = _codes(codes, "codes")
        stray_codes = sorted(f"{s}|{c}" for s, c in set(pediatric_codes) - all_codes)
        if stray_codes:
            raise MappingError(f"codes: pediatric codes not in codes: {stray_codes}")
        all_labels = _labels(labels, "texts.labels")
        pediatric = _labels(pediatric_labels, "texts.pediatric_labels")
        stray = sorted(pediatric - all_labels)
        if stray:
            raise MappingError(f"texts: pediatric labels not in labels: {stray}")
        return cls(
            codes=all_codes,
            labels=all_labels,
            pediatric_codes=frozenset(pediatric_codes),
            pediatric_labels=pediatric,
        )


@dataclass(frozen=True)
class AttributionRules:
    visits: VisitRules
    sentinel: SentinelExamCodes
    primary_care: PrimaryCareSpecialties


# --- pipelines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineStep:
    """One step of an attribution pipeline (white paper, Exhibit Two)."""

    kind: StepKind
    window_months: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "four-cut":
            return f"four-cut-{self.window_months}m"
        return self.kind


@dataclass(frozen=True)
class Pipeline:
    """Ordered steps; the first that decides wins. A manual assignment outranks every step."""

    name: str
    steps: tuple[PipelineStep, ...]

    def __post_init__(self) -> None:
        for number, step in enumerate(self.steps, start=1):
            if step.kind == "four-cut" and step.window_months is None:
                raise MappingError(f"steps[{number}]: a four-cut step needs window_months")
            if step.kind == "manual" and step.window_months is not None:
                raise MappingError(f"steps[{number}]: a manual step takes no window_months")
            if step.kind == "manual" and number > 1:
                raise MappingError(
                    f"steps[{number}]: a manual step outranks all others and may only come first"
                )
        names = [s.name for s in self.steps]
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            raise MappingError(f"steps: duplicate step(s) {', '.join(dupes)}")

    @property
    def widest_window(self) -> int | None:
        """The longest look-back of any step (None when no step has one)."""
        windows = [s.window_months for s in self.steps if s.window_months is not None]
        return max(windows) if windows else None


__all__ = [
    "MAX_WINDOW_MONTHS",
    "STEP_KINDS",
    "AttributionRules",
    "Pipeline",
    "PipelineStep",
    "PrimaryCareSpecialties",
    "SentinelExamCodes",
    "StepKind",
    "VisitRules",
    "check_code",
    "normalise_label",
]
