"""Placement behaviour that mutation testing (`make mutation`) showed no test pinned: the adult and
pediatric pools at their edges (the age limit itself, a practice of pediatric-only clinicians, a
clinician with both kinds of role). Helpers from test_placement."""

from __future__ import annotations

from fhirpanel.domain.placement import CAPACITY
from tests.unit.test_attribution import FAMILY, PEDIATRICS, build, doc, pid, role
from tests.unit.test_panels import person
from tests.unit.test_placement import chosen, loads, place


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
