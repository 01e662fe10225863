"""The validation area: `/api/validation` and `/api/snapshots[/{month}]`
(fhirpanel/api/validation.py)."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.validation import MONTH_PATTERN


def paths(read_errors: dict[str, Any]) -> dict[str, Any]:
    def ok(schema: str, description: str) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{schema}"}
        return {"description": description, "content": {"application/json": {"schema": ref}}}

    not_found_ref = {"$ref": "#/components/responses/NotFound"}
    return {
        "/api/validation": {
            "get": {
                "operationId": "getValidation",
                "tags": ["validation"],
                "summary": "The latest validation of the risk metrics",
                "description": "What `fhirpanel validate` found last: each metric scored 12 "
                "months before `as_of` against any emergency visit or inpatient stay in the "
                "12 months after (c-statistic, calibration by decile, the share of those "
                "events in tiers 3-4), and the calibration plot as SVG. 404 before the first.",
                "responses": {
                    "200": ok("Validation", "The latest validation"),
                    "404": not_found_ref,
                    **read_errors,
                },
            }
        },
        "/api/snapshots": {
            "get": {
                "operationId": "listSnapshots",
                "tags": ["validation"],
                "summary": "The stored monthly snapshots, newest month first",
                "responses": {"200": ok("SnapshotList", "The months stored"), **read_errors},
            }
        },
        "/api/snapshots/{month}": {
            "get": {
                "operationId": "getSnapshot",
                "tags": ["validation"],
                "summary": "One month's frozen panels, sizes and tiers",
                "parameters": [
                    {
                        "name": "month",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": MONTH_PATTERN},
                        "description": "The month, YYYY-MM",
                    }
                ],
                "responses": {
                    "200": ok("Snapshot", "The month's snapshot"),
                    "404": not_found_ref,
                    **read_errors,
                },
            }
        },
    }


def schemas() -> dict[str, Any]:
    number_or_null = {"type": ["number", "null"]}
    decile = {
        "type": "object",
        "properties": {
            "decile": {"type": "integer", "minimum": 1, "maximum": 10},
            "patients": {"type": "integer", "minimum": 1},
            "mean_score": {"type": "number"},
            "observed_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "events_per_patient": {"type": "number", "minimum": 0},
        },
        "required": ["decile", "patients", "mean_score", "observed_rate", "events_per_patient"],
    }
    metric = {
        "type": "object",
        "properties": {
            "metric": {"type": "string"},
            "label": {"type": "string"},
            "patients": {"type": "integer", "minimum": 0},
            "with_outcome": {"type": "integer", "minimum": 0},
            "c_statistic": number_or_null,
            "deciles": {"type": "array", "items": decile},
        },
        "required": ["metric", "label", "patients", "with_outcome", "c_statistic", "deciles"],
    }
    summary_properties = {
        "month": {"type": "string", "pattern": MONTH_PATTERN},
        "as_of": {"type": "string", "description": "The month's last day"},
        "source": {"type": "string"},
        "digest": {"type": "string", "description": "SHA-256 of the canonical JSON"},
        "patients": {"type": "integer", "minimum": 0},
        "panels": {"type": "integer", "minimum": 0},
        "created_at": {"type": ["string", "null"]},
    }
    return {
        "Validation": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "created_at": {"type": ["string", "null"]},
                "svg": {"type": "string", "description": "The calibration plot"},
                "result": {
                    "type": "object",
                    "properties": {
                        "as_of": {"type": "string"},
                        "baseline": {"type": "string"},
                        "patients": {"type": "integer", "minimum": 0},
                        "with_outcome": {"type": "integer", "minimum": 0},
                        "metrics": {"type": "array", "items": metric},
                        "tier_capture": {"type": "object"},
                    },
                    "required": ["as_of", "baseline", "patients", "metrics", "tier_capture"],
                },
            },
            "required": ["id", "created_at", "svg", "result"],
        },
        "SnapshotSummary": {
            "type": "object",
            "properties": summary_properties,
            "required": list(summary_properties),
        },
        "SnapshotList": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/SnapshotSummary"},
                }
            },
            "required": ["items"],
        },
        "Snapshot": {
            "type": "object",
            "properties": {
                **summary_properties,
                "content": {
                    "type": "object",
                    "description": "The frozen panels, counts, tiers and patients, as in the "
                    "snapshot file",
                },
            },
            "required": [*summary_properties, "content"],
        },
    }
