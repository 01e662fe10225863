"""One full pass, as `fhirpanel run` makes it: read the source, analyse, and, from a FHIR server,
plan (dry run) or write back the CareTeams and CarePlans.

A writing pass holds the same refresh lease as `fhirpanel refresh` and the worker (one writer at
a time against a server), is recorded as a run of kind `run`, passes the brake on ended PCP
participations and changed assignments before anything is sent, and keeps the writes sent
without an answer for the next pass on that source. The caller prints the result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from fhirpanel.config import Settings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.errors import ConfigError
from fhirpanel.fhir.source import ServerSource
from fhirpanel.ingest import Progress, configure_read, read_window_months
from fhirpanel.run import open_source
from fhirpanel.tables import Tables, WritebackTables
from fhirpanel.vocabulary import RunKind, RunStatus

if TYPE_CHECKING:
    from fhirpanel.jobs.refresh import Lease
    from fhirpanel.writeback import WriteSummary

# Entered around the read; yields the per-type progress callback, or None for no progress.
ReadingProgress = Callable[[], AbstractContextManager[Progress | None]]

NOT_A_SERVER = "--write needs a FHIR server source (http://... or bulk:...), not NDJSON"


@dataclass(frozen=True)
class PassOptions:
    write: bool = False  # write back (a FHIR server source only); else a dry run
    accept_change: bool = False  # let through a pass the brake would hold
    trigger: str = "cli"  # recorded with a writing pass's run


@dataclass(frozen=True)
class PassResult:
    outcome: RunOutcome
    report: dict[str, Any]  # the run report, with the write-back's part when there was one
    writeback: WriteSummary | None  # None: an NDJSON source, nothing planned

    @property
    def status(self) -> RunStatus:
        """Partial when a write failed."""
        failed = self.writeback is not None and self.writeback.counts.total("failed")
        return RunStatus.PARTIAL if failed else RunStatus.SUCCEEDED


@contextlib.contextmanager
def _no_progress() -> Iterator[Progress | None]:
    yield None


def run_pass(
    settings: Settings,
    source_spec: str,
    as_of: date,
    options: PassOptions | None = None,
    reading: ReadingProgress = _no_progress,
) -> PassResult:
    """One pass over `source_spec` (a FHIR base URL, `ndjson:DIR` or `bulk:BASE`) on `as_of`.
    A writing pass takes the refresh lease in `settings.database` first (BusyError when another
    run holds it); ChangeHeld when the brake stops it. `reading` shows the read's progress."""
    options = options or PassOptions()
    if settings.fhir.roster and source_spec.startswith("ndjson:"):
        raise ConfigError(
            "a roster is read from a FHIR server (http://... or bulk:...), not NDJSON"
        )
    if not options.write:
        return _pass(settings, source_spec, as_of, options, reading, lease=None)
    if source_spec.startswith("ndjson:"):
        raise ConfigError(NOT_A_SERVER)
    from fhirpanel.jobs.refresh import leased_run
    from fhirpanel.store import Store

    store = Store(settings.database)
    try:
        with leased_run(settings, store, RunKind.RUN, options.trigger, source_spec, as_of) as lease:
            return _pass(settings, source_spec, as_of, options, reading, lease=lease)
    finally:
        store.close()


def _pass(
    settings: Settings,
    spec: str,
    as_of: date,
    options: PassOptions,
    reading: ReadingProgress,
    lease: Lease | None,
) -> PassResult:
    from fhirpanel.fhir.bulk import BulkSource
    from fhirpanel.report import build_report
    from fhirpanel.run import run_full

    started = time.perf_counter()
    tables = Tables.load(settings)  # once, before any read: a broken file stops nothing midway
    source = open_source(spec, settings)
    configure_read(source, as_of, read_window_months(settings, tables.method))
    # Statuses people recorded live in the store: only a writing pass (it holds one) applies them.
    statuses = lease.store.active_statuses() if lease is not None else None
    # So do confirmations, which hold a confirmed patient with their clinician.
    confirmed = lease.store.confirmed_assignments() if lease is not None else None
    dismissed = lease.store.dismissed_moves() if lease is not None else None
    with reading() as progress:
        outcome = run_full(
            settings,
            source,
            as_of,
            progress=progress,
            tables=tables,
            statuses=statuses,
            confirmed=confirmed,
            dismissed=dismissed,
        )
    if isinstance(source, BulkSource | ServerSource):
        source.close()  # downloaded NDJSON, extra clients; the client stays for write-back
    writeback = None
    if isinstance(source, ServerSource | BulkSource):
        writeback = _write_back(
            settings, spec, outcome, source.client, options, lease, tables.writeback
        )
    elif options.write:
        raise ConfigError(NOT_A_SERVER)
    if lease is not None and writeback is not None:
        failed = writeback.counts.total("failed")
        lease.finish(
            RunStatus.PARTIAL if failed else RunStatus.SUCCEEDED,
            counts={
                "written": writeback.written,
                "writeback": writeback.counts.as_dict(),
                "writeback_failed": failed,
                "issues": len(outcome.population.issues),
            },
            seconds=round(time.perf_counter() - started, 3),
        )
    report = build_report(outcome)
    if writeback is not None:
        report["writeback"] = writeback.as_report()
    return PassResult(outcome, report, writeback)


def _write_back(
    settings: Settings,
    spec: str,
    outcome: RunOutcome,
    client: Any,
    options: PassOptions,
    lease: Lease | None,
    tables: WritebackTables,
) -> WriteSummary:
    """Plan (no lease: a dry run) or write, behind the brake, remembering unconfirmed writes."""
    from fhirpanel.writeback import WriteBackInterrupted, write_back

    accepted = [False]  # set by the guard: a stored acceptance let the change through
    extra: dict[str, Any] = {}
    if lease is not None:
        from fhirpanel.jobs.steps import unconfirmed_writes

        extra = {
            "guard": _write_guard(settings, spec, options, lease, accepted),
            "unconfirmed": unconfirmed_writes(lease.store, spec),
        }
    try:
        writeback = write_back(
            outcome, client, settings.writeback, dry_run=not options.write, tables=tables, **extra
        )
    except WriteBackInterrupted as exc:
        if lease is not None:
            _remember_unconfirmed(lease, spec, exc.summary)
        raise
    if lease is not None:
        _remember_unconfirmed(lease, spec, writeback)
        if accepted[0]:
            from fhirpanel.jobs.refresh import consume_acceptance

            consume_acceptance(lease.store, spec, lease.run_id)
    return writeback


def _remember_unconfirmed(lease: Lease, source: str, summary: Any) -> None:
    """Writes sent without an answer: a later run that finds them landed writes their
    Provenance (the same record the refresh jobs keep for this source)."""
    from fhirpanel.jobs.steps import save_unconfirmed

    with lease.store.session() as s:
        save_unconfirmed(lease.store, s, source, summary, lease.run_id)


def _write_guard(
    settings: Settings, source: str, options: PassOptions, lease: Lease, accepted: list[bool]
) -> Callable[[tuple[int, int], tuple[int, int]], None]:
    """`write_back(guard=...)` for a writing pass: the brake on ended PCP participations and
    changed assignments, checked after the CareTeams are planned and before anything is sent."""
    from fhirpanel.jobs.refresh import check_write_brake

    def guard(ended: tuple[int, int], changed: tuple[int, int]) -> None:
        from fhirpanel.jobs import brake

        change = brake.figures(settings.safety, ended=ended, changed=changed)
        accepted[0] = check_write_brake(
            settings,
            lease.store,
            source,
            change,
            what="run --write",
            accept_all=options.accept_change,
        )

    return guard
