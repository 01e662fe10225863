"""Proposed moves in the JSON API (issue 17, item 2): the moves a current confirmation held back
(a confirmed patient the rules would move), and a person's decision on each. Accepting one is an
audited override to the new clinician (the next refresh, which is asked for, moves the patient;
the confirmations of the clinician they leave end); dismissing one keeps the patient where they
are, and the same move is not proposed again until its evidence changes (docs/methods.md
s.2.9). The rules are the review service's; this module parses requests only."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from fhirpanel.api.params import Member, choice_param, int_param, json_body
from fhirpanel.api.routes import _actor, _review, admin_only
from fhirpanel.store.moves import MOVE_STATUSES

bp = Blueprint("moves", __name__, url_prefix="/api")

MAX_MOVE_ID = 2**31 - 1
MAX_MOVES = 500
DECISION_BODY = (Member("note", required=False, allow_empty=True, free_text=True),)


def _note() -> str:
    """The optional body's note; no body at all is fine."""
    if not request.get_data(cache=True):
        return ""
    return str(json_body(DECISION_BODY).get("note", ""))


def _move_id(move_id: int) -> int:
    if move_id > MAX_MOVE_ID:
        # No such row (and too large for SQLite's INTEGER): the service's 404.
        return 0
    return move_id


@bp.get("/proposed-moves")
def proposed_moves() -> Response:
    """Moves a confirmation held back, newest first: `status` open (the default), accepted,
    dismissed, superseded or all."""
    status = choice_param("status", (*MOVE_STATUSES, "all"), "open")
    limit = int_param("limit", MAX_MOVES, low=1, high=MAX_MOVES)
    items = _review().proposed_moves(None if status == "all" else status, limit=limit or MAX_MOVES)
    return jsonify(items=items, total=len(items), status=status)


@bp.post("/proposed-moves/<int:move_id>/accept")
@admin_only
def accept_move(move_id: int) -> tuple[Response, int]:
    """Accept: an override to the proposed clinician, the old confirmations ended, and a
    refresh asked for. 409 when the move was decided already or the patient moved since."""
    done = _review().accept_move(_move_id(move_id), actor=_actor(), note=_note())
    body: dict[str, Any] = {"move": done.move, "refresh": None}
    if done.refresh is not None:
        body["refresh"] = done.refresh.as_dict()
    return jsonify(body), 200


@bp.post("/proposed-moves/<int:move_id>/dismiss")
@admin_only
def dismiss_move(move_id: int) -> tuple[Response, int]:
    """Dismiss: the patient stays; the same move is not proposed again on the same evidence."""
    done = _review().dismiss_move(_move_id(move_id), actor=_actor(), note=_note())
    return jsonify(move=done.move, refresh=None), 200
