"""Capacity: how many patients a clinician's year of visits can serve (docs/methods.md s.3.2).

Murray and Davies (Fam Pract Manag 2007;14(4):44-51): panel size x demand = supply, so

    capacity = supply / demand

- supply: the visits a clinician offers in a year;
- demand: the visits a patient makes in a year.

Two ways to find them (`capacity.method` in `mappings/capacity.toml`):

- `observed`, the default: measured from the practice's own last 12 months. Supply is the
  clinician's qualifying visits (docs/methods.md s.1.3), times the FTE an override gives them;
  demand is the qualifying visits of the practice's active patients over those patients. Used when
  the encounters reach back 12 months before the as-of date, else every clinician is configured;
- `configured`: visits per day x clinic days per year x FTE over visits per patient per year.

A clinician with an override naming more than `fte`, or with no qualifying visit in the year (a
new hire), is configured under either method. Pure and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Literal, get_args

from fhirpanel.domain.attribution import AttributionResult, visits_in_window
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.placement import PlacementRules
from fhirpanel.domain.records import Population
from fhirpanel.errors import MappingError

CapacityMethod = Literal["observed", "configured"]
CAPACITY_METHODS: tuple[str, ...] = get_args(CapacityMethod)
OBSERVED: CapacityMethod = "observed"
CONFIGURED: CapacityMethod = "configured"
# Supply and demand are rates per year: the observed window is one year, not a setting.
YEAR_MONTHS = 12


def _number(value: float) -> str:
    """20.0 -> "20", 2.5 -> "2.5": figures as a person writes them."""
    return f"{value:,g}"


@dataclass(frozen=True)
class ClinicianCapacity:
    """The configured figures of one clinician (`[default]` or an override)."""

    visits_per_day: float
    clinic_days_per_year: float
    visits_per_patient_per_year: float
    fte: float = 1.0

    @property
    def supply(self) -> float:
        """Visits offered a year."""
        return self.visits_per_day * self.clinic_days_per_year * self.fte

    @property
    def panel_capacity(self) -> float:
        """Murray & Davies: panel x visits per patient per year = visits per day x clinic days
        per year (x FTE). 20 x 220 / 2 = 2,200."""
        return self.supply / self.visits_per_patient_per_year

    def describe(self) -> str:
        fte = f" x {_number(self.fte)} FTE" if self.fte != 1.0 else ""
        return (
            f"{_number(self.visits_per_day)} visits a day x "
            f"{_number(self.clinic_days_per_year)} days{fte} / "
            f"{_number(self.visits_per_patient_per_year)} visits per patient-year"
        )


@dataclass(frozen=True)
class CapacitySettings:
    """From `mappings/capacity.toml`. Built directly (tests), `method` is configured; the file's
    default is observed."""

    default: ClinicianCapacity
    # Configured figures per clinician; they win over observed ones unless in `fte_only`.
    overrides: Mapping[str, ClinicianCapacity] = field(default_factory=dict)
    pediatric_age_limit: int = 18  # children: younger than this on the as-of date
    continuity_months: int = 36  # placement's look-back for a clinician seen before
    method: CapacityMethod = CONFIGURED
    # Overrides that name only `fte`: under observed they scale the clinician's observed visits
    # (a change of hours from the year measured) instead of replacing them.
    fte_only: frozenset[str] = frozenset()
    # Panels closed to new patients (`[panels."Practitioner/<id>"] open = false`).
    closed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.method not in CAPACITY_METHODS:
            raise MappingError(
                f"method: {self.method!r} is not one of {', '.join(CAPACITY_METHODS)}"
            )
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
        for ref in sorted(self.closed):
            if not ref.startswith("Practitioner/") or ref == "Practitioner/":
                raise MappingError(f"panels: {ref!r} is not a Practitioner reference")
        stray = sorted(self.fte_only - set(self.overrides))
        if stray:
            raise MappingError(f"fte_only: {stray[0]!r} has no override")

    def for_clinician(self, ref: str) -> ClinicianCapacity:
        """The configured figures of one clinician."""
        return self.overrides.get(ref, self.default)

    @property
    def placement(self) -> PlacementRules:
        return PlacementRules(self.pediatric_age_limit, self.continuity_months, self.closed)


@dataclass(frozen=True)
class Demand:
    """The practice's visits per patient per year, over its active (not excluded) patients: the
    same patients the age/sex weights are computed over (docs/methods.md s.3.3)."""

    visits: int  # qualifying visits of active patients in the year
    patients: int  # active patients, seen or not
    patients_seen: int  # active patients with a qualifying visit in the year

    @property
    def per_patient(self) -> float | None:
        return self.visits / self.patients if self.visits and self.patients else None

    @property
    def per_patient_seen(self) -> float | None:
        return self.visits / self.patients_seen if self.patients_seen else None


@dataclass(frozen=True)
class ClinicianSupply:
    """One clinician's supply, demand and capacity, and how they were found."""

    practitioner: str
    method: CapacityMethod
    supply: float  # visits a year
    demand: float  # visits per patient per year
    basis: str  # in words: "observed: 1,234 visits in 12 months / 2.90 visits per patient-year"
    visits: int | None = None  # observed: qualifying visits in the year

    @property
    def capacity(self) -> float:
        return self.supply / self.demand if self.demand > 0 else 0.0


@dataclass(frozen=True)
class PracticeCapacity:
    """Every clinician's capacity, and the practice-level figures behind them."""

    requested: CapacityMethod  # what capacity.toml asks for
    method: CapacityMethod  # what the data allowed
    reason: str | None  # why configured when observed was asked
    demand: Demand
    encounters_from: date | None  # the earliest encounter on or before the as-of date
    clinicians: tuple[ClinicianSupply, ...]  # sorted by practitioner

    def by_practitioner(self) -> dict[str, ClinicianSupply]:
        return {c.practitioner: c for c in self.clinicians}


def practice_capacity(
    population: Population,
    attribution: AttributionResult,
    as_of: date,
    settings: CapacitySettings,
    clinicians: Iterable[str],
) -> PracticeCapacity:
    """Supply, demand and capacity for each of `clinicians` (docs/methods.md s.3.2).

    Visits are the attribution's qualifying visits (to eligible clinicians, on or before the
    as-of date) in the 12 months before it. Supply counts every such visit of the clinician's,
    whoever the patient (one since deceased was seen too); demand counts the active patients'.
    """
    wanted = sorted(set(clinicians))
    counted: dict[str, int] = {}
    for patient in sorted(attribution.visits):
        for v in visits_in_window(attribution.visits[patient], as_of, YEAR_MONTHS):
            counted[v.practitioner] = counted.get(v.practitioner, 0) + 1
    active = [a.patient for a in attribution.assignments if a.status != "excluded"]
    seen = [
        len(visits_in_window(attribution.visits.get(p, ()), as_of, YEAR_MONTHS)) for p in active
    ]
    demand = Demand(visits=sum(seen), patients=len(active), patients_seen=sum(1 for n in seen if n))
    days = [e.day for e in population.encounters if e.day is not None and e.day <= as_of]
    earliest = min(days) if days else None

    reason: str | None = None
    if settings.method == OBSERVED:
        if earliest is None:
            reason = "no encounters on or before the as-of date"
        elif earliest > months_before(as_of, YEAR_MONTHS):
            reason = (
                f"less than {YEAR_MONTHS} months of encounters before the as-of date "
                f"(the earliest is {earliest.isoformat()})"
            )
        elif demand.per_patient is None:
            reason = f"no qualifying visits of active patients in {YEAR_MONTHS} months"
    method = OBSERVED if settings.method == OBSERVED and reason is None else CONFIGURED
    per_patient = demand.per_patient or 0.0

    def configured(ref: str, why: str) -> ClinicianSupply:
        figures = settings.for_clinician(ref)
        return ClinicianSupply(
            ref,
            CONFIGURED,
            figures.supply,
            figures.visits_per_patient_per_year,
            f"configured{why}: {figures.describe()}",
        )

    def one(ref: str) -> ClinicianSupply:
        if method == CONFIGURED:
            return configured(ref, f" ({reason})" if reason else "")
        if ref in settings.overrides and ref not in settings.fte_only:
            return configured(ref, " (set for this clinician)")
        visits = counted.get(ref, 0)
        if visits == 0:
            return configured(ref, f" (no qualifying visits in {YEAR_MONTHS} months)")
        fte = settings.overrides[ref].fte if ref in settings.fte_only else 1.0
        scaled = f" x {_number(fte)} FTE" if ref in settings.fte_only else ""
        return ClinicianSupply(
            ref,
            OBSERVED,
            visits * fte,
            per_patient,
            f"observed: {visits:,} visits in {YEAR_MONTHS} months{scaled} / "
            f"{per_patient:.2f} visits per patient-year",
            visits=visits,
        )

    return PracticeCapacity(
        requested=settings.method,
        method=method,
        reason=reason,
        demand=demand,
        encounters_from=earliest,
        clinicians=tuple(one(ref) for ref in wanted),
    )


__all__ = [
    "CAPACITY_METHODS",
    "CONFIGURED",
    "OBSERVED",
    "YEAR_MONTHS",
    "CapacityMethod",
    "CapacitySettings",
    "ClinicianCapacity",
    "ClinicianSupply",
    "Demand",
    "PracticeCapacity",
    "practice_capacity",
]
