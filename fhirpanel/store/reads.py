"""Reads that assemble more than one table in one session: a patient's whole record for its
explanation (one snapshot, so the state, history, overrides and audit agree with each other),
and what the dashboard's banner and lists add to `fhirpanel.store.queries`: the overview's
outreach count (cached per finished run), the run in progress, and which listed patients wait
for a refresh. Everything returned is plain dicts, shaped as the `Store` methods shape them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from fhirpanel.store.engine import iso
from fhirpanel.store.models import (
    AuditEntry,
    Context,
    LedgerEntry,
    PatientState,
    PendingPatient,
    Run,
)
from fhirpanel.store.queries import has_outreach
from fhirpanel.store.repository import Store, patient_dict, run_dict
from fhirpanel.store.results import history_of
from fhirpanel.store.review import audit_dict, confirmations_of, overrides_of, statuses_of
from fhirpanel.vocabulary import RunStatus

# Runs whose results are in the patients table.
STORED = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
_outreach_counts: dict[tuple[str, int | None], int] = {}
_outreach_lock = threading.Lock()


# ---------------------------------------------------------------- one patient


def patient_record(
    store: Store, patient: str, *, ledger: Sequence[tuple[str, str]] = (), audit_limit: int = 50
) -> dict[str, Any] | None:
    """Everything stored about one patient, read in one session; None when the last refresh
    has no such patient. `ledger`: the (resource type, identifier) pairs of what may have been
    written for the patient; each comes back under its type, None when not written.

    Keys: `as_of` (the last full pass's), `state` (as `Store.patient_state`), `history`,
    `overrides`, `active_override`, `confirmations`, `statuses`, `active_status`, `pending`,
    `audit` (newest first, at most `audit_limit`), `ledger`."""
    with store.session() as s:
        row = s.get(PatientState, patient)
        if row is None:
            return None
        history = history_of(s, patient)
        overrides = overrides_of(s, patient)
        confirmations = confirmations_of(s, patient)
        statuses = statuses_of(s, patient)
        audit = [
            audit_dict(r)
            for r in s.scalars(
                select(AuditEntry)
                .where(AuditEntry.patient == patient)
                .order_by(AuditEntry.id.desc())
                .limit(audit_limit)
            )
        ]
        written: dict[str, dict[str, Any] | None] = {}
        for rtype, identifier in ledger:
            entry = s.get(LedgerEntry, (rtype, identifier))
            written[rtype] = (
                None
                if entry is None
                else {
                    "rtype": rtype,
                    "identifier": identifier,
                    "id": entry.server_id,
                    "version": entry.version,
                    "hash": entry.content_hash,
                    "updated_at": iso(entry.updated_at),
                }
            )
        pending = s.get(PendingPatient, patient) is not None
        as_of = s.get(Context, "as_of")  # the last full pass's as-of date
        return {
            "as_of": as_of.value if as_of is not None else None,
            "state": patient_dict(row),
            "history": history,
            "overrides": overrides,
            # One active override at most (a partial unique index, migration 0003).
            "active_override": next((o for o in overrides if o["removed_at"] is None), None),
            "confirmations": confirmations,
            "statuses": statuses,
            # One status in force at most (a partial unique index, migration 0005).
            "active_status": next((x for x in statuses if x["cleared_at"] is None), None),
            "pending": pending,
            "audit": audit,
            "ledger": written,
        }


# ---------------------------------------------------------------- the dashboard's extras


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
        count = int(
            s.scalar(
                select(func.count())
                .select_from(PatientState)
                .where(PatientState.status == "assigned", has_outreach())
            )
            or 0
        )
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
        row = s.scalars(
            select(Run).where(Run.status == RunStatus.RUNNING).order_by(Run.id.desc()).limit(1)
        ).first()
        return (
            run_dict(row)
            if row is not None
            else {"id": None, "kind": "refresh", "status": RunStatus.RUNNING.value}
        )


def pending_among(store: Store, patients: Sequence[str]) -> set[str]:
    """Which of these patients wait for the next refresh (an override, a failed write)."""
    if not patients:
        return set()
    with store.session() as s:
        return set(
            s.scalars(
                select(PendingPatient.patient).where(PendingPatient.patient.in_(list(patients)))
            )
        )
