"""Confirmed assignments and the moves they hold back (issue 17, items 1 and 2): what a pass
gives attribution (each confirmed patient's clinician and confirmation days, the moves people
dismissed), the proposed moves a pass stored (`results.save_moves`), and a person's decision
on one: accept (an audited override to the new clinician, the old clinician's confirmations
ended) or dismiss (kept; not proposed again on the same evidence,
`fhirpanel.domain.confirmations`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fhirpanel.domain.confirmations import ConfirmedAssignment, DismissedMove
from fhirpanel.errors import FhirpanelError
from fhirpanel.store.engine import CHUNK, StoreEngine, iso, now_utc
from fhirpanel.store.models import Confirmation, PatientState
from fhirpanel.store.models import ProposedMove as MoveModel
from fhirpanel.store.results import MoveRow, save_moves, supersede_moves_of
from fhirpanel.store.review import AssignmentChanged, add_audit, insert_override

MOVE_STATUSES = ("open", "accepted", "dismissed", "superseded")
ACCEPTED_REASON = "proposed move accepted"  # the override's reason starts so
ACCEPTED_BY = "staff"  # who asked for that override


class MoveNotOpen(FhirpanelError):
    """The move was decided (or superseded) already; `status` says how."""

    def __init__(self, move_id: int, status: str) -> None:
        self.move_id = move_id
        self.status = status
        super().__init__(f"proposed move {move_id} is {status}, not open")


class MoveStore(StoreEngine):
    """Confirmed assignments for a pass, proposed moves, and decisions on them."""

    def confirmed_assignments(
        self, patients: Iterable[str] | None = None
    ) -> dict[str, ConfirmedAssignment]:
        """Assigned patients with a confirmation of their current clinician (expired or not:
        attribution decides which hold on its as-of date); `patients` limits the read."""
        stmt = select(
            PatientState.patient,
            PatientState.practitioner,
            PatientState.clinician_confirmed,
            PatientState.patient_confirmed,
        ).where(
            PatientState.status == "assigned",
            PatientState.practitioner.is_not(None),
            (PatientState.clinician_confirmed.is_not(None))
            | (PatientState.patient_confirmed.is_not(None)),
        )
        out: dict[str, ConfirmedAssignment] = {}
        with self.session() as s:
            for batch in _batches(stmt, PatientState.patient, patients):
                for patient, practitioner, by_clinician, by_patient in s.execute(batch):
                    out[patient] = ConfirmedAssignment(
                        patient, practitioner, _date(by_clinician), _date(by_patient)
                    )
        return out

    def dismissed_moves(self, patients: Iterable[str] | None = None) -> dict[str, DismissedMove]:
        """Each patient's most recently dismissed move (what the next pass does not raise
        again on the same evidence)."""
        newest = (
            select(func.max(MoveModel.id))
            .where(MoveModel.status == "dismissed")
            .group_by(MoveModel.patient)
        )
        stmt = select(MoveModel).where(MoveModel.id.in_(newest))
        out: dict[str, DismissedMove] = {}
        with self.session() as s:
            for batch in _batches(stmt, MoveModel.patient, patients):
                for row in s.scalars(batch):
                    out[row.patient] = DismissedMove(
                        row.patient,
                        row.from_practitioner,
                        row.to_practitioner,
                        tuple(sorted((str(k), int(v)) for k, v in (row.visits or {}).items())),
                    )
        return out

    def proposed_moves(
        self, status: str | None = "open", patient: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Moves, newest first; `status` None: every status."""
        stmt = select(MoveModel)
        if status is not None:
            stmt = stmt.where(MoveModel.status == status)
        if patient is not None:
            stmt = stmt.where(MoveModel.patient == patient)
        with self.session() as s:
            return [
                move_dict(r) for r in s.scalars(stmt.order_by(MoveModel.id.desc()).limit(limit))
            ]

    def proposed_move(self, move_id: int) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(MoveModel, move_id)
            return move_dict(row) if row is not None else None

    def accept_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]:
        """In one transaction: the move accepted, an override to its clinician (it replaces
        any in force; the next refresh applies it) and the confirmations of the clinician the
        patient leaves ended. MoveNotOpen when it was decided already; AssignmentChanged when
        the patient is no longer with the clinician the move starts from."""
        now = now_utc()
        with self.session() as s:
            row = self._take_open(s, move_id, "accepted", actor, note, now)
            state = s.get(PatientState, row.patient)
            if (
                state is None
                or state.status != "assigned"
                or state.practitioner != row.from_practitioner
            ):
                raise AssignmentChanged(
                    f"{row.patient} is no longer assigned to {row.from_practitioner}: the "
                    "move no longer applies"
                )
            reason = f"{ACCEPTED_REASON} ({row.rule}; move {row.id})"
            override = insert_override(
                s,
                row.patient,
                row.to_practitioner,
                reason=reason,
                requested_by=ACCEPTED_BY,
                actor=actor,
                now=now,
                lock=not self.is_sqlite,
            )
            s.execute(
                update(Confirmation)
                .where(
                    Confirmation.patient == row.patient,
                    Confirmation.practitioner == row.from_practitioner,
                    Confirmation.ended_at.is_(None),
                )
                .values(ended_at=now, ended_by=actor, ended_reason="move accepted")
            )
            add_audit(
                s,
                actor,
                "move-accepted",
                row.patient,
                {
                    "move": row.id,
                    "from": row.from_practitioner,
                    "to": row.to_practitioner,
                    "note": note,
                },
            )
            s.flush()
            return {**move_dict(row), "override": override}

    def dismiss_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]:
        """The patient stays; the same move on the same evidence is not proposed again."""
        now = now_utc()
        with self.session() as s:
            row = self._take_open(s, move_id, "dismissed", actor, note, now)
            add_audit(
                s,
                actor,
                "move-dismissed",
                row.patient,
                {
                    "move": row.id,
                    "from": row.from_practitioner,
                    "to": row.to_practitioner,
                    "note": note,
                },
            )
            s.flush()
            return move_dict(row)

    @staticmethod
    def _take_open(
        s: Session, move_id: int, status: str, actor: str, note: str, now: datetime
    ) -> MoveModel:
        # The conditional update first: two people deciding at once, one wins.
        result = s.execute(
            update(MoveModel)
            .where(MoveModel.id == move_id, MoveModel.status == "open")
            .values(status=status, decided_at=now, decided_by=actor, note=note)
        )
        row = s.get(MoveModel, move_id)
        if row is None:
            raise KeyError(move_id)
        if getattr(result, "rowcount", 0) != 1:
            raise MoveNotOpen(move_id, row.status)
        s.refresh(row)
        return row


def _batches(stmt: Any, column: Any, patients: Iterable[str] | None) -> Iterable[Any]:
    if patients is None:
        yield stmt
        return
    ids = sorted(set(patients))
    for start in range(0, len(ids), CHUNK):
        yield stmt.where(column.in_(ids[start : start + CHUNK]))


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def move_dict(r: MoveModel) -> dict[str, Any]:
    return {
        "id": r.id,
        "patient": r.patient,
        "from": r.from_practitioner,
        "to": r.to_practitioner,
        "rule": r.rule,
        "step": r.step,
        "window_months": r.window_months,
        "visits": dict(r.visits or {}),
        "evidence": list(r.evidence or []),
        "held_by": [x for x in (r.held_by or "").split(",") if x],
        "status": r.status,
        "run_id": r.run_id,
        "seen_run": r.seen_run,
        "created_at": iso(r.created_at),
        "decided_at": iso(r.decided_at),
        "decided_by": r.decided_by,
        "note": r.note,
    }


__all__ = [
    "ACCEPTED_BY",
    "ACCEPTED_REASON",
    "MOVE_STATUSES",
    "MoveNotOpen",
    "MoveRow",
    "MoveStore",
    "move_dict",
    "save_moves",
    "supersede_moves_of",
]
