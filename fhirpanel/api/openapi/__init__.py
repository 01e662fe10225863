"""The OpenAPI 3.1 document served at `/openapi.json`, written as data.

Keep it in step with the routes: `tests/integration/test_openapi.py` checks that every URL rule
of the app (the dashboard's HTML pages aside) is described here, validates the document, and
checks the app's answers against it with schemathesis.

One module per area: a new route goes into its area's `paths` (operations, panels, patients,
assignments, moves, practice, runs, validation), its bodies into `schemas` (or the area's own
`schemas`), shared error answers into `responses`; `common` holds the builders and the
parameters several paths share.
"""

from __future__ import annotations

from typing import Any

from fhirpanel import __version__
from fhirpanel.api.openapi import (
    assignments,
    moves,
    operations,
    panels,
    patients,
    practice,
    runs,
    validation,
)
from fhirpanel.api.openapi.common import READ_ERRORS, RECORDED_KINDS, RUN_KINDS, RUN_STATUSES
from fhirpanel.api.openapi.responses import responses
from fhirpanel.api.openapi.schemas import schemas
from fhirpanel.config import ApiSettings

__all__ = ["RECORDED_KINDS", "RUN_KINDS", "RUN_STATUSES", "build_openapi"]


def build_openapi(api: ApiSettings) -> dict[str, Any]:
    """The document for an app with these API settings (page size limits)."""
    paths: dict[str, Any] = {
        **operations.paths(api),
        **panels.paths(api),
        **patients.paths(api),
        **assignments.paths(api),
        **moves.paths(api),
        **practice.paths(api),
        **runs.paths(api),
        **validation.paths(READ_ERRORS),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fhirpanel API",
            "version": __version__,
            "description": (
                "Panels, patients, overrides, confirmations and refresh runs of a fhirpanel "
                "store. Every endpoint but `/healthz` and `/readyz` needs "
                "`Authorization: Bearer <token>`: read tokens may read; admin tokens "
                "(marked `x-fhirpanel-scope: admin`) may also change things. Errors are RFC "
                "9457 problem documents. References use the FHIR `Type/id` form. The HTML "
                "dashboard (`/`, signing in by a POST to `/login` or a single-use "
                "`/login/once/{code}` link, with a session cookie) is not part of this API."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": n}
            for n in (
                "health",
                "operations",
                "panels",
                "patients",
                "assignments",
                "proposed-moves",
                "runs",
                "validation",
            )
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `api.read_tokens` or `api.admin_tokens`",
                }
            },
            "schemas": {
                **schemas(),
                **moves.schemas(),
                **practice.schemas(),
                **validation.schemas(),
            },
            "responses": responses(api),
        },
    }
