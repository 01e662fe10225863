"""Signing in and out, the session behind the cookie, CSRF, and the hooks every dashboard
request passes (sign-in required, view-only tokens refused on POST, page headers)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from fhirpanel.api.auth import Account
from fhirpanel.api.dashboard.base import (
    CSRF_KEY,
    SESSION_KEY,
    VIEW_ONLY,
    Viewer,
    bp,
    log,
    settings,
    store,
    tokens,
)
from fhirpanel.store import sessions as web_sessions

PUBLIC_ENDPOINTS = frozenset({"dashboard.login", "dashboard.login_once", "dashboard.static"})
LOGIN_ENDPOINTS = frozenset({"dashboard.login", "dashboard.login_once"})
# Scripts only from our own files; inline style attributes size the small bars.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
)


def _fingerprint(token: str) -> str:
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def viewer() -> Viewer | None:
    """Who the session belongs to, if it is in force and its token still configured (once per
    request)."""
    if "dashboard_viewer" not in g:
        g.dashboard_viewer = _session_viewer()
    return g.dashboard_viewer  # type: ignore[no-any-return]


def signed_in() -> Viewer:
    """The viewer of a page `_require_sign_in` let through."""
    found = viewer()
    assert found is not None  # noqa: S101 - _require_sign_in ran
    return found


def _session_id() -> str | None:
    sid = session.get(SESSION_KEY)
    return sid if isinstance(sid, str) else None


def _session_viewer() -> Viewer | None:
    sid = _session_id()
    if sid is None:
        return None
    api = settings().api
    info = web_sessions.active_session(store(), sid, idle_seconds=api.session_idle_minutes * 60)
    if info is None:
        return None
    found = None
    for account in tokens().accounts:  # no early exit, as for bearer tokens
        same = hmac.compare_digest(_fingerprint(account.token), info.token_fp)
        if same and account.name == info.actor and found is None:
            found = Viewer(account.name, account.admin)
    return found


def _start_session(account: Account, via: str) -> None:
    """A new session in the store for this account; the browser's previous one is revoked
    (no session fixation: the id is new, the old cookie content is dropped)."""
    api = settings().api
    sid = web_sessions.create_session(
        store(),
        actor=account.name,
        token_fp=_fingerprint(account.token),
        via=via,
        lifetime_seconds=api.session_hours * 3600,
        replaces=_session_id(),
    )
    session.clear()
    session[SESSION_KEY] = sid
    g.pop("dashboard_viewer", None)
    log.info(
        "dashboard sign-in: %s (%s) with %s",
        account.name,
        "admin" if account.admin else "read",
        "a sign-in link" if via == "link" else "a token",
    )


def csrf_token() -> str:
    """Signed in: an HMAC of the session id (nothing more in the cookie). Before sign-in (the
    login form): a random nonce kept in the cookie."""
    sid = _session_id()
    if sid is not None:
        key = str(current_app.secret_key or "").encode()
        return hmac.new(key, b"csrf\0" + sid.encode(), hashlib.sha256).hexdigest()
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def _check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    kept = csrf_token() if _session_id() is not None else session.get(CSRF_KEY)
    if not isinstance(kept, str) or not hmac.compare_digest(sent.encode(), kept.encode()):
        abort(400, description="This form has expired. Reload the page and try again.")


def safe_next(target: str | None, default: str) -> str:
    """Only paths on this site (no scheme, no host, no `//`)."""
    if not target:
        return default
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        return default
    return target


@bp.before_request
def _require_sign_in() -> ResponseReturnValue | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        if request.method == "POST":
            _check_csrf()
        return None
    found = viewer()
    if found is None:
        session.pop(SESSION_KEY, None)
        if request.method == "GET":
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method == "POST":
        _check_csrf()
        if request.endpoint != "dashboard.logout" and not found.admin:
            abort(403, description=VIEW_ONLY + "confirm or change assignments or start refreshes.")
    return None


@bp.after_request
def _page_headers(response: Response) -> Response:
    if request.endpoint != "dashboard.static":
        # Pages carry patient ids and a CSRF token: never cached, never framed.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", CSP)
        # A sign-in address (an old `?token=` bookmark, a link's code) is never sent on.
        response.headers.setdefault(
            "Referrer-Policy",
            "no-referrer" if request.endpoint in LOGIN_ENDPOINTS else "same-origin",
        )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """GET: the form. POST (with the form's CSRF token): sign in with a token. A token in the
    query string signs nobody in: a link from another site must not choose who the browser is
    signed in as, and a token does not belong in the address bar or the history."""
    next_url = safe_next(request.values.get("next"), url_for("dashboard.overview"))
    if request.method == "GET":
        if viewer() is not None:
            return redirect(next_url)
        note = None
        if "token" in request.args:
            log.info("dashboard: a sign-in address carrying a token was ignored")
            note = (
                "Sign-in addresses that carry a token no longer sign you in. Paste the "
                "token below instead, or ask for a new sign-in link."
            )
        session.pop(SESSION_KEY, None)  # a revoked or expired session: start afresh
        return render_template("login.html", next_url=next_url, error=None, note=note)
    token = request.form.get("token", "").strip()
    account = tokens().lookup(token) if token else None
    if account is None:
        log.info("dashboard sign-in refused (%s)", "unknown token" if token else "no token")
        error = "That token is not recognised." if token else "Paste your access token."
        return render_template("login.html", next_url=next_url, error=error, note=None), 401
    _start_session(account, via="token")
    return redirect(next_url, code=303)


LINK_REFUSALS = {
    "used": (
        410,
        "This sign-in link has been used",
        "Each sign-in link works once, and this one has already signed someone in. "
        "Ask for a new link, or sign in with your access token.",
    ),
    "expired": (
        410,
        "This sign-in link has expired",
        "Sign-in links work for a short time only. Ask for a new link, or sign in "
        "with your access token.",
    ),
    "unknown": (
        404,
        "This sign-in link is not valid",
        "The link may be incomplete: check that it was copied whole, or sign in "
        "with your access token.",
    ),
    "ok": (
        403,
        "This sign-in link's account is gone",
        "The account this link was made for is no longer configured. Sign in with "
        "your access token.",
    ),
}


@bp.get("/login/once/<code>")
def login_once(code: str) -> ResponseReturnValue:
    """A single-use sign-in link (`issue_login_link`): signs in and redirects to the overview;
    a second use, an expired or unknown code is refused with a page that says so."""
    if request.method == "HEAD":  # a link checker probing the address does not use it up
        return Response(status=200)
    outcome, actor = web_sessions.redeem_login_code(store(), code)
    account = None
    if outcome == "ok":
        account = next((a for a in tokens().accounts if a.name == actor), None)
    if account is not None:
        _start_session(account, via="link")
        return redirect(url_for("dashboard.overview"), code=303)
    log.info(
        "dashboard: sign-in link refused (%s)",
        outcome if outcome != "ok" else "its account is no longer configured",
    )
    status, title, message = LINK_REFUSALS[outcome]
    return render_template("login_link.html", title=title, message=message), status


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> ResponseReturnValue:
    if request.method == "GET":  # a typed or bookmarked URL: ask, then POST with the token
        return render_template("logout.html")
    sid = _session_id()
    found = viewer()
    if sid is not None:
        web_sessions.revoke_session(store(), sid, "signed out")
    session.clear()
    g.pop("dashboard_viewer", None)
    if found is not None:
        log.info("dashboard sign-out: %s", found.name)
    flash("You are signed out.", "info")
    return redirect(url_for("dashboard.login"), code=303)
