"""Risk benchmark: seconds per stage, patients/s, peak memory, the HCC cache speed-up, the tier
distribution. Prints figures; the only check is that cached HCC scores equal per-patient calls.

    .venv/bin/python bench/risk.py [--patients 100000] [--seed 7]

The population comes from the synthetic generator (`generate_population`), parsed by
`fhirpanel.fhir.parse` into records in memory (no files). Target: the cached HCC path at least 5x
faster than one `calculate_raf` call per patient, with identical scores for every patient.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import date
from typing import TypeVar

from fhirpanel.config import Settings
from fhirpanel.domain.attribution import attribute_patients
from fhirpanel.domain.conditions import PatientDiagnoses, patient_diagnoses
from fhirpanel.domain.hcc import HccScore
from fhirpanel.domain.records import ConditionRecord, Issue, Population
from fhirpanel.domain.risk import (
    age_on,
    check_tier_shape,
    score_patients,
    tier_distribution,
    tier_distribution_by_panel,
)
from fhirpanel.domain.tiers import TierMetrics
from fhirpanel.fhir.parse import parse_resource
from fhirpanel.ingest import PopulationBuilder
from fhirpanel.sandbox.generate import generate_population
from fhirpanel.tables import Tables

AS_OF = date(2026, 11, 22)
T = TypeVar("T")


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1_048_576 if sys.platform == "darwin" else peak / 1024  # Linux reports KiB


def timed(label: str, timings: dict[str, float], work: Callable[[], T]) -> T:
    started = time.perf_counter()
    out = work()
    timings[label] = time.perf_counter() - started
    return out


def build_population(patients: int, seed: int) -> Population:
    """Generator -> parser -> records, streamed (no list of raw resources is kept)."""
    builder = PopulationBuilder()
    for raw in generate_population(patients, seed, AS_OF):
        record = parse_resource(raw)
        if isinstance(record, Issue):
            builder.pop.issues.append(record)
        else:
            builder.add_record(record)
    return builder.finish()


def panels_of(population: Population, tables: Tables) -> dict[str, str]:
    """Patient -> attributed clinician."""
    result = attribute_patients(population, AS_OF, tables.method.pipeline, tables.method.rules)
    return {
        a.patient: a.practitioner
        for a in result.assignments
        if a.status == "assigned" and a.practitioner
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    timings: dict[str, float] = {}

    population = timed(
        "generate + parse", timings, lambda: build_population(args.patients, args.seed)
    )
    rss_built = peak_rss_mb()
    tables = Tables.load(Settings.load(env={}))
    config = tables.method.risk
    counts = population.counts()
    print(
        f"{counts['Patient']:,} patients, {counts['Encounter']:,} encounters, "
        f"{counts['Condition']:,} conditions ({len(population.issues):,} issues); "
        f"built in {timings['generate + parse']:.1f}s, peak RSS {rss_built:,.0f} MB"
    )

    ids = sorted(population.patients)
    by_patient: dict[str, list[ConditionRecord]] = {}
    for cond in population.conditions:
        by_patient.setdefault(cond.patient, []).append(cond)
    encounters = population.encounters_by_patient()

    # Stage by stage, with the same building blocks score_patients uses.
    diagnoses: dict[str, PatientDiagnoses] = timed(
        "diagnoses",
        timings,
        lambda: {
            pid: patient_diagnoses(
                sorted(by_patient.get(pid, ()), key=lambda c: c.id),
                config.crosswalk,
                config.condition_filter,
            )
            for pid in ids
        },
    )
    codes = {pid: diagnoses[pid].code_set for pid in ids}
    charlson = timed(
        "charlson",
        timings,
        lambda: {pid: config.charlson.score(codes[pid], config.charlson_weights) for pid in ids},
    )
    hcc_inputs = []
    for pid in ids:
        pat = population.patients[pid]
        sex, age = config.hcc.sex_code(pat.sex), age_on(pat.birth_date, AS_OF)
        if sex is not None and age is not None:
            hcc_inputs.append((pid, codes[pid], age, sex))
    cached_scorer = config.hcc_scorer()
    cached: dict[str, HccScore] = timed(
        "hcc (cached)",
        timings,
        lambda: {pid: cached_scorer.score(c, age, sex) for pid, c, age, sex in hcc_inputs},
    )
    direct_scorer = config.hcc_scorer()
    direct: dict[str, HccScore] = timed(
        "hcc (one call per patient)",
        timings,
        lambda: {pid: direct_scorer.score_uncached(c, age, sex) for pid, c, age, sex in hcc_inputs},
    )
    mismatches = [pid for pid in cached if cached[pid] != direct[pid]]

    def tiers() -> dict[str, int]:
        out = {}
        for pid in ids:
            ed, inpatient = config.utilisation.count(encounters.get(pid, ()), AS_OF)
            score = cached.get(pid)
            metrics = TierMetrics(
                hcc=score.risk_score if score else None,
                charlson=charlson[pid].score,
                ed=ed,
                inpatient=inpatient,
                chronic=len(config.chronic.groups_for(codes[pid])),
            )
            out[pid] = config.tiers.assign(metrics)[0]
        return out

    staged_tiers = timed("utilisation + ccm + tiers", timings, tiers)
    results = timed(
        "score_patients (end to end)", timings, lambda: score_patients(population, AS_OF, config)
    )
    rss_scored = peak_rss_mb()

    # Memory of one scoring pass on its own (tracemalloc slows it, so it is not timed).
    tracemalloc.start()
    score_patients(population, AS_OF, config)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print("\nstage seconds:")
    for label, seconds in timings.items():
        if label != "generate + parse":
            print(f"  {label:<30} {seconds:7.2f}s")
    end_to_end = timings["score_patients (end to end)"]
    print(
        f"end to end: {len(ids) / end_to_end:,.0f} patients/s; peak RSS {rss_scored:,.0f} MB "
        f"(after build {rss_built:,.0f} MB); one scoring pass allocates at peak "
        f"{traced_peak / 1_048_576:,.0f} MB (tracemalloc)"
    )

    speedup = timings["hcc (one call per patient)"] / timings["hcc (cached)"]
    print(
        f"\nHCC: {len(hcc_inputs):,} patients scored, {cached_scorer.cache_size:,} distinct "
        f"inputs ({cached_scorer.hits:,} cache hits); cached path {speedup:.1f}x faster than "
        f"one calculate_raf call per patient (target >= 5x); identical scores: "
        f"{'yes, all patients' if not mismatches else f'NO, {len(mismatches)} differ'}"
    )
    if mismatches:
        print(f"  first mismatches: {mismatches[:5]}")
    same = all(results[pid].tier == staged_tiers[pid] for pid in ids)
    print(f"staged tiers equal score_patients tiers: {same}")

    distribution = tier_distribution(results.values())
    total = sum(distribution.values()) or 1
    shares = ", ".join(f"tier {t}: {n:,} ({n / total:.1%})" for t, n in distribution.items())
    print(f"\ntier distribution (all patients): {shares}")
    print(f"shape check: {check_tier_shape(distribution, config.tiers.shape) or 'ok'}")
    ccm = sum(r.ccm_eligible for r in results.values())
    no_hcc = sum(r.hcc is None for r in results.values())
    print(f"CCM eligible: {ccm:,} ({ccm / total:.1%}); no HCC score: {no_hcc:,}")

    panel_of = panels_of(population, tables)
    by_panel = tier_distribution_by_panel(results, panel_of)
    assigned = tier_distribution(results[p] for p in panel_of)
    print(
        f"\nassigned patients ({len(panel_of):,}): {assigned}; shape check: "
        f"{check_tier_shape(assigned, config.tiers.shape) or 'ok'}"
    )
    flagged = {
        panel: dist
        for panel, dist in by_panel.items()
        if check_tier_shape(dist, config.tiers.shape)
    }
    print(
        f"per panel: {len(by_panel)} panels, {len(by_panel) - len(flagged)} within the "
        f"expected shape; outside it (panel size, tier shares):"
    )
    for panel, dist in list(flagged.items())[:12]:
        n = sum(dist.values()) or 1
        print(f"  {panel:<28} {n:>6,}  " + "  ".join(f"{t}:{c / n:6.1%}" for t, c in dist.items()))
    if len(flagged) > 12:
        print(f"  ... and {len(flagged) - 12} more")


if __name__ == "__main__":
    main()
