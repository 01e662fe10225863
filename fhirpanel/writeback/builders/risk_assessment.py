"""The patient's risk tier as a RiskAssessment (optional, `writeback.risk_assessment`;
docs/methods.md s.6)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import Assignment
from fhirpanel.domain.risk import RiskResult
from fhirpanel.tables.writeback import NarrativeLabels, WritebackCodes
from fhirpanel.writeback.builders.common import (
    concept,
    day,
    div,
    esc,
    identifiers,
    meta,
    order,
    risk_drivers,
    start_resource,
    ul,
    validate_resource,
)
from fhirpanel.writeback.identity import (
    RISK_ASSESSMENT_KIND,
    Resource,
    identifier_value,
    same_content,
)


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
        prediction["qualitativeRisk"] = concept(qualitative)
    if risk.hcc is not None:
        prediction["relativeRisk"] = round(risk.hcc, 3)
    prediction["rationale"] = "; ".join(rationale)
    assessment = start_resource(existing, "RiskAssessment")
    assessment.update(
        {
            "identifier": identifiers(existing, cfg, value),
            "meta": meta(existing, cfg, None),
            "status": "final",
            "subject": {"reference": assignment.patient},
            "occurrenceDateTime": day(as_of),
            "code": {"text": codes.risk_code_text},
            "method": {"text": codes.risk_method_text},
            "prediction": [prediction],
            "note": [{"text": "; ".join(rationale)}],
            "text": div(
                f"<p>Risk {esc(labels.tier(risk.tier))}.</p>", ul(risk_drivers(risk, labels))
            ),
        }
    )
    basis = [{"reference": c} for c in sorted(set(risk.basis_conditions))]
    if basis:
        assessment["basis"] = basis
    else:
        assessment.pop("basis", None)
    if existing is not None:
        unchanged = same_content(
            {**assessment, "status": None, "occurrenceDateTime": None},
            {**existing, "status": None, "occurrenceDateTime": None},
        )
        if unchanged:
            for key in ("status", "occurrenceDateTime"):
                if key in existing:
                    assessment[key] = existing[key]
        else:
            assessment["status"] = "amended"
    assessment = order(
        assessment,
        (
            "resourceType",
            "id",
            "meta",
            "text",
            "identifier",
            "status",
            "code",
            "method",
            "subject",
            "occurrenceDateTime",
            "basis",
            "prediction",
            "note",
        ),
    )
    return validate_resource(assessment)
