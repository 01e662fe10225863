"""Care teams from the file (domain/teams.py) at their bounds, as mutation testing asked: a team
id of 64 characters and of 65, a reference without an id, the role a member keeps, and the roles
named when a member's role is unknown."""

from __future__ import annotations

import pytest

from fhirpanel.domain.teams import NUCC, Teams
from fhirpanel.errors import MappingError

ROLES = {
    "registered_nurse": (NUCC, "163W00000X", "Registered Nurse"),
    "pharmacist": (NUCC, "183500000X", "Pharmacist"),
}


def test_a_team_id_may_have_64_characters_not_65() -> None:
    (team,) = Teams.create(ROLES, [("a" * 64, "Long", [])]).teams
    assert team.id == "a" * 64
    with pytest.raises(MappingError, match=r"teams\[1\]\.id"):
        Teams.create(ROLES, [("a" * 65, "Too long", [])])


def test_a_member_keeps_the_role_by_its_key() -> None:
    teams = Teams.create(ROLES, [("t", "T", [("Practitioner/n1", "registered_nurse")])])
    (member,) = teams.teams[0].members
    assert (member.role.key, member.role.code) == ("registered_nurse", "163W00000X")


def test_a_reference_without_an_id_is_refused() -> None:
    with pytest.raises(MappingError, match=r"members\[1\]\.practitioner: the id is missing"):
        Teams.create(ROLES, [("t", "T", [("Practitioner/", "pharmacist")])])


def test_an_unknown_role_names_the_roles_there_are() -> None:
    with pytest.raises(
        MappingError, match=r"'doctor' is not a role \(pharmacist, registered_nurse\)"
    ):
        Teams.create(ROLES, [("t", "T", [("Practitioner/n1", "doctor")])])
    with pytest.raises(MappingError, match=r"is not a role \(none defined\)"):
        Teams.create({}, [("t", "T", [("Practitioner/n1", "doctor")])])
