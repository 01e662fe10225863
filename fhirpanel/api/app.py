"""The Flask app factory: the JSON API, the health checks, `/metrics`, `/openapi.json` and the
dashboard, over one state store. Requests only read the store (never recompute); changes go
through the store's audited methods.

Settings are read once (`create_app(settings)`, or from the environment and FHIRPANEL_CONFIG).
With no API token configured the app refuses to start, unless created with
`allow_no_tokens=True` (tests and local experiments: then only the health checks answer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, request

from fhirpanel.api.auth import TokenTable, bearer_token
from fhirpanel.api.health import FhirProbe
from fhirpanel.api.metrics import ApiMetrics
from fhirpanel.api.openapi import build_openapi
from fhirpanel.api.problems import forbidden, register_problem_handlers, unauthorized
from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError
from fhirpanel.store import Store

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], int | None]  # (kind, trigger) → run id, or None when busy
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz"})
MAX_BODY_BYTES = 64 * 1024  # the API's bodies are a few hundred bytes


@dataclass
class ApiContext:
    """What the blueprints read from `current_app.extensions["fhirpanel"]`."""

    settings: Settings
    store: Store
    trigger: Trigger
    tokens: TokenTable
    metrics: ApiMetrics
    fhir_probe: FhirProbe
    openapi: dict[str, Any]


def default_trigger(settings: Settings, store: Store) -> Trigger:
    """Start refreshes in this process's background thread (`jobs.refresh.request_run`)."""

    def trigger(kind: str, by: str) -> int | None:
        from fhirpanel.jobs.refresh import request_run

        if kind not in ("full", "incremental"):
            raise ValueError(f"unknown refresh kind {kind!r}")
        return request_run(settings, store, kind, by)  # type: ignore[arg-type]

    return trigger


def create_app(settings: Settings | None = None, *, store: Store | None = None,
               trigger: Trigger | None = None, allow_no_tokens: bool = False) -> Flask:
    settings = settings if settings is not None else Settings.load()
    tokens = TokenTable.from_settings(settings.api)
    if not tokens and not allow_no_tokens:
        raise ConfigError("no API tokens configured: set api.admin_tokens and/or "
                          "api.read_tokens (FHIRPANEL_API_ADMIN_TOKENS, "
                          "FHIRPANEL_API_READ_TOKENS), e.g. `alice=<a long random string>`")
    if settings.api.page_size < 1 or settings.api.max_page_size < settings.api.page_size:
        raise ConfigError("api.page_size must be at least 1 and at most api.max_page_size")
    store = store if store is not None else Store(settings.database)

    # No app-level static folder: the dashboard blueprint serves its own files.
    app = Flask(__name__, static_folder=None)
    app.secret_key = settings.api.secret_key or tokens.derived_secret_key()
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    context = ApiContext(
        settings=settings, store=store,
        trigger=trigger if trigger is not None else default_trigger(settings, store),
        tokens=tokens, metrics=ApiMetrics(store), fhir_probe=FhirProbe(settings.fhir),
        openapi=build_openapi(settings.api))
    app.extensions["fhirpanel"] = context

    register_problem_handlers(app)
    _register_hooks(app, context)
    _register_operations(app, context)

    from fhirpanel.api import dashboard, health, routes

    app.register_blueprint(health.bp)
    app.register_blueprint(routes.bp)
    app.register_blueprint(dashboard.bp)
    log.info("API ready on store %s with %d token(s)", store.describe(), len(tokens.accounts))
    return app


def _register_hooks(app: Flask, context: ApiContext) -> None:
    @app.before_request
    def _start_clock() -> None:
        g.request_started = time.perf_counter()

    @app.before_request
    def _authenticate() -> None:
        """Every endpoint needs a bearer token except the health checks and the dashboard
        (which signs people in with the same tokens and keeps a session). Unknown URLs fall
        through to a 404."""
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC_ENDPOINTS or request.blueprint == "dashboard":
            return
        view = app.view_functions.get(endpoint)
        scope = getattr(view, "required_scope", "read")
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise unauthorized("send Authorization: Bearer <token>", bad_token=False)
        account = context.tokens.lookup(token)
        if account is None:
            log.info("API request refused: unknown token (%s %s)", request.method,
                     request.path)
            raise unauthorized("the token is not recognised", bad_token=True)
        if not account.allows(scope):
            raise forbidden(f"the token {account.name!r} may only read; this needs an admin "
                            "token", scope)
        g.account = account

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.pop("request_started", None)
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
            context.metrics.observe(rule, request.method, response.status_code,
                                    time.perf_counter() - started)
        if request.blueprint != "dashboard":
            # Answers carry patient ids: keep them out of shared caches.
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def _register_operations(app: Flask, context: ApiContext) -> None:
    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(context.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(context.openapi)
