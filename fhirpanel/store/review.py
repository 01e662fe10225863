"""The review workflow: manual assignments (`overrides`), statuses a person records for a
patient (`patient_statuses`: moved away, transferred care, dismissed, deceased), confirmations
(`confirmations`), the queue of patients the next pass recomputes (`pending_patients`), and the
audit trail (`audit`).

An override or a status takes effect at the next refresh (the patient is queued); a confirmation
is shown at once, holds the assignment against the rules from the next pass until it expires,
and lapses when the patient moves to another clinician. Every change a person makes is audited.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import case, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhirpanel.domain.attribution import PERSON_STATUSES, ManualAssignment
from fhirpanel.domain.confirmations import CONFIRMERS, METHODS
from fhirpanel.errors import FhirpanelError
from fhirpanel.store.engine import StoreEngine, iso, now_utc
from fhirpanel.store.models import (
    AuditEntry,
    Confirmation,
    Override,
    PatientState,
    PatientStatus,
    PendingPatient,
)
from fhirpanel.store.results import recompute_clinicians

REQUESTERS = ("clinician", "patient", "family", "staff")
STATUSES = tuple(PERSON_STATUSES)  # moved-away | transferred-care | dismissed | deceased


class AssignmentChanged(FhirpanelError):
    """A change asked about an assignment that no longer holds (a refresh moved the patient)."""


class ReviewStore(StoreEngine):
    """Overrides, confirmations, the pending-patient queue and the audit trail."""

    # ------------------------------------------------------------ overrides

    def add_override(
        self, patient: str, practitioner: str, *, reason: str, requested_by: str, actor: str
    ) -> dict[str, Any]:
        """A manual assignment; it replaces any active one and takes effect at the next
        refresh (the patient is queued)."""
        if requested_by not in REQUESTERS:
            raise ValueError(f"requested_by must be one of {', '.join(REQUESTERS)}")
        for attempt in range(3):
            try:
                return self._add_override(patient, practitioner, reason, requested_by, actor)
            except IntegrityError:
                # Another override for the patient committed between our update and insert
                # (the partial unique index allows one active): do it again on top of it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _add_override(
        self, patient: str, practitioner: str, reason: str, requested_by: str, actor: str
    ) -> dict[str, Any]:
        with self.session() as s:
            return insert_override(
                s,
                patient,
                practitioner,
                reason=reason,
                requested_by=requested_by,
                actor=actor,
                now=now_utc(),
                lock=not self.is_sqlite,
            )

    def remove_override(self, patient: str, actor: str) -> bool:
        now = now_utc()
        with self.session() as s:
            result = s.execute(
                update(Override)
                .where(Override.patient == patient, Override.removed_at.is_(None))
                .values(removed_at=now, removed_by=actor)
            )
            removed = bool(getattr(result, "rowcount", 0))
            if removed:
                queue_patient(s, patient, "override removed", now)
                add_audit(s, actor, "override-removed", patient, {})
            return removed

    def active_overrides(self) -> dict[str, ManualAssignment]:
        with self.session() as s:
            rows = s.scalars(select(Override).where(Override.removed_at.is_(None)))
            return {
                r.patient: ManualAssignment(
                    patient=r.patient,
                    practitioner=r.practitioner,
                    reason=r.reason,
                    requested_by=r.requested_by,
                    confirmation="confirmed",
                )
                for r in rows
            }

    def override_for(self, patient: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(
                select(Override).where(Override.patient == patient, Override.removed_at.is_(None))
            ).first()
            return override_dict(row) if row is not None else None

    def overrides(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            return overrides_of(s, patient)

    # ------------------------------------------------------------ patient statuses

    def set_status(self, patient: str, status: str, *, reason: str, actor: str) -> dict[str, Any]:
        """Record a status (it replaces any in force); the next refresh takes the patient off
        every panel (the patient is queued)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        for attempt in range(3):
            try:
                return self._set_status(patient, status, reason, actor)
            except IntegrityError:
                # A status for the patient committed between our update and insert (one may be
                # in force: a partial unique index): do it again on top of it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _set_status(self, patient: str, status: str, reason: str, actor: str) -> dict[str, Any]:
        now = now_utc()
        with self.session() as s:
            s.execute(
                update(PatientStatus)
                .where(PatientStatus.patient == patient, PatientStatus.cleared_at.is_(None))
                .values(cleared_at=now, cleared_by=actor)
            )
            row = PatientStatus(
                patient=patient, status=status, reason=reason, actor=actor, created_at=now
            )
            s.add(row)
            queue_patient(s, patient, "status", now)
            add_audit(s, actor, "status", patient, {"status": status, "reason": reason})
            s.flush()
            return status_dict(row)

    def clear_status(self, patient: str, actor: str) -> bool:
        """Clear the status in force (False when none is); the next refresh decides again."""
        now = now_utc()
        with self.session() as s:
            result = s.execute(
                update(PatientStatus)
                .where(PatientStatus.patient == patient, PatientStatus.cleared_at.is_(None))
                .values(cleared_at=now, cleared_by=actor)
            )
            cleared = bool(getattr(result, "rowcount", 0))
            if cleared:
                queue_patient(s, patient, "status cleared", now)
                add_audit(s, actor, "status-cleared", patient, {})
            return cleared

    def active_statuses(self) -> dict[str, str]:
        """patient -> status, for every status in force (what a pass passes to attribution)."""
        with self.session() as s:
            rows = s.execute(
                select(PatientStatus.patient, PatientStatus.status).where(
                    PatientStatus.cleared_at.is_(None)
                )
            )
            return {patient: status for patient, status in rows}

    def status_for(self, patient: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(
                select(PatientStatus).where(
                    PatientStatus.patient == patient, PatientStatus.cleared_at.is_(None)
                )
            ).first()
            return status_dict(row) if row is not None else None

    def statuses(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            return statuses_of(s, patient)

    # ------------------------------------------------------------ confirmations

    def confirm(
        self,
        patient: str,
        practitioner: str,
        *,
        confirmed_by: str,
        actor: str,
        note: str = "",
        method: str | None = None,
        confirmed_on: date | None = None,
    ) -> dict[str, Any]:
        """Confirm the patient's current clinician, by the clinician or by the patient (each
        side's newest confirmation counts; both may hold at once). Shown at once; it holds the
        assignment from the next pass until it expires (`review.confirmation_months` after
        `confirmed_on`, today when not given) and lapses if the patient moves to another
        clinician. `method`: how it was given (METHODS)."""
        if confirmed_by not in CONFIRMERS:
            raise ValueError(f"confirmed_by must be one of {', '.join(CONFIRMERS)}")
        if method is not None and method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        now = now_utc()
        day = (confirmed_on or now.date()).isoformat()
        column = (
            PatientState.clinician_confirmed
            if confirmed_by == "clinician"
            else PatientState.patient_confirmed
        )
        other = "patient" if confirmed_by == "clinician" else "clinician"
        with self.session() as s:
            # The update first: it takes the row's write lock, so a refresh committing a new
            # assignment cannot slip between the check and the confirmation. The summary keeps
            # the other side when it held on the last pass.
            result = s.execute(
                update(PatientState)
                .where(
                    PatientState.patient == patient,
                    PatientState.practitioner == practitioner,
                    PatientState.status == "assigned",
                )
                .values(
                    {
                        # A confirmation entered late keeps a newer one of the same side.
                        column: case((column > day, column), else_=day),
                        PatientState.confirmation: case(
                            (
                                PatientState.confirmation.in_((other, "both")),
                                "both",
                            ),
                            else_=confirmed_by,
                        ),
                    }
                )
            )
            if getattr(result, "rowcount", 0) != 1:
                raise AssignmentChanged(
                    f"{patient} is not assigned to {practitioner} (any "
                    "more): reload and confirm the current assignment"
                )
            row = Confirmation(
                patient=patient,
                practitioner=practitioner,
                confirmed_by=confirmed_by,
                note=note,
                actor=actor,
                created_at=now,
                method=method,
                confirmed_on=day,
            )
            s.add(row)
            add_audit(
                s,
                actor,
                "confirm",
                patient,
                {
                    "practitioner": practitioner,
                    "confirmed_by": confirmed_by,
                    "method": method,
                    "confirmed_on": day,
                    "note": note,
                },
            )
            recompute_clinicians(s, [practitioner])
            s.flush()
            return {"id": row.id, "patient": row.patient, **confirmation_dict(row)}

    def confirmations(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            return confirmations_of(s, patient)

    # ------------------------------------------------------------ the pending-patient queue

    def pending_patients(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(PendingPatient.patient).order_by(PendingPatient.patient)))

    def queue_patients(self, patients: Iterable[str], reason: str) -> None:
        now = now_utc()
        with self.session() as s:
            for patient in patients:
                queue_patient(s, patient, reason, now)

    # ------------------------------------------------------------ audit

    def audit(self, limit: int = 100, patient: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            stmt = select(AuditEntry)
            if patient:
                stmt = stmt.where(AuditEntry.patient == patient)
            rows = s.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit))
            return [audit_dict(r) for r in rows]

    def record_audit(
        self, actor: str, action: str, patient: str | None, detail: Mapping[str, Any]
    ) -> None:
        with self.session() as s:
            add_audit(s, actor, action, patient, detail)


def queue_patient(s: Session, patient: str, reason: str, now: datetime) -> None:
    """Put a patient on the queue the next pass recomputes, inside the caller's transaction
    `s` (a refresh queues the patients whose write-back failed in its final one).

    An upsert: concurrent writers never collide on the key. `since` moves to `now`, so a run
    that started earlier does not take the entry off the queue."""
    values = {"patient": patient, "reason": reason, "since": now}
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(PendingPatient).values(**values)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(PendingPatient).values(**values)
    s.execute(
        stmt.on_conflict_do_update(
            index_elements=["patient"], set_={"reason": reason, "since": now}
        )
    )


def insert_override(
    s: Session,
    patient: str,
    practitioner: str,
    *,
    reason: str,
    requested_by: str,
    actor: str,
    now: datetime,
    lock: bool,
) -> dict[str, Any]:
    """A manual assignment in the caller's transaction `s`: any override in force ends, the
    patient is queued for the next pass, and the change is audited. `lock` (PostgreSQL):
    overrides for one patient saved at once queue on an advisory lock, one transaction at a
    time (SQLite serialises writers by itself); the unique index stays the backstop."""
    if lock:
        key = int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big", signed=True)
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    s.execute(
        update(Override)
        .where(Override.patient == patient, Override.removed_at.is_(None))
        .values(removed_at=now, removed_by=actor)
    )
    row = Override(
        patient=patient,
        practitioner=practitioner,
        reason=reason,
        requested_by=requested_by,
        actor=actor,
        created_at=now,
    )
    s.add(row)
    queue_patient(s, patient, "override", now)
    add_audit(
        s,
        actor,
        "override",
        patient,
        {"practitioner": practitioner, "reason": reason, "requested_by": requested_by},
    )
    s.flush()
    return override_dict(row)


def add_audit(
    s: Session, actor: str, action: str, patient: str | None, detail: Mapping[str, Any]
) -> None:
    """An audit entry, in the transaction of the change it records."""
    s.add(
        AuditEntry(at=now_utc(), actor=actor, action=action, patient=patient, detail=dict(detail))
    )


def override_dict(r: Override) -> dict[str, Any]:
    return {
        "id": r.id,
        "patient": r.patient,
        "practitioner": r.practitioner,
        "reason": r.reason,
        "requested_by": r.requested_by,
        "actor": r.actor,
        "created_at": iso(r.created_at),
        "removed_at": iso(r.removed_at),
        "removed_by": r.removed_by,
        "applied_run": r.applied_run,
    }


def status_dict(r: PatientStatus) -> dict[str, Any]:
    return {
        "id": r.id,
        "patient": r.patient,
        "status": r.status,
        "reason": r.reason,
        "actor": r.actor,
        "created_at": iso(r.created_at),
        "cleared_at": iso(r.cleared_at),
        "cleared_by": r.cleared_by,
    }


def statuses_of(s: Session, patient: str) -> list[dict[str, Any]]:
    """A patient's statuses, oldest first, read in the caller's session `s`."""
    rows = s.scalars(
        select(PatientStatus).where(PatientStatus.patient == patient).order_by(PatientStatus.id)
    )
    return [status_dict(r) for r in rows]


def overrides_of(s: Session, patient: str) -> list[dict[str, Any]]:
    """A patient's overrides, oldest first, read in the caller's session `s`."""
    rows = s.scalars(select(Override).where(Override.patient == patient).order_by(Override.id))
    return [override_dict(r) for r in rows]


def confirmations_of(s: Session, patient: str) -> list[dict[str, Any]]:
    """A patient's confirmations, oldest first, read in the caller's session `s`."""
    rows = s.scalars(
        select(Confirmation).where(Confirmation.patient == patient).order_by(Confirmation.id)
    )
    return [confirmation_dict(r) for r in rows]


def confirmation_dict(r: Confirmation) -> dict[str, Any]:
    return {
        "practitioner": r.practitioner,
        "confirmed_by": r.confirmed_by,
        "method": r.method,
        "confirmed_on": r.confirmed_on or (r.created_at.date().isoformat()),
        "note": r.note,
        "actor": r.actor,
        "created_at": iso(r.created_at),
        "ended_at": iso(r.ended_at),
        "ended_by": r.ended_by,
        "ended_reason": r.ended_reason,
    }


def audit_dict(r: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso(r.at),
        "actor": r.actor,
        "action": r.action,
        "patient": r.patient,
        "detail": r.detail,
    }
