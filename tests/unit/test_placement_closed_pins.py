"""Placement with closed panels and weights (domain/placement.py), and the pools without a
departing clinician, pinned where mutation testing found them loose: the words for a named PCP
whose panel is closed, the weight a continuity or named-PCP suggestion carries, and the shortfall
when every panel is closed."""

from __future__ import annotations

from fhirpanel.domain.placement import (
    NO_ROOM,
    VISIT_HISTORY,
    ClinicianLoad,
    PlacementRules,
    Pools,
    place_unassigned,
)
from tests.unit.test_attribution import AS_OF, attribute, build, doc, pcp_roles, pid, visit
from tests.unit.test_panels import person
from tests.unit.test_placement import months_ago

CLINICIANS = [
    ClinicianLoad(doc(1), 0, 0.0, 100.0),
    ClinicianLoad(doc(2), 0, 0.0, 100.0),
    ClinicianLoad(doc(3), 0, 0.0, 100.0),
]


def test_a_named_pcp_whose_panel_is_closed_is_passed_over_in_those_words() -> None:
    pop = build(
        [visit("e1", pid(1), doc(2), months_ago(20))],
        patients=[person(1, 40, general_practitioners=(doc(1),))],
        roles=pcp_roles(1, 2, 3),
    )
    rules = PlacementRules(closed=frozenset({doc(1)}))
    result = place_unassigned(pop, attribute(pop), AS_OF, rules, CLINICIANS, lambda p: 1.5)
    (suggestion,) = result.suggestions
    assert (suggestion.practitioner, suggestion.basis, suggestion.weight) == (
        doc(2),
        VISIT_HISTORY,
        1.5,
    )
    last = months_ago(20).date().isoformat()
    assert suggestion.reason == (
        f"named PCP panel closed to new patients; seen once in 36 months, last {last}"
    )


def test_with_every_panel_closed_the_shortfall_is_the_whole_weight() -> None:
    pop = build([], patients=[pid(1)], roles=pcp_roles(1, 2, 3))
    rules = PlacementRules(closed=frozenset({doc(1), doc(2), doc(3)}))
    result = place_unassigned(pop, attribute(pop), AS_OF, rules, CLINICIANS, lambda p: 1.5)
    (suggestion,) = result.suggestions
    assert (suggestion.practitioner, suggestion.basis, suggestion.shortfall) == (None, NO_ROOM, 1.5)


def test_pools_without_a_clinician_leave_them_out_of_every_pool() -> None:
    pools = Pools(everyone=("a", "b", "c"), pediatric=("a", "b"), adult=("a", "c"))
    assert pools.without("a") == Pools(everyone=("b", "c"), pediatric=("b",), adult=("c",))
