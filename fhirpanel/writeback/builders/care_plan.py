"""The patient's care-management CarePlan (US Core CarePlan), from the per-tier templates
(docs/methods.md s.6)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import Assignment
from fhirpanel.domain.risk import RiskResult
from fhirpanel.tables.writeback import (
    ActivityTemplate,
    CarePlanTemplates,
    NarrativeLabels,
    TierTemplate,
    WritebackCodes,
)
from fhirpanel.writeback.builders.common import (
    BuildError,
    concept,
    day,
    div,
    esc,
    identifiers,
    meta,
    order,
    period_start,
    risk_drivers,
    start_resource,
    ul,
    validate_resource,
    with_concepts,
)
from fhirpanel.writeback.identity import (
    ACTIVITY_ID_PREFIX,
    CARE_PLAN_KIND,
    Resource,
    has_our_id,
    identifier_value,
    without_id,
)

_CLOSED_PLAN_STATUSES: Final = frozenset({"completed", "revoked", "entered-in-error"})


def care_plan_called_for(risk: RiskResult, cfg: WritebackSettings) -> bool:
    """Tiers in `care_plan_tiers`, and tier 2 when CCM-eligible (`care_plan_tier2_when_ccm`)."""
    return risk.tier in cfg.care_plan_tier_set or (
        risk.tier == 2 and risk.ccm_eligible and cfg.care_plan_tier2_when_ccm
    )


def build_care_plan(
    assignment: Assignment,
    risk: RiskResult | None,
    existing: Mapping[str, Any] | None,
    as_of: date,
    cfg: WritebackSettings,
    templates: CarePlanTemplates,
    *,
    codes: WritebackCodes,
    labels: NarrativeLabels | None = None,
    care_team_ref: str | None = None,
    problems: list[str] | None = None,
) -> Resource | None:
    """The patient's care-management CarePlan (US Core CarePlan), or None when none is needed.

    Called for (see `care_plan_called_for`) and assigned: active, intent plan, categories
    assess-plan and clinical management plan, a narrative with the tier and its drivers, the
    CareTeam (`care_team_ref`, else the one already referenced), the basis Conditions, and one
    activity per template entry. A clinician's progress on an activity (its status) is kept;
    template activities no longer called for are dropped while not started. No longer called
    for: `completed` (`revoked` when the patient is excluded) with `period.end`; not-started
    activities are cancelled. A closed plan is never reopened by an unchanged input, and never
    deleted.

    fhirpanel's activities are known by their element id (`fhirpanel-<key>`); on a server that
    drops element ids (no activity keeps one of ours), by their content: an id-less activity
    whose detail has the kind and code of a template activity. Growth is refused, not repeated:
    extra copies are left as they are, and an activity that looks like a template one but was
    changed stops another from being added; both go to `problems`.
    """
    labels = labels or NarrativeLabels()
    notes = problems if problems is not None else []
    wanted = (
        assignment.status == "assigned" and risk is not None and care_plan_called_for(risk, cfg)
    )
    if not wanted and existing is None:
        return None
    if existing is not None and existing.get("status") == "entered-in-error":
        return None
    today = day(as_of)
    plan = start_resource(existing, "CarePlan")
    value = identifier_value(CARE_PLAN_KIND, assignment.patient)

    if wanted and risk is not None:
        template = templates.for_tier(risk.tier)
        if template is None:
            raise BuildError(
                f"CarePlan {value}: no template for tier {risk.tier} "
                "(check careplan_templates against writeback.care_plan_tiers)"
            )
        status = str(plan.get("status") or "")
        reopened = existing is not None and status in _CLOSED_PLAN_STATUSES
        plan["status"] = "on-hold" if status == "on-hold" else "active"
        plan["intent"] = "plan"
        plan["period"] = {
            "start": today if reopened or existing is None else (period_start(existing) or today)
        }
        plan["title"] = f"{codes.care_plan_title}: {labels.tier_short(risk.tier)}"
        plan["description"] = template.description
        if care_team_ref:
            plan["careTeam"] = [{"reference": care_team_ref}]
        addresses = [{"reference": c} for c in sorted(set(risk.basis_conditions))]
        if addresses:
            plan["addresses"] = addresses
        else:
            plan.pop("addresses", None)
        plan["activity"] = _plan_activities(plan.get("activity"), template, templates, notes)
        plan["text"] = _care_plan_text(risk, template, codes, labels)
    elif str(plan.get("status")) not in _CLOSED_PLAN_STATUSES:
        excluded = assignment.status == "excluded"
        plan["status"] = "revoked" if excluded else "completed"
        period = dict(plan.get("period") or {})
        period.setdefault("start", today)
        period["end"] = max(today, str(period["start"]))
        plan["period"] = period
        activities = [
            copy.deepcopy(a) for a in plan.get("activity") or () if isinstance(a, Mapping)
        ]
        mine = _our_activities(activities, templates)
        plan["activity"] = [
            _cancel_if_not_started(a) if any(a is m for m in mine) else a for a in activities
        ]
        if not plan["activity"]:
            plan.pop("activity")
        plan["text"] = _closed_plan_text(assignment, risk, today, codes, labels)

    plan["identifier"] = identifiers(existing, cfg, value)
    plan["meta"] = meta(existing, cfg, codes.care_plan_profile)
    plan["category"] = with_concepts(plan.get("category"), codes.care_plan_categories)
    plan["subject"] = {"reference": assignment.patient}
    plan.setdefault("intent", "plan")
    plan = order(
        plan,
        (
            "resourceType",
            "id",
            "meta",
            "text",
            "identifier",
            "status",
            "intent",
            "category",
            "title",
            "description",
            "subject",
            "period",
            "careTeam",
            "addresses",
            "activity",
        ),
    )
    return validate_resource(plan)


def element_id(item: ActivityTemplate) -> str:
    """The element id of a template activity on the plan: `fhirpanel-<key>`."""
    return ACTIVITY_ID_PREFIX + item.key


def _activity_key(activity: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, code system, code) of an activity's detail, for recognising ours by content."""
    detail = activity.get("detail")
    if not isinstance(detail, Mapping) or not isinstance(detail.get("kind"), str):
        return None
    code = detail.get("code")
    codings = code.get("coding") if isinstance(code, Mapping) else None
    if not isinstance(codings, list) or len(codings) != 1 or not isinstance(codings[0], Mapping):
        return None
    system, value = codings[0].get("system"), codings[0].get("code")
    if not isinstance(system, str) or not isinstance(value, str):
        return None
    return detail["kind"], system, value


def _template_key(item: ActivityTemplate) -> tuple[str, str, str]:
    return item.kind, item.code["system"], item.code["code"]


def _our_activities(
    activities: Sequence[Mapping[str, Any]], templates: CarePlanTemplates
) -> list[Mapping[str, Any]]:
    """fhirpanel's activities: by element id; when none carries one of ours (a server that drops
    element ids), the id-less ones with the kind and code of an activity in any tier's
    template."""
    by_id = [a for a in activities if has_our_id(a, ACTIVITY_ID_PREFIX)]
    if by_id:
        return by_id
    keys = {_template_key(item) for tier in templates.tiers.values() for item in tier.activities}
    return [a for a in activities if without_id(a) and _activity_key(a) in keys]


def _activity_lookalike(
    activities: Sequence[Mapping[str, Any]],
    ours: Sequence[Mapping[str, Any]],
    item: ActivityTemplate,
) -> Mapping[str, Any] | None:
    """An id-less activity, not recognised as ours, with the template activity's code or text:
    a copy of ours the server changed. Adding the template one again would be a duplicate."""
    for activity in activities:
        if any(activity is o for o in ours) or not without_id(activity):
            continue
        detail = activity.get("detail")
        if not isinstance(detail, Mapping):
            continue
        code = detail.get("code")
        codings = code.get("coding") if isinstance(code, Mapping) else None
        if detail.get("description") == item.text or any(
            isinstance(c, Mapping) and c.get("code") == item.code["code"] for c in codings or ()
        ):
            return activity
    return None


def _plan_activities(
    existing: Any, template: TierTemplate, templates: CarePlanTemplates, notes: list[str]
) -> list[Any]:
    old = [copy.deepcopy(a) for a in existing or () if isinstance(a, Mapping)]
    mine = _our_activities(old, templates)
    by_id = {str(a.get("id")): a for a in mine if has_our_id(a, ACTIVITY_ID_PREFIX)}
    by_content = [a for a in mine if not has_our_id(a, ACTIVITY_ID_PREFIX)]
    foreign = [a for a in old if not any(a is m for m in mine)]
    extras: list[Any] = []  # copies of ours beyond the first: left as they are
    activities: list[Any] = []
    for item in template.activities:
        previous = by_id.pop(element_id(item), None)
        keep_id = True
        if previous is None:
            copies = [a for a in by_content if _activity_key(a) == _template_key(item)]
            if copies:
                previous, keep_id = copies[0], False  # the server drops element ids
                by_content = [a for a in by_content if not any(a is c for c in copies)]
                if len(copies) > 1:
                    notes.append(
                        f"{len(copies)} copies of fhirpanel's activity {item.key!r}; "
                        "the extra ones are left as they are, none added"
                    )
                    extras.extend(copies[1:])
            elif _activity_lookalike(old, mine, item) is not None:
                notes.append(
                    f"an activity that looks like fhirpanel's {item.key!r} is on the "
                    "plan but differs from what fhirpanel writes (the server may "
                    "rewrite it); not adding another"
                )
                continue
        detail: dict[str, Any] = dict((previous or {}).get("detail") or {})
        detail["kind"] = item.kind
        detail["code"] = concept(item.code, item.code.get("display"))
        detail["status"] = detail.get("status") or "not-started"
        detail["description"] = item.text
        activity = dict(previous or {})
        if keep_id:
            activity["id"] = element_id(item)
        activity["detail"] = order(detail, ("kind", "code", "status", "description"))
        activities.append(order(activity, ("id", "detail")))
    # Template activities no longer called for: dropped unless someone has started them.
    leftover = [by_id[k] for k in sorted(by_id)] + by_content
    kept = [
        a for a in leftover if (a.get("detail") or {}).get("status", "not-started") != "not-started"
    ]
    return activities + kept + extras + foreign


def _cancel_if_not_started(activity: Any) -> Any:
    """One of fhirpanel's activities, cancelled when nobody has started it."""
    activity = copy.deepcopy(activity)
    detail = activity.get("detail") if isinstance(activity, dict) else None
    if isinstance(detail, dict) and detail.get("status") == "not-started":
        detail["status"] = "cancelled"
    return activity


def _care_plan_text(
    risk: RiskResult, template: TierTemplate, codes: WritebackCodes, labels: NarrativeLabels
) -> dict[str, str]:
    why = f"rule {esc(risk.tier_rule)}"
    if risk.tier == 2 and risk.ccm_eligible:
        why += " with Chronic Care Management eligibility (two or more chronic conditions)"
    activities = [
        f"{esc(a.code.get('display', a.key))}: {esc(a.text)}" for a in template.activities
    ]
    addressed = len(set(risk.basis_conditions))
    return div(
        f"<p><b>{esc(codes.care_plan_title)}</b>, risk {esc(labels.tier(risk.tier))}.</p>",
        f"<p>Why this tier: {why}.</p>",
        ul(risk_drivers(risk, labels)),
        f"<p>Conditions addressed: {addressed}.</p>" if addressed else "",
        "<p>Planned activities:</p>",
        ul(activities),
    )


def _closed_plan_text(
    assignment: Assignment,
    risk: RiskResult | None,
    today: str,
    codes: WritebackCodes,
    labels: NarrativeLabels,
) -> dict[str, str]:
    if assignment.status == "excluded":
        why = f"the patient is no longer active ({esc(assignment.reason or 'excluded')})"
        verb = "revoked"
    elif assignment.status != "assigned":
        why = "the patient has no attributed primary-care clinician"
        verb = "completed"
    else:
        tier = labels.tier(risk.tier) if risk is not None else "unknown"
        why = f"the patient's risk is now {esc(tier)}, which does not call for care management"
        verb = "completed"
    return div(f"<p><b>{esc(codes.care_plan_title)}</b> {verb} on {esc(today)}: {why}.</p>")
