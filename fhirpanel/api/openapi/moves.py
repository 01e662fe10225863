"""The proposed-moves paths (`fhirpanel.api.moves`): moves a current confirmation held back, and
their acceptance or dismissal."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    ADMIN_ERRORS,
    ADMIN_NOTE,
    JSON,
    READ_ERRORS,
    json_response,
    nullable,
    obj,
    path_param,
    problem_ref,
    query_param,
    ref,
)
from fhirpanel.config import ApiSettings
from fhirpanel.store.moves import MOVE_STATUSES
from fhirpanel.store.repository import CONFIRMERS


def paths(api: ApiSettings) -> dict[str, Any]:
    """Proposed moves (`fhirpanel.api.moves`)."""
    move_id = path_param(
        "move_id", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, "The move's id"
    )
    decision = {
        "required": False,
        "description": "An optional note",
        "content": {JSON: {"schema": ref("MoveDecisionRequest")}},
    }

    def decide(operation: str, summary: str, description: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": operation,
                "tags": ["proposed-moves"],
                "summary": summary,
                "description": description + " 409 when the move is not open. " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [move_id],
                "requestBody": decision,
                "responses": {
                    "200": json_response(ref("MoveDecision"), "Decided"),
                    "404": problem_ref("NotFound"),
                    "409": problem_ref("Conflict"),
                    **ADMIN_ERRORS,
                },
            }
        }

    return {
        "/api/proposed-moves": {
            "get": {
                "operationId": "listProposedMoves",
                "tags": ["proposed-moves"],
                "summary": "Moves a current confirmation held back, newest first",
                "description": "When the attribution rules would move a patient whose "
                "assignment the clinician or the patient confirmed (and the confirmation has "
                "not expired), the patient stays and the move is proposed here with its "
                "evidence (qualifying visits per clinician in the rule's window).",
                "parameters": [
                    query_param(
                        "status",
                        {"type": "string", "enum": [*MOVE_STATUSES, "all"], "default": "open"},
                        "Which moves",
                    ),
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 500},
                        "At most this many",
                    ),
                ],
                "responses": {
                    "200": json_response(ref("ProposedMoveList"), "The moves"),
                    "400": problem_ref("BadRequest"),
                    **READ_ERRORS,
                },
            }
        },
        "/api/proposed-moves/{move_id}/accept": decide(
            "acceptProposedMove",
            "Accept a proposed move",
            "An audited override to the proposed clinician (asked for by staff); the "
            "confirmations of the clinician the patient leaves end; a refresh is asked for. "
            "409 also when the patient is no longer with the clinician the move starts from; "
            "422 when the proposed clinician is no longer eligible.",
        ),
        "/api/proposed-moves/{move_id}/dismiss": decide(
            "dismissProposedMove",
            "Dismiss a proposed move",
            "The patient stays; the same move is not proposed again until its evidence (the "
            "visit counts) changes or the confirmation expires.",
        ),
    }


def schemas() -> dict[str, Any]:
    string, integer = {"type": "string"}, {"type": "integer"}
    move = obj(
        {
            "id": integer,
            "patient": string,
            "from": string,
            "to": string,
            "rule": {"type": "string", "description": "The rule that would have moved them"},
            "step": nullable("string"),
            "window_months": nullable("integer"),
            "visits": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Qualifying visits per clinician in the rule's window",
            },
            "evidence": {"type": "array", "items": string},
            "held_by": {"type": "array", "items": {"type": "string", "enum": list(CONFIRMERS)}},
            "status": {"type": "string", "enum": list(MOVE_STATUSES)},
            "run_id": nullable("integer"),
            "seen_run": nullable("integer"),
            "created_at": nullable("string"),
            "decided_at": nullable("string"),
            "decided_by": nullable("string"),
            "note": string,
        },
        description="A move the rules would make, held back by a current confirmation",
    )
    refresh = obj({"run_id": nullable("integer"), "started": {"type": "boolean"}, "detail": string})
    return {
        "ProposedMove": move,
        "ProposedMoveList": obj(
            {
                "items": {"type": "array", "items": ref("ProposedMove")},
                "total": {"type": "integer", "minimum": 0},
                "status": string,
            }
        ),
        "MoveDecisionRequest": obj({"note": {"type": "string", "maxLength": 500}}, [], closed=True),
        "MoveDecision": obj(
            {
                "move": ref("ProposedMove"),
                "refresh": {"oneOf": [refresh, {"type": "null"}]},
            }
        ),
    }
