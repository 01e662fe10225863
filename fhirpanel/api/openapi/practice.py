"""The practice paths (`fhirpanel.api.practice`): panel transitions, care teams, panel reviews
and readiness."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    ADMIN_ERRORS,
    READ_ERRORS,
    all_or_list,
    json_response,
    nullable,
    obj,
    path_param,
    problem_ref,
    query_param,
    ref,
    request_body,
)
from fhirpanel.api.practice import MAX_MOVES, NOTE_LIMIT, TRANSITION_REFUSALS
from fhirpanel.config import ApiSettings
from fhirpanel.domain.placement import BASES
from fhirpanel.domain.review_cycle import REVIEW_STATES
from fhirpanel.vocabulary import FHIR_ID_PATTERN


def paths(api: ApiSettings) -> dict[str, Any]:
    clinician = path_param(
        "practitioner",
        {"type": "string", "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$"},
        "The clinician's id, bare (`prac-1`) or as a reference (`Practitioner/prac-1`)",
    )
    team_id = path_param(
        "team_id",
        {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
        "The team's id in mappings/teams.toml",
    )
    not_found = {"404": problem_ref("NotFound")}
    admin = "Needs an admin token."
    return {
        "/api/clinicians/{practitioner}/transition": {
            "get": {
                "operationId": "getTransitionPlan",
                "tags": ["panels"],
                "summary": "Plan moving a clinician's panel to the other clinicians",
                "description": "Every patient on the clinician's panel, planned onto the other "
                "eligible clinicians: the one they saw most after this clinician (basis "
                "`visit-history`) when that panel is open and has room, else the one whose "
                "panel would have the lowest share of capacity used (`capacity`), else "
                "`no-room`. Closed panels get nobody. `pending`: a change for the patient "
                "already waits for a refresh.",
                "parameters": [clinician],
                "responses": {
                    "200": json_response(ref("TransitionPlan"), "The plan"),
                    **not_found,
                    **READ_ERRORS,
                },
            },
            "post": {
                "operationId": "acceptTransition",
                "tags": ["panels"],
                "summary": "Accept a panel transition in bulk",
                "description": "One override per accepted move, to the planned clinician, asked "
                "for by staff, with the reason `panel transition accepted from <clinician>: "
                "<the plan's reason>` (stored and audited at once; the assignments change at "
                "the next refresh, which this starts). Send the moves the caller saw: each "
                "is checked against the plan as it is now, and one whose patient is no "
                "longer on the panel, already has an override waiting, whose planned "
                'clinician changed, or that is listed twice, is listed in `refused`. `"all"` '
                "accepts every placed move as planned now. " + admin,
                "x-fhirpanel-scope": "admin",
                "parameters": [clinician],
                "requestBody": request_body("TransitionRequest", 'The moves to accept, or "all"'),
                "responses": {
                    "200": json_response(ref("TransitionResult"), "Accepted and refused"),
                    **not_found,
                    **ADMIN_ERRORS,
                },
            },
        },
        "/api/clinicians/{practitioner}/reviews": {
            "get": {
                "operationId": "getPanelReviews",
                "tags": ["panels"],
                "summary": "A panel's review state and its reviews",
                "description": "When the panel is next due for review (`review."
                "panel_review_months` after the last), what a review now would count, and "
                "the panel's reviews, newest first.",
                "parameters": [clinician],
                "responses": {
                    "200": json_response(ref("PanelReviews"), "The reviews"),
                    **not_found,
                    **READ_ERRORS,
                },
            },
            "post": {
                "operationId": "recordPanelReview",
                "tags": ["panels"],
                "summary": "Record a review of a clinician's panel",
                "description": "Stores who reviewed (the token's name), when (now), the "
                "patients on the panel, and how many were confirmed, moved (an override "
                "onto or off the panel) and removed (a status) since the previous review; "
                "audited. " + admin,
                "x-fhirpanel-scope": "admin",
                "parameters": [clinician],
                "requestBody": request_body("PanelReviewRequest", "An optional note"),
                "responses": {
                    "201": json_response(ref("PanelReviewResult"), "Recorded"),
                    **not_found,
                    **ADMIN_ERRORS,
                },
            },
        },
        "/api/reviews": {
            "get": {
                "operationId": "listPanelReviews",
                "tags": ["panels"],
                "summary": "Every eligible panel's review state, most pressing first",
                "parameters": [
                    query_param(
                        "due", {"type": "string", "enum": ["true", "false"]}, "Only panels due"
                    )
                ],
                "responses": {
                    "200": json_response(ref("ReviewList"), "The panels"),
                    "400": problem_ref("BadRequest"),
                    **READ_ERRORS,
                },
            }
        },
        "/api/teams": {
            "get": {
                "operationId": "listTeams",
                "tags": ["panels"],
                "summary": "Care teams with their members' panels summed",
                "responses": {"200": json_response(ref("TeamList"), "The teams"), **READ_ERRORS},
            }
        },
        "/api/teams/{team_id}": {
            "get": {
                "operationId": "getTeam",
                "tags": ["panels"],
                "summary": "One care team: its members' roles and panels, summed",
                "parameters": [team_id],
                "responses": {
                    "200": json_response(ref("Team"), "The team"),
                    **not_found,
                    **READ_ERRORS,
                },
            }
        },
        "/api/readiness": {
            "get": {
                "operationId": "getReadiness",
                "tags": ["panels"],
                "summary": "The practice's readiness measures",
                "description": "Share of active patients assigned, share of assigned patients "
                "confirmed with their clinician and with the patient (a confirmation for the "
                "clinician they are with now), and each panel's last review and review state.",
                "responses": {
                    "200": json_response(ref("PracticeReadiness"), "The measures"),
                    **READ_ERRORS,
                },
            }
        },
    }


def schemas() -> dict[str, Any]:
    string, integer, number, boolean = (
        {"type": t} for t in ("string", "integer", "number", "boolean")
    )
    reference = {"type": "string", "pattern": f"^[A-Za-z]+/{FHIR_ID_PATTERN}$"}
    count = {"type": "integer", "minimum": 0}
    share = nullable("number", minimum=0, maximum=1)
    refresh = obj({"run_id": nullable("integer"), "started": boolean, "detail": string})
    totals = obj(
        {
            "size": count,
            "risk_adjusted_size": number,
            "capacity": number,
            "open_capacity": number,
            "share_used": nullable("number"),
            "unconfirmed": count,
        }
    )
    review_state = obj(
        {
            "practitioner": reference,
            "name": nullable("string"),
            "size": nullable("integer"),
            "state": {"type": "string", "enum": list(REVIEW_STATES)},
            "due": boolean,
            "last_reviewed": nullable("string", format="date"),
            "due_on": nullable("string", format="date"),
            "last_review": {"oneOf": [ref("PanelReview"), {"type": "null"}]},
        }
    )
    activity = obj({"confirmed": count, "moved": count, "removed": count})
    return {
        "TransitionPlan": obj(
            {
                "practitioner": reference,
                "name": nullable("string"),
                "eligible": boolean,
                "patients": count,
                "placed": count,
                "no_room": count,
                "pending": count,
                "moves": {
                    "type": "array",
                    "items": obj(
                        {
                            "patient": reference,
                            "to": nullable("string"),
                            "basis": {"type": "string", "enum": list(BASES)},
                            "reason": string,
                            "weight": number,
                            "pending": boolean,
                        }
                    ),
                },
                "panels": {
                    "type": "array",
                    "items": obj(
                        {
                            "practitioner": reference,
                            "open": boolean,
                            "size": count,
                            "size_after": count,
                            "risk_adjusted_size": number,
                            "risk_adjusted_size_after": number,
                            "capacity": number,
                            "share_used_after": nullable("number"),
                        }
                    ),
                },
            }
        ),
        "TransitionMove": obj(
            {
                "patient": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Patient/)?{FHIR_ID_PATTERN}$",
                },
                "to": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "The planned clinician, as the caller saw it",
                },
            },
            closed=True,
        ),
        "TransitionRequest": obj(
            {"moves": all_or_list("TransitionMove", MAX_MOVES)},
            closed=True,
        ),
        "TransitionResult": obj(
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
                            "patient": string,
                            "to": nullable("string"),
                            "problem": {
                                "type": "string",
                                "enum": sorted({*TRANSITION_REFUSALS.values(), "conflict"}),
                            },
                            "detail": string,
                        }
                    ),
                },
                "refresh": {"oneOf": [refresh, {"type": "null"}]},
            }
        ),
        "TeamMember": obj(
            {
                "practitioner": reference,
                "role": obj({"system": string, "code": string, "display": string}),
                "name": nullable("string"),
                "eligible": boolean,
                "open": boolean,
                "size": nullable("integer"),
                "risk_adjusted_size": nullable("number"),
                "capacity": nullable("number"),
                "share_used": nullable("number"),
                "unconfirmed": nullable("integer"),
            }
        ),
        "Team": obj(
            {
                "id": string,
                "name": string,
                "totals": totals,
                "members": {"type": "array", "items": ref("TeamMember")},
            }
        ),
        "TeamList": obj(
            {
                "teams": {
                    "type": "array",
                    "items": obj(
                        {"id": string, "name": string, "totals": totals, "members": count}
                    ),
                }
            }
        ),
        "PanelReview": obj(
            {
                "id": integer,
                "practitioner": reference,
                "actor": string,
                "reviewed_at": nullable("string"),
                "since": nullable("string"),
                "patients": count,
                "confirmed": count,
                "moved": count,
                "removed": count,
                "note": string,
            }
        ),
        "PanelReviewState": review_state,
        "PanelReviews": obj(
            {
                **review_state["properties"],
                "since_last_review": activity,
                "reviews": {"type": "array", "items": ref("PanelReview")},
            }
        ),
        "PanelReviewRequest": obj(
            {"note": {"type": "string", "maxLength": NOTE_LIMIT}}, [], closed=True
        ),
        "PanelReviewResult": obj({"review": ref("PanelReview"), "state": ref("PanelReviewState")}),
        "ReviewList": obj(
            {
                "panel_review_months": {"type": "integer", "minimum": 1},
                "panels": {"type": "array", "items": ref("PanelReviewState")},
            }
        ),
        "PracticeReadiness": obj(
            {
                "active_patients": count,
                "assigned": count,
                "share_assigned": share,
                "confirmed_by_clinician": count,
                "share_confirmed_by_clinician": share,
                "confirmed_by_patient": count,
                "share_confirmed_by_patient": share,
                "panel_review_months": {"type": "integer", "minimum": 1},
                "panels": count,
                "panels_due": count,
                "panels_overdue": count,
                "panels_never_reviewed": count,
                "reviews": {"type": "array", "items": ref("PanelReviewState")},
            }
        ),
    }
