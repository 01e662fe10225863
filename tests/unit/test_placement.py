"""Placement of unassigned patients (docs/methods.md s.3.5): continuity first (the named PCP, then
the clinician seen most in the continuity look-back), then the panel with the lowest share of
capacity used; room used up as suggestions are made, highest tier first; pediatric pools; no
room with the shortfall; the same suggestions whatever order the input comes in."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

import pytest

from fhirpanel.domain.attribution import AttributionResult
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.placement import (
    CAPACITY,
    DECLARED_PCP,
    NO_ROOM,
    VISIT_HISTORY,
    ClinicianLoad,
    Commitment,
    PanelChange,
    Placement,
    PlacementRules,
    place_unassigned,
    project,
)
from fhirpanel.domain.records import EncounterRecord, PatientRecord, Population
from tests.unit.test_attribution import (
    AS_OF,
    FAMILY,
    PEDIATRICS,
    attribute,
    build,
    doc,
    pcp_roles,
    pid,
    role,
    visit,
)
from tests.unit.test_panels import person

RULES = PlacementRules(pediatric_age_limit=18, continuity_months=36)


def months_ago(months: int) -> datetime:
    day = months_before(AS_OF, months)
    return datetime(day.year, day.month, day.day, 9, tzinfo=UTC)


def loads(*figures: tuple[int, float, float]) -> list[ClinicianLoad]:
    """(size, risk-adjusted size, capacity) for d1, d2, ... in order."""
    return [
        ClinicianLoad(doc(n), size, load, capacity)
        for n, (size, load, capacity) in enumerate(figures, start=1)
    ]


def place(
    population: Population,
    clinicians: Sequence[ClinicianLoad],
    *,
    weights: Mapping[str, float] | None = None,
    tiers: Mapping[str, int] | None = None,
    committed: Sequence[Commitment] = (),
    attribution: AttributionResult | None = None,
) -> Placement:
    return place_unassigned(
        population,
        attribution or attribute(population),
        AS_OF,
        RULES,
        clinicians,
        lambda p: (weights or {}).get(p, 1.0),
        tiers=tiers,
        committed=committed,
    )


def chosen(placement: Placement) -> dict[str, str | None]:
    return {s.patient: s.practitioner for s in placement.suggestions}


# --- continuity --------------------------------------------------------------------------------


def test_a_patient_seen_20_months_ago_is_suggested_to_that_clinician() -> None:
    seen = months_ago(20)
    pop = build([visit("e1", pid(1), doc(1), seen)], roles=pcp_roles(1, 2))
    assert attribute(pop).by_patient()[pid(1)].status == "unassigned"  # outside 18 months
    # d2 has far more room: continuity wins all the same
    placement = place(pop, loads((90, 90.0, 100.0), (0, 0.0, 100.0)))
    (suggestion,) = placement.suggestions
    assert (suggestion.practitioner, suggestion.basis) == (doc(1), VISIT_HISTORY)
    assert suggestion.reason == f"seen once in 36 months, last {seen.date().isoformat()}"


def test_history_picks_the_clinician_seen_most_then_most_recently() -> None:
    pop = build(
        [
            visit("a1", pid(1), doc(1), months_ago(30)),
            visit("a2", pid(1), doc(1), months_ago(29)),
            visit("a3", pid(1), doc(2), months_ago(20)),
            # p2: two each; d2 more recently
            visit("b1", pid(2), doc(1), months_ago(30)),
            visit("b2", pid(2), doc(1), months_ago(25)),
            visit("b3", pid(2), doc(2), months_ago(28)),
            visit("b4", pid(2), doc(2), months_ago(21)),
            # p3: seen only 40 months ago, outside the look-back: capacity decides
            visit("c1", pid(3), doc(1), months_ago(40)),
        ],
        roles=pcp_roles(1, 2, 3),
    )
    placement = place(pop, loads((0, 0.0, 100.0), (0, 0.0, 100.0), (0, 0.0, 1000.0)))
    got = {s.patient: (s.practitioner, s.basis) for s in placement.suggestions}
    assert got == {
        pid(1): (doc(1), VISIT_HISTORY),
        pid(2): (doc(2), VISIT_HISTORY),
        pid(3): (doc(3), CAPACITY),
    }
    assert placement.suggestions[1].reason.startswith("seen 2 times in 36 months, last ")


def test_the_look_back_is_a_setting() -> None:
    pop = build([visit("e1", pid(1), doc(1), months_ago(20))], roles=pcp_roles(1, 2))
    shorter = place_unassigned(
        pop,
        attribute(pop),
        AS_OF,
        PlacementRules(continuity_months=19),
        loads((0, 0.0, 100.0), (0, 0.0, 1000.0)),
        lambda p: 1.0,
    )
    assert chosen(shorter) == {pid(1): doc(2)}


def test_a_declared_pcp_wins_over_history() -> None:
    patients = [
        PatientRecord(id=pid(1), general_practitioners=(doc(2),)),
        # an Organization and an ineligible clinician are skipped; a role names its clinician
        PatientRecord(
            id=pid(2),
            general_practitioners=("Organization/o1", doc(9), "PractitionerRole/r3"),
        ),
        # only ineligible entries: history decides
        PatientRecord(id=pid(3), general_practitioners=(doc(9),)),
    ]
    encounters = [
        visit("a1", pid(1), doc(1), months_ago(20)),
        visit("a2", pid(1), doc(1), months_ago(22)),
        visit("b1", pid(2), doc(1), months_ago(20)),
        visit("c1", pid(3), doc(1), months_ago(20)),
    ]
    pop = build(encounters, patients, roles=pcp_roles(1, 2, 3))
    placement = place(pop, loads((0, 0.0, 100.0), (0, 0.0, 100.0), (0, 0.0, 100.0)))
    got = {s.patient: (s.practitioner, s.basis, s.reason) for s in placement.suggestions}
    assert got[pid(1)] == (doc(2), DECLARED_PCP, "named as PCP in the patient's record")
    assert got[pid(2)][:2] == (doc(3), DECLARED_PCP)
    assert got[pid(3)][:2] == (doc(1), VISIT_HISTORY)


def test_a_full_continuity_clinician_falls_through_to_capacity_and_says_so() -> None:
    patients = [PatientRecord(id=pid(1), general_practitioners=(doc(1),)), pid(2)]
    encounters = [visit("a1", pid(2), doc(1), months_ago(24))]
    pop = build(encounters, patients, roles=pcp_roles(1, 2))
    # d1 is at capacity: neither the named PCP nor the usual clinician can take anyone
    placement = place(pop, loads((100, 100.0, 100.0), (50, 50.0, 100.0)))
    first, second = placement.suggestions
    assert (first.practitioner, first.basis) == (doc(2), CAPACITY)
    assert first.reason.startswith("named PCP has no room; most room: 50 of 100 open")
    assert (second.practitioner, second.basis) == (doc(2), CAPACITY)
    assert (
        second.reason.startswith("usual clinician (seen once in 36 months, last ")
        and "has no room; most room: " in second.reason
    )


def test_continuity_needs_room_for_the_patients_weight() -> None:
    pop = build([visit("a1", pid(1), doc(1), months_ago(24))], roles=pcp_roles(1, 2))
    tight = loads((9, 9.5, 10.0), (0, 0.0, 10.0))
    assert chosen(place(pop, tight, weights={pid(1): 0.5})) == {pid(1): doc(1)}
    assert chosen(place(pop, tight, weights={pid(1): 0.6})) == {pid(1): doc(2)}


# --- balance -----------------------------------------------------------------------------------


def test_thirty_new_patients_even_out_panels_of_90_80_and_70() -> None:
    pop = build(patients=[pid(n) for n in range(1, 31)], roles=pcp_roles(1, 2, 3))
    placement = place(pop, loads((90, 90.0, 100.0), (80, 80.0, 100.0), (70, 70.0, 100.0)))
    counts = Counter(s.practitioner for s in placement.suggestions)
    assert [counts[doc(n)] for n in (1, 2, 3)] == [0, 10, 20]
    assert {s.basis for s in placement.suggestions} == {CAPACITY}
    assert placement.changes == (
        PanelChange(doc(1), 90, 90, 90.0, 90.0, 100.0),
        PanelChange(doc(2), 80, 90, 80.0, 90.0, 100.0),
        PanelChange(doc(3), 70, 90, 70.0, 90.0, 100.0),
    )
    assert [c.share_after for c in placement.changes] == [0.9, 0.9, 0.9]


def test_shares_not_sizes_are_evened_out() -> None:
    # d2 has twice d1's capacity: it takes two patients for each of d1's
    pop = build(patients=[pid(n) for n in range(1, 7)], roles=pcp_roles(1, 2))
    placement = place(pop, loads((0, 0.0, 10.0), (0, 0.0, 20.0)))
    assert Counter(chosen(placement).values()) == {doc(1): 2, doc(2): 4}


def test_nobody_is_suggested_to_a_full_panel() -> None:
    pop = build(patients=[pid(n) for n in range(1, 6)], roles=pcp_roles(1, 2, 3, 4))
    clinicians = loads(
        (100, 100.0, 100.0),  # exactly full
        (130, 120.0, 100.0),  # over
        (99, 99.5, 100.0),  # room for half a patient
        (96, 96.0, 100.0),  # room for four
    )
    placement = place(pop, clinicians)
    assert [s.practitioner for s in placement.suggestions] == [doc(4)] * 4 + [None]
    assert all(c.load_after <= c.capacity for c in placement.changes if c.added)


def test_no_room_lists_the_shortfall() -> None:
    pop = build(patients=[pid(1)], roles=pcp_roles(1, 2))
    placement = place(pop, loads((99, 99.5, 100.0), (130, 120.0, 100.0)), weights={pid(1): 2.0})
    (suggestion,) = placement.suggestions
    assert suggestion.practitioner is None and suggestion.basis == NO_ROOM
    assert suggestion.shortfall == pytest.approx(1.5)
    assert suggestion.reason == (
        "no room: practice over capacity (short 1.5: weight 2.0, most open panel 0.5)"
    )
    assert all(c.added == 0 for c in placement.changes)


def test_room_is_used_up_across_the_list_and_by_earlier_commitments() -> None:
    pop = build(patients=[pid(1), pid(2)], roles=pcp_roles(1, 2))
    clinicians = loads((0, 0.0, 3.0), (0, 0.0, 3.0))
    # three patients already suggested to d1 elsewhere (an earlier pass): d1 is full
    committed = [Commitment(pid(n), doc(1), 1.0) for n in (7, 8, 9)]
    placement = place(pop, clinicians, committed=committed)
    assert chosen(placement) == {pid(1): doc(2), pid(2): doc(2)}
    assert [(c.size, c.size_after) for c in placement.changes] == [(0, 3), (0, 2)]


def test_highest_tier_is_placed_first_when_room_is_short() -> None:
    pop = build(patients=[pid(1), pid(2), pid(3)], roles=pcp_roles(1))
    tiers = {pid(1): 1, pid(2): 3, pid(3): 3}
    placement = place(pop, loads((8, 8.0, 10.0)), tiers=tiers)
    # room for two: tier 3 first, then by id
    assert chosen(placement) == {pid(1): None, pid(2): doc(1), pid(3): doc(1)}
    # a patient without a tier comes after tier 1
    placement = place(pop, loads((9, 9.0, 10.0)), tiers={pid(2): 1})
    assert chosen(placement) == {pid(1): None, pid(2): doc(1), pid(3): None}


# --- pediatric and adult pools -----------------------------------------------------------------


def test_children_go_to_pediatric_clinicians_while_they_have_room_then_others() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), FAMILY)]
    children = [person(n, 5 + n) for n in (1, 2, 3)]
    pop = build(patients=[*children, person(4, 40), person(5, 17, "male")], roles=roles)
    tiers = {pid(n): 2 for n in (1, 2, 3)}  # p5 (a child, no tier) is placed last
    placement = place(pop, loads((10, 10.0, 13.0), (0, 0.0, 1000.0)), tiers=tiers)
    got = {s.patient: (s.practitioner, s.reason) for s in placement.suggestions}
    assert [got[pid(n)][0] for n in (1, 2, 3, 4, 5)] == [doc(1), doc(1), doc(1), doc(2), doc(2)]
    assert got[pid(1)][1].startswith("most room among pediatric clinicians: 3 of 13 open")
    assert got[pid(5)][1].startswith("no pediatric clinician has room; most room: ")


def test_adults_never_go_to_a_pediatric_only_clinician_while_another_exists() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), FAMILY)]
    pop = build(patients=[person(1, 40), person(2, None)], roles=roles)  # age unknown: adult
    placement = place(pop, loads((0, 0.0, 100.0), (10, 10.0, 11.0)))
    assert chosen(placement) == {pid(1): doc(2), pid(2): None}
    assert placement.suggestions[1].reason.startswith(
        "no room: practice over capacity (short 1.0: weight 1.0, most open panel 0.0)"
    )


def test_without_a_pediatric_clinician_children_go_to_anyone_with_room() -> None:
    pop = build(patients=[person(1, 5)], roles=pcp_roles(1, 2))
    placement = place(pop, loads((0, 0.0, 5.0), (0, 0.0, 6.0)))
    assert chosen(placement) == {pid(1): doc(2)}


def test_no_eligible_clinician_means_no_suggestion() -> None:
    pop = build(patients=[pid(1)], roles=[])
    assert place(pop, []).suggestions == ()


# --- determinism and bounds --------------------------------------------------------------------


def test_the_same_input_in_any_order_gives_the_same_suggestions() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), *pcp_roles(2, 3, 4)]
    patients: list[PatientRecord] = [
        person(n, (n * 7) % 60, "female" if n % 2 else "male") for n in range(1, 41)
    ]
    patients[3] = PatientRecord(id=pid(4), general_practitioners=(doc(3),))
    encounters: list[EncounterRecord] = [
        visit(f"e{n}", pid(n), doc(2 + n % 3), months_ago(19 + n % 15)) for n in range(1, 41, 3)
    ]
    weights = {pid(n): 0.5 + (n % 5) / 4 for n in range(1, 41)}
    tiers = {pid(n): 1 + n % 4 for n in range(1, 41)} | {pid(4): 5}  # p4 placed first
    # 28.5 open for about 40 patients of weight 1: some get no room
    clinicians = loads((5, 5.0, 10.0), (10, 12.0, 20.0), (0, 0.0, 8.0), (3, 2.5, 10.0))
    expected = place(build(encounters, patients, roles), clinicians, weights=weights, tiers=tiers)
    assert {s.basis for s in expected.suggestions} == {
        DECLARED_PCP,
        VISIT_HISTORY,
        CAPACITY,
        NO_ROOM,
    }
    shuffle = random.Random(16)
    for _ in range(5):
        for items in (patients, encounters, roles, clinicians):
            shuffle.shuffle(items)  # type: ignore[arg-type]
        again = place(
            build(encounters, patients, roles),
            clinicians,
            weights=dict(reversed(list(weights.items()))),
            tiers=dict(reversed(list(tiers.items()))),
        )
        assert again == expected


def test_reasons_fit_the_stored_column_at_their_longest() -> None:
    long = "x" * 64
    pcp, usual = f"Practitioner/a{long[1:]}", f"Practitioner/b{long[1:]}"
    other = f"Practitioner/c{long[1:]}"
    patient = PatientRecord(id=pid(1), general_practitioners=(pcp,), birth_date=date(2020, 1, 1))
    pop = build(
        [visit(f"e{n}", pid(1), usual, months_ago(20 + n)) for n in range(12)],
        [patient],
        roles=[role("r1", pcp, PEDIATRICS), role("r2", usual), role("r3", other)],
    )
    clinicians = [
        ClinicianLoad(pcp, 2000, 2200.0, 2200.0),
        ClinicianLoad(usual, 2000, 2200.0, 2200.0),
        ClinicianLoad(other, 100, 100.0, 2200.0),
    ]
    (suggestion,) = place(pop, clinicians).suggestions
    assert suggestion.practitioner == other
    assert suggestion.reason.count("has no room") == 3 - 1
    assert len(suggestion.reason) <= 256  # patients.suggestion_reason is VARCHAR(256)
    full = [*clinicians[:2], ClinicianLoad(other, 2000, 2300.0, 2200.0)]
    (none,) = place(pop, full).suggestions
    assert none.practitioner is None and len(none.reason) <= 256


def test_project_shows_each_panel_before_and_after() -> None:
    changes = project(
        loads((10, 9.5, 20.0), (4, 4.0, 10.0)),
        [(doc(2), 1.5), (None, 3.0), (doc(2), 0.5), (doc(7), 1.0)],
        also=[doc(5)],
    )
    assert changes == (
        PanelChange(doc(1), 10, 10, 9.5, 9.5, 20.0),
        PanelChange(doc(2), 4, 6, 4.0, 6.0, 10.0),
        PanelChange(doc(5), 0, 0, 0.0, 0.0, 0.0),
        PanelChange(doc(7), 0, 1, 0.0, 1.0, 0.0),
    )
    assert (changes[1].added, changes[1].share, changes[1].share_after) == (2, 0.4, 0.6)
    assert changes[2].share is None
