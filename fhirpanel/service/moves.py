"""Proposed moves, a part of the review service: the moves a confirmation held back (the rules
chose another clinician for a confirmed patient), listed, and accepted (an audited override to
the clinician the rules chose, then a refresh) or dismissed (the patient stays)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol

from fhirpanel.service.errors import AssignmentMoved, InvalidChoice, MoveClosed, MoveNotFound
from fhirpanel.service.outcomes import MoveDecided, Refresh
from fhirpanel.store.moves import MOVE_STATUSES, MoveNotOpen
from fhirpanel.store.repository import AssignmentChanged

# The review service's one logger, which the API escapes (fhirpanel/api/logsafe.py).
log = logging.getLogger("fhirpanel.service.review")


class StoreForMoves(Protocol):
    """The store methods proposed moves use (`fhirpanel.store.Store` has them)."""

    def proposed_moves(
        self, status: str | None = "open", patient: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]: ...

    def proposed_move(self, move_id: int) -> dict[str, Any] | None: ...

    def accept_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]: ...

    def dismiss_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]: ...


class ProposedMoves:
    """The proposed-moves methods of `fhirpanel.service.review.ReviewService`, which supplies
    the store, its name (`_by`), the eligibility check and the refresh."""

    _store: StoreForMoves
    _by: str

    @abstractmethod
    def eligible_clinician(self, practitioner: str) -> Mapping[str, Any]: ...

    @abstractmethod
    def ask_refresh(self) -> Refresh: ...

    def proposed_moves(
        self, status: str | None = "open", limit: int = 500, patient: str | None = None
    ) -> list[dict[str, Any]]:
        """Moves a confirmation held back, newest first (`status` None: all; `patient`: one
        patient's)."""
        if status is not None and status not in MOVE_STATUSES:
            raise InvalidChoice("status", MOVE_STATUSES)
        return self._store.proposed_moves(status, patient=patient, limit=limit)

    def proposed_move(self, move_id: int) -> dict[str, Any]:
        move = self._store.proposed_move(move_id)
        if move is None:
            raise MoveNotFound(move_id)
        return move

    def accept_move(self, move_id: int, *, actor: str, note: str = "") -> MoveDecided:
        """Accept a proposed move: an audited override to the clinician the rules chose (so
        the next refresh, which is asked for, moves the patient) and the confirmations of the
        clinician they leave ended. Refused when the move is not open, its clinician is no
        longer eligible, or the patient is no longer with the clinician it starts from."""
        move = self.proposed_move(move_id)
        if move["status"] != "open":
            raise MoveClosed(move_id, str(move["status"]))
        self.eligible_clinician(str(move["to"]))
        try:
            decided = self._store.accept_move(move_id, actor=actor, note=" ".join(note.split()))
        except MoveNotOpen as exc:
            raise MoveClosed(move_id, exc.status) from exc
        except AssignmentChanged as exc:
            raise AssignmentMoved(
                str(move["patient"]), current=None, shown=str(move["from"]), message=str(exc)
            ) from exc
        log.info("%s: %s accepted proposed move %d", self._by, actor, move_id)
        return MoveDecided(decided, self.ask_refresh())

    def dismiss_move(self, move_id: int, *, actor: str, note: str = "") -> MoveDecided:
        """Dismiss a proposed move: the patient stays, and the same move is not proposed
        again until its evidence (the visit counts) changes. No refresh is needed."""
        move = self.proposed_move(move_id)
        if move["status"] != "open":
            raise MoveClosed(move_id, str(move["status"]))
        try:
            decided = self._store.dismiss_move(move_id, actor=actor, note=" ".join(note.split()))
        except MoveNotOpen as exc:
            raise MoveClosed(move_id, exc.status) from exc
        log.info("%s: %s dismissed proposed move %d", self._by, actor, move_id)
        return MoveDecided(decided, None)


__all__ = ["ProposedMoves", "StoreForMoves"]
