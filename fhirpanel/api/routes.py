"""The JSON API under `/api`: panels, patients and their explanation, the unassigned and outreach
lists, overrides and confirmations, and runs. It only reads the store; changes go through the
store's audited methods (the token's name is the actor) and then ask for an incremental refresh,
best effort: a busy lock leaves the patient queued for the next one. A run the brake held (too
large a change at once) is let through with `POST /api/runs/{id}/accept`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, jsonify, request

from fhirpanel.api import held
from fhirpanel.api.params import (
    Member,
    bool_param,
    choice_param,
    int_param,
    json_body,
    path_reference,
    reference,
    reference_param,
)
from fhirpanel.api.problems import Problem, conflict, invalid, not_found
from fhirpanel.errors import FhirpanelError
from fhirpanel.fhir.build import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value
from fhirpanel.store import Store
from fhirpanel.store import queries as q
from fhirpanel.store.repository import CONFIRMERS, REQUESTERS, AssignmentChanged, NotHeld

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")

TRIGGER = "api"  # recorded on runs the API starts
AUDIT_LIMIT = 50  # audit entries in a patient's explanation
RUN_KINDS = ("full", "incremental")
MAX_TIER = 9
MAX_RUN_ID = 2**31 - 1  # larger path values are no run (and would overflow SQLite's INTEGER)

F = TypeVar("F", bound=Callable[..., Any])


def admin_only(view: F) -> F:
    """Mark a view as needing an admin token (the app's auth hook reads the mark)."""
    view.required_scope = "admin"  # type: ignore[attr-defined]
    return view


def _store() -> Store:
    return current_app.extensions["fhirpanel"].store  # type: ignore[no-any-return]


def _actor() -> str:
    return str(g.account.name)


# ---------------------------------------------------------------- paging


def _paging() -> tuple[int, int]:
    api = current_app.extensions["fhirpanel"].settings.api
    page = int_param("page", 1, low=1, high=1_000_000)
    size = int_param("page_size", api.page_size, low=1, high=api.max_page_size)
    assert page is not None and size is not None  # noqa: S101 - defaults given
    return page, size


def _link(page: int, page_size: int) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "page_size")]
    args += [("page", str(page)), ("page_size", str(page_size))]
    return f"{request.script_root}{request.path}?{urlencode(args)}"


def _paged(items: list[dict[str, Any]], total: int, page: int, page_size: int,
           **extra: Any) -> Response:
    pages = max(1, -(-total // page_size))
    body = {
        "items": items, "total": total, "page": page, "page_size": page_size, "pages": pages,
        "next": _link(page + 1, page_size) if page < pages else None,
        "prev": _link(min(page - 1, pages), page_size) if page > 1 else None,
        **extra,
    }
    return jsonify(body)


# ---------------------------------------------------------------- panels


@bp.get("/panels")
def panels() -> Response:
    """Every clinician's panel: size, risk-adjusted size, capacity, tier mix, unconfirmed."""
    store = _store()
    return jsonify(panels=[_panel(c) for c in store.clinicians()],
                   totals=q.practice_totals(store), as_of=store.context("as_of"))


def _panel(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in ("practitioner", "name", "eligible", "pediatric", "size",
                              "risk_adjusted_size", "hcc_adjusted_size", "capacity",
                              "open_capacity", "tiers", "unconfirmed")}


@bp.get("/panels/<path:practitioner>")
def panel(practitioner: str) -> Response:
    """One panel's patients, paged, sorted and filtered."""
    store = _store()
    ref = path_reference("Practitioner", practitioner)
    clinician = store.clinician(ref)
    if clinician is None:
        raise not_found(f"no panel for {ref}: the clinician is not in the last refresh")
    page, page_size = _paging()
    sort = choice_param("sort", q.SORT_VALUES, "patient") or "patient"
    tier = int_param("tier", None, low=0, high=MAX_TIER)
    unconfirmed, overdue = bool_param("unconfirmed"), bool_param("overdue")
    result = q.panel_patients(store, ref, tier=tier, unconfirmed=unconfirmed, overdue=overdue,
                              sort=sort, page=page, page_size=page_size, detail=True)
    return _paged([_panel_row(r) for r in result.rows], result.total, page, page_size,
                  panel=_panel(clinician), sort=sort,
                  filters={"tier": tier, "unconfirmed": unconfirmed, "overdue": overdue})


def _panel_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"patient": r["patient"], "tier": r["tier"], "charlson": r["charlson"],
            "hcc": r["hcc"], "ccm_eligible": bool(r["ccm_eligible"]),
            "drivers": r.get("drivers", {}), "rule": r["rule"], "step": r["step"],
            "last_visit": r["last_visit"], "confirmation": r["confirmation"],
            "override": bool(r["override"]), "outreach": r["outreach"]}


# ---------------------------------------------------------------- patients


@bp.get("/patients/<path:patient>")
def patient(patient: str) -> Response:
    """The full explanation of one patient's assignment and risk."""
    store = _store()
    ref, state = _stored_patient(patient)
    detail = state.pop("detail", None) or {}
    written = {}
    for rtype, kind in (("CareTeam", CARE_TEAM_KIND), ("CarePlan", CARE_PLAN_KIND)):
        entry = store.ledger_entry(rtype, identifier_value(kind, ref))
        written[rtype] = None if entry is None else {
            "reference": f"{rtype}/{entry['id']}", "version": entry["version"],
            "identifier": entry["identifier"], "updated_at": entry["updated_at"]}
    suggested = state.pop("suggested", None)
    suggestion_reason = state.pop("suggestion_reason", None)
    body = {
        **state,
        "suggested": ({"practitioner": suggested, "reason": suggestion_reason}
                      if suggested else None),
        "tie_broken": bool(detail.get("tie_broken", False)),
        "sentinel_exam": detail.get("sentinel_exam"),
        "practitioner_role": detail.get("practitioner_role"),
        "visits": {str(k): int(v) for k, v in (detail.get("visits") or {}).items()},
        "evidence": list(detail.get("evidence") or []),
        "risk": detail.get("risk"),
        "written": written,
        "history": store.history(ref),
        "active_override": store.override_for(ref),
        "overrides": store.overrides(ref),
        "confirmations": store.confirmations(ref),
        "pending": q.is_pending(store, ref),
        "audit": store.audit(limit=AUDIT_LIMIT, patient=ref),
    }
    return jsonify(body)


@bp.get("/unassigned")
def unassigned() -> Response:
    """Active patients no clinician qualified for, with a suggested clinician."""
    page, page_size = _paging()
    sort = choice_param("sort", q.SORT_VALUES, "-tier") or "-tier"
    tier = int_param("tier", None, low=0, high=MAX_TIER)
    result = q.unassigned_patients(_store(), tier=tier, sort=sort, page=page,
                                   page_size=page_size)
    items = [{"patient": r["patient"], "tier": r["tier"], "reason": r["reason"],
              "last_visit": r["last_visit"],
              "suggested": ({"practitioner": r["suggested"], "reason": r["suggestion_reason"]}
                            if r["suggested"] else None)} for r in result.rows]
    return _paged(items, result.total, page, page_size, sort=sort, filters={"tier": tier})


@bp.get("/outreach")
def outreach() -> Response:
    """Assigned patients to reach out to: not seen in N months, or a sentinel exam overdue."""
    settings = current_app.extensions["fhirpanel"].settings
    page, page_size = _paging()
    sort = choice_param("sort", q.SORT_VALUES, "-tier") or "-tier"
    practitioner = reference_param("practitioner", "Practitioner")
    reason = choice_param("reason", q.OUTREACH_KINDS, None)
    result = q.outreach_patients(_store(), practitioner=practitioner, reason=reason, sort=sort,
                                 page=page, page_size=page_size)
    items = [{"patient": r["patient"], "practitioner": r["practitioner"], "tier": r["tier"],
              "last_visit": r["last_visit"], "outreach": r["outreach"],
              "confirmation": r["confirmation"]} for r in result.rows]
    return _paged(items, result.total, page, page_size, sort=sort,
                  filters={"practitioner": practitioner, "reason": reason},
                  thresholds={
                      "not_seen_months": settings.attribution.outreach_not_seen_months,
                      "sentinel_months": settings.attribution.outreach_sentinel_months})


# ---------------------------------------------------------------- changes (admin)


def _ask_refresh() -> dict[str, Any]:
    """Start an incremental refresh so a change shows soon. Best effort: when the lock is busy
    or the refresh cannot start, the patient stays queued for the next one."""
    try:
        run_id = current_app.extensions["fhirpanel"].trigger("incremental", TRIGGER)
    except Exception as exc:  # the change is stored either way
        log.warning("could not start a refresh after a change: %s", type(exc).__name__)
        # Our own errors say what to fix (no source configured, say); others stay in the log.
        detail = (str(exc) if isinstance(exc, FhirpanelError)
                  else "the refresh could not start; the next one applies the change")
        return {"run_id": None, "started": False, "detail": detail}
    if run_id is None:
        return {"run_id": None, "started": False,
                "detail": "a refresh is running; the next one applies the change"}
    return {"run_id": run_id, "started": True, "detail": "a refresh has started"}


def _stored_patient(raw: str) -> tuple[str, dict[str, Any]]:
    store = _store()
    ref = path_reference("Patient", raw)
    state = store.patient_state(ref)
    if state is None:
        raise not_found(f"no {ref} in the last refresh")
    return ref, state


OVERRIDE_BODY = (Member("practitioner", max_length=200), Member("reason", free_text=True),
                 Member("requested_by", choices=REQUESTERS))


@bp.post("/assignments/<path:patient>/override")
@admin_only
def add_override(patient: str) -> tuple[Response, int]:
    """Assign the patient to a clinician by hand; it takes effect at the next refresh."""
    store = _store()
    ref, state = _stored_patient(patient)
    body = json_body(OVERRIDE_BODY)
    practitioner = reference("Practitioner", body["practitioner"])
    if practitioner is None:
        raise invalid("practitioner", "must be a Practitioner id or reference")
    clinician = store.clinician(practitioner)
    if clinician is None:
        raise invalid("practitioner", f"{practitioner} is not a clinician in the last refresh")
    if not clinician["eligible"]:
        raise invalid("practitioner", f"{practitioner} is not eligible for a primary-care "
                                      "panel")
    if state["status"] == "excluded":
        raise conflict(f"{ref} is not an active patient ({state['reason'] or 'excluded'}): "
                       "there is nothing to assign", "patient-excluded")
    override = store.add_override(ref, practitioner, reason=body["reason"],
                                  requested_by=body["requested_by"], actor=_actor())
    log.info("API: %s overrode %s to %s", _actor(), ref, practitioner)
    return jsonify(override=override, refresh=_ask_refresh()), 201


@bp.delete("/assignments/<path:patient>/override")
@admin_only
def remove_override(patient: str) -> Response:
    """Remove the patient's override: the usual rules decide again at the next refresh."""
    store = _store()
    ref, _ = _stored_patient(patient)
    if not store.remove_override(ref, _actor()):
        raise not_found(f"{ref} has no override in force")
    log.info("API: %s removed the override of %s", _actor(), ref)
    return jsonify(removed=True, patient=ref, refresh=_ask_refresh())


CONFIRM_BODY = (Member("confirmed_by", choices=CONFIRMERS),
                Member("practitioner", required=False, max_length=200),
                Member("note", required=False, allow_empty=True, free_text=True))


@bp.post("/assignments/<path:patient>/confirm")
@admin_only
def confirm(patient: str) -> tuple[Response, int]:
    """Confirm the patient's current clinician, with the clinician or with the patient."""
    store = _store()
    ref, state = _stored_patient(patient)
    body = json_body(CONFIRM_BODY)
    current = state["practitioner"]
    if state["status"] != "assigned" or not current:
        raise conflict(f"{ref} is {state['status']}: only an assigned patient can be "
                       "confirmed", "patient-not-assigned")
    if "practitioner" in body:
        asked = reference("Practitioner", body["practitioner"])
        if asked is None:
            raise invalid("practitioner", "must be a Practitioner id or reference")
        if asked != current:
            raise conflict(f"{ref} is assigned to {current}, not {asked}: reload and confirm "
                           "the current assignment", "assignment-changed")
    try:
        confirmation = store.confirm(ref, current, confirmed_by=body["confirmed_by"],
                                     actor=_actor(), note=body.get("note", ""))
    except AssignmentChanged as exc:  # a refresh moved the patient since the read above
        raise conflict(str(exc), "assignment-changed") from exc
    log.info("API: %s confirmed %s with the %s", _actor(), ref, body["confirmed_by"])
    # A confirmation changes no attribution and nothing written back: no refresh needed.
    return jsonify(confirmation=confirmation), 201


# ---------------------------------------------------------------- runs


@bp.get("/runs")
def runs() -> Response:
    """Refresh runs, newest first."""
    store = _store()
    page, page_size = _paging()
    total = store.count_runs()
    items = store.runs(limit=page_size, offset=(page - 1) * page_size) \
        if (page - 1) * page_size < total else []
    return _paged(items, total, page, page_size)


@bp.get("/runs/<int:run_id>")
def run(run_id: int) -> Response:
    found = _store().run(run_id) if run_id <= MAX_RUN_ID else None
    if found is None:
        raise not_found(f"no run {run_id}")
    return jsonify(found)


@bp.post("/runs")
@admin_only
def start_run() -> tuple[Response, int, dict[str, str]]:
    """Start a full or incremental refresh in the background; refused while one runs."""
    body = json_body((Member("kind", choices=RUN_KINDS),))
    run_id = current_app.extensions["fhirpanel"].trigger(body["kind"], TRIGGER)
    if run_id is None:
        raise Problem(409, "Conflict", "a refresh is already running; try again when it has "
                                       "finished", kind="refresh-running")
    log.info("API: %s started %s refresh %s", _actor(), body["kind"], run_id)
    found = _store().run(run_id) or {"id": run_id, "kind": body["kind"], "status": "running"}
    return jsonify(found), 202, {"Location": f"{request.script_root}/api/runs/{run_id}"}



@bp.post("/runs/<int:run_id>/accept")
@admin_only
def accept_run(run_id: int) -> tuple[Response, int, dict[str, str]]:
    """Let a held run's change through, after reading its figures (`counts.held`): the run
    becomes `accepted` (audited), and the next pass is started or queued; it goes ahead when it
    changes no more than those figures. 409 when the run is not held, or a later run
    superseded it."""
    store = _store()
    found = store.run(run_id) if run_id <= MAX_RUN_ID else None
    if found is None:
        raise not_found(f"no run {run_id}")
    if found["status"] != "held":
        raise conflict(held.not_held_reason(found), "run-not-held")
    settings = current_app.extensions["fhirpanel"].settings
    try:
        result = held.accept(settings, store, run_id, _actor())
    except held.Superseded as exc:
        raise conflict(str(exc), "run-superseded") from exc
    except NotHeld as exc:  # accepted by someone else a moment ago
        now = store.run(run_id)
        raise conflict(held.not_held_reason(now) if now else str(exc), "run-not-held") from exc
    log.info("API: %s accepted held run %s (next run %s)", _actor(), run_id, result.next_run)
    headers = ({"Location": f"{request.script_root}/api/runs/{result.next_run}"}
               if result.next_run is not None else {})
    return jsonify(run=result.run, next_run=result.next_run, detail=result.detail), 202, headers
