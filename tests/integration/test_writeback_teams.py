"""Care-team members on the written CareTeam (docs/methods.md s.6.3), against the sandbox FHIR
server loaded with the committed population (the style of test_writeback.py): the PCP's
colleagues from mappings/teams.toml are listed besides the PCP with their roles; a second run
writes nothing; a colleague who leaves the team has their participation ended and a new one is
added; with no teams every team participation ends; the PCP participant is as before."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhirpanel.config import Settings
from fhirpanel.domain.teams import NUCC, Teams
from fhirpanel.errors import MappingError
from fhirpanel.fhir.client import FhirClient
from fhirpanel.tables import Tables, WritebackTables
from fhirpanel.writeback.identity import PCP_PARTICIPANT_PREFIX, TEAM_PARTICIPANT_PREFIX
from tests.conftest import AS_OF
from tests.integration.test_writeback import (  # noqa: F401 - pytest fixtures
    analyse,
    by_identifier,
    client,
    loaded,
    ours,
    write,
)
from tests.unit.test_mappings import copy_of_mappings, load_error, with_mappings

ONE, FIVE, SEVEN = "Practitioner/prac-0001", "Practitioner/prac-0005", "Practitioner/prac-0007"
ROLES = {
    "physician": (NUCC, "207Q00000X", "Family Medicine Physician"),
    "nurse_practitioner": (NUCC, "363L00000X", "Nurse Practitioner"),
}


def with_teams(tables: Tables, *members: tuple[str, str]) -> WritebackTables:
    teams = Teams.create(ROLES, [("blue", "Blue team", list(members))] if members else [])
    return dataclasses.replace(tables.writeback, teams=teams)


def teams_by_patient(fhir: FhirClient) -> dict[str, dict[str, Any]]:
    return {t["subject"]["reference"]: t for t in by_identifier(ours(fhir, "CareTeam")).values()}


def team_members(team: dict[str, Any], *, open_only: bool = True) -> dict[str, dict[str, Any]]:
    return {
        p["member"]["reference"]: p
        for p in team["participant"]
        if p.get("id", "").startswith(TEAM_PARTICIPANT_PREFIX)
        and not (open_only and p["period"].get("end"))
    }


def test_the_pcps_team_is_on_the_care_team_and_follows_the_team(
    client: FhirClient,  # noqa: F811 - the fixture
    tables: Tables,
) -> None:
    outcome = analyse(client)
    pcp_of = {a.patient: a.practitioner for a in outcome.attribution.assignments}
    blue = with_teams(tables, (ONE, "physician"), (FIVE, "nurse_practitioner"))
    first = write(outcome, client, blue)
    assert first.issues == []
    teams = teams_by_patient(client)
    on_blue = Counter()
    for patient, team in teams.items():
        get_fhir_model_class("CareTeam").model_validate(team)
        pcp = [p for p in team["participant"] if p["id"].startswith(PCP_PARTICIPANT_PREFIX)]
        assert len(pcp) == 1 and pcp[0]["period"] == {"start": AS_OF}  # as without teams
        members = team_members(team)
        if pcp_of[patient] == ONE:
            assert list(members) == [FIVE]
            assert members[FIVE] == {
                "id": f"{TEAM_PARTICIPANT_PREFIX}1",
                "role": [
                    {
                        "coding": [
                            {"system": NUCC, "code": "363L00000X", "display": "Nurse Practitioner"}
                        ]
                    }
                ],
                "member": {"reference": FIVE},
                "period": {"start": AS_OF},
            }
            assert "Nurse Practitioner: Practitioner/prac-0005" in team["text"]["div"]
        elif pcp_of[patient] == FIVE:
            assert list(members) == [ONE]
            assert members[ONE]["role"][0]["coding"][0]["code"] == "207Q00000X"
        else:
            assert members == {}
        on_blue[pcp_of[patient]] += bool(members)
    assert on_blue[ONE] > 10 and on_blue[FIVE] > 10

    # The same team again: nothing written.
    second = write(analyse(client), client, blue)
    assert second.written == 0 and second.write_requests == 0

    # prac-0005 leaves the team, prac-0007 joins: ended and added, once.
    changed = with_teams(tables, (ONE, "physician"), (SEVEN, "physician"))
    third = write(analyse(client), client, changed)
    assert third.issues == []
    expected = on_blue[ONE] + on_blue[FIVE] + sum(1 for p in pcp_of.values() if p == SEVEN)
    assert third.counts.get("CareTeam", "update") == expected
    teams = teams_by_patient(client)
    for patient, team in teams.items():
        members = team_members(team)
        every = team_members(team, open_only=False)
        if pcp_of[patient] == ONE:
            assert list(members) == [SEVEN]
            assert every[FIVE]["period"] == {"start": AS_OF, "end": AS_OF}
            assert members[SEVEN]["id"] == f"{TEAM_PARTICIPANT_PREFIX}2"
        elif pcp_of[patient] == FIVE:
            assert members == {} and every[ONE]["period"]["end"] == AS_OF
        elif pcp_of[patient] == SEVEN:
            assert list(members) == [ONE]
    assert write(analyse(client), client, changed).written == 0

    # No teams: every team participation ends; the PCPs stay.
    fourth = write(analyse(client), client, tables.writeback)
    assert fourth.counts.get("CareTeam", "update") == on_blue[ONE] + sum(
        1 for p in pcp_of.values() if p == SEVEN
    )
    for team in teams_by_patient(client).values():
        assert team_members(team) == {} and team["status"] == "active"
    assert write(analyse(client), client, tables.writeback).written == 0


def test_a_team_role_may_not_be_the_pcp_participants_code(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    with (directory / "teams.toml").open("a", encoding="utf-8") as out:
        out.write(
            '\n[roles.pcp]\nsystem = "http://snomed.info/sct"\ncode = "446050000"\n'
            'display = "Primary care physician"\n'
            '[[teams]]\nid = "blue"\nname = "Blue"\n'
            '[[teams.members]]\npractitioner = "Practitioner/d1"\nrole = "pcp"\n'
        )
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'teams.toml'}: roles.pcp: 446050000 is the PCP participant's role in "
        "writeback_codes.toml; use another code for a team role"
    )
    with pytest.raises(MappingError):
        Tables.load(with_mappings(directory))
    assert Tables.load(Settings.load(env={})).teams == Teams()
