"""Placement behaviour that mutation testing (`make mutation`) showed no test pinned: the adult and
pediatric pools at their edges (the age limit itself, a practice of pediatric-only clinicians, a
clinician with both kinds of role). Helpers from test_placement."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.attribution import Assignment, AttributionResult
from fhirpanel.domain.placement import CAPACITY, NO_ROOM
from fhirpanel.domain.records import PatientRecord, Population
from tests.unit.test_attribution import (
    FAMILY,
    PEDIATRICS,
    attribute,
    build,
    days_ago,
    doc,
    pcp_roles,
    pid,
    role,
    visit,
)
from tests.unit.test_panels import person
from tests.unit.test_placement import chosen, loads, place


def unassigned(population: Population) -> AttributionResult:
    """The attribution of `population` with every patient unassigned (as a pipeline without a
    step that decides for them would leave them), visits kept for continuity."""
    result = attribute(population)
    return dataclasses.replace(
        result,
        assignments=tuple(Assignment(a.patient, "unassigned") for a in result.assignments),
    )


def test_the_pediatric_age_limit_is_the_first_adult_year() -> None:
    # d1 pediatric-only with the most room, d2 family medicine.
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), FAMILY)]
    pop = build(patients=[person(1, 17), person(2, 18)], roles=roles)
    placement = place(pop, loads((0, 0.0, 100.0), (0, 0.0, 50.0)))
    assert chosen(placement) == {pid(1): doc(1), pid(2): doc(2)}


def test_children_prefer_pediatric_clinicians_even_with_less_room() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), FAMILY)]
    pop = build(patients=[person(1, 6)], roles=roles)
    placement = place(pop, loads((0, 0.0, 10.0), (0, 0.0, 1000.0)))
    assert chosen(placement) == {pid(1): doc(1)}
    assert placement.suggestions[0].reason.startswith("most room among pediatric clinicians")


def test_in_a_practice_of_pediatric_only_clinicians_adults_still_get_one() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), PEDIATRICS)]
    pop = build(patients=[person(1, 40)], roles=roles)
    placement = place(pop, loads((0, 0.0, 10.0), (0, 0.0, 20.0)))
    assert chosen(placement) == {pid(1): doc(2)}
    assert placement.suggestions[0].basis == CAPACITY
    assert placement.suggestions[0].reason.startswith("most room: ")


def test_a_clinician_with_a_pediatric_and_a_family_role_takes_adults_and_children() -> None:
    roles = [
        role("r1a", doc(1), PEDIATRICS),
        role("r1b", doc(1), FAMILY),
        role("r2", doc(2), FAMILY),
        role("r3", doc(3), PEDIATRICS),
    ]
    pop = build(patients=[person(1, 40), person(2, 4)], roles=roles)
    # d1 has the most room of all; d3 (pediatric-only) second.
    placement = place(pop, loads((0, 0.0, 100.0), (0, 0.0, 10.0), (0, 0.0, 50.0)))
    assert chosen(placement) == {pid(1): doc(1), pid(2): doc(1)}


# --- no room, and clinicians without a panel row -----------------------------------------------


def test_no_room_puts_the_shortfall_first_and_keeps_the_patients_weight() -> None:
    roles = pcp_roles(1, 2)
    pop = build(
        [visit("e1", pid(1), doc(2), days_ago(30))],
        patients=[PatientRecord(id=pid(1), general_practitioners=(doc(1),))],
        roles=roles,
    )
    # p1 names d1 and was seen by d2 (history: not an assignment, the attribution is given).
    placement = place(
        pop,
        loads((10, 10.0, 10.0), (10, 10.0, 10.0)),
        weights={pid(1): 1.5},
        attribution=unassigned(pop),
    )
    (suggestion,) = placement.suggestions
    assert (suggestion.practitioner, suggestion.basis, suggestion.weight) == (None, NO_ROOM, 1.5)
    assert suggestion.reason == (
        "no room: practice over capacity (short 1.5: weight 1.5, most open panel 0.0); "
        "named PCP has no room; usual clinician (seen once in 36 months, last "
        f"{days_ago(30).date().isoformat()}) has no room"
    )


def test_a_named_pcp_who_is_also_the_usual_clinician_is_tried_once() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(30))],
        patients=[PatientRecord(id=pid(1), general_practitioners=(doc(1),))],
        roles=pcp_roles(1, 2),
    )
    placement = place(pop, loads((10, 10.0, 10.0), (0, 0.0, 10.0)), attribution=unassigned(pop))
    (suggestion,) = placement.suggestions
    assert suggestion.practitioner == doc(2)
    assert suggestion.reason.startswith("named PCP has no room; most room: ")
    assert "usual clinician" not in suggestion.reason


def test_a_weightless_patient_is_not_placed_on_a_full_panel() -> None:
    # A cell with patients and no visits weighs 0: still no room on a panel at capacity.
    pop = build(patients=[pid(1)], roles=pcp_roles(1))
    placement = place(pop, loads((10, 10.0, 10.0)), weights={pid(1): 0.0})
    assert chosen(placement) == {pid(1): None}


def test_an_eligible_clinician_without_a_panel_row_has_no_room_but_is_shown() -> None:
    pop = build(patients=[pid(1)], roles=pcp_roles(1, 2))
    placement = place(pop, loads((10, 10.0, 10.0)))  # d2 has no row: no known capacity
    (suggestion,) = placement.suggestions
    assert (suggestion.practitioner, suggestion.shortfall) == (None, pytest.approx(1.0))
    assert [(c.practitioner, c.size, c.capacity) for c in placement.changes] == [
        (doc(1), 10, 10.0),
        (doc(2), 0, 0.0),
    ]


def test_a_patient_the_population_no_longer_holds_is_placed_as_an_adult() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), FAMILY)]
    attribution = attribute(build(patients=[pid(1)], roles=roles))
    # The same attribution against a population without p1's record: no age, so an adult.
    placement = place(
        build(roles=roles), loads((0, 0.0, 50.0), (0, 0.0, 10.0)), attribution=attribution
    )
    assert chosen(placement) == {pid(1): doc(2)}


def test_with_nobody_eligible_there_are_no_changes_either() -> None:
    placement = place(build(patients=[pid(1)], roles=[]), [])
    assert (placement.suggestions, placement.changes) == ((), ())


def test_with_no_panel_rows_at_all_the_shortfall_is_the_whole_weight() -> None:
    pop = build(patients=[pid(1)], roles=pcp_roles(1))
    placement = place(pop, [], weights={pid(1): 1.5})
    (suggestion,) = placement.suggestions
    assert (suggestion.practitioner, suggestion.shortfall) == (None, pytest.approx(1.5))
    assert [(c.practitioner, c.load, c.capacity) for c in placement.changes] == [(doc(1), 0.0, 0.0)]
