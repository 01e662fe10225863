"""The full refresh: read the whole population, reconcile with the server (write-back), and
store the results, the ledger and the new watermark in one transaction."""

from __future__ import annotations

import logging
import time

from fhirpanel.ingest import configure_read, read_window_months
from fhirpanel.jobs import brake
from fhirpanel.jobs.job import (
    Job,
    RefreshResult,
    apply_brake,
    consume_job_acceptance,
    floor_key,
    seen_key,
)
from fhirpanel.jobs.rows import result_rows
from fhirpanel.jobs.steps import (
    SeenRecorder,
    confirmation_cutoff,
    newest_instant,
    pass_counts,
    pass_summary,
    queue_failed_writes,
    requests_made,
    save_unconfirmed,
    server_now,
    write_results,
)
from fhirpanel.run import open_source, run_full
from fhirpanel.store.engine import now_utc
from fhirpanel.vocabulary import RunKind, RunStatus

log = logging.getLogger("fhirpanel.jobs.refresh")  # one logger name for every pass


def full_pass(job: Job, run_id: int) -> RefreshResult:
    settings, store = job.settings, job.store
    started = time.perf_counter()
    source = open_source(job.source_spec, settings)
    before_requests = requests_made(source)
    watermark_before = store.watermark(job.source_key)
    read_at = now_utc()  # overrides and queue as of now; later ones wait for the next pass
    pending = store.pending_patients()
    # The watermark is the server's time before the read: whatever changes while the read
    # goes on is newer, and the next incremental pass picks it up.
    server_start = server_now(source)
    configure_read(source, job.day, read_window_months(settings, job.tables.method))
    recorder = SeenRecorder(source)
    try:
        outcome = run_full(
            settings,
            recorder,
            job.day,
            manual=store.active_overrides(),
            tables=job.tables,
            statuses=store.active_statuses(),  # people's statuses: off every panel
            confirmed=store.confirmed_assignments(),  # they hold against the rules
            dismissed=store.dismissed_moves(),
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
    apply_brake(job, "the full refresh", change)
    job.check_stop("write-back")
    ledger = store.ledger(run_id)
    writeback = write_results(job, source, outcome, ledger, trust_ledger=False)
    # No stop check from here: the write-back is done, the commit is one local transaction.
    export_time = getattr(source, "transaction_time", "") or None  # a Bulk export's snapshot
    watermark = (
        export_time or server_start or newest_instant(outcome.population) or watermark_before
    )
    weights = outcome.panels.weights
    counts = pass_counts(outcome, writeback)
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
                confirmation_cutoff=confirmation_cutoff(job),
            )
        )
        ledger.flush(s)
        save_unconfirmed(store, s, job.source_key, writeback, run_id)
        store.set_context(
            s, "weights", [[b, sx, w] for (b, sx), w in sorted(weights.weights.items())], run_id
        )
        store.set_context(s, "as_of", job.day.isoformat(), run_id)
        # The practice means an incremental pass divides by, so its patients' blended factors
        # stay on the practice's scale (docs/methods.md s.3.4).
        blend = outcome.panels.blend
        store.set_context(s, "blend_means", dict(blend.means) if blend else None, run_id)
        store.set_context(s, "summary", pass_summary(outcome), run_id)
        store.set_context(s, seen_key(job.source_key), recorder.seen_after(watermark), run_id)
        store.set_context(s, floor_key(job.source_key), watermark, run_id)
        consume_job_acceptance(job, s, run_id)
        if watermark:
            store.set_watermark(s, job.source_key, watermark, run_id)
        queue_failed_writes(s, writeback)
        store.finish_run(
            run_id,
            status,
            counts=counts,
            watermark_after=watermark,
            requests=requests_made(source) - before_requests,
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
        requests_made(source) - before_requests,
        time.perf_counter() - started,
        outcome=outcome,
        writeback=writeback,
        patients=tuple(a.patient for a in outcome.attribution.assignments),
    )
