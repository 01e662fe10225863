"""`/metrics` in the Prometheus text format, from a registry owned by one app.

Store figures (runs by kind and status, held runs awaiting acceptance, the last run's duration
and write-back counts, patients per status and tier, unconfirmed assignments) are read from the
store at each scrape by a custom collector, so every process reports the same values. Request
latency is a histogram observed by the app itself.

Multi-worker caveat: under gunicorn each worker process has its own registry, so the latency
histogram only counts the requests of the worker that answers the scrape, and a scrape lands on
whichever worker is free. Rates stay meaningful on average but are not totals; run one worker,
or move to prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), for exact counts.
The store-derived figures do not have this problem.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from fhirpanel.api.held import awaiting
from fhirpanel.api.openapi import RUN_KINDS, RUN_STATUSES
from fhirpanel.store import Store
from fhirpanel.store.queries import store_figures

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StoreCollector(Collector):
    """Figures read from the store when Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # nothing is read from the store when the collector is registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fhirpanel_store_up", "1 when the state store answered")
        try:
            figures = store_figures(self.store)
        except SQLAlchemyError as exc:
            log.warning("metrics: the store did not answer (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        runs = CounterMetricFamily(
            "fhirpanel_runs", "Refresh runs recorded, by kind and status", labels=["kind", "status"]
        )
        # Every known status of every kind seen (0 when none), so an alert on a status that
        # has not happened yet (held, crashed) has a series to watch.
        kinds = sorted({kind for kind, _ in figures.runs} | set(RUN_KINDS))
        statuses = [*RUN_STATUSES, *sorted({s for _, s in figures.runs} - set(RUN_STATUSES))]
        for kind in kinds:
            for status in statuses:
                runs.add_metric([kind, status], figures.runs.get((kind, status), 0))
        yield runs
        held_runs = 0
        if any(status == "held" for _, status in figures.runs):
            try:
                held_runs = len(awaiting(self.store))
            except SQLAlchemyError as exc:  # counted as held, superseded or not
                log.warning("metrics: held runs not checked (%s)", type(exc).__name__)
                held_runs = sum(n for (_, status), n in figures.runs.items() if status == "held")
        yield GaugeMetricFamily(
            "fhirpanel_runs_held",
            "Held runs awaiting acceptance: the brake stopped a change "
            "larger than [safety] allows and nothing was written (not "
            "counting those a later run superseded)",
            value=held_runs,
        )

        duration = GaugeMetricFamily(
            "fhirpanel_last_run_duration_seconds",
            "Duration of the last finished run of each kind",
            labels=["kind"],
        )
        finished = GaugeMetricFamily(
            "fhirpanel_last_run_finished_timestamp_seconds",
            "When the last finished run of each kind ended (Unix time)",
            labels=["kind"],
        )
        success = GaugeMetricFamily(
            "fhirpanel_last_run_success",
            "1 when the last finished run of each kind succeeded (fully or partly)",
            labels=["kind"],
        )
        written = GaugeMetricFamily(
            "fhirpanel_last_run_writeback",
            "Write-back actions of the last finished run of each kind",
            labels=["kind", "resource_type", "action"],
        )
        for kind, run in sorted(figures.last_runs.items()):
            if run.get("seconds") is not None:
                duration.add_metric([kind], float(run["seconds"]))
            stamp = _epoch(run.get("finished_at"))
            if stamp is not None:
                finished.add_metric([kind], stamp)
            success.add_metric([kind], 1 if run["status"] in ("succeeded", "partial") else 0)
            for rtype, actions in sorted(_writeback(run).items()):
                for action, n in sorted(actions.items()):
                    written.add_metric([kind, rtype, action], n)
        yield from (duration, finished, success, written)

        patients = GaugeMetricFamily(
            "fhirpanel_patients", "Patients in the store by status", labels=["status"]
        )
        for status in ("assigned", "unassigned", "excluded"):
            patients.add_metric([status], figures.totals.get(status, 0))
        yield patients

        tiers = GaugeMetricFamily(
            "fhirpanel_assigned_patients_by_tier",
            "Assigned patients per risk tier",
            labels=["tier"],
        )
        for tier, n in sorted(figures.tiers.items()):
            tiers.add_metric([tier], n)
        yield tiers

        for name, key, text in (
            (
                "fhirpanel_unconfirmed_assignments",
                "unconfirmed",
                "Assigned patients whose clinician nobody has confirmed",
            ),
            ("fhirpanel_overrides_active", "overrides", "Manual assignments in force"),
            (
                "fhirpanel_pending_patients",
                "pending",
                "Patients queued for the next refresh (overrides, failed writes)",
            ),
        ):
            yield GaugeMetricFamily(name, text, value=figures.totals.get(key, 0))
        yield GaugeMetricFamily(
            "fhirpanel_clinicians", "Clinicians with a panel record", value=figures.clinicians
        )
        yield GaugeMetricFamily(
            "fhirpanel_refresh_running",
            "1 while a refresh holds the lock",
            value=int(figures.lock_held),
        )


def _writeback(run: dict[str, Any]) -> dict[str, dict[str, int]]:
    raw = (run.get("counts") or {}).get("writeback") or {}
    out: dict[str, dict[str, int]] = {}
    if isinstance(raw, dict):
        for rtype, actions in raw.items():
            if isinstance(actions, dict):
                out[str(rtype)] = {
                    str(a): int(n) for a, n in actions.items() if isinstance(n, int | float)
                }
    return out


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ApiMetrics:
    """The app's registry: the store collector and the request latency histogram."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(store))
        self.latency = Histogram(
            "fhirpanel_http_request_duration_seconds",
            "API and dashboard request latency (this worker process only)",
            labelnames=("endpoint", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint, method, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
