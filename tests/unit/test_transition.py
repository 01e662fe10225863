"""Transition a panel (docs/methods.md s.3.7): continuity first (the clinician seen most after
the departing one), else placement's capacity step; closed panels get nobody; room used up as
moves are made, highest tier first; pediatric-only panels go to pediatric clinicians first.
Also: placement itself obeys closed panels."""

from __future__ import annotations

from fhirpanel.domain.placement import (
    CAPACITY,
    NO_ROOM,
    VISIT_HISTORY,
    ClinicianLoad,
    PanelChange,
    PlacementRules,
    place_unassigned,
)
from fhirpanel.domain.transition import (
    CONTINUITY,
    Clinicians,
    PanelPatient,
    TransitionPlan,
    plan_transition,
)
from tests.unit.test_attribution import AS_OF, attribute, build, doc, pcp_roles, pid, visit
from tests.unit.test_placement import loads, months_ago

RULES = PlacementRules()
A, B, C = doc(1), doc(2), doc(3)


def practice(
    *figures: tuple[int, float, float], pediatric_only: tuple[str, ...] = ()
) -> Clinicians:
    """d1 (the departing clinician), d2, ... with (size, risk-adjusted size, capacity)."""
    rows = loads(*figures)
    return Clinicians(
        eligible=tuple(c.practitioner for c in rows),
        loads=tuple(rows),
        pediatric=pediatric_only,
        pediatric_only=pediatric_only,
    )


def plan(
    patients: list[PanelPatient], clinicians: Clinicians, rules: PlacementRules = RULES
) -> TransitionPlan:
    return plan_transition(A, patients, clinicians, rules)


def moved(result: TransitionPlan) -> dict[str, tuple[str | None, str]]:
    return {m.patient: (m.practitioner, m.basis) for m in result.moves}


def test_a_patient_who_saw_b_second_most_goes_to_b() -> None:
    # C has far more room: continuity wins all the same
    p1 = PanelPatient(pid(1), {A: 5, B: 2, C: 1})
    result = plan([p1], practice((1, 1.0, 100.0), (50, 50.0, 100.0), (0, 0.0, 100.0)))
    (move,) = result.moves
    assert (move.practitioner, move.basis) == (B, CONTINUITY) and CONTINUITY == VISIT_HISTORY
    assert move.reason == f"seen 2 times, the most after {A}"


def test_a_patient_with_no_second_clinician_goes_by_placement() -> None:
    p1 = PanelPatient(pid(1), {A: 4})
    result = plan([p1], practice((1, 1.0, 100.0), (50, 50.0, 100.0), (10, 10.0, 100.0)))
    (move,) = result.moves
    assert (move.practitioner, move.basis) == (C, CAPACITY)
    assert move.reason.startswith("most room: 90 of 100 open")


def test_a_closed_panel_gets_nobody() -> None:
    patients = [
        PanelPatient(pid(1), {A: 3, B: 2}),  # usual second clinician, but closed
        PanelPatient(pid(2), {A: 1}),  # B has the most room, but closed
        PanelPatient(pid(3), {A: 1, B: 5}),
    ]
    closed = PlacementRules(closed=frozenset({B}))
    result = plan(patients, practice((3, 3.0, 100.0), (0, 0.0, 100.0), (60, 60.0, 100.0)), closed)
    assert {m.practitioner for m in result.moves} == {C}
    first = result.moves[0]
    assert first.reason.startswith(f"{B} (seen 2 times, the most after {A}) panel closed to new")
    # B's panel does not change; C takes all three
    by_ref = {c.practitioner: c for c in result.changes}
    assert by_ref[B].added == 0 and by_ref[C].added == 3
    assert A not in by_ref  # the departing panel is not a destination


def test_everyone_closed_or_full_is_no_room_with_the_shortfall() -> None:
    closed = PlacementRules(closed=frozenset({B}))
    result = plan(
        [PanelPatient(pid(1), {A: 1, B: 1}, weight=1.5)],
        practice((1, 1.0, 100.0), (0, 0.0, 100.0), (100, 99.0, 100.0)),
        closed,
    )
    (move,) = result.moves
    assert (move.practitioner, move.basis) == (None, NO_ROOM)
    # B's open capacity is no room: the shortfall counts C's 1.0 only
    assert move.shortfall == 0.5 and "panel closed to new patients" in move.reason
    assert result.placed == ()


def test_room_is_used_up_highest_tier_first() -> None:
    # B has room for one patient of weight 1: the tier-3 patient keeps continuity
    patients = [
        PanelPatient(pid(1), {A: 2, B: 1}, tier=1),
        PanelPatient(pid(2), {A: 2, B: 1}, tier=3),
    ]
    result = plan(patients, practice((2, 2.0, 100.0), (9, 9.0, 10.0), (0, 0.0, 100.0)))
    assert moved(result) == {pid(1): (C, CAPACITY), pid(2): (B, CONTINUITY)}
    assert result.changes == (
        PanelChange(B, 9, 10, 9.0, 10.0, 10.0),
        PanelChange(C, 0, 1, 0.0, 1.0, 100.0),
    )


def test_ties_in_continuity_go_to_the_lowest_id_and_ineligible_clinicians_are_skipped() -> None:
    gone = doc(9)  # seen most after A, but not eligible
    p1 = PanelPatient(pid(1), {A: 5, gone: 4, C: 2, B: 2})
    result = plan([p1], practice((1, 1.0, 100.0), (50, 50.0, 100.0), (0, 0.0, 100.0)))
    assert moved(result) == {pid(1): (B, CONTINUITY)}


def test_pediatric_only_panels_go_to_pediatric_clinicians_first_and_adults_never_there() -> None:
    # d1 pediatric-only, leaving: its patients go to d2 (pediatric) before d3 (more room)
    kids = Clinicians(
        eligible=(A, B, C),
        loads=tuple(loads((1, 1.0, 100.0), (50, 50.0, 100.0), (0, 0.0, 100.0))),
        pediatric=(A, B),
        pediatric_only=(A, B),
    )
    result = plan_transition(A, [PanelPatient(pid(1), {A: 1})], kids, RULES)
    assert moved(result) == {pid(1): (B, CAPACITY)}
    assert result.moves[0].reason.startswith("most room among pediatric clinicians")
    # an adult panel leaving: never to the pediatric-only d2, even with the most room
    adults = Clinicians(
        eligible=(A, B, C),
        loads=tuple(loads((1, 1.0, 100.0), (0, 0.0, 100.0), (50, 50.0, 100.0))),
        pediatric=(B,),
        pediatric_only=(B,),
    )
    assert moved(plan([PanelPatient(pid(1), {A: 1})], adults)) == {pid(1): (C, CAPACITY)}


def test_the_plan_is_the_same_whatever_order_the_patients_come_in() -> None:
    patients = [PanelPatient(pid(n), {A: 3, doc(2 + n % 2): n % 3}, tier=n % 4) for n in range(20)]
    clinicians = practice((20, 20.0, 100.0), (90, 90.0, 100.0), (95, 95.0, 100.0))
    assert plan(patients, clinicians) == plan(list(reversed(patients)), clinicians)


def test_a_departing_clinician_not_eligible_any_more_is_planned_all_the_same() -> None:
    clinicians = Clinicians(
        eligible=(B, C), loads=tuple(loads((0, 0.0, 0.0), (0, 0.0, 100.0), (5, 5.0, 100.0)))[1:]
    )
    result = plan([PanelPatient(pid(1), {A: 1, C: 1})], clinicians)
    assert moved(result) == {pid(1): (C, CONTINUITY)}


# --- placement obeys closed panels ---------------------------------------------------------------


def test_placement_suggests_nobody_to_a_closed_panel() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), months_ago(20))],
        patients=[pid(1), pid(2)],
        roles=pcp_roles(1, 2, 3),
    )
    clinicians = [
        ClinicianLoad(doc(1), 0, 0.0, 100.0),
        ClinicianLoad(doc(2), 0, 0.0, 1000.0),  # the most room, closed
        ClinicianLoad(doc(3), 50, 50.0, 100.0),
    ]

    def place(rules: PlacementRules) -> dict[str, tuple[str | None, str]]:
        result = place_unassigned(pop, attribute(pop), AS_OF, rules, clinicians, lambda p: 1.0)
        return {s.patient: (s.practitioner, s.basis) for s in result.suggestions}

    assert place(PlacementRules()) == {pid(1): (doc(1), VISIT_HISTORY), pid(2): (doc(2), CAPACITY)}
    closed = place(PlacementRules(closed=frozenset({doc(1), doc(2)})))
    assert closed == {pid(1): (doc(3), CAPACITY), pid(2): (doc(3), CAPACITY)}
    result = place_unassigned(
        pop,
        attribute(pop),
        AS_OF,
        PlacementRules(closed=frozenset({doc(1), doc(2), doc(3)})),
        clinicians,
        lambda p: 1.0,
    )
    assert {s.basis for s in result.suggestions} == {NO_ROOM}
    assert "usual clinician" in result.suggestions[0].reason
    assert "panel closed to new patients" in result.suggestions[0].reason
