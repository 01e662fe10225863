"""The JSON API under `/api`: panels, patients and their explanation, the unassigned and outreach
lists, overrides and confirmations (one by one, or the placement suggestions for unassigned
patients at once), and runs. It only reads the store; the explanation and the changes go through
`fhirpanel.service.review` (the rules, shared with the dashboard; the token's name is the actor),
which asks for an incremental refresh after an override, best effort: a busy lock leaves the
patient queued for the next one. A run the brake held (too large a change at once) is let
through with `POST /api/runs/{id}/accept`."""

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
    json_object,
    pairs_or_all,
    path_reference,
    reference_param,
)
from fhirpanel.api.problems import Problem, conflict, invalid, not_found
from fhirpanel.service.errors import (
    IneligibleClinician,
    InvalidInput,
    NotUnassigned,
    OverridePending,
    PatientNotFound,
    ReviewError,
    SuggestionChanged,
    UnknownClinician,
)
from fhirpanel.service.review import Refusal, ReviewService
from fhirpanel.store import Store
from fhirpanel.store import queries as q
from fhirpanel.store.repository import CONFIRMERS, METHODS, REQUESTERS, STATUSES, NotHeld
from fhirpanel.vocabulary import STARTABLE_KINDS, RunStatus

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")

TRIGGER = "api"  # recorded on runs the API starts
MAX_TIER = 9
MAX_RUN_ID = 2**31 - 1  # larger path values are no run (and would overflow SQLite's INTEGER)
MAX_PAIRS = 5000  # suggestions accepted in one request (or "all")
PAIR_MEMBERS = ("patient", "practitioner")
# Why a suggestion was not accepted, by the service's refusal (`refused[].problem`).
REFUSALS: dict[type[ReviewError], str] = {
    PatientNotFound: "patient-not-found",
    NotUnassigned: "patient-not-unassigned",
    SuggestionChanged: "suggestion-changed",
    OverridePending: "override-pending",
    UnknownClinician: "unknown-clinician",
    IneligibleClinician: "ineligible-clinician",
    InvalidInput: "listed-twice",
}

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


def _paged(
    items: list[dict[str, Any]], total: int, page: int, page_size: int, **extra: Any
) -> Response:
    pages = max(1, -(-total // page_size))
    body = {
        "items": items,
        "total": total,
        "page": page,
        "page_size": page_size,
        "pages": pages,
        "next": _link(page + 1, page_size) if page < pages else None,
        "prev": _link(min(page - 1, pages), page_size) if page > 1 else None,
        **extra,
    }
    return jsonify(body)


# ---------------------------------------------------------------- panels


@bp.get("/panels")
def panels() -> Response:
    """Every clinician's panel: size, risk-adjusted size, capacity, tier mix, unconfirmed, and
    supply, demand, how capacity was found and the panel against its peers."""
    store = _store()
    return jsonify(
        panels=[_panel(c) for c in store.clinicians()],
        totals=q.practice_totals(store),
        as_of=store.context("as_of"),
    )


def _panel(c: dict[str, Any]) -> dict[str, Any]:
    closed = current_app.extensions["fhirpanel"].tables.method.capacities.closed
    return {
        "open": c["practitioner"] not in closed,  # taking new patients ([panels] capacity.toml)
        **{
            k: c[k]
            for k in (
                "practitioner",
                "name",
                "eligible",
                "pediatric",
                "size",
                "risk_adjusted_size",
                "hcc_adjusted_size",
                "capacity",
                "open_capacity",
                "tiers",
                "unconfirmed",
                "supply",
                "demand",
                "expected_visits",
                "share_used",
                "capacity_method",
                "capacity_basis",
                "blended_size",
                "relative",
            )
        },
    }


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
    # `unconfirmed`: true (no current confirmation), or the side lacking one.
    side = request.args.get("unconfirmed")
    if side is not None and side not in ("true", "false", *CONFIRMERS):
        raise invalid(
            "unconfirmed", "must be true, false, clinician or patient", status=400, where="query"
        )
    unconfirmed: bool | str = side if side in CONFIRMERS else bool_param("unconfirmed")
    overdue = bool_param("overdue")
    result = q.panel_patients(
        store,
        ref,
        tier=tier,
        unconfirmed=unconfirmed,
        overdue=overdue,
        sort=sort,
        page=page,
        page_size=page_size,
        detail=True,
    )
    return _paged(
        [_panel_row(r) for r in result.rows],
        result.total,
        page,
        page_size,
        panel=_panel(clinician),
        sort=sort,
        filters={"tier": tier, "unconfirmed": unconfirmed, "overdue": overdue},
    )


def _panel_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "patient": r["patient"],
        "tier": r["tier"],
        "charlson": r["charlson"],
        "hcc": r["hcc"],
        "ccm_eligible": bool(r["ccm_eligible"]),
        "drivers": r.get("drivers", {}),
        "rule": r["rule"],
        "step": r["step"],
        "last_visit": r["last_visit"],
        "confirmation": r["confirmation"],
        "override": bool(r["override"]),
        "outreach": r["outreach"],
    }


# ---------------------------------------------------------------- patients


@bp.get("/patients/<path:patient>")
def patient(patient: str) -> Response:
    """The full explanation of one patient's assignment and risk."""
    return jsonify(_review().explain(path_reference("Patient", patient)).as_dict())


@bp.get("/unassigned")
def unassigned() -> Response:
    """Active patients no clinician qualified for, with a suggested clinician."""
    page, page_size = _paging()
    sort = choice_param("sort", q.SORT_VALUES, "-tier") or "-tier"
    tier = int_param("tier", None, low=0, high=MAX_TIER)
    result = q.unassigned_patients(_store(), tier=tier, sort=sort, page=page, page_size=page_size)
    items = [
        {
            "patient": r["patient"],
            "tier": r["tier"],
            "reason": r["reason"],
            "last_visit": r["last_visit"],
            # practitioner null with a reason: no clinician has room (the shortfall in words)
            "suggested": (
                {"practitioner": r["suggested"], "reason": r["suggestion_reason"]}
                if r["suggested"] or r["suggestion_reason"]
                else None
            ),
        }
        for r in result.rows
    ]
    return _paged(items, result.total, page, page_size, sort=sort, filters={"tier": tier})


@bp.post("/unassigned/assign-suggested")
@admin_only
def assign_suggested() -> Response:
    """Accept placement suggestions: one override each (asked for by staff, audited), then
    one refresh. Each pair is checked against the stored suggestion; those no longer as the
    caller saw them are listed in `refused`, the rest are stored."""
    body = json_object()
    if set(body) != {"suggestions"}:
        unknown = sorted(set(body) - {"suggestions"})
        if unknown:
            raise invalid(unknown[0], "unknown member; expected suggestions")
        raise invalid("suggestions", "is required")
    done = _review().assign_suggested(
        pairs_or_all(body["suggestions"], "suggestions", PAIR_MEMBERS, MAX_PAIRS, "suggestions"),
        actor=_actor(),
    )
    return jsonify(
        assigned=[
            {
                "patient": o["patient"],
                "practitioner": o["practitioner"],
                "override": o,
            }
            for o in done.overrides
        ],
        refused=[_refused(r) for r in done.refused],
        refresh=done.refresh.as_dict() if done.refresh is not None else None,
    )


def _refused(r: Refusal) -> dict[str, Any]:
    kind = next((k for cls, k in REFUSALS.items() if isinstance(r.error, cls)), "conflict")
    return {
        "patient": r.patient,
        "practitioner": r.practitioner,
        "problem": kind,
        "detail": str(r.error),
    }


@bp.get("/outreach")
def outreach() -> Response:
    """Assigned patients to reach out to: not seen in N months, or a sentinel exam overdue."""
    settings = current_app.extensions["fhirpanel"].settings
    page, page_size = _paging()
    sort = choice_param("sort", q.SORT_VALUES, "-tier") or "-tier"
    practitioner = reference_param("practitioner", "Practitioner")
    reason = choice_param("reason", q.OUTREACH_KINDS, None)
    result = q.outreach_patients(
        _store(),
        practitioner=practitioner,
        reason=reason,
        sort=sort,
        page=page,
        page_size=page_size,
    )
    items = [
        {
            "patient": r["patient"],
            "practitioner": r["practitioner"],
            "tier": r["tier"],
            "last_visit": r["last_visit"],
            "outreach": r["outreach"],
            "confirmation": r["confirmation"],
        }
        for r in result.rows
    ]
    return _paged(
        items,
        result.total,
        page,
        page_size,
        sort=sort,
        filters={"practitioner": practitioner, "reason": reason},
        thresholds={
            "not_seen_months": settings.attribution.outreach_not_seen_months,
            "sentinel_months": settings.attribution.outreach_sentinel_months,
        },
    )


# ---------------------------------------------------------------- changes (admin)
# The review service checks and makes the change; its refusals become problem documents in
# `problems.register_problem_handlers`. The patient is looked up before the body is read, so an
# unknown patient is a 404 whatever the body.


def _review() -> ReviewService:
    context = current_app.extensions["fhirpanel"]
    return ReviewService.over(
        context.store, context.trigger, TRIGGER, context.settings.review.confirmation_months
    )


OVERRIDE_BODY = (
    Member("practitioner", max_length=200),
    Member("reason", free_text=True),
    Member("requested_by", choices=REQUESTERS),
)


@bp.post("/assignments/<path:patient>/override")
@admin_only
def add_override(patient: str) -> tuple[Response, int]:
    """Assign the patient to a clinician by hand; it takes effect at the next refresh."""
    review = _review()
    target = review.patient(path_reference("Patient", patient))
    body = json_body(OVERRIDE_BODY)
    done = review.override(
        target,
        body["practitioner"],
        reason=body["reason"],
        requested_by=body["requested_by"],
        actor=_actor(),
    )
    return jsonify(override=done.override, refresh=done.refresh.as_dict()), 201


@bp.delete("/assignments/<path:patient>/override")
@admin_only
def remove_override(patient: str) -> Response:
    """Remove the patient's override: the usual rules decide again at the next refresh."""
    done = _review().remove_override(path_reference("Patient", patient), actor=_actor())
    return jsonify(removed=True, patient=done.patient, refresh=done.refresh.as_dict())


STATUS_BODY = (
    Member("status", choices=STATUSES),
    Member("reason", free_text=True),
)


@bp.put("/patients/<path:patient>/status")
@admin_only
def set_status(patient: str) -> Response:
    """Record that the patient moved away, transferred care, was dismissed or died: off every
    panel from the next refresh."""
    review = _review()
    target = review.patient(path_reference("Patient", patient))
    body = json_body(STATUS_BODY)
    done = review.set_status(target, body["status"], reason=body["reason"], actor=_actor())
    return jsonify(status=done.status, refresh=done.refresh.as_dict())


@bp.delete("/patients/<path:patient>/status")
@admin_only
def clear_status(patient: str) -> Response:
    """Clear the patient's status: they count again from the next refresh."""
    done = _review().clear_status(path_reference("Patient", patient), actor=_actor())
    return jsonify(cleared=True, patient=done.patient, refresh=done.refresh.as_dict())


CONFIRM_BODY = (
    Member("confirmed_by", choices=CONFIRMERS),
    Member("practitioner", required=False, max_length=200),
    Member("note", required=False, allow_empty=True, free_text=True),
    Member("method", required=False, choices=METHODS),
    Member("confirmed_on", required=False, max_length=10),
)


@bp.post("/assignments/<path:patient>/confirm")
@admin_only
def confirm(patient: str) -> tuple[Response, int]:
    """Confirm the patient's current clinician, with the clinician or with the patient (each
    side's confirmation is kept), how (`method`) and on which day (`confirmed_on`, today when
    left out); with `practitioner`, only while that clinician is still the patient's."""
    review = _review()
    target = review.patient(path_reference("Patient", patient))
    body = json_body(CONFIRM_BODY)
    confirmation = review.confirm(
        target,
        confirmed_by=body["confirmed_by"],
        actor=_actor(),
        shown=body.get("practitioner"),
        note=body.get("note", ""),
        method=body.get("method"),
        confirmed_on=body.get("confirmed_on"),
    )
    # It keeps the current assignment and writes nothing back: no refresh needed.
    return jsonify(confirmation=confirmation), 201


# ---------------------------------------------------------------- runs


@bp.get("/runs")
def runs() -> Response:
    """Refresh runs, newest first."""
    store = _store()
    page, page_size = _paging()
    total = store.count_runs()
    items = (
        store.runs(limit=page_size, offset=(page - 1) * page_size)
        if (page - 1) * page_size < total
        else []
    )
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
    body = json_body((Member("kind", choices=STARTABLE_KINDS),))
    run_id = current_app.extensions["fhirpanel"].trigger(body["kind"], TRIGGER)
    if run_id is None:
        raise Problem(
            409,
            "Conflict",
            "a refresh is already running; try again when it has finished",
            kind="refresh-running",
        )
    log.info("API: %s started %s refresh %s", _actor(), body["kind"], run_id)
    found = _store().run(run_id) or {
        "id": run_id,
        "kind": body["kind"],
        "status": RunStatus.RUNNING.value,
    }
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
    if found["status"] != RunStatus.HELD:
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
    headers = (
        {"Location": f"{request.script_root}/api/runs/{result.next_run}"}
        if result.next_run is not None
        else {}
    )
    return jsonify(run=result.run, next_run=result.next_run, detail=result.detail), 202, headers
