"""`fhirpanel validate` and `fhirpanel snapshot` without the terminal: read the population once,
analyse it as it stood on a past day (`domain.validation.population_on`), compute the statistics
or the frozen snapshot, and keep the result in the store.

Validation (docs/methods.md s.8.1): scored on the baseline date (as-of minus 12 months), the
cohort is the practice's patients on that date (every assignment but `excluded`), the outcome
their emergency visits and inpatient stays of the next 12 months. Snapshot (s.8.2): the month's
last day, from data dated on or before it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirpanel.config import Settings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.records import Population
from fhirpanel.domain.snapshot import differences, freeze, snapshot_bytes
from fhirpanel.domain.validation import (
    ValidationResult,
    baseline_of,
    calibration_svg,
    next_year_events,
    population_on,
    risk_metrics,
    validate,
)
from fhirpanel.errors import ExitCode, FhirpanelError
from fhirpanel.ingest import Progress, configure_read, read_population, read_window_months
from fhirpanel.run import analyse, open_source
from fhirpanel.tables import Tables


class SnapshotDiffers(FhirpanelError):
    """The month's stored snapshot differs from the one computed now (`--replace` replaces)."""

    exit_code = ExitCode.HELD

    def __init__(self, month: str, lines: list[str]) -> None:
        self.month = month
        self.lines = lines
        super().__init__(
            f"the stored snapshot of {month} differs ({'; '.join(lines)}); "
            "rerun with --replace to replace it"
        )


def read_once(
    settings: Settings, spec: str, earliest: date, progress: Progress | None
) -> tuple[Tables, Population, str]:
    """The tables and the whole population of `spec`, read once; a roster source reads
    encounters from the look-back window before `earliest` onwards."""
    tables = Tables.load(settings)
    source = open_source(spec, settings)
    configure_read(source, earliest, read_window_months(settings, tables.method))
    try:
        population = read_population(source, progress=progress)
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()
    return tables, population, source.describe()


def outcome_on(settings: Settings, tables: Tables, population: Population, day: date) -> RunOutcome:
    """A full analysis of the population as it stood on `day`."""
    return analyse(
        population_on(population, day),
        day,
        tables.method,
        outreach_months=(
            settings.attribution.outreach_not_seen_months,
            settings.attribution.outreach_sentinel_months,
        ),
    )


@dataclass(frozen=True)
class Validation:
    result: ValidationResult
    source: str
    svg: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.result.as_dict()}


def run_validation(
    settings: Settings, spec: str, as_of: date, progress: Progress | None = None
) -> Validation:
    tables, population, described = read_once(settings, spec, baseline_of(as_of), progress)
    return validate_population(settings, tables, population, as_of, described)


def validate_population(
    settings: Settings, tables: Tables, population: Population, as_of: date, source: str = ""
) -> Validation:
    """The validation of an already-read population (tests call this directly)."""
    baseline = baseline_of(as_of)
    outcome = outcome_on(settings, tables, population, baseline)
    cohort = sorted(a.patient for a in outcome.attribution.assignments if a.status != "excluded")
    blend = outcome.panels.blend
    blended = {p: b.factor for p, b in blend.patients.items()} if blend is not None else None
    metrics = risk_metrics(outcome.population, outcome.risk, cohort, baseline, blended)
    later = population_on(population, as_of)
    events = next_year_events(later, cohort, as_of, tables.method.risk.utilisation)
    result = validate(as_of, metrics, events)
    return Validation(result=result, source=source, svg=calibration_svg(result))


def store_validation(settings: Settings, validation: Validation) -> int:
    from fhirpanel.store import Store
    from fhirpanel.store.validation import save_validation

    store = Store(settings.database)
    try:
        return save_validation(store, validation.as_dict(), validation.svg)
    finally:
        store.close()


@dataclass(frozen=True)
class Snapshot:
    month: str
    as_of: date
    content: dict[str, Any]
    data: bytes  # the canonical JSON

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def compute_snapshot(
    settings: Settings, tables: Tables, population: Population, month: str, day: date
) -> Snapshot:
    """The snapshot of `month` whose last day is `day`."""
    content = freeze(outcome_on(settings, tables, population, day), month)
    return Snapshot(month=month, as_of=day, content=content, data=snapshot_bytes(content))


def read_snapshot(
    settings: Settings, spec: str, month: str, day: date, progress: Progress | None = None
) -> tuple[Snapshot, str]:
    tables, population, described = read_once(settings, spec, day, progress)
    return compute_snapshot(settings, tables, population, month, day), described


def store_snapshot(settings: Settings, snapshot: Snapshot, source: str, replace: bool) -> str:
    """Keep the snapshot in the store, one row per month: `stored` (new), `unchanged` (the same
    bytes were stored), `replaced` (with `replace`); SnapshotDiffers when it differs and
    `replace` is not set."""
    import json

    from fhirpanel.store import Store
    from fhirpanel.store.validation import get_snapshot, save_snapshot

    store = Store(settings.database)
    try:
        stored = get_snapshot(store, snapshot.month)
        if stored is not None and stored["digest"] == snapshot.digest:
            return "unchanged"
        if stored is not None and not replace:
            lines = differences(json.loads(stored["content"]), snapshot.content)
            raise SnapshotDiffers(snapshot.month, lines or ["content differs"])
        save_snapshot(
            store,
            month=snapshot.month,
            as_of=snapshot.as_of.isoformat(),
            source=source,
            digest=snapshot.digest,
            content=snapshot.data.decode(),
            patients=len(snapshot.content.get("patients", {})),
            panels=len(snapshot.content.get("panels", [])),
        )
        return "stored" if stored is None else "replaced"
    finally:
        store.close()
