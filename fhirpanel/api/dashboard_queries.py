"""Read-side queries only the dashboard needs: the overview's outreach count (cached per
finished run), the run in progress, and which listed patients wait for a refresh. Lists and
totals come from `fhirpanel.store.queries`, shared with the JSON API.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from fhirpanel.store import Store
from fhirpanel.store.models import PatientState, PendingPatient, Run
from fhirpanel.store.queries import has_outreach
from fhirpanel.store.repository import run_dict

# Runs whose results are in the patients table.
STORED = ("succeeded", "partial")
_outreach_counts: dict[tuple[str, int | None], int] = {}
_outreach_lock = threading.Lock()


def outreach_count(store: Store) -> int:
    """Assigned patients flagged for outreach. The flags change only when a run stores its
    results, so the count (which reads every assigned patient) is taken once per such run."""
    with store.session() as s:
        newest = s.scalar(select(func.max(Run.id)).where(Run.status.in_(STORED)))
    key = (store.url, newest)
    with _outreach_lock:
        if key in _outreach_counts:
            return _outreach_counts[key]
    with store.session() as s:
        count = int(s.scalar(select(func.count()).select_from(PatientState).where(
            PatientState.status == "assigned", has_outreach())) or 0)
    with _outreach_lock:
        if len(_outreach_counts) > 64:  # bounded: one entry per store and run
            _outreach_counts.clear()
        _outreach_counts[key] = count
    return count


def running_run(store: Store) -> dict[str, Any] | None:
    """The newest run still marked running while somebody holds the refresh lock."""
    if store.lock_info() is None:
        return None
    with store.session() as s:
        row = s.scalars(select(Run).where(Run.status == "running")
                        .order_by(Run.id.desc()).limit(1)).first()
        return run_dict(row) if row is not None else {"id": None, "kind": "refresh",
                                                      "status": "running"}


def pending_among(store: Store, patients: Sequence[str]) -> set[str]:
    """Which of these patients wait for the next refresh (an override, a failed write)."""
    if not patients:
        return set()
    with store.session() as s:
        return set(s.scalars(select(PendingPatient.patient)
                             .where(PendingPatient.patient.in_(list(patients)))))
