"""Pure builders for write-back: attribution and risk results in, FHIR R4 JSON out
(docs/methods.md s.6).

Every builder takes what the server holds now (`existing`, or None) and returns the resource as it
should be, or None when there is nothing to write. It keeps what fhirpanel does not manage
(participants, activities, categories or identifiers someone else added) and changes only its own
parts, so building from an unchanged input gives back a resource equal to `existing` and the
writer sends nothing. Dates come in as parameters, never from a clock. Every resource carries a
deterministic business identifier (`identifier_system` + `<kind>.<subject id>`) and fhirpanel's
`meta.tag`, and is validated with the fhir.resources R4B model before it is returned; a resource
that fails is a bug here and raises BuildError.
"""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import Assignment, check_code
from fhirpanel.domain.records import (
    Population,
    PractitionerRecord,
    PractitionerRoleRecord,
)
from fhirpanel.domain.risk import RiskResult
from fhirpanel.errors import FhirpanelError, MappingError
from fhirpanel.fhir.parse import fhir_instant

Resource = dict[str, Any]
Coding = dict[str, str]

XHTML_NS: Final = "http://www.w3.org/1999/xhtml"
CLINICIAN_KINDS: Final = ("physician", "nurse_practitioner", "physician_assistant")
# CarePlan.activity.detail.kind (R4 care-plan-activity-kind value set).
ACTIVITY_KINDS: Final = frozenset({
    "Appointment", "CommunicationRequest", "DeviceRequest", "MedicationRequest",
    "NutritionOrder", "Task", "ServiceRequest", "VisionPrescription",
})
# Element ids mark the participants and activities fhirpanel added; everything else is kept as is.
PCP_PARTICIPANT_PREFIX: Final = "fhirpanel-pcp-"
ACTIVITY_ID_PREFIX: Final = "fhirpanel-"

# Business identifier kinds: identifier value = "<kind>.<subject id>".
CARE_TEAM_KIND: Final = "careteam-pcp"
CARE_PLAN_KIND: Final = "careplan-cm"
RISK_ASSESSMENT_KIND: Final = "riskassessment"
ATTRIBUTION_GROUP_KIND: Final = "attribution-group"

_CLOSED_PLAN_STATUSES: Final = frozenset({"completed", "revoked", "entered-in-error"})
_ID_SUFFIX = re.compile(r"(\d+)$")
_BETWEEN_TAGS = re.compile(r">\s+<")


class BuildError(FhirpanelError):
    """A built resource failed R4B validation: a bug in a builder, not bad input."""


# --------------------------------------------------------------------------- identifiers


def identifier_value(kind: str, subject: str) -> str:
    """`careteam-pcp.pat-1` for ("careteam-pcp", "Patient/pat-1")."""
    return f"{kind}.{subject.split('/', 1)[-1]}"


def identifier_token(cfg: WritebackSettings, value: str) -> str:
    """`system|value`, as a token search or a conditional URL takes it."""
    return f"{cfg.identifier_system}|{value}"


def business_identifier(resource: Mapping[str, Any], cfg: WritebackSettings) -> str | None:
    """The value of fhirpanel's identifier on a resource, if it has one."""
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and ident.get("system") == cfg.identifier_system:
            value = ident.get("value")
            if isinstance(value, str) and value:
                return value
    return None


def has_managed_tag(resource: Mapping[str, Any], cfg: WritebackSettings) -> bool:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    return any(
        isinstance(t, Mapping) and t.get("system") == cfg.tag_system
        and t.get("code") == cfg.tag_code
        for t in tags or ()
    )


def is_managed(resource: Mapping[str, Any], cfg: WritebackSettings) -> bool:
    """fhirpanel may change a resource only when it carries both its tag and its identifier."""
    return has_managed_tag(resource, cfg) and business_identifier(resource, cfg) is not None


# --------------------------------------------------------------------------- comparison


def squash_xhtml(div: str) -> str:
    """Narrative with insignificant whitespace removed and character references resolved, for
    comparison (a server may re-serialise XHTML: `&gt;` or `>`, new lines between tags)."""
    return html.unescape(" ".join(_BETWEEN_TAGS.sub("><", div).split()))


def comparable(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resource the diff looks at: no `meta`, no `id`, narrative whitespace
    squashed (servers may re-indent XHTML)."""
    out = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    text = out.get("text")
    if isinstance(text, Mapping) and isinstance(text.get("div"), str):
        out["text"] = {**text, "div": squash_xhtml(text["div"])}
    return out


def same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return comparable(a) == comparable(b)


# --------------------------------------------------------------------------- validation


def validate_resource(resource: Resource) -> Resource:
    """Validate with the R4B model; BuildError names the resource by type and identifier."""
    rtype = resource.get("resourceType")
    label = f"{rtype} {_identifier_label(resource)}"
    try:
        model: Any = get_fhir_model_class(str(rtype))
        model.model_validate(resource)
    except (ValidationError, KeyError, ValueError, TypeError) as exc:
        raise BuildError(f"built {label} is not a valid R4B resource: {exc}") from exc
    return resource


def _identifier_label(resource: Mapping[str, Any]) -> str:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and ident.get("value"):
            return str(ident["value"])
    targets = resource.get("target")
    if isinstance(targets, list):
        return f"({len(targets)} targets)"
    return "(no identifier)"


# --------------------------------------------------------------------------- mapping tables


def _mapping_table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise MappingError(f"{where}: [{key}] table missing")
    return value


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _string_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise MappingError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _coding(value: Any, where: str) -> Coding:
    if not isinstance(value, Mapping):
        raise MappingError(f"{where}: expected a table with system, code and display")
    system, code = value.get("system"), value.get("code")
    if not isinstance(system, str) or not isinstance(code, str):
        raise MappingError(f"{where}: system and code must be strings")
    check_code(system, code, where)
    coding: Coding = {"system": system, "code": code}
    display = value.get("display")
    if display is not None:
        if not isinstance(display, str) or not display.strip():
            raise MappingError(f"{where}: display must be a non-empty string")
        coding["display"] = display.strip()
    return coding


@dataclass(frozen=True)
class ClinicianKindRule:
    kind: str
    qualifications: frozenset[str]
    taxonomy_prefixes: tuple[str, ...]
    qualification_texts: frozenset[str]


@dataclass(frozen=True)
class ClinicianKinds:
    """How to tell a physician from a nurse practitioner or physician assistant."""

    default_kind: str
    qualification_system: str
    taxonomy_system: str
    rules: tuple[ClinicianKindRule, ...]  # in CLINICIAN_KINDS order: the first match wins

    def kind_of(self, practitioner: PractitionerRecord | None,
                roles: Sequence[PractitionerRoleRecord] = ()) -> str:
        """Qualification codes (v2-0360) first, then PractitionerRole taxonomy codes, then
        qualification texts; else the default kind."""
        if practitioner is not None:
            quals = {c.code for c in practitioner.qualifications
                     if c.system == self.qualification_system}
            for rule in self.rules:
                if quals & rule.qualifications:
                    return rule.kind
        taxonomies = sorted(c.code for role in roles for c in (*role.codes, *role.specialties)
                            if c.system == self.taxonomy_system)
        for rule in self.rules:
            if any(t.startswith(rule.taxonomy_prefixes) for t in taxonomies):
                return rule.kind
        if practitioner is not None:
            texts = {" ".join(t.casefold().split()) for t in practitioner.qualification_texts}
            for rule in self.rules:
                if texts & rule.qualification_texts:
                    return rule.kind
        return self.default_kind


@dataclass(frozen=True)
class WritebackCodes:
    """Codes and fixed texts of the resources fhirpanel writes (mappings/writeback_codes)."""

    care_team_name: str
    care_team_category: Coding
    care_team_profile: str | None
    roles: Mapping[str, Coding]  # clinician kind -> participant role
    kinds: ClinicianKinds
    care_plan_categories: tuple[Coding, ...]
    care_plan_profile: str | None
    care_plan_title: str
    risk_code_text: str
    risk_method_text: str
    risk_qualitative_system: str
    risk_by_tier: Mapping[int, Coding]
    attributed_provider_url: str
    change_type_url: str
    change_new: str
    change_changed: str
    change_none: str
    change_dropped: str
    provenance_activity_system: str
    provenance_agent_type: Coding
    provenance_reason: Coding

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WritebackCodes:
        where = "writeback_codes"
        team = _mapping_table(data, "care_team", where)
        roles_table = _mapping_table(data, "roles", where)
        roles = {kind: _coding(roles_table.get(kind), f"{where}.roles.{kind}")
                 for kind in CLINICIAN_KINDS}
        kinds_table = _mapping_table(data, "kinds", where)
        default_kind = _text(kinds_table, "default_kind", f"{where}.kinds")
        if default_kind not in CLINICIAN_KINDS:
            raise MappingError(f"{where}.kinds: default_kind must be one of {CLINICIAN_KINDS}")
        rules = []
        for kind in CLINICIAN_KINDS:
            here = f"{where}.kinds.{kind}"
            table = _mapping_table(kinds_table, kind, f"{where}.kinds")
            rules.append(ClinicianKindRule(
                kind=kind,
                qualifications=frozenset(_string_list(table, "qualifications", here)),
                taxonomy_prefixes=_string_list(table, "taxonomy_prefixes", here),
                qualification_texts=frozenset(
                    " ".join(t.casefold().split())
                    for t in _string_list(table, "qualification_texts", here)),
            ))
        plan = _mapping_table(data, "care_plan", where)
        raw_categories = plan.get("categories")
        if not isinstance(raw_categories, list) or not raw_categories:
            raise MappingError(f"{where}.care_plan: categories must be a non-empty list")
        categories = tuple(_coding(c, f"{where}.care_plan.categories[{n}]")
                           for n, c in enumerate(raw_categories, start=1))
        if categories[0]["code"] != "assess-plan":
            raise MappingError(f"{where}.care_plan: the first category must be US Core "
                               "assess-plan (US Core CarePlan requires it)")
        risk = _mapping_table(data, "risk_assessment", where)
        qualitative_system = _text(risk, "qualitative_system", f"{where}.risk_assessment")
        raw_tiers = _mapping_table(risk, "tiers", f"{where}.risk_assessment")
        by_tier: dict[int, Coding] = {}
        for key, value in raw_tiers.items():
            if not str(key).isdigit():
                raise MappingError(f"{where}.risk_assessment.tiers: {key!r} is not a tier")
            coding = _coding({**value, "system": qualitative_system}
                             if isinstance(value, Mapping) else value,
                             f"{where}.risk_assessment.tiers.{key}")
            by_tier[int(key)] = coding
        group = _mapping_table(data, "attribution_group", where)
        gw = f"{where}.attribution_group"
        prov = _mapping_table(data, "provenance", where)
        pw = f"{where}.provenance"
        return cls(
            care_team_name=_text(team, "name", f"{where}.care_team"),
            care_team_category=_coding(team.get("category"), f"{where}.care_team.category"),
            care_team_profile=_optional_text(team, "profile"),
            roles=roles,
            kinds=ClinicianKinds(
                default_kind=default_kind,
                qualification_system=_text(kinds_table, "qualification_system",
                                           f"{where}.kinds"),
                taxonomy_system=_text(kinds_table, "taxonomy_system", f"{where}.kinds"),
                rules=tuple(rules),
            ),
            care_plan_categories=categories,
            care_plan_profile=_optional_text(plan, "profile"),
            care_plan_title=_text(plan, "title", f"{where}.care_plan"),
            risk_code_text=_text(risk, "code_text", f"{where}.risk_assessment"),
            risk_method_text=_text(risk, "method_text", f"{where}.risk_assessment"),
            risk_qualitative_system=qualitative_system,
            risk_by_tier=by_tier,
            attributed_provider_url=_text(group, "attributed_provider_url", gw),
            change_type_url=_text(group, "change_type_url", gw),
            change_new=_text(group, "change_new", gw),
            change_changed=_text(group, "change_changed", gw),
            change_none=_text(group, "change_none", gw),
            change_dropped=_text(group, "change_dropped", gw),
            provenance_activity_system=_text(prov, "activity_system", pw),
            provenance_agent_type=_coding(prov.get("agent_type"), f"{pw}.agent_type"),
            provenance_reason=_coding(prov.get("reason"), f"{pw}.reason"),
        )

    def role_for(self, kind: str) -> Coding:
        return self.roles.get(kind, self.roles[self.kinds.default_kind])


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class ActivityTemplate:
    key: str
    kind: str
    code: Coding
    text: str

    @property
    def element_id(self) -> str:
        return ACTIVITY_ID_PREFIX + self.key


@dataclass(frozen=True)
class TierTemplate:
    tier: int
    description: str
    activities: tuple[ActivityTemplate, ...]


@dataclass(frozen=True)
class CarePlanTemplates:
    """Per-tier CarePlan activities (mappings/careplan_templates)."""

    tiers: Mapping[int, TierTemplate]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CarePlanTemplates:
        where = "careplan_templates"
        raw = _mapping_table(data, "tiers", where)
        tiers: dict[int, TierTemplate] = {}
        for key, table in raw.items():
            here = f"{where}.tiers.{key}"
            if not str(key).isdigit() or not isinstance(table, Mapping):
                raise MappingError(f"{here}: expected [tiers.<number>] tables")
            rows = table.get("activities")
            if not isinstance(rows, list) or not rows:
                raise MappingError(f"{here}: activities must be a non-empty list")
            activities = []
            for number, row in enumerate(rows, start=1):
                at = f"{here}.activities[{number}]"
                if not isinstance(row, Mapping):
                    raise MappingError(f"{at}: expected a table")
                activity_key = _text(row, "key", at)
                if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", activity_key):
                    raise MappingError(f"{at}: key must be lower-case letters, digits, dashes")
                kind = _text(row, "kind", at)
                if kind not in ACTIVITY_KINDS:
                    raise MappingError(f"{at}: kind {kind!r} is not a CarePlan activity kind")
                activities.append(ActivityTemplate(
                    key=activity_key, kind=kind, code=_coding(row.get("code"), f"{at}.code"),
                    text=_text(row, "text", at)))
            keys = [a.key for a in activities]
            if len(set(keys)) != len(keys):
                raise MappingError(f"{here}: activity keys must be unique")
            tiers[int(key)] = TierTemplate(tier=int(key),
                                           description=_text(table, "description", here),
                                           activities=tuple(activities))
        return cls(tiers=tiers)

    def for_tier(self, tier: int) -> TierTemplate | None:
        return self.tiers.get(tier)

    def require(self, tiers: Iterable[int]) -> None:
        """MappingError unless every tier that gets a CarePlan has a template."""
        missing = sorted(set(tiers) - set(self.tiers))
        if missing:
            raise MappingError(f"careplan_templates: no activities for tier(s) {missing}, "
                               "which writeback.care_plan_tiers gives a CarePlan")


@dataclass(frozen=True)
class NarrativeLabels:
    """Human labels for the narrative: tier names, Charlson categories, chronic groups."""

    tiers: Mapping[int, str] = field(default_factory=dict)
    charlson: Mapping[str, str] = field(default_factory=dict)
    chronic: Mapping[str, str] = field(default_factory=dict)
    utilisation_months: int | None = None

    @classmethod
    def from_mappings(cls, *, tiers: Mapping[str, Any] | None = None,
                      charlson: Mapping[str, Any] | None = None,
                      chronic: Mapping[str, Any] | None = None,
                      risk: Mapping[str, Any] | None = None) -> NarrativeLabels:
        tier_labels: dict[int, str] = {}
        raw_tiers = (tiers or {}).get("tiers")
        if isinstance(raw_tiers, Mapping):
            tier_labels = {int(k): str(v) for k, v in raw_tiers.items() if str(k).isdigit()}
        utilisation = (risk or {}).get("utilisation")
        months = utilisation.get("lookback_months") if isinstance(utilisation, Mapping) else None
        return cls(
            tiers=tier_labels,
            charlson=_key_labels((charlson or {}).get("categories")),
            chronic=_key_labels((chronic or {}).get("groups")),
            utilisation_months=months if isinstance(months, int) else None,
        )

    def tier(self, tier: int) -> str:
        label = self.tiers.get(tier)
        return f"tier {tier} ({label})" if label else f"tier {tier}"

    def tier_short(self, tier: int) -> str:
        label = self.tiers.get(tier)
        return label.split(":", 1)[0] if label else f"tier {tier}"


def _key_labels(rows: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, Mapping) and isinstance(row.get("key"), str):
            out[row["key"]] = str(row.get("label") or row["key"])
    return out


# --------------------------------------------------------------------------- clinicians


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
        kind = self._kinds.kind_of(self._population.practitioners.get(practitioner),
                                   [role] if role is not None else all_roles)
        organization = role.organization if role is not None else None
        if organization is None:
            patient = self._population.patients.get(assignment.patient)
            organization = patient.managing_organization if patient else None
        return ClinicianInfo(practitioner=practitioner, role=role_ref, kind=kind,
                             organization=organization)


# --------------------------------------------------------------------------- shared pieces


def _day(value: date) -> str:
    return value.isoformat()


def _concept(coding: Coding, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [dict(coding)]}
    if text:
        concept["text"] = text
    return concept


def _has_coding(concepts: Iterable[Any], coding: Coding) -> bool:
    for concept in concepts:
        for c in (concept.get("coding") or ()) if isinstance(concept, Mapping) else ():
            if (isinstance(c, Mapping) and c.get("system") == coding["system"]
                    and c.get("code") == coding["code"]):
                return True
    return False


def _with_concepts(existing: Any, wanted: Sequence[Coding]) -> list[Any]:
    """Our concepts first, in order, then any others already there."""
    others = [c for c in existing or () if not any(_has_coding([c], w) for w in wanted)]
    return [_concept(w) for w in wanted] + others


def _identifiers(existing: Mapping[str, Any] | None, cfg: WritebackSettings,
                 value: str) -> list[Any]:
    ours = {"system": cfg.identifier_system, "value": value}
    others = [i for i in (existing or {}).get("identifier") or ()
              if not (isinstance(i, Mapping) and i.get("system") == cfg.identifier_system)]
    return [ours, *others]


def _meta(existing: Mapping[str, Any] | None, cfg: WritebackSettings,
          profile: str | None) -> dict[str, Any]:
    """Our tag (and profile) added to what the resource already declares; the server's own
    version and timestamps are left out."""
    old = (existing or {}).get("meta")
    old = old if isinstance(old, Mapping) else {}
    meta: dict[str, Any] = {}
    profiles = [p for p in old.get("profile") or () if isinstance(p, str)]
    if profile and profile not in profiles:
        profiles.append(profile)
    if profiles:
        meta["profile"] = profiles
    if old.get("security"):
        meta["security"] = copy.deepcopy(old["security"])
    tags = [copy.deepcopy(t) for t in old.get("tag") or () if isinstance(t, Mapping)]
    if not any(t.get("system") == cfg.tag_system and t.get("code") == cfg.tag_code for t in tags):
        tags.append({"system": cfg.tag_system, "code": cfg.tag_code})
    meta["tag"] = tags
    return meta


def _start(resource: Mapping[str, Any] | None) -> str | None:
    period = (resource or {}).get("period")
    start = period.get("start") if isinstance(period, Mapping) else None
    return start if isinstance(start, str) else None


def _div(*parts: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML_NS}">{"".join(parts)}</div>'}


def _esc(value: object) -> str:
    return html.escape(str(value), quote=False)


def _ul(items: Iterable[str]) -> str:
    rows = "".join(f"<li>{item}</li>" for item in items)
    return f"<ul>{rows}</ul>" if rows else ""


def _start_resource(existing: Mapping[str, Any] | None, rtype: str) -> Resource:
    resource: Resource = copy.deepcopy(dict(existing)) if existing else {}
    resource["resourceType"] = rtype
    return resource


def _order(resource: Resource, first: Sequence[str]) -> Resource:
    """Keys in a stable, readable order (the diff ignores key order; people reading JSON don't)."""
    ordered: Resource = {k: resource[k] for k in first if k in resource}
    ordered.update({k: v for k, v in resource.items() if k not in ordered})
    return ordered


# --------------------------------------------------------------------------- CareTeam


def build_care_team(
    assignment: Assignment,
    existing: Mapping[str, Any] | None,
    as_of: date,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
    clinician: ClinicianInfo | None = None,
    problems: list[str] | None = None,
) -> Resource | None:
    """The patient's primary-care CareTeam (US Core CareTeam).

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
    today = _day(as_of)
    team = _start_resource(existing, "CareTeam")
    participants: list[dict[str, Any]] = [
        p for p in team.get("participant") or () if isinstance(p, dict)]
    ours = _our_participants(participants, codes)
    open_ours = [p for p in ours if not (p.get("period") or {}).get("end")]

    if assigned:
        info = clinician or ClinicianInfo(practitioner=str(assignment.practitioner),
                                          role=assignment.practitioner_role,
                                          kind=codes.kinds.default_kind)
        for_pcp = [p for p in open_ours
                   if info.refers_to((p.get("member") or {}).get("reference"))]
        current = for_pcp[0] if for_pcp else None
        if len(for_pcp) > 1:
            notes.append(f"{len(for_pcp)} open copies of fhirpanel's participant for "
                         f"{info.member}; left as they are, none added")
        for p in open_ours:
            if not any(p is q for q in for_pcp):
                _end_participant(p, today)
        if current is None:
            lookalike = _participant_lookalike(participants, ours, info, codes)
            if lookalike is not None:
                notes.append(f"a participant for {info.member} that looks like fhirpanel's own "
                             "is on the team but differs from what fhirpanel writes (the server "
                             "may rewrite it); not adding another")
            else:
                participants.append({
                    "id": f"{PCP_PARTICIPANT_PREFIX}{_next_participant_number(ours)}",
                    "role": [_concept(codes.role_for(info.kind))],
                    "member": {"reference": info.member},
                    "period": {"start": today},
                })
        team["status"] = "active"
        team["period"] = {"start": _start(existing) or today}
        if info.organization:
            team["managingOrganization"] = [{"reference": info.organization}]
    else:
        for p in open_ours:
            _end_participant(p, today)
        team["status"] = "inactive"
        period = dict(team.get("period") or {})
        period.setdefault("start", today)
        period.setdefault("end", max(today, str(period["start"])))
        team["period"] = period

    value = identifier_value(CARE_TEAM_KIND, assignment.patient)
    team["identifier"] = _identifiers(existing, cfg, value)
    team["meta"] = _meta(existing, cfg, codes.care_team_profile)
    team["category"] = _with_concepts(team.get("category"), [codes.care_team_category])
    team["name"] = team.get("name") or codes.care_team_name
    team["subject"] = {"reference": assignment.patient}
    team["participant"] = participants
    team["text"] = _care_team_text(team, codes)
    team = _order(team, ("resourceType", "id", "meta", "text", "identifier", "status",
                         "category", "name", "subject", "period", "participant",
                         "managingOrganization"))
    return validate_resource(team)


def open_pcp_members(team: Mapping[str, Any] | None, codes: WritebackCodes) -> list[str]:
    """The member references of fhirpanel's open PCP participants on a CareTeam (by element id,
    or by content on a server that drops element ids); [] for none or an inactive team."""
    if team is None or team.get("status") == "entered-in-error":
        return []
    participants = [p for p in team.get("participant") or () if isinstance(p, dict)]
    return [str((p.get("member") or {}).get("reference"))
            for p in _our_participants(participants, codes)
            if not (p.get("period") or {}).get("end")]


def _has_our_id(element: Mapping[str, Any], prefix: str) -> bool:
    return str(element.get("id", "")).startswith(prefix)


def _without_id(element: Mapping[str, Any]) -> bool:
    return not element.get("id")


def _our_participants(participants: Sequence[dict[str, Any]],
                      codes: WritebackCodes) -> list[dict[str, Any]]:
    """fhirpanel's participants: by element id; when none carries one of ours (a server that
    drops element ids), the id-less ones whose content is exactly what fhirpanel writes."""
    by_id = [p for p in participants if _has_our_id(p, PCP_PARTICIPANT_PREFIX)]
    if by_id:
        return by_id
    return [p for p in participants if _without_id(p) and _is_our_participant(p, codes)]


def _is_our_participant(participant: Mapping[str, Any], codes: WritebackCodes) -> bool:
    """Exactly the shape fhirpanel writes: one of its role concepts, a member reference and a
    period with a start (and maybe an end), nothing else."""
    if set(participant) - {"id", "role", "member", "period"}:
        return False
    member = participant.get("member")
    if not (isinstance(member, Mapping) and set(member) == {"reference"}
            and isinstance(member.get("reference"), str)):
        return False
    period = participant.get("period")
    if not (isinstance(period, Mapping) and isinstance(period.get("start"), str)
            and not set(period) - {"start", "end"}):
        return False
    roles = [_concept(coding) for coding in codes.roles.values()]
    return participant.get("role") in [[role] for role in roles]


def _reference_tail(reference: Any) -> str:
    """`PractitionerRole/r1` for a relative or absolute reference (or a versioned one)."""
    if not isinstance(reference, str):
        return ""
    parts = [p for p in reference.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[-2:])


def _participant_lookalike(participants: Sequence[Mapping[str, Any]],
                           ours: Sequence[Mapping[str, Any]], info: ClinicianInfo,
                           codes: WritebackCodes) -> Mapping[str, Any] | None:
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
        for concept in p.get("role") or ():
            codings = concept.get("coding") if isinstance(concept, Mapping) else None
            if any(isinstance(c, Mapping) and c.get("code") in role_codes for c in codings or ()):
                return p
    return None


def _end_participant(participant: dict[str, Any], day: str) -> None:
    period = dict(participant.get("period") or {})
    start = period.get("start")
    period["end"] = max(day, str(start)) if isinstance(start, str) else day
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
            when = f" from {_esc(period['start'])}"
        if period.get("end"):
            when += f" to {_esc(period['end'])}"
        rows.append(f"{_esc(role)}: {_esc(who)}{when}")
    name = team.get("name") or codes.care_team_name
    return _div(f"<p>{_esc(name)} ({_esc(team.get('status'))}).</p>", _ul(rows))


def _concept_label(concepts: Iterable[Any]) -> str:
    for concept in concepts:
        if not isinstance(concept, Mapping):
            continue
        for coding in concept.get("coding") or ():
            if isinstance(coding, Mapping) and coding.get("display"):
                return str(coding["display"])
        if concept.get("text"):
            return str(concept["text"])
    return "Participant"


# --------------------------------------------------------------------------- CarePlan


def care_plan_called_for(risk: RiskResult, cfg: WritebackSettings) -> bool:
    """Tiers in `care_plan_tiers`, and tier 2 when CCM-eligible (`care_plan_tier2_when_ccm`)."""
    return risk.tier in cfg.care_plan_tier_set or (
        risk.tier == 2 and risk.ccm_eligible and cfg.care_plan_tier2_when_ccm)


def care_plan_tiers(cfg: WritebackSettings) -> frozenset[int]:
    """Every tier that can get a CarePlan under these settings."""
    return cfg.care_plan_tier_set | ({2} if cfg.care_plan_tier2_when_ccm else set())


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
    wanted = (assignment.status == "assigned" and risk is not None
              and care_plan_called_for(risk, cfg))
    if not wanted and existing is None:
        return None
    if existing is not None and existing.get("status") == "entered-in-error":
        return None
    today = _day(as_of)
    plan = _start_resource(existing, "CarePlan")
    value = identifier_value(CARE_PLAN_KIND, assignment.patient)

    if wanted and risk is not None:
        template = templates.for_tier(risk.tier)
        if template is None:
            raise BuildError(f"CarePlan {value}: no template for tier {risk.tier} "
                             "(check careplan_templates against writeback.care_plan_tiers)")
        status = str(plan.get("status") or "")
        reopened = existing is not None and status in _CLOSED_PLAN_STATUSES
        plan["status"] = "on-hold" if status == "on-hold" else "active"
        plan["intent"] = "plan"
        plan["period"] = {"start": today if reopened or existing is None
                          else (_start(existing) or today)}
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
        activities = [copy.deepcopy(a) for a in plan.get("activity") or ()
                      if isinstance(a, Mapping)]
        mine = _our_activities(activities, templates)
        plan["activity"] = [_cancel_if_not_started(a) if any(a is m for m in mine) else a
                            for a in activities]
        if not plan["activity"]:
            plan.pop("activity")
        plan["text"] = _closed_plan_text(assignment, risk, today, codes, labels)

    plan["identifier"] = _identifiers(existing, cfg, value)
    plan["meta"] = _meta(existing, cfg, codes.care_plan_profile)
    plan["category"] = _with_concepts(plan.get("category"), codes.care_plan_categories)
    plan["subject"] = {"reference": assignment.patient}
    plan.setdefault("intent", "plan")
    plan = _order(plan, ("resourceType", "id", "meta", "text", "identifier", "status", "intent",
                         "category", "title", "description", "subject", "period", "careTeam",
                         "addresses", "activity"))
    return validate_resource(plan)


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


def _our_activities(activities: Sequence[Mapping[str, Any]],
                    templates: CarePlanTemplates) -> list[Mapping[str, Any]]:
    """fhirpanel's activities: by element id; when none carries one of ours (a server that drops
    element ids), the id-less ones with the kind and code of an activity in any tier's
    template."""
    by_id = [a for a in activities if _has_our_id(a, ACTIVITY_ID_PREFIX)]
    if by_id:
        return by_id
    keys = {_template_key(item) for tier in templates.tiers.values() for item in tier.activities}
    return [a for a in activities if _without_id(a) and _activity_key(a) in keys]


def _activity_lookalike(activities: Sequence[Mapping[str, Any]],
                        ours: Sequence[Mapping[str, Any]],
                        item: ActivityTemplate) -> Mapping[str, Any] | None:
    """An id-less activity, not recognised as ours, with the template activity's code or text:
    a copy of ours the server changed. Adding the template one again would be a duplicate."""
    for activity in activities:
        if any(activity is o for o in ours) or not _without_id(activity):
            continue
        detail = activity.get("detail")
        if not isinstance(detail, Mapping):
            continue
        code = detail.get("code")
        codings = code.get("coding") if isinstance(code, Mapping) else None
        if detail.get("description") == item.text or any(
                isinstance(c, Mapping) and c.get("code") == item.code["code"]
                for c in codings or ()):
            return activity
    return None


def _plan_activities(existing: Any, template: TierTemplate, templates: CarePlanTemplates,
                     notes: list[str]) -> list[Any]:
    old = [copy.deepcopy(a) for a in existing or () if isinstance(a, Mapping)]
    mine = _our_activities(old, templates)
    by_id = {str(a.get("id")): a for a in mine if _has_our_id(a, ACTIVITY_ID_PREFIX)}
    by_content = [a for a in mine if not _has_our_id(a, ACTIVITY_ID_PREFIX)]
    foreign = [a for a in old if not any(a is m for m in mine)]
    extras: list[Any] = []  # copies of ours beyond the first: left as they are
    activities: list[Any] = []
    for item in template.activities:
        previous = by_id.pop(item.element_id, None)
        keep_id = True
        if previous is None:
            copies = [a for a in by_content if _activity_key(a) == _template_key(item)]
            if copies:
                previous, keep_id = copies[0], False  # the server drops element ids
                by_content = [a for a in by_content if not any(a is c for c in copies)]
                if len(copies) > 1:
                    notes.append(f"{len(copies)} copies of fhirpanel's activity {item.key!r}; "
                                 "the extra ones are left as they are, none added")
                    extras.extend(copies[1:])
            elif _activity_lookalike(old, mine, item) is not None:
                notes.append(f"an activity that looks like fhirpanel's {item.key!r} is on the "
                             "plan but differs from what fhirpanel writes (the server may "
                             "rewrite it); not adding another")
                continue
        detail: dict[str, Any] = dict((previous or {}).get("detail") or {})
        detail["kind"] = item.kind
        detail["code"] = _concept(item.code, item.code.get("display"))
        detail["status"] = detail.get("status") or "not-started"
        detail["description"] = item.text
        activity = dict(previous or {})
        if keep_id:
            activity["id"] = item.element_id
        activity["detail"] = _order(detail, ("kind", "code", "status", "description"))
        activities.append(_order(activity, ("id", "detail")))
    # Template activities no longer called for: dropped unless someone has started them.
    leftover = [by_id[k] for k in sorted(by_id)] + by_content
    kept = [a for a in leftover
            if (a.get("detail") or {}).get("status", "not-started") != "not-started"]
    return activities + kept + extras + foreign


def _cancel_if_not_started(activity: Any) -> Any:
    """One of fhirpanel's activities, cancelled when nobody has started it."""
    activity = copy.deepcopy(activity)
    detail = activity.get("detail") if isinstance(activity, dict) else None
    if isinstance(detail, dict) and detail.get("status") == "not-started":
        detail["status"] = "cancelled"
    return activity


def _risk_drivers(risk: RiskResult, labels: NarrativeLabels) -> list[str]:
    rows = []
    if risk.hcc is not None:
        hccs = f" ({_esc(', '.join(risk.hccs))})" if risk.hccs else ""
        rows.append(f"CMS-HCC risk score {risk.hcc:.3f}{hccs}")
    else:
        rows.append("CMS-HCC risk score: not computed")
    categories = ", ".join(labels.charlson.get(c, c) for c in risk.charlson_categories)
    rows.append(f"Charlson Comorbidity Index {risk.charlson}"
                + (f" ({_esc(categories)})" if categories else ""))
    window = (f" in the last {labels.utilisation_months} months"
              if labels.utilisation_months else "")
    rows.append(f"Emergency visits: {risk.ed_visits}; inpatient stays: "
                f"{risk.inpatient_stays}{window}")
    chronic = ", ".join(labels.chronic.get(c, c) for c in risk.chronic_conditions)
    ccm = "; eligible for Chronic Care Management" if risk.ccm_eligible else ""
    rows.append(f"Chronic conditions ({len(risk.chronic_conditions)})"
                + (f": {_esc(chronic)}" if chronic else "") + ccm)
    return rows


def _care_plan_text(risk: RiskResult, template: TierTemplate, codes: WritebackCodes,
                    labels: NarrativeLabels) -> dict[str, str]:
    why = f"rule {_esc(risk.tier_rule)}"
    if risk.tier == 2 and risk.ccm_eligible:
        why += " with Chronic Care Management eligibility (two or more chronic conditions)"
    activities = [f"{_esc(a.code.get('display', a.key))}: {_esc(a.text)}"
                  for a in template.activities]
    addressed = len(set(risk.basis_conditions))
    return _div(
        f"<p><b>{_esc(codes.care_plan_title)}</b>, risk {_esc(labels.tier(risk.tier))}.</p>",
        f"<p>Why this tier: {why}.</p>",
        _ul(_risk_drivers(risk, labels)),
        f"<p>Conditions addressed: {addressed}.</p>" if addressed else "",
        "<p>Planned activities:</p>",
        _ul(activities),
    )


def _closed_plan_text(assignment: Assignment, risk: RiskResult | None, day: str,
                      codes: WritebackCodes, labels: NarrativeLabels) -> dict[str, str]:
    if assignment.status == "excluded":
        why = f"the patient is no longer active ({_esc(assignment.reason or 'excluded')})"
        verb = "revoked"
    elif assignment.status != "assigned":
        why = "the patient has no attributed primary-care clinician"
        verb = "completed"
    else:
        tier = labels.tier(risk.tier) if risk is not None else "unknown"
        why = f"the patient's risk is now {_esc(tier)}, which does not call for care management"
        verb = "completed"
    return _div(f"<p><b>{_esc(codes.care_plan_title)}</b> {verb} on {_esc(day)}: {why}.</p>")


# --------------------------------------------------------------------------- RiskAssessment


def build_risk_assessment(
    assignment: Assignment,
    risk: RiskResult | None,
    existing: Mapping[str, Any] | None,
    as_of: date,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
    labels: NarrativeLabels | None = None,
) -> Resource | None:
    """The patient's risk tier as a RiskAssessment: method, basis Conditions, a prediction with
    the qualitative risk (risk-probability) and the tier, the CMS-HCC score as `relativeRisk`, the
    Charlson index in the rationale. Status `final`, `amended` once it changes; an unchanged
    assessment keeps its date. Excluded patients: None (a past assessment stays as it was)."""
    labels = labels or NarrativeLabels()
    if risk is None or assignment.status == "excluded":
        return None
    value = identifier_value(RISK_ASSESSMENT_KIND, assignment.patient)
    qualitative = codes.risk_by_tier.get(risk.tier)
    rationale = [f"Charlson Comorbidity Index {risk.charlson}"]
    if risk.hcc is not None:
        rationale.append(f"CMS-HCC risk score {risk.hcc:.3f}")
    rationale.append(f"tier rule {risk.tier_rule}")
    prediction: dict[str, Any] = {"outcome": {"text": f"Risk {labels.tier(risk.tier)}"}}
    if qualitative is not None:
        prediction["qualitativeRisk"] = _concept(qualitative)
    if risk.hcc is not None:
        prediction["relativeRisk"] = round(risk.hcc, 3)
    prediction["rationale"] = "; ".join(rationale)
    assessment = _start_resource(existing, "RiskAssessment")
    assessment.update({
        "identifier": _identifiers(existing, cfg, value),
        "meta": _meta(existing, cfg, None),
        "status": "final",
        "subject": {"reference": assignment.patient},
        "occurrenceDateTime": _day(as_of),
        "code": {"text": codes.risk_code_text},
        "method": {"text": codes.risk_method_text},
        "prediction": [prediction],
        "note": [{"text": "; ".join(rationale)}],
        "text": _div(f"<p>Risk {_esc(labels.tier(risk.tier))}.</p>",
                     _ul(_risk_drivers(risk, labels))),
    })
    basis = [{"reference": c} for c in sorted(set(risk.basis_conditions))]
    if basis:
        assessment["basis"] = basis
    else:
        assessment.pop("basis", None)
    if existing is not None:
        unchanged = same_content(
            {**assessment, "status": None, "occurrenceDateTime": None},
            {**existing, "status": None, "occurrenceDateTime": None})
        if unchanged:
            for key in ("status", "occurrenceDateTime"):
                if key in existing:
                    assessment[key] = existing[key]
        else:
            assessment["status"] = "amended"
    assessment = _order(assessment, ("resourceType", "id", "meta", "text", "identifier", "status",
                                     "code", "method", "subject", "occurrenceDateTime", "basis",
                                     "prediction", "note"))
    return validate_resource(assessment)


# --------------------------------------------------------------------------- attribution Group


@dataclass(frozen=True, order=True)
class GroupMember:
    patient: str
    provider: str  # PractitionerRole/... or Practitioner/...


def build_attribution_group(
    organization: str,
    members: Iterable[GroupMember],
    existing: Mapping[str, Any] | None,
    as_of: date,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
) -> Resource | None:
    """One organisation's attributed patients after the Da Vinci Member Attribution List: Group
    type person, actual, managingEntity the organisation, each member with the ATR
    attributedProvider and changeType extensions. A new version is built only when a member
    joins, leaves or changes provider; then changeType is new, changed or nochange, and members
    who left are listed once as dropped (inactive, `period.end` = as-of)."""
    wanted = {m.patient: m.provider for m in members}
    if not wanted and existing is None:
        return None
    today = _day(as_of)
    previous = _group_members(existing, codes)
    current = {p: m for p, m in previous.items() if m["change"] != codes.change_dropped}
    value = identifier_value(ATTRIBUTION_GROUP_KIND, organization)
    group = _start_resource(existing, "Group")
    if existing is None or {p: m["provider"] for p, m in current.items()} != wanted:
        listed: list[dict[str, Any]] = []
        for patient in sorted(wanted):
            provider, before = wanted[patient], current.get(patient)
            if before is None:
                change, start = codes.change_new, today
            elif before["provider"] != provider:
                change, start = codes.change_changed, today
            else:
                change, start = codes.change_none, before["start"] or today
            listed.append(_group_member(patient, provider, change, {"start": start}, codes))
        for patient in sorted(set(current) - set(wanted)):
            before = current[patient]
            start = before["start"] or today
            member = _group_member(patient, before["provider"], codes.change_dropped,
                                   {"start": start, "end": max(today, start)}, codes)
            member["inactive"] = True
            listed.append(member)
        group["member"] = listed
        counts = {c: sum(1 for m in listed if _member_change(m, codes) == c)
                  for c in (codes.change_new, codes.change_changed, codes.change_dropped)}
        group["text"] = _div(
            f"<p>Attribution list for {_esc(organization)}: {len(wanted)} patients "
            f"({counts[codes.change_new]} new, {counts[codes.change_changed]} changed provider, "
            f"{counts[codes.change_dropped]} dropped) as of {_esc(today)}.</p>")
    group["identifier"] = _identifiers(existing, cfg, value)
    group["meta"] = _meta(existing, cfg, None)
    group["active"] = True
    group["type"] = "person"
    group["actual"] = True
    group["name"] = group.get("name") or f"fhirpanel attribution list, {organization}"
    group["managingEntity"] = {"reference": organization}
    group["quantity"] = len(wanted)
    group = _order(group, ("resourceType", "id", "meta", "text", "identifier", "active", "type",
                           "actual", "name", "managingEntity", "quantity", "member"))
    return validate_resource(group)


def _group_member(patient: str, provider: str, change: str, period: dict[str, str],
                  codes: WritebackCodes) -> dict[str, Any]:
    return {
        "extension": [
            {"url": codes.attributed_provider_url, "valueReference": {"reference": provider}},
            {"url": codes.change_type_url, "valueCode": change},
        ],
        "entity": {"reference": patient},
        "period": period,
    }


def _member_change(member: Mapping[str, Any], codes: WritebackCodes) -> str | None:
    for ext in member.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == codes.change_type_url:
            value = ext.get("valueCode")
            return value if isinstance(value, str) else None
    return None


def _group_members(existing: Mapping[str, Any] | None,
                   codes: WritebackCodes) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for member in (existing or {}).get("member") or ():
        if not isinstance(member, Mapping):
            continue
        patient = (member.get("entity") or {}).get("reference")
        if not isinstance(patient, str):
            continue
        provider = None
        for ext in member.get("extension") or ():
            if isinstance(ext, Mapping) and ext.get("url") == codes.attributed_provider_url:
                provider = (ext.get("valueReference") or {}).get("reference")
        out[patient] = {"provider": provider, "change": _member_change(member, codes),
                        "start": (member.get("period") or {}).get("start")}
    return out


# --------------------------------------------------------------------------- Provenance


def _recorded(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BuildError("Provenance.recorded needs a timezone-aware instant")
    return fhir_instant(moment)


def build_provenance(
    targets: Iterable[str],
    recorded: datetime,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
    activity: str,
) -> Resource:
    """One Provenance for a write batch: the written resources with their versions
    (`Type/id/_history/v`), when, the v3-DataOperation `activity` (CREATE or UPDATE), the reason,
    and fhirpanel as the agent (a Device named by `author_name`). R4 Provenance has no
    identifier element; it is tagged, and only ever created."""
    listed = sorted(set(targets))
    if not listed:
        raise BuildError("Provenance needs at least one target")
    display = {"CREATE": "create", "UPDATE": "revise"}.get(activity, activity.lower())
    provenance: Resource = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": cfg.tag_system, "code": cfg.tag_code}]},
        "target": [{"reference": t} for t in listed],
        "recorded": _recorded(recorded),
        "activity": _concept({"system": codes.provenance_activity_system, "code": activity,
                              "display": display}),
        "reason": [_concept(codes.provenance_reason)],
        "agent": [{
            "type": _concept(codes.provenance_agent_type),
            "who": {"type": "Device", "display": cfg.author_name},
        }],
    }
    return validate_resource(provenance)
