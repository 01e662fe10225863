"""RFC 9457 problem details: the one shape every API error takes, and the one place that turns
exceptions into it (`register_problem_handlers`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from fhirpanel.api.refusals import refusal_answer
from fhirpanel.errors import BusyError, ConfigError, FhirpanelError
from fhirpanel.service.errors import InvalidInput, ReviewError
from fhirpanel.store import StoreError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Problem types are URNs: stable names that promise no web page behind them.
TYPE_PREFIX = "urn:fhirpanel:problem:"
BEARER_REALM = 'Bearer realm="fhirpanel"'


class Problem(Exception):
    """An error the API answers on purpose. `errors` names the offending fields or parameters
    (`[{"field": "reason", "message": "..."}]`)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str | None = None,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.kind if self.kind else "about:blank"


def invalid(field: str, message: str, *, status: int = 422, where: str = "body") -> Problem:
    """A request whose field (a body member, or a query parameter with `where="query"`) is
    missing or wrong."""
    kind = "invalid-parameter" if where == "query" else "invalid-body"
    title = "Invalid query parameter" if where == "query" else "Invalid request body"
    return Problem(
        status,
        title,
        f"{field}: {message}",
        kind=kind,
        errors=[{"field": field, "message": message}],
    )


def not_found(detail: str) -> Problem:
    return Problem(404, "Not Found", detail, kind="not-found")


def conflict(detail: str, kind: str = "conflict") -> Problem:
    return Problem(409, "Conflict", detail, kind=kind)


def review_problem(exc: ReviewError) -> Problem:
    """A refusal of the review service, answered as `api/refusals.py` says: a wrong body member
    is a 422 naming it, an unknown patient or a missing override or status a 404, a change the
    patient's state forbids a 409."""
    answer = refusal_answer(exc)
    errors = [{"field": exc.field, "message": exc.message}] if isinstance(exc, InvalidInput) else []
    return Problem(answer.status, answer.title, str(exc), kind=answer.kind, errors=errors)


def unauthorized(detail: str, *, bad_token: bool) -> Problem:
    # RFC 6750 section 3: `error="invalid_token"` only when a token was sent.
    challenge = BEARER_REALM + (', error="invalid_token"' if bad_token else "")
    return Problem(
        401, "Unauthorized", detail, kind="unauthorized", headers={"WWW-Authenticate": challenge}
    )


def forbidden(detail: str, scope: str) -> Problem:
    challenge = f'{BEARER_REALM}, error="insufficient_scope", scope="{scope}"'
    return Problem(
        403, "Forbidden", detail, kind="insufficient-scope", headers={"WWW-Authenticate": challenge}
    )


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.path,
    }
    if problem.errors:
        body["errors"] = problem.errors
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def register_problem_handlers(app: Flask) -> None:
    """Every error the app answers becomes a problem document here (the dashboard blueprint
    renders its own 4xx pages for browsers)."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or exc.name
        problem = Problem(status, exc.name, detail)
        if status == 413:  # over api.max_body_bytes, with a Content-Length or chunked
            problem = Problem(413, "Content Too Large", detail, kind="body-too-large")
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                problem.headers["Allow"] = ", ".join(allowed)
        return problem_response(problem)

    @app.errorhandler(FhirpanelError)
    def _ours(exc: FhirpanelError) -> Response:
        if isinstance(exc, ReviewError):
            return problem_response(review_problem(exc))
        if isinstance(exc, BusyError):
            return problem_response(conflict(str(exc), "busy"))
        if isinstance(exc, StoreError):
            log.error("store unavailable: %s", exc)
            return problem_response(
                Problem(
                    503,
                    "Service Unavailable",
                    "the state store cannot be reached",
                    kind="store-unavailable",
                )
            )
        if isinstance(exc, ConfigError):
            return problem_response(
                Problem(503, "Service Unavailable", str(exc), kind="not-configured")
            )
        log.exception("request failed: %s", type(exc).__name__)
        return problem_response(Problem(500, "Internal Server Error", str(exc)))

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: SQLAlchemyError) -> Response:
        log.error("store error on %s %s: %s", request.method, request.path, type(exc).__name__)
        return problem_response(
            Problem(
                503,
                "Service Unavailable",
                "the state store could not answer; try again",
                kind="store-unavailable",
            )
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem_response(
            Problem(
                500, "Internal Server Error", "an unexpected error occurred; it has been logged"
            )
        )
