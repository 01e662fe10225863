"""The dashboard's proposed moves (issue 17, item 2): the moves a current confirmation held
back, with the visits behind each, and an admin's accept or dismiss (CSRF-checked like every
form, by `signin`'s hooks). The rules are the review service's."""

from __future__ import annotations

from flask import flash, redirect, url_for
from flask.typing import ResponseReturnValue

from fhirpanel.api.dashboard.base import bp, review, settings
from fhirpanel.api.dashboard.render import practitioner_name, render
from fhirpanel.api.dashboard.signin import signed_in
from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    MoveClosed,
    MoveNotFound,
    ReviewError,
)

DECIDED_SHOWN = 20  # recent decisions listed under the open moves


@bp.get("/moves")
def proposed_moves() -> ResponseReturnValue:
    service = review()
    decided = [m for m in service.proposed_moves(None, limit=200) if m["status"] != "open"]
    return render(
        "moves.html",
        moves=service.proposed_moves(),
        decided=decided[:DECIDED_SHOWN],
        months=settings().review.confirmation_months,
    )


def _refusal(exc: ReviewError) -> str:
    if isinstance(exc, MoveClosed):
        return f"That move was {exc.status} already: nothing to decide."
    if isinstance(exc, MoveNotFound):
        return "No such proposed move."
    if isinstance(exc, IneligibleClinician):
        return (
            f"{exc.name or practitioner_name(exc.practitioner)} is no longer a primary-care "
            "clinician here: dismiss the move, or assign the patient by hand."
        )
    if isinstance(exc, AssignmentMoved):
        return "The patient's assignment changed since the move was proposed: nothing was done."
    return str(exc)


@bp.post("/moves/<int:move_id>/accept")
def accept_move(move_id: int) -> ResponseReturnValue:
    me = signed_in()
    try:
        done = review().accept_move(move_id, actor=me.name)
    except ReviewError as exc:
        flash(_refusal(exc), "error")
    else:
        started = done.refresh is not None and done.refresh.run_id is not None
        flash(
            f"Move accepted: the patient goes to {practitioner_name(done.move['to'])} "
            + (
                "as soon as the refresh that has started finishes."
                if started
                else "at the next refresh."
            ),
            "success",
        )
    return redirect(url_for("dashboard.proposed_moves"), code=303)


@bp.post("/moves/<int:move_id>/dismiss")
def dismiss_move(move_id: int) -> ResponseReturnValue:
    me = signed_in()
    try:
        done = review().dismiss_move(move_id, actor=me.name)
    except ReviewError as exc:
        flash(_refusal(exc), "error")
    else:
        flash(
            f"Move dismissed: the patient stays with {practitioner_name(done.move['from'])}.",
            "success",
        )
    return redirect(url_for("dashboard.proposed_moves"), code=303)
