"""The write-back's tables, typed: the codes and fixed texts of what fhirpanel writes
(`mappings/writeback_codes.toml`), the per-tier CarePlan activities
(`mappings/careplan_templates.toml`) and the labels the narratives use (docs/methods.md s.6).

Built by `fhirpanel.tables.loader` from validated files; each type checks what the schema cannot
(well-formed codes, unique activity keys). The builders in `fhirpanel.writeback` read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import check_code, normalise_label
from fhirpanel.domain.records import PractitionerRecord, PractitionerRoleRecord
from fhirpanel.errors import MappingError

Coding = dict[str, str]

ClinicianKind = Literal["physician", "nurse_practitioner", "physician_assistant"]
CLINICIAN_KINDS: Final[tuple[str, ...]] = get_args(ClinicianKind)
# CarePlan.activity.detail.kind (R4 care-plan-activity-kind value set).
ActivityKind = Literal[
    "Appointment",
    "CommunicationRequest",
    "DeviceRequest",
    "MedicationRequest",
    "NutritionOrder",
    "Task",
    "ServiceRequest",
    "VisionPrescription",
]
ACTIVITY_KINDS: Final[frozenset[str]] = frozenset(get_args(ActivityKind))
# US Core CarePlan requires the assess-plan category (slice AssessPlan).
ASSESS_PLAN: Final = "assess-plan"


def _check_codings(codings: Iterable[tuple[str, Coding]]) -> None:
    for where, coding in codings:
        check_code(coding["system"], coding["code"], where)


@dataclass(frozen=True)
class ClinicianKindRule:
    kind: str
    qualifications: frozenset[str]
    taxonomy_prefixes: tuple[str, ...]
    qualification_texts: frozenset[str]  # normalised


@dataclass(frozen=True)
class ClinicianKinds:
    """How to tell a physician from a nurse practitioner or physician assistant."""

    default_kind: str
    qualification_system: str
    taxonomy_system: str
    rules: tuple[ClinicianKindRule, ...]  # in CLINICIAN_KINDS order: the first match wins

    def kind_of(
        self, practitioner: PractitionerRecord | None, roles: Sequence[PractitionerRoleRecord] = ()
    ) -> str:
        """Qualification codes (v2-0360) first, then PractitionerRole taxonomy codes, then
        qualification texts; else the default kind."""
        if practitioner is not None:
            quals = {
                c.code for c in practitioner.qualifications if c.system == self.qualification_system
            }
            for rule in self.rules:
                if quals & rule.qualifications:
                    return rule.kind
        taxonomies = sorted(
            c.code
            for role in roles
            for c in (*role.codes, *role.specialties)
            if c.system == self.taxonomy_system
        )
        for rule in self.rules:
            if any(t.startswith(rule.taxonomy_prefixes) for t in taxonomies):
                return rule.kind
        if practitioner is not None:
            texts = {normalise_label(t) for t in practitioner.qualification_texts}
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

    def __post_init__(self) -> None:
        # Named by their place in writeback_codes.toml.
        _check_codings(
            [
                ("care_team.category", self.care_team_category),
                *((f"roles.{kind}", coding) for kind, coding in self.roles.items()),
                *(
                    (f"care_plan.categories[{n}]", coding)
                    for n, coding in enumerate(self.care_plan_categories, start=1)
                ),
                *(
                    (f"risk_assessment.tiers.{tier}", coding)
                    for tier, coding in self.risk_by_tier.items()
                ),
                ("provenance.agent_type", self.provenance_agent_type),
                ("provenance.reason", self.provenance_reason),
            ]
        )
        if not self.care_plan_categories or self.care_plan_categories[0]["code"] != ASSESS_PLAN:
            raise MappingError(
                f"care_plan.categories: the first category must be US Core "
                f"{ASSESS_PLAN} (US Core CarePlan requires it)"
            )

    def role_for(self, kind: str) -> Coding:
        return self.roles.get(kind, self.roles[self.kinds.default_kind])


@dataclass(frozen=True)
class ActivityTemplate:
    key: str
    kind: str
    code: Coding
    text: str


@dataclass(frozen=True)
class TierTemplate:
    tier: int
    description: str
    activities: tuple[ActivityTemplate, ...]


@dataclass(frozen=True)
class CarePlanTemplates:
    """Per-tier CarePlan activities (mappings/careplan_templates)."""

    tiers: Mapping[int, TierTemplate]

    def __post_init__(self) -> None:
        for tier, template in self.tiers.items():
            keys = [a.key for a in template.activities]
            if len(set(keys)) != len(keys):
                raise MappingError(f"tiers.{tier}.activities: activity keys must be unique")
            _check_codings(
                (f"tiers.{tier}.activities[{n}].code", a.code)
                for n, a in enumerate(template.activities, start=1)
            )

    def for_tier(self, tier: int) -> TierTemplate | None:
        return self.tiers.get(tier)

    def require(self, tiers: Iterable[int]) -> None:
        """MappingError unless every tier that gets a CarePlan has a template."""
        missing = sorted(set(tiers) - set(self.tiers))
        if missing:
            raise MappingError(
                f"no activities for tier(s) {missing}, which "
                "writeback.care_plan_tiers gives a CarePlan"
            )


def care_plan_tiers(cfg: WritebackSettings) -> frozenset[int]:
    """Every tier that can get a CarePlan under these settings."""
    return cfg.care_plan_tier_set | ({2} if cfg.care_plan_tier2_when_ccm else set())


@dataclass(frozen=True)
class NarrativeLabels:
    """Human labels for the narrative: tier names, Charlson categories, chronic groups."""

    tiers: Mapping[int, str] = field(default_factory=dict)
    charlson: Mapping[str, str] = field(default_factory=dict)
    chronic: Mapping[str, str] = field(default_factory=dict)
    utilisation_months: int | None = None

    def tier(self, tier: int) -> str:
        label = self.tiers.get(tier)
        return f"tier {tier} ({label})" if label else f"tier {tier}"

    def tier_short(self, tier: int) -> str:
        label = self.tiers.get(tier)
        return label.split(":", 1)[0] if label else f"tier {tier}"
