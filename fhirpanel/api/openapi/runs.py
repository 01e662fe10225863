"""The refresh run paths: start, list, read one, accept a held one."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    ADMIN_ERRORS,
    ADMIN_NOTE,
    READ_ERRORS,
    RUN_ID,
    json_response,
    paging,
    problem_ref,
    ref,
    request_body,
)
from fhirpanel.config import ApiSettings


def paths(api: ApiSettings) -> dict[str, Any]:
    return {
        "/api/runs": {
            "get": {
                "operationId": "listRuns",
                "tags": ["runs"],
                "summary": "Refresh runs, newest first",
                "parameters": paging(api),
                "responses": {
                    "200": json_response(ref("RunPage"), "A page of runs"),
                    "400": problem_ref("BadRequest"),
                    **READ_ERRORS,
                },
            },
            "post": {
                "operationId": "startRun",
                "tags": ["runs"],
                "summary": "Start a full or incremental refresh",
                "description": "Runs in the background; 409 while another refresh holds the "
                "lock. " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "requestBody": request_body("RunRequest", "Which kind of refresh"),
                "responses": {
                    "202": {
                        **json_response(ref("Run"), "Started"),
                        "headers": {
                            "Location": {
                                "description": "The run's URL",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "409": problem_ref("Conflict"),
                    **ADMIN_ERRORS,
                },
            },
        },
        "/api/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "tags": ["runs"],
                "summary": "One run",
                "parameters": [RUN_ID],
                "responses": {
                    "200": json_response(ref("Run"), "The run"),
                    "404": problem_ref("NotFound"),
                    **READ_ERRORS,
                },
            }
        },
        "/api/runs/{run_id}/accept": {
            "post": {
                "operationId": "acceptRun",
                "tags": ["runs"],
                "summary": "Let a held run's change through",
                "description": "A pass that would remove, end or change more than the `[safety]` "
                "limits allow is recorded `held` with its figures in "
                "`counts.held` (`{name: {count, of, share, limit}}` for "
                "`removed_patients`, `ended_participations`, "
                "`changed_assignments`) and writes nothing. Accepting it, after "
                "reading those figures, marks it `accepted` (audited under the "
                "token's name, `counts.accepted` = `{by, at}`) and starts or queues "
                "the next refresh (`next_run`; null when a refresh is running, or "
                "for a held `fhirpanel run --write`, which is simply run again): "
                "that pass goes ahead when it changes no more than the accepted "
                "figures (give or take 5%). No body. 409 when the run is not held "
                "(already accepted, or never held). " + ADMIN_NOTE,
                "x-fhirpanel-scope": "admin",
                "parameters": [RUN_ID],
                "responses": {
                    "202": {
                        **json_response(ref("AcceptResult"), "Accepted"),
                        "headers": {
                            "Location": {
                                "description": "The next run's URL, when one was started",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "404": problem_ref("NotFound"),
                    "409": problem_ref("Conflict"),
                    "401": problem_ref("Unauthorized"),
                    "403": problem_ref("Forbidden"),
                    "413": problem_ref("TooLarge"),
                    "503": problem_ref("Unavailable"),
                },
            }
        },
    }
