"""The patient's primary-care CareTeam (US Core CareTeam) and the clinician it names
(docs/methods.md s.6)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import PERSON_STATUSES, Assignment
from fhirpanel.domain.records import Population, PractitionerRoleRecord
from fhirpanel.domain.teams import Member
from fhirpanel.tables.writeback import WritebackCodes
from fhirpanel.writeback.builders.common import (
    concept,
    day,
    div,
    esc,
    identifiers,
    meta,
    order,
    period_start,
    start_resource,
    ul,
    validate_resource,
    with_concepts,
)
from fhirpanel.writeback.identity import (
    CARE_TEAM_KIND,
    PCP_PARTICIPANT_PREFIX,
    TEAM_PARTICIPANT_PREFIX,
    Resource,
    has_our_id,
    identifier_value,
    without_id,
)

_ID_SUFFIX = re.compile(r"(\d+)$")
# R4 CareTeam has no status reason and its participant no reason: why a status a person
# recorded ended the PCP participation goes into a CareTeam.note (docs/methods.md s.6.2).
_STATUS_WORDS = {
    PERSON_STATUSES["moved-away"]: "the patient moved away",
    PERSON_STATUSES["transferred-care"]: "the patient transferred their care",
    PERSON_STATUSES["dismissed"]: "the patient was dismissed from the practice",
    PERSON_STATUSES["deceased"]: "the patient died (recorded by the practice)",
}


@dataclass(frozen=True)
class ClinicianInfo:
    """The assigned PCP as the CareTeam names it."""

    practitioner: str
    role: str | None  # PractitionerRole/..., when known
    kind: str  # physician | nurse_practitioner | physician_assistant
    organization: str | None = None

    @property
    def member(self) -> str:
        """CareTeam.participant.member: the PractitionerRole when known, else the Practitioner."""
        return self.role or self.practitioner

    def refers_to(self, reference: str | None) -> bool:
        return reference is not None and reference in (self.practitioner, self.role)


class ClinicianDirectory:
    """Looks up an assignment's clinician in the population: role, kind, organisation."""

    def __init__(self, population: Population, codes: WritebackCodes) -> None:
        self._population = population
        self._kinds = codes.kinds
        roles: dict[str, list[PractitionerRoleRecord]] = {}
        for role in sorted(population.roles.values(), key=lambda r: r.id):
            if role.practitioner and role.active:
                roles.setdefault(role.practitioner, []).append(role)
        self._roles_of = roles

    def resolve(self, assignment: Assignment) -> ClinicianInfo | None:
        """None unless the patient is assigned. The role is the one on the deciding visits, else
        the clinician's only active PractitionerRole; the organisation is the role's, else the
        patient's managing organisation."""
        if assignment.status != "assigned" or not assignment.practitioner:
            return None
        practitioner = assignment.practitioner
        all_roles = self._roles_of.get(practitioner, [])
        role = self._population.roles.get(assignment.practitioner_role or "")
        role_ref = assignment.practitioner_role
        if role_ref is None and len(all_roles) == 1:
            role, role_ref = all_roles[0], all_roles[0].id
        kind = self._kinds.kind_of(
            self._population.practitioners.get(practitioner),
            [role] if role is not None else all_roles,
        )
        organization = role.organization if role is not None else None
        if organization is None:
            patient = self._population.patients.get(assignment.patient)
            organization = patient.managing_organization if patient else None
        return ClinicianInfo(
            practitioner=practitioner, role=role_ref, kind=kind, organization=organization
        )


def build_care_team(
    assignment: Assignment,
    existing: Mapping[str, Any] | None,
    as_of: date,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
    clinician: ClinicianInfo | None = None,
    problems: list[str] | None = None,
    colleagues: Sequence[Member] = (),
    team_roles: Sequence[Mapping[str, str]] = (),
) -> Resource | None:
    """The patient's primary-care CareTeam (US Core CareTeam).

    `colleagues`: the PCP's care-team colleagues (mappings/teams.toml), each an open participant
    with their role (US Core CareTeam Provider Roles) and `period.start` = as-of, known by
    element id `fhirpanel-team-N` (or, on a server that drops element ids, by content with one
    of `team_roles`). A colleague who leaves the team, a changed role, or a new PCP on another
    team ends theirs (`period.end` = as-of); so does the patient leaving every panel. The same
    team again changes nothing.

    Assigned: active, with an open participant for the PCP (role by kind of clinician, member the
    PractitionerRole when known). A new PCP closes the previous fhirpanel participant
    (`period.end` = as-of) and is added with `period.start` = as-of. Unassigned or excluded: the
    team becomes inactive and its open fhirpanel participants end; None when there is no team.
    Participants fhirpanel did not add are never touched. An entered-in-error team is left alone
    (None).

    fhirpanel's participants are known by their element id (`fhirpanel-pcp-N`); on a server
    that drops element ids (no participant keeps one of ours), by their content: exactly the
    role, member and period fhirpanel writes. Growth is refused, not repeated: a second open copy
    of our participant for the PCP is left as it is, and a participant for the PCP that looks
    like ours but was changed by the server stops another from being added; both are appended to
    `problems` (the writer records them as issues).
    """
    if existing is not None and existing.get("status") == "entered-in-error":
        return None
    assigned = assignment.status == "assigned" and bool(assignment.practitioner)
    if not assigned and existing is None:
        return None
    notes = problems if problems is not None else []
    today = day(as_of)
    team = start_resource(existing, "CareTeam")
    participants: list[dict[str, Any]] = [
        p for p in team.get("participant") or () if isinstance(p, dict)
    ]
    ours = _our_participants(participants, codes)
    open_ours = [p for p in ours if not (p.get("period") or {}).get("end")]
    ours_team = _team_participants(participants, ours, team_roles)

    if assigned:
        info = clinician or ClinicianInfo(
            practitioner=str(assignment.practitioner),
            role=assignment.practitioner_role,
            kind=codes.kinds.default_kind,
        )
        for_pcp = [p for p in open_ours if info.refers_to((p.get("member") or {}).get("reference"))]
        current = for_pcp[0] if for_pcp else None
        if len(for_pcp) > 1:
            notes.append(
                f"{len(for_pcp)} open copies of fhirpanel's participant for "
                f"{info.member}; left as they are, none added"
            )
        for p in open_ours:
            if not any(p is q for q in for_pcp):
                _end_participant(p, today)
        if current is None:
            lookalike = _participant_lookalike(participants, ours, info, codes)
            if lookalike is not None:
                notes.append(
                    f"a participant for {info.member} that looks like fhirpanel's own "
                    "is on the team but differs from what fhirpanel writes (the server "
                    "may rewrite it); not adding another"
                )
            else:
                participants.append(
                    {
                        "id": f"{PCP_PARTICIPANT_PREFIX}{_next_participant_number(ours)}",
                        "role": [concept(codes.role_for(info.kind))],
                        "member": {"reference": info.member},
                        "period": {"start": today},
                    }
                )
        _sync_team(participants, ours_team, colleagues, today)
        team["status"] = "active"
        team["period"] = {"start": period_start(existing) or today}
        if info.organization:
            team["managingOrganization"] = [{"reference": info.organization}]
    else:
        for p in open_ours:
            _end_participant(p, today)
        _sync_team(participants, ours_team, (), today)
        why = _STATUS_WORDS.get(assignment.reason or "")
        if open_ours and why and assignment.status == "excluded":
            # Once, when the participation ends: later passes end nothing and add nothing.
            note = {
                "authorString": cfg.author_name,
                "time": today,
                "text": f"Primary-care participation ended on {today}: {why}.",
            }
            team["note"] = [*(team.get("note") or ()), note]
        team["status"] = "inactive"
        period = dict(team.get("period") or {})
        period.setdefault("start", today)
        period.setdefault("end", max(today, str(period["start"])))
        team["period"] = period

    value = identifier_value(CARE_TEAM_KIND, assignment.patient)
    team["identifier"] = identifiers(existing, cfg, value)
    team["meta"] = meta(existing, cfg, codes.care_team_profile)
    team["category"] = with_concepts(team.get("category"), [codes.care_team_category])
    team["name"] = team.get("name") or codes.care_team_name
    team["subject"] = {"reference": assignment.patient}
    team["participant"] = participants
    team["text"] = _care_team_text(team, codes)
    team = order(
        team,
        (
            "resourceType",
            "id",
            "meta",
            "text",
            "identifier",
            "status",
            "category",
            "name",
            "subject",
            "period",
            "participant",
            "managingOrganization",
        ),
    )
    return validate_resource(team)


def open_pcp_members(team: Mapping[str, Any] | None, codes: WritebackCodes) -> list[str]:
    """The member references of fhirpanel's open PCP participants on a CareTeam (by element id,
    or by content on a server that drops element ids); [] for none or an inactive team."""
    if team is None or team.get("status") == "entered-in-error":
        return []
    participants = [p for p in team.get("participant") or () if isinstance(p, dict)]
    return [
        str((p.get("member") or {}).get("reference"))
        for p in _our_participants(participants, codes)
        if not (p.get("period") or {}).get("end")
    ]


def _team_participants(
    participants: Sequence[dict[str, Any]],
    pcp: Sequence[dict[str, Any]],
    roles: Sequence[Mapping[str, str]],
) -> list[dict[str, Any]]:
    """fhirpanel's team participants: by element id; when none carries one of ours (a server
    that drops element ids), the id-less ones, not the PCP's, shaped exactly as fhirpanel writes
    them with a team role."""
    by_id = [p for p in participants if has_our_id(p, TEAM_PARTICIPANT_PREFIX)]
    if by_id or not roles:
        return by_id
    concepts = [[concept(dict(coding))] for coding in roles]
    return [
        p
        for p in participants
        if without_id(p)
        and not any(p is q for q in pcp)
        and _our_shape(p)
        and p.get("role") in concepts
    ]


def _sync_team(
    participants: list[dict[str, Any]],
    ours: Sequence[dict[str, Any]],
    team: Sequence[Member],
    today: str,
) -> None:
    """One open participant per colleague in `team`, with their role: the open ones that still
    fit stay as they are, the others end, the missing ones are added (by practitioner)."""
    wanted = {m.practitioner: m for m in team}
    kept: set[str] = set()
    for p in ours:
        if (p.get("period") or {}).get("end"):
            continue
        ref = (p.get("member") or {}).get("reference")
        member = wanted.get(ref) if isinstance(ref, str) else None
        fits = member is not None and p.get("role") == [concept(member.role.as_coding())]
        if member is None or not fits or member.practitioner in kept:
            _end_participant(p, today)
        else:
            kept.add(member.practitioner)
    number = _next_number(ours, TEAM_PARTICIPANT_PREFIX)
    for ref in sorted(set(wanted) - kept):
        participants.append(
            {
                "id": f"{TEAM_PARTICIPANT_PREFIX}{number}",
                "role": [concept(wanted[ref].role.as_coding())],
                "member": {"reference": ref},
                "period": {"start": today},
            }
        )
        number += 1


def _next_number(ours: Sequence[Mapping[str, Any]], prefix: str) -> int:
    numbers = [
        int(m.group(1))
        for p in ours
        if str(p.get("id", "")).startswith(prefix)
        and (m := _ID_SUFFIX.search(str(p.get("id", ""))))
    ]
    return max(numbers, default=0) + 1


def _our_shape(participant: Mapping[str, Any]) -> bool:
    """A role, a member reference and a period with a start (maybe an end), nothing else."""
    if set(participant) - {"id", "role", "member", "period"}:
        return False
    member = participant.get("member")
    period = participant.get("period")
    return (
        isinstance(member, Mapping)
        and set(member) == {"reference"}
        and isinstance(member.get("reference"), str)
        and isinstance(period, Mapping)
        and isinstance(period.get("start"), str)
        and not set(period) - {"start", "end"}
    )


def _our_participants(
    participants: Sequence[dict[str, Any]], codes: WritebackCodes
) -> list[dict[str, Any]]:
    """fhirpanel's participants: by element id; when none carries one of ours (a server that
    drops element ids), the id-less ones whose content is exactly what fhirpanel writes."""
    by_id = [p for p in participants if has_our_id(p, PCP_PARTICIPANT_PREFIX)]
    if by_id:
        return by_id
    return [p for p in participants if without_id(p) and _is_our_participant(p, codes)]


def _is_our_participant(participant: Mapping[str, Any], codes: WritebackCodes) -> bool:
    """Exactly the shape fhirpanel writes: one of its role concepts, a member reference and a
    period with a start (and maybe an end), nothing else."""
    if set(participant) - {"id", "role", "member", "period"}:
        return False
    member = participant.get("member")
    if not (
        isinstance(member, Mapping)
        and set(member) == {"reference"}
        and isinstance(member.get("reference"), str)
    ):
        return False
    period = participant.get("period")
    if not (
        isinstance(period, Mapping)
        and isinstance(period.get("start"), str)
        and not set(period) - {"start", "end"}
    ):
        return False
    roles = [concept(coding) for coding in codes.roles.values()]
    return participant.get("role") in [[role] for role in roles]


def _reference_tail(reference: Any) -> str:
    """`PractitionerRole/r1` for a relative or absolute reference (or a versioned one)."""
    if not isinstance(reference, str):
        return ""
    parts = [p for p in reference.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[-2:])


def _participant_lookalike(
    participants: Sequence[Mapping[str, Any]],
    ours: Sequence[Mapping[str, Any]],
    info: ClinicianInfo,
    codes: WritebackCodes,
) -> Mapping[str, Any] | None:
    """An open participant, not recognised as ours, for the PCP with one of our role codes: a
    copy of ours the server changed (an absolute reference, an added display). Another one of
    ours would be a duplicate."""
    wanted = {_reference_tail(info.practitioner), _reference_tail(info.role)} - {""}
    role_codes = {c["code"] for c in codes.roles.values()}
    for p in participants:
        if any(p is o for o in ours) or (p.get("period") or {}).get("end"):
            continue
        member = p.get("member")
        reference = member.get("reference") if isinstance(member, Mapping) else None
        if _reference_tail(reference) not in wanted:
            continue
        for role in p.get("role") or ():
            codings = role.get("coding") if isinstance(role, Mapping) else None
            if any(isinstance(c, Mapping) and c.get("code") in role_codes for c in codings or ()):
                return p
    return None


def _end_participant(participant: dict[str, Any], on: str) -> None:
    period = dict(participant.get("period") or {})
    start = period.get("start")
    period["end"] = max(on, str(start)) if isinstance(start, str) else on
    participant["period"] = period


def _next_participant_number(ours: Sequence[Mapping[str, Any]]) -> int:
    numbers = [int(m.group(1)) for p in ours if (m := _ID_SUFFIX.search(str(p.get("id", ""))))]
    return max(numbers, default=0) + 1


def _care_team_text(team: Mapping[str, Any], codes: WritebackCodes) -> dict[str, str]:
    rows = []
    for p in team.get("participant") or ():
        role = _concept_label(p.get("role") or ())
        member = p.get("member") or {}
        who = member.get("reference") or member.get("display") or "unknown member"
        period = p.get("period") or {}
        when = ""
        if period.get("start"):
            when = f" from {esc(period['start'])}"
        if period.get("end"):
            when += f" to {esc(period['end'])}"
        rows.append(f"{esc(role)}: {esc(who)}{when}")
    name = team.get("name") or codes.care_team_name
    return div(f"<p>{esc(name)} ({esc(team.get('status'))}).</p>", ul(rows))


def _concept_label(concepts: Iterable[Any]) -> str:
    for item in concepts:
        if not isinstance(item, Mapping):
            continue
        for coding in item.get("coding") or ():
            if isinstance(coding, Mapping) and coding.get("display"):
                return str(coding["display"])
        if item.get("text"):
            return str(item["text"])
    return "Participant"
