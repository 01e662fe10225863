"""The incremental pass: only patients whose Encounter, Condition or Patient changed since the
watermark (or, on a roster, per-batch date polls), plus patients queued by an override, a
confirmation, a status or a failed write."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import timedelta
from typing import Any

from fhirpanel.errors import ConfigError
from fhirpanel.fhir.parse import fhir_instant, parse_instant
from fhirpanel.fhir.source import RosterSource, ServerSource
from fhirpanel.ingest import configure_read, read_population, read_window_months
from fhirpanel.jobs import brake
from fhirpanel.jobs.job import (
    CHANGE_TYPES,
    MAX_HELD_PASSES,
    Job,
    RefreshResult,
    apply_brake,
    consume_job_acceptance,
    context_key,
    floor_key,
    seen_key,
)
from fhirpanel.jobs.rows import result_rows
from fhirpanel.jobs.steps import (
    confirmation_cutoff,
    instant_of,
    last_updated_of,
    manual_for,
    pass_counts,
    patient_of,
    queue_failed_writes,
    save_unconfirmed,
    stored_weights,
    suggestions_for,
    version_key,
    write_results,
)
from fhirpanel.run import analyse, load_member_list, open_source
from fhirpanel.store.engine import now_utc
from fhirpanel.vocabulary import RunKind, RunStatus

log = logging.getLogger("fhirpanel.jobs.refresh")  # one logger name for every pass


def incremental_pass(job: Job, run_id: int) -> RefreshResult:
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
    seen_name = seen_key(job.source_key)
    already_seen = set(store.context(seen_name) or [])
    overlap = timedelta(seconds=max(0, settings.scheduler.overlap_seconds))
    since_at = parse_instant(watermark_before) - overlap
    floor = instant_of(store.context(floor_key(job.source_key)))
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
            key = version_key(resource)
            updated_raw = last_updated_of(resource)
            updated_at = instant_of(updated_raw)
            if key is None or updated_raw is None or updated_at is None:
                continue
            found += 1
            if updated_at > since_at:
                recent.append(key)
            if key in already_seen:
                continue
            patient = patient_of(resource)
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
        weights = stored_weights(store)
        # The payer's list, read once for the pass; its own issues are the full pass's to record.
        members = load_member_list(settings, source, job.day)
        manual = manual_for(store.active_overrides(), affected)
        wanted = set(affected)  # statuses people recorded: these patients leave every panel
        people_set = {p: x for p, x in store.active_statuses().items() if p in wanted}
        confirmed = store.confirmed_assignments(affected)  # they hold against the rules
        outcome = analyse(
            population,
            job.day,
            tables,
            source=source.describe(),
            manual=manual,
            statuses=people_set,
            confirmed=confirmed,
            dismissed=store.dismissed_moves(affected),
            confirmation_months=settings.review.confirmation_months,
            weights=weights,
            blend_means=store.context("blend_means"),
            risk_product_members=members.subset(affected) if members is not None else None,
            outreach_months=(
                settings.attribution.outreach_not_seen_months,
                settings.attribution.outreach_sentinel_months,
            ),
        )
        outcome.panels = dataclasses.replace(
            outcome.panels, suggestions=suggestions_for(store, outcome, tables, weights)
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
        apply_brake(job, "the incremental pass", change)
        counts["change"] = {c.name: c.as_dict() for c in change}
        job.check_stop("write-back")
        writeback = write_results(job, source, outcome, ledger, trust_ledger=True, incremental=True)
        counts.update(pass_counts(outcome, writeback))
    status = RunStatus.PARTIAL if counts.get("writeback_failed") else RunStatus.SUCCEEDED
    watermark = newest_raw if newest_at > parse_instant(watermark_before) else watermark_before
    held_key = context_key("held", job.source_key)
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
        consume_job_acceptance(job, s, run_id)
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
                    confirmation_cutoff=confirmation_cutoff(job),
                )
            )
        ledger.flush(s)
        save_unconfirmed(store, s, job.source_key, writeback, run_id)
        if not counts.get("watermark_held"):
            store.set_context(s, seen_name, sorted(set(recent)), run_id)
        if watermark != watermark_before:
            store.set_watermark(s, job.source_key, watermark, run_id)
        queue_failed_writes(s, writeback)
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
