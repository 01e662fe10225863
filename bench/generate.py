"""Benchmark the synthetic population generator: `python bench/generate.py [--patients N]`.

Writes the NDJSON files and transaction bundles (to a temporary folder unless --out is given)
and prints patients/s, resources/s, seconds, peak RSS and file sizes. Target: 100,000 patients
in under two minutes, with memory that does not grow with N.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from fhirpanel.sandbox.generate import write_population


def megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1_000_000:,.1f} MB"


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 11, 22))
    parser.add_argument("--malformed-rate", type=float, default=0.01)
    parser.add_argument("--bundle-size", type=int, default=500)
    parser.add_argument("--out", type=Path, help="keep the output here (default: a temp dir)")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="fhirpanel-bench-"))
    rss_before = peak_rss_bytes()
    started = time.perf_counter()
    counts = write_population(
        out, args.patients, args.seed, args.as_of, args.malformed_rate, args.bundle_size
    )
    seconds = time.perf_counter() - started
    total = sum(counts.values())

    print(f"patients            {args.patients:,} (seed {args.seed}, as of {args.as_of})")
    for rtype, count in counts.items():
        size = (out / f"{rtype}.ndjson").stat().st_size
        print(f"  {rtype:<18}{count:>12,}  {megabytes(size):>12}")
    bundles = sorted((out / "bundles").glob("transaction-*.json"))
    print(
        f"  {'bundles':<18}{len(bundles):>12,}  "
        f"{megabytes(sum(b.stat().st_size for b in bundles)):>12}"
    )
    print(f"resources           {total:,}")
    print(f"seconds             {seconds:,.1f}")
    print(f"patients/s          {args.patients / seconds:,.0f}")
    print(f"resources/s         {total / seconds:,.0f}")
    print(f"peak RSS            {megabytes(peak_rss_bytes())} (at start {megabytes(rss_before)})")
    if args.out is None:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
