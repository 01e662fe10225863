"""The brake on sudden change: which figures hold a pass, and what an acceptance lets through."""

from __future__ import annotations

import pytest

from fhirpanel.config import SafetySettings
from fhirpanel.errors import ChangeHeld, ExitCode
from fhirpanel.jobs import brake

LIMITS = SafetySettings()  # 5% removed, 5% ended, 10% changed, at least 10


def test_a_lost_page_of_patients_is_held_with_its_figures() -> None:
    change = brake.figures(LIMITS, removed=(100, 300), changed=(3, 300))
    with pytest.raises(ChangeHeld) as held:
        brake.check(change, LIMITS, what="the full refresh")
    assert held.value.exit_code == ExitCode.HELD == 16
    assert held.value.figures["removed_patients"] == {
        "count": 100,
        "of": 300,
        "share": 0.3333,
        "limit": 0.05,
    }
    assert held.value.figures["changed_assignments"]["count"] == 3
    message = str(held.value)
    assert "remove 100 of 300 stored patients (33.3%, limit 5%)" in message
    assert "stored assignments" not in message  # 3 changes: under the minimum
    assert "\n" not in message


def test_ordinary_churn_passes() -> None:
    # 12 of 3,000 removed (0.4%) and 250 of 3,000 changed (8.3%): a normal night.
    brake.check(brake.figures(LIMITS, removed=(12, 3000), changed=(250, 3000)), LIMITS, what="x")


def test_small_practices_are_not_held_below_the_minimum_count() -> None:
    # 9 of 40 is 22%, but fewer than min_count changes never hold a pass.
    brake.check(brake.figures(LIMITS, changed=(9, 40), ended=(9, 40)), LIMITS, what="x")
    with pytest.raises(ChangeHeld):
        brake.check(brake.figures(LIMITS, changed=(10, 40)), LIMITS, what="x")


def test_a_first_pass_with_nothing_stored_is_never_held() -> None:
    brake.check(
        brake.figures(LIMITS, removed=(0, 0), changed=(0, 0), ended=(0, 0)), LIMITS, what="x"
    )


def test_ended_participations_have_their_own_limit() -> None:
    with pytest.raises(ChangeHeld) as held:
        brake.check(
            brake.figures(LIMITS, ended=(218, 248), changed=(0, 248)), LIMITS, what="run --write"
        )
    assert "end 218 of 248 active PCP participations (87.9%, limit 5%)" in str(held.value)


def test_accept_all_lets_anything_through() -> None:
    brake.check(brake.figures(LIMITS, removed=(300, 300)), LIMITS, what="x", accept_all=True)


def test_an_acceptance_covers_the_same_change_but_not_a_larger_one() -> None:
    accepted = {"removed_patients": {"count": 100, "of": 300}}
    brake.check(brake.figures(LIMITS, removed=(100, 300)), LIMITS, what="x", accepted=accepted)
    brake.check(brake.figures(LIMITS, removed=(105, 300)), LIMITS, what="x", accepted=accepted)
    with pytest.raises(ChangeHeld):
        brake.check(brake.figures(LIMITS, removed=(106, 300)), LIMITS, what="x", accepted=accepted)
    # Accepting removals says nothing about a flood of changed assignments.
    with pytest.raises(ChangeHeld):
        brake.check(
            brake.figures(LIMITS, removed=(100, 300), changed=(200, 300)),
            LIMITS,
            what="x",
            accepted=accepted,
        )


def test_limits_come_from_settings() -> None:
    loose = SafetySettings(max_removed_patients=0.5, min_count=1)
    brake.check(brake.figures(loose, removed=(100, 300)), loose, what="x")
    strict = SafetySettings(max_changed_assignments=0.01, min_count=1)
    with pytest.raises(ChangeHeld):
        brake.check(brake.figures(strict, changed=(4, 300)), strict, what="x")


def test_changes_a_person_made_do_not_count_against_the_brake() -> None:
    from fhirpanel.domain.attribution import Assignment

    stored = {
        "p1": ("assigned", "prac-1"),
        "p2": ("unassigned", None),
        "p3": ("assigned", "prac-1"),
        "p4": ("assigned", "prac-2"),
    }
    assignments = [
        Assignment("p1", "assigned", "prac-2", rule="plurality"),  # the rules moved p1: counts
        Assignment("p2", "assigned", "prac-3", rule="manual"),  # an accepted suggestion
        Assignment("p3", "assigned", "prac-2", rule="manual"),  # an override
        Assignment("p4", "assigned", "prac-2", rule="plurality"),  # unchanged
        Assignment("p5", "assigned", "prac-1", rule="plurality"),  # new: not a stored change
    ]
    assert brake.changed_assignments(assignments, stored) == 1


def test_a_move_a_confirmation_held_back_is_no_change() -> None:
    from fhirpanel.domain.attribution import Assignment

    stored = {"Patient/p1": ("assigned", "Practitioner/d1")}
    held = Assignment("Patient/p1", "assigned", "Practitioner/d1", rule="confirmed")
    moved = Assignment("Patient/p1", "assigned", "Practitioner/d2", rule="plurality")
    assert brake.changed_assignments([held], stored) == 0
    assert brake.changed_assignments([moved], stored) == 1


def test_participations_a_person_ended_do_not_count_either(tables: object) -> None:
    """A panel transition accepted in bulk moves many patients by override at once: their
    CareTeams' ended PCP participations count among those open, not among those ended."""
    from fhirpanel.tables import Tables
    from fhirpanel.writeback.bound import pcp_figures
    from fhirpanel.writeback.identity import PCP_PARTICIPANT_PREFIX
    from fhirpanel.writeback.plan import PlannedWrite

    assert isinstance(tables, Tables)
    codes = tables.writeback.codes
    role = [{"coding": [codes.role_for("physician")]}]

    def team(member: str, end: str | None = None) -> dict[str, object]:
        period = {"start": "2026-01-01", **({"end": end} if end else {})}
        participant = {
            "id": f"{PCP_PARTICIPANT_PREFIX}1",
            "role": role,
            "member": {"reference": member},
            "period": period,
        }
        return {"resourceType": "CareTeam", "status": "active", "participant": [participant]}

    def moved(patient: str) -> PlannedWrite:
        before = team("Practitioner/prac-8")
        after = team("Practitioner/prac-8", end="2026-11-22")
        return PlannedWrite("CareTeam", patient, patient, lambda *_: None, before, after, "update")

    items = [moved("Patient/p1"), moved("Patient/p2"), moved("Patient/p3")]
    assert pcp_figures(items, codes) == ((3, 3), (3, 3))
    by_override = {"Patient/p1", "Patient/p2"}
    assert pcp_figures(items, codes, by_override) == ((1, 3), (1, 3))
