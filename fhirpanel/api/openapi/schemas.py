"""The component schemas: every body the API takes or gives."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    RECORDED_KINDS,
    RUN_KINDS,
    RUN_STATUSES,
    all_or_list,
    nullable,
    obj,
    paged,
    ref,
)
from fhirpanel.api.routes import MAX_PAIRS, REFUSALS
from fhirpanel.store.repository import CONFIRMERS, METHODS, REQUESTERS, STATUSES
from fhirpanel.vocabulary import FHIR_ID_PATTERN


def schemas() -> dict[str, Any]:
    string, integer, number, boolean = (
        {"type": t} for t in ("string", "integer", "number", "boolean")
    )
    reference = {"type": "string", "pattern": f"^[A-Za-z]+/{FHIR_ID_PATTERN}$"}
    tiers = {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
        "description": 'Patients per risk tier (`"1"` .. `"4"`)',
    }
    # `both`: the clinician and the patient confirmed, and both still hold.
    confirmation_state = {"type": "string", "enum": ["proposed", *CONFIRMERS, "both"]}
    confirmation_fields = {
        "method": {"type": ["string", "null"], "enum": [*METHODS, None]},
        "confirmed_on": {"type": "string", "description": "The day it was given (YYYY-MM-DD)"},
        "expires_on": nullable(
            "string", description="The first as-of date on which it no longer holds"
        ),
        "expired": {"type": ["boolean", "null"]},
        "ended_at": nullable("string"),
        "ended_by": nullable("string"),
        "ended_reason": nullable("string"),
    }
    relative = obj(
        {
            "framework": {"type": "string", "enum": ["adult", "pediatric"]},
            "peers": {"type": "integer", "minimum": 1},
            "risk_adjusted_ratio": nullable("number"),
            "blended_ratio": nullable("number"),
            "percentile": {"type": "number", "minimum": 0, "maximum": 100},
            "blended_percentile": nullable("number", minimum=0, maximum=100),
        },
        description="Ratios to the peers' median and percentile ranks among the peers",
    )
    refresh = obj(
        {"run_id": nullable("integer"), "started": boolean, "detail": string},
        description="The refresh asked for after a change (best effort)",
    )
    return {
        "Problem": obj(
            {
                "type": {
                    "type": "string",
                    "description": "A URN naming the kind of problem, or about:blank",
                },
                "title": string,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": string,
                "instance": string,
                "errors": {"type": "array", "items": obj({"field": string, "message": string})},
            },
            ["type", "title", "status", "detail"],
            description="RFC 9457 problem details",
        ),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}}),
        "Check": {
            "type": "object",
            "required": ["ok", "detail"],
            "properties": {"ok": boolean, "detail": string},
        },
        "Readiness": obj(
            {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": obj(
                    {"store": ref("Check"), "fhir": ref("Check"), "last_run": ref("Check")}
                ),
            }
        ),
        "Totals": obj(
            {
                k: {"type": "integer", "minimum": 0}
                for k in (
                    "patients",
                    "assigned",
                    "unassigned",
                    "excluded",
                    "unconfirmed",
                    "overrides",
                    "pending",
                )
            }
        ),
        "Panel": obj(
            {
                "open": {"type": "boolean", "description": "Taking new patients"},
                "practitioner": reference,
                "name": nullable("string"),
                "eligible": boolean,
                "pediatric": boolean,
                "size": integer,
                "risk_adjusted_size": number,
                "hcc_adjusted_size": nullable("number"),
                "capacity": number,
                "open_capacity": number,
                "tiers": tiers,
                "unconfirmed": {"type": "integer", "minimum": 0},
                "supply": nullable(
                    "number",
                    description="Capacity in visits a year (qualifying visits in 12 months)",
                ),
                "demand": nullable("number", description="Visits per patient per year"),
                "expected_visits": nullable(
                    "number", description="Visits a year the panel is expected to need"
                ),
                "share_used": nullable(
                    "number", description="Risk-adjusted size over capacity; null without capacity"
                ),
                "capacity_method": {
                    "type": ["string", "null"],
                    "enum": ["observed", "configured", None],
                },
                "capacity_basis": nullable("string", description="How capacity was found"),
                "blended_size": nullable("number"),
                "relative": {
                    "oneOf": [relative, {"type": "null"}],
                    "description": "The panel against its eligible peers; null when not eligible",
                },
            },
            description="Capacity, supply, demand, blended size and relative are as the last "
            "full refresh found them",
        ),
        "PanelList": obj(
            {
                "panels": {"type": "array", "items": ref("Panel")},
                "totals": ref("Totals"),
                "as_of": nullable("string"),
            }
        ),
        "PanelPatient": obj(
            {
                "patient": reference,
                "tier": nullable("integer"),
                "charlson": nullable("integer"),
                "hcc": nullable("number"),
                "ccm_eligible": boolean,
                "drivers": {
                    "type": "object",
                    "description": "Risk components: Charlson "
                    "categories, HCCs, chronic conditions, ED visits, inpatient stays, "
                    "the tier rule",
                },
                "rule": nullable("string"),
                "step": nullable("string"),
                "last_visit": nullable("string"),
                "confirmation": confirmation_state,
                "override": boolean,
                "outreach": {"type": "array", "items": string},
            }
        ),
        "PanelPage": paged(
            "PanelPatient",
            {
                "panel": ref("Panel"),
                "sort": string,
                "filters": obj(
                    {
                        "tier": nullable("integer"),
                        "unconfirmed": {
                            "oneOf": [boolean, {"type": "string", "enum": list(CONFIRMERS)}]
                        },
                        "overdue": boolean,
                    }
                ),
            },
        ),
        "Suggestion": obj(
            {
                "practitioner": {
                    "oneOf": [reference, {"type": "null"}],
                    "description": "null: no clinician has room for the patient (the reason "
                    "gives the shortfall)",
                },
                "reason": nullable("string"),
            },
            description="The clinician suggested for an unassigned patient and why "
            "(docs/methods.md s.3.5)",
        ),
        "UnassignedPatient": obj(
            {
                "patient": reference,
                "tier": nullable("integer"),
                "reason": nullable("string"),
                "last_visit": nullable("string"),
                "suggested": {"oneOf": [ref("Suggestion"), {"type": "null"}]},
            }
        ),
        "UnassignedPage": paged(
            "UnassignedPatient", {"sort": string, "filters": obj({"tier": nullable("integer")})}
        ),
        "OutreachPatient": obj(
            {
                "patient": reference,
                "practitioner": nullable("string"),
                "tier": nullable("integer"),
                "last_visit": nullable("string"),
                "outreach": {"type": "array", "items": string},
                "confirmation": confirmation_state,
            }
        ),
        "OutreachPage": paged(
            "OutreachPatient",
            {
                "sort": string,
                "filters": obj({"practitioner": nullable("string"), "reason": nullable("string")}),
                "thresholds": obj({"not_seen_months": integer, "sentinel_months": integer}),
            },
        ),
        "Written": {
            "oneOf": [
                {"type": "null"},
                obj(
                    {
                        "reference": string,
                        "version": nullable("string"),
                        "identifier": string,
                        "updated_at": nullable("string"),
                    }
                ),
            ]
        },
        "HistoryEntry": obj(
            {
                "status": string,
                "practitioner": nullable("string"),
                "rule": nullable("string"),
                "step": nullable("string"),
                "valid_from": nullable("string"),
                "valid_to": nullable("string"),
                "run_id": nullable("integer"),
            }
        ),
        "Override": obj(
            {
                "id": integer,
                "patient": reference,
                "practitioner": reference,
                "reason": string,
                "requested_by": {"type": "string", "enum": list(REQUESTERS)},
                "actor": string,
                "created_at": nullable("string"),
                "removed_at": nullable("string"),
                "removed_by": nullable("string"),
                "applied_run": nullable("integer"),
            }
        ),
        "ConfirmationEntry": obj(
            {
                "practitioner": reference,
                "confirmed_by": {"type": "string", "enum": list(CONFIRMERS)},
                "note": string,
                "actor": string,
                "created_at": nullable("string"),
                **confirmation_fields,
            }
        ),
        "PatientStatus": obj(
            {
                "id": integer,
                "patient": reference,
                "status": {"type": "string", "enum": list(STATUSES)},
                "reason": string,
                "actor": string,
                "created_at": nullable("string"),
                "cleared_at": nullable("string"),
                "cleared_by": nullable("string"),
            }
        ),
        "AuditEntry": obj(
            {
                "at": nullable("string"),
                "actor": string,
                "action": string,
                "patient": nullable("string"),
                "detail": {"type": "object"},
            }
        ),
        "PatientExplanation": obj(
            {
                "patient": reference,
                "status": {"type": "string", "enum": ["assigned", "unassigned", "excluded"]},
                "practitioner": nullable("string"),
                "rule": nullable("string"),
                "step": nullable("string"),
                "reason": nullable("string"),
                "tie_broken": boolean,
                "sentinel_exam": nullable("string"),
                "practitioner_role": nullable("string"),
                "tier": nullable("integer"),
                "charlson": nullable("integer"),
                "hcc": nullable("number"),
                "ccm_eligible": boolean,
                "weight": number,
                "last_visit": nullable("string"),
                "confirmation": confirmation_state,
                "override": boolean,
                "outreach": {"type": "array", "items": string},
                "suggested": {"oneOf": [ref("Suggestion"), {"type": "null"}]},
                "visits": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "Qualifying visits per clinician in the window",
                },
                "evidence": {
                    "type": "array",
                    "items": string,
                    "description": "The encounters that decided",
                },
                "risk": {
                    "type": ["object", "null"],
                    "description": "Risk components: charlson, "
                    "hcc, tier, ccm_eligible, charlson_categories, hccs, interactions, "
                    "ed_visits, inpatient_stays, chronic_conditions, tier_rule, framework "
                    "(adult | pediatric: no hcc under 18), complexity and complexity_systems "
                    "(a child's PMCA result)",
                },
                "blend": {
                    "type": ["object", "null"],
                    "additionalProperties": {"type": "number"},
                    "description": "The blended adjustment factor (`factor`) and each of its "
                    "metrics over the practice mean (age_sex, hcc, charlson, utilisation); "
                    "null for a patient not blended (excluded, or no blend table)",
                },
                "written": obj({"CareTeam": ref("Written"), "CarePlan": ref("Written")}),
                "history": {"type": "array", "items": ref("HistoryEntry")},
                "active_override": {"oneOf": [ref("Override"), {"type": "null"}]},
                "overrides": {"type": "array", "items": ref("Override")},
                "confirmations": {"type": "array", "items": ref("ConfirmationEntry")},
                "current_confirmations": obj(
                    {
                        side: {"oneOf": [ref("ConfirmationEntry"), {"type": "null"}]}
                        for side in CONFIRMERS
                    },
                    description="Per side, the confirmation of the current clinician that "
                    "counts (expired or not), or null",
                ),
                "clinician_confirmed": nullable("string"),
                "patient_confirmed": nullable("string"),
                "active_status": {"oneOf": [ref("PatientStatus"), {"type": "null"}]},
                "statuses": {"type": "array", "items": ref("PatientStatus")},
                "pending": {
                    "type": "boolean",
                    "description": "Queued for the next refresh (an override waiting, a "
                    "failed write)",
                },
                "audit": {"type": "array", "items": ref("AuditEntry")},
                "run_id": nullable("integer"),
                "updated_at": nullable("string"),
            }
        ),
        "OverrideRequest": obj(
            {
                "practitioner": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "An eligible clinician, bare id or reference",
                },
                "reason": {
                    "type": "string",
                    "maxLength": 500,
                    "pattern": r"\S",
                    "description": "Why (goes into the audit log)",
                },
                "requested_by": {"type": "string", "enum": list(REQUESTERS)},
            },
            closed=True,
        ),
        "OverrideResult": obj({"override": ref("Override"), "refresh": refresh}),
        "SuggestionPair": obj(
            {
                "patient": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Patient/)?{FHIR_ID_PATTERN}$",
                },
                "practitioner": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "The suggested clinician, as the caller saw it",
                },
            },
            closed=True,
        ),
        "AssignSuggestedRequest": obj(
            {"suggestions": all_or_list("SuggestionPair", MAX_PAIRS)},
            closed=True,
        ),
        "AssignSuggestedResult": obj(
            {
                "assigned": {
                    "type": "array",
                    "items": obj(
                        {
                            "patient": reference,
                            "practitioner": reference,
                            "override": ref("Override"),
                        }
                    ),
                },
                "refused": {
                    "type": "array",
                    "items": obj(
                        {
                            "patient": reference,
                            "practitioner": nullable("string"),
                            "problem": {
                                "type": "string",
                                "enum": sorted({*REFUSALS.values(), "conflict"}),
                            },
                            "detail": string,
                        }
                    ),
                },
                "refresh": {
                    "oneOf": [refresh, {"type": "null"}],
                    "description": "The refresh asked for; null when nothing was accepted",
                },
            }
        ),
        "RemovedOverride": obj(
            {
                "removed": {"type": "boolean", "enum": [True]},
                "patient": reference,
                "refresh": refresh,
            }
        ),
        "StatusRequest": obj(
            {
                "status": {"type": "string", "enum": list(STATUSES)},
                "reason": {
                    "type": "string",
                    "maxLength": 500,
                    "pattern": r"\S",
                    "description": "Why (goes into the audit log)",
                },
            },
            closed=True,
        ),
        "StatusResult": obj({"status": ref("PatientStatus"), "refresh": refresh}),
        "ClearedStatus": obj(
            {
                "cleared": {"type": "boolean", "enum": [True]},
                "patient": reference,
                "refresh": refresh,
            }
        ),
        "ConfirmRequest": obj(
            {
                "confirmed_by": {"type": "string", "enum": list(CONFIRMERS)},
                "practitioner": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "The clinician being confirmed; must be the current one",
                },
                "note": {"type": "string", "maxLength": 500},
                "method": {
                    "type": "string",
                    "enum": list(METHODS),
                    "description": "How it was given",
                },
                "confirmed_on": {
                    "type": "string",
                    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                    "description": "The day it was given (YYYY-MM-DD; today when left out); "
                    "not in the future, not so long ago that it has expired",
                },
            },
            ["confirmed_by"],
            closed=True,
        ),
        "Confirmation": obj(
            {
                "id": integer,
                "patient": reference,
                "practitioner": reference,
                "confirmed_by": {"type": "string", "enum": list(CONFIRMERS)},
                "note": string,
                "actor": string,
                "created_at": nullable("string"),
                **confirmation_fields,
            }
        ),
        "ConfirmResult": obj({"confirmation": ref("Confirmation")}),
        "RunRequest": obj({"kind": {"type": "string", "enum": RUN_KINDS}}, closed=True),
        "Run": obj(
            {
                "id": integer,
                "kind": {"type": "string", "enum": RECORDED_KINDS},
                "trigger": string,
                "source": string,
                "as_of": string,
                "started_at": nullable("string"),
                "finished_at": nullable("string"),
                "status": {"type": "string", "enum": RUN_STATUSES},
                "counts": {
                    "type": "object",
                    "description": "What the run did; a held run's "
                    "figures are in `held` (`{name: {count, of, share, limit}}`), an "
                    "accepted one's acceptance in `accepted` (`{by, at}`)",
                },
                "error": nullable("string"),
                "watermark_before": nullable("string"),
                "watermark_after": nullable("string"),
                "requests": integer,
                "seconds": nullable("number"),
            }
        ),
        "RunPage": paged("Run"),
        "AcceptResult": obj(
            {
                "run": ref("Run"),
                "next_run": nullable(
                    "integer", description="The run started or queued to apply the change, or null"
                ),
                "detail": {"type": "string", "description": "What happens next, in words"},
            }
        ),
    }
