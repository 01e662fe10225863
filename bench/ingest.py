"""Ingest benchmark: prints figures, asserts nothing.

(a) NDJSON ingest of a generated population (default 100,000 patients): resources/s, peak RSS.
(b) Paging the sandbox FHIR server: our FhirClient against a bare `requests` loop over the same
    pages (target ratio >= 0.9).
(c) Bulk Data `$export` against the paged read, both into records (`read_population`) from one
    sandbox server holding a generated population (default 10,000 patients): resources per second
    from kick-off to records, with the export, download and parse stages apart.

    .venv/bin/python bench/ingest.py [--patients 100000] [--paging-patients 2000]
                                     [--bulk-patients 10000] [--skip-ndjson] [--skip-paging]
                                     [--skip-bulk]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from urllib.parse import urljoin

import requests

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
AS_OF = date(2026, 11, 22)


def population_dir(patients: int, seed: int = 7) -> Path:
    """Generate once, reuse: bench/data/pop-<N>-s<seed>/ (git-ignored)."""
    out = DATA / f"pop-{patients}-s{seed}"
    if not (out / "Patient.ndjson").is_file():
        print(f"generating {patients:,} patients into {out} ...", flush=True)
        subprocess.run(  # noqa: S603 - our own CLI
            [
                sys.executable,
                "-m",
                "fhirpanel",
                "generate",
                "--patients",
                str(patients),
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--as-of",
                AS_OF.isoformat(),
            ],
            check=True,
        )
    return out


def bench_ndjson(directory: Path) -> dict[str, float]:
    """Run in a child process so the peak RSS is ingest's own."""
    code = (
        "import json, resource, time, sys\n"
        "from fhirpanel.fhir.source import NdjsonSource\n"
        "from fhirpanel.ingest import read_population\n"
        "t = time.perf_counter()\n"
        f"pop = read_population(NdjsonSource({str(directory)!r}))\n"
        "s = time.perf_counter() - t\n"
        "n = sum(pop.counts().values()) + len(pop.issues)\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'seconds': s, 'resources': n, 'peak_rss_mb': rss,"
        " 'issues': len(pop.issues), 'counts': pop.counts()}))\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bare_loop(base: str, resource_type: str, page_size: int) -> int:
    """The floor: follow next links with a plain Session, decode JSON, count entries."""
    n = 0
    with requests.Session() as session:
        url: str | None = f"{base}/{resource_type}?_count={page_size}"
        while url:
            bundle = session.get(
                url, headers={"Accept": "application/fhir+json"}, timeout=60
            ).json()
            n += len(bundle.get("entry", []))
            url = next(
                (
                    urljoin(base + "/", link["url"])
                    for link in bundle.get("link", [])
                    if link.get("relation") == "next"
                ),
                None,
            )
    return n


def bench_paging(patients: int, page_size: int, rounds: int) -> dict[str, float]:
    from fhirpanel.config import FhirSettings
    from fhirpanel.fhir.client import FhirClient
    from fhirpanel.sandbox.server import SandboxServer

    directory = population_dir(patients)
    with SandboxServer() as server:
        server.load_ndjson_dir(directory)
        settings = FhirSettings(base_url=server.base_url, page_size=page_size)
        best_client, best_bare, count = float("inf"), float("inf"), 0
        for _ in range(rounds):  # alternate, keep the best of each: the machine is shared
            t = time.perf_counter()
            with FhirClient(settings) as client:
                count = sum(1 for _ in client.search("Encounter"))
            best_client = min(best_client, time.perf_counter() - t)
            t = time.perf_counter()
            bare = bare_loop(server.base_url, "Encounter", page_size)
            best_bare = min(best_bare, time.perf_counter() - t)
            if bare != count:
                raise SystemExit(f"client read {count}, bare loop read {bare}")
    return {
        "resources": count,
        "client_s": best_client,
        "bare_s": best_bare,
        "client_per_s": count / best_client,
        "bare_per_s": count / best_bare,
        "ratio": best_bare / best_client,
    }


def bench_bulk(patients: int, page_size: int) -> dict[str, float]:
    """One bulk read and one paged read into records from the same loaded server (the export
    streams to a temporary folder, removed afterwards)."""
    from fhirpanel.config import BulkSettings, FhirSettings
    from fhirpanel.fhir.bulk import BulkExport, BulkSource
    from fhirpanel.fhir.client import FhirClient
    from fhirpanel.fhir.source import ServerSource
    from fhirpanel.ingest import read_population
    from fhirpanel.sandbox.server import SandboxServer

    directory = population_dir(patients)
    out: dict[str, float] = {}
    with SandboxServer() as server, tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        t = time.perf_counter()
        out["loaded"] = server.load_ndjson_dir(directory)
        out["load_s"] = time.perf_counter() - t
        settings = FhirSettings(base_url=server.base_url, page_size=page_size)
        with FhirClient(settings) as client:
            t = time.perf_counter()
            with BulkSource(BulkExport(client, BulkSettings(download_dir=tmp))) as source:
                pop = read_population(source)
                out["bulk_s"] = time.perf_counter() - t
                assert source.result is not None  # noqa: S101 - a bench, not a check
                stats = source.result.stats
                out.update(
                    export_s=stats.export_seconds,
                    download_s=stats.download_seconds,
                    polls=stats.polls,
                    mb=stats.bytes / 1e6,
                    lines=stats.lines,
                )
            out["bulk_resources"] = sum(pop.counts().values()) + len(pop.issues)
        with FhirClient(settings) as client:
            t = time.perf_counter()
            pop = read_population(ServerSource(client))
            out["paged_s"] = time.perf_counter() - t
            out["pages"] = client.stats.pages
        out["paged_resources"] = sum(pop.counts().values()) + len(pop.issues)
    out["parse_s"] = out["bulk_s"] - out["export_s"] - out["download_s"]
    out["bulk_per_s"] = out["bulk_resources"] / out["bulk_s"]
    out["paged_per_s"] = out["paged_resources"] / out["paged_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--paging-patients", type=int, default=2_000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-ndjson", action="store_true")
    parser.add_argument("--skip-paging", action="store_true")
    parser.add_argument("--bulk-patients", type=int, default=10_000)
    parser.add_argument("--skip-bulk", action="store_true")
    args = parser.parse_args()

    if not args.skip_ndjson:
        directory = population_dir(args.patients)
        result = bench_ndjson(directory)
        print(
            f"(a) NDJSON ingest, {args.patients:,} patients: {result['resources']:,} "
            f"resources in {result['seconds']:.1f}s = "
            f"{result['resources'] / result['seconds']:,.0f} resources/s; "
            f"peak RSS {result['peak_rss_mb']:,.0f} MB; {result['issues']:,} issues"
        )
        print(f"    records: {result['counts']}")
    if not args.skip_paging:
        r = bench_paging(args.paging_patients, args.page_size, args.rounds)
        print(
            f"(b) paging the sandbox, {r['resources']:,} Encounters, _count={args.page_size}: "
            f"FhirClient {r['client_per_s']:,.0f}/s ({r['client_s']:.2f}s), bare requests "
            f"{r['bare_per_s']:,.0f}/s ({r['bare_s']:.2f}s); ratio {r['ratio']:.2f} "
            f"(target >= 0.9)"
        )
    if not args.skip_bulk:
        r = bench_bulk(args.bulk_patients, args.page_size)
        print(
            f"(c) bulk vs paged into records, {args.bulk_patients:,} patients "
            f"(sandbox seeded with {r['loaded']:,} resources in {r['load_s']:.1f}s):"
        )
        print(
            f"    $export: {r['bulk_resources']:,} resources in {r['bulk_s']:.1f}s = "
            f"{r['bulk_per_s']:,.0f} resources/s (export {r['export_s']:.1f}s over "
            f"{r['polls']:.0f} polls, download {r['mb']:,.0f} MB in {r['download_s']:.1f}s, "
            f"parse {r['parse_s']:.1f}s)"
        )
        print(
            f"    paged:   {r['paged_resources']:,} resources in {r['paged_s']:.1f}s = "
            f"{r['paged_per_s']:,.0f} resources/s ({r['pages']:,.0f} pages of "
            f"{args.page_size}); bulk / paged = {r['bulk_per_s'] / r['paged_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
