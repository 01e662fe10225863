"""The JSON API of the practice's panels as a whole (fhirpanel issue 17 items 4-6): a
clinician's panel transition (the plan, and accepting it in bulk), care teams with their
members' panels summed, the panel review cycle (recording a review) and the readiness report.
The rules are `fhirpanel.service.practice`'s; this parses requests and words its answers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify

from fhirpanel.api.params import bool_param, json_object, pairs_or_all, path_reference
from fhirpanel.api.problems import invalid, not_found
from fhirpanel.api.routes import REFUSALS, admin_only
from fhirpanel.service.errors import ReviewError
from fhirpanel.service.practice import NotOnPanel, PlanChanged, PracticeService, readiness_dict
from fhirpanel.service.review import Refusal, ReviewService

bp = Blueprint("practice", __name__, url_prefix="/api")

TRIGGER = "api"
MAX_MOVES = 5000  # moves accepted in one request (or "all")
MOVE_MEMBERS = ("patient", "to")
NOTE_LIMIT = 2000
TRANSITION_REFUSALS: dict[type[ReviewError], str] = {
    NotOnPanel: "patient-not-on-panel",
    PlanChanged: "plan-changed",
    **REFUSALS,
}


def practice_service(by: str = TRIGGER) -> PracticeService:
    """The service on the app's store and loaded tables (the dashboard makes its own `by`)."""
    context = current_app.extensions["fhirpanel"]
    return PracticeService(
        context.store,
        ReviewService.over(context.store, context.trigger, by),
        context.settings,
        context.tables.method.capacities.placement,
        context.tables.teams,
    )


def _clinician(service: PracticeService, practitioner: str) -> str:
    """The path's clinician, 404 unless the last refresh has them."""
    ref = path_reference("Practitioner", practitioner)
    if current_app.extensions["fhirpanel"].store.clinician(ref) is None:
        raise not_found(f"no panel for {ref}: the clinician is not in the last refresh")
    return ref


# ---------------------------------------------------------------- transitions


@bp.get("/clinicians/<path:practitioner>/transition")
def transition_plan(practitioner: str) -> Response:
    """The plan for moving every patient on the clinician's panel to the other eligible
    clinicians: continuity first, then placement's capacity rule; closed panels get nobody."""
    service = practice_service()
    return jsonify(service.transition_plan(_clinician(service, practitioner)).as_dict())


@bp.post("/clinicians/<path:practitioner>/transition")
@admin_only
def accept_transition(practitioner: str) -> Response:
    """Accept planned moves: one override each (asked for by staff, audited), then one
    refresh. Each move is checked against the plan as it is now; those no longer as the caller
    saw them are listed in `refused`."""
    service = practice_service()
    ref = _clinician(service, practitioner)
    body = json_object()
    if set(body) != {"moves"}:
        unknown = sorted(set(body) - {"moves"})
        if unknown:
            raise invalid(unknown[0], "unknown member; expected moves")
        raise invalid("moves", "is required")
    done = service.accept_transition(
        ref,
        pairs_or_all(body["moves"], "moves", MOVE_MEMBERS, MAX_MOVES, "moves"),
        actor=str(g.account.name),
    )
    return jsonify(
        assigned=[
            {"patient": o["patient"], "practitioner": o["practitioner"], "override": o}
            for o in done.overrides
        ],
        refused=[_refused(r) for r in done.refused],
        refresh=done.refresh.as_dict() if done.refresh is not None else None,
    )


def _refused(r: Refusal) -> dict[str, Any]:
    kind = next(
        (k for cls, k in TRANSITION_REFUSALS.items() if isinstance(r.error, cls)), "conflict"
    )
    return {"patient": r.patient, "to": r.practitioner, "problem": kind, "detail": str(r.error)}


# ---------------------------------------------------------------- teams


@bp.get("/teams")
def teams() -> Response:
    """Every care team in `mappings/teams.toml`, with its members' panels summed."""
    return jsonify(teams=[t.as_dict(summary=True) for t in practice_service().teams()])


@bp.get("/teams/<team_id>")
def team(team_id: str) -> Response:
    """One care team: each member's role and panel, and the panels summed."""
    found = practice_service().team(team_id)
    if found is None:
        raise not_found(f"no team {team_id!r} in mappings/teams.toml")
    return jsonify(found.as_dict())


# ---------------------------------------------------------------- reviews


@bp.get("/reviews")
def reviews() -> Response:
    """Every eligible clinician's panel review state (never reviewed, overdue, due, current),
    the most pressing first; `due=true` lists only the panels due for review."""
    service = practice_service()
    only_due = bool_param("due")
    rows = [r.as_dict() for r in service.reviews() if r.due.is_due or not only_due]
    return jsonify(panel_review_months=service.review_months, panels=rows)


@bp.get("/clinicians/<path:practitioner>/reviews")
def panel_reviews(practitioner: str) -> Response:
    """The panel's review state, what a review now would count, and its reviews, newest
    first."""
    service = practice_service()
    ref = _clinician(service, practitioner)
    return jsonify(
        **service.review_of(ref).as_dict(),
        since_last_review=service.since_last_review(ref),
        reviews=service.review_history(ref),
    )


@bp.post("/clinicians/<path:practitioner>/reviews")
@admin_only
def record_review(practitioner: str) -> tuple[Response, int]:
    """Record a review of the panel now: who (the token's name), when, and how many patients
    were confirmed, moved and removed since the last review."""
    service = practice_service()
    ref = _clinician(service, practitioner)
    body = json_object()
    unknown = sorted(set(body) - {"note"})
    if unknown:
        raise invalid(unknown[0], "unknown member; expected note")
    note = body.get("note", "")
    if not isinstance(note, str):
        raise invalid("note", "must be a string")
    if len(note) > NOTE_LIMIT:
        raise invalid("note", f"must be at most {NOTE_LIMIT} characters")
    review = service.record_review(ref, actor=str(g.account.name), note=note)
    return jsonify(review=review, state=service.review_of(ref).as_dict()), 201


# ---------------------------------------------------------------- readiness


@bp.get("/readiness")
def readiness() -> Response:
    """The practice's readiness measures: share of active patients assigned, share confirmed by
    clinician and by patient, and each panel's last review (and whether it is overdue)."""
    service = practice_service()
    measures, rows = service.readiness()
    return jsonify(readiness_dict(measures, rows, service.review_months))
