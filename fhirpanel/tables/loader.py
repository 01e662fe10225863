"""Every mapping table a pass needs, loaded once: `Tables.load(settings)`.

Each file named in settings (a name under the mappings folder or a path to a `.toml` file) is
read once (`files`), validated against its model (`schemas`), and handed to the typed tables'
constructors, which check what the model cannot (`fhirpanel.domain`, `tables.writeback`). Every
error is one MappingError that starts with the file: `mappings/tiers.toml: rules[2]: ...`.

The `parse_*` functions do the same for one file's plain data (tests, benchmarks, a practice
checking its own file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fhirpanel.config import RiskSettings, Settings, WritebackSettings
from fhirpanel.domain.attribution import (
    AttributionRules,
    Pipeline,
    PipelineStep,
    PrimaryCareSpecialties,
    SentinelExamCodes,
    VisitRules,
    normalise_label,
)
from fhirpanel.domain.blend import BlendWeights
from fhirpanel.domain.charlson import AgeBand, CharlsonCategory, CharlsonTable
from fhirpanel.domain.conditions import (
    ChronicConditions,
    ChronicGroup,
    ConditionFilter,
    Crosswalk,
    CrosswalkRow,
)
from fhirpanel.domain.hcc import HccSegment, HccSettings
from fhirpanel.domain.panels import AgeSexWeights, CapacitySettings, ClinicianCapacity
from fhirpanel.domain.pediatric import PediatricComplexity, body_system
from fhirpanel.domain.risk import RiskConfig, UtilisationRules
from fhirpanel.domain.teams import Teams
from fhirpanel.domain.tiers import TierRule, TierRules, TierShape, clauses
from fhirpanel.errors import MappingError
from fhirpanel.tables import files
from fhirpanel.tables.schemas import (
    AgeSexWeightsFile,
    BlendFile,
    CapacityFile,
    CarePlanTemplatesFile,
    CharlsonFile,
    ChronicConditionsFile,
    CodeRow,
    CrosswalkFile,
    HccSection,
    KindRule,
    PediatricComplexityFile,
    PipelineFile,
    PrimaryCareFile,
    QualifyingVisitsFile,
    RiskFile,
    SentinelExamsFile,
    TableFile,
    TeamsFile,
    TierRuleRow,
    TiersFile,
    WritebackCodesFile,
    validate,
)
from fhirpanel.tables.writeback import (
    CLINICIAN_KINDS,
    ActivityTemplate,
    CarePlanTemplates,
    ClinicianKindRule,
    ClinicianKinds,
    Coding,
    NarrativeLabels,
    TierTemplate,
    WritebackCodes,
    care_plan_tiers,
)

M = TypeVar("M", bound=TableFile)
T = TypeVar("T")

# Files every pass reads under these names; the others are named in settings.
CHARLSON = "charlson_quan2005"
CROSSWALK = "snomed_icd10cm"
CHRONIC = "chronic_conditions"
RISK = "risk"
BLEND = "blend"
PEDIATRIC = "pediatric_complexity"
WRITEBACK_CODES = "writeback_codes"


@dataclass(frozen=True)
class MethodTables:
    """The method's tables: attribution rules and pipeline, capacities, risk scoring, and the
    weights of the blended adjustment factor."""

    rules: AttributionRules
    pipeline: Pipeline
    capacities: CapacitySettings
    risk: RiskConfig
    blend: BlendWeights | None = None  # None: no blended size


@dataclass(frozen=True)
class WritebackTables:
    """The write-back's tables: codes, CarePlan templates, narrative labels."""

    codes: WritebackCodes
    templates: CarePlanTemplates
    labels: NarrativeLabels
    # Care teams (`mappings/teams.toml`): the CareTeam lists the PCP's team members too.
    teams: Teams = dataclasses.field(default_factory=Teams)


@dataclass(frozen=True)
class Tables:
    """Everything a pass needs from the mapping files, loaded and checked once at its start."""

    method: MethodTables
    writeback: WritebackTables

    @classmethod
    def load(cls, settings: Settings) -> Tables:
        reader = _Reader(settings.mappings_path)
        return cls(
            method=reader.method(settings),
            writeback=_with_teams(
                reader.writeback(settings.writeback, settings.risk.tiers),
                reader.build(settings.attribution.teams, TeamsFile, _teams),
                reader.label(settings.attribution.teams),
            ),
        )

    @property
    def teams(self) -> Teams:
        return self.writeback.teams


class _Reader:
    """Reads and validates each file once per load, whichever tables use it."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._models: dict[tuple[type[TableFile], str], TableFile] = {}

    def label(self, ref: str) -> str:
        return files.label(files.mapping_path(ref, self.directory))

    def model(self, schema: type[M], ref: str) -> M:
        found = self._models.get((schema, ref))
        if not isinstance(found, schema):
            found = validate(schema, files.load_mapping_ref(ref, self.directory), self.label(ref))
            self._models[(schema, ref)] = found
        return found

    def build(self, ref: str, schema: type[M], convert: Callable[[M], T]) -> T:
        model = self.model(schema, ref)
        return _within(self.label(ref), lambda: convert(model))

    def method(self, settings: Settings) -> MethodTables:
        att = settings.attribution
        return MethodTables(
            rules=AttributionRules(
                visits=self.build(att.qualifying_visits, QualifyingVisitsFile, _visit_rules),
                sentinel=self.build(att.sentinel_exams, SentinelExamsFile, _sentinel_exams),
                primary_care=self.build(att.primary_care, PrimaryCareFile, _primary_care),
            ),
            pipeline=self.build(att.pipeline, PipelineFile, _pipeline),
            capacities=self.build(att.capacity, CapacityFile, _capacities),
            risk=self.risk(settings.risk),
            blend=self.build(BLEND, BlendFile, _blend),
        )

    def risk(self, settings: RiskSettings) -> RiskConfig:
        charlson = self.build(CHARLSON, CharlsonFile, _charlson)
        crosswalk = self.build(CROSSWALK, CrosswalkFile, _crosswalk)
        chronic = self.build(CHRONIC, ChronicConditionsFile, _chronic)
        tiers = self.build(settings.tiers, TiersFile, _tier_rules)
        pediatric = self.build(PEDIATRIC, PediatricComplexityFile, _pediatric)
        risk = self.model(RiskFile, RISK)
        return _within(
            self.label(RISK),
            lambda: _risk_config(
                risk,
                charlson=charlson,
                crosswalk=crosswalk,
                chronic=chronic,
                tiers=tiers,
                settings=settings,
                pediatric=pediatric,
            ),
        )

    def writeback(self, settings: WritebackSettings, tiers: str) -> WritebackTables:
        ref = settings.care_plan_templates
        templates = self.build(ref, CarePlanTemplatesFile, _templates)
        _within(self.label(ref), lambda: templates.require(care_plan_tiers(settings)))
        return WritebackTables(
            codes=self.build(WRITEBACK_CODES, WritebackCodesFile, _writeback_codes),
            templates=templates,
            labels=_labels(
                self.model(TiersFile, tiers),
                self.model(CharlsonFile, CHARLSON),
                self.model(ChronicConditionsFile, CHRONIC),
                self.model(RiskFile, RISK),
            ),
        )


def _within(where: str, make: Callable[[], T]) -> T:
    """`make()`, with the file named in front of the MappingError a typed table raises."""
    try:
        return make()
    except MappingError as exc:
        raise MappingError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------------- one file's data


def _parse(data: Mapping[str, Any], where: str, schema: type[M], convert: Callable[[M], T]) -> T:
    model = validate(schema, data, where)
    return _within(where, lambda: convert(model))


def parse_visit_rules(data: Mapping[str, Any], where: str = "qualifying_visits") -> VisitRules:
    return _parse(data, where, QualifyingVisitsFile, _visit_rules)


def parse_sentinel_exams(
    data: Mapping[str, Any], where: str = "sentinel_exams"
) -> SentinelExamCodes:
    return _parse(data, where, SentinelExamsFile, _sentinel_exams)


def parse_primary_care(
    data: Mapping[str, Any], where: str = "primary_care"
) -> PrimaryCareSpecialties:
    return _parse(data, where, PrimaryCareFile, _primary_care)


def parse_pipeline(data: Mapping[str, Any], where: str = "pipeline") -> Pipeline:
    return _parse(data, where, PipelineFile, _pipeline)


def parse_capacities(data: Mapping[str, Any], where: str = "capacity") -> CapacitySettings:
    return _parse(data, where, CapacityFile, _capacities)


def parse_blend(data: Mapping[str, Any], where: str = BLEND) -> BlendWeights:
    return _parse(data, where, BlendFile, _blend)


def parse_age_sex_weights(data: Mapping[str, Any], where: str = "age_sex_weights") -> AgeSexWeights:
    return _parse(data, where, AgeSexWeightsFile, _age_sex_weights)


def parse_charlson(data: Mapping[str, Any], where: str = CHARLSON) -> CharlsonTable:
    return _parse(data, where, CharlsonFile, _charlson)


def parse_crosswalk(data: Mapping[str, Any], where: str = CROSSWALK) -> Crosswalk:
    return _parse(data, where, CrosswalkFile, _crosswalk)


def parse_chronic(data: Mapping[str, Any], where: str = CHRONIC) -> ChronicConditions:
    return _parse(data, where, ChronicConditionsFile, _chronic)


def parse_tier_rules(data: Mapping[str, Any], where: str = "tiers") -> TierRules:
    return _parse(data, where, TiersFile, _tier_rules)


def parse_hcc_settings(data: Mapping[str, Any], where: str = RISK) -> HccSettings:
    """The `[hcc]` table of a whole `risk.toml`'s data."""
    return _parse(data, where, RiskFile, lambda risk: _hcc(risk.hcc))


def parse_writeback_codes(data: Mapping[str, Any], where: str = WRITEBACK_CODES) -> WritebackCodes:
    return _parse(data, where, WritebackCodesFile, _writeback_codes)


def parse_templates(
    data: Mapping[str, Any], where: str = "careplan_templates"
) -> CarePlanTemplates:
    return _parse(data, where, CarePlanTemplatesFile, _templates)


# --------------------------------------------------------------------------- models -> tables


def _pairs(rows: Sequence[CodeRow]) -> list[tuple[str, str]]:
    return [(row.system, row.code) for row in rows]


def _visit_rules(f: QualifyingVisitsFile) -> VisitRules:
    return VisitRules.create(
        statuses=f.statuses.qualifying,
        classes=f.classes.qualifying,
        not_qualifying=f.classes.not_qualifying,
        excluded_codes=_pairs(f.excluded_codes),
        excluded_texts=f.excluded_texts.labels,
    )


def _sentinel_exams(f: SentinelExamsFile) -> SentinelExamCodes:
    return SentinelExamCodes.create(codes=_pairs(f.codes), not_sentinel=_pairs(f.not_sentinel))


def _primary_care(f: PrimaryCareFile) -> PrimaryCareSpecialties:
    return PrimaryCareSpecialties.create(
        codes=_pairs(f.codes),
        labels=f.texts.labels,
        pediatric_codes=_pairs([row for row in f.codes if row.pediatric]),
        pediatric_labels=f.texts.pediatric_labels,
    )


def _pipeline(f: PipelineFile) -> Pipeline:
    return Pipeline(
        name=f.name, steps=tuple(PipelineStep(s.kind, s.window_months) for s in f.steps)
    )


def _capacities(f: CapacityFile) -> CapacitySettings:
    d = f.default
    default = ClinicianCapacity(
        d.visits_per_day, d.clinic_days_per_year, d.visits_per_patient_per_year, d.fte
    )
    # An override changes the fields it names; the rest are the default's.
    named = {ref: row.model_dump(exclude_none=True) for ref, row in sorted(f.overrides.items())}
    return CapacitySettings(
        default=default,
        overrides={ref: dataclasses.replace(default, **fields) for ref, fields in named.items()},
        pediatric_age_limit=f.suggestions.pediatric_age_limit,
        continuity_months=f.suggestions.continuity_months,
        method=f.method,
        # FTE alone scales observed visits; any other figure replaces them (capacity.py).
        fte_only=frozenset(ref for ref, fields in named.items() if set(fields) == {"fte"}),
        closed=frozenset(ref for ref, panel in f.panels.items() if not panel.open),
    )


def _with_teams(writeback: WritebackTables, teams: Teams, label: str) -> WritebackTables:
    """A team role must not be a PCP participant's coding: a server that drops element ids has
    the CareTeam's participants told apart by their role (writeback/builders/care_team.py)."""
    pcp = {(c["system"], c["code"]) for c in writeback.codes.roles.values()}
    for team in teams.teams:
        for member in team.members:
            if (member.role.system, member.role.code) in pcp:
                raise MappingError(
                    f"{label}: roles.{member.role.key}: {member.role.code} is the PCP "
                    "participant's role in writeback_codes.toml; use another code for a team role"
                )
    return dataclasses.replace(writeback, teams=teams)


def _teams(f: TeamsFile) -> Teams:
    return Teams.create(
        {key: (r.system, r.code, r.display) for key, r in f.roles.items()},
        [(t.id, t.name, [(m.practitioner, m.role) for m in t.members]) for t in f.teams],
    )


def _blend(f: BlendFile) -> BlendWeights:
    w = f.weights
    return BlendWeights(
        age_sex=w.age_sex, hcc=w.hcc, charlson=w.charlson, utilisation=w.utilisation
    )


def _age_sex_weights(f: AgeSexWeightsFile) -> AgeSexWeights:
    return AgeSexWeights.create([(row.band, row.sex, row.weight) for row in f.weights])


def _charlson(f: CharlsonFile) -> CharlsonTable:
    return CharlsonTable.create(
        weight_sets=list(f.weight_sets),
        categories=[
            (CharlsonCategory(c.key, c.label, tuple(c.icd10_prefixes)), c.weights)
            for c in f.categories
        ],
        hierarchy=[(h.drop, h.when) for h in f.hierarchy],
        age_bands=[AgeBand(a.min_age, a.max_age, a.points) for a in f.age_points],
    )


def _crosswalk(f: CrosswalkFile) -> Crosswalk:
    return Crosswalk.create(
        [
            CrosswalkRow(r.snomed, r.snomed_display, r.icd10cm, r.icd10cm_display, r.note)
            for r in f.rows
        ]
    )


def _chronic(f: ChronicConditionsFile) -> ChronicConditions:
    groups = tuple(
        ChronicGroup(
            g.key,
            g.label,
            tuple(g.icd10cm_prefixes),
            tuple((low, high) for low, high in g.icd10cm_ranges),
        )
        for g in f.groups
    )
    return ChronicConditions(groups=groups, min_for_ccm=f.ccm.min_chronic_conditions)


def _rules(rows: Sequence[TierRuleRow], where: str) -> tuple[TierRule, ...]:
    return tuple(
        TierRule(
            r.tier,
            r.name,
            clauses(r.all_of, f"{where}[{n}].all"),
            clauses(r.any_of, f"{where}[{n}].any"),
        )
        for n, r in enumerate(rows, start=1)
    )


def _pediatric(f: PediatricComplexityFile) -> PediatricComplexity:
    keys = [s.key for s in f.systems]
    if f.framework.malignancy not in keys:
        raise MappingError(
            f"framework.malignancy: {f.framework.malignancy!r} is not a body system's key"
        )
    return PediatricComplexity(
        systems=tuple(
            body_system(
                s.key,
                s.label,
                s.prefixes,
                s.progressive_prefixes,
                s.codes,
                s.progressive_codes,
                malignant=s.key == f.framework.malignancy,
            )
            for s in f.systems
        ),
        adult_age=f.framework.adult_age,
    )


def parse_pediatric(data: Mapping[str, Any], where: str = PEDIATRIC) -> PediatricComplexity:
    return _parse(data, where, PediatricComplexityFile, _pediatric)


def _tier_rules(f: TiersFile) -> TierRules:
    rules = _rules(f.rules, "rules")
    s = f.shape
    shape = (
        TierShape(s.high_min_share, s.high_max_share, s.complex_max_share)
        if s is not None
        else TierShape()
    )
    return TierRules(
        rules=rules,
        default_tier=f.default_tier,
        labels={int(k): label for k, label in f.tiers.items()},
        shape=shape,
        pediatric_rules=_rules(f.pediatric.rules, "pediatric.rules") if f.pediatric else (),
    )


def _hcc(h: HccSection) -> HccSettings:
    return HccSettings(
        models=dict(h.models),
        segments={
            key: HccSegment(key, s.label, s.dual_elgbl_cd, s.orec, s.crec)
            for key, s in h.segments.items()
        },
        default_model=h.model,
        default_segment=h.segment,
        payment_year=h.payment_year,
        sex_codes=dict(h.sex),
    )


def _risk_config(
    risk: RiskFile,
    *,
    charlson: CharlsonTable,
    crosswalk: Crosswalk,
    chronic: ChronicConditions,
    tiers: TierRules,
    settings: RiskSettings,
    pediatric: PediatricComplexity | None = None,
) -> RiskConfig:
    """Settings name the weight set, age points, model and segment; risk.toml's are defaults."""
    hcc, conditions, use = _hcc(risk.hcc), risk.conditions, risk.utilisation
    return RiskConfig(
        charlson=charlson,
        crosswalk=crosswalk,
        chronic=chronic,
        tiers=tiers,
        hcc=hcc,
        condition_filter=ConditionFilter(
            counted_clinical_status=frozenset(conditions.counted_clinical_status),
            count_absent_clinical_status=conditions.count_absent_clinical_status,
            skipped_verification_status=frozenset(conditions.skipped_verification_status),
        ),
        utilisation=UtilisationRules(
            lookback_months=use.lookback_months,
            statuses=frozenset(use.encounter_statuses),
            ed_classes=frozenset(use.ed_classes),
            inpatient_classes=frozenset(use.inpatient_classes),
        ),
        charlson_weights=settings.charlson_weights or risk.charlson.weights,
        charlson_age_points=settings.charlson_age_points,
        hcc_model=settings.hcc_model or hcc.default_model,
        hcc_segment=settings.hcc_segment or hcc.default_segment,
        pediatric=pediatric,
    )


def _coding(row: CodeRow) -> Coding:
    return _coding_of(row.system, row.code, row.display)


def _coding_of(system: str, code: str, display: str | None) -> Coding:
    coding: Coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def _kind_rule(kind: str, rule: KindRule) -> ClinicianKindRule:
    return ClinicianKindRule(
        kind=kind,
        qualifications=frozenset(rule.qualifications),
        taxonomy_prefixes=tuple(rule.taxonomy_prefixes),
        qualification_texts=frozenset(normalise_label(t) for t in rule.qualification_texts),
    )


def _writeback_codes(f: WritebackCodesFile) -> WritebackCodes:
    team, kinds, plan, risk = f.care_team, f.kinds, f.care_plan, f.risk_assessment
    group, prov = f.attribution_group, f.provenance
    return WritebackCodes(
        care_team_name=team.name,
        care_team_category=_coding(team.category),
        care_team_profile=team.profile,
        roles={kind: _coding(getattr(f.roles, kind)) for kind in CLINICIAN_KINDS},
        kinds=ClinicianKinds(
            default_kind=kinds.default_kind,
            qualification_system=kinds.qualification_system,
            taxonomy_system=kinds.taxonomy_system,
            rules=tuple(_kind_rule(kind, getattr(kinds, kind)) for kind in CLINICIAN_KINDS),
        ),
        care_plan_categories=tuple(_coding(c) for c in plan.categories),
        care_plan_profile=plan.profile,
        care_plan_title=plan.title,
        risk_code_text=risk.code_text,
        risk_method_text=risk.method_text,
        risk_qualitative_system=risk.qualitative_system,
        risk_by_tier={
            int(tier): _coding_of(risk.qualitative_system, q.code, q.display)
            for tier, q in risk.tiers.items()
        },
        attributed_provider_url=group.attributed_provider_url,
        change_type_url=group.change_type_url,
        change_new=group.change_new,
        change_changed=group.change_changed,
        change_none=group.change_none,
        change_dropped=group.change_dropped,
        provenance_activity_system=prov.activity_system,
        provenance_agent_type=_coding(prov.agent_type),
        provenance_reason=_coding(prov.reason),
    )


def _templates(f: CarePlanTemplatesFile) -> CarePlanTemplates:
    return CarePlanTemplates(
        tiers={
            int(key): TierTemplate(
                tier=int(key),
                description=tier.description,
                activities=tuple(
                    ActivityTemplate(key=a.key, kind=a.kind, code=_coding(a.code), text=a.text)
                    for a in tier.activities
                ),
            )
            for key, tier in f.tiers.items()
        }
    )


def _labels(
    tiers: TiersFile, charlson: CharlsonFile, chronic: ChronicConditionsFile, risk: RiskFile
) -> NarrativeLabels:
    return NarrativeLabels(
        tiers={int(k): label for k, label in tiers.tiers.items()},
        charlson={c.key: c.label for c in charlson.categories},
        chronic={g.key: g.label for g in chronic.groups},
        utilisation_months=risk.utilisation.lookback_months,
    )
