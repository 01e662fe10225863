"""CMS-HCC risk scores through `hccinfhir`, cached by the canonical model input
(docs/methods.md s.4).

hccinfhir is pure computation. On import it reads its packaged 2026 CSV tables once (its data
resolver looks in the current directory before the package, so a file of the same name there would
shadow a packaged table); no file is read when a score is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhirpanel.errors import MappingError

with warnings.catch_warnings():
    # hccinfhir 0.4.0 finds its tables with the deprecated importlib.resources.path().
    warnings.simplefilter("ignore", DeprecationWarning)
    from hccinfhir import calculate_raf
    from hccinfhir.defaults import dx_to_cc_default

# The tables hccinfhir 0.4.0 applies by default; another payment year needs other tables.
PACKAGED_PAYMENT_YEARS = frozenset({2026})
# Scores are sums of three-decimal coefficients; rounding the float sum makes them independent of
# the order the library happens to add them in (set order varies between processes).
SCORE_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class HccSegment:
    key: str  # CNA, CND, CFA, ...
    label: str
    dual_elgbl_cd: str
    orec: str
    crec: str


@dataclass(frozen=True)
class HccSettings:
    """The `[hcc]` table of `mappings/risk.toml`."""

    models: Mapping[str, str]  # short name (V28) -> hccinfhir model name
    segments: Mapping[str, HccSegment]
    default_model: str
    default_segment: str
    payment_year: int
    sex_codes: Mapping[str, str]  # Patient.gender -> M | F

    def __post_init__(self) -> None:
        for short, name in self.models.items():
            if "CMS-HCC Model" not in name:
                raise MappingError(f"hcc.models.{short}: must name a CMS-HCC model: {name!r}")
        if self.payment_year not in PACKAGED_PAYMENT_YEARS:
            raise MappingError(
                f"hcc.payment_year: {self.payment_year!r} not available; hccinfhir 0.4.0 packages "
                f"{sorted(PACKAGED_PAYMENT_YEARS)}"
            )
        self.model_name(self.default_model)
        self.segment(self.default_segment)

    def model_name(self, model: str) -> str:
        name = self.models.get(model)
        if name is None:
            raise MappingError(f"unknown HCC model {model!r}; configured: {sorted(self.models)}")
        return name

    def segment(self, key: str) -> HccSegment:
        segment = self.segments.get(key)
        if segment is None:
            raise MappingError(f"unknown HCC segment {key!r}; configured: {sorted(self.segments)}")
        return segment

    def sex_code(self, gender: str | None) -> str | None:
        return self.sex_codes.get(gender) if gender else None


@dataclass(frozen=True, slots=True)
class HccInput:
    """What the score depends on; equal inputs give equal scores, so this is the cache key."""

    dx_codes: tuple[str, ...]  # sorted, de-duplicated, dot-less; only codes that map to an HCC
    age: int
    sex: str  # M | F
    segment: str
    model: str  # hccinfhir model name


@dataclass(frozen=True, slots=True)
class HccDetail:
    hcc: str  # "38"
    label: str | None
    coefficient: float

    @property
    def name(self) -> str:
        return f"HCC{self.hcc}"


@dataclass(frozen=True, slots=True)
class HccScore:
    risk_score: float  # raw (unnormalised) risk score, rounded to SCORE_DECIMALS
    demographic_cell: str | None  # e.g. F70_74
    hccs: tuple[HccDetail, ...]  # HCCs with a non-zero coefficient, in HCC number order
    interactions: tuple[tuple[str, float], ...]  # non-zero interaction terms, by name
    dx_by_hcc: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())  # codes behind each

    @property
    def hcc_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hccs)

    @property
    def interaction_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.interactions)

    @property
    def codes(self) -> frozenset[str]:
        """Diagnosis codes behind the scoring HCCs."""
        return frozenset(code for _, codes in self.dx_by_hcc for code in codes)


def _hcc_order(hcc: str) -> tuple[int, str]:
    return (int(hcc), hcc) if hcc.isdigit() else (1_000_000, hcc)


def _score_from_result(result: Any) -> HccScore:
    """The parts of an hccinfhir RAFResult fhirpanel reports, in a stable order."""
    coefficients: dict[str, float] = {str(k): float(v) for k, v in result.coefficients.items()}
    hcc_set = {str(h) for h in result.hcc_list}
    labels = {str(d.hcc): d.label for d in result.hcc_details}
    cell = result.demographics.category if result.demographics is not None else None
    hccs = tuple(
        HccDetail(hcc, labels.get(hcc), coefficients[hcc])
        for hcc in sorted(hcc_set, key=_hcc_order)
        if coefficients.get(hcc)
    )
    interactions = tuple(
        (name, value)
        for name, value in sorted(coefficients.items())
        if name not in hcc_set and name != cell and value != 0
    )
    scoring = {h.hcc for h in hccs}
    dx_by_hcc = tuple(
        (hcc, tuple(sorted(str(c) for c in result.cc_to_dx.get(hcc, ()))))
        for hcc in sorted(scoring, key=_hcc_order)
    )
    return HccScore(
        risk_score=round(float(result.risk_score), SCORE_DECIMALS),
        demographic_cell=str(cell) if cell is not None else None,
        hccs=hccs,
        interactions=interactions,
        dx_by_hcc=dx_by_hcc,
    )


class HccScorer:
    """Scores patients with one model and segment; identical inputs are scored once.

    A call to `calculate_raf` costs tens of microseconds of set-up (demographics, edits,
    hierarchies, interactions); a panel has far fewer distinct (codes, age, sex) inputs than
    patients, so results are cached by the canonical input (`HccInput`: the model and segment are
    fixed per scorer, so the key is the codes, age and sex). Codes that map to no HCC cannot change
    the score (the library drops them before edits and hierarchies), so they are left out.
    """

    def __init__(
        self, settings: HccSettings, model: str | None = None, segment: str | None = None
    ) -> None:
        self.model = settings.model_name(model or settings.default_model)
        self.segment = settings.segment(segment or settings.default_segment)
        # Codes the model maps to at least one HCC (a set lookup per code, not a table scan).
        self._hcc_codes = frozenset(dx for dx, name in dx_to_cc_default if name == self.model)
        # Model and segment are fixed per scorer, so the key is (codes, age, sex).
        self._cache: dict[tuple[tuple[str, ...], int, str], HccScore] = {}
        self.hits = 0
        self.misses = 0

    def relevant_codes(self, codes: Iterable[str]) -> tuple[str, ...]:
        """Sorted, de-duplicated codes that map to at least one HCC in this model."""
        hcc_codes = self._hcc_codes
        return tuple(sorted({c for c in codes if c in hcc_codes}))

    def canonical_input(self, codes: Iterable[str], age: int, sex: str) -> HccInput:
        return HccInput(self.relevant_codes(codes), age, sex, self.segment.key, self.model)

    def score(self, codes: Iterable[str], age: int, sex: str) -> HccScore:
        key = (self.relevant_codes(codes), age, sex)
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        score = self._calculate(list(key[0]), age, sex)
        self._cache[key] = score
        return score

    def score_uncached(self, codes: Iterable[str], age: int, sex: str) -> HccScore:
        """One library call with every code, as a per-patient reference."""
        return self._calculate(sorted(set(codes)), age, sex)

    def _calculate(self, dx_codes: list[str], age: int, sex: str) -> HccScore:
        result = calculate_raf(
            dx_codes,
            model_name=self.model,
            age=age,
            sex=sex,
            dual_elgbl_cd=self.segment.dual_elgbl_cd,
            orec=self.segment.orec,
            crec=self.segment.crec,
            new_enrollee=False,
        )
        return _score_from_result(result)

    @property
    def cache_size(self) -> int:
        return len(self._cache)
