"""Placement of unassigned patients: one suggested clinician per patient, chosen for the whole
list at once (the rules of fhirpanel issue 16; docs/methods.md s.3.5).

Continuity first (the empanelment literature: assign with regard to an existing relationship,
then balance supply and demand across panels; sources in docs/methods.md s.3.5), then balance:
for each patient, in order,

1. the PCP named in `Patient.generalPractitioner`, when eligible and with room;
2. the eligible clinician seen most (then most recently) in the continuity look-back
   (`[suggestions] continuity_months`), when they have room;
3. the clinician whose panel would have the lowest share of capacity used after taking the
   patient, among those with room (children: pediatric clinicians first; adults never go to a
   pediatric-only clinician while the practice has another);
4. else no room: listed with the shortfall.

A closed panel (`PlacementRules.closed`: a clinician not taking new patients, `[panels]` of
`mappings/capacity.toml`) has no room at any step.

Every suggestion uses up its clinician's open risk-adjusted capacity by the patient's weight;
patients are placed highest risk tier first, then by id, so a short supply of room goes to the
patients who need a clinician most. "Room" means the clinician's panel stays within capacity
with the patient added. Pure and deterministic: inputs are sorted before use, ties go to the
lowest clinician id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

# clinician_from_reference: the declared-PCP step's reading of generalPractitioner, so both agree.
from fhirpanel.domain.attribution import (
    AttributionResult,
    EligibilityReport,
    QualifyingVisit,
    clinician_from_reference,
    visits_in_window,
)
from fhirpanel.domain.dates import age_on
from fhirpanel.domain.records import Population

# Why a suggestion was made (`Suggestion.basis`).
DECLARED_PCP = "declared-pcp"
VISIT_HISTORY = "visit-history"
CAPACITY = "capacity"
NO_ROOM = "no-room"
BASES = (DECLARED_PCP, VISIT_HISTORY, CAPACITY, NO_ROOM)
NO_ROOM_TEXT = "no room: practice over capacity"
# Float sums of weights: a panel filled exactly to capacity must count as within it.
_EPSILON = 1e-9


@dataclass(frozen=True)
class PlacementRules:
    """From `mappings/capacity.toml [suggestions]`."""

    pediatric_age_limit: int = 18  # children: younger than this on the as-of date
    continuity_months: int = 36  # the look-back for "seen before"
    # Clinicians not taking new patients: no step places anyone on their panel.
    closed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClinicianLoad:
    """A clinician's panel as placement sees it: who, how full, how large it may grow."""

    practitioner: str
    size: int  # patients
    load: float  # risk-adjusted size
    capacity: float


@dataclass(frozen=True)
class Suggestion:
    """The clinician suggested for an unassigned patient (None: no clinician has room), why in
    words (`reason`) and as a key (`basis`), the patient's weight, and for no room the
    shortfall: the weight minus the most open capacity any clinician the patient could go to
    has left."""

    patient: str
    practitioner: str | None
    reason: str
    basis: str = CAPACITY
    weight: float = 1.0
    shortfall: float | None = None


@dataclass(frozen=True)
class PanelChange:
    """One panel now and with every suggestion accepted."""

    practitioner: str
    size: int
    size_after: int
    load: float  # risk-adjusted size
    load_after: float
    capacity: float

    @property
    def added(self) -> int:
        return self.size_after - self.size

    @property
    def share(self) -> float | None:
        """Share of capacity used now (risk-adjusted); None without capacity."""
        return self.load / self.capacity if self.capacity > 0 else None

    @property
    def share_after(self) -> float | None:
        return self.load_after / self.capacity if self.capacity > 0 else None


@dataclass(frozen=True)
class Placement:
    suggestions: tuple[Suggestion, ...]  # sorted by patient
    changes: tuple[PanelChange, ...]  # sorted by clinician


@dataclass(frozen=True)
class Commitment:
    """A suggestion kept from an earlier pass (an incremental pass places only its own
    patients): it holds its clinician's room like one made now."""

    patient: str
    practitioner: str
    weight: float


def place_unassigned(
    population: Population,
    attribution: AttributionResult,
    as_of: date,
    rules: PlacementRules,
    clinicians: Sequence[ClinicianLoad],
    weight_of: Callable[[str], float],
    tiers: Mapping[str, int] | None = None,
    committed: Sequence[Commitment] = (),
) -> Placement:
    """A suggestion for every unassigned patient of `attribution`, against the panels in
    `clinicians` (the eligible ones among them take patients) after the `committed`
    suggestions; and how each panel changes if all are accepted."""
    eligibility = attribution.eligibility
    if not eligibility.eligible:
        return Placement((), ())
    loads = {
        c.practitioner: c
        for c in sorted(clinicians, key=lambda c: c.practitioner)
        if eligibility.is_eligible(c.practitioner)
    }
    # An eligible clinician without a panel row has no known capacity: no room.
    open_room = Room(
        {
            ref: (loads[ref].load, loads[ref].capacity) if ref in loads else (0.0, 0.0)
            for ref in eligibility.eligible
        },
        rules.closed,
    )
    held = [c for c in sorted(committed, key=lambda c: c.patient) if c.practitioner in loads]
    for c in held:
        open_room.take(c.practitioner, c.weight)
    pools = Pools.of(eligibility)
    order = sorted(
        (a.patient for a in attribution.assignments if a.status == "unassigned"),
        key=lambda p: (-((tiers or {}).get(p) or 0), p),
    )
    suggestions = [
        _place(p, population, attribution, as_of, rules, weight_of(p), open_room, pools)
        for p in order
    ]
    suggestions.sort(key=lambda s: s.patient)
    placed = [(c.practitioner, c.weight) for c in held] + [
        (s.practitioner, s.weight) for s in suggestions if s.practitioner is not None
    ]
    return Placement(tuple(suggestions), project(loads.values(), placed, eligibility.eligible))


def project(
    clinicians: Iterable[ClinicianLoad],
    accepted: Iterable[tuple[str | None, float]],
    also: Iterable[str] = (),
) -> tuple[PanelChange, ...]:
    """Each panel now and after the `accepted` (clinician, weight) placements, for every
    clinician in `clinicians`, in `also` (eligible clinicians without a panel row), or
    receiving a placement; sorted by clinician."""
    base = {c.practitioner: c for c in clinicians}
    added: dict[str, tuple[int, float]] = {}
    for practitioner, weight in accepted:
        if practitioner is None:
            continue
        n, w = added.get(practitioner, (0, 0.0))
        added[practitioner] = (n + 1, w + weight)
    changes = []
    for ref in sorted(set(base) | set(also) | set(added)):
        now = base.get(ref, ClinicianLoad(ref, 0, 0.0, 0.0))
        n, w = added.get(ref, (0, 0.0))
        changes.append(
            PanelChange(ref, now.size, now.size + n, now.load, now.load + w, now.capacity)
        )
    return tuple(changes)


# --- the steps ----------------------------------------------------------------------------------


class Room:
    """Load and capacity per eligible clinician, as suggestions use it up."""

    def __init__(
        self, figures: Mapping[str, tuple[float, float]], closed: frozenset[str] = frozenset()
    ) -> None:
        self.load = {ref: load for ref, (load, _) in figures.items()}
        self.capacity = {ref: cap for ref, (_, cap) in figures.items()}
        self.closed = closed

    def left(self, ref: str) -> float:
        return self.capacity[ref] - self.load[ref]

    def fits(self, ref: str, weight: float) -> bool:
        """Room for the patient: under capacity now, and within it with the patient."""
        if ref not in self.load or ref in self.closed:
            return False
        load, capacity = self.load[ref], self.capacity[ref]
        return load < capacity - _EPSILON and load + weight <= capacity + _EPSILON

    def share_after(self, ref: str, weight: float) -> float:
        return (self.load[ref] + weight) / self.capacity[ref]

    def take(self, ref: str, weight: float) -> None:
        if ref in self.load:
            self.load[ref] += weight


@dataclass(frozen=True)
class Pools:
    """Who the capacity step may choose (docs/methods.md s.3.5)."""

    everyone: tuple[str, ...]
    pediatric: tuple[str, ...]
    adult: tuple[str, ...]  # not pediatric-only

    def without(self, ref: str) -> Pools:
        """The pools with one clinician left out (a departing one)."""
        return Pools(
            tuple(c for c in self.everyone if c != ref),
            tuple(c for c in self.pediatric if c != ref),
            tuple(c for c in self.adult if c != ref),
        )

    @classmethod
    def of(cls, eligibility: EligibilityReport) -> Pools:
        everyone = eligibility.eligible  # sorted
        pediatric = tuple(c for c in everyone if c in set(eligibility.pediatric))
        adult = tuple(c for c in everyone if c not in set(eligibility.pediatric_only))
        return cls(everyone, pediatric, adult)

    def for_patient(self, child: bool) -> list[tuple[tuple[str, ...], str]]:
        """The pools to try in order, each with the words that name it."""
        if child and self.pediatric:
            return [(self.pediatric, " among pediatric clinicians"), (self.everyone, "")]
        if not child and self.adult:
            return [(self.adult, "")]
        return [(self.everyone, "")]


def _place(
    patient_id: str,
    population: Population,
    attribution: AttributionResult,
    as_of: date,
    rules: PlacementRules,
    weight: float,
    room: Room,
    pools: Pools,
) -> Suggestion:
    notes: list[str] = []

    def chosen(ref: str, reason: str, basis: str) -> Suggestion:
        room.take(ref, weight)
        return Suggestion(patient_id, ref, "; ".join([*notes, reason]), basis, weight)

    patient = population.patients.get(patient_id)
    pcp = _declared_pcp(population, attribution.eligibility, patient_id)
    if pcp is not None:
        if room.fits(pcp, weight):
            return chosen(pcp, "named as PCP in the patient's record", DECLARED_PCP)
        notes.append(f"named PCP {_no_room_words(room, pcp)}")
    seen = _most_seen(attribution.visits.get(patient_id, ()), as_of, rules.continuity_months)
    if seen is not None and seen[0] != pcp:
        ref, count, last = seen
        times = "once" if count == 1 else f"{count} times"
        history = f"seen {times} in {rules.continuity_months} months, last {last.isoformat()}"
        if room.fits(ref, weight):
            return chosen(ref, history, VISIT_HISTORY)
        notes.append(f"usual clinician ({history}) {_no_room_words(room, ref)}")
    age = age_on(patient.birth_date if patient is not None else None, as_of)
    child = age is not None and age < rules.pediatric_age_limit
    return by_capacity(patient_id, pools.for_patient(child), weight, room, notes)


def _no_room_words(room: Room, ref: str) -> str:
    return "panel closed to new patients" if ref in room.closed else "has no room"


def by_capacity(
    patient_id: str,
    pools: Sequence[tuple[tuple[str, ...], str]],
    weight: float,
    room: Room,
    notes: list[str],
) -> Suggestion:
    """Step 3 (and 4): the clinician of the first pool with room whose panel would have the
    lowest share of capacity used with the patient; else no room, with the shortfall. The
    patient's weight is taken from the chosen clinician's room."""
    tried: list[str] = []
    for pool, among in pools:
        fitting = [c for c in pool if room.fits(c, weight)]
        tried.extend(pool)
        if not fitting:
            if among:
                notes.append("no pediatric clinician has room")
            continue
        best = min(fitting, key=lambda c: (room.share_after(c, weight), c))
        reason = (
            f"most room{among}: {room.left(best):,.0f} of {room.capacity[best]:,.0f} open, "
            f"{room.share_after(best, weight):.1%} of capacity used with this patient"
        )
        room.take(best, weight)
        return Suggestion(patient_id, best, "; ".join([*notes, reason]), CAPACITY, weight)
    # A closed panel's open capacity is no room for this patient.
    most_open = max((room.left(c) for c in tried if c not in room.closed), default=0.0)
    shortfall = weight - most_open
    reason = (
        f"{NO_ROOM_TEXT} (short {shortfall:,.1f}: weight {weight:,.1f}, most open panel "
        f"{most_open:,.1f})"
    )
    notes.insert(0, reason)
    return Suggestion(patient_id, None, "; ".join(notes), NO_ROOM, weight, shortfall)


def _declared_pcp(
    population: Population, eligibility: EligibilityReport, patient_id: str
) -> str | None:
    """The first `generalPractitioner` naming an eligible clinician, as the declared-PCP step
    reads it (docs/methods.md s.2.4)."""
    patient = population.patients.get(patient_id)
    for reference in patient.general_practitioners if patient is not None else ():
        found = clinician_from_reference(reference, population, eligibility)
        if found is not None:
            return found[0]
    return None


def _most_seen(
    visits: Sequence[QualifyingVisit], as_of: date, months: int
) -> tuple[str, int, date] | None:
    """The clinician with the most qualifying visits in the window, then the latest; ties to
    the lowest id. `visits` are to eligible clinicians already."""
    counts: dict[str, tuple[int, date]] = {}
    for visit in visits_in_window(visits, as_of, months):
        n, last = counts.get(visit.practitioner, (0, visit.day))
        counts[visit.practitioner] = (n + 1, max(last, visit.day))
    if not counts:
        return None
    ref = min(sorted(counts), key=lambda c: (-counts[c][0], -counts[c][1].toordinal(), c))
    return ref, counts[ref][0], counts[ref][1]


__all__ = [
    "BASES",
    "CAPACITY",
    "DECLARED_PCP",
    "NO_ROOM",
    "NO_ROOM_TEXT",
    "VISIT_HISTORY",
    "ClinicianLoad",
    "Commitment",
    "PanelChange",
    "Placement",
    "PlacementRules",
    "Pools",
    "Room",
    "Suggestion",
    "by_capacity",
    "place_unassigned",
    "project",
]
