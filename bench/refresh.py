"""Refresh benchmark: prints figures, asserts nothing.

A sandbox FHIR server holding a generated population (default 10,000 patients), a SQLite store:

1. a full refresh with write-back (the first: everything is created);
2. 50 new encounters for 50 patients, then one incremental pass;
3. an incremental pass with nothing new;
4. a second full refresh (reconciles with the server: reads everything, writes nothing).

For each: wall time and FHIR requests. Target: the incremental pass under 5% of the full
refresh's time.

    .venv/bin/python bench/refresh.py [--patients 10000] [--encounters 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import AS_OF, population_dir  # noqa: E402
from fhirpanel.config import FhirSettings, Settings  # noqa: E402
from fhirpanel.fhir.client import FhirClient  # noqa: E402
from fhirpanel.jobs.job import RefreshResult  # noqa: E402
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh  # noqa: E402
from fhirpanel.sandbox.server import SandboxServer  # noqa: E402
from fhirpanel.store import Store  # noqa: E402


def visit(patient: str, practitioner: str, day: date) -> dict[str, Any]:
    start = f"{day.isoformat()}T10:00:00Z"
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}],
        "subject": {"reference": patient},
        "participant": [{"individual": {"reference": practitioner}}],
        "period": {"start": start, "end": start.replace("10:00", "10:30")},
    }


def line(label: str, result: RefreshResult, full_seconds: float | None = None) -> str:
    share = (
        f" ({100 * result.seconds / full_seconds:.1f}% of the full refresh)" if full_seconds else ""
    )
    return (
        f"  {label:<34} {result.seconds:8.2f} s {result.requests:6,} requests "
        f"{result.counts.get('written', 0):6,} written "
        f"{len(result.patients):6,} patients{share}  [{result.status}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--encounters", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("fhirpanel").setLevel(logging.WARNING)  # figures only

    directory = population_dir(args.patients)
    with tempfile.TemporaryDirectory(prefix="fhirpanel-bench-") as tmp, SandboxServer() as box:
        started = time.perf_counter()
        box.load_ndjson_dir(directory)
        print(
            f"sandbox loaded with {args.patients:,} patients in "
            f"{time.perf_counter() - started:.1f}s",
            flush=True,
        )
        base = Settings.load(env={})
        settings = dataclasses.replace(
            base,
            fhir=dataclasses.replace(base.fhir, base_url=box.base_url),
            scheduler=dataclasses.replace(base.scheduler, source=box.base_url),
        )
        store = Store(f"sqlite:///{Path(tmp) / 'state.db'}")

        full = full_refresh(settings, store, as_of=AS_OF, trigger="bench")
        print(line("full refresh (first, creates)", full), flush=True)

        clinicians = [c["practitioner"] for c in store.clinicians() if c["eligible"]]
        assigned = [
            p
            for p in store.patient_ids()
            if (store.patient_state(p) or {}).get("status") == "assigned"
        ]
        step = max(1, len(assigned) // args.encounters)
        chosen = assigned[::step][: args.encounters]
        with FhirClient(FhirSettings(base_url=box.base_url)) as client:
            for n, patient in enumerate(chosen):
                client.create(
                    visit(patient, clinicians[n % len(clinicians)], AS_OF - timedelta(days=3))
                )

        inc = incremental_refresh(settings, store, as_of=AS_OF, trigger="bench")
        print(line(f"incremental ({len(chosen)} new encounters)", inc, full.seconds))
        idle = incremental_refresh(settings, store, as_of=AS_OF, trigger="bench")
        print(line("incremental (nothing new)", idle, full.seconds))
        again = full_refresh(settings, store, as_of=AS_OF, trigger="bench")
        print(line("full refresh (second, reconciles)", again))
        print(
            f"\nincremental / full: {inc.seconds / full.seconds:.3f} (target < 0.05); "
            f"requests {inc.requests} vs {full.requests}"
        )
        store.close()


if __name__ == "__main__":
    main()
