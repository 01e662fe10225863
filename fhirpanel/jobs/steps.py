"""Pieces both passes share: the write-back under the brake, what a pass leaves for the next
one on the same source (unconfirmed writes, learned batch sizes), placement suggestions against
the stored panels, counts, and reading the server's clock and resource versions."""

from __future__ import annotations

import dataclasses
import email.utils
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fhirpanel.domain.attribution import ManualAssignment
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.panels import AgeSexWeights
from fhirpanel.domain.placement import ClinicianLoad, Commitment, Suggestion, place_unassigned
from fhirpanel.domain.records import Population
from fhirpanel.errors import ConfigError, FhirpanelError
from fhirpanel.fhir.parse import ParseProblem, fhir_instant, parse_instant, reference_id
from fhirpanel.fhir.source import FhirSource, RosterSource, ServerSource
from fhirpanel.ingest import read_order
from fhirpanel.jobs import brake
from fhirpanel.jobs.job import CHANGE_TYPES, Job, apply_brake, context_key
from fhirpanel.jobs.rows import stored_suggestions
from fhirpanel.store import Store
from fhirpanel.store.engine import now_utc
from fhirpanel.store.review import queue_patient
from fhirpanel.tables import MethodTables

log = logging.getLogger("fhirpanel.jobs.refresh")  # one logger name for every pass


def write_results(
    job: Job,
    source: FhirSource,
    outcome: RunOutcome,
    ledger: Any,
    *,
    trust_ledger: bool,
    incremental: bool = False,
) -> Any:
    write = job.settings.scheduler.write if job.write is None else job.write
    if not write:
        return None
    client = client_of(source)
    if client is None:
        if job.write:
            raise ConfigError("writing back needs a FHIR server source (http://... or bulk:...)")
        return None
    from fhirpanel.writeback import WriteBackInterrupted, write_back

    cfg = job.settings.writeback
    if incremental and cfg.attribution_group:
        # A Group lists a whole organisation's patients: only a full refresh rebuilds it.
        cfg = dataclasses.replace(cfg, attribution_group=False)
    tables = job.tables.writeback
    stored_count = len(job.store.patient_ids()) if incremental else 0

    def guard(ended: tuple[int, int], changed: tuple[int, int]) -> None:
        # PCP participations the CareTeams would end, before anything is sent. An incremental
        # pass sees only its own patients' teams: measure it on the whole stored practice.
        of = stored_count if incremental else ended[1]
        what = "the incremental pass" if incremental else "the full refresh"
        apply_brake(job, what, brake.figures(job.settings.safety, ended=(ended[0], of)))

    try:
        return write_back(
            outcome,
            client,
            cfg,
            dry_run=False,
            tables=tables,
            ledger=ledger,
            trust_ledger=trust_ledger,
            unconfirmed=unconfirmed_writes(job.store, job.source_key),
            guard=guard,
            # Transaction sizes a refusal taught an earlier pass; a full pass starts
            # from the configured size, so a raised limit is found again.
            batch_sizes=learned_batch_sizes(job.store, job.source_key) if incremental else None,
        )
    except WriteBackInterrupted as exc:
        # Sent without an answer: remembered, so a later pass that finds them landed writes
        # their Provenance. Stored on its own: the run's results are not committed.
        with job.store.session() as s:
            save_unconfirmed(job.store, s, job.source_key, exc.summary, None)
        raise


def unconfirmed_writes(store: Store, source_key: str) -> list[tuple[str, str]]:
    """Writes an earlier pass on this source sent without getting an answer."""
    rows = store.context(context_key("unconfirmed", source_key.rstrip("/"))) or []
    return [(str(r[0]), str(r[1])) for r in rows if isinstance(r, list) and len(r) == 2]


def save_unconfirmed(
    store: Store, s: Any, source_key: str, summary: Any, run_id: int | None
) -> None:
    """What a write-back leaves for the next one on this source: the writer's whole unconfirmed
    set (it replaces the stored one) and the transaction sizes it settled on, if it sent any."""
    if summary is None:
        return
    key = source_key.rstrip("/")
    keys = sorted([rtype, ident] for rtype, ident in getattr(summary, "unconfirmed", ()) or ())
    store.set_context(s, context_key("unconfirmed", key), keys, run_id)
    sizes = dict(getattr(summary, "batch_sizes", None) or {})
    if sizes:
        store.set_context(s, context_key("batch_sizes", key), sizes, run_id)


def learned_batch_sizes(store: Store, source_key: str) -> dict[str, int] | None:
    stored = store.context(context_key("batch_sizes", source_key.rstrip("/")))
    if not isinstance(stored, dict):
        return None
    return {str(k): int(v) for k, v in stored.items() if isinstance(v, int) and v > 0}


def suggestions_for(
    store: Store, outcome: RunOutcome, tables: MethodTables, weights: AgeSexWeights
) -> tuple[Suggestion, ...]:
    """Suggestions for this pass's unassigned patients against the practice-wide panels in the
    store (the pass itself only sees the patients it recomputed). The stored suggestions of the
    other unassigned patients keep their room, so the list as a whole stays within capacity;
    the next full refresh places everyone again."""
    attribution = outcome.attribution
    if not any(a.status == "unassigned" for a in attribution.assignments):
        return ()
    stored = {c["practitioner"]: c for c in store.clinicians()}
    loads = []
    for clinician in sorted(set(stored) | set(attribution.eligibility.eligible)):
        row = stored.get(clinician)
        if row is None:  # a clinician new since the last full refresh
            capacity = tables.capacities.for_clinician(clinician).panel_capacity
            loads.append(ClinicianLoad(clinician, 0, 0.0, capacity))
        else:
            loads.append(
                ClinicianLoad(clinician, row["size"], row["risk_adjusted_size"], row["capacity"])
            )
    recomputed = {a.patient for a in attribution.assignments}
    committed = [
        Commitment(r["patient"], r["suggested"], float(r["weight"]))
        for r in stored_suggestions(store)
        if r["suggested"] and r["patient"] not in recomputed
    ]
    people, as_of = outcome.population.patients, outcome.as_of

    def weight_of(patient_id: str) -> float:
        person = people.get(patient_id)
        return 1.0 if person is None else weights.weight(person.birth_date, person.sex, as_of)

    return place_unassigned(
        outcome.population,
        attribution,
        as_of,
        tables.capacities.placement,
        loads,
        weight_of,
        tiers={patient: risk.tier for patient, risk in outcome.risk.items()},
        committed=committed,
    ).suggestions


def queue_failed_writes(s: Any, writeback: Any) -> None:
    """Patients whose CareTeam or CarePlan could not be written: redone by the next pass."""
    failed = sorted(getattr(writeback, "failed_subjects", ()) or ())
    if failed:
        now = now_utc()
        for patient in failed:
            queue_patient(s, patient, "write-back failed", now)


def pass_counts(outcome: RunOutcome, writeback: Any) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for a in outcome.attribution.assignments:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    counts: dict[str, Any] = {
        # Held back by a confirmation: proposed for a person, not changes (the brake ignores
        # them: the patient stays where they are).
        "proposed_moves": len(outcome.attribution.proposed_moves),
        "assigned": statuses.get("assigned", 0),
        "unassigned": statuses.get("unassigned", 0),
        "excluded": statuses.get("excluded", 0),
        "issues": len(outcome.population.issues),
        "tiers": dict(outcome.tier_distribution),
    }
    if writeback is not None:
        counts["writeback"] = writeback.counts.as_dict()
        counts["written"] = writeback.written
        counts["writeback_failed"] = writeback.counts.total("failed")
        counts["ledger_hits"] = writeback.ledger_hits
    return counts


def pass_summary(outcome: RunOutcome) -> dict[str, Any]:
    from fhirpanel.report import build_report

    report = build_report(outcome)
    return {
        "summary": report["summary"],
        "eligibility": report["eligibility"],
        "pipeline": report["pipeline"],
        "warnings": report["warnings"],
    }


def stored_weights(store: Store) -> AgeSexWeights:
    rows = store.context("weights") or []
    return AgeSexWeights(weights={(str(b), str(sx)): float(w) for b, sx, w in rows})


def confirmation_cutoff(job: Job) -> date:
    """Confirmations made on or before this day have expired on the pass's as-of date."""
    return months_before(job.day, job.settings.review.confirmation_months)


def manual_for(
    overrides: Mapping[str, ManualAssignment], patients: Iterable[str]
) -> dict[str, ManualAssignment]:
    wanted = set(patients)
    return {p: m for p, m in overrides.items() if p in wanted}


def client_of(source: FhirSource) -> Any:
    """The FHIR client behind a server or Bulk source (None for NDJSON and memory)."""
    from fhirpanel.fhir.bulk import BulkSource

    return source.client if isinstance(source, ServerSource | BulkSource) else None


def requests_made(source: FhirSource) -> int:
    client = client_of(source)
    return int(client.stats.requests) if client is not None else 0


class SeenRecorder:
    """A source wrapper for the full read: remembers the recent versions it passed on, so the
    first incremental pass after the run skips them (the server's Date has whole seconds, so
    the watermark can be up to a second behind what was read). Only versions from the last
    couple of days are kept: a cheap string test before any parsing."""

    def __init__(self, source: FhirSource) -> None:
        self.source = source
        self.recent: list[tuple[str, str]] = []  # (lastUpdated as sent, Type/id)
        self._since = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()

    def describe(self) -> str:
        return self.source.describe()

    @property
    def read_order(self) -> tuple[str, ...]:
        return read_order(self.source)

    def read(self, resource_type: str) -> Iterator[Any]:
        items = self.source.read(resource_type)
        if resource_type not in CHANGE_TYPES:
            yield from items
            return
        for item in items:
            if isinstance(item, dict):
                raw = last_updated_of(item)
                if raw is not None and raw[:10] >= self._since:
                    self.recent.append((raw, f"{resource_type}/{item.get('id')}"))
            yield item

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Any]:
        return self.source.read_for_patients(resource_type, patients)

    def seen_after(self, watermark: str | None) -> list[str]:
        floor = instant_of(watermark)
        if floor is None:
            return []
        keys = set()
        for raw, ref in self.recent:
            stamp = instant_of(raw)
            if stamp is not None and stamp > floor:
                keys.add(f"{ref}@{stamp.astimezone(UTC).isoformat()}")
        return sorted(keys)


def server_now(source: FhirSource) -> str | None:
    """The server's clock, as a FHIR instant: the `meta.lastUpdated` of a count-only search
    Bundle (milliseconds, on HAPI and sekmet), else the HTTP `Date` (whole seconds). None for
    file sources or a server that says neither."""
    client = client_of(source)
    if client is None:
        return None
    params = [("pass_summary", "count")]
    if isinstance(source, RosterSource):
        # No population search on a server that refuses them: count one roster patient.
        try:
            first = source.patient_ids()[:1]
        except FhirpanelError:
            return None
        params.insert(0, ("_id", first[0] if first else "none"))
    try:
        response = client.request(
            "GET", "Patient", params=params, headers={"Cache-Control": "no-cache"}
        )
    except FhirpanelError:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    meta = body.get("meta") if isinstance(body, dict) else None
    stamp = instant_of(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    if stamp is None:
        try:
            stamp = email.utils.parsedate_to_datetime(response.headers.get("Date", ""))
        except (TypeError, ValueError):
            return None
        if stamp.tzinfo is None:  # HTTP dates are GMT
            stamp = stamp.replace(tzinfo=UTC)
    return fhir_instant(stamp)


def newest_instant(population: Population) -> str | None:
    """The newest `meta.lastUpdated` among what a full run read (server time)."""
    newest: datetime | None = None
    for table in (population.patients.values(), population.encounters, population.conditions):
        for record in table:
            stamp = getattr(record, "last_updated", None)
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
    if newest is None:
        return None
    return fhir_instant(newest)


def last_updated_of(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) else None


def instant_of(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return parse_instant(raw)
    except (ParseProblem, ValueError):
        return None


def version_key(resource: Mapping[str, Any]) -> str | None:
    """One version of a resource: `Type/id@lastUpdated` (UTC), as `_record_key` makes it."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    updated = instant_of(last_updated_of(resource))
    if not isinstance(rtype, str) or not isinstance(rid, str) or updated is None:
        return None
    return f"{rtype}/{rid}@{updated.astimezone(UTC).isoformat()}"


def patient_of(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, Mapping) else None
    if not isinstance(ref, str):
        return None
    return reference_id(ref, "Patient")
