"""Roster benchmark: prints figures, asserts nothing.

One sandbox FHIR server holding a generated population (default 10,000 patients), read into
records (`read_population`) three ways:

1. the population read: paged searches of every type (the front lets everything through);
2. the Bulk read: a system-level `$export`, downloaded and parsed;
3. the roster read on the strict sandbox (population searches refused, as Epic and Oracle Health
   refuse them): a Group of every patient, Patient `_id=`, Encounter and Condition `patient=` in
   batches of `fhir.patient_batch` with `fhir.roster_concurrency` in flight, clinicians and
   organisations by reference; also with one request at a time, and one patient a request (a
   server without comma lists).

For each: wall time, FHIR requests, resources per second, and the population searches the server
counted (the roster reads must show 0).

    .venv/bin/python bench/roster.py [--patients 10000] [--concurrency 4] [--batch 50]
                                     [--skip-bulk] [--skip-single]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import population_dir  # noqa: E402
from fhirpanel.config import BulkSettings, FhirSettings  # noqa: E402
from fhirpanel.fhir.bulk import BulkExport, BulkSource  # noqa: E402
from fhirpanel.fhir.client import FhirClient  # noqa: E402
from fhirpanel.fhir.roster import RosterSpec  # noqa: E402
from fhirpanel.fhir.source import FhirSource, RosterSource, ServerSource  # noqa: E402
from fhirpanel.ingest import read_population  # noqa: E402
from fhirpanel.sandbox.server import SandboxServer  # noqa: E402

GROUP = "bench-roster"


def measure(
    label: str, server: SandboxServer, client: FhirClient, source: FhirSource
) -> dict[str, Any]:
    server.stats.reset()
    started = time.perf_counter()
    population = read_population(source)
    seconds = time.perf_counter() - started
    resources = sum(population.counts().values()) + len(population.issues)
    return {
        "label": label,
        "seconds": seconds,
        "requests": client.stats.requests,
        "resources": resources,
        "patients": len(population.patients),
        "population_searches": server.stats.population_searches,
        "refused": server.stats.refused,
    }


def show(row: dict[str, Any]) -> None:
    print(
        f"  {row['label']:<44} {row['seconds']:8.1f} s {row['requests']:7,} requests "
        f"{row['resources'] / row['seconds']:8,.0f} resources/s {row['patients']:7,} patients "
        f"{row['population_searches']:3} population searches",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50, help="fhir.patient_batch")
    parser.add_argument("--concurrency", type=int, default=4, help="fhir.roster_concurrency")
    parser.add_argument("--skip-bulk", action="store_true")
    parser.add_argument("--skip-single", action="store_true", help="skip one patient a request")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    directory = population_dir(args.patients)
    settings = FhirSettings(
        page_size=args.page_size,
        patient_batch=args.batch,
        roster_concurrency=args.concurrency,
    )
    rows = []
    with SandboxServer(strict=False) as server, tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        loaded = server.load_ndjson_dir(directory)
        server.add_group(GROUP, server.patient_ids())
        print(
            f"{args.patients:,} patients: {loaded:,} resources loaded in "
            f"{time.perf_counter() - t:.1f} s (sandbox in this process; 2 cores shared)",
            flush=True,
        )
        base = dataclasses.replace(settings, base_url=server.base_url)

        with FhirClient(base) as client:
            rows.append(
                measure("population read (paged searches)", server, client, ServerSource(client))
            )
            show(rows[-1])
        if not args.skip_bulk:
            with FhirClient(base) as client:
                export = BulkExport(client, BulkSettings(download_dir=tmp))
                with BulkSource(export) as bulk:
                    rows.append(measure("Bulk read (system $export)", server, client, bulk))
                show(rows[-1])

        server.rules.enabled = True  # from here on, population searches are refused
        roster = RosterSpec(group_id=GROUP)
        runs = [
            (f"roster read, {args.concurrency} in flight", base),
            ("roster read, 1 in flight", dataclasses.replace(base, roster_concurrency=1)),
        ]
        if not args.skip_single:
            runs.append(
                (
                    f"roster read, 1 patient a request, {args.concurrency} in flight",
                    dataclasses.replace(base, patient_batch=1),
                )
            )
        for label, cfg in runs:
            with FhirClient(cfg) as client:
                source = RosterSource(client, roster)
                try:
                    rows.append(measure(label, server, client, source))
                finally:
                    source.close()
            show(rows[-1])
    population = rows[0]
    print("relative to the population read:")
    for row in rows[1:]:
        print(
            f"  {row['label']:<44} {row['seconds'] / population['seconds']:5.2f}x the time, "
            f"{row['requests'] / population['requests']:6.1f}x the requests"
        )


if __name__ == "__main__":
    main()
