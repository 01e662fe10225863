"""Attribution: active patients, qualifying visits, eligible clinicians, the Four Cut method and
attribution pipelines, with an explanation for every assignment (docs/methods.md s.1-2).

Pure: takes a `Population`, an as-of date and typed rules built from `mappings/` tables, returns
immutable results sorted by id. The same input in any order gives the same output.

Look-back windows: a window of N months ending on the as-of date starts at `months_before(as_of,
N)` (as-of minus N calendar months, the day clamped to the month's end) and a visit counts when
`window_start < visit day <= as_of`. So 18 months ending 2026-11-22 covers 2025-05-23 to
2026-11-22, and no visit is counted in two back-to-back windows. The visit day is the UTC date
of `Encounter.period.start`; an Encounter without a start cannot be placed and never counts.

The package, one module per job: `rules` (the rules built from mapping tables, and pipelines),
`results` (the inputs and results), `eligibility` (who counts: excluded patients, eligible
clinicians, qualifying visits and windows), `four_cut` (the Four Cut method) and `pipeline`
(`attribute_patients`: every patient through the steps). Every name is importable from here.
"""

from __future__ import annotations

from fhirpanel.domain.attribution.eligibility import (
    assess_eligibility,
    exclusion_reason,
    in_window,
    qualifying_visits,
    visit_counts,
    visits_in_window,
)
from fhirpanel.domain.attribution.four_cut import FourCutDecision, four_cut
from fhirpanel.domain.attribution.pipeline import attribute_patients, clinician_from_reference
from fhirpanel.domain.attribution.results import (
    PERSON_STATUSES,
    Assignment,
    AssignmentStatus,
    AttributionResult,
    EligibilityReport,
    ManualAssignment,
    QualifyingVisit,
)
from fhirpanel.domain.attribution.rules import (
    MAX_WINDOW_MONTHS,
    STEP_KINDS,
    AttributionRules,
    Pipeline,
    PipelineStep,
    PrimaryCareSpecialties,
    SentinelExamCodes,
    StepKind,
    VisitRules,
    check_code,
    normalise_label,
)
from fhirpanel.domain.codes import verhoeff_valid
from fhirpanel.domain.confirmations import ConfirmedAssignment, DismissedMove, ProposedMove
from fhirpanel.domain.dates import months_before

__all__ = [
    "MAX_WINDOW_MONTHS",
    "PERSON_STATUSES",
    "STEP_KINDS",
    "Assignment",
    "AssignmentStatus",
    "AttributionResult",
    "AttributionRules",
    "ConfirmedAssignment",
    "DismissedMove",
    "EligibilityReport",
    "FourCutDecision",
    "ManualAssignment",
    "Pipeline",
    "PipelineStep",
    "PrimaryCareSpecialties",
    "ProposedMove",
    "QualifyingVisit",
    "SentinelExamCodes",
    "StepKind",
    "VisitRules",
    "assess_eligibility",
    "attribute_patients",
    "check_code",
    "clinician_from_reference",
    "exclusion_reason",
    "four_cut",
    "in_window",
    "months_before",
    "normalise_label",
    "qualifying_visits",
    "verhoeff_valid",
    "visit_counts",
    "visits_in_window",
]
