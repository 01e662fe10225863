"""Transition a panel: plan each patient of a departing clinician (or any chosen one) onto the
other eligible clinicians (fhirpanel issue 17 item 4; docs/methods.md s.3.7).

Continuity first, as placement (docs/methods.md s.3.5): the empanelment literature keeps a
patient with a clinician they already know before balancing supply and demand. For each
patient, in placement order (highest risk tier first, then by id):

1. continuity: the eligible clinician other than the departing one the patient saw most in the
   visit counts given (the one seen second most overall), when their panel is open and has
   room; ties to the lowest id;
2. else the placement rules' capacity step (`placement.by_capacity`): the clinician whose panel
   would have the lowest share of capacity used with the patient, among open panels with room.
   Patients of a pediatric-only clinician go to pediatric clinicians first; anyone else never
   to a pediatric-only clinician while the practice has another (the stored record carries no
   age: the departing clinician's framework stands for the patient's);
3. else no room, with the shortfall.

Each move uses up its clinician's room by the patient's weight, so the plan as a whole stays
within capacity. A closed panel (`PlacementRules.closed`) gets nobody. Pure and
deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fhirpanel.domain.placement import (
    BASES,
    CAPACITY,
    NO_ROOM,
    VISIT_HISTORY,
    ClinicianLoad,
    PanelChange,
    PlacementRules,
    Pools,
    Room,
    Suggestion,
    by_capacity,
    project,
)

# Why a move was planned (`Suggestion.basis`): continuity is placement's visit-history step.
CONTINUITY = VISIT_HISTORY
TRANSITION_BASES = BASES


@dataclass(frozen=True)
class PanelPatient:
    """A patient on the departing clinician's panel, as the plan needs them."""

    patient: str
    visits: Mapping[str, int]  # qualifying visits per clinician (the departing one included)
    weight: float = 1.0  # age/sex weight: the room the patient takes
    tier: int | None = None


@dataclass(frozen=True)
class Clinicians:
    """The practice's clinicians as the plan sees them."""

    eligible: tuple[str, ...]  # may take patients (the departing one may be among them)
    loads: tuple[ClinicianLoad, ...]  # their panels now
    pediatric: tuple[str, ...] = ()  # eligible clinicians with a pediatric role
    pediatric_only: tuple[str, ...] = ()  # ... and no other primary-care role


@dataclass(frozen=True)
class TransitionPlan:
    departing: str
    moves: tuple[Suggestion, ...]  # one per patient, sorted by patient; practitioner None: no room
    changes: tuple[PanelChange, ...]  # every other eligible panel now and with every move made

    @property
    def placed(self) -> tuple[Suggestion, ...]:
        return tuple(m for m in self.moves if m.practitioner is not None)


def plan_transition(
    departing: str,
    patients: Sequence[PanelPatient],
    clinicians: Clinicians,
    rules: PlacementRules,
) -> TransitionPlan:
    """A move for every patient in `patients` off `departing`'s panel (see the module)."""
    others = tuple(sorted(c for c in set(clinicians.eligible) if c != departing))
    by_ref = {c.practitioner: c for c in clinicians.loads}
    room = Room(
        {
            ref: (by_ref[ref].load, by_ref[ref].capacity) if ref in by_ref else (0.0, 0.0)
            for ref in others
        },
        rules.closed,
    )
    everyone = tuple(sorted(set(clinicians.eligible) | {departing}))
    pediatric = tuple(c for c in everyone if c in set(clinicians.pediatric))
    adult = tuple(c for c in everyone if c not in set(clinicians.pediatric_only))
    pools = Pools(everyone, pediatric, adult).without(departing)
    as_child = departing in set(clinicians.pediatric_only)
    order = sorted(patients, key=lambda p: (-(p.tier or 0), p.patient))
    moves = [_move(p, departing, others, room, pools.for_patient(as_child)) for p in order]
    moves.sort(key=lambda m: m.patient)
    changes = project(
        [by_ref[ref] for ref in others if ref in by_ref],
        [(m.practitioner, m.weight) for m in moves],
        others,
    )
    return TransitionPlan(departing, tuple(moves), changes)


def _move(
    patient: PanelPatient,
    departing: str,
    others: Sequence[str],
    room: Room,
    pools: Sequence[tuple[tuple[str, ...], str]],
) -> Suggestion:
    notes: list[str] = []
    allowed = set(others)
    seen = sorted(
        ((ref, n) for ref, n in patient.visits.items() if ref in allowed and n > 0),
        key=lambda item: (-item[1], item[0]),
    )
    if seen:
        ref, count = seen[0]
        times = "once" if count == 1 else f"{count} times"
        history = f"seen {times}, the most after {departing}"
        if room.fits(ref, patient.weight):
            room.take(ref, patient.weight)
            return Suggestion(patient.patient, ref, history, CONTINUITY, patient.weight)
        why = "panel closed to new patients" if ref in room.closed else "has no room"
        notes.append(f"{ref} ({history}) {why}")
    return by_capacity(patient.patient, pools, patient.weight, room, notes)


__all__ = [
    "CAPACITY",
    "CONTINUITY",
    "NO_ROOM",
    "TRANSITION_BASES",
    "Clinicians",
    "PanelPatient",
    "TransitionPlan",
    "plan_transition",
]
