"""API hardening (issue 12, item 10), each defect an adversarial tester measured, checked where
it happened:

- log lines escape control characters: the app's loggers (Flask test client) and gunicorn's
  access and error logs (`fhirpanel serve`, raw socket requests with `%0d%0a` and literal bytes);
- JSON bodies are bounded in depth (400) and size (413), with a Content-Length or chunked;
- dashboard sessions live in the store: logout revokes them for every copy of the cookie and
  every worker; expired and idle sessions are refused;
- the cookie is HttpOnly, SameSite=Lax, and Secure unless the service is on loopback;
- a token signs in only by POST; `GET /login?token=` shows the form; single-use sign-in links.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from fhirpanel.api.app import create_app, is_loopback, secure_cookie
from fhirpanel.api.dashboard import SESSION_KEY
from fhirpanel.api.gunicorn_log import redact_path
from fhirpanel.api.logsafe import escape_controls
from fhirpanel.api.openapi import build_openapi
from fhirpanel.api.params import MAX_JSON_DEPTH, json_depth
from fhirpanel.api.serve import LOGGER_CLASS, gunicorn_options
from fhirpanel.config import ApiSettings, Settings
from fhirpanel.errors import ConfigError
from fhirpanel.sandbox.server import free_port
from fhirpanel.store import Store
from fhirpanel.store.models import DashboardSession, LoginCode
from fhirpanel.store.sessions import (
    active_session,
    create_session,
    issue_login_link,
    redeem_login_code,
    revoke_session,
)
from tests.conftest import ROOT

ADMIN = "admin-token-for-hardening-0123456789"
READ = "read-token-for-hardening-0123456789"
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
PROBLEM = "application/problem+json"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
ANY_HOST = "0.0.0.0"  # noqa: S104 - a setting under test, nothing is bound to it
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")  # no \t, \n


def settings_for(db: Path, **env: str) -> Settings:
    return Settings.load(
        env={
            "FHIRPANEL_API_ADMIN_TOKENS": f"boss={ADMIN}",
            "FHIRPANEL_API_READ_TOKENS": f"viewer={READ}",
            "FHIRPANEL_API_SECRET_KEY": "hardening-secret",
            "FHIRPANEL_DATABASE_URL": f"sqlite:///{db}",
            **env,
        }
    )


class Trigger:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, kind: str, by: str) -> int | None:
        self.calls.append((kind, by))
        return None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'state.db'}")
    yield st
    st.close()


@pytest.fixture
def app(store: Store, tmp_path: Path) -> Flask:
    return create_app(settings_for(tmp_path / "state.db"), store=store, trigger=Trigger())


def problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status and body["type"] == f"urn:fhirpanel:problem:{kind}"
    return body  # type: ignore[no-any-return]


def form_csrf(client: FlaskClient, url: str = "/login") -> str:
    found = CSRF_FIELD.search(client.get(url).get_data(as_text=True))
    assert found is not None
    return found.group(1)


def sign_in(app: Flask, token: str = ADMIN) -> tuple[FlaskClient, Any]:
    client = app.test_client()
    response = client.post("/login", data={"token": token, "csrf_token": form_csrf(client)})
    assert response.status_code == 303
    return client, response


def session_rows(store: Store) -> list[DashboardSession]:
    with store.session() as s:
        return list(s.scalars(select(DashboardSession).order_by(DashboardSession.created_at)))


def cookie_of(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


# ---------------------------------------------------------------- log lines


def test_escape_controls_writes_every_control_character_visibly() -> None:
    assert escape_controls("plain /api/panels") == "plain /api/panels"
    assert escape_controls("a\r\nb") == "a\\r\\nb"
    assert escape_controls("\x1b[31mred\x00\x7f\t") == "\\x1b[31mred\\x00\\x7f\\t"
    assert (
        escape_controls("c1\x85 ls\u2028 ps\u2029 bidi\u202e")
        == "c1\\x85 ls\\u2028 ps\\u2029 bidi\\u202e"
    )
    # A backslash is doubled, so an escaped CR/LF cannot be faked by sending `\r` as text.
    assert escape_controls("x\\r\\n") == "x\\\\r\\\\n"
    # Text already escaped (gunicorn's repr of a refused request line) keeps single backslashes.
    assert escape_controls("'GET /x\\x1b'\r", backslashes=False) == "'GET /x\\x1b'\\r"
    assert escape_controls("é ü 中") == "é ü 中"


def test_the_apps_log_lines_escape_request_input(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fhirpanel")
    client = app.test_client()
    response = client.get(
        "/api/patients/x%1b[31mFORGED%e2%80%a8%c2%85",
        headers={"Authorization": "Bearer not-a-configured-token"},
    )
    assert response.status_code == 401
    refused = [r.getMessage() for r in caplog.records if "unknown token" in r.getMessage()]
    assert refused == [
        "API request refused: unknown token (GET /api/patients/x\\x1b[31mFORGED\\u2028\\x85)"
    ]
    # Any message on the API's loggers, whatever its arguments hold.
    caplog.clear()
    logging.getLogger("fhirpanel.api.dashboard").info(
        "dashboard: %s did %s", "eve\r\n2026", "x\x1b"
    )
    assert [r.getMessage() for r in caplog.records] == ["dashboard: eve\\r\\n2026 did x\\x1b"]


def test_serve_configures_the_escaping_gunicorn_logger() -> None:
    options = gunicorn_options(Settings.load(env={}))
    assert options["logger_class"] == LOGGER_CLASS
    assert "%(q)s" not in options["access_log_format"]  # no query strings
    assert (
        redact_path("/login/once/abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
        == "/login/once/<redacted>"
    )
    assert redact_path("/api/panels") == "/api/panels"


# ---------------------------------------------------------------- JSON depth and body size


def nested(depth: int) -> bytes:
    return b'{"kind": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth(b'{"kind": "full"}') == 1
    assert json_depth(b'{"a": "[[[[{{{{\\"[[["}') == 1
    assert json_depth(nested(5000)) == 5000
    assert json_depth(b'"' + b'\\"' * 30_000) == 0  # an unterminated string: linear time


def test_a_deeply_nested_body_is_a_400_problem_not_a_500(app: Flask) -> None:
    client = app.test_client()
    for depth in (5000, MAX_JSON_DEPTH + 1):
        body = problem(
            client.post(
                "/api/runs", data=nested(depth), headers=ADMIN_H, content_type="application/json"
            ),
            400,
            "json-too-deep",
        )
        assert f"{depth} levels" in body["detail"]
    # At the bound the body is parsed, and refused for its content (422), not its shape.
    body = problem(
        client.post(
            "/api/runs",
            data=nested(MAX_JSON_DEPTH),
            headers=ADMIN_H,
            content_type="application/json",
        ),
        422,
        "invalid-body",
    )
    assert body["errors"] == [{"field": "kind", "message": "must be a string"}]


def chunked_post(client: FlaskClient, url: str, body: bytes, **kwargs: Any) -> Any:
    """A request without Content-Length whose stream the server ends, as gunicorn hands a
    chunked body to the app."""
    return client.post(
        url,
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},
        **kwargs,
    )


def test_a_body_over_the_limit_is_413_with_or_without_content_length(
    tmp_path: Path, store: Store
) -> None:
    settings = settings_for(tmp_path / "state.db", FHIRPANEL_API_MAX_BODY_BYTES="2048")
    trigger = Trigger()
    client = create_app(settings, store=store, trigger=trigger).test_client()
    json_h = {**ADMIN_H, "Content-Type": "application/json"}
    over = b'{"kind": "' + b"a" * 2100 + b'"}'
    body = problem(client.post("/api/runs", data=over, headers=json_h), 413, "body-too-large")
    assert "2048 bytes" in body["detail"]
    body = problem(chunked_post(client, "/api/runs", over, headers=json_h), 413, "body-too-large")
    assert "2048 bytes" in body["detail"]
    # Under the limit, a chunked body is read whole (not cut short at the limit, not empty).
    under = b'{"kind": "' + b"a" * 1900 + b'"}'
    body = problem(chunked_post(client, "/api/runs", under, headers=json_h), 422, "invalid-body")
    assert body["errors"] == [{"field": "kind", "message": "must be at most 500 characters"}]
    exact = b'{"kind": "' + b" " * (2048 - 16) + b'full"}'
    assert len(exact) == 2048
    body = problem(chunked_post(client, "/api/runs", exact, headers=json_h), 422, "invalid-body")
    assert body["errors"][0]["field"] == "kind"
    assert trigger.calls == []
    # The dashboard's forms are bounded the same way (an HTML page, not a problem document).
    signed, _ = sign_in(create_app(settings, store=store, trigger=trigger))
    response = chunked_post(
        signed,
        "/runs/start",
        b"kind=full&csrf_token=" + b"x" * 3000,
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert "Too much at once" in response.get_data(as_text=True)


def test_the_openapi_document_names_the_bounds() -> None:
    document = build_openapi(ApiSettings(max_body_bytes=4096))
    responses = document["components"]["responses"]
    assert "4096 bytes" in responses["TooLarge"]["description"]
    assert f"{MAX_JSON_DEPTH} levels" in responses["BadRequest"]["description"]


def test_settings_out_of_range_are_refused(tmp_path: Path, store: Store) -> None:
    for env in ({"FHIRPANEL_API_MAX_BODY_BYTES": "10"}, {"FHIRPANEL_API_SESSION_HOURS": "0"}):
        with pytest.raises(ConfigError):
            create_app(settings_for(tmp_path / "state.db", **env), store=store)
    with pytest.raises(ConfigError, match="SECURE_COOKIE"):
        settings_for(tmp_path / "state.db", FHIRPANEL_API_SECURE_COOKIE="sometimes")


# ---------------------------------------------------------------- cookie flags


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),
        (ANY_HOST, False),
        ("::", False),
        ("10.0.0.5", False),
        ("", False),
        ("panels.example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert secure_cookie(ApiSettings(host=host)) is not loopback
    assert secure_cookie(ApiSettings(host=host, secure_cookie="always")) is True
    assert secure_cookie(ApiSettings(host=host, secure_cookie="never")) is False


@pytest.mark.parametrize(
    ("host", "mode", "secure"),
    [
        ("127.0.0.1", "auto", False),
        (ANY_HOST, "auto", True),
        (ANY_HOST, "never", False),
        ("127.0.0.1", "always", True),
    ],
)
def test_the_session_cookie_flags(
    tmp_path: Path, store: Store, host: str, mode: str, secure: bool
) -> None:
    settings = settings_for(
        tmp_path / "state.db", FHIRPANEL_API_HOST=host, FHIRPANEL_API_SECURE_COOKIE=mode
    )
    _, response = sign_in(create_app(settings, store=store, trigger=Trigger()))
    cookies = response.headers.getlist("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith("session=")
    flags = [part.strip().lower() for part in cookies[0].split(";")[1:]]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert ("secure" in flags) is secure


# ---------------------------------------------------------------- server-side sessions


def test_logout_revokes_the_session_for_every_copy_of_the_cookie(app: Flask, store: Store) -> None:
    client, _ = sign_in(app)
    [row] = session_rows(store)
    assert row.actor == "boss" and row.via == "token" and row.revoked_at is None
    with client.session_transaction() as session:
        sid = session[SESSION_KEY]
    assert row.id == hashlib.sha256(sid.encode()).hexdigest()  # only the hash is stored
    copied = cookie_of(client)
    copy = app.test_client()
    copy.set_cookie("session", copied)
    assert copy.get("/").status_code == 200  # the copied cookie works while signed in
    csrf = form_csrf(copy, "/logout")

    response = client.post("/logout", data={"csrf_token": form_csrf(client, "/logout")})
    assert response.status_code == 303 and response.location == "/login"
    [row] = session_rows(store)
    assert row.revoked_at is not None and row.revoked_reason == "signed out"
    replay = app.test_client()
    replay.set_cookie("session", copied)  # the cookie exactly as it was before the logout
    refused = replay.get("/")
    assert refused.status_code == 302 and refused.location.startswith("/login")
    replay.set_cookie("session", copied)
    assert replay.post("/runs/start", data={"kind": "full", "csrf_token": csrf}).status_code == 401


def test_a_copied_cookie_from_before_logout_is_refused_by_another_worker(
    store: Store, tmp_path: Path
) -> None:
    """Two app instances over one store stand for gunicorn's two worker processes."""
    settings = settings_for(tmp_path / "state.db")
    worker_a = create_app(settings, store=store, trigger=Trigger())
    worker_b = create_app(settings, store=store, trigger=Trigger())
    client, _ = sign_in(worker_a)
    copied = cookie_of(client)
    on_b = worker_b.test_client()
    on_b.set_cookie("session", copied)
    assert "Signed in as <strong>boss</strong>" in on_b.get("/").get_data(as_text=True)
    logout = on_b.post("/logout", data={"csrf_token": form_csrf(on_b, "/logout")})
    assert logout.status_code == 303
    replay = worker_a.test_client()
    replay.set_cookie("session", copied)
    assert replay.get("/").status_code == 302
    assert replay.post("/runs/start", data={"kind": "full"}).status_code == 401
    assert [r.revoked_reason for r in session_rows(store)] == ["signed out"]


def test_expired_and_idle_sessions_are_refused(app: Flask, store: Store) -> None:
    client, _ = sign_in(app)
    assert client.get("/").status_code == 200
    [row] = session_rows(store)
    now = datetime.now(UTC)
    with store.session() as s:  # idle for longer than api.session_idle_minutes (120)
        s.execute(update(DashboardSession).values(last_seen_at=now - timedelta(minutes=121)))
    assert client.get("/").status_code == 302
    other, _ = sign_in(app)
    with store.session() as s:
        s.execute(
            update(DashboardSession)
            .where(DashboardSession.id != row.id)
            .values(expires_at=now - timedelta(seconds=1))
        )
    assert other.get("/").status_code == 302


def test_session_records_in_the_store(store: Store) -> None:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    sid = create_session(
        store, actor="boss", token_fp="f" * 64, via="token", lifetime_seconds=3600, now=start
    )
    info = active_session(store, sid, idle_seconds=600, now=start + timedelta(seconds=30))
    assert info is not None and info.actor == "boss" and info.last_seen_at == start
    # Used after more than a minute: last_seen_at moves (written at most once a minute).
    info = active_session(store, sid, idle_seconds=600, now=start + timedelta(seconds=500))
    assert info is not None and info.last_seen_at == start + timedelta(seconds=500)
    assert (
        active_session(store, sid, idle_seconds=600, now=start + timedelta(seconds=1000))
        is not None
    )
    assert (
        active_session(store, sid, idle_seconds=600, now=start + timedelta(seconds=3600)) is None
    )  # expired
    assert active_session(store, "not-a-session-id", idle_seconds=600) is None
    again = create_session(
        store, actor="boss", token_fp="f" * 64, via="link", lifetime_seconds=3600, replaces=sid
    )
    rows = {r.via: r for r in session_rows(store)}
    assert rows["token"].revoked_reason == "signed in again"
    assert revoke_session(store, again) is True and revoke_session(store, again) is False
    assert active_session(store, again, idle_seconds=600) is None


# ---------------------------------------------------------------- sign-in by POST only


def test_get_login_with_a_token_shows_the_form_and_signs_nobody_in(
    app: Flask, store: Store
) -> None:
    client = app.test_client()
    response = client.get(f"/login?token={ADMIN}&next=/runs")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'id="login-note"' in html and "no longer sign you in" in html
    assert 'type="password"' in html and ADMIN not in html
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert session_rows(store) == []
    with client.session_transaction() as session:
        assert SESSION_KEY not in session
    assert client.get("/").status_code == 302
    # POST without the form's CSRF token (a form on another site) is refused too.
    assert client.post("/login", data={"token": ADMIN}).status_code == 400
    assert session_rows(store) == []


# ---------------------------------------------------------------- single-use sign-in links


def test_a_sign_in_link_works_once(app: Flask, store: Store) -> None:
    path = issue_login_link(store, "boss")
    code = path.rsplit("/", 1)[1]
    assert re.fullmatch(r"/login/once/[A-Za-z0-9_-]{43}", path)
    with store.session() as s:
        [row] = s.scalars(select(LoginCode)).all()
        assert row.code_hash == hashlib.sha256(code.encode()).hexdigest()
        assert row.actor == "boss" and row.used_at is None
        lifetime = row.expires_at - row.created_at
    assert lifetime == timedelta(seconds=600)

    client = app.test_client()
    assert client.head(path).status_code == 200  # a link checker's HEAD does not use it
    response = client.get(path)
    assert response.status_code == 303 and response.location == "/"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Signed in as <strong>boss</strong>" in client.get("/").get_data(as_text=True)
    [session_row] = session_rows(store)
    assert session_row.via == "link" and session_row.actor == "boss"

    again = app.test_client().get(path)
    assert again.status_code == 410
    assert "This sign-in link has been used" in again.get_data(as_text=True)
    assert len(session_rows(store)) == 1


def test_expired_unknown_and_orphaned_sign_in_links_are_refused(app: Flask, store: Store) -> None:
    expired = issue_login_link(store, "boss", ttl_seconds=60)
    with store.session() as s:
        s.execute(update(LoginCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    response = app.test_client().get(expired)
    assert response.status_code == 410
    assert "This sign-in link has expired" in response.get_data(as_text=True)
    unknown = app.test_client().get("/login/once/" + "A" * 43)
    assert unknown.status_code == 404 and "not valid" in unknown.get_data(as_text=True)
    assert app.test_client().get("/login/once/short").status_code == 404
    ghost = app.test_client().get(issue_login_link(store, "someone-removed"))
    assert ghost.status_code == 403 and "no longer configured" in ghost.get_data(as_text=True)
    assert session_rows(store) == []
    with pytest.raises(ValueError):
        issue_login_link(store, "boss", ttl_seconds=0)
    with pytest.raises(ValueError):
        issue_login_link(store, "")


def test_a_sign_in_link_raced_from_many_threads_is_used_once(store: Store) -> None:
    code = issue_login_link(store, "boss").rsplit("/", 1)[1]
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def redeem() -> None:
        outcome = redeem_login_code(store, code)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results, key=str) == [("ok", "boss")] + [("used", None)] * 7


# ---------------------------------------------------------------- fhirpanel serve (gunicorn)


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


FORGED = "2026-12-05 06:00:00,000 INFO fhirpanel.api.dashboard: dashboard sign-in: boss (admin)"


def test_serve_writes_escaped_log_lines_bounds_bodies_and_shares_sessions(tmp_path: Path) -> None:
    """Under gunicorn with 2 workers: raw socket requests with `%0d%0a` and literal control
    bytes leave one escaped line each; chunked bodies over the limit get 413; a session signed
    out in one worker is refused by both."""
    port = free_port()
    env = {
        **os.environ,
        "FHIRPANEL_API_ADMIN_TOKENS": f"boss={ADMIN}",
        "FHIRPANEL_API_WORKERS": "2",
        "FHIRPANEL_LOG_LEVEL": "INFO",
        "FHIRPANEL_API_MAX_BODY_BYTES": "16384",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fhirpanel",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                f"sqlite:///{tmp_path / 'state.db'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("fhirpanel serve did not answer: " + log_path.read_text())
            time.sleep(0.2)
        host = b"Host: 127.0.0.1\r\nConnection: close\r\n"
        forged = FORGED.replace(" ", "%20").encode()
        # CR/LF, percent-encoded, in the path: no token needed.
        answer = raw_request(
            port, b"GET /api/panels/x%0d%0a" + forged + b" HTTP/1.1\r\n" + host + b"\r\n"
        )
        assert status_of(answer) == 404
        # ESC and a Unicode line separator reaching the app's own log (an unknown token).
        answer = raw_request(
            port,
            b"GET /api/patients/p%1b[2J%e2%80%a8"
            + forged
            + b" HTTP/1.1\r\n"
            + host
            + b"Authorization: Bearer not-a-configured-token\r\n\r\n",
        )
        assert status_of(answer) == 401
        # Literal control bytes in the request line: refused by gunicorn, logged escaped.
        answer = raw_request(
            port, b"GET /x\x1b[31m\r\n" + FORGED.encode() + b" HTTP/1.1\r\n" + host + b"\r\n"
        )
        assert status_of(answer) == 400
        answer = raw_request(port, b"GET /x\x1bLITERAL HTTP/1.1\r\n" + host + b"\r\n")
        assert status_of(answer) == 400

        # Bodies: 5,000 deep -> 400; chunked over the limit -> 413; chunked under -> read whole.
        json_h = (
            b"Content-Type: application/json\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n"
        )
        deep = nested(5000)
        answer = raw_request(
            port,
            b"POST /api/runs HTTP/1.1\r\n"
            + host
            + json_h
            + b"Content-Length: %d\r\n\r\n" % len(deep)
            + deep,
        )
        assert status_of(answer) == 400 and b"json-too-deep" in answer

        def chunked(body: bytes) -> bytes:
            return (
                b"POST /api/runs HTTP/1.1\r\n"
                + host
                + json_h
                + b"Transfer-Encoding: chunked\r\n\r\n"
                + b"".join(
                    b"%x\r\n" % len(body[i : i + 1000]) + body[i : i + 1000] + b"\r\n"
                    for i in range(0, len(body), 1000)
                )
                + b"0\r\n\r\n"
            )

        answer = raw_request(port, chunked(b'{"kind": "' + b"a" * 200_000 + b'"}'))
        assert status_of(answer) == 413 and b"body-too-large" in answer
        answer = raw_request(port, chunked(b'{"kind": "' + b"a" * 3000 + b'"}'))
        assert status_of(answer) == 422 and b"must be at most 500 characters" in answer

        # A session signed out is refused by both workers (many requests reach both).
        browser = requests.Session()
        login = browser.get(f"{base}/login", timeout=10)
        csrf = CSRF_FIELD.search(login.text)
        assert csrf is not None
        signed = browser.post(
            f"{base}/login",
            data={"token": ADMIN, "csrf_token": csrf.group(1)},
            allow_redirects=False,
            timeout=10,
        )
        assert signed.status_code == 303
        assert "secure" not in signed.headers["Set-Cookie"].lower()  # on loopback
        copied = browser.cookies.get("session")
        assert copied is not None
        assert all(
            browser.get(f"{base}/runs", allow_redirects=False, timeout=10).status_code == 200
            for _ in range(8)
        )
        page = browser.get(f"{base}/logout", timeout=10)
        token = CSRF_FIELD.search(page.text)
        assert token is not None
        out = browser.post(
            f"{base}/logout", data={"csrf_token": token.group(1)}, allow_redirects=False, timeout=10
        )
        assert out.status_code == 303
        replays = [
            requests.get(
                f"{base}/runs", cookies={"session": copied}, allow_redirects=False, timeout=10
            ).status_code
            for _ in range(8)
        ]
        assert replays == [302] * 8
        # The old sign-in address with a token: the form, nobody signed in.
        old = requests.get(f"{base}/login?token={ADMIN}", allow_redirects=False, timeout=10)
        assert old.status_code == 200 and "no longer sign you in" in old.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    output = log_path.read_bytes().decode("utf-8", errors="replace")
    lines = output.splitlines()
    # No line a request wrote: no forged line start, no raw control character anywhere.
    assert not [line for line in lines if line.startswith(FORGED[:23]) and "sign-in" in line]
    assert not [line for line in lines if CONTROL.search(line)], output
    assert ADMIN not in output
    # The access log has each request on one line, the CR/LF escaped.
    assert f'"GET /api/panels/x\\r\\n{FORGED}" 404' in output
    assert f'"GET /api/patients/p\\x1b[2J\\u2028{FORGED}" 401' in output
    app_line = [line for line in lines if "unknown token" in line]
    assert len(app_line) == 1
    assert app_line[0].endswith(f"(GET /api/patients/p\\x1b[2J\\u2028{FORGED})")
    refused = [line for line in lines if "Invalid request" in line]
    assert len(refused) == 2 and all("\\x1b" in line for line in refused)
    assert '"POST /api/runs" 413' in output and '"POST /api/runs" 400' in output
