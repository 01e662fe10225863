"""Risk stratification per patient: Charlson, CMS-HCC, utilisation, CCM eligibility and the tier
(docs/methods.md s.4 and s.5). Pure: records and an as-of date in, results out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirpanel.domain.charlson import CharlsonResult, CharlsonTable
from fhirpanel.domain.conditions import (
    ChronicConditions,
    ConditionFilter,
    Crosswalk,
    PatientDiagnoses,
    patient_diagnoses,
)
from fhirpanel.domain.dates import age_on, months_before
from fhirpanel.domain.hcc import HccScore, HccScorer, HccSettings
from fhirpanel.domain.pediatric import PEDIATRIC, Complexity, PediatricComplexity
from fhirpanel.domain.records import (
    ConditionRecord,
    EncounterRecord,
    PatientRecord,
    Population,
)
from fhirpanel.domain.tiers import TierMetrics, TierRules, TierShape, shape_warnings, tier_counts
from fhirpanel.errors import MappingError

REPORT_DECIMALS = 3


@dataclass(frozen=True, slots=True)
class UtilisationRules:
    """Which encounters count as emergency visits and inpatient stays, and over what window."""

    lookback_months: int
    statuses: frozenset[str]
    ed_classes: frozenset[str]
    inpatient_classes: frozenset[str]

    def window_start(self, as_of: date) -> date:
        """The first day of the look-back window (the same day `lookback_months` earlier)."""
        return months_before(as_of, self.lookback_months)

    def count(self, encounters: Iterable[EncounterRecord], as_of: date) -> tuple[int, int]:
        """(emergency visits, inpatient stays) that started in (window start, as-of]."""
        start = self.window_start(as_of)
        ed = inpatient = 0
        for enc in encounters:
            day = enc.day
            if day is None or not start < day <= as_of or enc.status not in self.statuses:
                continue
            if enc.class_code in self.ed_classes:
                ed += 1
            elif enc.class_code in self.inpatient_classes:
                inpatient += 1
        return ed, inpatient


@dataclass(frozen=True)
class RiskConfig:
    """Settings and tables for one scoring run; built from the mapping files (the weight set,
    model and segment from settings where they name one, else from `risk.toml`)."""

    charlson: CharlsonTable
    crosswalk: Crosswalk
    chronic: ChronicConditions
    tiers: TierRules
    hcc: HccSettings
    condition_filter: ConditionFilter
    utilisation: UtilisationRules
    charlson_weights: str = "charlson1987"
    charlson_age_points: bool = False
    hcc_model: str = "V28"
    hcc_segment: str = "CNA"
    # The pediatric framework (PMCA): patients under its adult age are never scored with
    # CMS-HCC. None: every patient is scored as an adult (tables without the file).
    pediatric: PediatricComplexity | None = None

    def __post_init__(self) -> None:
        if self.charlson_weights not in self.charlson.weight_sets:
            raise MappingError(
                f"unknown Charlson weight set {self.charlson_weights!r}; available: "
                f"{list(self.charlson.weight_sets)}"
            )
        self.hcc.model_name(self.hcc_model)
        self.hcc.segment(self.hcc_segment)

    def hcc_scorer(self) -> HccScorer:
        return HccScorer(self.hcc, self.hcc_model, self.hcc_segment)


@dataclass(frozen=True)
class RiskResult:
    patient: str
    charlson: int
    charlson_categories: tuple[str, ...]
    hcc: float | None
    hccs: tuple[str, ...]
    interactions: tuple[str, ...]
    ed_visits: int
    inpatient_stays: int
    chronic_conditions: tuple[str, ...]
    ccm_eligible: bool
    tier: int
    tier_rule: str
    basis_conditions: tuple[str, ...]  # Condition ids that drove the risk (sorted)
    hcc_note: str | None = None  # why there is no HCC score
    framework: str = "adult"  # adult | pediatric (docs/methods.md s.4.7)
    complexity: Complexity | None = None  # a child's PMCA result

    def as_report(self) -> dict[str, Any]:
        """The `risk` object of the run report (docs/architecture.md), components included."""
        report: dict[str, Any] = {
            "charlson": self.charlson,
            "hcc": None if self.hcc is None else round(self.hcc, REPORT_DECIMALS),
            "tier": self.tier,
            "ccm_eligible": self.ccm_eligible,
            "charlson_categories": list(self.charlson_categories),
            "hccs": list(self.hccs),
            "interactions": list(self.interactions),
            "ed_visits": self.ed_visits,
            "inpatient_stays": self.inpatient_stays,
            "chronic_conditions": list(self.chronic_conditions),
            "tier_rule": self.tier_rule,
        }
        if self.hcc_note is not None:
            report["hcc_note"] = self.hcc_note
        report["framework"] = self.framework
        if self.complexity is not None:
            report["complexity"] = self.complexity.category
            report["complexity_systems"] = list(self.complexity.systems)
        return report


def _hcc_for(
    patient: PatientRecord | None,
    age: int | None,
    codes: Iterable[str],
    config: RiskConfig,
    scorer: HccScorer,
) -> tuple[HccScore | None, str | None]:
    if patient is None:
        return None, "no Patient record"
    sex = config.hcc.sex_code(patient.sex)
    if sex is None:
        return None, f"no CMS-HCC cell for sex {patient.sex or 'absent'}"
    if age is None:
        return None, "no birth date on or before the as-of date"
    return scorer.score(codes, age, sex), None


def score_patient(
    patient_id: str,
    patient: PatientRecord | None,
    conditions: Iterable[ConditionRecord],
    encounters: Iterable[EncounterRecord],
    as_of: date,
    config: RiskConfig,
    scorer: HccScorer,
) -> RiskResult:
    """One patient's risk; `score_patients` runs this over a population."""
    diagnoses: PatientDiagnoses = patient_diagnoses(
        sorted(conditions, key=lambda c: c.id), config.crosswalk, config.condition_filter
    )
    codes = diagnoses.code_set
    age = age_on(patient.birth_date if patient else None, as_of)
    charlson: CharlsonResult = config.charlson.score(
        codes, config.charlson_weights, age=age, with_age_points=config.charlson_age_points
    )
    framework = config.pediatric.framework(age) if config.pediatric else "adult"
    complexity: Complexity | None = None
    hcc: HccScore | None
    hcc_note: str | None
    if framework == PEDIATRIC and config.pediatric is not None:
        # CMS-HCC is calibrated on Medicare beneficiaries: a child gets the PMCA instead.
        hcc, hcc_note = None, f"pediatric framework: no CMS-HCC under {config.pediatric.adult_age}"
        complexity = config.pediatric.classify(codes)
    else:
        hcc, hcc_note = _hcc_for(patient, age, codes, config, scorer)
    ed_visits, inpatient_stays = config.utilisation.count(encounters, as_of)
    chronic = config.chronic.groups_for(codes)
    chronic_codes = {c for c in codes if config.chronic.groups_for_code(c)}
    tier, tier_rule = config.tiers.assign(
        TierMetrics(
            hcc=hcc.risk_score if hcc else None,
            charlson=charlson.score,
            ed=ed_visits,
            inpatient=inpatient_stays,
            chronic=len(chronic),
            pmca=complexity.level if complexity is not None else None,
        ),
        framework,
    )
    basis_codes = charlson.codes | (hcc.codes if hcc else frozenset()) | chronic_codes
    return RiskResult(
        patient=patient_id,
        charlson=charlson.score,
        charlson_categories=charlson.scoring_categories,
        hcc=hcc.risk_score if hcc else None,
        hccs=hcc.hcc_names if hcc else (),
        interactions=hcc.interaction_names if hcc else (),
        ed_visits=ed_visits,
        inpatient_stays=inpatient_stays,
        chronic_conditions=chronic,
        ccm_eligible=len(chronic) >= config.chronic.min_for_ccm,
        tier=tier,
        tier_rule=tier_rule,
        basis_conditions=tuple(sorted(diagnoses.conditions_for(basis_codes))),
        hcc_note=hcc_note,
        framework=framework,
        complexity=complexity,
    )


def score_patients(
    population: Population,
    as_of: date,
    config: RiskConfig,
    patients: Iterable[str] | None = None,
    *,
    scorer: HccScorer | None = None,
) -> dict[str, RiskResult]:
    """Risk for each patient (default: every Patient), keyed and ordered by patient id.

    Same input and as-of date give the same output whatever the order of the records. Pass a
    `scorer` (from `config.hcc_scorer()`) to share its HCC cache between runs.
    """
    wanted = sorted(set(population.patients if patients is None else patients))
    wanted_set = set(wanted)
    conditions: dict[str, list[ConditionRecord]] = {}
    for cond in population.conditions:
        if cond.patient in wanted_set:
            conditions.setdefault(cond.patient, []).append(cond)
    # Only emergency and inpatient encounters matter here; most are office visits.
    counted_classes = config.utilisation.ed_classes | config.utilisation.inpatient_classes
    encounters: dict[str, list[EncounterRecord]] = {}
    for enc in population.encounters:
        if enc.class_code in counted_classes and enc.patient in wanted_set:
            encounters.setdefault(enc.patient, []).append(enc)
    scorer = scorer or config.hcc_scorer()
    if (scorer.model, scorer.segment.key) != (
        config.hcc.model_name(config.hcc_model),
        config.hcc_segment,
    ):
        raise ValueError("the HCC scorer was built for another model or segment than config")
    return {
        pid: score_patient(
            pid,
            population.patients.get(pid),
            conditions.get(pid, ()),
            encounters.get(pid, ()),
            as_of,
            config,
            scorer,
        )
        for pid in wanted
    }


def tier_distribution(
    results: Iterable[RiskResult], tiers: Iterable[int] = (1, 2, 3, 4)
) -> dict[str, int]:
    """{"1": n, ..., "4": n}: patients per tier."""
    return tier_counts((r.tier for r in results), tiers)


def tier_distribution_by_panel(
    results: Mapping[str, RiskResult],
    panel_of: Mapping[str, str],
    tiers: Iterable[int] = (1, 2, 3, 4),
) -> dict[str, dict[str, int]]:
    """Tier counts per panel (clinician reference -> counts), for patients with a panel."""
    tier_list = tuple(tiers)
    members: dict[str, list[RiskResult]] = {}
    for patient, panel in panel_of.items():
        result = results.get(patient)
        if result is not None:
            members.setdefault(panel, []).append(result)
    return {panel: tier_distribution(members[panel], tier_list) for panel in sorted(members)}


def check_tier_shape(distribution: Mapping[str, int], shape: TierShape | None = None) -> list[str]:
    """Warnings when tiers 3+4 fall outside 5-25% of patients or tier 4 exceeds 5% (the Kaiser
    pyramid, docs/methods.md s.5); pass the `[shape]` of tiers.toml to use its bounds instead."""
    return shape_warnings(distribution, shape or TierShape())
