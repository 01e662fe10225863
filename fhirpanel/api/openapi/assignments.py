"""The review paths: overriding and confirming an assignment."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    ADMIN_ERRORS,
    ADMIN_NOTE,
    PATIENT_ID,
    json_response,
    problem_ref,
    ref,
    request_body,
)
from fhirpanel.config import ApiSettings


def paths(api: ApiSettings) -> dict[str, Any]:
    return {
        "/api/assignments/{patient}/override": {
            "post": {
                "operationId": "addOverride",
                "tags": ["assignments"],
                "summary": "Assign a patient to a clinician by hand",
                "description": "Replaces any override in force. Stored and audited at once; "
                "the assignment changes at the next refresh, which this starts "
                "when no refresh is running. " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [PATIENT_ID],
                "requestBody": request_body("OverrideRequest", "The clinician, why, and who asked"),
                "responses": {
                    "201": json_response(ref("OverrideResult"), "Stored"),
                    "404": problem_ref("NotFound"),
                    "409": problem_ref("Conflict"),
                    **ADMIN_ERRORS,
                },
            },
            "delete": {
                "operationId": "removeOverride",
                "tags": ["assignments"],
                "summary": "Remove a patient's override",
                "description": "The usual rules decide again at the next refresh. " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [PATIENT_ID],
                "responses": {
                    "200": json_response(ref("RemovedOverride"), "Removed"),
                    "404": problem_ref("NotFound"),
                    "401": problem_ref("Unauthorized"),
                    "403": problem_ref("Forbidden"),
                    "503": problem_ref("Unavailable"),
                },
            },
        },
        "/api/assignments/{patient}/confirm": {
            "post": {
                "operationId": "confirmAssignment",
                "tags": ["assignments"],
                "summary": "Confirm a patient's current clinician",
                "description": "Confirmed with the clinician or with the patient; it holds while "
                "the patient stays with that clinician. The patient must be "
                "assigned (409 otherwise); when `practitioner` is given it must be "
                "the current one (409 when the assignment changed). " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [PATIENT_ID],
                "requestBody": request_body(
                    "ConfirmRequest", "Who confirmed, and an optional note"
                ),
                "responses": {
                    "201": json_response(ref("ConfirmResult"), "Stored"),
                    "404": problem_ref("NotFound"),
                    "409": problem_ref("Conflict"),
                    **ADMIN_ERRORS,
                },
            }
        },
    }
