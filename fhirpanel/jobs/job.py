"""What a refresh pass carries: its settings, store and stop flags (`Job`), what it returns
(`RefreshResult`), and the brake applied mid-pass."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from fhirpanel.config import Settings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.errors import ChangeHeld, ConfigError, FhirpanelError
from fhirpanel.jobs import brake
from fhirpanel.store import Store
from fhirpanel.tables import Tables
from fhirpanel.vocabulary import COMPLETED_STATUSES, RunKind

log = logging.getLogger("fhirpanel.jobs.refresh")  # one logger name for every pass

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


def apply_brake(job: Job, what: str, change: list[brake.Change]) -> None:
    """Hold the pass (ChangeHeld) when it changes too much, unless accepted."""
    accepted = job.store.context(context_key("accept", job.source_key))
    figures = accepted.get("figures") if isinstance(accepted, dict) else None
    try:
        brake.check(change, job.settings.safety, what=what, accept_all=job.accept_change)
    except ChangeHeld:
        brake.check(change, job.settings.safety, what=what, accepted=figures or {})
        job.used_acceptance = True
        log.warning("%s: a large change let through by an operator's acceptance", what)


def consume_job_acceptance(job: Job, s: Any, run_id: int) -> None:
    """An acceptance lets one pass through: gone once that pass commits."""
    if job.used_acceptance:
        job.store.set_context(s, context_key("accept", job.source_key), None, run_id)


def context_key(kind: str, source_key: str) -> str:
    """A per-source context name that fits the column whatever the URL's length."""
    return f"{kind}:{hashlib.sha256(source_key.encode()).hexdigest()[:32]}"


def seen_key(source_key: str) -> str:
    return context_key("seen", source_key)


def floor_key(source_key: str) -> str:
    return context_key("floor", source_key)
