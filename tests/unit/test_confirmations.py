"""Confirmed assignments hold (issue 17, items 1 and 2): a patient whose assignment the clinician
or the patient confirmed within the confirmation period stays with that clinician when the rules
would move them, and the move is proposed instead; unconfirmed or expired, they move as before;
a dismissed move is not proposed again on the same evidence. Hand-built records."""

from __future__ import annotations

from datetime import date

import pytest

from fhirpanel.domain.attribution import ManualAssignment
from fhirpanel.domain.confirmations import (
    ConfirmedAssignment,
    DismissedMove,
    expires_on,
    is_current,
)
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.records import Population
from tests.unit.test_attribution import AS_OF, attribute, build, days_ago, doc, pid, visit


def moved_practice() -> Population:
    """p1 was d1's (one visit 14 months ago) and has since seen d2 three times."""
    return build(
        [
            visit("e1", pid(1), doc(1), days_ago(420)),
            visit("e2", pid(1), doc(2), days_ago(90)),
            visit("e3", pid(1), doc(2), days_ago(60)),
            visit("e4", pid(1), doc(2), days_ago(30)),
            visit("e5", pid(2), doc(1), days_ago(20)),
        ]
    )


def confirmed_d1(
    *, clinician_on: date | None = None, patient_on: date | None = None
) -> dict[str, ConfirmedAssignment]:
    return {pid(1): ConfirmedAssignment(pid(1), doc(1), clinician_on, patient_on)}


def test_a_confirmed_patient_with_three_later_visits_elsewhere_stays_and_a_move_is_proposed() -> (
    None
):
    result = attribute(moved_practice(), confirmed=confirmed_d1(clinician_on=date(2026, 6, 1)))
    held = result.by_patient()[pid(1)]
    assert (held.status, held.practitioner, held.rule) == ("assigned", doc(1), "confirmed")
    assert held.visits == ((doc(1), 1), (doc(2), 3))  # the pipeline's window (MGMA: 18 months)
    (move,) = result.proposed_moves
    assert (move.patient, move.from_practitioner, move.to_practitioner) == (pid(1), doc(1), doc(2))
    assert (move.rule, move.step) == ("plurality", "four-cut-18m")
    assert move.visits == ((doc(1), 1), (doc(2), 3))
    assert move.evidence == ("Encounter/e2", "Encounter/e3", "Encounter/e4")
    assert move.held_by == ("clinician",)


def test_the_same_patient_unconfirmed_moves() -> None:
    result = attribute(moved_practice())
    moved = result.by_patient()[pid(1)]
    assert (moved.practitioner, moved.rule) == (doc(2), "plurality")
    assert result.proposed_moves == ()


def test_an_expired_confirmation_does_not_hold() -> None:
    thirteen_months = months_before(AS_OF, 13)
    result = attribute(
        moved_practice(),
        confirmed=confirmed_d1(clinician_on=thirteen_months, patient_on=thirteen_months),
    )
    assert result.by_patient()[pid(1)].practitioner == doc(2)
    assert result.proposed_moves == ()
    # A longer confirmation period keeps it current.
    longer = attribute(
        moved_practice(),
        confirmed=confirmed_d1(clinician_on=thirteen_months),
        confirmation_months=24,
    )
    assert longer.by_patient()[pid(1)].practitioner == doc(1)


def test_a_patient_only_confirmation_holds_too() -> None:
    result = attribute(moved_practice(), confirmed=confirmed_d1(patient_on=date(2026, 10, 1)))
    assert result.by_patient()[pid(1)].practitioner == doc(1)
    assert [m.held_by for m in result.proposed_moves] == [("patient",)]


def test_both_confirmations_are_named_on_the_move() -> None:
    result = attribute(
        moved_practice(),
        confirmed=confirmed_d1(clinician_on=date(2026, 1, 5), patient_on=date(2026, 2, 5)),
    )
    assert [m.held_by for m in result.proposed_moves] == [("clinician", "patient")]


def test_a_dismissed_move_is_not_raised_again_until_the_evidence_changes() -> None:
    confirmed = confirmed_d1(clinician_on=date(2026, 6, 1))
    dismissed = {pid(1): DismissedMove(pid(1), doc(1), doc(2), ((doc(1), 1), (doc(2), 3)))}
    result = attribute(moved_practice(), confirmed=confirmed, dismissed=dismissed)
    assert result.by_patient()[pid(1)].practitioner == doc(1)  # still held
    assert result.proposed_moves == ()
    assert result.dismissed_kept == (pid(1),)
    # A fourth visit to d2 is new evidence: the move is proposed again.
    population = moved_practice()
    population.encounters.append(visit("e6", pid(1), doc(2), days_ago(5)))
    again = attribute(population, confirmed=confirmed, dismissed=dismissed)
    assert [m.visits for m in again.proposed_moves] == [((doc(1), 1), (doc(2), 4))]
    assert again.dismissed_kept == ()


def test_a_confirmation_that_agrees_with_the_rules_changes_nothing() -> None:
    result = attribute(
        moved_practice(),
        confirmed={pid(2): ConfirmedAssignment(pid(2), doc(1), date(2026, 6, 1), None)},
    )
    p2 = result.by_patient()[pid(2)]
    assert (p2.practitioner, p2.rule) == (doc(1), "single-provider")
    assert result.proposed_moves == ()


def test_a_confirmation_holds_a_patient_the_rules_would_leave_unassigned_without_a_move() -> None:
    population = build([visit("e1", pid(1), doc(1), days_ago(800))])  # out of the 18m window
    result = attribute(
        population,
        confirmed={pid(1): ConfirmedAssignment(pid(1), doc(1), None, date(2026, 9, 1))},
    )
    held = result.by_patient()[pid(1)]
    assert (held.status, held.practitioner, held.rule) == ("assigned", doc(1), "confirmed")
    assert result.proposed_moves == ()


def test_overrides_and_statuses_outrank_a_confirmation() -> None:
    confirmed = confirmed_d1(clinician_on=date(2026, 6, 1))
    manual = {pid(1): ManualAssignment(pid(1), doc(3))}
    result = attribute(moved_practice(), confirmed=confirmed, manual=manual)
    assert result.by_patient()[pid(1)].practitioner == doc(3)
    gone = attribute(moved_practice(), confirmed=confirmed, statuses={pid(1): "moved-away"})
    assert gone.by_patient()[pid(1)].status == "excluded"
    assert result.proposed_moves == () and gone.proposed_moves == ()


def test_a_confirmation_with_a_clinician_who_left_does_not_hold() -> None:
    population = moved_practice()
    roles = {k: v for k, v in population.roles.items() if v.practitioner != doc(1)}
    population = Population(
        patients=population.patients,
        encounters=population.encounters,
        practitioners={k: v for k, v in population.practitioners.items() if k != doc(1)},
        roles=roles,
    )
    result = attribute(population, confirmed=confirmed_d1(clinician_on=date(2026, 6, 1)))
    assert result.by_patient()[pid(1)].practitioner == doc(2)
    assert result.proposed_moves == ()


@pytest.mark.parametrize(
    ("day", "months", "expires"),
    [
        (date(2025, 11, 22), 12, date(2026, 11, 22)),
        (date(2024, 2, 29), 12, date(2025, 3, 1)),  # no 29 February in 2025
        (date(2026, 1, 31), 1, date(2026, 3, 1)),
    ],
)
def test_expiry_is_the_first_as_of_date_it_no_longer_holds(
    day: date, months: int, expires: date
) -> None:
    assert expires_on(day, months) == expires
    assert not is_current(day, expires, months)
    assert is_current(day, date.fromordinal(expires.toordinal() - 1), months)


def test_a_confirmation_after_the_as_of_date_holds() -> None:
    assert is_current(date(2026, 12, 5), AS_OF, 12)
    with pytest.raises(ValueError, match="months"):
        is_current(AS_OF, AS_OF, 0)


def test_a_held_assignment_has_words_for_its_rule_and_step() -> None:
    from fhirpanel.domain.texts import rule_label, step_text

    assert rule_label("confirmed") == "Confirmed, kept"
    assert step_text("confirmed").startswith("Kept by a current confirmation")
