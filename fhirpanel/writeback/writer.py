"""Write a run's results back to the FHIR server: CareTeam, CarePlan, and optionally
RiskAssessment and attribution Groups, with a Provenance per batch (methods.md s.6).

Idempotent: every resource is found by its business identifier, rebuilt from what the server
holds, and written only when its content changed, so a second run with no new data sends only
reads. Creates use conditional update (`PUT Type?identifier=system|value`) where the server
advertises it, else `POST` (with `If-None-Exist` where conditional create is advertised); updates
are `PUT Type/id` with `If-Match`, so a resource someone changed since it was read is re-read and
the change re-applied on top (409/412, a bounded number of times). Writes go in transaction
Bundles where the server supports them; a failed transaction is retried entry by entry so one bad
resource does not block the rest. Resources without fhirpanel's tag and identifier are never
modified. CareTeams are written before CarePlans, which reference them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

import orjson

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import Assignment
from fhirpanel.domain.records import Issue
from fhirpanel.errors import FhirHttpError, VersionConflictError, WriteBackError
from fhirpanel.fhir.build import (
    ATTRIBUTION_GROUP_KIND,
    CARE_PLAN_KIND,
    CARE_TEAM_KIND,
    RISK_ASSESSMENT_KIND,
    CarePlanTemplates,
    ClinicianDirectory,
    ClinicianInfo,
    GroupMember,
    NarrativeLabels,
    WritebackCodes,
    build_attribution_group,
    build_care_plan,
    build_care_team,
    build_provenance,
    build_risk_assessment,
    care_plan_tiers,
    identifier_token,
    identifier_value,
    is_managed,
)
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import FhirClient
from fhirpanel.mappings import load_mapping, load_mapping_ref
from fhirpanel.writeback.plan import PlannedWrite, WriteCounts, choose_existing

if TYPE_CHECKING:  # run.py may call write_back: no import cycle at run time
    from fhirpanel.run import RunOutcome


class Ledger(Protocol):
    """What the writer needs of the state store's write-back ledger."""

    def lookup(self, rtype: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def record(self, rtype: str, identifier: str, resource: Mapping[str, Any]) -> None: ...

    def forget(self, rtype: str, identifier: str) -> None: ...

log = logging.getLogger(__name__)

WRITEBACK_CODES = "writeback_codes"
# Identifier tokens per search: `identifier=sys|v1,sys|v2,...` stays well under URL limits.
IDENTIFIER_BATCH = 50
# From this many identifiers, read all of ours in pages when the server holds at most
# BULK_READ_MAX_RATIO times as many (a full run); otherwise search in batches.
BULK_READ_MIN = 500
BULK_READ_MAX_RATIO = 2
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SimulatedCrash(WriteBackError):
    """Raised by `fail_after_batches` to test that an interrupted run converges when re-run."""


@dataclass(frozen=True)
class WritebackTables:
    """The mapping tables write-back uses, loaded and validated once."""

    codes: WritebackCodes
    templates: CarePlanTemplates
    labels: NarrativeLabels

    @classmethod
    def load(cls, settings: WritebackSettings, mappings_dir: Path | None = None,
             tiers: str = "tiers") -> WritebackTables:
        templates = CarePlanTemplates.from_mapping(
            load_mapping_ref(settings.care_plan_templates, mappings_dir))
        templates.require(care_plan_tiers(settings))
        return cls(
            codes=WritebackCodes.from_mapping(load_mapping(WRITEBACK_CODES, mappings_dir)),
            templates=templates,
            labels=NarrativeLabels.from_mappings(
                tiers=load_mapping_ref(tiers, mappings_dir),
                charlson=load_mapping("charlson_quan2005", mappings_dir),
                chronic=load_mapping("chronic_conditions", mappings_dir),
                risk=load_mapping("risk", mappings_dir),
            ),
        )


@dataclass
class WriteSummary:
    """What a write-back did (or, dry run, would do)."""

    dry_run: bool
    counts: WriteCounts = field(default_factory=WriteCounts)
    issues: list[Issue] = field(default_factory=list)
    strategy: dict[str, str] = field(default_factory=dict)
    transactions: bool = False
    batches: int = 0
    provenance: int = 0
    conflicts_resolved: int = 0
    foreign: int = 0  # resources carrying our identifier without our tag, left alone
    ledger_hits: int = 0  # resources taken from the store's ledger instead of a read
    failed_subjects: set[str] = field(default_factory=set)  # patients with a failed write
    requests: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return self.counts.total("create") + self.counts.total("update")

    @property
    def write_requests(self) -> int:
        by_method: Mapping[str, int] = self.requests.get("by_method", {})
        return sum(n for method, n in by_method.items() if method in WRITE_METHODS)

    def as_report(self) -> dict[str, Any]:
        """The `writeback` object of the run report."""
        return {
            "dry_run": self.dry_run,
            "counts": self.counts.as_dict(),
            "written": self.written,
            "provenance": self.provenance,
            "batches": self.batches,
            "transactions": self.transactions,
            "strategy": dict(sorted(self.strategy.items())),
            "conflicts_resolved": self.conflicts_resolved,
            "foreign_left_alone": self.foreign,
            "ledger_hits": self.ledger_hits,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "issues": [i.as_dict() for i in self.issues],
        }

    def lines(self) -> list[str]:
        """A few lines for the terminal."""
        head = "write-back (dry run, nothing written)" if self.dry_run else "write-back"
        verbs = ({"create": "to create", "update": "to update"} if self.dry_run
                 else {"create": "created", "update": "updated"})
        out = [f"{head}: {self.written} resource(s) "
               f"{'to write' if self.dry_run else 'written'} in {self.seconds:.1f}s"]
        for rtype, row in self.counts.by_type.items():
            parts = [f"{row.get('create', 0)} {verbs['create']}",
                     f"{row.get('update', 0)} {verbs['update']}",
                     f"{row.get('unchanged', 0)} unchanged"]
            parts += [f"{row[a]} {a}" for a in ("skipped", "failed") if row.get(a)]
            out.append(f"  {rtype}: " + ", ".join(parts))
        if not self.dry_run:
            out.append(f"  {self.provenance} Provenance, {self.requests.get('total', 0)} requests "
                       f"({self.write_requests} writes)")
        if self.issues:
            out.append(f"  {len(self.issues)} issue(s), first: {self.issues[0].resource}: "
                       f"{self.issues[0].problem}")
        return out


def write_back(
    outcome: RunOutcome,
    client: FhirClient,
    settings: WritebackSettings,
    *,
    dry_run: bool,
    now: datetime | None = None,
    fail_after_batches: int | None = None,
    tables: WritebackTables | None = None,
    mappings_dir: Path | None = None,
    capabilities: ServerCapabilities | None = None,
    ledger: Ledger | None = None,
    trust_ledger: bool = True,
) -> WriteSummary:
    """Write (or plan, `dry_run=True`) CareTeams, CarePlans and the optional resources for one
    run. `now` is the Provenance time (default: the clock). `capabilities` overrides what the
    server's CapabilityStatement says (tests, or a server that over-promises).

    `ledger` (the state store's): resources it knows are taken as the server's copy instead of
    being read again (`trust_ledger`; a full refresh passes False to reconcile with the server),
    and every resource written or found unchanged is recorded in it. A stale ledger copy costs
    one version conflict: the writer then re-reads and re-applies."""
    started = time.perf_counter()
    before = _stats_snapshot(client)
    tables = tables or WritebackTables.load(settings, mappings_dir)
    caps = capabilities or client.capabilities()
    session = _Session(client, settings, caps, tables, dry_run=dry_run,
                       now=now or datetime.now(UTC), fail_after_batches=fail_after_batches,
                       ledger=ledger, trust_ledger=trust_ledger)
    summary = session.summary
    try:
        session.run(outcome)
    finally:
        summary.seconds = time.perf_counter() - started
        summary.requests = _stats_delta(client, before)
    for line in summary.lines():
        log.info("%s", line)
    return summary


# --------------------------------------------------------------------------- the session


@dataclass
class _Request:
    """One write as a transaction entry or a single HTTP request."""

    item: PlannedWrite
    kind: str  # update (PUT Type/id) | conditional (PUT Type?identifier=) | create (POST)
    method: str
    url: str
    if_match: str | None = None
    if_none_exist: str | None = None

    def entry(self) -> dict[str, Any]:
        request: dict[str, Any] = {"method": self.method, "url": self.url}
        if self.if_match:
            request["ifMatch"] = f'W/"{self.if_match}"'
        if self.if_none_exist:
            request["ifNoneExist"] = self.if_none_exist
        return {"resource": self.item.resource, "request": request}


class _Session:
    def __init__(self, client: FhirClient, settings: WritebackSettings,
                 caps: ServerCapabilities, tables: WritebackTables, *, dry_run: bool,
                 now: datetime, fail_after_batches: int | None,
                 ledger: Ledger | None = None, trust_ledger: bool = True) -> None:
        self.client = client
        self.ledger = ledger
        self.trust_ledger = trust_ledger
        self.cfg = settings
        self.caps = caps
        self.tables = tables
        self.dry_run = dry_run
        self.now = now
        self.fail_after_batches = fail_after_batches
        self.transactions = settings.use_transactions and caps.transaction
        self.summary = WriteSummary(dry_run=dry_run, transactions=self.transactions)

    # ------------------------------------------------------------ phases

    def run(self, outcome: RunOutcome) -> None:
        codes, cfg = self.tables.codes, self.cfg
        as_of = outcome.as_of
        directory = ClinicianDirectory(outcome.population, codes)
        assignments = outcome.attribution.assignments
        clinicians = {a.patient: directory.resolve(a) for a in assignments}

        teams = [self._planned("CareTeam", CARE_TEAM_KIND, a.patient, _team_builder(
            a, as_of, cfg, codes, clinicians[a.patient])) for a in assignments]
        self._phase("CareTeam", teams)
        team_refs = {item.subject: self._reference(item) for item in teams}

        plans = []
        for a in assignments:
            team_ref = team_refs.get(a.patient)
            risk = outcome.risk.get(a.patient)
            plans.append(self._planned("CarePlan", CARE_PLAN_KIND, a.patient, _plan_builder(
                a, risk, as_of, cfg, self.tables, team_ref)))
        self._phase("CarePlan", plans, check=_plan_has_team)

        if cfg.risk_assessment:
            assessments = [self._planned(
                "RiskAssessment", RISK_ASSESSMENT_KIND, a.patient,
                _risk_builder(a, outcome.risk.get(a.patient), as_of, cfg, self.tables))
                for a in assignments]
            self._phase("RiskAssessment", assessments)

        if cfg.attribution_group:
            members: dict[str, list[GroupMember]] = {}
            for a in assignments:
                info = clinicians[a.patient]
                if info is not None and info.organization:
                    members.setdefault(info.organization, []).append(
                        GroupMember(a.patient, info.member))
            organizations = sorted(set(members) | set(outcome.population.organizations))
            groups = [self._planned("Group", ATTRIBUTION_GROUP_KIND, org, _group_builder(
                org, members.get(org, []), as_of, cfg, codes)) for org in organizations]
            self._phase("Group", groups)

    def _planned(self, rtype: str, kind: str, subject: str,
                 build: Callable[[Mapping[str, Any] | None], dict[str, Any] | None]
                 ) -> PlannedWrite:
        return PlannedWrite(rtype=rtype, identifier=identifier_value(kind, subject),
                            subject=subject, build=build)

    def _reference(self, item: PlannedWrite) -> str | None:
        """How a CarePlan refers to its CareTeam: the literal `CareTeam/id` once it exists; in a
        dry run a team still to be created is named by its conditional reference."""
        if item.resource is None or item.action in ("failed", "skipped", "none"):
            return None
        if item.current_id:
            return f"{item.rtype}/{item.current_id}"
        if self.dry_run:
            return f"{item.rtype}?identifier={identifier_token(self.cfg, item.identifier)}"
        return None

    def _phase(self, rtype: str, items: list[PlannedWrite],
               check: Callable[[PlannedWrite], str | None] | None = None) -> None:
        """Read what exists, build, decide, then write what changed. `check` may hold back a
        built resource (with the reason)."""
        self.summary.strategy[rtype] = self._create_strategy(rtype)
        started = time.perf_counter()
        identifiers = [i.identifier for i in items]
        known: dict[str, dict[str, Any]] = {}
        if self.ledger is not None and self.trust_ledger:
            known = self.ledger.lookup(rtype, identifiers)
            self.summary.ledger_hits += len(known)
        found = self._read_existing(rtype, [v for v in identifiers if v not in known])
        for value, resource in known.items():
            found[value] = [resource]
        read_done = time.perf_counter()
        to_write: list[PlannedWrite] = []
        for item in items:
            if not self._prepare(item, found.get(item.identifier, [])):
                continue
            problem = check(item) if check is not None and item.action != "none" else None
            if problem:
                item.action = "skipped"
                self._issue(item, problem, "skipped")
                self.summary.counts.add(rtype, "skipped")
                continue
            if item.action in ("create", "update"):
                to_write.append(item)
                if self.dry_run:
                    self.summary.counts.add(rtype, item.action)
            elif item.action == "unchanged":
                self.summary.counts.add(rtype, "unchanged")
        built = time.perf_counter()
        if not self.dry_run:
            size = max(1, self.cfg.batch_size)
            for start in range(0, len(to_write), size):
                self._write_batch(rtype, to_write[start:start + size])
        if self.ledger is not None and not self.dry_run:
            self._record_ledger(items)
        timings = self.summary.timings
        timings[f"{rtype}.read"] = timings.get(f"{rtype}.read", 0.0) + read_done - started
        timings[f"{rtype}.build"] = timings.get(f"{rtype}.build", 0.0) + built - read_done
        timings[f"{rtype}.write"] = (timings.get(f"{rtype}.write", 0.0)
                                     + time.perf_counter() - built)

    def _record_ledger(self, items: Sequence[PlannedWrite]) -> None:
        """What the server now holds for each item, as far as this run knows it."""
        assert self.ledger is not None  # noqa: S101 - checked by the caller
        for item in items:
            if item.action in ("create", "update") and item.written_id and item.resource:
                meta = dict(item.resource.get("meta") or {})
                if item.written_version:
                    meta["versionId"] = item.written_version
                else:
                    meta.pop("versionId", None)
                self.ledger.record(item.rtype, item.identifier,
                                   {**item.resource, "id": item.written_id, "meta": meta})
            elif item.action == "unchanged" and item.existing is not None:
                self.ledger.record(item.rtype, item.identifier, item.existing)
            elif item.action in ("failed", "create", "update"):
                self.ledger.forget(item.rtype, item.identifier)

    def _prepare(self, item: PlannedWrite, found: Sequence[dict[str, Any]]) -> bool:
        """Choose what exists, refuse foreign resources, build and decide. False: skip it."""
        choice = choose_existing(found, self.cfg)
        for problem in choice.problems:
            self._issue(item, problem, "recorded")
        if choice.foreign or (choice.resource is not None
                              and not is_managed(choice.resource, self.cfg)):
            item.existing = choice.resource
            self.summary.foreign += 1
            self.summary.counts.add(item.rtype, "skipped")
            self._issue(item, "carries fhirpanel's identifier but not its tag: not ours, "
                        "left untouched", "skipped")
            return False
        item.prepare(choice.resource)
        return True

    def _create_strategy(self, rtype: str) -> str:
        if self.cfg.use_conditional_update and self.caps.conditional_update(rtype):
            return "conditional-update"
        resource = self.caps.resources.get(rtype)
        if resource is not None and resource.conditional_create:
            return "conditional-create"
        return "search-then-create"

    # ------------------------------------------------------------ reads

    def _read_existing(self, rtype: str, values: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Resources of a type carrying our identifier system (tagged or not), by identifier
        value. `identifier=sys|v1,sys|v2,...` searches of IDENTIFIER_BATCH values; for a large
        run whose values cover most of what the server holds, one paged search for the whole
        system (`identifier=sys|`) costs far fewer and cheaper requests."""
        unique = sorted(set(values))
        if len(unique) >= BULK_READ_MIN:
            total = self._count_ours(rtype)
            if total is not None and total <= len(unique) * BULK_READ_MAX_RATIO:
                return self._collect(self.client.search(
                    rtype, [("identifier", f"{self.cfg.identifier_system}|")]), rtype,
                    set(unique))
        found: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(unique), IDENTIFIER_BATCH):
            batch = unique[start:start + IDENTIFIER_BATCH]
            tokens = ",".join(identifier_token(self.cfg, v) for v in batch)
            for value, resources in self._collect(
                    self.client.search(rtype, [("identifier", tokens)]), rtype,
                    set(batch)).items():
                found.setdefault(value, []).extend(resources)
        return found

    def _count_ours(self, rtype: str) -> int | None:
        """How many resources of the type carry our identifier system (None: not said)."""
        params = [("identifier", f"{self.cfg.identifier_system}|"), ("_summary", "count")]
        for bundle in self.client.search_pages(rtype, params):
            total = bundle.get("total")
            return total if isinstance(total, int) else None
        return None

    def _collect(self, resources: Iterable[dict[str, Any]], rtype: str,
                 wanted: set[str]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for resource in resources:
            if resource.get("resourceType") != rtype:
                continue
            for value in _our_identifier_values(resource, self.cfg):
                if value in wanted:
                    found.setdefault(value, []).append(resource)
        return found

    # ------------------------------------------------------------ writes

    def _request_for(self, item: PlannedWrite) -> _Request:
        rtype = item.rtype
        if item.action == "update" and item.current_id:
            if item.resource is not None:
                item.resource["id"] = item.current_id
            return _Request(item, "update", "PUT",
                            f"{rtype}/{quote(item.current_id, safe='')}",
                            if_match=item.existing_version)
        if item.resource is not None:
            item.resource.pop("id", None)
        query = f"identifier={quote(identifier_token(self.cfg, item.identifier), safe=':')}"
        strategy = self.summary.strategy.get(rtype) or self._create_strategy(rtype)
        if strategy == "conditional-update":
            return _Request(item, "conditional", "PUT", f"{rtype}?{query}")
        if strategy == "conditional-create":
            return _Request(item, "create", "POST", rtype, if_none_exist=query)
        return _Request(item, "create", "POST", rtype)

    def _write_batch(self, rtype: str, items: list[PlannedWrite]) -> None:
        requests = [self._request_for(item) for item in items]
        written: list[PlannedWrite] = []
        if self.transactions and len(requests) > 1:
            try:
                written = self._send_transaction(requests)
            except FhirHttpError as exc:
                log.warning("%s transaction of %d entries refused (%s); retrying one by one",
                            rtype, len(requests), str(exc)[:200])
                written = self._send_each(requests)
        else:
            written = self._send_each(requests)
        sent = {id(item) for item in written}
        for item in items:
            if item.action in ("create", "update") and id(item) in sent:
                self.summary.counts.add(rtype, item.action)
            elif item.action == "unchanged":
                self.summary.counts.add(rtype, "unchanged")
            elif item.action == "failed":
                self.summary.counts.add(rtype, "failed")
        if written:
            self.summary.batches += 1
            if self.cfg.provenance:
                self._record_provenance(written)
        if self.fail_after_batches is not None and self.summary.batches >= self.fail_after_batches:
            raise SimulatedCrash(f"stopped after {self.summary.batches} write batch(es) "
                                 "(fail_after_batches)")

    def _send_transaction(self, requests: Sequence[_Request]) -> list[PlannedWrite]:
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [r.entry() for r in requests]}
        response = self.client.transaction(bundle)
        entries = [e for e in response.get("entry") or () if isinstance(e, Mapping)]
        if len(entries) != len(requests):
            raise WriteBackError(f"transaction response has {len(entries)} entries for "
                                 f"{len(requests)} requests")
        for request, entry in zip(requests, entries, strict=True):
            _record_written(request.item, request.item.rtype, entry)
        return [r.item for r in requests]

    def _send_each(self, requests: Sequence[_Request]) -> list[PlannedWrite]:
        written = []
        for request in requests:
            if self._send_with_retries(request):
                written.append(request.item)
        return written

    def _send_with_retries(self, request: _Request) -> bool:
        """One write; on a version conflict re-read, rebuild and try again (bounded)."""
        item = request.item
        for attempt in range(self.cfg.max_conflict_retries + 1):
            try:
                self._send_one(request)
                return True
            except VersionConflictError as exc:
                if attempt >= self.cfg.max_conflict_retries:
                    self._fail(item, f"version conflict persisted after {attempt} re-read(s): "
                               f"{exc}")
                    return False
                log.info("%s: version conflict, re-reading and re-applying", item.label)
                if not self._reapply(item):
                    return False
                if item.action not in ("create", "update"):
                    return False
                request = self._request_for(item)
            except FhirHttpError as exc:
                self._fail(item, str(exc))
                return False
        return False

    def _reapply(self, item: PlannedWrite) -> bool:
        """Rebuild `item` on what the server holds now. False when it is no longer ours."""
        fresh = self._read_existing(item.rtype, [item.identifier]).get(item.identifier, [])
        if not self._prepare(item, fresh):
            return False
        self.summary.conflicts_resolved += 1
        return True

    def _send_one(self, request: _Request) -> None:
        item, resource = request.item, request.item.resource
        assert resource is not None  # noqa: S101 - only built resources are sent
        if request.kind == "update":
            written = self.client.update(resource, if_match=request.if_match)
            _record_written(item, item.rtype, {"resource": written})
        elif request.kind == "conditional":
            query = request.url.split("?", 1)[1]
            written = self.client.conditional_update(resource, query)
            _record_written(item, item.rtype, {"resource": written})
        elif request.if_none_exist:
            response = self.client.request(
                "POST", item.rtype, json=resource,
                headers={"If-None-Exist": request.if_none_exist,
                         "Prefer": "return=representation"})
            body = orjson.loads(response.content) if response.content.strip() else {}
            _record_written(item, item.rtype, {
                "resource": body if isinstance(body, dict) else {},
                "response": {"location": response.headers.get("Location", ""),
                             "etag": response.headers.get("ETag", "")}})
        else:
            written = self.client.create(resource)
            _record_written(item, item.rtype, {"resource": written})

    def _record_provenance(self, written: Sequence[PlannedWrite]) -> None:
        targets = [_versioned(item) for item in written if item.written_id]
        if not targets:
            return
        activity = "CREATE" if all(i.action == "create" for i in written) else "UPDATE"
        provenance = build_provenance(targets, self.now, self.cfg, codes=self.tables.codes,
                                      activity=activity)
        try:
            self.client.create(provenance)
            self.summary.provenance += 1
        except FhirHttpError as exc:
            self.summary.issues.append(Issue(
                resource=f"Provenance ({len(targets)} targets)", problem=str(exc)[:300],
                action="skipped"))

    # ------------------------------------------------------------ issues

    def _fail(self, item: PlannedWrite, problem: str) -> None:
        item.action = "failed"
        self.summary.failed_subjects.add(item.subject)
        self._issue(item, problem[:300], "skipped")

    def _issue(self, item: PlannedWrite, problem: str, action: str) -> None:
        log.warning("%s (%s): %s", item.label, item.subject, problem[:300])
        self.summary.issues.append(Issue(resource=item.label, problem=problem, action=action))


# --------------------------------------------------------------------------- builders bound


def _team_builder(assignment: Assignment, as_of: Any, cfg: WritebackSettings,
                  codes: WritebackCodes, clinician: ClinicianInfo | None
                  ) -> Callable[[Mapping[str, Any] | None], dict[str, Any] | None]:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_care_team(assignment, existing, as_of, cfg, codes=codes,
                               clinician=clinician)
    return build


def _plan_builder(assignment: Assignment, risk: Any, as_of: Any, cfg: WritebackSettings,
                  tables: WritebackTables, team_ref: str | None
                  ) -> Callable[[Mapping[str, Any] | None], dict[str, Any] | None]:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_care_plan(assignment, risk, existing, as_of, cfg, tables.templates,
                               codes=tables.codes, labels=tables.labels,
                               care_team_ref=team_ref)
    return build


def _risk_builder(assignment: Assignment, risk: Any, as_of: Any, cfg: WritebackSettings,
                  tables: WritebackTables
                  ) -> Callable[[Mapping[str, Any] | None], dict[str, Any] | None]:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_risk_assessment(assignment, risk, existing, as_of, cfg,
                                     codes=tables.codes, labels=tables.labels)
    return build


def _group_builder(organization: str, members: Sequence[GroupMember], as_of: Any,
                   cfg: WritebackSettings, codes: WritebackCodes
                   ) -> Callable[[Mapping[str, Any] | None], dict[str, Any] | None]:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_attribution_group(organization, members, existing, as_of, cfg,
                                       codes=codes)
    return build


def _plan_has_team(item: PlannedWrite) -> str | None:
    """An open CarePlan must name its CareTeam: when the team could not be written, the plan
    waits for the next run (closing an existing plan needs no team)."""
    resource = item.resource
    closed = resource is not None and resource.get("status") in ("completed", "revoked")
    if resource is not None and not closed and not resource.get("careTeam"):
        return "its CareTeam was not written; the CarePlan waits for the next run"
    return None


# --------------------------------------------------------------------------- helpers


def _our_identifier_values(resource: Mapping[str, Any], cfg: WritebackSettings) -> Iterator[str]:
    for ident in resource.get("identifier") or ():
        if (isinstance(ident, Mapping) and ident.get("system") == cfg.identifier_system
                and isinstance(ident.get("value"), str)):
            yield ident["value"]


def _record_written(item: PlannedWrite, rtype: str, entry: Mapping[str, Any]) -> None:
    """Id and version from a transaction-response entry (location, etag) or a returned body."""
    response = entry.get("response") if isinstance(entry.get("response"), Mapping) else {}
    assert isinstance(response, Mapping)  # noqa: S101 - narrowed above
    resource = entry.get("resource") if isinstance(entry.get("resource"), Mapping) else {}
    assert isinstance(resource, Mapping)  # noqa: S101 - narrowed above
    rid, version = _id_version_from_location(str(response.get("location") or ""), rtype)
    meta = resource.get("meta") if isinstance(resource.get("meta"), Mapping) else {}
    rid = rid or (resource.get("id") if isinstance(resource.get("id"), str) else None)
    version = version or (meta.get("versionId") if isinstance(meta, Mapping) else None)
    etag = str(response.get("etag") or "")
    if not version and etag:
        version = etag.removeprefix("W/").strip('"') or None
    item.written_id = rid or item.current_id
    item.written_version = str(version) if version else None


def _id_version_from_location(location: str, rtype: str) -> tuple[str | None, str | None]:
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if rtype not in parts:
        return None, None
    at = len(parts) - 1 - parts[::-1].index(rtype)
    rid = parts[at + 1] if at + 1 < len(parts) else None
    version = None
    if at + 3 < len(parts) and parts[at + 2] == "_history":
        version = parts[at + 3]
    return rid, version


def _versioned(item: PlannedWrite) -> str:
    base = f"{item.rtype}/{item.written_id}"
    return f"{base}/_history/{item.written_version}" if item.written_version else base


def _stats_snapshot(client: FhirClient) -> dict[str, Any]:
    return {"requests": client.stats.requests, "by_method": dict(client.stats.by_method)}


def _stats_delta(client: FhirClient, before: Mapping[str, Any]) -> dict[str, Any]:
    by_method = {
        method: n - int(before["by_method"].get(method, 0))
        for method, n in client.stats.by_method.items()
        if n - int(before["by_method"].get(method, 0))
    }
    return {"total": client.stats.requests - int(before["requests"]),
            "by_method": dict(sorted(by_method.items()))}

