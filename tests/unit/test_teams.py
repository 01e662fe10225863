"""Care teams from mappings/teams.toml (docs/methods.md s.3.9), open or closed panels from
capacity.toml's [panels], and the review cycle and readiness measures (s.3.8)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from fhirpanel.config import Settings
from fhirpanel.domain.review_cycle import (
    CURRENT,
    DUE,
    NEVER,
    OVERDUE,
    months_after,
    readiness,
    review_due,
    reviews_due,
)
from fhirpanel.domain.teams import NUCC, SNOMED, Teams
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables
from tests.unit.test_mappings import copy_of_mappings, edit, load_error, with_mappings

ROLES = {
    "physician": (NUCC, "207Q00000X", "Family Medicine Physician"),
    "nurse": (NUCC, "163W00000X", "Registered Nurse"),
    "pro": (SNOMED, "224535009", "Registered nurse"),
}


def teams(*rows: tuple[str, str, list[tuple[str, str]]]) -> Teams:
    return Teams.create(ROLES, list(rows))


# --------------------------------------------------------------------------- teams


def test_a_team_lists_its_members_with_roles_and_colleagues_span_teams() -> None:
    found = teams(
        ("blue", "Blue", [("Practitioner/d2", "physician"), ("Practitioner/n1", "nurse")]),
        ("aa-1", "First", [("Practitioner/d2", "physician"), ("Practitioner/p1", "pro")]),
    )
    assert [t.id for t in found.teams] == ["aa-1", "blue"]
    blue = found.get("blue")
    assert blue is not None and blue.practitioners == ("Practitioner/d2", "Practitioner/n1")
    assert blue.others("Practitioner/d2")[0].role.as_coding() == {
        "system": NUCC,
        "code": "163W00000X",
        "display": "Registered Nurse",
    }
    assert [t.id for t in found.of("Practitioner/d2")] == ["aa-1", "blue"]
    assert [m.practitioner for m in found.colleagues("Practitioner/d2")] == [
        "Practitioner/n1",
        "Practitioner/p1",
    ]
    assert found.colleagues("Practitioner/nobody") == ()
    assert found.get("red") is None


@pytest.mark.parametrize(
    ("roles", "rows", "message"),
    [
        ({"x": ("http://loinc.org", "1", "x")}, [], "roles.x.system: 'http://loinc.org' is not"),
        ({"x": (NUCC, " 1", "x")}, [], "roles.x.code: ' 1' is not a code"),
        (ROLES, [("Blue", "b", [("Practitioner/a", "nurse")])], "teams[1].id: 'Blue' must be"),
        (
            ROLES,
            [("b", "b", [("Practitioner/a", "nurse")]), ("b", "c", [("Practitioner/c", "nurse")])],
            "teams[2].id: 'b' is used twice",
        ),
        (ROLES, [("b", "b", [("Patient/a", "nurse")])], "is not a Practitioner reference"),
        (
            ROLES,
            [("b", "b", [("Practitioner/a", "nurse"), ("Practitioner/a", "pro")])],
            "teams[1].members[2].practitioner: Practitioner/a is listed twice",
        ),
        (ROLES, [("b", "b", [("Practitioner/a", "chef")])], "members[1].role: 'chef' is not a"),
    ],
)
def test_bad_teams_are_refused_with_where(
    roles: dict[str, tuple[str, str, str]], rows: list, message: str
) -> None:
    with pytest.raises(MappingError, match=None) as caught:
        Teams.create(roles, rows)
    assert message in str(caught.value)


def test_the_shipped_teams_file_defines_roles_and_no_team(tables: Tables) -> None:
    assert tables.teams.teams == ()


def test_a_practice_lists_its_teams_and_closes_a_panel(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    with (directory / "teams.toml").open("a", encoding="utf-8") as out:
        out.write(
            '\n[[teams]]\nid = "blue"\nname = "Blue team"\n'
            '[[teams.members]]\npractitioner = "Practitioner/d1"\nrole = "physician"\n'
            '[[teams.members]]\npractitioner = "Practitioner/n1"\nrole = "registered_nurse"\n'
        )
    with (directory / "capacity.toml").open("a", encoding="utf-8") as out:
        out.write(
            '\n[panels."Practitioner/d1"]\nopen = false\n[panels."Practitioner/d2"]\nopen = true\n'
        )
    loaded = Tables.load(with_mappings(directory))
    (blue,) = loaded.teams.teams
    assert (blue.id, blue.name, blue.practitioners) == (
        "blue",
        "Blue team",
        ("Practitioner/d1", "Practitioner/n1"),
    )
    assert blue.members[1].role.code == "163W00000X"
    assert loaded.method.capacities.closed == frozenset({"Practitioner/d1"})
    assert loaded.method.capacities.placement.closed == frozenset({"Practitioner/d1"})


def test_a_bad_panel_or_team_entry_names_the_file(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    with (directory / "capacity.toml").open("a", encoding="utf-8") as out:
        out.write('\n[panels."d1"]\nopen = false\n')
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'capacity.toml'}: panels: 'd1' is not a Practitioner reference"
    )
    directory = copy_of_mappings(tmp_path / "again")
    edit(directory / "teams.toml", 'code = "163W00000X"', "code = 163")
    assert "teams.toml: roles.registered_nurse.code" in load_error(with_mappings(directory))


# --------------------------------------------------------------------------- review cycle


def test_months_after_clamps_to_the_month_end() -> None:
    assert months_after(date(2026, 11, 30), 3) == date(2027, 2, 28)
    assert months_after(date(2026, 1, 15), 12) == date(2027, 1, 15)
    with pytest.raises(ValueError):
        months_after(date(2026, 1, 1), -1)


def test_a_panel_is_due_quarterly_after_its_last_review() -> None:
    today = date(2026, 12, 5)
    assert review_due("d1", None, 3, today).state == NEVER
    assert review_due("d1", date(2026, 9, 5), 3, today).state == DUE
    late = review_due("d1", date(2026, 8, 1), 3, today)
    assert (late.state, late.due_on, late.is_due) == (OVERDUE, date(2026, 11, 1), True)
    fresh = review_due("d1", date(2026, 11, 20), 3, today)
    assert (fresh.state, fresh.due_on, fresh.is_due) == (CURRENT, date(2027, 2, 20), False)
    assert review_due("d1", date(2026, 11, 20), 1, today).state == CURRENT
    with pytest.raises(ValueError):
        review_due("d1", None, 0, today)


def test_reviews_due_lists_the_most_pressing_first() -> None:
    today = date(2026, 12, 5)
    rows = reviews_due(
        ["d3", "d1", "d2", "d4"],
        {"d1": date(2026, 11, 1), "d2": date(2026, 6, 1), "d3": date(2026, 8, 1)},
        3,
        today,
    )
    assert [(r.practitioner, r.state) for r in rows] == [
        ("d4", NEVER),
        ("d2", OVERDUE),
        ("d3", OVERDUE),
        ("d1", CURRENT),
    ]


def test_readiness_shares_and_panel_counts() -> None:
    rows = reviews_due(
        ["d1", "d2", "d3"], {"d1": date(2026, 11, 1), "d2": date(2026, 1, 1)}, 3, date(2026, 12, 5)
    )
    measures = readiness(200, 150, 75, 30, rows)
    assert measures.share_assigned == 0.75
    assert measures.share_confirmed_by_clinician == 0.5
    assert measures.share_confirmed_by_patient == 0.2
    assert (measures.panels, measures.panels_due, measures.panels_overdue) == (3, 2, 1)
    assert measures.panels_never_reviewed == 1
    empty = readiness(0, 0, 0, 0, ())
    assert empty.share_assigned is None and empty.share_confirmed_by_patient is None
    with pytest.raises(ValueError):
        readiness(10, 11, 0, 0, ())


def test_the_review_period_is_a_setting_with_its_environment_variable() -> None:
    assert Settings.load(env={}).review.panel_review_months == 3
    env = {"FHIRPANEL_REVIEW_PANEL_REVIEW_MONTHS": "6"}
    assert Settings.load(env=env).review.panel_review_months == 6
