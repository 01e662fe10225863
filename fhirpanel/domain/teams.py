"""Care teams: clinicians grouped into a team, each member with a role (fhirpanel issue 17 item
5; docs/methods.md s.3.9), from `mappings/teams.toml`.

A member's role is a coding of the US Core CareTeam Provider Roles value set
(http://hl7.org/fhir/us/core/ValueSet/us-core-careteam-provider-roles, US Core 3.1.1: every NUCC
Health Care Provider Taxonomy code, and SNOMED CT descendants of 223366009 Healthcare
professional and of 224930009 Services), so it can go on a US Core CareTeam participant as it
is. A clinician may be on several teams; a panel is viewed per team by summing its members'
panels. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fhirpanel.errors import MappingError

NUCC = "http://nucc.org/provider-taxonomy"
SNOMED = "http://snomed.info/sct"
ROLE_SYSTEMS = (NUCC, SNOMED)  # the systems of US Core CareTeam Provider Roles
TEAM_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class Role:
    """A member's role: one coding of US Core CareTeam Provider Roles."""

    key: str  # the file's name for it: "registered_nurse"
    system: str
    code: str
    display: str

    def as_coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class Member:
    practitioner: str  # Practitioner/<id>
    role: Role


@dataclass(frozen=True)
class Team:
    id: str  # lower case letters, digits and hyphens: used in URLs
    name: str
    members: tuple[Member, ...]  # sorted by practitioner

    @property
    def practitioners(self) -> tuple[str, ...]:
        return tuple(m.practitioner for m in self.members)

    def others(self, practitioner: str) -> tuple[Member, ...]:
        """The members besides `practitioner` (the patient's PCP on a CareTeam)."""
        return tuple(m for m in self.members if m.practitioner != practitioner)


@dataclass(frozen=True)
class Teams:
    teams: tuple[Team, ...] = ()  # sorted by id

    @classmethod
    def create(
        cls,
        roles: Mapping[str, tuple[str, str, str]],
        teams: Sequence[tuple[str, str, Sequence[tuple[str, str]]]],
    ) -> Teams:
        """From the file: roles (key -> system, code, display) and teams (id, name, members as
        (practitioner, role key)). Refuses an unknown system or role, a bad id, a team named
        twice, a practitioner listed twice on one team, or a reference that is no
        Practitioner."""
        typed: dict[str, Role] = {}
        for key, (system, code, display) in sorted(roles.items()):
            if system not in ROLE_SYSTEMS:
                raise MappingError(
                    f"roles.{key}.system: {system!r} is not one of {', '.join(ROLE_SYSTEMS)} "
                    "(US Core CareTeam Provider Roles)"
                )
            if not code.strip() or code != code.strip():
                raise MappingError(f"roles.{key}.code: {code!r} is not a code")
            typed[key] = Role(key, system, code, display)
        out: dict[str, Team] = {}
        for number, (team_id, name, members) in enumerate(teams, start=1):
            here = f"teams[{number}]"
            if not team_id or set(team_id) - TEAM_ID_CHARS or len(team_id) > 64:
                raise MappingError(
                    f"{here}.id: {team_id!r} must be 1-64 lower-case letters, digits or hyphens"
                )
            if team_id in out:
                raise MappingError(f"{here}.id: {team_id!r} is used twice")
            listed: dict[str, Member] = {}
            for m, (practitioner, role) in enumerate(members, start=1):
                where = f"{here}.members[{m}]"
                if not practitioner.startswith("Practitioner/") or practitioner.count("/") != 1:
                    raise MappingError(
                        f"{where}.practitioner: {practitioner!r} is not a Practitioner reference"
                    )
                if practitioner == "Practitioner/":
                    raise MappingError(f"{where}.practitioner: the id is missing")
                if practitioner in listed:
                    raise MappingError(f"{where}.practitioner: {practitioner} is listed twice")
                if role not in typed:
                    known = ", ".join(sorted(typed)) or "none defined"
                    raise MappingError(f"{where}.role: {role!r} is not a role ({known})")
                listed[practitioner] = Member(practitioner, typed[role])
            out[team_id] = Team(team_id, name, tuple(listed[p] for p in sorted(listed)))
        return cls(tuple(out[t] for t in sorted(out)))

    def get(self, team_id: str) -> Team | None:
        return next((t for t in self.teams if t.id == team_id), None)

    def of(self, practitioner: str) -> tuple[Team, ...]:
        """The teams a clinician is on, by id."""
        return tuple(t for t in self.teams if practitioner in t.practitioners)

    def colleagues(self, practitioner: str) -> tuple[Member, ...]:
        """Everyone on a team with `practitioner`, besides them, once each (the first team by
        id names the role), sorted by practitioner."""
        found: dict[str, Member] = {}
        for team in self.of(practitioner):
            for member in team.others(practitioner):
                found.setdefault(member.practitioner, member)
        return tuple(found[p] for p in sorted(found))


__all__ = ["NUCC", "ROLE_SYSTEMS", "SNOMED", "Member", "Role", "Team", "Teams"]
