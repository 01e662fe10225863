"""`fhirpanel worker`: the scheduler process (its own process, never inside the web workers:
docs/architecture.md#the-worker).

APScheduler 3.x `BlockingScheduler` with two jobs, module-level functions with stable ids:
`incremental` every `scheduler.incremental_minutes` (`scheduler.roster_poll_minutes` for a roster
source) and at start, and `full` on `scheduler.full_cron`, both `max_instances=1,
coalesce=True`. The store's lock keeps other
workers and manual runs out. Where the FHIR server supports R4 rest-hook Subscriptions, the
worker registers one on Encounter pointing at a small loopback HTTP endpoint; a notification
asks for an immediate incremental pass, and polling stays on as the safety net.

SIGTERM or SIGINT: no new jobs start; a running pass that has not begun writing stops at its
next checkpoint and is recorded `abandoned`, with the watermark untouched; a pass already
writing finishes its write-back and its (local, short) commit first, within a grace period.
Give the container that long to stop (`docker stop -t 120`; Kubernetes
`terminationGracePeriodSeconds`); a pass killed mid-write is redone by the next one, and its
lease expires after `scheduler.lock_stale_seconds`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError, FhirHttpError, TransportError, one_line
from fhirpanel.jobs.job import RefreshResult
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh, run_queued
from fhirpanel.store import Store

log = logging.getLogger(__name__)
INCREMENTAL_JOB = "incremental"
FULL_JOB = "full"
QUEUE_JOB = "queue"  # runs asked for through the API, and the worker's heartbeat
QUEUE_SECONDS = 5
SUBSCRIPTION_REASON = "fhirpanel: refresh panels when encounters change"
SHUTDOWN_GRACE_SECONDS = 120.0
MAX_NOTIFICATION_BYTES = 1 << 20  # a notification carrying a resource is far smaller


@dataclass
class WorkerState:
    """What the module-level job functions work with (one worker per process)."""

    settings: Settings
    store: Store
    stop: threading.Event = field(default_factory=threading.Event)
    scheduler: BaseScheduler | None = None
    running: threading.Lock = field(default_factory=threading.Lock)
    notified_at: float = 0.0  # monotonic time of the last notification
    last_result: RefreshResult | None = None
    results: list[RefreshResult] = field(default_factory=list)


_state: WorkerState | None = None


def _current() -> WorkerState:
    if _state is None:
        raise RuntimeError("the worker is not set up")
    return _state


# ---------------------------------------------------------------- jobs


def incremental_job(trigger: str = "schedule") -> None:
    """One incremental pass (a full refresh when none is stored yet)."""
    state = _current()
    if state.stop.is_set():
        return
    with state.running:
        started = time.monotonic()
        result = incremental_refresh(state.settings, state.store, trigger=trigger, stop=state.stop)
        _remember(state, result)
    # A notification that arrived while this pass ran may have been coalesced away: run again.
    if state.notified_at > started and not state.stop.is_set():
        wake(state, "subscription")


def full_job(trigger: str = "schedule") -> None:
    state = _current()
    if state.stop.is_set():
        return
    with state.running:
        _remember(
            state, full_refresh(state.settings, state.store, trigger=trigger, stop=state.stop)
        )


def queue_job() -> None:
    """Run what the API queued."""
    state = _current()
    if state.stop.is_set() or not state.running.acquire(blocking=False):
        return
    try:
        result = run_queued(state.settings, state.store, stop=state.stop)
        if result is not None:
            _remember(state, result)
    finally:
        state.running.release()


def _remember(state: WorkerState, result: RefreshResult) -> None:
    state.last_result = result
    state.results = [*state.results[-49:], result]
    log.info(
        "%s refresh run %s: %s %s",
        result.kind,
        result.run_id,
        result.status,
        result.error or result.counts,
    )


def wake(state: WorkerState, trigger: str) -> None:
    """Run the incremental job now (coalesced with a pending run)."""
    if state.scheduler is None or state.stop.is_set():
        return
    with contextlib.suppress(Exception):  # the scheduler is shutting down
        state.scheduler.add_job(
            incremental_job,
            kwargs={"trigger": trigger},
            id=f"{INCREMENTAL_JOB}-now",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )


# ---------------------------------------------------------------- notifications


class HookServer:
    """The rest-hook endpoint: any POST or PUT under `/hook` (R4: the notification may carry the
    resource, PUT to `/hook/Encounter/id`, or nothing) answers 200 at once and wakes the worker.
    A configured hook token must come back in `Authorization: Bearer ...`."""

    def __init__(self, host: str, port: int, token: str, on_notify: Any) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length < 0 or length > MAX_NOTIFICATION_BYTES:
                    self.close_connection = True
                    self.send_response(400 if length < 0 else 413)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if length:
                    self.rfile.read(length)  # drain; the pass reads what changed itself
                status = owner.check(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status == 200:
                    owner.notifications += 1
                    on_notify()

            do_POST = do_PUT = _answer

            def do_GET(self) -> None:  # a health probe of the hook itself
                self.send_response(200 if self.path.startswith("/hook") else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("hook: " + format, *args)

        self.token = token
        self.notifications = 0
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="fhirpanel-hook",
            daemon=True,
        )

    def check(self, path: str, authorization: str) -> int:
        if not path.startswith("/hook"):
            return 404
        if self.token and not hmac.compare_digest(
            authorization.encode(), f"Bearer {self.token}".encode()
        ):
            return 401
        return 200

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def register_subscription(client: Any, endpoint: str, token: str) -> str | None:
    """Create (or re-activate) a rest-hook Subscription on Encounter pointing at `endpoint`.
    None when the server does not support Subscriptions (polling carries on alone)."""
    caps = client.capabilities()
    if not caps.subscriptions and not caps.supports("Subscription", "create"):
        log.info("the FHIR server does not advertise Subscriptions: polling only")
        return None
    subscription: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": SUBSCRIPTION_REASON,
        "criteria": "Encounter?",
        # No payload: a bare ping carries no PHI; the pass reads what changed itself.
        "channel": {"type": "rest-hook", "endpoint": endpoint},
    }
    if token:
        subscription["channel"]["header"] = [f"Authorization: Bearer {token}"]
    try:
        for existing in client.search("Subscription", [("_count", "100")]):
            channel = existing.get("channel") or {}
            if channel.get("endpoint") == endpoint and existing.get("criteria") == "Encounter?":
                subscription["id"] = existing["id"]
                client.update(subscription)
                return str(existing["id"])
        created = client.create(subscription)
    except (FhirHttpError, TransportError) as exc:
        log.warning("could not register a Subscription (%s): polling only", exc)
        return None
    sub_id = created.get("id")
    log.info("registered Subscription/%s for Encounter changes -> %s", sub_id, endpoint)
    return str(sub_id) if sub_id else None


def remove_subscription(client: Any, sub_id: str) -> None:
    try:
        client.request("DELETE", f"Subscription/{sub_id}")
    except (FhirHttpError, TransportError) as exc:
        log.warning("could not remove Subscription/%s: %s", sub_id, exc)


# ---------------------------------------------------------------- the process


def _beat(store: Store, stop: threading.Event) -> None:
    """Tell the API a worker is alive (it then queues runs for us instead of running them)."""
    while True:
        try:
            store.worker_heartbeat()
        except Exception as exc:
            log.warning("worker heartbeat failed: %s", one_line(exc))
            log.debug("worker heartbeat failed", exc_info=True)
        if stop.wait(QUEUE_SECONDS):
            return


@contextlib.contextmanager
def notifications(state: WorkerState) -> Iterator[HookServer | None]:
    """The hook endpoint and the Subscription, when configured and supported."""
    cfg = state.settings.scheduler
    source = cfg.source or state.settings.fhir.base_url
    if not cfg.subscriptions or not source.startswith(("http://", "https://")):
        yield None
        return
    from fhirpanel.fhir.client import FhirClient

    def notified() -> None:
        state.notified_at = time.monotonic()
        wake(state, "subscription")

    hook = HookServer(cfg.hook_host, cfg.hook_port, cfg.hook_token, notified)
    hook.start()
    endpoint = cfg.hook_url or f"http://{cfg.hook_host}:{hook.port}/hook"
    client = FhirClient(state.settings.with_fhir(base_url=source).fhir)
    sub_id = None
    try:
        sub_id = register_subscription(client, endpoint, cfg.hook_token)
        yield hook
    finally:
        if sub_id:
            remove_subscription(client, sub_id)
        hook.stop()
        client.close()


def poll_interval(settings: Settings) -> tuple[float, str]:
    """Minutes between incremental passes and the setting they come from: a roster source
    (fhir.roster, or fhir.read_mode = roster) polls every roster patient, so it runs every
    `scheduler.roster_poll_minutes` rather than `scheduler.incremental_minutes`."""
    cfg = settings.scheduler
    if settings.fhir.roster or settings.fhir.read_mode == "roster":
        return cfg.roster_poll_minutes, "roster_poll_minutes"
    return cfg.incremental_minutes, "incremental_minutes"


def run_worker(
    settings: Settings, *, store: Store | None = None, ready: threading.Event | None = None
) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    global _state
    cfg = settings.scheduler
    minutes, setting = poll_interval(settings)
    if minutes <= 0:
        raise ConfigError(f"scheduler.{setting} must be positive")
    try:
        full_trigger = CronTrigger.from_crontab(cfg.full_cron)
    except ValueError as exc:
        raise ConfigError(f"scheduler.full_cron: {exc}") from exc
    store = store or Store(settings.database)
    abandoned = store.abandon_stale_runs()
    if abandoned:
        log.warning("marked %d run(s) left running by a stopped process as abandoned", abandoned)
    scheduler = BlockingScheduler(
        job_defaults={"max_instances": 1, "coalesce": True},
        executors={"default": {"type": "threadpool", "max_workers": 2}},
    )
    state = WorkerState(settings=settings, store=store, scheduler=scheduler)
    _state = state
    source = cfg.source or settings.fhir.base_url
    if source.startswith(("http://", "https://")):
        scheduler.add_job(
            incremental_job,
            IntervalTrigger(minutes=minutes),
            id=INCREMENTAL_JOB,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=int(minutes * 60),
        )
        scheduler.add_job(full_job, full_trigger, id=FULL_JOB, misfire_grace_time=3600)
    else:
        # NDJSON and Bulk sources are read whole: full refreshes only, the first one now.
        log.info("source %s has no incremental search: full refreshes only", source[:80])
        scheduler.add_job(
            full_job,
            full_trigger,
            id=FULL_JOB,
            misfire_grace_time=3600,
            next_run_time=datetime.now(UTC),
        )
    scheduler.add_job(
        queue_job,
        IntervalTrigger(seconds=QUEUE_SECONDS),
        id=QUEUE_JOB,
        next_run_time=datetime.now(UTC),
        misfire_grace_time=QUEUE_SECONDS,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current step", signum)
        state.stop.set()
        if scheduler.running:  # a second signal, or one before start(), must not raise
            with contextlib.suppress(SchedulerNotRunningError):
                scheduler.shutdown(wait=False)

    def watch_stop() -> None:
        # Covers a signal that came between the check below and start() taking over.
        if state.stop.is_set() and scheduler.running:
            with contextlib.suppress(SchedulerNotRunningError):
                scheduler.shutdown(wait=False)

    scheduler.add_job(watch_stop, IntervalTrigger(seconds=1), id="stop-watch")

    # The liveness heartbeat has a thread of its own: a long refresh must not starve it.
    beat = threading.Thread(
        target=_beat, args=(store, state.stop), name="fhirpanel-worker-beat", daemon=True
    )
    beat.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with notifications(state) as hook:
            where = f", notifications on port {hook.port}" if hook else ""
            log.info(
                "worker started: incremental every %s min, full at '%s'%s",
                minutes,
                cfg.full_cron,
                where,
            )
            print(  # noqa: T201 - the ready line a supervisor waits for
                f"fhirpanel worker ready (store {store.describe()}{where})",
                flush=True,
            )
            if ready is not None:
                ready.set()
            if not state.stop.is_set():  # a signal during start-up: do not start at all
                scheduler.start()  # blocks until shutdown
            # Let a pass that is writing finish (bounded), so nothing is left half done.
            if state.running.acquire(timeout=SHUTDOWN_GRACE_SECONDS):
                state.running.release()
            else:
                log.warning(
                    "a refresh was still running after %.0fs; it will be recorded "
                    "abandoned at the next start",
                    SHUTDOWN_GRACE_SECONDS,
                )
    finally:
        state.stop.set()  # ends the heartbeat thread
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state = None
    log.info("worker stopped")
    return 0
