"""The dashboard: server-rendered pages (Jinja, no build step) where a practice manager sees the
panels and confirms or overrides assignments. One Flask blueprint, `dashboard`, in modules by
page group: `signin` (sign-in, sessions, CSRF, the hooks every request passes), `pages` (the
pages that only read), `changes` (the forms), `moves` (proposed moves and their decisions),
`practice` (panel transitions, teams, reviews and readiness), `validation` (the validation
page), `render` (template helpers, error pages), `base` (what they share).

Sign-in takes one of the API's bearer tokens, posted from the form on `/login` (CSRF-protected
like every form; a `GET /login?token=...` shows the form and signs nobody in), or a single-use
link `/login/once/<code>` made by `fhirpanel.store.sessions.issue_login_link` (the demo prints
one). A sign-in is a row in the store (`dashboard_sessions`: account, a fingerprint of its
token, created, last seen, expiry, revoked); the cookie, signed with `app.secret_key`, carries
only the session id (and, before sign-in, the login form's CSRF nonce; flash messages pass
through it for one page). Each request looks the session up: signing out revokes it for every
copy of the cookie and every worker; an expired, idle or revoked session, or one whose token was
removed or changed in the settings, is refused. Read tokens see every page; admin tokens also
get the buttons, and every POST checks the scope and a CSRF token derived from the session id.
Pages only read the store; changes go through `fhirpanel.service.review` (the rules, shared with
the JSON API) and the store's audited methods. A confirmation holds at once; an override asks
for an incremental refresh (best effort: a busy lock leaves the patient queued for the next
one). A run the brake held (a change larger than `[safety]` allows) shows its figures in words
on every page's banner and on the runs page, where an admin accepts it after a confirmation
page that repeats the figures.
"""

from fhirpanel.api.dashboard import (
    changes,
    moves,
    pages,
    practice,
    render,
    signin,
    validation,
)
from fhirpanel.api.dashboard.base import RUN_STATUS, SESSION_KEY, bp

__all__ = [
    "RUN_STATUS",
    "SESSION_KEY",
    "bp",
    "changes",
    "moves",
    "pages",
    "practice",
    "render",
    "signin",
    "validation",
]
