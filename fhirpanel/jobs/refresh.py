"""Refresh jobs: a full refresh (the whole pipeline, reconciled with the server) and an
incremental pass (only patients whose Encounter, Condition or Patient changed since the
watermark, plus patients queued by an override, a confirmation or a failed write).

Both take the store's refresh lock first: two workers, or a worker and a manual run, never
refresh at the same time; the loser records a `skipped` run. A pass commits its results, the
write-back ledger and the new watermark in one store transaction, after the write-back: a crash
or error anywhere before that leaves the watermark where it was, and the next pass redoes the
work (write-back is idempotent, so nothing is written twice).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, TypedDict, Unpack

from fhirpanel.config import Settings
from fhirpanel.errors import BusyError, ChangeHeld, ConfigError, FhirpanelError, one_line
from fhirpanel.jobs import brake
from fhirpanel.jobs.full import full_pass
from fhirpanel.jobs.incremental import incremental_pass
from fhirpanel.jobs.job import (
    HEARTBEAT_SECONDS,
    WORKER_ALIVE_SECONDS,
    Abandoned,
    Job,
    Kind,
    RefreshResult,
    context_key,
)
from fhirpanel.store import Store, lock_holder_id
from fhirpanel.store.engine import now_utc
from fhirpanel.vocabulary import RunKind, RunStatus

log = logging.getLogger("fhirpanel.jobs.refresh")  # one logger name for every pass

# ---------------------------------------------------------------- entry points


class RefreshOptions(TypedDict, total=False):
    """What a caller may say about a refresh (defaults as in `_job`)."""

    trigger: str
    as_of: date | None
    source: str | None
    write: bool | None
    stop: threading.Event | None
    accept_change: bool


def full_refresh(
    settings: Settings, store: Store, **options: Unpack[RefreshOptions]
) -> RefreshResult:
    """Read the whole population, reconcile with the server, store the results."""
    return _locked(_job(settings, store, **options), RunKind.FULL)


def incremental_refresh(
    settings: Settings, store: Store, **options: Unpack[RefreshOptions]
) -> RefreshResult:
    """Only the patients changed since the watermark, or queued; the same options."""
    return _locked(_job(settings, store, **options), RunKind.INCREMENTAL)


def _job(
    settings: Settings,
    store: Store,
    *,
    trigger: str = "cli",
    as_of: date | None = None,
    source: str | None = None,
    write: bool | None = None,
    stop: threading.Event | None = None,
    accept_change: bool = False,
) -> Job:
    return Job(
        settings,
        store,
        trigger,
        as_of,
        source,
        write,
        stop or threading.Event(),
        accept_change=accept_change,
    )


def accept_held_run(
    settings: Settings, store: Store, run_id: int, actor: str, trigger: str = "api"
) -> tuple[dict[str, Any], int | None]:
    """An operator read a held run's figures and lets such a change through: the next pass on
    that source proceeds if it changes no more than that (brake.check). Returns the run and the
    id of the run started to apply it (None when the lock is held or the run was not a
    refresh: the next pass, or `run --write` again, will use the acceptance)."""
    run = store.accept_held(run_id, actor)
    with store.session() as s:
        store.set_context(
            s,
            context_key("accept", run["source"]),
            {
                "run": run_id,
                "figures": run["counts"].get("held", {}),
                "by": actor,
                "at": now_utc().isoformat(),
            },
            run_id,
        )
    next_run = None
    if run["kind"] in (RunKind.FULL, RunKind.INCREMENTAL):
        kind: Kind = RunKind.FULL if run["kind"] == RunKind.FULL else RunKind.INCREMENTAL
        next_run = request_run(settings, store, kind, trigger, source=run["source"])
    return run, next_run


def request_run(
    settings: Settings,
    store: Store,
    kind: Kind,
    trigger: str,
    on_done: Callable[[RefreshResult], None] | None = None,
    source: str | None = None,
) -> int | None:
    """Start a refresh and return its run id, or None when another refresh holds the lock or
    is queued (nothing is recorded then: the caller says "busy"). With a live worker
    (`fhirpanel worker` beat its heartbeat lately) the run is queued for it, so the heavy work
    stays out of the web process; otherwise it runs in a background thread here. `source`:
    what to read (default: the configured source)."""
    job = Job(settings, store, trigger, source=source)
    if on_done is None and store.worker_alive(WORKER_ALIVE_SECONDS):
        if store.lock_info() is not None:
            return None
        kind = _effective_kind(job, kind)
        return store.queue_run(kind, trigger, job.source_key, job.day.isoformat())
    holder = lock_holder_id()
    if not store.try_lock(holder, settings.scheduler.lock_stale_seconds):
        return None
    try:
        kind = _effective_kind(job, kind)
        run_id = store.start_run(
            kind, trigger, job.source_key, job.day.isoformat(), store.watermark(job.source_key)
        )
    except BaseException:
        store.release_lock(holder)
        raise

    def work() -> None:
        result = _run_holding(job, kind, holder, run_id)
        if on_done is not None:
            on_done(result)

    threading.Thread(target=work, name=f"fhirpanel-{kind}-{run_id}", daemon=True).start()
    return run_id


# ---------------------------------------------------------------- locking and bookkeeping


@dataclass
class Lease:
    """The refresh lock held by a run that is not a refresh (`fhirpanel run --write`): one
    writer at a time against the server, whatever the command."""

    store: Store
    run_id: int
    holder: str
    lost: threading.Event
    finished: bool = False

    def finish(
        self,
        status: str,
        counts: Mapping[str, Any] | None = None,
        error: str | None = None,
        seconds: float | None = None,
    ) -> None:
        self.store.finish_run(self.run_id, status, counts=counts, error=error, seconds=seconds)
        self.finished = True


@contextlib.contextmanager
def leased_run(
    settings: Settings, store: Store, kind: str, trigger: str, source: str, as_of: date
) -> Iterator[Lease]:
    """Take the refresh lock (BusyError when another run holds it), record a run of `kind`,
    beat the lock's heartbeat, and release it at the end. A run the block did not finish is
    recorded `held`, `failed` or `abandoned` from the exception that ended it."""
    holder = lock_holder_id()
    key = source.rstrip("/")
    if not store.try_lock(holder, settings.scheduler.lock_stale_seconds):
        info = store.lock_info() or {}
        reason = f"another run holds the refresh lock ({info.get('holder', '?')})"
        store.record_skipped(kind, trigger, key, as_of.isoformat(), reason)
        raise BusyError(f"{reason}; nothing was written. Try again when it has finished")
    started = time.perf_counter()
    lost, beat_stop = threading.Event(), threading.Event()
    try:
        run_id = store.start_run(kind, trigger, key, as_of.isoformat())
        beat = threading.Thread(
            target=_heartbeat,
            args=(store, holder, beat_stop, lost),
            name="fhirpanel-lock-heartbeat",
            daemon=True,
        )
        beat.start()
        lease = Lease(store, run_id, holder, lost)
        try:
            yield lease
        except BaseException as exc:
            if not lease.finished:
                status = (
                    RunStatus.HELD
                    if isinstance(exc, ChangeHeld)
                    else RunStatus.ABANDONED
                    if isinstance(exc, KeyboardInterrupt | Abandoned)
                    else RunStatus.FAILED
                )
                counts = {"held": exc.figures} if isinstance(exc, ChangeHeld) else None
                _failed(store, run_id, kind, status, exc, started, counts=counts)
                lease.finished = True
            raise
        finally:
            beat_stop.set()
            beat.join(timeout=5)
        if not lease.finished:
            lease.finish(RunStatus.SUCCEEDED, seconds=round(time.perf_counter() - started, 3))
    finally:
        store.release_lock(holder)


def check_write_brake(
    settings: Settings,
    store: Store,
    source: str,
    change: list[brake.Change],
    *,
    what: str,
    accept_all: bool,
) -> bool:
    """The brake for a pass outside the refresh jobs (`run --write`): raises ChangeHeld, or
    returns True when a stored acceptance let it through (consume it with `consume_acceptance`)."""
    key = context_key("accept", source.rstrip("/"))
    try:
        brake.check(change, settings.safety, what=what, accept_all=accept_all)
        return False
    except ChangeHeld:
        accepted = store.context(key)
        figures = accepted.get("figures") if isinstance(accepted, dict) else None
        brake.check(change, settings.safety, what=what, accepted=figures or {})
        return True


def consume_acceptance(store: Store, source: str, run_id: int) -> None:
    with store.session() as s:
        store.set_context(s, context_key("accept", source.rstrip("/")), None, run_id)


def run_queued(
    settings: Settings, store: Store, stop: threading.Event | None = None
) -> RefreshResult | None:
    """Run the oldest queued run (the worker calls this every few seconds). None: nothing
    queued, or the lock is held (the run stays queued)."""
    holder = lock_holder_id()
    if not store.try_lock(holder, settings.scheduler.lock_stale_seconds):
        return None
    claimed = None
    try:
        claimed = store.claim_queued()
    finally:
        if claimed is None:
            store.release_lock(holder)
    if claimed is None:
        return None
    # The source the run was asked for (an accepted held run names its own).
    job = Job(
        settings,
        store,
        claimed["trigger"],
        source=claimed["source"] or None,
        stop=stop or threading.Event(),
    )
    if claimed["as_of"]:
        job.as_of = date.fromisoformat(claimed["as_of"])
    kind: Kind = RunKind.FULL if claimed["kind"] == RunKind.FULL else RunKind.INCREMENTAL
    return _run_holding(job, kind, holder, int(claimed["id"]))


def _effective_kind(job: Job, kind: Kind) -> Kind:
    """An incremental pass needs a server source and a previous full run: else run full."""
    if kind == RunKind.INCREMENTAL and not job.source_spec.startswith(("http://", "https://")):
        raise ConfigError(
            "an incremental refresh needs a FHIR server source (http://...); "
            "NDJSON and Bulk sources are read whole: use a full refresh"
        )
    if kind == RunKind.INCREMENTAL and (
        job.store.watermark(job.source_key) is None or job.store.context("weights") is None
    ):
        log.info("no full refresh of %s stored yet: running a full refresh instead", job.source_key)
        return RunKind.FULL
    return kind


def _locked(job: Job, kind: Kind) -> RefreshResult:
    store, settings = job.store, job.settings
    source_key = job.source_key
    kind = _effective_kind(job, kind)
    holder = lock_holder_id()
    if not store.try_lock(holder, settings.scheduler.lock_stale_seconds):
        info = store.lock_info() or {}
        reason = f"another refresh is running (lock held by {info.get('holder', '?')})"
        run_id = store.record_skipped(kind, job.trigger, source_key, job.day.isoformat(), reason)
        log.info("%s refresh skipped: %s", kind, reason)
        return RefreshResult(run_id, kind, RunStatus.SKIPPED, error=reason)
    try:
        run_id = store.start_run(
            kind, job.trigger, source_key, job.day.isoformat(), store.watermark(source_key)
        )
    except BaseException:
        store.release_lock(holder)
        raise
    return _run_holding(job, kind, holder, run_id)


def _run_holding(job: Job, kind: Kind, holder: str, run_id: int) -> RefreshResult:
    """Run with the lock held (released at the end, whatever happens); record the outcome."""
    store = job.store
    job.holder = holder
    beat_stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(store, holder, beat_stop, job.lost_lock),
        name="fhirpanel-lock-heartbeat",
        daemon=True,
    )
    beat.start()
    started = time.perf_counter()
    try:
        if kind == RunKind.FULL:
            result = full_pass(job, run_id)
        else:
            result = incremental_pass(job, run_id)
    except Abandoned as exc:
        result = _failed(store, run_id, kind, RunStatus.ABANDONED, exc, started)
    except ChangeHeld as exc:
        log.log(_report_level(job, logging.WARNING), "%s refresh %d: %s", kind, run_id, exc)
        result = _failed(
            store, run_id, kind, RunStatus.HELD, exc, started, counts={"held": exc.figures}
        )
    except Exception as exc:  # recorded on the run; the caller decides what to do
        log.log(
            _report_level(job, logging.ERROR),
            "%s refresh %d failed: %s",
            kind,
            run_id,
            one_line(exc),
        )
        log.debug("%s refresh %d failed", kind, run_id, exc_info=True)
        result = _failed(store, run_id, kind, RunStatus.FAILED, exc, started)
    finally:
        beat_stop.set()
        beat.join(timeout=5)
        store.release_lock(holder)
    return result


def _report_level(job: Job, level: int) -> int:
    """The CLI prints a run's outcome as its one error line: the log says it at INFO there."""
    return logging.INFO if job.trigger == "cli" else level


def _heartbeat(store: Store, holder: str, stop: threading.Event, lost: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            if not store.heartbeat(holder):
                log.error("the refresh lock was taken over: this run stops at its next step")
                lost.set()
                return
        except Exception as exc:  # a missed beat only risks a takeover after lock_stale_seconds
            log.warning("lock heartbeat failed: %s", one_line(exc))
            log.debug("lock heartbeat failed", exc_info=True)


def _failed(
    store: Store,
    run_id: int,
    kind: str,
    status: str,
    exc: BaseException,
    started: float,
    counts: dict[str, Any] | None = None,
) -> RefreshResult:
    seconds = time.perf_counter() - started
    error = (
        one_line(exc)
        if isinstance(exc, FhirpanelError)
        else (f"{type(exc).__name__}: {one_line(exc)}")
    )
    try:
        store.finish_run(run_id, status, error=error, seconds=round(seconds, 3), counts=counts)
    except Exception as record_exc:
        log.error("could not record run %d as %s: %s", run_id, status, one_line(record_exc))
    return RefreshResult(
        run_id, kind, status, counts=dict(counts or {}), error=error, exception=exc, seconds=seconds
    )
