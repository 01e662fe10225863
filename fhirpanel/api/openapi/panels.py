"""The panel paths: every panel, one panel with its patients."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import (
    READ_ERRORS,
    TIER,
    json_response,
    paging,
    path_param,
    problem_ref,
    query_param,
    ref,
    sort,
)
from fhirpanel.config import ApiSettings
from fhirpanel.store.repository import CONFIRMERS
from fhirpanel.vocabulary import FHIR_ID_PATTERN


def paths(api: ApiSettings) -> dict[str, Any]:
    return {
        "/api/panels": {
            "get": {
                "operationId": "listPanels",
                "tags": ["panels"],
                "summary": "Every clinician's panel",
                "description": "Panel size, risk-adjusted size, capacity, open capacity, tier mix "
                "and unconfirmed assignments per clinician, with supply, demand, how capacity "
                "was found and the panel against its peers, and practice totals.",
                "responses": {"200": json_response(ref("PanelList"), "The panels"), **READ_ERRORS},
            }
        },
        "/api/panels/{practitioner}": {
            "get": {
                "operationId": "getPanel",
                "tags": ["panels"],
                "summary": "The patients of one panel",
                "parameters": [
                    path_param(
                        "practitioner",
                        {"type": "string", "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$"},
                        "The clinician's id, bare or as `Practitioner/<id>`",
                    ),
                    *paging(api),
                    sort("patient"),
                    TIER,
                    query_param(
                        "unconfirmed",
                        {"type": "string", "enum": ["true", "false", *CONFIRMERS]},
                        "true: only assignments with no current confirmation; clinician or "
                        "patient: only those lacking a current confirmation by that side",
                    ),
                    query_param(
                        "overdue",
                        {"type": "boolean"},
                        "Only patients flagged for outreach (not seen, sentinel exam overdue)",
                    ),
                ],
                "responses": {
                    "200": json_response(ref("PanelPage"), "A page of the panel"),
                    "400": problem_ref("BadRequest"),
                    "404": problem_ref("NotFound"),
                    **READ_ERRORS,
                },
            }
        },
    }
