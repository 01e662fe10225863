"""Panels: panel size, capacity, age/sex weights, risk-adjusted and HCC-adjusted size, and the
placement of unassigned patients (`placement`) against them (docs/methods.md s.3).

Pure: takes the population, an attribution result and typed settings built from `mappings/`;
returns immutable summaries sorted by id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from fhirpanel.domain.dates import age_on
from fhirpanel.domain.outreach import OutreachItem, outreach_list
from fhirpanel.domain.placement import (
    ClinicianLoad,
    PanelChange,
    PlacementRules,
    Suggestion,
    place_unassigned,
)
from fhirpanel.domain.records import Population
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


# --- capacity ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicianCapacity:
    visits_per_day: float
    clinic_days_per_year: float
    visits_per_patient_per_year: float
    fte: float = 1.0

    @property
    def panel_capacity(self) -> float:
        """Murray & Davies: panel x visits per patient per year = visits per day x clinic days
        per year (x FTE). 20 x 220 / 2 = 2,200."""
        return (
            self.visits_per_day
            * self.clinic_days_per_year
            * self.fte
            / self.visits_per_patient_per_year
        )


@dataclass(frozen=True)
class CapacitySettings:
    default: ClinicianCapacity
    overrides: Mapping[str, ClinicianCapacity] = field(default_factory=dict)
    pediatric_age_limit: int = 18  # children: younger than this on the as-of date
    continuity_months: int = 36  # placement's look-back for a clinician seen before

    def __post_init__(self) -> None:
        for ref in self.overrides:
            if not ref.startswith("Practitioner/") or ref == "Practitioner/":
                raise MappingError(f"overrides: {ref!r} is not a Practitioner reference")
        named = [
            ("default", self.default),
            *((f'overrides."{ref}"', c) for ref, c in self.overrides.items()),
        ]
        for where, capacity in named:
            if capacity.fte > 2.0:
                raise MappingError(f"{where}.fte: above 2.0 looks like a percentage; use 0-2")

    def for_clinician(self, ref: str) -> ClinicianCapacity:
        return self.overrides.get(ref, self.default)

    @property
    def placement(self) -> PlacementRules:
        return PlacementRules(self.pediatric_age_limit, self.continuity_months)


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


@dataclass(frozen=True)
class PanelSummary:
    panels: tuple[Panel, ...]  # sorted by practitioner
    suggestions: tuple[Suggestion, ...]  # sorted by patient
    weights: AgeSexWeights
    # Each eligible clinician's panel now and with every suggestion accepted.
    changes: tuple[PanelChange, ...] = ()

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
) -> PanelSummary:
    """A panel for every eligible clinician (size 0 included) and any clinician assigned a
    patient, then a suggestion for each unassigned active patient (docs/methods.md s.3).

    - risk_adjusted_size: the sum of the patients' age/sex weights.
    - hcc_adjusted_size (when hcc_scores is given): the sum of each patient's HCC score over the
      mean score of all scored patients; a patient without a score counts 1.0 (average).
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

    panels = []
    for clinician in sorted(set(eligibility.eligible) | set(members)):
        patients = sorted(members.get(clinician, []))
        risk_adjusted = math.fsum(weight_of(p) for p in patients)
        capacity = capacities.for_clinician(clinician).panel_capacity
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
            )
        )

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
    )


__all__ = [
    "AGE_BANDS",
    "BAND_LABELS",
    "SEXES",
    "AgeSexWeights",
    "CapacitySettings",
    "ClinicianCapacity",
    "OutreachItem",
    "Panel",
    "PanelChange",
    "PanelSummary",
    "Suggestion",
    "age_band",
    "age_on",
    "band_label",
    "compute_age_sex_weights",
    "compute_panels",
    "outreach_list",
]
