"""The patient paths: one patient's explanation, their status, the unassigned and their
suggestions, the outreach list."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    ADMIN_ERRORS,
    ADMIN_NOTE,
    PATIENT_ID,
    READ_ERRORS,
    TIER,
    json_response,
    paging,
    problem_ref,
    query_param,
    ref,
    request_body,
    sort,
)
from fhirpanel.config import ApiSettings
from fhirpanel.store.queries import OUTREACH_KINDS
from fhirpanel.vocabulary import FHIR_ID_PATTERN


def paths(api: ApiSettings) -> dict[str, Any]:
    return {
        "/api/patients/{patient}": {
            "get": {
                "operationId": "getPatient",
                "tags": ["patients"],
                "summary": "Why a patient is assigned where they are, and their risk",
                "description": "Visits per clinician in the look-back window, the rule and step "
                "that decided, the evidence encounters, risk components, the "
                "CareTeam and CarePlan written, overrides, confirmations, the "
                "assignment history and the audit trail.",
                "parameters": [PATIENT_ID],
                "responses": {
                    "200": json_response(ref("PatientExplanation"), "The explanation"),
                    "404": problem_ref("NotFound"),
                    **READ_ERRORS,
                },
            }
        },
        "/api/patients/{patient}/status": {
            "put": {
                "operationId": "setPatientStatus",
                "tags": ["patients"],
                "summary": "Record that a patient moved away, transferred care, was dismissed "
                "or died",
                "description": "Replaces any status in force. Stored and audited at once; the "
                "patient leaves every panel at the next refresh (excluded with the "
                "status's reason: `moved-away`, `transferred-care`, `dismissed`, "
                "`deceased-recorded`), which this starts when no refresh is running. "
                "409 when the patient's record already excludes them. " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [PATIENT_ID],
                "requestBody": request_body("StatusRequest", "The status, and why"),
                "responses": {
                    "200": json_response(ref("StatusResult"), "Stored"),
                    "404": problem_ref("NotFound"),
                    "409": problem_ref("Conflict"),
                    **ADMIN_ERRORS,
                },
            },
            "delete": {
                "operationId": "clearPatientStatus",
                "tags": ["patients"],
                "summary": "Clear a patient's status",
                "description": "The patient counts again from the next refresh. " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [PATIENT_ID],
                "responses": {
                    "200": json_response(ref("ClearedStatus"), "Cleared"),
                    "404": problem_ref("NotFound"),
                    "401": problem_ref("Unauthorized"),
                    "403": problem_ref("Forbidden"),
                    "503": problem_ref("Unavailable"),
                },
            },
        },
        "/api/unassigned": {
            "get": {
                "operationId": "listUnassigned",
                "tags": ["patients"],
                "summary": "Active patients without a clinician, with a suggested one",
                "parameters": [*paging(api), sort("-tier"), TIER],
                "responses": {
                    "200": json_response(ref("UnassignedPage"), "A page of patients"),
                    "400": problem_ref("BadRequest"),
                    **READ_ERRORS,
                },
            }
        },
        "/api/unassigned/assign-suggested": {
            "post": {
                "operationId": "assignSuggested",
                "tags": ["assignments"],
                "summary": "Accept the placement suggestions for unassigned patients",
                "description": "One override per accepted suggestion, to the suggested clinician, "
                "asked for by staff, with the reason `placement suggestion accepted: "
                "<the suggestion's reason>` (stored and audited at once; the "
                "assignments change at the next refresh, which this starts when no "
                "refresh is running). Send the pairs the caller saw: each is checked "
                "against the stored suggestion, and one whose patient is gone, no "
                "longer unassigned or already has an override waiting, whose "
                "suggestion changed since (a refresh placed the patient again), "
                "whose clinician is no longer eligible, or that is listed twice, is "
                'not stored but listed in `refused` with the reason. `"all"` '
                "accepts every stored suggestion as it is now. Patients no clinician "
                "has room for have no suggestion to accept. A change this large may "
                "be held by the brake at the next refresh (`[safety]`). " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "requestBody": request_body(
                    "AssignSuggestedRequest", 'The suggestions to accept, or "all"'
                ),
                "responses": {
                    "200": json_response(ref("AssignSuggestedResult"), "Accepted and refused"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/outreach": {
            "get": {
                "operationId": "listOutreach",
                "tags": ["patients"],
                "summary": "Patients to reach out to",
                "description": "Assigned patients not seen in N months or whose sentinel exam is "
                "overdue (N from the attribution settings).",
                "parameters": [
                    *paging(api),
                    sort("-tier"),
                    query_param(
                        "practitioner",
                        {"type": "string", "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$"},
                        "Only this clinician's patients",
                    ),
                    query_param(
                        "reason",
                        {"type": "string", "enum": list(OUTREACH_KINDS)},
                        "Only this kind of outreach",
                    ),
                ],
                "responses": {
                    "200": json_response(ref("OutreachPage"), "A page of patients"),
                    "400": problem_ref("BadRequest"),
                    **READ_ERRORS,
                },
            }
        },
    }
