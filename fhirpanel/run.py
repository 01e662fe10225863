"""One full pass: read the source, attribute, score risk, size panels, list outreach.

This is the I/O shell around the pure domain: it takes the mapping tables (`Tables.load`, once per
pass), reads the population, and hands plain records to `fhirpanel.domain`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import date
from typing import Any

from fhirpanel.config import Settings
from fhirpanel.domain.attribution import ManualAssignment, attribute_patients
from fhirpanel.domain.confirmations import DEFAULT_MONTHS, ConfirmedAssignment, DismissedMove
from fhirpanel.domain.members import MemberList, member_issues
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.panels import (
    AgeSexWeights,
    compute_age_sex_weights,
    compute_panels,
    outreach_list,
)
from fhirpanel.domain.records import Issue, Population
from fhirpanel.domain.risk import check_tier_shape, score_patients, tier_distribution
from fhirpanel.fhir.member_list import parse_member_list_spec, read_member_list
from fhirpanel.fhir.source import FhirSource, source_from_spec
from fhirpanel.ingest import Progress, add_future_date_issues, read_population
from fhirpanel.tables import MethodTables, Tables

log = logging.getLogger(__name__)

__all__ = ["analyse", "load_member_list", "open_source", "run_full"]


def analyse(
    population: Population,
    as_of: date,
    tables: MethodTables,
    *,
    source: str = "",
    manual: dict[str, ManualAssignment] | None = None,
    statuses: Mapping[str, str] | None = None,
    confirmed: Mapping[str, ConfirmedAssignment] | None = None,
    dismissed: Mapping[str, DismissedMove] | None = None,
    confirmation_months: int = DEFAULT_MONTHS,
    weights: AgeSexWeights | None = None,
    timings: dict[str, float] | None = None,
    outreach_months: tuple[int, int] = (12, 24),
    blend_means: Mapping[str, float] | None = None,
    risk_product_members: MemberList | None = None,
) -> RunOutcome:
    """Everything after reading: pure functions in order, timed. Dates after `as_of` (birth
    dates, encounters) are first added to the population's issues (`recorded`).

    A pass over some patients only (incremental) passes the last full run's `weights` and
    `blend_means` (`outcome.panels.blend.means`): its own patients are not the practice.

    `risk_product_members`: the payer's member list the pipeline's `risk-product` step follows;
    what the reader left out, members not in the population and members whose clinician is not
    eligible join the population's issues.

    `confirmed`, `dismissed`, `confirmation_months`: confirmed assignments hold
    (`attribute_patients`)."""
    timings = {} if timings is None else timings
    clock = _Stopwatch(timings)
    add_future_date_issues(population, as_of)
    unused_list = risk_product_members is not None and not any(
        step.kind == "risk-product" for step in tables.pipeline.steps
    )
    if unused_list:
        risk_product_members = None  # nothing follows it: no issues about it either
    with clock("attribute"):
        attribution = attribute_patients(
            population,
            as_of,
            tables.pipeline,
            tables.rules,
            manual=manual,
            statuses=statuses,
            risk_product_members=risk_product_members.members if risk_product_members else None,
            confirmed=confirmed,
            dismissed=dismissed,
            confirmation_months=confirmation_months,
        )
        if risk_product_members is not None:
            _add_issues(
                population,
                [
                    *risk_product_members.issues,
                    *member_issues(risk_product_members, population, attribution.eligibility),
                ],
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
    # The bounds of tiers.toml's [shape], not the built-in defaults.
    warnings = check_tier_shape(distribution, tables.risk.tiers.shape)
    if unused_list:
        warnings.append(
            f"attribution.risk_product_list is set but pipeline {tables.pipeline.name!r} has no "
            "risk-product step: the list was not used"
        )
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
        members=risk_product_members,
    )


def _add_issues(population: Population, issues: list[Issue]) -> None:
    """Issues joined to the population's (once, however often a pass analyses it), in order."""
    known = set(population.issues)
    new = [i for i in issues if i not in known]
    if new:
        population.issues.extend(new)
        population.issues.sort(key=lambda i: (i.resource, i.problem))


def load_member_list(settings: Settings, source: object, as_of: date) -> MemberList | None:
    """`attribution.risk_product_list` read once for a pass (None when not set). A `Group/ID` is
    read through the source's FHIR client; a file needs none."""
    text = settings.attribution.risk_product_list
    if not text.strip():
        return None
    spec = parse_member_list_spec(text)
    client = _client_of(source)
    return read_member_list(spec, as_of, (lambda: client) if client is not None else None)


def _client_of(source: object) -> Any:
    # A server or Bulk source carries its client; a pass's wrapper (SeenRecorder) its source.
    for candidate in (source, getattr(source, "source", None)):
        client = getattr(candidate, "client", None)
        if client is not None and callable(getattr(client, "read", None)):
            return client
    return None


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
    members: MemberList | None = None,
    confirmed: Mapping[str, ConfirmedAssignment] | None = None,
    dismissed: Mapping[str, DismissedMove] | None = None,
) -> RunOutcome:
    """Read the whole population and analyse it with the pass's `tables` (loaded here when not
    given; a pass that also writes loads them once and passes them to both) and the payer's
    member list (`members`; read here from `attribution.risk_product_list` when not given)."""
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    with clock("load_tables"):
        tables = tables or Tables.load(settings)
        if members is None:
            members = load_member_list(settings, source, as_of)
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
        confirmed=confirmed,
        dismissed=dismissed,
        confirmation_months=settings.review.confirmation_months,
        timings=timings,
        risk_product_members=members,
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
