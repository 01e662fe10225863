"""The dashboard's practice-wide pages (fhirpanel issue 17 items 4-6): a clinician's panel
transition (the plan, and "Accept all"), the care teams and one team's panels, the panel review
cycle (recording a review) and the readiness report. The rules are
`fhirpanel.service.practice`'s; the forms answer with a redirect back and a flash message."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from fhirpanel.api.dashboard.base import MAX_TEXT, TRIGGER, bare, bp, path_ref, settings, store
from fhirpanel.api.dashboard.pages import FORM_SPARE_BYTES, _change, _sendable
from fhirpanel.api.dashboard.render import practitioner_name, render, with_figures
from fhirpanel.api.dashboard.signin import safe_next, signed_in
from fhirpanel.service.errors import InvalidInput, OverridePending, PatientNotFound, ReviewError
from fhirpanel.service.practice import NotOnPanel, PlanChanged, PracticeService, readiness_dict
from fhirpanel.service.review import Refusal, ReviewService

SHOWN_REFUSALS = 5
BASIS_WORDS = {
    "visit-history": "continuity",
    "capacity": "most room",
    "no-room": "no room",
}


def practice() -> PracticeService:
    context = current_app.extensions["fhirpanel"]
    return PracticeService(
        context.store,
        ReviewService.over(context.store, context.trigger, TRIGGER),
        context.settings,
        context.tables.method.capacities.placement,
        context.tables.teams,
    )


@bp.app_template_global()
def panel_open(practitioner: str) -> bool:
    """Whether the clinician's panel takes new patients (`[panels]` of capacity.toml)."""
    closed = current_app.extensions["fhirpanel"].tables.method.capacities.closed
    return practitioner not in closed


def _clinician(practitioner: str) -> dict[str, Any]:
    ref = path_ref("Practitioner", practitioner)
    found = store().clinician(ref)
    if found is None:
        abort(
            404, description=f"No panel for {bare(ref)}: the clinician is not in the last refresh."
        )
    return found


def _back(default: str) -> ResponseReturnValue:
    return redirect(safe_next(request.form.get("next"), default), code=303)


# ---------------------------------------------------------------- transitions


@bp.get("/panels/<path:practitioner>/transition")
def transition(practitioner: str) -> ResponseReturnValue:
    clinician = _clinician(practitioner)
    view = practice().transition_plan(clinician["practitioner"])
    pairs = _sendable(list(view.pairs), settings().api.max_body_bytes - FORM_SPARE_BYTES)
    moves = [
        {
            "patient": m.patient,
            "to": m.practitioner,
            "basis": BASIS_WORDS.get(m.basis, m.basis),
            "reason": m.reason,
            "pending": m.patient in view.pending,
        }
        for m in view.plan.moves
    ]
    return render(
        "transition.html",
        clinician=with_figures(clinician),
        moves=moves,
        changes=[
            dict(_change(c), open=c.practitioner not in view.closed) for c in view.plan.changes
        ],
        placed=len(view.plan.placed),
        no_room=len(view.plan.moves) - len(view.plan.placed),
        pending=sum(1 for m in moves if m["pending"]),
        pairs=",".join(f"{p} {c}" for p, c in pairs),
        pairs_sent=len(pairs),
        ready=len(view.pairs),
    )


@bp.post("/panels/<path:practitioner>/transition")
def accept_transition(practitioner: str) -> ResponseReturnValue:
    """Accept the moves the transition page showed (its `pairs`: `Patient/a Practitioner/b`,
    comma-separated): one override each, unless the plan for the patient changed."""
    me = signed_in()
    clinician = _clinician(practitioner)
    ref = str(clinician["practitioner"])
    default = url_for("dashboard.transition", practitioner=bare(ref))
    items = request.form.get("pairs", "").split(",")
    pairs = [tuple(item.split()) for item in items if item.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        flash("No moves to accept: reload the page and try again.", "error")
        return _back(default)
    try:
        done = practice().accept_transition(ref, [(a, b) for a, b in pairs], actor=me.name)
    except ReviewError:  # a pair that is no reference: the form was altered
        flash("The list of moves was damaged: reload the page and try again.", "error")
        return _back(default)
    if done.refused:
        named = "; ".join(_refusal(r) for r in done.refused[:SHOWN_REFUSALS])
        more = len(done.refused) - SHOWN_REFUSALS
        flash(
            f"{len(done.refused)} move{'s' if len(done.refused) != 1 else ''} not accepted: "
            f"{named}{f'; and {more} more' if more > 0 else ''}.",
            "error",
        )
    if done.refresh is not None:
        n = len(done.overrides)
        what = (
            f"{n} patient{'s' if n != 1 else ''} of {clinician.get('name') or bare(ref)} will "
            "move to the planned clinician (one override each, in the audit log)."
        )
        if done.refresh.run_id is None:
            flash(f"{what} It will be applied by the next refresh.", "success")
        else:
            flash(
                f"{what} A refresh (run #{done.refresh.run_id}) has started to apply it.",
                "success",
            )
    return _back(default)


def _refusal(refused: Refusal) -> str:
    who, exc = f"patient {bare(refused.patient)}", refused.error
    if isinstance(exc, PlanChanged):
        now = practitioner_name(exc.current) if exc.current else "nobody has room"
        return f"{who}'s planned clinician changed since the page was loaded (now: {now})"
    if isinstance(exc, NotOnPanel):
        return f"{who} is no longer on this panel"
    if isinstance(exc, OverridePending):
        return f"{who} already has a change waiting for the next refresh"
    if isinstance(exc, PatientNotFound):
        return f"{who} is not in the last refresh"
    if isinstance(exc, InvalidInput):
        return f"{who} is listed twice"
    return f"{who}: {exc}"


# ---------------------------------------------------------------- teams


@bp.get("/teams")
def teams() -> ResponseReturnValue:
    return render("teams.html", teams=practice().teams(), team=None)


@bp.get("/teams/<team_id>")
def team(team_id: str) -> ResponseReturnValue:
    found = practice().team(team_id)
    if found is None:
        abort(404, description=f"No team {team_id} in mappings/teams.toml.")
    return render("teams.html", teams=None, team=found)


# ---------------------------------------------------------------- reviews and readiness


@bp.get("/readiness")
def readiness() -> ResponseReturnValue:
    service = practice()
    measures, rows = service.readiness()
    return render(
        "readiness.html",
        report=readiness_dict(measures, rows, service.review_months),
        closed=service.closed,
    )


@bp.post("/panels/<path:practitioner>/review")
def record_review(practitioner: str) -> ResponseReturnValue:
    me = signed_in()
    clinician = _clinician(practitioner)
    ref = str(clinician["practitioner"])
    note = " ".join(request.form.get("note", "").split())[:MAX_TEXT]
    review = practice().record_review(ref, actor=me.name, note=note)
    flash(
        f"Review of {clinician.get('name') or bare(ref)}'s panel recorded: since the last "
        f"review, {review['confirmed']} confirmed, {review['moved']} moved, "
        f"{review['removed']} removed.",
        "success",
    )
    return _back(url_for("dashboard.readiness"))


__all__ = ["practice"]
