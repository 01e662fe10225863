"""Transition a panel (domain/transition.py) pinned where mutation testing found it loose: the
clinician seen most (not first by id), no visits counting as not seen, the words of a single
visit and of a full panel, the weight a continuity move carries, the order of patients without
a tier, and an eligible clinician without a panel row."""

from __future__ import annotations

from fhirpanel.domain.placement import (
    CAPACITY,
    NO_ROOM,
    ClinicianLoad,
    PanelChange,
)
from fhirpanel.domain.transition import CONTINUITY, Clinicians, PanelPatient, plan_transition
from tests.unit.test_attribution import doc, pid
from tests.unit.test_transition import RULES, A, B, C, moved, plan, practice

D = doc(4)


def test_the_clinician_seen_most_wins_over_a_lower_id() -> None:
    p1 = PanelPatient(pid(1), {A: 5, B: 1, C: 3})
    result = plan([p1], practice((1, 1.0, 100.0), (0, 0.0, 100.0), (0, 0.0, 100.0)))
    assert moved(result) == {pid(1): (C, CONTINUITY)}
    assert result.departing == A


def test_a_clinician_listed_with_no_visits_was_not_seen() -> None:
    # B is listed with 0 visits and has room, C has more: placement's capacity step decides.
    p1 = PanelPatient(pid(1), {A: 3, B: 0})
    result = plan([p1], practice((1, 1.0, 100.0), (50, 50.0, 100.0), (0, 0.0, 100.0)))
    assert moved(result) == {pid(1): (C, CAPACITY)}


def test_a_single_visit_reads_once_and_the_move_carries_the_patients_weight() -> None:
    p1 = PanelPatient(pid(1), {A: 3, B: 1}, weight=1.5)
    result = plan([p1], practice((1, 1.0, 100.0), (0, 0.0, 100.0)))
    (move,) = result.moves
    assert (move.practitioner, move.basis, move.weight) == (B, CONTINUITY, 1.5)
    assert move.reason == f"seen once, the most after {A}"
    assert result.changes == (PanelChange(B, 0, 1, 0.0, 1.5, 100.0),)


def test_a_full_panel_has_no_room_rather_than_being_closed() -> None:
    p1 = PanelPatient(pid(1), {A: 3, B: 2})
    result = plan([p1], practice((1, 1.0, 100.0), (10, 10.0, 10.0), (0, 0.0, 100.0)))
    (move,) = result.moves
    assert (move.practitioner, move.basis) == (C, CAPACITY)
    assert move.reason.startswith(f"{B} (seen 2 times, the most after {A}) has no room; most room")


def test_a_patient_without_a_tier_comes_after_tier_one() -> None:
    # B has room for one: the tier-1 patient is placed before the one without a tier.
    patients = [PanelPatient(pid(1), {A: 2, B: 1}), PanelPatient(pid(2), {A: 2, B: 1}, tier=1)]
    result = plan(patients, practice((2, 2.0, 100.0), (9, 9.0, 10.0), (0, 0.0, 100.0)))
    assert moved(result) == {pid(1): (C, CAPACITY), pid(2): (B, CONTINUITY)}


def test_an_eligible_clinician_without_a_panel_row_has_no_room_but_is_listed() -> None:
    # D is eligible with no panel row: no capacity, so the patient who saw D cannot go there,
    # and its open room (none) is what the shortfall counts against B's overfull panel.
    clinicians = Clinicians(
        eligible=(A, B, D),
        loads=(ClinicianLoad(A, 1, 1.0, 100.0), ClinicianLoad(B, 12, 12.0, 10.0)),
    )
    result = plan_transition(A, [PanelPatient(pid(1), {A: 2, D: 1})], clinicians, RULES)
    (move,) = result.moves
    assert (move.practitioner, move.basis, move.shortfall) == (None, NO_ROOM, 1.0)
    assert f"{D} (seen once, the most after {A}) has no room" in move.reason
    assert result.changes == (
        PanelChange(B, 12, 12, 12.0, 12.0, 10.0),
        PanelChange(D, 0, 0, 0.0, 0.0, 0.0),
    )
