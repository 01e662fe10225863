"""The Flask app factory: the JSON API, the health checks, `/metrics`, `/openapi.json` and the
dashboard, over one state store. Requests only read the store (never recompute); changes go
through the store's audited methods.

Settings are read once (`create_app(settings)`, or from the environment and FHIRPANEL_CONFIG).
With no API token configured the app refuses to start, unless created with
`allow_no_tokens=True` (tests and local experiments: then only the health checks answer).

Hardening that holds for every route: request bodies are bounded (`api.max_body_bytes`: 413
whether the body comes with a Content-Length or chunked, read at most one byte past the limit);
the log lines the app writes have control characters escaped (`logsafe`); the dashboard's
cookie is HttpOnly, SameSite=Lax and Secure unless the service is bound to loopback
(`api.secure_cookie` overrides), and carries only a session id kept in the store.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_content_length

from fhirpanel.api import logsafe
from fhirpanel.api.auth import TokenTable, bearer_token
from fhirpanel.api.health import FhirProbe
from fhirpanel.api.metrics import ApiMetrics
from fhirpanel.api.openapi import build_openapi
from fhirpanel.api.problems import forbidden, register_problem_handlers, unauthorized
from fhirpanel.config import ApiSettings, Settings
from fhirpanel.errors import ConfigError
from fhirpanel.service.review import Trigger
from fhirpanel.store import Store
from fhirpanel.tables import Tables
from fhirpanel.vocabulary import STARTABLE_KINDS

log = logging.getLogger(__name__)

PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


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
    tables: Tables


def default_trigger(settings: Settings, store: Store) -> Trigger:
    """Start refreshes in this process's background thread (`jobs.refresh.request_run`)."""

    def trigger(kind: str, by: str) -> int | None:
        from fhirpanel.jobs.refresh import request_run

        if kind not in STARTABLE_KINDS:
            raise ValueError(f"unknown refresh kind {kind!r}")
        return request_run(settings, store, kind, by)  # type: ignore[arg-type]

    return trigger


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    trigger: Trigger | None = None,
    allow_no_tokens: bool = False,
    tables: Tables | None = None,
) -> Flask:
    settings = settings if settings is not None else Settings.load()
    # Loaded once: a broken mapping file stops the app at start, not a page later.
    tables = tables if tables is not None else Tables.load(settings)
    tokens = TokenTable.from_settings(settings.api)
    if not tokens and not allow_no_tokens:
        raise ConfigError(
            "no API tokens configured: set api.admin_tokens and/or "
            "api.read_tokens (FHIRPANEL_API_ADMIN_TOKENS, "
            "FHIRPANEL_API_READ_TOKENS), e.g. `alice=<a long random string>`"
        )
    check_api_settings(settings.api)
    check_review_settings(settings)
    logsafe.install()
    store = store if store is not None else Store(settings.database)

    # No app-level static folder: the dashboard blueprint serves its own files.
    app = Flask(__name__, static_folder=None)
    app.secret_key = settings.api.secret_key or tokens.derived_secret_key()
    app.config["MAX_CONTENT_LENGTH"] = settings.api.max_body_bytes
    # The cookie carries only a session id (the session itself is in the store).
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = secure_cookie(settings.api)
    context = ApiContext(
        settings=settings,
        store=store,
        trigger=trigger if trigger is not None else default_trigger(settings, store),
        tokens=tokens,
        metrics=ApiMetrics(store),
        fhir_probe=FhirProbe(settings.fhir),
        openapi=build_openapi(settings.api),
        tables=tables,
    )
    app.extensions["fhirpanel"] = context

    register_problem_handlers(app)
    _register_hooks(app, context)
    _register_operations(app, context)

    from fhirpanel.api import dashboard, health, moves, practice, routes, validation

    app.register_blueprint(health.bp)
    app.register_blueprint(routes.bp)
    app.register_blueprint(moves.bp)  # proposed moves
    app.register_blueprint(practice.bp)  # transitions, teams, reviews, readiness
    app.register_blueprint(validation.bp)  # validation and monthly snapshots
    app.register_blueprint(dashboard.bp)
    log.info("API ready on store %s with %d token(s)", store.describe(), len(tokens.accounts))
    return app


def check_api_settings(api: ApiSettings) -> None:
    """The API settings' values that tokens aside could stop the app (also checked by
    `fhirpanel serve` in the master, before the workers start)."""
    if api.page_size < 1 or api.max_page_size < api.page_size:
        raise ConfigError("api.page_size must be at least 1 and at most api.max_page_size")
    if api.max_body_bytes < 1024:
        raise ConfigError("api.max_body_bytes must be at least 1024")
    if api.session_hours < 1 or api.session_idle_minutes < 1:
        raise ConfigError("api.session_hours and api.session_idle_minutes must be at least 1")


def check_review_settings(settings: Settings) -> None:
    if settings.review.panel_review_months < 1:
        raise ConfigError("review.panel_review_months must be at least 1")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) and localhost; an empty host binds everything."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def secure_cookie(api: ApiSettings) -> bool:
    """`Secure` on the dashboard cookie: always, never, or (auto) unless bound to loopback,
    where plain http is the normal way in; anywhere else the service sits behind TLS."""
    if api.secure_cookie == "always":
        return True
    if api.secure_cookie == "never":
        return False
    return not is_loopback(api.host)


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes of a request body (less when it ends first)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = stream.read(min(left, 64 * 1024))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _register_hooks(app: Flask, context: ApiContext) -> None:
    limit = context.settings.api.max_body_bytes

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
            log.info("API request refused: unknown token (%s %s)", request.method, request.path)
            raise unauthorized("the token is not recognised", bad_token=True)
        if not account.allows(scope):
            raise forbidden(
                f"the token {account.name!r} may only read; this needs an admin token", scope
            )
        g.account = account

    @app.before_request
    def _bound_body() -> None:
        """413 for a body over the limit, declared (Content-Length) or not (chunked: the
        server ends the stream, `wsgi.input_terminated`). A chunked body is read here, at most
        one byte past the limit, and handed on with its length, so the JSON and form parsers
        never see a body cut short at the limit (werkzeug's own bound truncates silently)."""
        environ = request.environ
        length = get_content_length(environ)
        too_large = f"the request body is larger than {limit} bytes"
        if length is not None:
            if length > limit:
                raise RequestEntityTooLarge(too_large)
            return
        if not environ.get("wsgi.input_terminated"):
            return  # no declared length and no server-terminated stream: no body is read
        body = _read_at_most(environ["wsgi.input"], limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge(too_large)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        request.__dict__.pop("content_length", None)  # a cached_property: read it afresh

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.pop("request_started", None)
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
            context.metrics.observe(
                rule, request.method, response.status_code, time.perf_counter() - started
            )
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
