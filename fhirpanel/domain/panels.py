"""Panels: panel size, capacity (`capacity`), age/sex weights, risk-adjusted, HCC-adjusted and
blended size (`blend`), each panel against its peers, and the placement of unassigned patients
(`placement`) against them (docs/methods.md s.3).

Pure: takes the population, an attribution result and typed settings built from `mappings/`;
returns immutable summaries sorted by id.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from fhirpanel.domain.attribution import (
    AttributionResult,
    AttributionRules,
    QualifyingVisit,
    assess_eligibility,
    exclusion_reason,
    qualifying_visits,
    visits_in_window,
)
from fhirpanel.domain.blend import Blend, BlendWeights, blend_factors
from fhirpanel.domain.capacity import (
    CapacitySettings,
    ClinicianCapacity,
    ClinicianSupply,
    PracticeCapacity,
    practice_capacity,
)
from fhirpanel.domain.dates import age_on
from fhirpanel.domain.outreach import OutreachItem, outreach_list
from fhirpanel.domain.placement import (
    ClinicianLoad,
    PanelChange,
    Suggestion,
    place_unassigned,
)
from fhirpanel.domain.records import Population
from fhirpanel.domain.risk import RiskResult
from fhirpanel.errors import MappingError

# Age bands for age/sex weights, inclusive years; None is open-ended.
AGE_BANDS: tuple[tuple[int, int | None], ...] = (
    (0, 1),
    (2, 4),
    (5, 11),
    (12, 17),
    (18, 29),
    (30, 44),
    (45, 64),
    (65, 74),
    (75, 84),
    (85, None),
)
SEXES = ("female", "male", "other")


def band_label(band: tuple[int, int | None]) -> str:
    low, high = band
    return f"{low}+" if high is None else f"{low}-{high}"


BAND_LABELS: tuple[str, ...] = tuple(band_label(b) for b in AGE_BANDS)


def age_band(birth_date: date | None, as_of: date) -> str | None:
    """The band label for the age on the as-of date; None when unknown or not yet born."""
    age = age_on(birth_date, as_of)
    if age is None:
        return None
    for band in AGE_BANDS:
        low, high = band
        if age >= low and (high is None or age <= high):
            return band_label(band)
    return None


# --- age/sex weights ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgeSexWeights:
    """Relative expected visit demand per (age band, sex) cell; unknown cells weigh 1.0."""

    weights: Mapping[tuple[str, str], float]
    # How computed weights were derived: (band, sex, patients, visits) per non-empty cell.
    basis: tuple[tuple[str, str, int, int], ...] = ()

    @classmethod
    def create(cls, rows: Sequence[tuple[str, str, float]]) -> AgeSexWeights:
        """A table the organisation supplies: (band, sex, weight) rows, each cell once, bands
        from AGE_BANDS and sexes from SEXES."""
        weights: dict[tuple[str, str], float] = {}
        for number, (band, sex, weight) in enumerate(rows, start=1):
            here = f"weights[{number}]"
            if band not in BAND_LABELS:
                raise MappingError(f"{here}.band: {band!r} is not one of {', '.join(BAND_LABELS)}")
            if sex not in SEXES:
                raise MappingError(f"{here}.sex: {sex!r} is not one of {', '.join(SEXES)}")
            if (band, sex) in weights:
                raise MappingError(f"{here}: duplicate cell {band} {sex}")
            weights[(band, sex)] = weight
        return cls(weights=weights)

    def weight(self, birth_date: date | None, sex: str | None, as_of: date) -> float:
        band = age_band(birth_date, as_of)
        if band is None or sex not in SEXES:
            return 1.0
        return self.weights.get((band, str(sex)), 1.0)


def compute_age_sex_weights(
    population: Population,
    as_of: date,
    rules: AttributionRules,
    window_months: int = 12,
    visits: Mapping[str, tuple[QualifyingVisit, ...]] | None = None,
) -> AgeSexWeights:
    """Murray's age/sex weights from the organisation's own data: a cell's visit rate (qualifying
    visits to eligible clinicians in the window per patient in the cell) over the overall rate.

    Patients counted: everyone not excluded (inactive, deceased, merged) with a known birth date
    and a sex of female, male or other, whether or not they had a visit: a panel holds patients
    who did not come in too. A cell with no patients has no weight (1.0 when asked); a cell with
    patients and no visits weighs 0. With no visits at all every weight is 1.0. `visits`: the
    qualifying visits already computed for this population and as-of date (AttributionResult).
    """
    if visits is None:
        eligibility = assess_eligibility(population, as_of, rules)
        visits = qualifying_visits(population, as_of, rules, eligibility)
    patients: dict[tuple[str, str], int] = {}
    cell_visits: dict[tuple[str, str], int] = {}
    for patient_id in sorted(population.patients):
        patient = population.patients[patient_id]
        band = age_band(patient.birth_date, as_of)
        if exclusion_reason(patient, as_of) is not None or band is None:
            continue
        if patient.sex not in SEXES:
            continue
        cell = (band, str(patient.sex))
        patients[cell] = patients.get(cell, 0) + 1
        seen = len(visits_in_window(visits.get(patient_id, ()), as_of, window_months))
        cell_visits[cell] = cell_visits.get(cell, 0) + seen
    total_patients, total_visits = sum(patients.values()), sum(cell_visits.values())
    basis = tuple(
        (band, sex, patients[(band, sex)], cell_visits[(band, sex)])
        for band, sex in sorted(patients)
    )
    if total_visits == 0:
        return AgeSexWeights(weights={}, basis=basis)
    # (v / n) / (V / N), arranged to divide once for exact, order-independent floats.
    weights = {
        cell: (cell_visits[cell] * total_patients) / (patients[cell] * total_visits)
        for cell in sorted(patients)
    }
    return AgeSexWeights(weights=weights, basis=basis)


# --- panels ------------------------------------------------------------------------------------

# Peer frameworks (docs/methods.md s.3.6): a pediatric-only clinician is compared with the other
# pediatric-only ones, everyone else eligible with each other.
ADULT = "adult"
PEDIATRIC = "pediatric"


@dataclass(frozen=True)
class Relative:
    """A panel against the panels of its peers: the eligible clinicians of the same framework,
    this one included."""

    framework: str  # adult | pediatric
    peers: int
    risk_adjusted_ratio: float | None  # over the peers' median; None when that median is 0
    blended_ratio: float | None
    percentile: float  # percentile rank of the risk-adjusted size among the peers, 0-100
    blended_percentile: float | None = None


@dataclass(frozen=True)
class Panel:
    practitioner: str
    size: int
    risk_adjusted_size: float
    capacity: float
    open_capacity: float  # capacity minus risk-adjusted size; negative when over capacity
    tiers: tuple[tuple[str, int], ...] = ()
    hcc_adjusted_size: float | None = None
    unconfirmed: int = 0  # assignments still "proposed"
    supply: float | None = None  # visits a year (docs/methods.md s.3.2)
    demand: float | None = None  # visits per patient per year
    capacity_method: str | None = None  # observed | configured
    capacity_basis: str | None = None  # how capacity was found, in words
    blended_size: float | None = None  # the sum of the patients' blended factors
    relative: Relative | None = None  # None for a clinician who is not eligible

    @property
    def share_used(self) -> float | None:
        """Risk-adjusted size over capacity; None without capacity."""
        return self.risk_adjusted_size / self.capacity if self.capacity > 0 else None

    @property
    def expected_visits(self) -> float | None:
        """Age/sex-adjusted demand: the visits a year the panel is expected to need."""
        return self.risk_adjusted_size * self.demand if self.demand is not None else None


@dataclass(frozen=True)
class PanelSummary:
    panels: tuple[Panel, ...]  # sorted by practitioner
    suggestions: tuple[Suggestion, ...]  # sorted by patient
    weights: AgeSexWeights
    # Each eligible clinician's panel now and with every suggestion accepted.
    changes: tuple[PanelChange, ...] = ()
    capacity: PracticeCapacity | None = None  # supply, demand and how they were found
    blend: Blend | None = None  # each active patient's blended factor

    def by_practitioner(self) -> dict[str, Panel]:
        return {p.practitioner: p for p in self.panels}


def _tier_key(tier: int) -> str:
    return str(tier)


def compute_panels(
    population: Population,
    attribution: AttributionResult,
    as_of: date,
    capacities: CapacitySettings,
    weights: AgeSexWeights,
    tiers: Mapping[str, int] | None = None,
    hcc_scores: Mapping[str, float] | None = None,
    risk: Mapping[str, RiskResult] | None = None,
    blend: BlendWeights | None = None,
    blend_means: Mapping[str, float] | None = None,
) -> PanelSummary:
    """A panel for every eligible clinician (size 0 included) and any clinician assigned a
    patient, then a suggestion for each unassigned active patient (docs/methods.md s.3).

    - capacity: supply over demand, observed or configured (`capacity.practice_capacity`).
    - risk_adjusted_size: the sum of the patients' age/sex weights.
    - hcc_adjusted_size (when hcc_scores is given): the sum of each patient's HCC score over the
      mean score of all scored patients; a patient without a score counts 1.0 (average).
    - blended_size (when blend is given): the sum of the patients' blended factors, over the
      active patients' means (or `blend_means`: those of the whole practice, for a pass that
      holds only some patients); metrics from `risk`.
    - relative: each eligible panel against its peers' median (`relative_to_peers`).
    - suggestions: `placement.place_unassigned` over these panels, highest tier first.
    """
    eligibility = attribution.eligibility

    def weight_of(patient_id: str) -> float:
        patient = population.patients.get(patient_id)
        if patient is None:
            return 1.0
        return weights.weight(patient.birth_date, patient.sex, as_of)

    members: dict[str, list[str]] = {}
    for assignment in attribution.assignments:
        if assignment.status == "assigned" and assignment.practitioner is not None:
            members.setdefault(assignment.practitioner, []).append(assignment.patient)
    by_patient = attribution.by_patient()
    tier_keys = sorted({t for t in (tiers or {}).values()})
    mean_hcc: float | None = None
    if hcc_scores:
        mean_hcc = math.fsum(hcc_scores[p] for p in sorted(hcc_scores)) / len(hcc_scores)
    clinicians = sorted(set(eligibility.eligible) | set(members))
    supplies = practice_capacity(population, attribution, as_of, capacities, clinicians)
    supply_of = supplies.by_practitioner()
    blended = (
        _blend(attribution, weight_of, risk or {}, hcc_scores, blend, blend_means)
        if blend is not None
        else None
    )

    panels = []
    for clinician in clinicians:
        patients = sorted(members.get(clinician, []))
        risk_adjusted = math.fsum(weight_of(p) for p in patients)
        supply: ClinicianSupply = supply_of[clinician]
        capacity = supply.capacity
        tier_counts: tuple[tuple[str, int], ...] = ()
        if tiers is not None:
            tier_counts = tuple(
                (_tier_key(t), sum(1 for p in patients if tiers.get(p) == t)) for t in tier_keys
            )
        hcc_adjusted: float | None = None
        if hcc_scores is not None:
            hcc_adjusted = math.fsum(
                hcc_scores[p] / mean_hcc if p in hcc_scores and mean_hcc else 1.0 for p in patients
            )
        panels.append(
            Panel(
                practitioner=clinician,
                size=len(patients),
                risk_adjusted_size=risk_adjusted,
                capacity=capacity,
                open_capacity=capacity - risk_adjusted,
                tiers=tier_counts,
                hcc_adjusted_size=hcc_adjusted,
                unconfirmed=sum(1 for p in patients if by_patient[p].confirmation == "proposed"),
                supply=supply.supply,
                demand=supply.demand,
                capacity_method=supply.method,
                capacity_basis=supply.basis,
                blended_size=(
                    math.fsum(blended.factor(p) for p in patients) if blended is not None else None
                ),
            )
        )
    relative = relative_to_peers(panels, eligibility.eligible, eligibility.pediatric_only)
    panels = [dataclasses.replace(p, relative=relative.get(p.practitioner)) for p in panels]

    placement = place_unassigned(
        population,
        attribution,
        as_of,
        capacities.placement,
        [ClinicianLoad(p.practitioner, p.size, p.risk_adjusted_size, p.capacity) for p in panels],
        weight_of,
        tiers=tiers,
    )
    return PanelSummary(
        panels=tuple(panels),
        suggestions=placement.suggestions,
        weights=weights,
        changes=placement.changes,
        capacity=supplies,
        blend=blended,
    )


def _blend(
    attribution: AttributionResult,
    weight_of: Callable[[str], float],
    risk: Mapping[str, RiskResult],
    hcc_scores: Mapping[str, float] | None,
    weights: BlendWeights,
    means: Mapping[str, float] | None,
) -> Blend:
    """The blended factor of every active patient (docs/methods.md s.3.4)."""
    active = [a.patient for a in attribution.assignments if a.status != "excluded"]
    hcc = (
        hcc_scores
        if hcc_scores is not None
        else {p: r.hcc for p, r in risk.items() if r.hcc is not None}
    )
    metrics: dict[str, dict[str, float | None]] = {
        "age_sex": {p: weight_of(p) for p in active},
        "hcc": {p: hcc.get(p) for p in active},
        "charlson": {p: float(risk[p].charlson) if p in risk else None for p in active},
        "utilisation": {
            p: float(risk[p].ed_visits + risk[p].inpatient_stays) if p in risk else None
            for p in active
        },
    }
    children = {p for p in active if p in risk and risk[p].framework == PEDIATRIC}
    return blend_factors(active, metrics, weights, means, without_hcc=children)


def median(values: Sequence[float]) -> float:
    """The middle value; the mean of the two middle ones for an even count."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _percentile_rank(value: float, values: Sequence[float]) -> float:
    """The share of `values` below `value`, ties counted half (`value` is one of them), in %."""
    below = sum(1 for v in values if v < value)
    equal = sum(1 for v in values if v == value)
    return 100.0 * (below + 0.5 * equal) / len(values)


def relative_to_peers(
    panels: Sequence[Panel], eligible: Sequence[str], pediatric_only: Sequence[str]
) -> dict[str, Relative]:
    """Each eligible clinician's risk-adjusted and blended size over the median of their
    framework's (pediatric-only clinicians, or the other eligible ones; the clinician
    included), and its percentile rank among them (docs/methods.md s.3.6). The basis the
    white paper's St. Luke's case used to compare (and pay) clinicians."""
    eligible_set, pediatric = set(eligible), set(pediatric_only)
    groups: dict[str, list[Panel]] = {}
    for panel in sorted(panels, key=lambda p: p.practitioner):
        if panel.practitioner in eligible_set:
            framework = PEDIATRIC if panel.practitioner in pediatric else ADULT
            groups.setdefault(framework, []).append(panel)
    out: dict[str, Relative] = {}
    for framework, group in sorted(groups.items()):
        sizes = [p.risk_adjusted_size for p in group]
        middle = median(sizes)
        blended = [p.blended_size for p in group if p.blended_size is not None]
        blended_median = median(blended) if len(blended) == len(group) else None
        for panel in group:
            mine = panel.blended_size if blended_median is not None else None
            out[panel.practitioner] = Relative(
                framework=framework,
                peers=len(group),
                risk_adjusted_ratio=panel.risk_adjusted_size / middle if middle > 0 else None,
                blended_ratio=mine / blended_median
                if mine is not None and blended_median
                else None,
                percentile=_percentile_rank(panel.risk_adjusted_size, sizes),
                blended_percentile=_percentile_rank(mine, blended) if mine is not None else None,
            )
    return out


__all__ = [
    "ADULT",
    "AGE_BANDS",
    "BAND_LABELS",
    "PEDIATRIC",
    "SEXES",
    "AgeSexWeights",
    "Blend",
    "BlendWeights",
    "CapacitySettings",
    "ClinicianCapacity",
    "ClinicianSupply",
    "OutreachItem",
    "Panel",
    "PanelChange",
    "PanelSummary",
    "PracticeCapacity",
    "Relative",
    "Suggestion",
    "age_band",
    "age_on",
    "band_label",
    "compute_age_sex_weights",
    "compute_panels",
    "median",
    "outreach_list",
    "relative_to_peers",
]
