"""Runs (`runs`), the queue of runs handed to the worker, and what a pass leaves for the next
one: the per-source watermark (`watermarks`) and named context values (`context`).

A run is recorded when it starts and finished with its status and counts; a refused attempt is
recorded `skipped`. Runs asked for through the API wait `queued` for the worker, which claims
them one at a time. The queue builds on the lease: a run left `running` is abandoned only while
nobody holds the refresh lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fhirpanel.errors import FhirpanelError
from fhirpanel.store.engine import aware, iso, now_utc
from fhirpanel.store.lease import LeaseStore
from fhirpanel.store.models import Context, Run, Watermark
from fhirpanel.store.review import add_audit
from fhirpanel.vocabulary import COMPLETED_STATUSES, RunStatus

WORKER_HEARTBEAT = "worker-heartbeat"  # the context value a live worker keeps fresh
# What `last_run` looks at by default: runs that got to the end, well or not.
FINISHED_STATUSES: tuple[RunStatus, ...] = (*COMPLETED_STATUSES, RunStatus.FAILED)


class NotHeld(FhirpanelError):
    """Accepting a run that is not held."""


class RunStore(LeaseStore):
    """Runs, the run queue, watermarks and context."""

    # ------------------------------------------------------------ runs

    def start_run(
        self,
        kind: str,
        trigger: str,
        source: str,
        as_of: str,
        watermark_before: str | None = None,
        status: str = RunStatus.RUNNING,
    ) -> int:
        with self.session() as s:
            run = Run(
                kind=kind,
                trigger=trigger,
                source=source,
                as_of=as_of,
                started_at=now_utc(),
                status=status,
                counts={},
                watermark_before=watermark_before,
                requests=0,
            )
            s.add(run)
            s.flush()
            return int(run.id)

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        counts: Mapping[str, Any] | None = None,
        error: str | None = None,
        watermark_after: str | None = None,
        requests: int = 0,
        seconds: float | None = None,
        session: Session | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now_utc(),
            "error": error[:4000] if error else None,
            "watermark_after": watermark_after,
            "requests": requests,
            "seconds": seconds,
        }
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
        audited. NotHeld when the run is not held."""
        with self.session() as s:
            row = s.get(Run, run_id)
            if row is None or row.status != RunStatus.HELD:
                status = "no such run" if row is None else f"it is {row.status}"
                raise NotHeld(f"run {run_id} is not held ({status})")
            counts = dict(row.counts or {})
            counts["accepted"] = {"by": actor, "at": now_utc().isoformat()}
            row.status, row.counts = RunStatus.ACCEPTED.value, counts
            add_audit(
                s, actor, "accept-change", None, {"run": run_id, "figures": counts.get("held", {})}
            )
            s.flush()
            return run_dict(row)

    def held_runs(self) -> list[dict[str, Any]]:
        """Held runs nobody has accepted yet, newest first."""
        with self.session() as s:
            rows = s.scalars(
                select(Run).where(Run.status == RunStatus.HELD).order_by(Run.id.desc())
            )
            return [run_dict(r) for r in rows]

    def record_skipped(self, kind: str, trigger: str, source: str, as_of: str, reason: str) -> int:
        run_id = self.start_run(kind, trigger, source, as_of, status=RunStatus.SKIPPED)
        self.finish_run(run_id, RunStatus.SKIPPED, error=reason, seconds=0.0)
        return run_id

    def abandon_stale_runs(self) -> int:
        """Runs left `running` by a process that died: marked `abandoned` when nobody holds the
        refresh lock."""
        if self.lock_info() is not None:
            return 0
        with self.session() as s:
            result = s.execute(
                update(Run)
                .where(Run.status == RunStatus.RUNNING)
                .values(
                    status=RunStatus.ABANDONED,
                    finished_at=now_utc(),
                    error="the process running it stopped before finishing",
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def runs(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Run).order_by(Run.id.desc()).limit(limit).offset(offset))
            return [run_dict(r) for r in rows]

    def count_runs(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Run)) or 0)

    def last_run(
        self, kind: str | None = None, statuses: Sequence[str] = FINISHED_STATUSES
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
        return (now_utc() - (aware(at) or now_utc())).total_seconds() < within_seconds

    def worker_heartbeat(self) -> None:
        with self.session() as s:
            self.set_context(s, WORKER_HEARTBEAT, now_utc().isoformat(), None)

    def queue_run(self, kind: str, trigger: str, source: str, as_of: str) -> int | None:
        """Queue a run for the worker; None when one is queued already (it will do)."""
        with self.session() as s:
            queued = s.scalar(
                select(func.count()).select_from(Run).where(Run.status == RunStatus.QUEUED)
            )
            if queued:
                return None
        return self.start_run(kind, trigger, source, as_of, status=RunStatus.QUEUED)

    def claim_queued(self) -> dict[str, Any] | None:
        """The oldest queued run, marked `running` (compare-and-swap: one claimant wins)."""
        with self.session() as s:
            row = s.scalars(
                select(Run).where(Run.status == RunStatus.QUEUED).order_by(Run.id).limit(1)
            ).first()
            if row is None:
                return None
            result = s.execute(
                update(Run)
                .where(Run.id == row.id, Run.status == RunStatus.QUEUED)
                .values(status=RunStatus.RUNNING, started_at=now_utc())
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            return run_dict(row) | {"status": RunStatus.RUNNING.value}

    def requeue(self, run_id: int) -> None:
        with self.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.QUEUED))

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


def run_dict(r: Run) -> dict[str, Any]:
    started, finished = aware(r.started_at), aware(r.finished_at)
    seconds = r.seconds
    if seconds is None and started and finished:
        seconds = (finished - started).total_seconds()
    return {
        "id": r.id,
        "kind": r.kind,
        "trigger": r.trigger,
        "source": r.source,
        "as_of": r.as_of,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "status": r.status,
        "counts": r.counts or {},
        "error": r.error,
        "watermark_before": r.watermark_before,
        "watermark_after": r.watermark_after,
        "requests": r.requests,
        "seconds": round(seconds, 3) if seconds is not None else None,
    }
