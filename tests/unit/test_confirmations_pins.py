"""A held (confirmed) assignment pinned field by field (domain/attribution/pipeline.py, issue 17
items 1-2), as mutation testing asked: its rule, step, window, confirmation and role, the visits
it shows (the pipeline's widest window only), the proposed move's window, and the patients after
a held one still attributed."""

from __future__ import annotations

from datetime import date

from fhirpanel.domain.confirmations import ConfirmedAssignment
from tests.unit.test_attribution import attribute, build, days_ago, doc, pid, visit


def test_a_held_assignment_field_by_field_and_the_patients_after_it() -> None:
    population = build(
        [
            visit("e0", pid(1), doc(1), days_ago(900)),  # outside the 18-month window
            visit("e1", pid(1), doc(1), days_ago(420)),
            visit("e2", pid(1), doc(2), days_ago(90)),
            visit("e3", pid(1), doc(2), days_ago(60)),
            visit("e4", pid(1), doc(2), days_ago(30)),
            visit("e5", pid(2), doc(1), days_ago(20)),
        ]
    )
    confirmed = {pid(1): ConfirmedAssignment(pid(1), doc(1), patient_on=date(2026, 6, 1))}
    result = attribute(population, confirmed=confirmed)
    by_patient = result.by_patient()
    held = by_patient[pid(1)]
    assert (held.status, held.practitioner, held.rule, held.step) == (
        "assigned",
        doc(1),
        "confirmed",
        "confirmed",
    )
    assert (held.window_months, held.confirmation, held.practitioner_role) == (
        18,
        "confirmed",
        None,
    )
    assert held.visits == ((doc(1), 1), (doc(2), 3))  # e0 is outside the widest window
    (move,) = result.proposed_moves
    assert (move.rule, move.window_months, move.held_by) == ("plurality", 18, ("patient",))
    # The patient after the held one is attributed as usual.
    assert [a.patient for a in result.assignments] == [pid(1), pid(2)]
    assert (by_patient[pid(2)].practitioner, by_patient[pid(2)].rule) == (doc(1), "single-provider")
