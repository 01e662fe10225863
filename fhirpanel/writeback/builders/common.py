"""Pieces every builder uses: codings and concepts, fhirpanel's identifier and meta, narrative
XHTML, key order, and R4B validation."""

from __future__ import annotations

import copy
import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.risk import RiskResult
from fhirpanel.errors import FhirpanelError
from fhirpanel.tables.writeback import Coding, NarrativeLabels
from fhirpanel.writeback.identity import Resource

XHTML_NS: Final = "http://www.w3.org/1999/xhtml"


class BuildError(FhirpanelError):
    """A built resource failed R4B validation: a bug in a builder, not bad input."""


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


# --------------------------------------------------------------------------- elements


def day(value: date) -> str:
    return value.isoformat()


def concept(coding: Coding, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [dict(coding)]}
    if text:
        out["text"] = text
    return out


def has_coding(concepts: Iterable[Any], coding: Coding) -> bool:
    for item in concepts:
        for c in (item.get("coding") or ()) if isinstance(item, Mapping) else ():
            if (
                isinstance(c, Mapping)
                and c.get("system") == coding["system"]
                and c.get("code") == coding["code"]
            ):
                return True
    return False


def with_concepts(existing: Any, wanted: Sequence[Coding]) -> list[Any]:
    """Our concepts first, in order, then any others already there."""
    others = [c for c in existing or () if not any(has_coding([c], w) for w in wanted)]
    return [concept(w) for w in wanted] + others


def identifiers(
    existing: Mapping[str, Any] | None, cfg: WritebackSettings, value: str
) -> list[Any]:
    """fhirpanel's business identifier first, then any others already there."""
    ours = {"system": cfg.identifier_system, "value": value}
    others = [
        i
        for i in (existing or {}).get("identifier") or ()
        if not (isinstance(i, Mapping) and i.get("system") == cfg.identifier_system)
    ]
    return [ours, *others]


def meta(
    existing: Mapping[str, Any] | None, cfg: WritebackSettings, profile: str | None
) -> dict[str, Any]:
    """Our tag (and profile) added to what the resource already declares; the server's own
    version and timestamps are left out."""
    old = (existing or {}).get("meta")
    old = old if isinstance(old, Mapping) else {}
    out: dict[str, Any] = {}
    profiles = [p for p in old.get("profile") or () if isinstance(p, str)]
    if profile and profile not in profiles:
        profiles.append(profile)
    if profiles:
        out["profile"] = profiles
    if old.get("security"):
        out["security"] = copy.deepcopy(old["security"])
    tags = [copy.deepcopy(t) for t in old.get("tag") or () if isinstance(t, Mapping)]
    if not any(t.get("system") == cfg.tag_system and t.get("code") == cfg.tag_code for t in tags):
        tags.append({"system": cfg.tag_system, "code": cfg.tag_code})
    out["tag"] = tags
    return out


def period_start(resource: Mapping[str, Any] | None) -> str | None:
    period = (resource or {}).get("period")
    start = period.get("start") if isinstance(period, Mapping) else None
    return start if isinstance(start, str) else None


def start_resource(existing: Mapping[str, Any] | None, rtype: str) -> Resource:
    """A copy of what the server holds (everything fhirpanel does not manage is kept), or a new
    resource of the type."""
    resource: Resource = copy.deepcopy(dict(existing)) if existing else {}
    resource["resourceType"] = rtype
    return resource


def order(resource: Resource, first: Sequence[str]) -> Resource:
    """Keys in a stable, readable order (the diff ignores key order; people reading JSON don't)."""
    ordered: Resource = {k: resource[k] for k in first if k in resource}
    ordered.update({k: v for k, v in resource.items() if k not in ordered})
    return ordered


# --------------------------------------------------------------------------- narrative


def div(*parts: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML_NS}">{"".join(parts)}</div>'}


def esc(value: object) -> str:
    return html.escape(str(value), quote=False)


def ul(items: Iterable[str]) -> str:
    rows = "".join(f"<li>{item}</li>" for item in items)
    return f"<ul>{rows}</ul>" if rows else ""


def risk_drivers(risk: RiskResult, labels: NarrativeLabels) -> list[str]:
    """What drove a patient's tier, one narrative line each (CarePlan and RiskAssessment)."""
    rows = []
    if risk.hcc is not None:
        hccs = f" ({esc(', '.join(risk.hccs))})" if risk.hccs else ""
        rows.append(f"CMS-HCC risk score {risk.hcc:.3f}{hccs}")
    else:
        rows.append("CMS-HCC risk score: not computed")
    categories = ", ".join(labels.charlson.get(c, c) for c in risk.charlson_categories)
    rows.append(
        f"Charlson Comorbidity Index {risk.charlson}"
        + (f" ({esc(categories)})" if categories else "")
    )
    window = f" in the last {labels.utilisation_months} months" if labels.utilisation_months else ""
    rows.append(
        f"Emergency visits: {risk.ed_visits}; inpatient stays: {risk.inpatient_stays}{window}"
    )
    chronic = ", ".join(labels.chronic.get(c, c) for c in risk.chronic_conditions)
    ccm = "; eligible for Chronic Care Management" if risk.ccm_eligible else ""
    rows.append(
        f"Chronic conditions ({len(risk.chronic_conditions)})"
        + (f": {esc(chronic)}" if chronic else "")
        + ccm
    )
    return rows
