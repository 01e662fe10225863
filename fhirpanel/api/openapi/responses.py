"""The shared error responses (RFC 9457 problem documents), referenced from the paths."""

from __future__ import annotations

from typing import Any

from fhirpanel.api.openapi.common import PROBLEM, ref
from fhirpanel.api.params import MAX_JSON_DEPTH
from fhirpanel.config import ApiSettings


def responses(api: ApiSettings) -> dict[str, Any]:
    def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM: {"schema": ref("Problem")}},
        }
        if headers:
            out["headers"] = headers
        return out

    challenge = {
        "WWW-Authenticate": {
            "description": "The bearer challenge (RFC 6750)",
            "schema": {"type": "string"},
        }
    }
    return {
        "BadRequest": problem(
            "Malformed JSON, JSON nesting arrays or objects more than "
            f"{MAX_JSON_DEPTH} levels deep, or a wrong query parameter "
            "(named in `errors`)"
        ),
        "Unauthorized": problem("No token, or a token that is not configured", challenge),
        "Forbidden": problem("A read token on an endpoint that needs admin", challenge),
        "NotFound": problem("No such patient, clinician, override, status or run"),
        "Conflict": problem(
            "The state does not allow it (patient not assigned or excluded, "
            "a status for a patient their record already excludes, "
            "assignment changed, a refresh already running, a run to accept "
            "that is not held)"
        ),
        "TooLarge": problem(
            f"The body is larger than {api.max_body_bytes} bytes "
            "(`api.max_body_bytes`), whether sent with a Content-Length or "
            "chunked"
        ),
        "UnsupportedMediaType": problem("The body is not sent as application/json"),
        "Unprocessable": problem(
            "A body member is missing, unknown or wrong (named in "
            "`errors`), or the clinician is unknown or not eligible"
        ),
        "Unavailable": problem(
            "The store cannot answer, or a refresh cannot start (no source configured)"
        ),
    }
