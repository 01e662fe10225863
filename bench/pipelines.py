"""The four attribution pipelines of the white paper's Exhibit Two side by side: assigned,
unassigned and excluded patients and the rules that assigned them, on the committed demo
population and on a generated one (default 100,000 patients), plus the spread of the blended
adjustment factor. Prints figures, asserts nothing.

    .venv/bin/python bench/pipelines.py [--patients 100000] [--skip-generated]

`case_study_1` starts with the payer's member list (`risk-product`); without a list it is Four
Cut over 12 then 18 months. `--member-share` (default 0.1) gives it a deterministic synthetic
list: that share of patients (by id hash), each attributed to the clinician they saw most, or to
an eligible clinician by hash when they saw none (a payer assigns people nobody has seen yet).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import AS_OF, ROOT, population_dir

from fhirpanel.config import Settings
from fhirpanel.domain.records import Population
from fhirpanel.fhir.member_list import members_from_csv
from fhirpanel.fhir.source import NdjsonSource
from fhirpanel.ingest import read_population
from fhirpanel.run import analyse
from fhirpanel.tables import Tables

PIPELINES = ("mgma", "case_study_1", "case_study_2", "case_study_3")
DEMO = ROOT / "sandbox_fixtures" / "population"


def synthetic_members(population: Population, share: float) -> dict[str, str]:
    """patient reference -> "Practitioner/x" for `share` of the patients, chosen by id hash."""
    clinicians = sorted(population.practitioners)
    seen: dict[str, Counter[str]] = {}
    for enc in population.encounters:
        if enc.practitioner:
            seen.setdefault(enc.patient, Counter())[enc.practitioner] += 1
    members: dict[str, str] = {}
    for pid in sorted(population.patients):
        digest = int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16)
        if digest % 1000 >= share * 1000 or not clinicians:
            continue
        most = seen.get(pid)
        chosen = most.most_common(1)[0][0] if most else clinicians[digest % len(clinicians)]
        members[pid] = chosen
    return members


def run_pipelines(label: str, population: Population, share: float) -> None:
    members = synthetic_members(population, share)
    print(f"\n{label}: {len(population.patients):,} patients; member list {len(members):,}")
    for name in PIPELINES:
        settings = Settings.load(env={"FHIRPANEL_ATTRIBUTION_PIPELINE": f"pipelines/{name}"})
        tables = Tables.load(settings).method
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if name == "case_study_1":
            # Through the CSV reader, as `attribution.risk_product_list` would be read.
            rows = "".join(f"{p},{c}\n" for p, c in sorted(members.items()))
            extra["risk_product_members"] = members_from_csv(
                "patient,practitioner\n" + rows, "synthetic list"
            )
        outcome = analyse(population, AS_OF, tables, **extra)
        took = time.perf_counter() - started
        statuses = Counter(a.status for a in outcome.attribution.assignments)
        rules = Counter(a.rule for a in outcome.attribution.assignments if a.status == "assigned")
        print(
            f"  {name:<13} assigned {statuses.get('assigned', 0):>7,}  unassigned "
            f"{statuses.get('unassigned', 0):>7,}  excluded {statuses.get('excluded', 0):>6,}  "
            f"({took:.1f}s) by rule {dict(sorted(rules.items()))}"
        )
        if name == "mgma":
            _blend_spread(outcome)


def _blend_spread(outcome: Any) -> None:
    blend = outcome.panels.blend
    if blend is None:
        print("  blended factor: none (no blend table)")
        return
    factors = sorted(p.factor for p in blend.patients.values())
    if not factors:
        return
    deciles = statistics.quantiles(factors, n=10)
    print(
        f"  blended factor over {len(factors):,} active patients: min {factors[0]:.2f}, "
        f"p10 {deciles[0]:.2f}, median {statistics.median(factors):.2f}, p90 {deciles[-1]:.2f}, "
        f"max {factors[-1]:.2f}, mean {statistics.fmean(factors):.3f}"
    )
    ratios = sorted(
        p.blended_size / p.size
        for p in outcome.panels.panels
        if p.blended_size is not None and p.size
    )
    if ratios:
        print(
            f"  blended size / head count per panel: {ratios[0]:.2f} .. {ratios[-1]:.2f} "
            f"over {len(ratios)} panels"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--member-share", type=float, default=0.1)
    parser.add_argument("--skip-generated", action="store_true")
    args = parser.parse_args()
    run_pipelines("demo (sandbox_fixtures/population)", _read(DEMO), args.member_share)
    if not args.skip_generated:
        directory = population_dir(args.patients)
        run_pipelines(f"generated ({directory.name})", _read(directory), args.member_share)


def _read(directory: Path) -> Population:
    return read_population(NdjsonSource(directory))


if __name__ == "__main__":
    main()
