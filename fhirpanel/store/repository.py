"""The state store: runs, the refresh lock, watermarks, per-patient state and history, panels,
overrides, confirmations, audit and the write-back ledger.

SQLite (a file under `var/`) is the embedded default; PostgreSQL by URL. The schema is created
and upgraded by Alembic (`Store.upgrade`, run on open). Writers keep transactions short: a
refresh computes first and commits its results, the watermark and the ledger in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Engine,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fhirpanel.domain.attribution import ManualAssignment
from fhirpanel.errors import ConfigError, ExitCode, FhirpanelError
from fhirpanel.store.lease import holder_is_dead, new_holder
from fhirpanel.store.models import (
    AssignmentHistory,
    AuditEntry,
    Clinician,
    Confirmation,
    Context,
    LedgerEntry,
    Lock,
    Override,
    PatientState,
    PendingPatient,
    Run,
    Watermark,
)

if TYPE_CHECKING:
    from fhirpanel.domain.outcome import RunOutcome

try:  # POSIX: the SQLite migration lock (Windows has none and migrates unguarded)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
REFRESH_LOCK = "refresh"
WORKER_HEARTBEAT = "worker-heartbeat"
MIGRATION_LOCK_KEY = 7_301_246_173  # any constant, the same in every process
CHUNK = 500  # ids per IN (...) clause: well under SQLite's and PostgreSQL's parameter limits
REQUESTERS = ("clinician", "patient", "family", "staff")
CONFIRMERS = ("clinician", "patient")


class StoreError(FhirpanelError):
    """The state store cannot be opened or used (an unreachable database is not a bug)."""

    exit_code = ExitCode.STORE


class NotHeld(FhirpanelError):
    """Accepting a run that is not held."""


class AssignmentChanged(FhirpanelError):
    """A change asked about an assignment that no longer holds (a refresh moved the patient)."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def lock_holder_id() -> str:
    """Who holds a lock: host, process, its start time and a random part (store/lease.py)."""
    return new_holder()


class Store:
    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"database_url is not a valid SQLAlchemy URL: {exc}") from exc
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # Threads (the worker's hook server, the API) share the engine; wait for the
            # writer's lock rather than fail at once.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(url)

    def describe(self) -> str:
        """The URL without a password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock():
            try:
                with self.engine.begin() as connection:
                    if not self.is_sqlite:
                        # The worker and the API starting together on an empty database: one
                        # migrates, the other waits.
                        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                           {"key": MIGRATION_LOCK_KEY})
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot migrate the store at {self.describe()}: "
                                 f"{' '.join(str(exc).split())[:300]}") from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite: processes starting together on a new file migrate one after the other. Its
        DDL commits statement by statement, so a transaction alone cannot keep a second
        process from meeting half of the first one's tables: a lock file beside it does."""
        database = make_url(self.url).database or ""
        if not self.is_sqlite or not database or database == ":memory:" or fcntl is None:
            yield
            return
        with open(f"{database}.migrate-lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back on an exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    # ------------------------------------------------------------ the refresh lock

    def try_lock(self, holder: str, stale_seconds: float, name: str = REFRESH_LOCK) -> bool:
        """Take the lease if it is free or stale (its holder stopped heartbeating). Atomic: an
        insert, or a compare-and-swap update of a stale row."""
        now = now_utc()
        try:
            with self.session() as s:
                s.execute(insert(Lock).values(name=name, holder=holder, acquired_at=now,
                                              heartbeat_at=now))
            return True
        except IntegrityError:
            pass
        with self.session() as s:
            row = s.get(Lock, name)
            if row is None:  # released meanwhile: try once more next time
                return False
            beat = _aware(row.heartbeat_at) or now
            previous = row.holder  # the update below refreshes `row` in the session
            dead = previous != holder and holder_is_dead(previous)
            if previous != holder and not dead and (now - beat).total_seconds() < stale_seconds:
                return False
            result = s.execute(update(Lock).where(
                Lock.name == name, Lock.holder == previous,
                Lock.heartbeat_at == row.heartbeat_at,
            ).values(holder=holder, acquired_at=now, heartbeat_at=now))
            taken = bool(getattr(result, "rowcount", 0) == 1)
            if taken and previous != holder and name == REFRESH_LOCK:
                # Only the holder of the refresh lock runs: whatever is still `running` was
                # its run, and it will never finish.
                why = ("its process is gone (same host)" if dead
                       else f"its lease was not renewed for {stale_seconds:g}s")
                s.execute(update(Run).where(Run.status == "running").values(
                    status="crashed", finished_at=now,
                    error=f"the process running it stopped before finishing: {why}"))
        if taken and previous != holder:
            log.warning("took over the %s lock from %s: %s", name, previous,
                        "its process is gone" if dead else "stale")
        return taken

    def heartbeat(self, holder: str, name: str = REFRESH_LOCK) -> bool:
        """Renew the lease; False when it is no longer ours (taken over as stale)."""
        with self.session() as s:
            result = s.execute(update(Lock).where(Lock.name == name, Lock.holder == holder)
                               .values(heartbeat_at=now_utc()))
            return bool(getattr(result, "rowcount", 0) == 1)

    @staticmethod
    def holds_lock(s: Session, holder: str, name: str = REFRESH_LOCK) -> bool:
        """Inside a run's final transaction: is the lease still ours (fencing)?"""
        row = s.get(Lock, name)
        return row is not None and row.holder == holder

    def release_lock(self, holder: str, name: str = REFRESH_LOCK) -> None:
        with self.session() as s:
            s.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))

    def lock_info(self, name: str = REFRESH_LOCK) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(Lock, name)
            if row is None:
                return None
            return {"holder": row.holder, "acquired_at": _iso(row.acquired_at),
                    "heartbeat_at": _iso(row.heartbeat_at)}

    # ------------------------------------------------------------ runs

    def start_run(self, kind: str, trigger: str, source: str, as_of: str,
                  watermark_before: str | None = None, status: str = "running") -> int:
        with self.session() as s:
            run = Run(kind=kind, trigger=trigger, source=source, as_of=as_of,
                      started_at=now_utc(), status=status, counts={},
                      watermark_before=watermark_before, requests=0)
            s.add(run)
            s.flush()
            return int(run.id)

    def finish_run(self, run_id: int, status: str, *, counts: Mapping[str, Any] | None = None,
                   error: str | None = None, watermark_after: str | None = None,
                   requests: int = 0, seconds: float | None = None,
                   session: Session | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": now_utc(),
                                  "error": error[:4000] if error else None,
                                  "watermark_after": watermark_after, "requests": requests,
                                  "seconds": seconds}
        if counts is not None:
            values["counts"] = dict(counts)
        stmt = update(Run).where(Run.id == run_id).values(**values)
        if session is not None:
            session.execute(stmt)
            return
        with self.session() as s:
            s.execute(stmt)

    def accept_held(self, run_id: int, actor: str) -> dict[str, Any]:
        """Mark a held run `accepted` (its figures were read and the change let through);
        audited. StoreError when the run is not held."""
        with self.session() as s:
            row = s.get(Run, run_id)
            if row is None or row.status != "held":
                status = "no such run" if row is None else f"it is {row.status}"
                raise NotHeld(f"run {run_id} is not held ({status})")
            counts = dict(row.counts or {})
            counts["accepted"] = {"by": actor, "at": now_utc().isoformat()}
            row.status, row.counts = "accepted", counts
            _audit(s, actor, "accept-change", None,
                   {"run": run_id, "figures": counts.get("held", {})})
            s.flush()
            return run_dict(row)

    def held_runs(self) -> list[dict[str, Any]]:
        """Held runs nobody has accepted yet, newest first."""
        with self.session() as s:
            rows = s.scalars(select(Run).where(Run.status == "held").order_by(Run.id.desc()))
            return [run_dict(r) for r in rows]

    def assignment_states(self) -> dict[str, tuple[str, str | None]]:
        """patient -> (status, practitioner) as stored: what a pass's changes are measured on."""
        with self.session() as s:
            return {p: (st, pr) for p, st, pr in s.execute(
                select(PatientState.patient, PatientState.status, PatientState.practitioner))}

    def record_skipped(self, kind: str, trigger: str, source: str, as_of: str,
                       reason: str) -> int:
        run_id = self.start_run(kind, trigger, source, as_of, status="skipped")
        self.finish_run(run_id, "skipped", error=reason, seconds=0.0)
        return run_id

    # ------------------------------------------------------------ runs handed to the worker

    def worker_alive(self, within_seconds: float) -> bool:
        """A worker process has beaten its heartbeat recently (it then takes queued runs)."""
        beat = self.context(WORKER_HEARTBEAT)
        if not isinstance(beat, str):
            return False
        try:
            at = datetime.fromisoformat(beat)
        except ValueError:
            return False
        return (now_utc() - (_aware(at) or now_utc())).total_seconds() < within_seconds

    def worker_heartbeat(self) -> None:
        with self.session() as s:
            self.set_context(s, WORKER_HEARTBEAT, now_utc().isoformat(), None)

    def queue_run(self, kind: str, trigger: str, source: str, as_of: str) -> int | None:
        """Queue a run for the worker; None when one is queued already (it will do)."""
        with self.session() as s:
            queued = s.scalar(select(func.count()).select_from(Run)
                              .where(Run.status == "queued"))
            if queued:
                return None
        return self.start_run(kind, trigger, source, as_of, status="queued")

    def claim_queued(self) -> dict[str, Any] | None:
        """The oldest queued run, marked `running` (compare-and-swap: one claimant wins)."""
        with self.session() as s:
            row = s.scalars(select(Run).where(Run.status == "queued").order_by(Run.id)
                            .limit(1)).first()
            if row is None:
                return None
            result = s.execute(update(Run).where(Run.id == row.id, Run.status == "queued")
                               .values(status="running", started_at=now_utc()))
            if getattr(result, "rowcount", 0) != 1:
                return None
            return run_dict(row) | {"status": "running"}

    def requeue(self, run_id: int) -> None:
        with self.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(status="queued"))

    def abandon_stale_runs(self) -> int:
        """Runs left `running` by a process that died: marked `abandoned` when nobody holds the
        refresh lock."""
        if self.lock_info() is not None:
            return 0
        with self.session() as s:
            result = s.execute(update(Run).where(Run.status == "running").values(
                status="abandoned", finished_at=now_utc(),
                error="the process running it stopped before finishing"))
            return int(getattr(result, "rowcount", 0) or 0)

    def runs(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Run).order_by(Run.id.desc()).limit(limit).offset(offset))
            return [run_dict(r) for r in rows]

    def count_runs(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Run)) or 0)

    def last_run(self, kind: str | None = None,
                 statuses: Sequence[str] = ("succeeded", "partial", "failed")
                 ) -> dict[str, Any] | None:
        with self.session() as s:
            stmt = select(Run).where(Run.status.in_(statuses))
            if kind:
                stmt = stmt.where(Run.kind == kind)
            row = s.scalars(stmt.order_by(Run.id.desc()).limit(1)).first()
            return run_dict(row) if row is not None else None

    def run(self, run_id: int) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(Run, run_id)
            return run_dict(row) if row is not None else None

    # ------------------------------------------------------------ watermark and context

    def watermark(self, source: str) -> str | None:
        with self.session() as s:
            row = s.get(Watermark, source)
            return row.value if row is not None else None

    @staticmethod
    def set_watermark(s: Session, source: str, value: str, run_id: int) -> None:
        row = s.get(Watermark, source)
        if row is None:
            s.add(Watermark(source=source, value=value, run_id=run_id, updated_at=now_utc()))
        else:
            row.value, row.run_id, row.updated_at = value, run_id, now_utc()

    def context(self, name: str) -> Any:
        with self.session() as s:
            row = s.get(Context, name)
            return row.value if row is not None else None

    @staticmethod
    def set_context(s: Session, name: str, value: Any, run_id: int | None) -> None:
        row = s.get(Context, name)
        if row is None:
            s.add(Context(name=name, value=value, run_id=run_id))
        else:
            row.value, row.run_id = value, run_id

    # ------------------------------------------------------------ overrides, confirmations

    def add_override(self, patient: str, practitioner: str, *, reason: str, requested_by: str,
                     actor: str) -> dict[str, Any]:
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

    def _add_override(self, patient: str, practitioner: str, reason: str, requested_by: str,
                      actor: str) -> dict[str, Any]:
        now = now_utc()
        with self.session() as s:
            if not self.is_sqlite:
                # Overrides for one patient saved at once queue here, one transaction at a time
                # (SQLite serialises writers by itself); the unique index stays the backstop.
                key = int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big",
                                     signed=True)
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            s.execute(update(Override).where(Override.patient == patient,
                                             Override.removed_at.is_(None))
                      .values(removed_at=now, removed_by=actor))
            row = Override(patient=patient, practitioner=practitioner, reason=reason,
                           requested_by=requested_by, actor=actor, created_at=now)
            s.add(row)
            _queue(s, patient, "override", now)
            _audit(s, actor, "override", patient, {"practitioner": practitioner,
                                                   "reason": reason,
                                                   "requested_by": requested_by})
            s.flush()
            return override_dict(row)

    def remove_override(self, patient: str, actor: str) -> bool:
        now = now_utc()
        with self.session() as s:
            result = s.execute(update(Override).where(Override.patient == patient,
                                                      Override.removed_at.is_(None))
                               .values(removed_at=now, removed_by=actor))
            removed = bool(getattr(result, "rowcount", 0))
            if removed:
                _queue(s, patient, "override removed", now)
                _audit(s, actor, "override-removed", patient, {})
            return removed

    def active_overrides(self) -> dict[str, ManualAssignment]:
        with self.session() as s:
            rows = s.scalars(select(Override).where(Override.removed_at.is_(None)))
            return {r.patient: ManualAssignment(
                patient=r.patient, practitioner=r.practitioner, reason=r.reason,
                requested_by=r.requested_by, confirmation="confirmed") for r in rows}

    def override_for(self, patient: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(select(Override).where(Override.patient == patient,
                                                   Override.removed_at.is_(None))).first()
            return override_dict(row) if row is not None else None

    def overrides(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Override).where(Override.patient == patient)
                             .order_by(Override.id))
            return [override_dict(r) for r in rows]

    def confirm(self, patient: str, practitioner: str, *, confirmed_by: str, actor: str,
                note: str = "") -> dict[str, Any]:
        """Confirm the patient's current clinician. Effective at once (it changes no
        attribution); it lapses if the patient later moves to another clinician."""
        if confirmed_by not in CONFIRMERS:
            raise ValueError(f"confirmed_by must be one of {', '.join(CONFIRMERS)}")
        now = now_utc()
        with self.session() as s:
            # The update first: it takes the row's write lock, so a refresh committing a new
            # assignment cannot slip between the check and the confirmation.
            result = s.execute(update(PatientState).where(
                PatientState.patient == patient, PatientState.practitioner == practitioner,
                PatientState.status == "assigned").values(confirmation=confirmed_by))
            if getattr(result, "rowcount", 0) != 1:
                raise AssignmentChanged(f"{patient} is not assigned to {practitioner} (any "
                                        "more): reload and confirm the current assignment")
            row = Confirmation(patient=patient, practitioner=practitioner,
                               confirmed_by=confirmed_by, note=note, actor=actor,
                               created_at=now)
            s.add(row)
            _audit(s, actor, "confirm", patient, {"practitioner": practitioner,
                                                  "confirmed_by": confirmed_by, "note": note})
            recompute_clinicians(s, [practitioner])
            s.flush()
            return {"id": row.id, "patient": patient, "practitioner": practitioner,
                    "confirmed_by": confirmed_by, "note": note, "actor": actor,
                    "created_at": _iso(now)}

    def confirmations(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Confirmation).where(Confirmation.patient == patient)
                             .order_by(Confirmation.id))
            return [{"practitioner": r.practitioner, "confirmed_by": r.confirmed_by,
                     "note": r.note, "actor": r.actor, "created_at": _iso(r.created_at)}
                    for r in rows]

    def pending_patients(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(PendingPatient.patient).order_by(PendingPatient.patient)))

    def queue_patients(self, patients: Iterable[str], reason: str) -> None:
        now = now_utc()
        with self.session() as s:
            for patient in patients:
                _queue(s, patient, reason, now)

    def audit(self, limit: int = 100, patient: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            stmt = select(AuditEntry)
            if patient:
                stmt = stmt.where(AuditEntry.patient == patient)
            rows = s.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit))
            return [{"at": _iso(r.at), "actor": r.actor, "action": r.action,
                     "patient": r.patient, "detail": r.detail} for r in rows]

    def record_audit(self, actor: str, action: str, patient: str | None,
                     detail: Mapping[str, Any]) -> None:
        with self.session() as s:
            _audit(s, actor, action, patient, detail)

    # ------------------------------------------------------------ results of a run

    def save_outcome(self, s: Session, outcome: RunOutcome, run_id: int, *, full: bool,
                     report_patients: Mapping[str, dict[str, Any]],
                     weights: Mapping[str, float], clinician_names: Mapping[str, str | None],
                     done_pending: Iterable[str] = (),
                     started_at: datetime | None = None,
                     gone: Sequence[str] = (), remove_missing: bool = True) -> dict[str, int]:
        """Store the patients a run computed (all of them for a full run, which also removes
        patients no longer on the server), their history, and the panels. Returns counts of
        changed assignments.

        `started_at`: when the run read its overrides and queue. Queue entries and overrides
        made after it (while the run computed) stay pending for the next pass."""
        now = now_utc()
        cutoff = started_at or now
        att = outcome.attribution
        suggestions = {sg.patient: sg for sg in outcome.panels.suggestions}
        outreach = {o.patient: list(o.reasons) for o in outcome.outreach}
        ids = [a.patient for a in att.assignments]
        existing = _existing_states(s, ids, full=full)
        overrides = {r.patient for r in s.scalars(
            select(Override).where(Override.removed_at.is_(None),
                                   Override.created_at <= cutoff))}
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        close_history: list[str] = []
        changed = 0
        touched_clinicians: set[str] = set()
        for a in att.assignments:
            risk = outcome.risk.get(a.patient)
            suggestion = suggestions.get(a.patient)
            row = {
                "patient": a.patient, "status": a.status, "practitioner": a.practitioner,
                "rule": a.rule, "step": a.step, "reason": a.reason,
                "tier": risk.tier if risk is not None else None,
                "charlson": risk.charlson if risk is not None else None,
                "hcc": risk.hcc if risk is not None else None,
                "ccm_eligible": bool(risk.ccm_eligible) if risk is not None else False,
                "weight": weights.get(a.patient, 1.0),
                "last_visit": a.last_visit.isoformat() if a.last_visit else None,
                "override": a.patient in overrides and a.rule == "manual",
                "outreach": outreach.get(a.patient, []),
                "suggested": suggestion.practitioner if suggestion else None,
                "suggestion_reason": suggestion.reason if suggestion else None,
                "detail": report_patients.get(a.patient, {}),
                "run_id": run_id, "updated_at": now,
            }
            before = existing.get(a.patient)
            if a.practitioner:
                touched_clinicians.add(a.practitioner)
            if before is None:
                inserts.append(row)
            else:
                updates.append(row)
                if before[1]:
                    touched_clinicians.add(before[1])
            key = (a.status, a.practitioner, a.rule)
            if before is None or before != key:
                changed += before is not None
                if before is not None:
                    close_history.append(a.patient)
                history.append({"patient": a.patient, "status": a.status,
                                "practitioner": a.practitioner, "rule": a.rule,
                                "step": a.step, "valid_from": now, "valid_to": None,
                                "run_id": run_id})
        for start in range(0, len(close_history), CHUNK):
            s.execute(update(AssignmentHistory).where(
                AssignmentHistory.patient.in_(close_history[start:start + CHUNK]),
                AssignmentHistory.valid_to.is_(None)).values(valid_to=now))
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
            batch = vanished[start:start + CHUNK]
            if not full:
                touched_clinicians.update(p for p in s.scalars(
                    select(PatientState.practitioner).where(PatientState.patient.in_(batch)))
                    if p)
            s.execute(update(AssignmentHistory).where(
                AssignmentHistory.patient.in_(batch),
                AssignmentHistory.valid_to.is_(None)).values(valid_to=now))
            s.execute(delete(PatientState).where(PatientState.patient.in_(batch)))
        removed = len(vanished)
        if full:
            _save_clinicians(s, outcome, clinician_names, now)
        # Confirmations in SQL, after the rows are written and inside this transaction: a
        # confirm() committed while the run computed is not overwritten.
        _refresh_confirmations(s, None if full else ids)
        if not full:
            recompute_clinicians(s, sorted(touched_clinicians))
        else:
            recompute_clinicians(s, list(s.scalars(select(Clinician.practitioner))),
                                 sizes=False)
        done = list(done_pending)
        for start in range(0, len(done), CHUNK):
            s.execute(delete(PendingPatient).where(
                PendingPatient.patient.in_(done[start:start + CHUNK]),
                PendingPatient.since <= cutoff))
        applied = sorted(overrides & set(ids))
        for start in range(0, len(applied), CHUNK):
            s.execute(update(Override).where(
                Override.removed_at.is_(None), Override.applied_run.is_(None),
                Override.created_at <= cutoff,
                Override.patient.in_(applied[start:start + CHUNK])).values(applied_run=run_id))
        return {"patients_stored": len(ids), "assignments_changed": changed,
                "patients_new": len(inserts), "patients_removed": removed}

    def patient_ids(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(PatientState.patient).order_by(PatientState.patient)))

    def patient_state(self, patient: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(PatientState, patient)
            return patient_dict(row) if row is not None else None

    def history(self, patient: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(AssignmentHistory).where(AssignmentHistory.patient == patient)
                             .order_by(AssignmentHistory.id))
            return [{"status": r.status, "practitioner": r.practitioner, "rule": r.rule,
                     "step": r.step, "valid_from": _iso(r.valid_from),
                     "valid_to": _iso(r.valid_to), "run_id": r.run_id} for r in rows]

    def clinicians(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Clinician).order_by(Clinician.practitioner))
            return [clinician_dict(r) for r in rows]

    def clinician(self, practitioner: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(Clinician, practitioner)
            return clinician_dict(row) if row is not None else None

    # ------------------------------------------------------------ the write-back ledger

    def ledger(self, run_id: int | None) -> StoreLedger:
        return StoreLedger(self, run_id)

    def ledger_entry(self, rtype: str, identifier: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(LedgerEntry, (rtype, identifier))
            if row is None:
                return None
            return {"rtype": rtype, "identifier": identifier, "id": row.server_id,
                    "version": row.version, "hash": row.content_hash,
                    "updated_at": _iso(row.updated_at)}


@dataclass
class StoreLedger:
    """The writer's view of the ledger. Lookups read the store; records are buffered and
    written by `flush(session)` in the run's final transaction, so the ledger never claims a
    write the rest of the run did not commit."""

    store: Store
    run_id: int | None
    pending: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def lookup(self, rtype: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = sorted(set(identifiers))
        with self.store.session() as s:
            for start in range(0, len(unique), CHUNK):
                rows = s.scalars(select(LedgerEntry).where(
                    LedgerEntry.rtype == rtype,
                    LedgerEntry.identifier.in_(unique[start:start + CHUNK])))
                for row in rows:
                    try:
                        resource = orjson.loads(zlib.decompress(row.resource))
                    except (zlib.error, orjson.JSONDecodeError):
                        continue  # unreadable: the writer reads the server instead
                    if isinstance(resource, dict):
                        found[row.identifier] = resource
        return found

    def record(self, rtype: str, identifier: str, resource: Mapping[str, Any]) -> None:
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            return
        meta = resource.get("meta")
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        raw = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
        self.pending[(rtype, identifier)] = {
            "rtype": rtype, "identifier": identifier, "server_id": rid,
            "version": str(version) if version else None,
            "content_hash": hashlib.sha256(raw).hexdigest(),
            "resource": zlib.compress(raw, 6), "run_id": self.run_id,
        }

    def forget(self, rtype: str, identifier: str) -> None:
        """A resource that could not be written: drop any record so the next pass re-reads."""
        self.pending[(rtype, identifier)] = {"rtype": rtype, "identifier": identifier,
                                             "forget": True}

    def flush(self, s: Session) -> int:
        now = now_utc()
        items = list(self.pending.values())
        self.pending.clear()
        by_type: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_type.setdefault(item["rtype"], []).append(item)
        for rtype, rows in by_type.items():
            keys = [r["identifier"] for r in rows]
            for start in range(0, len(keys), CHUNK):
                s.execute(delete(LedgerEntry).where(
                    LedgerEntry.rtype == rtype,
                    LedgerEntry.identifier.in_(keys[start:start + CHUNK])))
            keep = [dict(r, updated_at=now) for r in rows if not r.get("forget")]
            if keep:
                s.execute(insert(LedgerEntry), keep)
        return len(items)


# ---------------------------------------------------------------- helpers


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL: the API reads while a refresh writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _queue(s: Session, patient: str, reason: str, now: datetime) -> None:
    """Queue a patient (an upsert: concurrent writers never collide on the key). `since` moves
    to now, so a run that started earlier does not take the entry off the queue."""
    values = {"patient": patient, "reason": reason, "since": now}
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(PendingPatient).values(**values)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(PendingPatient).values(**values)
    s.execute(stmt.on_conflict_do_update(index_elements=["patient"],
                                         set_={"reason": reason, "since": now}))


def _audit(s: Session, actor: str, action: str, patient: str | None,
           detail: Mapping[str, Any]) -> None:
    s.add(AuditEntry(at=now_utc(), actor=actor, action=action, patient=patient,
                     detail=dict(detail)))


def _existing_states(s: Session, ids: Sequence[str], *, full: bool
                     ) -> dict[str, tuple[str, str | None, str | None]]:
    cols = (PatientState.patient, PatientState.status, PatientState.practitioner,
            PatientState.rule)
    if full:
        return {p: (st, pr, ru) for p, st, pr, ru in s.execute(select(*cols))}
    out: dict[str, tuple[str, str | None, str | None]] = {}
    for start in range(0, len(ids), CHUNK):
        for p, st, pr, ru in s.execute(select(*cols).where(
                PatientState.patient.in_(ids[start:start + CHUNK]))):
            out[p] = (st, pr, ru)
    return out


def _refresh_confirmations(s: Session, ids: Sequence[str] | None) -> None:
    """Each patient's confirmation: the newest confirmation of the current clinician made
    since the current assignment began (one made before a move away and back has lapsed)."""
    began = (select(func.max(AssignmentHistory.valid_from))
             .where(AssignmentHistory.patient == PatientState.patient,
                    AssignmentHistory.valid_to.is_(None))
             .scalar_subquery())
    latest = (select(Confirmation.confirmed_by)
              .where(Confirmation.patient == PatientState.patient,
                     Confirmation.practitioner == PatientState.practitioner,
                     Confirmation.created_at >= began)
              .order_by(Confirmation.id.desc()).limit(1)
              .scalar_subquery())
    value = func.coalesce(latest, "proposed")
    if ids is None:
        s.execute(update(PatientState).values(confirmation=value),
                  execution_options={"synchronize_session": False})
        return
    for start in range(0, len(ids), CHUNK):
        s.execute(update(PatientState).where(PatientState.patient.in_(ids[start:start + CHUNK]))
                  .values(confirmation=value), execution_options={"synchronize_session": False})


def _save_clinicians(s: Session, outcome: RunOutcome, names: Mapping[str, str | None],
                     now: datetime) -> None:
    eligibility = outcome.attribution.eligibility
    eligible = set(eligibility.eligible)
    pediatric = set(eligibility.pediatric)
    s.execute(delete(Clinician))
    rows: list[dict[str, Any]] = []
    for panel in outcome.panels.panels:
        rows.append({
            "practitioner": panel.practitioner, "name": names.get(panel.practitioner),
            "eligible": panel.practitioner in eligible,
            "pediatric": panel.practitioner in pediatric,
            "size": panel.size, "risk_adjusted_size": panel.risk_adjusted_size,
            "hcc_adjusted_size": panel.hcc_adjusted_size, "capacity": panel.capacity,
            "open_capacity": panel.open_capacity, "tiers": {t: n for t, n in panel.tiers},
            "unconfirmed": 0, "updated_at": now})
    if rows:
        s.execute(insert(Clinician), rows)


def recompute_clinicians(s: Session, practitioners: Sequence[str], *, sizes: bool = True
                         ) -> None:
    """Panel figures from the patients table: size, risk-adjusted size, tiers, unconfirmed.
    Capacity stays as the last full run computed it."""
    wanted = sorted(set(practitioners))
    for start in range(0, len(wanted), CHUNK):
        batch = wanted[start:start + CHUNK]
        assigned = (PatientState.status == "assigned")
        totals = {p: (int(n), float(w or 0.0), int(u or 0)) for p, n, w, u in s.execute(
            select(PatientState.practitioner, func.count(), func.sum(PatientState.weight),
                   func.sum(case((PatientState.confirmation == "proposed", 1), else_=0)))
            .where(assigned, PatientState.practitioner.in_(batch))
            .group_by(PatientState.practitioner))}
        tiers: dict[str, dict[str, int]] = {}
        for p, tier, n in s.execute(
                select(PatientState.practitioner, PatientState.tier, func.count())
                .where(assigned, PatientState.practitioner.in_(batch),
                       PatientState.tier.is_not(None))
                .group_by(PatientState.practitioner, PatientState.tier)):
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


def _iso(value: datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def run_dict(r: Run) -> dict[str, Any]:
    started, finished = _aware(r.started_at), _aware(r.finished_at)
    seconds = r.seconds
    if seconds is None and started and finished:
        seconds = (finished - started).total_seconds()
    return {"id": r.id, "kind": r.kind, "trigger": r.trigger, "source": r.source,
            "as_of": r.as_of, "started_at": _iso(started), "finished_at": _iso(finished),
            "status": r.status, "counts": r.counts or {}, "error": r.error,
            "watermark_before": r.watermark_before, "watermark_after": r.watermark_after,
            "requests": r.requests, "seconds": round(seconds, 3) if seconds is not None else None}


def patient_dict(r: PatientState) -> dict[str, Any]:
    return {"patient": r.patient, "status": r.status, "practitioner": r.practitioner,
            "rule": r.rule, "step": r.step, "reason": r.reason, "tier": r.tier,
            "charlson": r.charlson, "hcc": r.hcc, "ccm_eligible": r.ccm_eligible,
            "weight": r.weight, "last_visit": r.last_visit, "confirmation": r.confirmation,
            "override": r.override, "outreach": r.outreach or [], "suggested": r.suggested,
            "suggestion_reason": r.suggestion_reason, "detail": r.detail or {},
            "run_id": r.run_id, "updated_at": _iso(r.updated_at)}


def clinician_dict(r: Clinician) -> dict[str, Any]:
    return {"practitioner": r.practitioner, "name": r.name, "eligible": r.eligible,
            "pediatric": r.pediatric, "size": r.size,
            "risk_adjusted_size": round(r.risk_adjusted_size, 1),
            "hcc_adjusted_size": (round(r.hcc_adjusted_size, 1)
                                  if r.hcc_adjusted_size is not None else None),
            "capacity": round(r.capacity), "open_capacity": round(r.open_capacity, 1),
            "tiers": r.tiers or {}, "unconfirmed": r.unconfirmed,
            "updated_at": _iso(r.updated_at)}


def override_dict(r: Override) -> dict[str, Any]:
    return {"id": r.id, "patient": r.patient, "practitioner": r.practitioner,
            "reason": r.reason, "requested_by": r.requested_by, "actor": r.actor,
            "created_at": _iso(r.created_at), "removed_at": _iso(r.removed_at),
            "removed_by": r.removed_by, "applied_run": r.applied_run}
