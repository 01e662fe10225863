"""Write-back benchmark on a generated sandbox population: resources written per second on the
first run, and the time and request count of the no-change second run. Prints figures, asserts
nothing.

The population (default 10,000 patients) is generated once into bench/data/ with
`write_population`, loaded into an in-memory sandbox server, and read back through the real
client; write-back then runs three times: a dry run, the first (writing) run and a second run
with no new data.

    .venv/bin/python bench/writeback.py [--patients 10000] [--batch-size 100] [--optional]
        [--no-transactions]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import UTC, date, datetime
from pathlib import Path

from fhirpanel.config import FhirSettings, Settings, WritebackSettings
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.source import ServerSource
from fhirpanel.run import run_full
from fhirpanel.sandbox.generate import write_population
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.tables import Tables
from fhirpanel.writeback import WriteSummary, write_back

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
AS_OF = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def population_dir(patients: int, seed: int) -> Path:
    """Generate once, reuse: bench/data/pop-<N>-s<seed>/ (git-ignored)."""
    out = DATA / f"pop-{patients}-s{seed}"
    if not (out / "Patient.ndjson").is_file():
        print(f"generating {patients:,} patients into {out} ...", flush=True)
        write_population(out, patients, seed, AS_OF)
    return out


def describe(label: str, summary: WriteSummary) -> None:
    requests = summary.requests
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    counts = "; ".join(
        f"{rtype} " + ", ".join(f"{n} {action}" for action, n in row.items() if n)
        for rtype, row in summary.counts.by_type.items()
    )
    verb = "planned" if summary.dry_run else "written"
    print(
        f"{label}: {summary.seconds:.2f}s, {summary.written:,} {verb} "
        f"({rate:,.0f} resources/s), {requests.get('total', 0):,} requests "
        f"{requests.get('by_method', {})}, {summary.provenance} Provenance, "
        f"{len(summary.issues)} issues"
    )
    print(f"    {counts}")
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in summary.timings.items())
    print(f"    {phases}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--optional", action="store_true", help="also write RiskAssessments and attribution Groups"
    )
    parser.add_argument(
        "--no-transactions",
        action="store_true",
        help="single requests instead of transaction Bundles",
    )
    args = parser.parse_args()

    directory = population_dir(args.patients, args.seed)
    writeback = dataclasses.replace(
        WritebackSettings(),
        batch_size=args.batch_size,
        risk_assessment=args.optional,
        attribution_group=args.optional,
        use_transactions=not args.no_transactions,
    )
    settings = dataclasses.replace(Settings.load(env={}), writeback=writeback)
    tables = Tables.load(settings)

    with SandboxServer() as server:
        started = time.perf_counter()
        loaded = server.load_ndjson_dir(directory)
        print(f"sandbox seeded with {loaded:,} resources in {time.perf_counter() - started:.1f}s")
        with FhirClient(FhirSettings(base_url=server.base_url, page_size=500)) as client:
            started = time.perf_counter()
            outcome = run_full(settings, ServerSource(client), AS_OF, tables=tables)
            assigned = sum(1 for a in outcome.attribution.assignments if a.status == "assigned")
            print(
                f"read and analysed {len(outcome.population.patients):,} patients from the "
                f"server in {time.perf_counter() - started:.1f}s ({assigned:,} assigned)"
            )

            def run(dry_run: bool) -> WriteSummary:
                return write_back(
                    outcome, client, writeback, dry_run=dry_run, now=NOW, tables=tables.writeback
                )

            describe("dry run   ", run(True))
            describe("first run ", run(False))
            describe("second run", run(False))


if __name__ == "__main__":
    main()
