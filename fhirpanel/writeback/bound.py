"""What a write-back pass plans to write: one `PlannedWrite` per patient (CareTeam, CarePlan,
RiskAssessment) or organisation (attribution Group), its builder bound to the pass's results,
and the checks on what was planned (the guard's PCP figures, a CarePlan's CareTeam).

Builders are bound with `functools.partial`: every argument but `existing`, which
`PlannedWrite.prepare` passes in the one positional slot left open.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.teams import Teams
from fhirpanel.tables import WritebackTables
from fhirpanel.tables.writeback import WritebackCodes
from fhirpanel.writeback.builders import (
    ClinicianInfo,
    GroupMember,
    build_attribution_group,
    build_care_plan,
    build_care_team,
    build_risk_assessment,
    open_pcp_members,
)
from fhirpanel.writeback.identity import (
    ATTRIBUTION_GROUP_KIND,
    CARE_PLAN_KIND,
    CARE_TEAM_KIND,
    RISK_ASSESSMENT_KIND,
    identifier_value,
)
from fhirpanel.writeback.plan import Builder, PlannedWrite

if TYPE_CHECKING:  # run.py may call write_back: no import cycle at run time
    from fhirpanel.domain.outcome import RunOutcome


def care_teams(
    outcome: RunOutcome,
    clinicians: Mapping[str, ClinicianInfo | None],
    cfg: WritebackSettings,
    codes: WritebackCodes,
    teams: Teams | None = None,
) -> list[PlannedWrite]:
    """Each patient's CareTeam; with `teams`, their PCP's care-team colleagues on it too."""
    teams = teams or Teams()
    roles = [r.as_coding() for r in {m.role for t in teams.teams for m in t.members}]
    roles.sort(key=lambda c: (c["system"], c["code"]))
    items = []
    for a in outcome.attribution.assignments:
        grew: list[str] = []
        info = clinicians[a.patient]
        build = functools.partial(
            build_care_team,
            a,
            as_of=outcome.as_of,
            cfg=cfg,
            codes=codes,
            clinician=info,
            problems=grew,
            colleagues=teams.colleagues(info.practitioner) if info is not None else (),
            team_roles=roles,
        )
        items.append(_planned("CareTeam", CARE_TEAM_KIND, a.patient, build, grew))
    return items


def care_plans(
    outcome: RunOutcome,
    team_refs: Mapping[str, str | None],
    cfg: WritebackSettings,
    tables: WritebackTables,
) -> list[PlannedWrite]:
    items = []
    for a in outcome.attribution.assignments:
        grew: list[str] = []
        build = functools.partial(
            build_care_plan,
            a,
            outcome.risk.get(a.patient),
            as_of=outcome.as_of,
            cfg=cfg,
            templates=tables.templates,
            codes=tables.codes,
            labels=tables.labels,
            care_team_ref=team_refs.get(a.patient),
            problems=grew,
        )
        items.append(_planned("CarePlan", CARE_PLAN_KIND, a.patient, build, grew))
    return items


def risk_assessments(
    outcome: RunOutcome, cfg: WritebackSettings, tables: WritebackTables
) -> list[PlannedWrite]:
    return [
        _planned(
            "RiskAssessment",
            RISK_ASSESSMENT_KIND,
            a.patient,
            functools.partial(
                build_risk_assessment,
                a,
                outcome.risk.get(a.patient),
                as_of=outcome.as_of,
                cfg=cfg,
                codes=tables.codes,
                labels=tables.labels,
            ),
        )
        for a in outcome.attribution.assignments
    ]


def attribution_groups(
    outcome: RunOutcome,
    clinicians: Mapping[str, ClinicianInfo | None],
    cfg: WritebackSettings,
    codes: WritebackCodes,
) -> list[PlannedWrite]:
    """One Group per organisation of the population or of an assigned clinician."""
    members: dict[str, list[GroupMember]] = {}
    for a in outcome.attribution.assignments:
        info = clinicians[a.patient]
        if info is not None and info.organization:
            members.setdefault(info.organization, []).append(GroupMember(a.patient, info.member))
    organizations = sorted(set(members) | set(outcome.population.organizations))
    return [
        _planned(
            "Group",
            ATTRIBUTION_GROUP_KIND,
            org,
            functools.partial(
                build_attribution_group,
                org,
                members.get(org, []),
                as_of=outcome.as_of,
                cfg=cfg,
                codes=codes,
            ),
        )
        for org in organizations
    ]


def _planned(
    rtype: str, kind: str, subject: str, build: Builder, problems: list[str] | None = None
) -> PlannedWrite:
    """`problems`: the list `build` reports growth into, which becomes the item's own (a
    rebuild clears it)."""
    return PlannedWrite(
        rtype=rtype,
        identifier=identifier_value(kind, subject),
        subject=subject,
        build=build,
        problems=[] if problems is None else problems,
    )


def pcp_figures(
    teams: Sequence[PlannedWrite],
    codes: WritebackCodes,
    by_a_person: Collection[str] = frozenset(),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((PCP participations ended, open ones now), (teams whose PCP changes, teams with one))
    for the CareTeams as planned (a team not written keeps what it has). The teams of
    `by_a_person` (patients a person assigned: an override, an accepted suggestion or panel
    transition) count among those open but not among those ended or changed, as the brake's
    changed assignments leave them out (`jobs.brake.BY_A_PERSON`)."""
    ended = open_now = changed = with_pcp = 0
    for item in teams:
        before = open_pcp_members(item.existing, codes) if item.action != "skipped" else []
        if not before:
            continue
        with_pcp += 1
        open_now += len(before)
        if item.subject in by_a_person:
            continue
        after = (
            open_pcp_members(item.resource, codes)
            if item.action in ("create", "update")
            else before
        )
        remaining = list(after)
        for member in before:
            if member in remaining:
                remaining.remove(member)
            else:
                ended += 1
        changed += set(before) != set(after)
    return (ended, open_now), (changed, with_pcp)


def plan_has_team(item: PlannedWrite) -> str | None:
    """An open CarePlan must name its CareTeam: when the team could not be written, the plan
    waits for the next run (closing an existing plan needs no team)."""
    resource = item.resource
    closed = resource is not None and resource.get("status") in ("completed", "revoked")
    if resource is not None and not closed and not resource.get("careTeam"):
        return "its CareTeam was not written; the CarePlan waits for the next run"
    return None
