"""Panel reviews, the readiness counts and a panel's members for a transition plan, on the
state store (fhirpanel issue 17 items 4 and 6).

A review records what was done to the panel since the review before it, counted from the
tables people change (each change is audited there too):

- confirmed: confirmations recorded for the clinician;
- moved: overrides recorded that move a patient onto the panel, or off it (the patient was on
  the panel, by the assignment history, when the override was made);
- removed: statuses recorded (moved away, transferred care, dismissed, deceased) for patients
  on the panel when they were recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import distinct, func, or_, select
from sqlalchemy.orm import Session

from fhirpanel.store.engine import CHUNK, iso, now_utc
from fhirpanel.store.models import (
    AssignmentHistory,
    Confirmation,
    Override,
    PanelReview,
    PatientState,
    PatientStatus,
)
from fhirpanel.store.repository import Store
from fhirpanel.store.review import add_audit

REVIEW_ACTION = "panel-review"  # the audit entry of a recorded review
NOTE_LIMIT = 2000


def review_dict(r: PanelReview) -> dict[str, Any]:
    return {
        "id": r.id,
        "practitioner": r.practitioner,
        "actor": r.actor,
        "reviewed_at": iso(r.reviewed_at),
        "since": iso(r.since),
        "patients": r.patients,
        "confirmed": r.confirmed,
        "moved": r.moved,
        "removed": r.removed,
        "note": r.note,
    }


def _on_panel_at(practitioner: str, at: Any, patient: Any) -> Any:
    """The patient was on the clinician's panel at `at`, by the assignment history."""
    return (
        select(AssignmentHistory.id)
        .where(
            AssignmentHistory.patient == patient,
            AssignmentHistory.practitioner == practitioner,
            AssignmentHistory.status == "assigned",
            AssignmentHistory.valid_from <= at,
            or_(AssignmentHistory.valid_to.is_(None), AssignmentHistory.valid_to > at),
        )
        .exists()
    )


def activity_since(s: Session, practitioner: str, since: datetime | None) -> dict[str, int]:
    """Confirmed, moved and removed counts for the panel after `since` (all time when None)."""
    after_c = [Confirmation.created_at > since] if since is not None else []
    after_o = [Override.created_at > since] if since is not None else []
    after_s = [PatientStatus.created_at > since] if since is not None else []
    confirmed = s.scalar(
        select(func.count(distinct(Confirmation.patient))).where(
            Confirmation.practitioner == practitioner, *after_c
        )
    )
    moved = s.scalar(
        select(func.count(distinct(Override.patient))).where(
            *after_o,
            or_(
                Override.practitioner == practitioner,
                _on_panel_at(practitioner, Override.created_at, Override.patient),
            ),
        )
    )
    removed = s.scalar(
        select(func.count(distinct(PatientStatus.patient))).where(
            *after_s,
            _on_panel_at(practitioner, PatientStatus.created_at, PatientStatus.patient),
        )
    )
    return {
        "confirmed": int(confirmed or 0),
        "moved": int(moved or 0),
        "removed": int(removed or 0),
    }


def _latest(s: Session, practitioner: str) -> PanelReview | None:
    return s.scalars(
        select(PanelReview)
        .where(PanelReview.practitioner == practitioner)
        .order_by(PanelReview.reviewed_at.desc(), PanelReview.id.desc())
        .limit(1)
    ).first()


def record_review(store: Store, practitioner: str, *, actor: str, note: str = "") -> dict[str, Any]:
    """Record a review of the panel now, with what was done since the last one; audited."""
    with store.session() as s:
        previous = _latest(s, practitioner)
        since = previous.reviewed_at if previous is not None else None
        counts = activity_since(s, practitioner, since)
        patients = s.scalar(
            select(func.count())
            .select_from(PatientState)
            .where(PatientState.status == "assigned", PatientState.practitioner == practitioner)
        )
        row = PanelReview(
            practitioner=practitioner,
            actor=actor,
            reviewed_at=now_utc(),
            since=since,
            patients=int(patients or 0),
            note=note[:NOTE_LIMIT],
            **counts,
        )
        s.add(row)
        add_audit(
            s, actor, REVIEW_ACTION, None, {"practitioner": practitioner, **counts, "note": note}
        )
        s.flush()
        return review_dict(row)


def reviews_of(store: Store, practitioner: str, limit: int = 20) -> list[dict[str, Any]]:
    """The clinician's panel reviews, newest first."""
    with store.session() as s:
        rows = s.scalars(
            select(PanelReview)
            .where(PanelReview.practitioner == practitioner)
            .order_by(PanelReview.reviewed_at.desc(), PanelReview.id.desc())
            .limit(limit)
        )
        return [review_dict(r) for r in rows]


def last_reviews(store: Store) -> dict[str, dict[str, Any]]:
    """Each reviewed clinician's latest review."""
    with store.session() as s:
        newest = (
            select(PanelReview.practitioner, func.max(PanelReview.id).label("id"))
            .group_by(PanelReview.practitioner)
            .subquery()
        )
        rows = s.scalars(select(PanelReview).join(newest, PanelReview.id == newest.c.id))
        return {r.practitioner: review_dict(r) for r in rows}


def pending_activity(store: Store, practitioner: str) -> dict[str, int]:
    """What a review recorded now would count (since the last review)."""
    with store.session() as s:
        previous = _latest(s, practitioner)
        return activity_since(s, practitioner, previous.reviewed_at if previous else None)


def readiness_counts(store: Store) -> dict[str, int]:
    """Active (not excluded) and assigned patients, and assigned patients whose current
    clinician holds a current confirmation by the clinician and by the patient
    (`patients.confirmation`: what held on the last pass's as-of date, or since recorded; an
    expired confirmation does not count, docs/methods.md s.2.9)."""
    with store.session() as s:
        by_status = {
            str(k): int(v)
            for k, v in s.execute(
                select(PatientState.status, func.count()).group_by(PatientState.status)
            )
        }
        held = {
            str(k): int(v)
            for k, v in s.execute(
                select(PatientState.confirmation, func.count())
                .where(PatientState.status == "assigned")
                .group_by(PatientState.confirmation)
            )
        }
    assigned = by_status.get("assigned", 0)
    return {
        "active": assigned + by_status.get("unassigned", 0),
        "assigned": assigned,
        "confirmed_by_clinician": held.get("clinician", 0) + held.get("both", 0),
        "confirmed_by_patient": held.get("patient", 0) + held.get("both", 0),
    }


def panel_members(store: Store, practitioner: str) -> list[dict[str, Any]]:
    """The clinician's assigned patients: id, tier, weight and visits per clinician (the
    stored report entry's `visits`), by patient."""
    out: list[dict[str, Any]] = []
    with store.session() as s:
        ids = list(
            s.scalars(
                select(PatientState.patient)
                .where(PatientState.status == "assigned", PatientState.practitioner == practitioner)
                .order_by(PatientState.patient)
            )
        )
        for start in range(0, len(ids), CHUNK):
            batch = ids[start : start + CHUNK]
            for patient, tier, weight, detail in s.execute(
                select(
                    PatientState.patient,
                    PatientState.tier,
                    PatientState.weight,
                    PatientState.detail,
                )
                .where(PatientState.patient.in_(batch))
                .order_by(PatientState.patient)
            ):
                visits = (detail or {}).get("visits") or {}
                out.append(
                    {
                        "patient": patient,
                        "tier": tier,
                        "weight": float(weight if weight is not None else 1.0),
                        "visits": {
                            str(k): int(v)
                            for k, v in visits.items()
                            if isinstance(v, int) and not isinstance(v, bool)
                        },
                    }
                )
    return out


__all__ = [
    "REVIEW_ACTION",
    "activity_since",
    "last_reviews",
    "panel_members",
    "pending_activity",
    "readiness_counts",
    "record_review",
    "review_dict",
    "reviews_of",
]
