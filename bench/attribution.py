"""Whole-run benchmark from NDJSON: per-stage seconds (read, attribute, risk, panels) and peak
memory. Targets (issue): the whole run under 60 s and under 3 GB for 100,000 patients.

    .venv/bin/python bench/attribution.py [--patients 100000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import AS_OF, population_dir

from fhirpanel.config import Settings
from fhirpanel.fhir.source import NdjsonSource
from fhirpanel.report import build_report
from fhirpanel.run import run_full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    args = parser.parse_args()
    directory = population_dir(args.patients)

    started = time.perf_counter()
    outcome = run_full(Settings.load(env={}), NdjsonSource(directory), AS_OF)
    t = time.perf_counter()
    report = build_report(outcome)
    outcome.timings["report"] = round(time.perf_counter() - t, 3)
    total = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    stages = ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    print(
        f"{args.patients:,} patients from NDJSON: total {total:.1f}s ({stages}); "
        f"peak RSS {rss_mb:,.0f} MB (targets: < 60 s, < 3 GB)"
    )
    summary = report["summary"]
    print(
        f"assigned {summary['assigned']:,}, unassigned {summary['unassigned']:,}, excluded "
        f"{summary['excluded']:,}; by rule {summary['by_rule']}; panels {len(report['panels'])}"
    )
    print(f"tiers (assigned): {summary['tiers']}; warnings: {report['warnings']}")
    statuses = Counter(p["status"] for p in report["patients"])
    print(f"statuses {dict(statuses)}; issues {summary['issues']:,}")


if __name__ == "__main__":
    main()
