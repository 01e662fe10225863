"""One full pass: read the source, attribute, score risk, size panels, list outreach.

This is the I/O shell around the pure domain: it takes the mapping tables (`Tables.load`, once per
pass), reads the population, and hands plain records to `fhirpanel.domain`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import date

from fhirpanel.config import Settings
from fhirpanel.domain.attribution import ManualAssignment, attribute_patients
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.panels import (
    AgeSexWeights,
    compute_age_sex_weights,
    compute_panels,
    outreach_list,
)
from fhirpanel.domain.records import Population
from fhirpanel.domain.risk import check_tier_shape, score_patients, tier_distribution
from fhirpanel.fhir.source import FhirSource, source_from_spec
from fhirpanel.ingest import Progress, add_future_date_issues, read_population
from fhirpanel.tables import MethodTables, Tables

log = logging.getLogger(__name__)

__all__ = ["analyse", "open_source", "run_full"]


def analyse(
    population: Population,
    as_of: date,
    tables: MethodTables,
    *,
    source: str = "",
    manual: dict[str, ManualAssignment] | None = None,
    statuses: Mapping[str, str] | None = None,
    weights: AgeSexWeights | None = None,
    timings: dict[str, float] | None = None,
    outreach_months: tuple[int, int] = (12, 24),
    blend_means: Mapping[str, float] | None = None,
) -> RunOutcome:
    """Everything after reading: pure functions in order, timed. Dates after `as_of` (birth
    dates, encounters) are first added to the population's issues (`recorded`).

    A pass over some patients only (incremental) passes the last full run's `weights` and
    `blend_means` (`outcome.panels.blend.means`): its own patients are not the practice."""
    timings = {} if timings is None else timings
    clock = _Stopwatch(timings)
    add_future_date_issues(population, as_of)
    with clock("attribute"):
        attribution = attribute_patients(
            population, as_of, tables.pipeline, tables.rules, manual=manual, statuses=statuses
        )
    with clock("risk"):
        risk = score_patients(population, as_of, tables.risk)
    tiers = {pid: r.tier for pid, r in risk.items()}
    hcc = {pid: r.hcc for pid, r in risk.items() if r.hcc is not None}
    with clock("panels"):
        if weights is None:
            weights = compute_age_sex_weights(
                population, as_of, tables.rules, visits=attribution.visits
            )
        panels = compute_panels(
            population,
            attribution,
            as_of,
            tables.capacities,
            weights,
            tiers=tiers,
            hcc_scores=hcc,
            risk=risk,
            blend=tables.blend,
            blend_means=blend_means,
        )
        outreach = outreach_list(
            population,
            attribution,
            as_of,
            tables.rules,
            not_seen_months=outreach_months[0],
            sentinel_months=outreach_months[1],
        )
    assigned = [
        risk[a.patient]
        for a in attribution.assignments
        if a.status == "assigned" and a.patient in risk
    ]
    distribution = tier_distribution(assigned)
    warnings = check_tier_shape(distribution)
    if attribution.eligibility.fallback_all_on_visits:
        warnings.append(
            "no PractitionerRole data: every clinician on a qualifying visit was "
            "treated as eligible for attribution"
        )
    return RunOutcome(
        as_of=as_of,
        source=source,
        population=population,
        attribution=attribution,
        risk=risk,
        panels=panels,
        outreach=outreach,
        tier_distribution=distribution,
        warnings=warnings,
        timings=timings,
    )


def open_source(spec: str, settings: Settings) -> FhirSource:
    """A source from `--source`: a FHIR base URL, `ndjson:DIR` or `bulk:BASE`, with the client
    built from settings (auth, timeouts, retries)."""

    def client_factory(base_url: str) -> object:
        from fhirpanel.fhir.client import FhirClient

        return FhirClient(settings.with_fhir(base_url=base_url).fhir)

    return source_from_spec(spec, client_factory, bulk=settings.bulk)


def run_full(
    settings: Settings,
    source: FhirSource,
    as_of: date,
    progress: Progress | None = None,
    manual: dict[str, ManualAssignment] | None = None,
    tables: Tables | None = None,
    statuses: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Read the whole population and analyse it with the pass's `tables` (loaded here when not
    given; a pass that also writes loads them once and passes them to both)."""
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    with clock("load_tables"):
        tables = tables or Tables.load(settings)
    with clock("read"):
        population = read_population(source, progress=progress)
    log.info(
        "read %s from %s (%d issues)",
        population.counts(),
        source.describe(),
        len(population.issues),
    )
    return analyse(
        population,
        as_of,
        tables.method,
        source=source.describe(),
        manual=manual,
        statuses=statuses,
        timings=timings,
        outreach_months=(
            settings.attribution.outreach_not_seen_months,
            settings.attribution.outreach_sentinel_months,
        ),
    )


class _Stopwatch:
    """`with clock("stage"):` adds the stage's wall time to the timings dict."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, stage: str) -> _Stage:
        return _Stage(self.timings, stage)


class _Stage:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage, self.started = timings, stage, 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.started
        self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + elapsed, 3)
