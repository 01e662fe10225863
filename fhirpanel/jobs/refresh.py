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
import dataclasses
import email.utils
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from fhirpanel.config import Settings
from fhirpanel.domain.attribution import ManualAssignment
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.panels import AgeSexWeights
from fhirpanel.domain.placement import ClinicianLoad, Commitment, Suggestion, place_unassigned
from fhirpanel.domain.records import Population
from fhirpanel.errors import BusyError, ChangeHeld, ConfigError, FhirpanelError, one_line
from fhirpanel.fhir.parse import ParseProblem, fhir_instant, parse_instant, reference_id
from fhirpanel.fhir.source import FhirSource, RosterSource, ServerSource
from fhirpanel.ingest import configure_read, read_order, read_population, read_window_months
from fhirpanel.jobs import brake
from fhirpanel.jobs.rows import result_rows, stored_suggestions
from fhirpanel.run import analyse, open_source, run_full
from fhirpanel.store import Store, lock_holder_id
from fhirpanel.store.engine import now_utc
from fhirpanel.store.review import queue_patient
from fhirpanel.tables import MethodTables, Tables
from fhirpanel.vocabulary import COMPLETED_STATUSES, RunKind, RunStatus

log = logging.getLogger(__name__)

Kind = Literal[RunKind.FULL, RunKind.INCREMENTAL]  # what a refresh pass is
# What an incremental pass searches by `_lastUpdated`, and how each names its patient.
CHANGE_TYPES = ("Encounter", "Condition", "Patient")
HEARTBEAT_SECONDS = 60.0
MAX_HELD_PASSES = 3  # passes with failed writes that keep the watermark in place
WORKER_ALIVE_SECONDS = 30.0  # a worker heartbeat younger than this takes queued runs


class Abandoned(FhirpanelError):
    """The worker is shutting down: the pass stopped before committing anything."""


@dataclass
class RefreshResult:
    run_id: int | None
    kind: str  # a RunKind
    status: str  # a RunStatus: succeeded | partial | failed | held | skipped | abandoned
    counts: dict[str, Any] = field(default_factory=dict)
    watermark_before: str | None = None
    watermark_after: str | None = None
    requests: int = 0
    seconds: float = 0.0
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False)
    patients: tuple[str, ...] = ()  # incremental: the patients recomputed
    outcome: RunOutcome | None = field(default=None, repr=False)
    writeback: Any = field(default=None, repr=False)  # WriteSummary

    @property
    def ok(self) -> bool:
        return self.status in COMPLETED_STATUSES


@dataclass
class Job:
    """What a refresh needs besides its arguments: settings, store, a stop flag."""

    settings: Settings
    store: Store
    trigger: str = "cli"
    as_of: date | None = None
    source: str | None = None
    write: bool | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    holder: str = ""  # who holds the refresh lock for this run
    lost_lock: threading.Event = field(default_factory=threading.Event)
    accept_change: bool = False  # the operator let a large change through (--accept-change)
    used_acceptance: bool = False  # a stored acceptance let this pass through: consume it
    _tables: Tables | None = field(default=None, repr=False)

    @property
    def tables(self) -> Tables:
        """The mapping tables, loaded once for the pass (analysis and write-back share them)."""
        if self._tables is None:
            self._tables = Tables.load(self.settings)
        return self._tables

    @property
    def source_spec(self) -> str:
        spec = self.source or self.settings.scheduler.source or self.settings.fhir.base_url
        if not spec:
            raise ConfigError(
                "nothing to read: give --source, or set scheduler.source or "
                "fhir.base_url (FHIRPANEL_FHIR_BASE_URL)"
            )
        return spec

    @property
    def source_key(self) -> str:
        """The watermark's key: the source without a trailing slash."""
        return self.source_spec.rstrip("/")

    @property
    def day(self) -> date:
        if self.as_of is not None:
            return self.as_of
        fixed = self.settings.scheduler.as_of
        if fixed:
            try:
                return date.fromisoformat(fixed)
            except ValueError as exc:
                raise ConfigError(f"scheduler.as_of: not a date (YYYY-MM-DD): {fixed!r}") from exc
        return date.today()

    def check_stop(self, stage: str) -> None:
        if self.stop.is_set():
            raise Abandoned(f"stopped before {stage}: shutting down")
        if self.lost_lock.is_set():
            raise Abandoned(f"stopped before {stage}: the refresh lock was taken over")

    def check_lock(self, s: Any) -> None:
        """Fencing, inside the final transaction: commit only while the lease is ours."""
        if self.holder and not self.store.holds_lock(s, self.holder):
            raise Abandoned("the refresh lock was taken over before the commit: nothing stored")


# ---------------------------------------------------------------- entry points


def full_refresh(
    settings: Settings,
    store: Store,
    *,
    trigger: str = "cli",
    as_of: date | None = None,
    source: str | None = None,
    write: bool | None = None,
    stop: threading.Event | None = None,
    accept_change: bool = False,
) -> RefreshResult:
    job = Job(
        settings,
        store,
        trigger,
        as_of,
        source,
        write,
        stop or threading.Event(),
        accept_change=accept_change,
    )
    return _locked(job, RunKind.FULL)


def incremental_refresh(
    settings: Settings,
    store: Store,
    *,
    trigger: str = "cli",
    as_of: date | None = None,
    source: str | None = None,
    write: bool | None = None,
    stop: threading.Event | None = None,
    accept_change: bool = False,
) -> RefreshResult:
    job = Job(
        settings,
        store,
        trigger,
        as_of,
        source,
        write,
        stop or threading.Event(),
        accept_change=accept_change,
    )
    return _locked(job, RunKind.INCREMENTAL)


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
            _context_key("accept", run["source"]),
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
    key = _context_key("accept", source.rstrip("/"))
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
        store.set_context(s, _context_key("accept", source.rstrip("/")), None, run_id)


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
            result = _full(job, run_id)
        else:
            result = _incremental(job, run_id)
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


def _apply_brake(job: Job, what: str, change: list[brake.Change]) -> None:
    """Hold the pass (ChangeHeld) when it changes too much, unless accepted."""
    accepted = job.store.context(_context_key("accept", job.source_key))
    figures = accepted.get("figures") if isinstance(accepted, dict) else None
    try:
        brake.check(change, job.settings.safety, what=what, accept_all=job.accept_change)
    except ChangeHeld:
        brake.check(change, job.settings.safety, what=what, accepted=figures or {})
        job.used_acceptance = True
        log.warning("%s: a large change let through by an operator's acceptance", what)


def _consume_acceptance(job: Job, s: Any, run_id: int) -> None:
    """An acceptance lets one pass through: gone once that pass commits."""
    if job.used_acceptance:
        job.store.set_context(s, _context_key("accept", job.source_key), None, run_id)


# ---------------------------------------------------------------- full refresh


def _full(job: Job, run_id: int) -> RefreshResult:
    settings, store = job.settings, job.store
    started = time.perf_counter()
    source = open_source(job.source_spec, settings)
    before_requests = _requests(source)
    watermark_before = store.watermark(job.source_key)
    read_at = now_utc()  # overrides and queue as of now; later ones wait for the next pass
    pending = store.pending_patients()
    # The watermark is the server's time before the read: whatever changes while the read
    # goes on is newer, and the next incremental pass picks it up.
    server_start = _server_now(source)
    configure_read(source, job.day, read_window_months(settings, job.tables.method))
    recorder = _SeenRecorder(source)
    try:
        outcome = run_full(
            settings,
            recorder,
            job.day,
            manual=store.active_overrides(),
            tables=job.tables,
            statuses=store.active_statuses(),  # people's statuses: off every panel
        )
    finally:
        # A Bulk export's downloaded files, batched reads' extra clients; the client stays open.
        close = getattr(source, "close", None)
        if callable(close):
            close()
    export = getattr(source, "result", None)
    complete = not getattr(export, "issues", None)  # False: a Bulk export with error files
    stored = store.assignment_states()
    seen = {a.patient: (a.status, a.practitioner) for a in outcome.attribution.assignments}
    change = brake.figures(
        settings.safety,
        removed=(len(set(stored) - set(seen)) if complete else 0, len(stored)),
        changed=(brake.changed_assignments(outcome.attribution.assignments, stored), len(stored)),
    )
    _apply_brake(job, "the full refresh", change)
    job.check_stop("write-back")
    ledger = store.ledger(run_id)
    writeback = _write(job, source, outcome, ledger, trust_ledger=False)
    # No stop check from here: the write-back is done, the commit is one local transaction.
    export_time = getattr(source, "transaction_time", "") or None  # a Bulk export's snapshot
    watermark = (
        export_time or server_start or _newest_instant(outcome.population) or watermark_before
    )
    weights = outcome.panels.weights
    counts = _counts(outcome, writeback)
    counts["change"] = {c.name: c.as_dict() for c in change}
    status = RunStatus.PARTIAL if counts.get("writeback_failed") else RunStatus.SUCCEEDED
    if not complete:
        counts["removals_skipped"] = "the Bulk export reported errors"
    rows = result_rows(outcome, clinicians=True)  # built before the transaction: it stays short
    with store.session() as s:
        job.check_lock(s)
        counts.update(
            store.save_results(
                s,
                rows,
                run_id,
                full=True,
                done_pending=pending,
                started_at=read_at,
                remove_missing=complete,
            )
        )
        ledger.flush(s)
        save_unconfirmed(store, s, job.source_key, writeback, run_id)
        store.set_context(
            s, "weights", [[b, sx, w] for (b, sx), w in sorted(weights.weights.items())], run_id
        )
        store.set_context(s, "as_of", job.day.isoformat(), run_id)
        store.set_context(s, "summary", _summary(outcome), run_id)
        store.set_context(s, _seen_key(job.source_key), recorder.seen_after(watermark), run_id)
        store.set_context(s, _floor_key(job.source_key), watermark, run_id)
        _consume_acceptance(job, s, run_id)
        if watermark:
            store.set_watermark(s, job.source_key, watermark, run_id)
        _queue_failed(s, writeback)
        store.finish_run(
            run_id,
            status,
            counts=counts,
            watermark_after=watermark,
            requests=_requests(source) - before_requests,
            seconds=round(time.perf_counter() - started, 3),
            session=s,
        )
    log.info("full refresh %d %s: %s", run_id, status, counts)
    return RefreshResult(
        run_id,
        RunKind.FULL,
        status,
        counts,
        watermark_before,
        watermark,
        _requests(source) - before_requests,
        time.perf_counter() - started,
        outcome=outcome,
        writeback=writeback,
        patients=tuple(a.patient for a in outcome.attribution.assignments),
    )


# ---------------------------------------------------------------- incremental pass


def _incremental(job: Job, run_id: int) -> RefreshResult:
    settings, store = job.settings, job.store
    started = time.perf_counter()
    source = open_source(job.source_spec, settings)
    if not isinstance(source, ServerSource):
        raise ConfigError(
            "an incremental refresh needs a FHIR server source (http://...); "
            "NDJSON and Bulk sources are read whole by a full refresh"
        )
    client = source.client
    before_requests = client.stats.requests
    watermark_before = store.watermark(job.source_key)
    assert watermark_before is not None  # noqa: S101 - _effective_kind ran a full one otherwise
    seen_key = _seen_key(job.source_key)
    already_seen = set(store.context(seen_key) or [])
    overlap = timedelta(seconds=max(0, settings.scheduler.overlap_seconds))
    since_at = parse_instant(watermark_before) - overlap
    floor = _instant(store.context(_floor_key(job.source_key)))
    if floor is not None and floor > since_at:
        # The last full refresh read everything up to its watermark: no need to look behind it.
        since_at = floor
    since = fhir_instant(since_at)

    changed: set[str] = set()
    newest_raw, newest_at = watermark_before, parse_instant(watermark_before)
    recent: list[str] = []  # versions inside the overlap window: skipped by the next pass
    found = 0
    roster = source if isinstance(source, RosterSource) else None
    if roster is not None:
        configure_read(roster, job.day, read_window_months(settings, job.tables.method))
    for rtype in CHANGE_TYPES:
        params = [("_count", str(settings.fhir.page_size))]
        # A roster source is polled patient batch by patient batch: its server refuses
        # population searches, `_lastUpdated` ones included.
        polled = (
            roster.changed_since(rtype, since)
            if roster is not None
            else client.search_since(rtype, since, params)
        )
        for resource in polled:
            key = _version_key(resource)
            updated_raw = _last_updated(resource)
            updated_at = _instant(updated_raw)
            if key is None or updated_raw is None or updated_at is None:
                continue
            found += 1
            if updated_at > since_at:
                recent.append(key)
            if key in already_seen:
                continue
            patient = _patient_of(resource)
            if patient:
                changed.add(patient)
            if updated_at > newest_at:
                newest_raw, newest_at = updated_raw, updated_at
    joined: set[str] = set()
    if roster is not None:
        # Patients new on the roster (a Group that grew) are read like changed ones; those
        # that left it wait for the next full refresh.
        joined = {f"Patient/{p}" for p in roster.patient_ids()} - set(store.patient_ids())
        changed |= joined
    read_at = now_utc()  # overrides and queue as of now; later ones wait for the next pass
    pending = store.pending_patients()
    affected = sorted(changed | set(pending))
    job.check_stop("reading patients")
    counts: dict[str, Any] = {
        "changed_resources": found,
        "patients_changed": len(changed),
        "patients_pending": len(pending),
        "patients": len(affected),
    }
    if roster is not None:
        counts["roster_joined"] = len(joined)
    outcome = writeback = None
    missing: list[str] = []
    ledger = store.ledger(run_id)
    if affected:
        tables = job.tables.method
        try:
            population = read_population(source, patients=affected)
        finally:
            source.close()  # batched reads' extra clients; the client stays for write-back
        weights = _stored_weights(store)
        manual = _manual_for(store.active_overrides(), affected)
        wanted = set(affected)  # statuses people recorded: these patients leave every panel
        people_set = {p: x for p, x in store.active_statuses().items() if p in wanted}
        outcome = analyse(
            population,
            job.day,
            tables,
            source=source.describe(),
            manual=manual,
            statuses=people_set,
            weights=weights,
            outreach_months=(
                settings.attribution.outreach_not_seen_months,
                settings.attribution.outreach_sentinel_months,
            ),
        )
        outcome.panels = dataclasses.replace(
            outcome.panels, suggestions=_suggestions(store, outcome, tables, weights)
        )
        missing = sorted(set(affected) - set(population.patients))
        if missing:
            counts["patients_not_found"] = len(missing)
            log.warning(
                "%d changed patient(s) no longer on the server, removed from the store: %s",
                len(missing),
                ", ".join(missing[:10]),
            )
        stored = store.assignment_states()
        change = brake.figures(
            settings.safety,
            removed=(sum(1 for p in missing if p in stored), len(stored)),
            changed=(
                brake.changed_assignments(outcome.attribution.assignments, stored),
                len(stored),
            ),
        )
        _apply_brake(job, "the incremental pass", change)
        counts["change"] = {c.name: c.as_dict() for c in change}
        job.check_stop("write-back")
        writeback = _write(job, source, outcome, ledger, trust_ledger=True, incremental=True)
        counts.update(_counts(outcome, writeback))
    status = RunStatus.PARTIAL if counts.get("writeback_failed") else RunStatus.SUCCEEDED
    watermark = newest_raw if newest_at > parse_instant(watermark_before) else watermark_before
    held_key = _context_key("held", job.source_key)
    held = int(store.context(held_key) or 0)
    if status == RunStatus.PARTIAL and held < MAX_HELD_PASSES:
        # Failed writes keep the watermark in place, so the next pass sees the same changes
        # again; after a few such passes it moves on and the queue alone retries them.
        watermark, held = watermark_before, held + 1
        counts["watermark_held"] = True
    else:
        held = 0
    # An incremental pass stores its patients only; the panels follow from the patients table.
    rows = result_rows(outcome, clinicians=False) if outcome is not None else None
    with store.session() as s:
        job.check_lock(s)
        store.set_context(s, held_key, held, run_id)
        _consume_acceptance(job, s, run_id)
        if rows is not None:
            counts.update(
                store.save_results(
                    s,
                    rows,
                    run_id,
                    full=False,
                    done_pending=pending,
                    started_at=read_at,
                    gone=missing,
                )
            )
        ledger.flush(s)
        save_unconfirmed(store, s, job.source_key, writeback, run_id)
        if not counts.get("watermark_held"):
            store.set_context(s, seen_key, sorted(set(recent)), run_id)
        if watermark != watermark_before:
            store.set_watermark(s, job.source_key, watermark, run_id)
        _queue_failed(s, writeback)
        store.finish_run(
            run_id,
            status,
            counts=counts,
            watermark_after=watermark,
            requests=client.stats.requests - before_requests,
            seconds=round(time.perf_counter() - started, 3),
            session=s,
        )
    log.info("incremental refresh %d %s: %s", run_id, status, counts)
    return RefreshResult(
        run_id,
        RunKind.INCREMENTAL,
        status,
        counts,
        watermark_before,
        watermark,
        client.stats.requests - before_requests,
        time.perf_counter() - started,
        patients=tuple(affected),
        outcome=outcome,
        writeback=writeback,
    )


# ---------------------------------------------------------------- pieces


def _write(
    job: Job,
    source: FhirSource,
    outcome: RunOutcome,
    ledger: Any,
    *,
    trust_ledger: bool,
    incremental: bool = False,
) -> Any:
    write = job.settings.scheduler.write if job.write is None else job.write
    if not write:
        return None
    client = _client_of(source)
    if client is None:
        if job.write:
            raise ConfigError("writing back needs a FHIR server source (http://... or bulk:...)")
        return None
    from fhirpanel.writeback import WriteBackInterrupted, write_back

    cfg = job.settings.writeback
    if incremental and cfg.attribution_group:
        # A Group lists a whole organisation's patients: only a full refresh rebuilds it.
        cfg = dataclasses.replace(cfg, attribution_group=False)
    tables = job.tables.writeback
    stored_count = len(job.store.patient_ids()) if incremental else 0

    def guard(ended: tuple[int, int], changed: tuple[int, int]) -> None:
        # PCP participations the CareTeams would end, before anything is sent. An incremental
        # pass sees only its own patients' teams: measure it on the whole stored practice.
        of = stored_count if incremental else ended[1]
        what = "the incremental pass" if incremental else "the full refresh"
        _apply_brake(job, what, brake.figures(job.settings.safety, ended=(ended[0], of)))

    try:
        return write_back(
            outcome,
            client,
            cfg,
            dry_run=False,
            tables=tables,
            ledger=ledger,
            trust_ledger=trust_ledger,
            unconfirmed=unconfirmed_writes(job.store, job.source_key),
            guard=guard,
            # Transaction sizes a refusal taught an earlier pass; a full pass starts
            # from the configured size, so a raised limit is found again.
            batch_sizes=learned_batch_sizes(job.store, job.source_key) if incremental else None,
        )
    except WriteBackInterrupted as exc:
        # Sent without an answer: remembered, so a later pass that finds them landed writes
        # their Provenance. Stored on its own: the run's results are not committed.
        with job.store.session() as s:
            save_unconfirmed(job.store, s, job.source_key, exc.summary, None)
        raise


def unconfirmed_writes(store: Store, source_key: str) -> list[tuple[str, str]]:
    """Writes an earlier pass on this source sent without getting an answer."""
    rows = store.context(_context_key("unconfirmed", source_key.rstrip("/"))) or []
    return [(str(r[0]), str(r[1])) for r in rows if isinstance(r, list) and len(r) == 2]


def save_unconfirmed(
    store: Store, s: Any, source_key: str, summary: Any, run_id: int | None
) -> None:
    """What a write-back leaves for the next one on this source: the writer's whole unconfirmed
    set (it replaces the stored one) and the transaction sizes it settled on, if it sent any."""
    if summary is None:
        return
    key = source_key.rstrip("/")
    keys = sorted([rtype, ident] for rtype, ident in getattr(summary, "unconfirmed", ()) or ())
    store.set_context(s, _context_key("unconfirmed", key), keys, run_id)
    sizes = dict(getattr(summary, "batch_sizes", None) or {})
    if sizes:
        store.set_context(s, _context_key("batch_sizes", key), sizes, run_id)


def learned_batch_sizes(store: Store, source_key: str) -> dict[str, int] | None:
    stored = store.context(_context_key("batch_sizes", source_key.rstrip("/")))
    if not isinstance(stored, dict):
        return None
    return {str(k): int(v) for k, v in stored.items() if isinstance(v, int) and v > 0}


def _suggestions(
    store: Store, outcome: RunOutcome, tables: MethodTables, weights: AgeSexWeights
) -> tuple[Suggestion, ...]:
    """Suggestions for this pass's unassigned patients against the practice-wide panels in the
    store (the pass itself only sees the patients it recomputed). The stored suggestions of the
    other unassigned patients keep their room, so the list as a whole stays within capacity;
    the next full refresh places everyone again."""
    attribution = outcome.attribution
    if not any(a.status == "unassigned" for a in attribution.assignments):
        return ()
    stored = {c["practitioner"]: c for c in store.clinicians()}
    loads = []
    for clinician in sorted(set(stored) | set(attribution.eligibility.eligible)):
        row = stored.get(clinician)
        if row is None:  # a clinician new since the last full refresh
            capacity = tables.capacities.for_clinician(clinician).panel_capacity
            loads.append(ClinicianLoad(clinician, 0, 0.0, capacity))
        else:
            loads.append(
                ClinicianLoad(clinician, row["size"], row["risk_adjusted_size"], row["capacity"])
            )
    recomputed = {a.patient for a in attribution.assignments}
    committed = [
        Commitment(r["patient"], r["suggested"], float(r["weight"]))
        for r in stored_suggestions(store)
        if r["suggested"] and r["patient"] not in recomputed
    ]
    people, as_of = outcome.population.patients, outcome.as_of

    def weight_of(patient_id: str) -> float:
        person = people.get(patient_id)
        return 1.0 if person is None else weights.weight(person.birth_date, person.sex, as_of)

    return place_unassigned(
        outcome.population,
        attribution,
        as_of,
        tables.capacities.placement,
        loads,
        weight_of,
        tiers={patient: risk.tier for patient, risk in outcome.risk.items()},
        committed=committed,
    ).suggestions


def _queue_failed(s: Any, writeback: Any) -> None:
    """Patients whose CareTeam or CarePlan could not be written: redone by the next pass."""
    failed = sorted(getattr(writeback, "failed_subjects", ()) or ())
    if failed:
        now = now_utc()
        for patient in failed:
            queue_patient(s, patient, "write-back failed", now)


def _counts(outcome: RunOutcome, writeback: Any) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for a in outcome.attribution.assignments:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    counts: dict[str, Any] = {
        "assigned": statuses.get("assigned", 0),
        "unassigned": statuses.get("unassigned", 0),
        "excluded": statuses.get("excluded", 0),
        "issues": len(outcome.population.issues),
        "tiers": dict(outcome.tier_distribution),
    }
    if writeback is not None:
        counts["writeback"] = writeback.counts.as_dict()
        counts["written"] = writeback.written
        counts["writeback_failed"] = writeback.counts.total("failed")
        counts["ledger_hits"] = writeback.ledger_hits
    return counts


def _summary(outcome: RunOutcome) -> dict[str, Any]:
    from fhirpanel.report import build_report

    report = build_report(outcome)
    return {
        "summary": report["summary"],
        "eligibility": report["eligibility"],
        "pipeline": report["pipeline"],
        "warnings": report["warnings"],
    }


def _stored_weights(store: Store) -> AgeSexWeights:
    rows = store.context("weights") or []
    return AgeSexWeights(weights={(str(b), str(sx)): float(w) for b, sx, w in rows})


def _manual_for(
    overrides: Mapping[str, ManualAssignment], patients: Iterable[str]
) -> dict[str, ManualAssignment]:
    wanted = set(patients)
    return {p: m for p, m in overrides.items() if p in wanted}


def _client_of(source: FhirSource) -> Any:
    """The FHIR client behind a server or Bulk source (None for NDJSON and memory)."""
    from fhirpanel.fhir.bulk import BulkSource

    return source.client if isinstance(source, ServerSource | BulkSource) else None


def _requests(source: FhirSource) -> int:
    client = _client_of(source)
    return int(client.stats.requests) if client is not None else 0


def _context_key(kind: str, source_key: str) -> str:
    """A per-source context name that fits the column whatever the URL's length."""
    return f"{kind}:{hashlib.sha256(source_key.encode()).hexdigest()[:32]}"


def _seen_key(source_key: str) -> str:
    return _context_key("seen", source_key)


def _floor_key(source_key: str) -> str:
    return _context_key("floor", source_key)


class _SeenRecorder:
    """A source wrapper for the full read: remembers the recent versions it passed on, so the
    first incremental pass after the run skips them (the server's Date has whole seconds, so
    the watermark can be up to a second behind what was read). Only versions from the last
    couple of days are kept: a cheap string test before any parsing."""

    def __init__(self, source: FhirSource) -> None:
        self.source = source
        self.recent: list[tuple[str, str]] = []  # (lastUpdated as sent, Type/id)
        self._since = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()

    def describe(self) -> str:
        return self.source.describe()

    @property
    def read_order(self) -> tuple[str, ...]:
        return read_order(self.source)

    def read(self, resource_type: str) -> Iterator[Any]:
        items = self.source.read(resource_type)
        if resource_type not in CHANGE_TYPES:
            yield from items
            return
        for item in items:
            if isinstance(item, dict):
                raw = _last_updated(item)
                if raw is not None and raw[:10] >= self._since:
                    self.recent.append((raw, f"{resource_type}/{item.get('id')}"))
            yield item

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Any]:
        return self.source.read_for_patients(resource_type, patients)

    def seen_after(self, watermark: str | None) -> list[str]:
        floor = _instant(watermark)
        if floor is None:
            return []
        keys = set()
        for raw, ref in self.recent:
            stamp = _instant(raw)
            if stamp is not None and stamp > floor:
                keys.add(f"{ref}@{stamp.astimezone(UTC).isoformat()}")
        return sorted(keys)


def _server_now(source: FhirSource) -> str | None:
    """The server's clock, as a FHIR instant: the `meta.lastUpdated` of a count-only search
    Bundle (milliseconds, on HAPI and sekmet), else the HTTP `Date` (whole seconds). None for
    file sources or a server that says neither."""
    client = _client_of(source)
    if client is None:
        return None
    params = [("_summary", "count")]
    if isinstance(source, RosterSource):
        # No population search on a server that refuses them: count one roster patient.
        try:
            first = source.patient_ids()[:1]
        except FhirpanelError:
            return None
        params.insert(0, ("_id", first[0] if first else "none"))
    try:
        response = client.request(
            "GET", "Patient", params=params, headers={"Cache-Control": "no-cache"}
        )
    except FhirpanelError:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    meta = body.get("meta") if isinstance(body, dict) else None
    stamp = _instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    if stamp is None:
        try:
            stamp = email.utils.parsedate_to_datetime(response.headers.get("Date", ""))
        except (TypeError, ValueError):
            return None
        if stamp.tzinfo is None:  # HTTP dates are GMT
            stamp = stamp.replace(tzinfo=UTC)
    return fhir_instant(stamp)


def _newest_instant(population: Population) -> str | None:
    """The newest `meta.lastUpdated` among what a full run read (server time)."""
    newest: datetime | None = None
    for table in (population.patients.values(), population.encounters, population.conditions):
        for record in table:
            stamp = getattr(record, "last_updated", None)
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
    if newest is None:
        return None
    return fhir_instant(newest)


def _last_updated(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) else None


def _instant(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return parse_instant(raw)
    except (ParseProblem, ValueError):
        return None


def _version_key(resource: Mapping[str, Any]) -> str | None:
    """One version of a resource: `Type/id@lastUpdated` (UTC), as `_record_key` makes it."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    updated = _instant(_last_updated(resource))
    if not isinstance(rtype, str) or not isinstance(rid, str) or updated is None:
        return None
    return f"{rtype}/{rid}@{updated.astimezone(UTC).isoformat()}"


def _patient_of(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, Mapping) else None
    if not isinstance(ref, str):
        return None
    return reference_id(ref, "Patient")
