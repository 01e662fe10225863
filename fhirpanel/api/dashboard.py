"""The dashboard: server-rendered pages (Jinja, no build step) where a practice manager sees the
panels and confirms or overrides assignments.

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
Pages only read the store; changes go through the store's audited methods. A confirmation holds
at once; an override asks for an incremental refresh (best effort: a busy lock leaves the
patient queued for the next one). A run the brake held (a change larger than `[safety]` allows)
shows its figures in words on every page's banner and on the runs page, where an admin accepts
it after a confirmation page that repeats the figures.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
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
from werkzeug.exceptions import HTTPException

from fhirpanel.api import dashboard_queries as dq
from fhirpanel.api import held
from fhirpanel.api.auth import Account, TokenTable
from fhirpanel.config import Settings
from fhirpanel.errors import FhirpanelError
from fhirpanel.fhir.build import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value
from fhirpanel.mappings import load_mapping_ref
from fhirpanel.store import Store, queries
from fhirpanel.store import sessions as web_sessions
from fhirpanel.store.repository import CONFIRMERS, REQUESTERS, AssignmentChanged, NotHeld

log = logging.getLogger(__name__)

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/assets")

SESSION_KEY = "fhirpanel_dashboard"  # the cookie's session id
CSRF_KEY = "fhirpanel_csrf"  # the login form's CSRF nonce, before sign-in
TRIGGER = "dashboard"  # recorded on runs the dashboard starts
MAX_TEXT = 500  # reason and note fields
PUBLIC_ENDPOINTS = frozenset({"dashboard.login", "dashboard.login_once", "dashboard.static"})
LOGIN_ENDPOINTS = frozenset({"dashboard.login", "dashboard.login_once"})
# Scripts only from our own files; inline style attributes size the small bars.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")

RULES = {
    "single-provider": ("Only clinician seen",
                        "Every qualifying visit in the look-back window was with this clinician "
                        "(Four Cut, cut 1)."),
    "plurality": ("Seen most often",
                  "Most qualifying visits in the look-back window were with this clinician "
                  "(Four Cut, cut 2: plurality)."),
    "sentinel-exam": ("Did the last check-up",
                      "Visits were tied; this clinician did the most recent physical or wellness "
                      "exam (Four Cut, cut 3: sentinel exam)."),
    "last-visit": ("Seen last",
                   "Visits were tied and no check-up decided; this clinician saw the patient "
                   "last (Four Cut, cut 4)."),
    "declared-pcp": ("Patient's named clinician",
                     "The patient's record names this clinician as their primary-care "
                     "clinician."),
    "manual": ("Override",
               "Assigned by hand at the request of the clinician, the patient, the family or "
               "staff; it holds until removed."),
}
RUN_STATUS = {  # every status in api.openapi.RUN_STATUSES: (label, badge class)
    "queued": ("waiting for the worker", "info"), "running": ("running", "info"),
    "succeeded": ("succeeded", "ok"), "partial": ("partly written", "warn"),
    "failed": ("failed", "bad"), "skipped": ("skipped (busy)", "warn"),
    "abandoned": ("abandoned", "bad"), "held": ("held: needs review", "bad"),
    "accepted": ("held, then accepted", "info"),
    "crashed": ("crashed (process stopped)", "bad"),
}
MAX_RUN_ID = 2**31 - 1
SORT_CHOICES = (("patient", "Patient id"), ("-tier", "Highest risk first"),
                ("tier", "Lowest risk first"), ("last_visit", "Longest since last visit"),
                ("-last_visit", "Most recent visit"), ("rule", "Rule"))
COLUMNS = (("patient", "Patient"), ("tier", "Tier"), ("rule", "Rule"),
           ("last_visit", "Last visit"), ("confirmation", "Confirmation"))
_OUTREACH = re.compile(r"^(not-seen|no-sentinel)-(\d+)m$")


@dataclass(frozen=True)
class Viewer:
    name: str
    admin: bool


# ---------------------------------------------------------------- what create_app provides


def _settings() -> Settings:
    return current_app.extensions["fhirpanel"].settings  # type: ignore[no-any-return]


def _store() -> Store:
    return current_app.extensions["fhirpanel"].store  # type: ignore[no-any-return]


def _trigger() -> Callable[[str, str], int | None]:
    return current_app.extensions["fhirpanel"].trigger  # type: ignore[no-any-return]


def _tokens() -> TokenTable:
    """The app's token table (the one the JSON API checks bearer tokens against)."""
    return current_app.extensions["fhirpanel"].tokens  # type: ignore[no-any-return]


# ---------------------------------------------------------------- sign-in and CSRF


def _fingerprint(token: str) -> str:
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def _viewer() -> Viewer | None:
    """Who the session belongs to, if it is in force and its token still configured (once per
    request)."""
    if "dashboard_viewer" not in g:
        g.dashboard_viewer = _session_viewer()
    return g.dashboard_viewer  # type: ignore[no-any-return]


def _session_id() -> str | None:
    sid = session.get(SESSION_KEY)
    return sid if isinstance(sid, str) else None


def _session_viewer() -> Viewer | None:
    sid = _session_id()
    if sid is None:
        return None
    api = _settings().api
    info = web_sessions.active_session(_store(), sid,
                                       idle_seconds=api.session_idle_minutes * 60)
    if info is None:
        return None
    found = None
    for account in _tokens().accounts:  # no early exit, as for bearer tokens
        same = hmac.compare_digest(_fingerprint(account.token), info.token_fp)
        if same and account.name == info.actor and found is None:
            found = Viewer(account.name, account.admin)
    return found


def _start_session(account: Account, via: str) -> None:
    """A new session in the store for this account; the browser's previous one is revoked
    (no session fixation: the id is new, the old cookie content is dropped)."""
    api = _settings().api
    sid = web_sessions.create_session(
        _store(), actor=account.name, token_fp=_fingerprint(account.token), via=via,
        lifetime_seconds=api.session_hours * 3600, replaces=_session_id())
    session.clear()
    session[SESSION_KEY] = sid
    g.pop("dashboard_viewer", None)
    log.info("dashboard sign-in: %s (%s) with %s", account.name,
             "admin" if account.admin else "read", "a sign-in link" if via == "link"
             else "a token")


def _csrf_token() -> str:
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
    kept = _csrf_token() if _session_id() is not None else session.get(CSRF_KEY)
    if not isinstance(kept, str) or not hmac.compare_digest(sent.encode(), kept.encode()):
        abort(400, description="This form has expired. Reload the page and try again.")


def _safe_next(target: str | None, default: str) -> str:
    """Only paths on this site (no scheme, no host, no `//`)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") \
            or "\\" in target:
        return default
    return target


@bp.before_request
def _require_sign_in() -> ResponseReturnValue | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        if request.method == "POST":
            _check_csrf()
        return None
    viewer = _viewer()
    if viewer is None:
        session.pop(SESSION_KEY, None)
        if request.method == "GET":
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method == "POST":
        _check_csrf()
        if request.endpoint != "dashboard.logout" and not viewer.admin:
            abort(403, description="Your token is view only. Ask an administrator for an admin "
                                   "token to confirm or change assignments or start refreshes.")
    return None


@bp.after_request
def _page_headers(response: Response) -> Response:
    if request.endpoint != "dashboard.static":
        # Pages carry patient ids and a CSRF token: never cached, never framed.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", CSP)
        # A sign-in address (an old `?token=` bookmark, a link's code) is never sent on.
        response.headers.setdefault("Referrer-Policy", "no-referrer"
                                    if request.endpoint in LOGIN_ENDPOINTS else "same-origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """GET: the form. POST (with the form's CSRF token): sign in with a token. A token in the
    query string signs nobody in: a link from another site must not choose who the browser is
    signed in as, and a token does not belong in the address bar or the history."""
    next_url = _safe_next(request.values.get("next"), url_for("dashboard.overview"))
    if request.method == "GET":
        if _viewer() is not None:
            return redirect(next_url)
        note = None
        if "token" in request.args:
            log.info("dashboard: a sign-in address carrying a token was ignored")
            note = ("Sign-in addresses that carry a token no longer sign you in. Paste the "
                    "token below instead, or ask for a new sign-in link.")
        session.pop(SESSION_KEY, None)  # a revoked or expired session: start afresh
        return render_template("login.html", next_url=next_url, error=None, note=note)
    token = request.form.get("token", "").strip()
    account = _tokens().lookup(token) if token else None
    if account is None:
        log.info("dashboard sign-in refused (%s)", "unknown token" if token else "no token")
        error = "That token is not recognised." if token else "Paste your access token."
        return render_template("login.html", next_url=next_url, error=error, note=None), 401
    _start_session(account, via="token")
    return redirect(next_url, code=303)


@bp.get("/login/once/<code>")
def login_once(code: str) -> ResponseReturnValue:
    """A single-use sign-in link (`issue_login_link`): signs in and redirects to the overview;
    a second use, an expired or unknown code is refused with a page that says so."""
    if request.method == "HEAD":  # a link checker probing the address does not use it up
        return Response(status=200)
    outcome, actor = web_sessions.redeem_login_code(_store(), code)
    account = None
    if outcome == "ok":
        account = next((a for a in _tokens().accounts if a.name == actor), None)
    if account is not None:
        _start_session(account, via="link")
        return redirect(url_for("dashboard.overview"), code=303)
    log.info("dashboard: sign-in link refused (%s)", outcome if outcome != "ok"
             else "its account is no longer configured")
    messages = {
        "used": (410, "This sign-in link has been used",
                 "Each sign-in link works once, and this one has already signed someone in. "
                 "Ask for a new link, or sign in with your access token."),
        "expired": (410, "This sign-in link has expired",
                    "Sign-in links work for a short time only. Ask for a new link, or sign in "
                    "with your access token."),
        "unknown": (404, "This sign-in link is not valid",
                    "The link may be incomplete: check that it was copied whole, or sign in "
                    "with your access token."),
        "ok": (403, "This sign-in link's account is gone",
               "The account this link was made for is no longer configured. Sign in with "
               "your access token."),
    }
    status, title, message = messages[outcome]
    return render_template("login_link.html", title=title, message=message), status


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> ResponseReturnValue:
    if request.method == "GET":  # a typed or bookmarked URL: ask, then POST with the token
        return render_template("logout.html")
    sid = _session_id()
    viewer = _viewer()
    if sid is not None:
        web_sessions.revoke_session(_store(), sid, "signed out")
    session.clear()
    g.pop("dashboard_viewer", None)
    if viewer is not None:
        log.info("dashboard sign-out: %s", viewer.name)
    flash("You are signed out.", "info")
    return redirect(url_for("dashboard.login"), code=303)


# ---------------------------------------------------------------- template helpers


@lru_cache(maxsize=8)
def _tier_labels(ref: str, directory: Path | None) -> dict[int, str]:
    try:
        raw = load_mapping_ref(ref, directory).get("tiers", {})
        return {int(k): str(v) for k, v in raw.items()}
    except (FhirpanelError, ValueError, AttributeError):
        return {}


def _labels() -> dict[int, str]:
    settings = _settings()
    return _tier_labels(settings.risk.tiers, settings.mappings_path) or {
        1: "Low risk", 2: "Rising risk", 3: "High risk", 4: "Complex"}


def bare(ref: str | None) -> str:
    return (ref or "").split("/", 1)[-1]


def _ref(rtype: str, raw: str) -> str:
    """A path parameter as `Type/id`: both `pat-1` and `Patient/pat-1` are accepted."""
    value = raw.strip().strip("/")
    if value.startswith(rtype + "/"):
        value = value[len(rtype) + 1:]
    if not value or "/" in value or len(value) > 64:
        abort(404)
    return f"{rtype}/{value}"


def held_figures(run: Mapping[str, Any]) -> list[held.Figure]:
    return held.figures(run, _settings().safety.min_count)


def when(iso: str | None) -> str:
    """`2026-11-23T11:58:30.123Z` → `2026-11-23 11:58 UTC`."""
    if not iso:
        return "–"
    day, _, clock = iso.partition("T")
    return f"{day} {clock[:5]} UTC" if clock else day


def outreach_text(reason: str) -> str:
    m = _OUTREACH.match(reason)
    if not m:
        return reason
    if m.group(1) == "not-seen":
        return f"Not seen in {m.group(2)} months"
    return f"No check-up in {m.group(2)} months"


def step_text(step: str) -> str:
    m = re.match(r"^four-cut-(\d+)m$", step or "")
    if m:
        return f"Four Cut method, visits in the last {m.group(1)} months"
    return step


def run_summary(run: Mapping[str, Any]) -> str:
    counts = run.get("counts") or {}
    parts = []
    if "assigned" in counts:
        parts.append(f"{counts['assigned']} assigned, {counts.get('unassigned', 0)} unassigned")
    if "patients" in counts and run.get("kind") == "incremental":
        parts.append(f"{counts['patients']} patient(s) redone")
    if "assignments_changed" in counts:
        parts.append(f"{counts['assignments_changed']} changed")
    if "written" in counts:
        parts.append(f"{counts['written']} written to the record")
    if counts.get("writeback_failed"):
        parts.append(f"{counts['writeback_failed']} writes failed (retried next time)")
    return "; ".join(parts) or "–"


@bp.context_processor
def _helpers() -> dict[str, Any]:
    labels = _labels()
    names: dict[str, str] = {}

    def doc(ref: str | None) -> str:
        if not ref:
            return "–"
        if not names:
            names.update({c["practitioner"]: c["name"] or bare(c["practitioner"])
                          for c in _store().clinicians()})
        return names.get(ref) or bare(ref)

    return {
        "me": _viewer(), "csrf_token": _csrf_token, "bare": bare, "when": when, "doc": doc,
        "tier_label": lambda t: labels.get(int(t), f"Tier {t}") if t else "",
        "rule_name": lambda r: RULES.get(r, (r or "–", ""))[0],
        "rule_text": lambda r: RULES.get(r, ("", r or ""))[1],
        "step_text": step_text, "outreach_text": outreach_text, "run_summary": run_summary,
        "held_figures": held_figures,
        "status_text": lambda s: RUN_STATUS.get(s, (s, ""))[0],
        "status_class": lambda s: RUN_STATUS.get(s, (s, "info"))[1],
        "status_word": lambda s: {"assigned": "Assigned", "unassigned": "Unassigned",
                                  "excluded": "Excluded (not an active patient)"}.get(s, s),
    }


def _tiers() -> list[dict[str, Any]]:
    return [{"tier": t, "label": label, "short": label.split(":", 1)[0]}
            for t, label in sorted(_labels().items())]


def _with_figures(c: dict[str, Any]) -> dict[str, Any]:
    capacity = float(c.get("capacity") or 0)
    c = dict(c, used_pct=round(100 * c["risk_adjusted_size"] / capacity, 1) if capacity else 0.0)
    counts = {int(k): int(v) for k, v in (c.get("tiers") or {}).items()}
    total = sum(counts.values())
    c["tier_mix"] = [{"tier": t, "n": counts.get(t, 0),
                      "pct": round(100 * counts.get(t, 0) / total, 1) if total else 0}
                     for t in sorted(set(_labels()) | set(counts))]
    return c


def _render(template: str, **context: Any) -> str:
    context.setdefault("running", dq.running_run(_store()))
    context.setdefault("held_runs", held.awaiting(_store()))
    context.setdefault("here_url", request.full_path.rstrip("?"))
    return render_template(template, **context)


def _int_arg(name: str, default: int, low: int = 1, high: int = 1_000_000) -> int:
    raw = request.args.get(name, "")
    try:
        return min(max(int(raw), low), high) if raw else default
    except ValueError:
        return default


# ---------------------------------------------------------------- pages


@bp.get("/")
def overview() -> ResponseReturnValue:
    store = _store()
    clinicians = [_with_figures(c) for c in store.clinicians()]
    clinicians = [c for c in clinicians if c["eligible"] or c["size"]]
    for c in clinicians:
        c["link"] = url_for("dashboard.panel", practitioner=bare(c["practitioner"]))
    chart = {
        "labels": [c["name"] or bare(c["practitioner"]) for c in clinicians],
        "size": [c["size"] for c in clinicians],
        "risk_adjusted": [c["risk_adjusted_size"] for c in clinicians],
        "capacity": [c["capacity"] for c in clinicians],
        "used_pct": [c["used_pct"] for c in clinicians],
        "unconfirmed": [c["unconfirmed"] for c in clinicians],
        "links": [c["link"] for c in clinicians],
    }
    return _render("overview.html", clinicians=clinicians, chart=chart,
                   counts=dict(queries.practice_totals(store),
                               outreach=dq.outreach_count(store)),
                   last_run=store.last_run(),
                   as_of=store.context("as_of"), tiers=_tiers())


@bp.get("/panels/<path:practitioner>")
def panel(practitioner: str) -> ResponseReturnValue:
    store, settings = _store(), _settings()
    ref = _ref("Practitioner", practitioner)
    clinician = store.clinician(ref)
    if clinician is None:
        abort(404, description=f"No panel for {bare(ref)}: the clinician is not in the last "
                               "refresh.")
    tier_raw = request.args.get("tier", "")
    tier = int(tier_raw) if re.fullmatch(r"[0-9]{1,2}", tier_raw) else None
    sort = request.args.get("sort", "patient")
    if sort not in queries.SORT_VALUES:
        sort = "patient"
    filters = {"tier": tier, "unconfirmed": request.args.get("unconfirmed") == "1",
               "overdue": request.args.get("overdue") == "1", "sort": sort}
    filters["active"] = bool(tier or filters["unconfirmed"] or filters["overdue"])
    page_size = settings.api.page_size
    result = queries.panel_patients(
        store, ref, tier=tier, unconfirmed=bool(filters["unconfirmed"]),
        overdue=bool(filters["overdue"]), sort=sort, page=_int_arg("page", 1),
        page_size=page_size, clamp=True)
    link_args: dict[str, Any] = {"practitioner": bare(ref), "sort": sort}
    if tier:
        link_args["tier"] = tier
    if filters["unconfirmed"]:
        link_args["unconfirmed"] = 1
    if filters["overdue"]:
        link_args["overdue"] = 1
    eligible = [c for c in store.clinicians() if c["eligible"]]
    return _render("panel.html", clinician=_with_figures(clinician), rows=result.rows,
                   total=result.total, page=result.page, pages=result.pages,
                   page_size=page_size, filters=filters, sorts=SORT_CHOICES, columns=COLUMNS,
                   link_args=link_args, tiers=_tiers(), eligible=eligible)


@bp.get("/patients/<path:patient>")
def patient(patient: str) -> ResponseReturnValue:
    store = _store()
    ref = _ref("Patient", patient)
    state = store.patient_state(ref)
    if state is None:
        abort(404, description=f"No patient {bare(ref)} in the last refresh.")
    detail = state.get("detail") or {}
    visits = sorted(((p, int(n)) for p, n in (detail.get("visits") or {}).items()),
                    key=lambda item: (-item[1], item[0]))
    written = [("CareTeam", store.ledger_entry("CareTeam",
                                               identifier_value(CARE_TEAM_KIND, ref))),
               ("CarePlan", store.ledger_entry("CarePlan",
                                               identifier_value(CARE_PLAN_KIND, ref)))]
    pending = None
    if queries.is_pending(store, ref):
        pending = "applied at the next refresh"
    return _render(
        "patient.html", p=state, detail=detail, risk=detail.get("risk") or {},
        visits=[{"practitioner": p, "count": n, "chosen": p == state["practitioner"]}
                for p, n in visits],
        evidence=list(detail.get("evidence") or []), written=written,
        history=store.history(ref), overrides=store.overrides(ref),
        confirmations=store.confirmations(ref), active_override=store.override_for(ref),
        eligible=[c for c in store.clinicians() if c["eligible"]], pending=pending)


@bp.get("/patients/<patient_id>/override")
def override_page(patient_id: str) -> ResponseReturnValue:
    """The override form on its own page (a panel lists many patients: one form each would
    repeat the clinician list on every row)."""
    store = _store()
    ref = _ref("Patient", patient_id)
    state = store.patient_state(ref)
    if state is None:
        abort(404, description=f"No patient {bare(ref)} in the last refresh.")
    viewer = _viewer()
    if viewer is None or not viewer.admin:
        abort(403, description="Your token is view only. Ask an administrator for an admin "
                               "token to change assignments.")
    back = _safe_next(request.args.get("next"), url_for("dashboard.patient", patient=bare(ref)))
    return _render("override.html", p=state, back_url=back,
                   eligible=[c for c in store.clinicians() if c["eligible"]])


@bp.get("/find")
def find_patient() -> ResponseReturnValue:
    raw = request.args.get("patient", "").strip()
    if not raw:
        return redirect(url_for("dashboard.overview"))
    ref = f"Patient/{bare(raw)}"
    if "/" in bare(raw) or _store().patient_state(ref) is None:
        flash(f"No patient with id {raw!r} in the last refresh.", "error")
        return redirect(_safe_next(request.referrer and urlsplit(request.referrer).path,
                                   url_for("dashboard.overview")))
    return redirect(url_for("dashboard.patient", patient=bare(ref)))


@bp.get("/unassigned")
def unassigned() -> ResponseReturnValue:
    store = _store()
    result = queries.unassigned_patients(store, page=_int_arg("page", 1),
                                         page_size=_settings().api.page_size, clamp=True)
    pending = dq.pending_among(store, [r["patient"] for r in result.rows])
    rows = [dict(r, pending=r["patient"] in pending) for r in result.rows]
    return _render("unassigned.html", rows=rows, total=result.total, page=result.page,
                   pages=result.pages, link_args={})


@bp.get("/outreach")
def outreach() -> ResponseReturnValue:
    store, settings = _store(), _settings()
    raw = request.args.get("practitioner", "").strip()
    practitioner = _ref("Practitioner", raw) if raw else None
    result = queries.outreach_patients(store, practitioner=practitioner,
                                       page=_int_arg("page", 1),
                                       page_size=settings.api.page_size, clamp=True)
    link_args = {"practitioner": bare(practitioner)} if practitioner else {}
    return _render("outreach.html", rows=result.rows, total=result.total, page=result.page,
                   pages=result.pages, link_args=link_args,
                   filters={"practitioner": practitioner},
                   clinicians=[c for c in store.clinicians() if c["size"]],
                   not_seen_months=settings.attribution.outreach_not_seen_months,
                   sentinel_months=settings.attribution.outreach_sentinel_months)


@bp.get("/runs")
def runs() -> ResponseReturnValue:
    """Every run, newest first; a held run with its figures in words and, for admins, the
    button that leads to accepting it."""
    store = _store()
    per_page = 25
    total = store.count_runs()
    pages = max(1, -(-total // per_page))
    page = min(_int_arg("page", 1), pages)
    rows = store.runs(limit=per_page, offset=(page - 1) * per_page)
    return _render("runs.html", rows=rows, total=total, page=page, pages=pages,
                   superseded=held.superseded(store, [r for r in rows
                                                      if r["status"] == "held"]))


# ---------------------------------------------------------------- changes (admin tokens)


def _back(default: str) -> ResponseReturnValue:
    return redirect(_safe_next(request.form.get("next"), default), code=303)


def _text(name: str) -> str:
    return " ".join(request.form.get(name, "").split())[:MAX_TEXT]


def _ask_refresh(what: str) -> None:
    """Start an incremental refresh so the change shows soon; a busy lock is fine (the
    patient is queued for the next one)."""
    try:
        run_id = _trigger()("incremental", TRIGGER)
    except Exception:  # the change is stored; the worker's next pass applies it
        log.warning("could not start a refresh after a dashboard change", exc_info=True)
        run_id = None
    if run_id is None:
        flash(f"{what} It will be applied by the next refresh.", "success")
    else:
        flash(f"{what} A refresh (run #{run_id}) has started to apply it.", "success")


def _patient_change(patient_id: str) -> tuple[Store, Any, str, str, dict[str, Any]]:
    """What a form that changes a patient needs: the store, who is signed in, the patient's
    reference, where to go back to, and its stored state (404 when unknown)."""
    store, viewer = _store(), _viewer()
    assert viewer is not None  # noqa: S101 - _require_sign_in ran
    ref = _ref("Patient", patient_id)
    default = url_for("dashboard.patient", patient=bare(ref))
    state = store.patient_state(ref)
    if state is None:
        abort(404, description=f"No patient {bare(ref)} in the last refresh.")
    return store, viewer, ref, default, state


@bp.post("/patients/<patient_id>/confirm")
def confirm(patient_id: str) -> ResponseReturnValue:
    store, viewer, ref, default, state = _patient_change(patient_id)
    confirmed_by = request.form.get("confirmed_by", "")
    if confirmed_by not in CONFIRMERS:
        flash("Choose who confirmed: the clinician or the patient.", "error")
        return _back(default)
    if state["status"] != "assigned" or not state["practitioner"]:
        flash(f"Patient {bare(ref)} has no clinician to confirm yet.", "error")
        return _back(default)
    practitioner = state["practitioner"]
    shown = request.form.get("practitioner", "").strip()
    if shown and shown != practitioner:
        flash(f"Patient {bare(ref)} was moved to {practitioner_name(practitioner)} by a refresh "
              "since this page was loaded: check the new assignment, then confirm.", "error")
        return _back(default)
    try:
        store.confirm(ref, practitioner, confirmed_by=confirmed_by, actor=viewer.name,
                      note=_text("note"))
    except AssignmentChanged:
        flash(f"Patient {bare(ref)}'s assignment changed a moment ago: reload and confirm "
              "again.", "error")
        return _back(default)
    log.info("dashboard: %s confirmed %s with the %s", viewer.name, ref, confirmed_by)
    who = "the clinician" if confirmed_by == "clinician" else "the patient"
    flash(f"Patient {bare(ref)}: assignment to {practitioner_name(practitioner)} confirmed "
          f"with {who}.", "success")
    return _back(default)


@bp.post("/patients/<patient_id>/override")
def override(patient_id: str) -> ResponseReturnValue:
    store, viewer, ref, default, state = _patient_change(patient_id)
    raw = request.form.get("practitioner", "").strip()
    practitioner = f"Practitioner/{bare(raw)}" if raw else ""
    clinician = store.clinician(practitioner) if practitioner else None
    requested_by = request.form.get("requested_by", "")
    reason = _text("reason")
    problem = None
    if clinician is None:
        problem = "Choose the clinician the patient should go to."
    elif not clinician["eligible"]:
        problem = (f"{clinician['name'] or bare(practitioner)} is not a primary-care clinician "
                   "here: choose another.")
    elif requested_by not in REQUESTERS:
        problem = "Say who asked for the change: the clinician, the patient or the family."
    elif not reason:
        problem = "Give a short reason (it goes into the audit log)."
    elif state["status"] == "excluded":
        problem = f"Patient {bare(ref)} is not an active patient: nothing to assign."
    if problem:
        flash(problem, "error")
        return _back(default)
    store.add_override(ref, practitioner, reason=reason, requested_by=requested_by,
                       actor=viewer.name)
    log.info("dashboard: %s overrode %s to %s", viewer.name, ref, practitioner)
    _ask_refresh(f"Patient {bare(ref)} will move to {practitioner_name(practitioner)}.")
    return _back(default)


@bp.post("/patients/<patient_id>/override/remove")
def remove_override(patient_id: str) -> ResponseReturnValue:
    store, viewer = _store(), _viewer()
    assert viewer is not None  # noqa: S101 - _require_sign_in ran
    ref = _ref("Patient", patient_id)
    default = url_for("dashboard.patient", patient=bare(ref))
    if store.patient_state(ref) is None:
        abort(404, description=f"No patient {bare(ref)} in the last refresh.")
    if not store.remove_override(ref, viewer.name):
        flash(f"Patient {bare(ref)} has no override to remove.", "error")
        return _back(default)
    log.info("dashboard: %s removed the override of %s", viewer.name, ref)
    _ask_refresh(f"Override of patient {bare(ref)} removed: the usual rules decide again.")
    return _back(default)


@bp.post("/runs/start")
def start_run() -> ResponseReturnValue:
    viewer = _viewer()
    assert viewer is not None  # noqa: S101 - _require_sign_in ran
    kind = request.form.get("kind", "")
    if kind not in ("incremental", "full"):
        flash("Choose an incremental or a full refresh.", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    try:
        run_id = _trigger()(kind, TRIGGER)
    except FhirpanelError as exc:
        flash(f"The refresh could not start: {exc}", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    if run_id is None:
        flash("A refresh is already running. Try again when it has finished.", "error")
    else:
        log.info("dashboard: %s started %s refresh %s", viewer.name, kind, run_id)
        flash(f"{kind.capitalize()} refresh started (run #{run_id}). Reload this page to "
              "follow it.", "success")
    return redirect(url_for("dashboard.runs"), code=303)


@bp.route("/runs/<int:run_id>/accept", methods=["GET", "POST"])
def accept_run(run_id: int) -> ResponseReturnValue:
    """Accept a held run in two steps: the runs page's button (a POST) or this address (a GET)
    shows the figures again with a confirmation form; that form (POST with `confirm=yes`)
    accepts. Admins only, CSRF-checked like every POST."""
    store, viewer = _store(), _viewer()
    assert viewer is not None  # noqa: S101 - _require_sign_in ran
    if not viewer.admin:
        abort(403, description="Your token is view only. Ask an administrator to review and "
                               "accept a held run.")
    run = store.run(run_id) if run_id <= MAX_RUN_ID else None
    if run is None:
        abort(404, description=f"No run #{run_id}.")
    if run["status"] != "held":
        flash(f"Nothing to accept: {held.not_held_reason(run)}.", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    later = held.superseded(store, [run]).get(run_id)
    if later is not None:
        flash(f"Nothing to accept: {held.superseded_reason(run, later)}.", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return _render("accept.html", run=run, figures=held_figures(run))
    try:
        result = held.accept(_settings(), store, run_id, viewer.name)
    except held.Superseded as exc:
        flash(f"Nothing to accept: {exc}.", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    except NotHeld:
        now = store.run(run_id)
        flash(f"Nothing to accept: {held.not_held_reason(now) if now else 'no such run'}.",
              "error")
        return redirect(url_for("dashboard.runs"), code=303)
    log.info("dashboard: %s accepted held run %s (next run %s)", viewer.name, run_id,
             result.next_run)
    flash(f"Run #{run_id} accepted: {result.detail}.", "success")
    return redirect(url_for("dashboard.runs"), code=303)


def practitioner_name(ref: str) -> str:
    row = _store().clinician(ref)
    return (row or {}).get("name") or bare(ref)


# ---------------------------------------------------------------- errors as pages


def _error_page(exc: HTTPException) -> ResponseReturnValue:
    titles = {400: "That did not work", 401: "Please sign in", 403: "View only",
              404: "Not found", 405: "Not here", 413: "Too much at once"}
    code = exc.code or 500
    return render_template("error.html", title=titles.get(code, exc.name),
                           message=exc.description or exc.name), code


for _code in (400, 401, 403, 404, 405, 413):
    bp.register_error_handler(_code, _error_page)
