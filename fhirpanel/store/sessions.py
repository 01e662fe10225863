"""Dashboard sessions and single-use sign-in links, kept in the state store (migration 0004).

The browser's cookie carries only a random session id; the store keeps its SHA-256 with the
account's name, a fingerprint of the token it was made with, when it began, when it was last
used, when it expires and whether it was revoked. Every gunicorn worker reads the same rows, so
signing out in one ends the session for all of them and for every copy of the cookie.

A sign-in link (`issue_login_link`, for the demo) is `/login/once/<code>`: the code is stored
hashed, expires, and is used at most once (an atomic compare-and-set on `used_at`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, update

from fhirpanel.store.engine import StoreEngine
from fhirpanel.store.models import DashboardSession, LoginCode

LOGIN_LINK_PREFIX = "/login/once/"
TOKEN_BYTES = 32  # session ids and sign-in codes: 256 random bits, 43 URL-safe characters
# What a session id or a sign-in code looks like (anything else is not looked up).
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,128}")
TOUCH_EVERY_SECONDS = 60  # `last_seen_at` is written at most this often per session
KEEP_AFTER_EXPIRY = timedelta(days=7)  # expired rows are deleted this long after
MAX_LINK_TTL_SECONDS = 7 * 24 * 3600

Redeemed = Literal["ok", "unknown", "used", "expired"]


@dataclass(frozen=True)
class SessionInfo:
    actor: str
    token_fp: str
    via: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def digest(secret: str) -> str:
    """What the store keeps of a session id or a sign-in code."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def create_session(
    store: StoreEngine,
    *,
    actor: str,
    token_fp: str,
    via: str,
    lifetime_seconds: float,
    replaces: str | None = None,
    now: datetime | None = None,
) -> str:
    """Start a session and return its id (for the cookie; only its hash is stored). A session
    the browser held before (`replaces`) is revoked in the same transaction."""
    now = now or _now()
    session_id = secrets.token_urlsafe(TOKEN_BYTES)
    with store.session() as s:
        if replaces:
            s.execute(
                update(DashboardSession)
                .where(
                    DashboardSession.id == digest(replaces),
                    DashboardSession.revoked_at.is_(None),
                )
                .values(revoked_at=now, revoked_reason="signed in again")
            )
        s.add(
            DashboardSession(
                id=digest(session_id),
                actor=actor,
                token_fp=token_fp,
                via=via,
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(seconds=lifetime_seconds),
            )
        )
        # Housekeeping, cheap on the expiry indexes: rows long past their expiry go.
        cutoff = now - KEEP_AFTER_EXPIRY
        s.execute(delete(DashboardSession).where(DashboardSession.expires_at < cutoff))
        s.execute(delete(LoginCode).where(LoginCode.expires_at < cutoff))
    return session_id


def active_session(
    store: StoreEngine, session_id: str, *, idle_seconds: float, now: datetime | None = None
) -> SessionInfo | None:
    """The session behind a cookie's id, or None when it is unknown, revoked, expired or idle
    too long. Marks it used (at most once a minute, so page views rarely write)."""
    if not SECRET_PATTERN.fullmatch(session_id):
        return None
    now = now or _now()
    key = digest(session_id)
    with store.session() as s:
        row = s.get(DashboardSession, key)
        if row is None or row.revoked_at is not None:
            return None
        expires, seen = _aware(row.expires_at), _aware(row.last_seen_at)
        if now >= expires or (now - seen).total_seconds() >= idle_seconds:
            return None
        if (now - seen).total_seconds() >= TOUCH_EVERY_SECONDS:
            s.execute(
                update(DashboardSession)
                .where(
                    DashboardSession.id == key,
                    DashboardSession.revoked_at.is_(None),
                )
                .values(last_seen_at=now)
            )
            seen = now
        return SessionInfo(
            actor=row.actor,
            token_fp=row.token_fp,
            via=row.via,
            created_at=_aware(row.created_at),
            last_seen_at=seen,
            expires_at=expires,
        )


def revoke_session(
    store: StoreEngine, session_id: str, reason: str = "signed out", now: datetime | None = None
) -> bool:
    """End a session for every copy of its cookie. True when it was still in force."""
    if not SECRET_PATTERN.fullmatch(session_id):
        return False
    with store.session() as s:
        result = s.execute(
            update(DashboardSession)
            .where(
                DashboardSession.id == digest(session_id),
                DashboardSession.revoked_at.is_(None),
            )
            .values(revoked_at=now or _now(), revoked_reason=reason[:32])
        )
        return bool(getattr(result, "rowcount", 0) == 1)


def issue_login_link(store: StoreEngine, actor: str, ttl_seconds: int = 600) -> str:
    """A single-use sign-in link for the account named `actor` (a name from `api.admin_tokens`
    or `api.read_tokens`), valid for `ttl_seconds`: the path `/login/once/<code>`, to be put
    after the dashboard's address. Following it signs the browser in as that account (while
    the account is still configured) and redirects to `/`; a second use, or a use after the
    expiry, is refused. Only the code's SHA-256 is stored."""
    if not actor or len(actor) > 128:
        raise ValueError("actor must be a token's name (1-128 characters)")
    if not 0 < ttl_seconds <= MAX_LINK_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_LINK_TTL_SECONDS}")
    code = secrets.token_urlsafe(TOKEN_BYTES)
    now = _now()
    with store.session() as s:
        s.add(
            LoginCode(
                code_hash=digest(code),
                actor=actor,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl_seconds),
            )
        )
    return LOGIN_LINK_PREFIX + code


def redeem_login_code(
    store: StoreEngine, code: str, now: datetime | None = None
) -> tuple[Redeemed, str | None]:
    """Use a sign-in code: ("ok", actor) the first time within its lifetime; ("used", None),
    ("expired", None) or ("unknown", None) otherwise. Two requests racing with the same code:
    one wins (a compare-and-set on `used_at`)."""
    if not SECRET_PATTERN.fullmatch(code):
        return "unknown", None
    now = now or _now()
    key = digest(code)
    with store.session() as s:
        result = s.execute(
            update(LoginCode)
            .where(
                LoginCode.code_hash == key,
                LoginCode.used_at.is_(None),
                LoginCode.expires_at > now,
            )
            .values(used_at=now)
        )
        row = s.get(LoginCode, key)
        if row is None:
            return "unknown", None
        if getattr(result, "rowcount", 0) == 1:
            return "ok", row.actor
        return ("used" if row.used_at is not None else "expired"), None
