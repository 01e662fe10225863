"""The paths that are not the data: health and readiness, metrics, this document."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import READ_ERRORS, json_response, ref
from fhirpanel.config import ApiSettings


def paths(api: ApiSettings) -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["health"],
                "security": [],
                "summary": "The process is up",
                "responses": {"200": json_response(ref("Health"), "Up")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["health"],
                "security": [],
                "summary": "Ready to serve: store and FHIR server reachable, results stored",
                "description": "The FHIR server is checked with `GET [base]/metadata` (short "
                "timeout, cached a few seconds); with no server configured that "
                "check passes as `not configured`.",
                "responses": {
                    "200": json_response(ref("Readiness"), "Ready"),
                    "503": json_response(ref("Readiness"), "Not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "The Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **READ_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {
                    "200": json_response({"type": "object"}, "The OpenAPI document"),
                    **READ_ERRORS,
                },
            }
        },
    }
