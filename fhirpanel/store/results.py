"""A pass's results: each patient's current assignment and risk (`patients`), their assignment
history (`assignment_history`) and the clinicians' panels (`clinicians`); saving them, and
reading them back.

The store takes plain rows (`PatientRow`, `ClinicianRow`, bundled as `ResultRows`), never the
domain's outcome: the caller maps a pass's outcome to rows (`fhirpanel.jobs.rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from fhirpanel.store.engine import CHUNK, StoreEngine, iso, now_utc
from fhirpanel.store.models import (
    AssignmentHistory,
    Clinician,
    Override,
    PatientState,
    PendingPatient,
)
from fhirpanel.store.models import ProposedMove as MoveModel


@dataclass(frozen=True)
class PatientRow:
    """One patient as a pass computed them: the `patients` columns a pass decides."""

    patient: str
    status: str  # assigned | unassigned | excluded
    practitioner: str | None = None
    rule: str | None = None  # `manual` for an override in force
    step: str | None = None
    reason: str | None = None
    tier: int | None = None
    charlson: int | None = None
    hcc: float | None = None
    ccm_eligible: bool = False
    weight: float = 1.0  # age/sex weight (panel sizing)
    last_visit: str | None = None  # YYYY-MM-DD
    outreach: tuple[str, ...] = ()
    suggested: str | None = None
    suggestion_reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)  # the report's entry


@dataclass(frozen=True)
class ClinicianRow:
    """One clinician's panel as a full pass computed it."""

    practitioner: str
    name: str | None
    eligible: bool
    pediatric: bool
    size: int
    risk_adjusted_size: float
    capacity: float
    open_capacity: float
    hcc_adjusted_size: float | None = None
    tiers: Mapping[str, int] = field(default_factory=dict)
    supply: float | None = None  # visits a year
    demand: float | None = None  # visits per patient per year
    expected_visits: float | None = None
    blended_size: float | None = None
    capacity_method: str | None = None  # observed | configured
    capacity_basis: str | None = None  # how capacity was found, in words
    relative: Mapping[str, Any] | None = None  # the report's `relative` (None: not eligible)


# A proposed move's statuses a pass sets (a person sets accepted or dismissed).
MOVE_OPEN, MOVE_SUPERSEDED = "open", "superseded"


@dataclass(frozen=True)
class MoveRow:
    """A move one pass proposes, as the store keeps it."""

    patient: str
    from_practitioner: str
    to_practitioner: str
    rule: str
    step: str | None
    window_months: int | None
    visits: Mapping[str, int]
    evidence: tuple[str, ...]
    held_by: tuple[str, ...]


@dataclass(frozen=True)
class ResultRows:
    """What one pass stores. `clinicians`: every panel, for a full pass (it replaces them all);
    None for an incremental pass, whose panel figures are recomputed from the patients table.
    `moves`: the moves a confirmation held back among these patients."""

    patients: tuple[PatientRow, ...]
    clinicians: tuple[ClinicianRow, ...] | None = None
    moves: tuple[MoveRow, ...] = ()


class ResultStore(StoreEngine):
    """Patients, their history and the clinicians' panels."""

    def save_results(
        self,
        s: Session,
        rows: ResultRows,
        run_id: int,
        *,
        full: bool,
        done_pending: Iterable[str] = (),
        started_at: datetime | None = None,
        gone: Sequence[str] = (),
        remove_missing: bool = True,
        confirmation_cutoff: date | None = None,
    ) -> dict[str, int]:
        """Store the patients a run computed (all of them for a full run, which also removes
        patients no longer on the server), their history, and the panels. Returns counts of
        changed assignments.

        `started_at`: when the run read its overrides and queue. Queue entries and overrides
        made after it (while the run computed) stay pending for the next pass.

        `confirmation_cutoff`: confirmations made on or before this day have expired (the
        pass's as-of date less the confirmation period); None: none has."""
        if full and rows.clinicians is None:
            raise ValueError("a full pass replaces every panel: give ResultRows.clinicians")
        now = now_utc()
        cutoff = started_at or now
        ids = [p.patient for p in rows.patients]
        existing = _existing_states(s, ids, full=full)
        overrides = {
            r.patient
            for r in s.scalars(
                select(Override).where(Override.removed_at.is_(None), Override.created_at <= cutoff)
            )
        }
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        close_history: list[str] = []
        changed = 0
        touched_clinicians: set[str] = set()
        moved: list[str] = []  # left their clinician: that clinician's confirmations lapse
        for p in rows.patients:
            row = _patient_values(
                p, override=p.patient in overrides and p.rule == "manual", run_id=run_id, now=now
            )
            before = existing.get(p.patient)
            if p.practitioner:
                touched_clinicians.add(p.practitioner)
            if before is None:
                inserts.append(row)
            else:
                updates.append(row)
                if before[1]:
                    touched_clinicians.add(before[1])
                if before[1] and (p.status, p.practitioner) != ("assigned", before[1]):
                    moved.append(p.patient)
            key = (p.status, p.practitioner, p.rule)
            if before is None or before != key:
                changed += before is not None
                if before is not None:
                    close_history.append(p.patient)
                history.append(
                    {
                        "patient": p.patient,
                        "status": p.status,
                        "practitioner": p.practitioner,
                        "rule": p.rule,
                        "step": p.step,
                        "valid_from": now,
                        "valid_to": None,
                        "run_id": run_id,
                    }
                )
        for start in range(0, len(close_history), CHUNK):
            s.execute(
                update(AssignmentHistory)
                .where(
                    AssignmentHistory.patient.in_(close_history[start : start + CHUNK]),
                    AssignmentHistory.valid_to.is_(None),
                )
                .values(valid_to=now)
            )
        if inserts:
            s.execute(insert(PatientState), inserts)
        if updates:
            s.execute(update(PatientState), updates)
        if history:
            s.execute(insert(AssignmentHistory), history)
        # Patients no longer on the server: every one a full run did not see, and those an
        # incremental pass was told of (`gone`: changed, then not found).
        if full:
            # `remove_missing=False`: the read was known to be incomplete (a Bulk export
            # reported errors): absence proves nothing, so nobody is removed.
            vanished = sorted(set(existing) - set(ids)) if remove_missing else []
        else:
            vanished = sorted(set(gone) - set(ids))
        for start in range(0, len(vanished), CHUNK):
            batch = vanished[start : start + CHUNK]
            if not full:
                touched_clinicians.update(
                    p
                    for p in s.scalars(
                        select(PatientState.practitioner).where(PatientState.patient.in_(batch))
                    )
                    if p
                )
            s.execute(
                update(AssignmentHistory)
                .where(AssignmentHistory.patient.in_(batch), AssignmentHistory.valid_to.is_(None))
                .values(valid_to=now)
            )
            s.execute(delete(PatientState).where(PatientState.patient.in_(batch)))
        supersede_moves_of(s, vanished, now)
        removed = len(vanished)
        if full:
            _save_clinicians(s, rows.clinicians or (), now)
        # Confirmations in SQL, after the rows are written and inside this transaction: a
        # confirm() committed while the run computed is not overwritten.
        _refresh_confirmations(s, None if full else ids, moved, confirmation_cutoff)
        moves = save_moves(s, rows.moves, None if full else ids, run_id, now)
        if not full:
            recompute_clinicians(s, sorted(touched_clinicians))
        else:
            recompute_clinicians(s, list(s.scalars(select(Clinician.practitioner))), sizes=False)
        # The queue entries and overrides this pass took in are done with.
        done = list(done_pending)
        for start in range(0, len(done), CHUNK):
            s.execute(
                delete(PendingPatient).where(
                    PendingPatient.patient.in_(done[start : start + CHUNK]),
                    PendingPatient.since <= cutoff,
                )
            )
        applied = sorted(overrides & set(ids))
        for start in range(0, len(applied), CHUNK):
            s.execute(
                update(Override)
                .where(
                    Override.removed_at.is_(None),
                    Override.applied_run.is_(None),
                    Override.created_at <= cutoff,
                    Override.patient.in_(applied[start : start + CHUNK]),
                )
                .values(applied_run=run_id)
            )
        return {
            "patients_stored": len(ids),
            "assignments_changed": changed,
            "patients_new": len(inserts),
            "patients_removed": removed,
            **moves,
        }

    def assignment_states(self) -> dict[str, tuple[str, str | None]]:
        """patient -> (status, practitioner) as stored: what a pass's changes are measured on."""
        with self.session() as s:
            return {
                p: (st, pr)
                for p, st, pr in s.execute(
                    select(PatientState.patient, PatientState.status, PatientState.practitioner)
                )
            }

    def patient_ids(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(PatientState.patient).order_by(PatientState.patient)))

    def patient_state(self, patient: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(PatientState, patient)
            return patient_dict(row) if row is not None else None

    def history(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            return history_of(s, patient)

    def clinicians(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Clinician).order_by(Clinician.practitioner))
            return [clinician_dict(r) for r in rows]

    def clinician(self, practitioner: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(Clinician, practitioner)
            return clinician_dict(row) if row is not None else None


def recompute_clinicians(s: Session, practitioners: Sequence[str], *, sizes: bool = True) -> None:
    """Panel figures from the patients table: size, risk-adjusted size, tiers, unconfirmed.
    Capacity stays as the last full run computed it, and so do supply, demand, expected visits,
    the blended size, how capacity was found and `relative` (the peers' medians need every
    panel): they stay as the last full pass stored them until the next one."""
    wanted = sorted(set(practitioners))
    for start in range(0, len(wanted), CHUNK):
        batch = wanted[start : start + CHUNK]
        assigned = PatientState.status == "assigned"
        totals = {
            p: (int(n), float(w or 0.0), int(u or 0))
            for p, n, w, u in s.execute(
                select(
                    PatientState.practitioner,
                    func.count(),
                    func.sum(PatientState.weight),
                    func.sum(case((PatientState.confirmation == "proposed", 1), else_=0)),
                )
                .where(assigned, PatientState.practitioner.in_(batch))
                .group_by(PatientState.practitioner)
            )
        }
        tiers: dict[str, dict[str, int]] = {}
        for p, tier, n in s.execute(
            select(PatientState.practitioner, PatientState.tier, func.count())
            .where(assigned, PatientState.practitioner.in_(batch), PatientState.tier.is_not(None))
            .group_by(PatientState.practitioner, PatientState.tier)
        ):
            tiers.setdefault(str(p), {})[str(tier)] = int(n)
        for practitioner in batch:
            row = s.get(Clinician, practitioner)
            if row is None:
                continue
            size, weight, unconfirmed = totals.get(practitioner, (0, 0.0, 0))
            row.unconfirmed = unconfirmed
            if sizes:
                row.size = size
                row.risk_adjusted_size = weight
                row.open_capacity = row.capacity - weight
                known = dict.fromkeys(row.tiers or {}, 0)
                row.tiers = dict(sorted({**known, **tiers.get(practitioner, {})}.items()))
                row.updated_at = now_utc()


def _patient_values(p: PatientRow, *, override: bool, run_id: int, now: datetime) -> dict[str, Any]:
    return {
        "patient": p.patient,
        "status": p.status,
        "practitioner": p.practitioner,
        "rule": p.rule,
        "step": p.step,
        "reason": p.reason,
        "tier": p.tier,
        "charlson": p.charlson,
        "hcc": p.hcc,
        "ccm_eligible": p.ccm_eligible,
        "weight": p.weight,
        "last_visit": p.last_visit,
        "override": override,
        "outreach": list(p.outreach),
        "suggested": p.suggested,
        "suggestion_reason": p.suggestion_reason,
        "detail": dict(p.detail),
        "run_id": run_id,
        "updated_at": now,
    }


def _existing_states(
    s: Session, ids: Sequence[str], *, full: bool
) -> dict[str, tuple[str, str | None, str | None]]:
    cols = (PatientState.patient, PatientState.status, PatientState.practitioner, PatientState.rule)
    if full:
        return {p: (st, pr, ru) for p, st, pr, ru in s.execute(select(*cols))}
    out: dict[str, tuple[str, str | None, str | None]] = {}
    for start in range(0, len(ids), CHUNK):
        for p, st, pr, ru in s.execute(
            select(*cols).where(PatientState.patient.in_(ids[start : start + CHUNK]))
        ):
            out[p] = (st, pr, ru)
    return out


def _refresh_confirmations(
    s: Session, ids: Sequence[str] | None, moved: Sequence[str], cutoff: date | None
) -> None:
    """Each patient's confirmation summary. A patient who left their clinician loses that
    clinician's confirmation days (one made before a move away and back has lapsed); then the
    summary names the sides whose day is after `cutoff` (None: every recorded day counts)."""
    for start in range(0, len(moved), CHUNK):
        s.execute(
            update(PatientState)
            .where(PatientState.patient.in_(moved[start : start + CHUNK]))
            .values(clinician_confirmed=None, patient_confirmed=None),
            execution_options={"synchronize_session": False},
        )
    floor = cutoff.isoformat() if cutoff is not None else ""
    # ISO days compare as text on SQLite and PostgreSQL alike.
    by_clinician = PatientState.clinician_confirmed > floor
    by_patient = PatientState.patient_confirmed > floor
    value = case(
        (by_clinician & by_patient, "both"),
        (by_clinician, "clinician"),
        (by_patient, "patient"),
        else_="proposed",
    )
    if ids is None:
        s.execute(
            update(PatientState).values(confirmation=value),
            execution_options={"synchronize_session": False},
        )
        return
    for start in range(0, len(ids), CHUNK):
        s.execute(
            update(PatientState)
            .where(PatientState.patient.in_(ids[start : start + CHUNK]))
            .values(confirmation=value),
            execution_options={"synchronize_session": False},
        )


def save_moves(
    s: Session, moves: Sequence[MoveRow], patients: Sequence[str] | None, run_id: int, now: datetime
) -> dict[str, int]:
    """The pass's proposed moves for the patients it computed (`patients`; None: every one).
    An open move proposed again on the same evidence stays open (its `seen_run` moves on); one
    not proposed again, or on other evidence, is superseded; a new one opens."""
    proposed = {m.patient: m for m in moves}
    stmt = select(MoveModel).where(MoveModel.status == MOVE_OPEN)
    if patients is None:
        open_rows = list(s.scalars(stmt))
    else:
        ids = list(patients)
        open_rows = []
        for start in range(0, len(ids), CHUNK):
            batch = ids[start : start + CHUNK]
            open_rows.extend(s.scalars(stmt.where(MoveModel.patient.in_(batch))))
    superseded = 0
    for row in open_rows:
        move = proposed.get(row.patient)
        if move is not None and (
            row.from_practitioner,
            row.to_practitioner,
            dict(row.visits or {}),
        ) == (move.from_practitioner, move.to_practitioner, dict(move.visits)):
            row.seen_run = run_id
            row.held_by = ",".join(move.held_by)
            del proposed[row.patient]
        else:
            row.status, row.decided_at = MOVE_SUPERSEDED, now
            superseded += 1
    s.flush()  # the superseded rows leave the one-open-move index before new ones arrive
    for move in proposed.values():
        s.add(
            MoveModel(
                patient=move.patient,
                from_practitioner=move.from_practitioner,
                to_practitioner=move.to_practitioner,
                rule=move.rule,
                step=move.step,
                window_months=move.window_months,
                visits=dict(move.visits),
                evidence=list(move.evidence),
                held_by=",".join(move.held_by),
                status=MOVE_OPEN,
                run_id=run_id,
                seen_run=run_id,
                created_at=now,
                note="",
            )
        )
    s.flush()
    return {"moves_proposed": len(proposed), "moves_superseded": superseded}


def supersede_moves_of(s: Session, patients: Sequence[str], now: datetime) -> None:
    """Open moves of patients no longer on the server end with them."""
    for start in range(0, len(patients), CHUNK):
        s.execute(
            update(MoveModel)
            .where(
                MoveModel.status == MOVE_OPEN,
                MoveModel.patient.in_(patients[start : start + CHUNK]),
            )
            .values(status=MOVE_SUPERSEDED, decided_at=now)
        )


def _save_clinicians(s: Session, clinicians: Iterable[ClinicianRow], now: datetime) -> None:
    s.execute(delete(Clinician))
    rows = [
        {
            "practitioner": c.practitioner,
            "name": c.name,
            "eligible": c.eligible,
            "pediatric": c.pediatric,
            "size": c.size,
            "risk_adjusted_size": c.risk_adjusted_size,
            "hcc_adjusted_size": c.hcc_adjusted_size,
            "capacity": c.capacity,
            "open_capacity": c.open_capacity,
            "tiers": dict(c.tiers),
            "unconfirmed": 0,
            "supply": c.supply,
            "demand": c.demand,
            "expected_visits": c.expected_visits,
            "blended_size": c.blended_size,
            "capacity_method": c.capacity_method,
            "capacity_basis": c.capacity_basis,
            "relative": dict(c.relative) if c.relative is not None else None,
            "updated_at": now,
        }
        for c in clinicians
    ]
    if rows:
        s.execute(insert(Clinician), rows)


def history_of(s: Session, patient: str) -> list[dict[str, Any]]:
    """A patient's assignment history, oldest first, read in the caller's session `s`."""
    rows = s.scalars(
        select(AssignmentHistory)
        .where(AssignmentHistory.patient == patient)
        .order_by(AssignmentHistory.id)
    )
    return [
        {
            "status": r.status,
            "practitioner": r.practitioner,
            "rule": r.rule,
            "step": r.step,
            "valid_from": iso(r.valid_from),
            "valid_to": iso(r.valid_to),
            "run_id": r.run_id,
        }
        for r in rows
    ]


def patient_dict(r: PatientState) -> dict[str, Any]:
    return {
        "patient": r.patient,
        "status": r.status,
        "practitioner": r.practitioner,
        "rule": r.rule,
        "step": r.step,
        "reason": r.reason,
        "tier": r.tier,
        "charlson": r.charlson,
        "hcc": r.hcc,
        "ccm_eligible": r.ccm_eligible,
        "weight": r.weight,
        "last_visit": r.last_visit,
        "confirmation": r.confirmation,
        "clinician_confirmed": r.clinician_confirmed,
        "patient_confirmed": r.patient_confirmed,
        "override": r.override,
        "outreach": r.outreach or [],
        "suggested": r.suggested,
        "suggestion_reason": r.suggestion_reason,
        "detail": r.detail or {},
        "run_id": r.run_id,
        "updated_at": iso(r.updated_at),
    }


def clinician_dict(r: Clinician) -> dict[str, Any]:
    return {
        "practitioner": r.practitioner,
        "name": r.name,
        "eligible": r.eligible,
        "pediatric": r.pediatric,
        "size": r.size,
        "risk_adjusted_size": round(r.risk_adjusted_size, 1),
        "hcc_adjusted_size": (
            round(r.hcc_adjusted_size, 1) if r.hcc_adjusted_size is not None else None
        ),
        "capacity": round(r.capacity),
        "open_capacity": round(r.open_capacity, 1),
        "tiers": r.tiers or {},
        "unconfirmed": r.unconfirmed,
        # As the run report rounds them; share_used follows the current risk-adjusted size.
        "supply": _round(r.supply, 1),
        "demand": _round(r.demand, 3),
        "expected_visits": _round(r.expected_visits, 1),
        "share_used": round(r.risk_adjusted_size / r.capacity, 3) if r.capacity > 0 else None,
        "capacity_method": r.capacity_method,
        "capacity_basis": r.capacity_basis,
        "blended_size": _round(r.blended_size, 1),
        "relative": r.relative,
        "updated_at": iso(r.updated_at),
    }


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None
