"""Write a run's results back to the FHIR server: CareTeam, CarePlan, and optionally
RiskAssessment and attribution Groups, with a Provenance per batch (docs/methods.md s.6).

Idempotent: every resource is found by its business identifier, rebuilt from what the server
holds, and written only when its content changed, so a second run with no new data sends only
reads. Creates use conditional update (`PUT Type?identifier=system|value`) where the server
advertises it, else `POST` (with `If-None-Exist` where conditional create is advertised); updates
are `PUT Type/id` with `If-Match`, so a resource someone changed since it was read is re-read and
the change re-applied on top (409/412, a bounded number of times). Writes go in transaction
Bundles where the server supports them. Resources without fhirpanel's tag and identifier are
never modified. CareTeams are written before CarePlans, which reference them.

Only what the server confirmed counts. A transaction's answer is read entry by entry (a server
may run a `transaction` as a batch and answer 200 with a failed entry): a 2xx entry is written, a
409/412 entry goes through the conflict path, any other status is sent again on its own, and an
answer that cannot be read entry by entry (not a transaction-response, another number of
entries, no status) makes every entry "unknown": it is re-read before anything is decided. A 200
to a create sent with If-None-Exist is a match (nothing written). The counts, the ledger, the
failed patients and Provenance follow only confirmed writes.

Transactions have two sizes: one for batches with a conditional entry (a conditional update or
create) and one for batches without (updates by id, plain creates); while they are equal a batch
mixes both. A transaction refused for its size lowers the size of its kind for the rest of the
run (never raised within a run) and the refused entries are sent again: straight to the limit a
refusal names when fhirpanel knows its text (Medplum's, plan.known_limits), else halved, down to
single requests; transactions refused altogether mean single requests. The sizes in use are
`summary.batch_sizes`, which a caller keeps and passes to the next run (`write_back(batch_sizes=
...)`) so that it starts there. A transaction refused whole for a version conflict (409/412 with
no entry named: an atomic transaction) is re-read in one search, re-applied and sent again as
one; only when that conflicts again do its entries go one by one (each with its own bounded
conflict path). Entries a transaction-response answers 409/412 are likewise re-read together and
sent again together. Other refusals are retried entry by entry.

A transport failure (a lost answer, an unreachable server) ends the write-back with
`WriteBackInterrupted` (exit 13) carrying the summary so far; the writes whose answer was lost
are `summary.unconfirmed`, which the caller keeps and passes to the next run: one found on the
server with the content fhirpanel would build landed, and gets the Provenance it never had.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

import orjson
import requests

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.attribution import Assignment
from fhirpanel.domain.records import Issue
from fhirpanel.errors import (
    FhirHttpError,
    SourceError,
    TransportError,
    VersionConflictError,
    WriteBackError,
)
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import FhirClient, outcome_messages
from fhirpanel.tables import WritebackTables
from fhirpanel.tables.writeback import WritebackCodes
from fhirpanel.writeback.builders import (
    ClinicianDirectory,
    ClinicianInfo,
    GroupMember,
    build_attribution_group,
    build_care_plan,
    build_care_team,
    build_provenance,
    build_risk_assessment,
    open_pcp_members,
)
from fhirpanel.writeback.identity import (
    ATTRIBUTION_GROUP_KIND,
    CARE_PLAN_KIND,
    CARE_TEAM_KIND,
    RISK_ASSESSMENT_KIND,
    has_managed_tag,
    identifier_token,
    identifier_value,
    is_managed,
)
from fhirpanel.writeback.plan import (
    BATCH_KINDS,
    CONDITIONAL,
    PLAIN,
    Builder,
    PlannedWrite,
    WriteCounts,
    choose_existing,
    entry_outcome,
    entry_status,
    known_limits,
    refusal_kind,
    response_problem,
)

if TYPE_CHECKING:  # run.py may call write_back: no import cycle at run time
    from fhirpanel.domain.outcome import RunOutcome

Key = tuple[str, str]  # (resource type, business identifier value)
# Called once the CareTeams are planned, before anything is sent: (PCP participations this
# pass would end, of the open ones on the server), (teams whose PCP would change, of the teams
# with one). It may raise (a ChangeHeld brake) to stop the write-back with nothing written.
Guard = Callable[[tuple[int, int], tuple[int, int]], None]


class Ledger(Protocol):
    """What the writer needs of the state store's write-back ledger."""

    def lookup(self, rtype: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def record(self, rtype: str, identifier: str, resource: Mapping[str, Any]) -> None: ...

    def forget(self, rtype: str, identifier: str) -> None: ...


log = logging.getLogger(__name__)

# Identifier tokens per search: `identifier=sys|v1,sys|v2,...` stays well under URL limits.
IDENTIFIER_BATCH = 50
# From this many identifiers, read all of ours in pages when the server holds at most
# BULK_READ_MAX_RATIO times as many (a full run); otherwise search in batches.
BULK_READ_MIN = 500
BULK_READ_MAX_RATIO = 2
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class WriteBackInterrupted(WriteBackError):
    """The write-back stopped part way: a transport failure (the server could not be reached, or
    the answer to a write was lost). The message is one line. `summary` is
    what was done and confirmed up to then; its `unconfirmed` holds the writes whose outcome is
    unknown, for the caller to keep and pass to the next run's `write_back(unconfirmed=...)`."""

    def __init__(self, message: str, summary: WriteSummary | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.summary = summary


@dataclass
class WriteSummary:
    """What a write-back did (or, dry run, would do). Counts, `failed_subjects` and Provenance
    follow only what the server confirmed."""

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
    # Writes sent whose answer was lost (rtype, identifier value): the whole set to keep for
    # the next run, those given in and not settled by this run included.
    unconfirmed: set[Key] = field(default_factory=set)
    # Provenance written for earlier writes whose answer was lost, once a read confirmed them.
    provenance_recovered: int = 0
    # Entries per transaction in use at the end of the run (1: single requests); lower than
    # writeback.batch_size when the server refused larger transactions.
    batch_size: int = 0
    # Entries per transaction in use at the end of the run, per kind of batch: "conditional"
    # (with a conditional create or update) and "plain" (without). Empty when the run sent no
    # transactions (dry run, transactions off or not declared). Pass it to the next run's
    # `write_back(batch_sizes=...)` to start from what this one learned.
    batch_sizes: dict[str, int] = field(default_factory=dict)

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
            "provenance_recovered": self.provenance_recovered,
            "batches": self.batches,
            "transactions": self.transactions,
            "batch_size": self.batch_size,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "strategy": dict(sorted(self.strategy.items())),
            "conflicts_resolved": self.conflicts_resolved,
            "foreign_left_alone": self.foreign,
            "ledger_hits": self.ledger_hits,
            "unconfirmed": [list(key) for key in sorted(self.unconfirmed)],
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "issues": [i.as_dict() for i in self.issues],
        }

    def lines(self) -> list[str]:
        """A few lines for the terminal."""
        head = "write-back (dry run, nothing written)" if self.dry_run else "write-back"
        verbs = (
            {"create": "to create", "update": "to update"}
            if self.dry_run
            else {"create": "created", "update": "updated"}
        )
        out = [
            f"{head}: {self.written} resource(s) "
            f"{'to write' if self.dry_run else 'written'} in {self.seconds:.1f}s"
        ]
        for rtype, row in self.counts.by_type.items():
            parts = [
                f"{row.get('create', 0)} {verbs['create']}",
                f"{row.get('update', 0)} {verbs['update']}",
                f"{row.get('unchanged', 0)} unchanged",
            ]
            parts += [f"{row[a]} {a}" for a in ("matched", "skipped", "failed") if row.get(a)]
            out.append(f"  {rtype}: " + ", ".join(parts))
        if not self.dry_run:
            recovered = (
                f" (+{self.provenance_recovered} for earlier writes)"
                if self.provenance_recovered
                else ""
            )
            out.append(
                f"  {self.provenance} Provenance{recovered}, "
                f"{self.requests.get('total', 0)} requests ({self.write_requests} writes)"
            )
        if self.unconfirmed:
            out.append(
                f"  {len(self.unconfirmed)} write(s) unconfirmed (answer lost): "
                "checked by the next run"
            )
        if self.issues:
            out.append(
                f"  {len(self.issues)} issue(s), first: {self.issues[0].resource}: "
                f"{self.issues[0].problem}"
            )
        return out


def write_back(
    outcome: RunOutcome,
    client: FhirClient,
    settings: WritebackSettings,
    *,
    dry_run: bool,
    tables: WritebackTables,
    now: datetime | None = None,
    capabilities: ServerCapabilities | None = None,
    ledger: Ledger | None = None,
    trust_ledger: bool = True,
    unconfirmed: Collection[Key] = (),
    guard: Guard | None = None,
    batch_sizes: Mapping[str, int] | None = None,
) -> WriteSummary:
    """Write (or plan, `dry_run=True`) CareTeams, CarePlans and the optional resources for one
    run, with the write-back part of the pass's tables (`Tables.load(settings).writeback`).
    `now` is the Provenance time (default: the clock). `capabilities` overrides what the
    server's CapabilityStatement says (tests, or a server that over-promises).

    `ledger` (the state store's): resources it knows are taken as the server's copy instead of
    being read again (`trust_ledger`; a full refresh passes False to reconcile with the server),
    and every resource confirmed written or found unchanged is recorded in it. A stale ledger
    copy costs one version conflict: the writer then re-reads and re-applies.

    `unconfirmed`: the (type, identifier) pairs of an earlier run's `summary.unconfirmed`. Each
    is read from the server, not the ledger; one found with the content this run would build
    landed, and gets the Provenance it lacked (unless one already targets that version).
    The returned `summary.unconfirmed` is the whole set to keep for the next run.

    `guard` (not called in a dry run) sees what the CareTeams planned would do before anything
    is sent: ((participations ended, open ones), (teams whose PCP changes, teams with one)); an
    exception it raises ends the write-back with nothing written.

    `batch_sizes`: the transaction sizes to start from, an earlier run's `summary.batch_sizes`
    ({"conditional": n, "plain": m}; other keys ignored, a missing one starts at
    writeback.batch_size, none is taken above it). A run only ever lowers them; start a full
    refresh from None so that a server whose limits were raised is met at the configured size.

    Raises WriteBackInterrupted (a WriteBackError, exit 13, one line) with `.summary` on a
    transport failure, after which `summary.unconfirmed` says which writes may have landed."""
    started = time.perf_counter()
    before = _stats_snapshot(client)
    try:
        caps = capabilities or client.capabilities()
    except TransportError as exc:
        raise WriteBackInterrupted(
            f"write-back did not start, the FHIR server could not be reached: {exc}",
            WriteSummary(dry_run=dry_run, unconfirmed=set(unconfirmed)),
        ) from exc
    session = _Session(
        client,
        settings,
        caps,
        tables,
        dry_run=dry_run,
        now=now or datetime.now(UTC),
        ledger=ledger,
        trust_ledger=trust_ledger,
        unconfirmed=unconfirmed,
        guard=guard,
        batch_sizes=batch_sizes,
    )
    summary = session.summary
    try:
        session.run(outcome)
    except TransportError as exc:
        raise WriteBackInterrupted(
            f"write-back stopped, the FHIR server could not be reached or an answer was lost: "
            f"{exc}; {summary.written} write(s) confirmed, {len(summary.unconfirmed)} "
            "unconfirmed (checked by the next run)",
            summary,
        ) from exc
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

    @property
    def conditional_create(self) -> bool:
        return self.kind == "create" and bool(self.if_none_exist)

    @property
    def batch_kind(self) -> str:
        """The kind of batch this entry makes: CONDITIONAL (a conditional update or create,
        which Medplum runs under strict isolation) or PLAIN."""
        return CONDITIONAL if self.kind == "conditional" or self.conditional_create else PLAIN


class _Session:
    def __init__(
        self,
        client: FhirClient,
        settings: WritebackSettings,
        caps: ServerCapabilities,
        tables: WritebackTables,
        *,
        dry_run: bool,
        now: datetime,
        ledger: Ledger | None = None,
        trust_ledger: bool = True,
        unconfirmed: Collection[Key] = (),
        guard: Guard | None = None,
        batch_sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.client = client
        self.guard = guard
        self.ledger = ledger
        self.trust_ledger = trust_ledger
        self.cfg = settings
        self.caps = caps
        self.tables = tables
        self.dry_run = dry_run
        self.now = now
        self.transactions = settings.use_transactions and caps.transaction
        # Resources per write batch (one Provenance each), and entries per transaction for each
        # kind of batch: from `batch_sizes` (an earlier run's), never above the batch size;
        # lowered for the rest of the run when the server refuses a transaction for its size.
        self.batch_size = max(1, settings.batch_size)
        self.sizes = start_sizes(self.batch_size, batch_sizes)
        self.refusal: tuple[int, str] | None = None  # (size refused, why), the first time
        self.refusals = 0  # transactions refused for their size (or refused altogether)
        self.carried: frozenset[Key] = frozenset(unconfirmed)
        self.summary = WriteSummary(
            dry_run=dry_run, transactions=self.transactions, unconfirmed=set(self.carried)
        )

    # ------------------------------------------------------------ phases

    def run(self, outcome: RunOutcome) -> None:
        try:
            self._run(outcome)
        finally:
            self.summary.batch_size = max(self.sizes.values()) if self.transactions else 1
            sent = self.transactions and not self.dry_run
            self.summary.batch_sizes = dict(self.sizes) if sent else {}
            if self.refusal is not None:
                size, why = self.refusal
                more = f" ({self.refusals} refusals in all)" if self.refusals > 1 else ""
                self.summary.issues.append(
                    Issue(
                        resource="write-back",
                        problem=f"the server refused a transaction of {size} entries ({why}){more};"
                        f" {sizes_text(self.sizes)} for the rest of the run (the run's "
                        "batch_sizes: the next run starts there when given them)",
                        action="recorded",
                    )
                )

    def _run(self, outcome: RunOutcome) -> None:
        codes, cfg = self.tables.codes, self.cfg
        as_of = outcome.as_of
        directory = ClinicianDirectory(outcome.population, codes)
        assignments = outcome.attribution.assignments
        clinicians = {a.patient: directory.resolve(a) for a in assignments}

        teams = [
            self._planned(
                "CareTeam",
                CARE_TEAM_KIND,
                a.patient,
                functools.partial(_team_builder, a, as_of, cfg, codes, clinicians[a.patient]),
            )
            for a in assignments
        ]
        self._phase("CareTeam", teams)
        team_refs = {item.subject: self._reference(item) for item in teams}

        plans = []
        for a in assignments:
            team_ref = team_refs.get(a.patient)
            risk = outcome.risk.get(a.patient)
            plans.append(
                self._planned(
                    "CarePlan",
                    CARE_PLAN_KIND,
                    a.patient,
                    functools.partial(_plan_builder, a, risk, as_of, cfg, self.tables, team_ref),
                )
            )
        self._phase("CarePlan", plans, check=_plan_has_team)

        if cfg.risk_assessment:
            assessments = [
                self._planned(
                    "RiskAssessment",
                    RISK_ASSESSMENT_KIND,
                    a.patient,
                    functools.partial(
                        _risk_builder, a, outcome.risk.get(a.patient), as_of, cfg, self.tables
                    ),
                )
                for a in assignments
            ]
            self._phase("RiskAssessment", assessments)

        if cfg.attribution_group:
            members: dict[str, list[GroupMember]] = {}
            for a in assignments:
                info = clinicians[a.patient]
                if info is not None and info.organization:
                    members.setdefault(info.organization, []).append(
                        GroupMember(a.patient, info.member)
                    )
            organizations = sorted(set(members) | set(outcome.population.organizations))
            groups = [
                self._planned(
                    "Group",
                    ATTRIBUTION_GROUP_KIND,
                    org,
                    functools.partial(_group_builder, org, members.get(org, []), as_of, cfg, codes),
                )
                for org in organizations
            ]
            self._phase("Group", groups)

    def _planned(
        self, rtype: str, kind: str, subject: str, make: Callable[[list[str]], Builder]
    ) -> PlannedWrite:
        """`make(problems)` binds a builder that reports growth into the item's problems."""
        item = PlannedWrite(
            rtype=rtype, identifier=identifier_value(kind, subject), subject=subject, build=_unbound
        )
        item.build = make(item.problems)
        return item

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

    def _phase(
        self,
        rtype: str,
        items: list[PlannedWrite],
        check: Callable[[PlannedWrite], str | None] | None = None,
    ) -> None:
        """Read what exists, build, decide, then write what changed. `check` may hold back a
        built resource (with the reason); the guard sees the CareTeams before any write."""
        self.summary.strategy[rtype] = self._create_strategy(rtype)
        started = time.perf_counter()
        identifiers = [i.identifier for i in items]
        known: dict[str, dict[str, Any]] = {}
        if self.ledger is not None and self.trust_ledger:
            # A write whose answer was lost is read from the server, never from the ledger.
            known = self.ledger.lookup(
                rtype, [v for v in identifiers if (rtype, v) not in self.carried]
            )
            self.summary.ledger_hits += len(known)
        found = self._read_existing(rtype, [v for v in identifiers if v not in known])
        for value, resource in known.items():
            found[value] = [resource]
        read_done = time.perf_counter()
        to_write: list[PlannedWrite] = []
        for item in items:
            if not self._prepare(item, found.get(item.identifier, [])):
                continue
            for note in item.problems:
                self._issue(item, note, "recorded")
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
        if rtype == "CareTeam" and self.guard is not None and not self.dry_run:
            self.guard(*_pcp_figures(items, self.tables.codes))
        if not self.dry_run:
            try:
                self._settle_carried(rtype, items)
                for start in range(0, len(to_write), self.batch_size):
                    self._write_chunk(rtype, to_write[start : start + self.batch_size])
            finally:
                if self.ledger is not None:
                    self._record_ledger(items)
        timings = self.summary.timings
        timings[f"{rtype}.read"] = timings.get(f"{rtype}.read", 0.0) + read_done - started
        timings[f"{rtype}.build"] = timings.get(f"{rtype}.build", 0.0) + built - read_done
        timings[f"{rtype}.write"] = timings.get(f"{rtype}.write", 0.0) + time.perf_counter() - built

    def _record_ledger(self, items: Sequence[PlannedWrite]) -> None:
        """What the server now holds for each item, as far as it confirmed it."""
        assert self.ledger is not None  # noqa: S101 - checked by the caller
        for item in items:
            if (
                item.outcome == "written"
                and item.action in ("create", "update")
                and item.written_id
                and item.resource
            ):
                meta = dict(item.resource.get("meta") or {})
                if item.written_version:
                    meta["versionId"] = item.written_version
                else:
                    meta.pop("versionId", None)
                self.ledger.record(
                    item.rtype,
                    item.identifier,
                    {**item.resource, "id": item.written_id, "meta": meta},
                )
            elif item.action == "unchanged" and item.existing is not None:
                self.ledger.record(item.rtype, item.identifier, item.existing)
            elif item.action in ("failed", "create", "update"):
                self.ledger.forget(item.rtype, item.identifier)

    def _prepare(self, item: PlannedWrite, found: Sequence[dict[str, Any]]) -> bool:
        """Choose what exists, refuse foreign resources, build and decide. False: skip it."""
        choice = choose_existing(found, self.cfg)
        for problem in choice.problems:
            self._issue(item, problem, "recorded")
        if choice.foreign or (
            choice.resource is not None and not is_managed(choice.resource, self.cfg)
        ):
            item.existing = choice.resource
            item.action = "skipped"
            self.summary.foreign += 1
            self.summary.counts.add(item.rtype, "skipped")
            self._issue(
                item,
                "carries fhirpanel's identifier but not its tag: not ours, left untouched",
                "skipped",
            )
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
                return self._collect(
                    self.client.search(rtype, [("identifier", f"{self.cfg.identifier_system}|")]),
                    rtype,
                    set(unique),
                )
        found: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(unique), IDENTIFIER_BATCH):
            batch = unique[start : start + IDENTIFIER_BATCH]
            tokens = ",".join(identifier_token(self.cfg, v) for v in batch)
            for value, resources in self._collect(
                self.client.search(rtype, [("identifier", tokens)]), rtype, set(batch)
            ).items():
                found.setdefault(value, []).extend(resources)
        return found

    def _count_ours(self, rtype: str) -> int | None:
        """How many resources of the type carry our identifier system (None: not said)."""
        params = [("identifier", f"{self.cfg.identifier_system}|"), ("_summary", "count")]
        for bundle in self.client.search_pages(rtype, params):
            total = bundle.get("total")
            return total if isinstance(total, int) else None
        return None

    def _collect(
        self, resources: Iterable[dict[str, Any]], rtype: str, wanted: set[str]
    ) -> dict[str, list[dict[str, Any]]]:
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
            return _Request(
                item,
                "update",
                "PUT",
                f"{rtype}/{quote(item.current_id, safe='')}",
                if_match=item.existing_version,
            )
        if item.resource is not None:
            item.resource.pop("id", None)
        query = f"identifier={quote(identifier_token(self.cfg, item.identifier), safe=':')}"
        strategy = self.summary.strategy.get(rtype) or self._create_strategy(rtype)
        if strategy == "conditional-update":
            return _Request(item, "conditional", "PUT", f"{rtype}?{query}")
        if strategy == "conditional-create":
            return _Request(item, "create", "POST", rtype, if_none_exist=query)
        return _Request(item, "create", "POST", rtype)

    def _write_chunk(self, rtype: str, items: list[PlannedWrite]) -> None:
        """Write one batch (up to writeback.batch_size items), then count what the server
        confirmed and write one Provenance for it."""
        self._send_items(rtype, items)
        self._finish_chunk(rtype, items)

    def _send_items(
        self, rtype: str, items: Sequence[PlannedWrite], *, retried: bool = False
    ) -> None:
        """Transactions where possible, else one request each. Batches with a conditional entry
        and batches without have their own size (`self.sizes`), and mix while the two are equal.
        A transaction refused for its size lowers the size of its kind for the rest of the run
        and its entries are sent again; one refused whole for a version conflict is re-read and
        sent again as one (`retried`: this already is that second try, so its entries go one by
        one); another refusal is retried entry by entry."""
        pending = [self._request_for(item) for item in items]
        attempt = 1 if retried else 0
        while pending:
            part, kind = self._next_part(pending)
            taken = {id(r) for r in part}
            if not self.transactions or len(part) == 1:
                self._send_each(part, attempt=attempt)
            else:
                try:
                    self._send_transaction(rtype, part, retried=retried)
                except FhirHttpError as exc:
                    refusal = refusal_kind(exc.status, exc.outcome, str(exc))
                    if refusal is not None:
                        self._shrink(kind, len(part), refusal, exc)
                        continue  # the same entries again, at the new size
                    if exc.status in (409, 412):
                        self._whole_conflict(rtype, part, exc, retried=retried)
                    else:
                        log.warning(
                            "%s transaction of %d entries refused (%s); retrying one by one",
                            rtype,
                            len(part),
                            str(exc)[:200],
                        )
                        self._send_each(part, attempt=attempt)
            pending = [r for r in pending if id(r) not in taken]

    def _next_part(self, pending: Sequence[_Request]) -> tuple[list[_Request], str]:
        """The next entries to send together, and the kind of batch they make: the first
        pending ones while both sizes are equal, else the first pending entry's kind only."""
        if not self.transactions:
            return list(pending), PLAIN
        if len(set(self.sizes.values())) == 1:
            part = list(pending[: self.sizes[PLAIN]])
            kind = CONDITIONAL if any(r.batch_kind == CONDITIONAL for r in part) else PLAIN
            return part, kind
        kind = pending[0].batch_kind
        return [r for r in pending if r.batch_kind == kind][: self.sizes[kind]], kind

    def _shrink(self, kind: str, size: int, refusal: str, exc: FhirHttpError) -> None:
        """Lower the size of the refused batch's kind for the rest of the run: to the limits
        the refusal names (plan.known_limits), else half the refused size (a batch without
        conditional entries never gets less room than one with them); single requests when
        the server refuses transactions altogether."""
        why = "; ".join(outcome_messages(exc.outcome or {})) or str(exc)
        why = f"HTTP {exc.status}: {' '.join(why.split())[:200]}"
        sizes = dict(self.sizes)
        if refusal == "unsupported":
            sizes = dict.fromkeys(sizes, 1)
        else:
            for limited, limit in (known_limits(exc.status, exc.outcome, str(exc)) or {}).items():
                if limited in sizes:
                    sizes[limited] = max(1, min(sizes[limited], limit))
            if sizes[kind] >= size:  # not named, or the named limit does not bring it under
                sizes[kind] = max(1, size // 2)
                if kind == PLAIN:
                    sizes[CONDITIONAL] = min(sizes[CONDITIONAL], sizes[PLAIN])
        self.sizes = sizes
        log.warning(
            "transaction of %d entries (%s) refused (%s); %s from now on",
            size,
            kind,
            why,
            sizes_text(sizes),
        )
        self.refusals += 1
        if self.refusal is None:
            self.refusal = (size, why)

    def _whole_conflict(
        self, rtype: str, requests_: Sequence[_Request], exc: FhirHttpError, *, retried: bool
    ) -> None:
        """A transaction refused whole for a version conflict (409/412; an atomic transaction
        names no entry): re-read its resources in one search, re-apply, send them again as one.
        Refused so again (`retried`), its entries go one by one, each on its own conflict path."""
        problem = f"HTTP {exc.status} for the whole transaction"
        if retried:
            log.info(
                "%s transaction of %d entries: %s again after a re-read; sending them one by one",
                rtype,
                len(requests_),
                problem,
            )
            self._send_each(requests_, attempt=1)
            return
        log.info(
            "%s transaction of %d entries: %s; re-reading and re-applying them",
            rtype,
            len(requests_),
            problem,
        )
        self._reapply_together(rtype, [r.item for r in requests_], problem, named=False)

    def _reapply_together(
        self, rtype: str, items: Sequence[PlannedWrite], problem: str, *, named: bool
    ) -> None:
        """Re-read items after a version conflict (one search for all), rebuild them on what
        the server holds now, and send those still to write again together (the first of the
        bounded conflict retries). `named`: the server said each of them conflicted; else only
        those found changed since they were read count as conflicts resolved."""
        if self.cfg.max_conflict_retries < 1:
            for item in items:
                self._fail(item, f"version conflict ({problem})")
            return
        before = {id(item): (item.current_id, item.existing_version) for item in items}
        fresh = self._read_existing(rtype, [item.identifier for item in items])
        again: list[PlannedWrite] = []
        for item in items:
            if not self._prepare(item, fresh.get(item.identifier, [])):
                continue
            if named or (item.current_id, item.existing_version) != before[id(item)]:
                self.summary.conflicts_resolved += 1
            if item.action in ("create", "update"):
                again.append(item)
        if again:
            self._send_items(rtype, again, retried=True)

    def _finish_chunk(self, rtype: str, items: Sequence[PlannedWrite]) -> None:
        written: list[PlannedWrite] = []
        for item in items:
            if item.action in ("create", "update"):
                if item.outcome == "written":
                    written.append(item)
                    self.summary.counts.add(rtype, item.action)
                else:  # not reached without an answer: a bug guard, never counted as written
                    self._fail(item, "no confirmed answer for this write")
                    self.summary.counts.add(rtype, "failed")
            elif item.outcome == "matched":
                self.summary.counts.add(rtype, "matched")
            elif item.action == "unchanged":
                self.summary.counts.add(rtype, "unchanged")
            elif item.action == "failed":
                self.summary.counts.add(rtype, "failed")
        if written:
            self.summary.batches += 1
            if self.cfg.provenance:
                self._record_provenance(written)

    def _send_transaction(
        self, rtype: str, requests_: Sequence[_Request], *, retried: bool = False
    ) -> None:
        """One transaction; every entry ends written, matched, re-sent or re-read. Raises the
        FhirHttpError of a refused transaction (nothing was written). Entries answered 409/412
        are re-read together and sent again together, or (`retried`: they were just re-read)
        each on its own conflict path."""
        items = [r.item for r in requests_]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [r.entry() for r in requests_],
        }
        self._mark(items)
        try:
            response = self.client.transaction(bundle)
        except FhirHttpError:
            self._unmark(items)  # a refused transaction writes nothing
            raise
        except TransportError:
            raise  # the answer is lost: the entries stay unconfirmed
        except SourceError as exc:  # a 2xx answer that is not a JSON object
            self._unknown_answer(rtype, items, str(exc))
            return
        problem = response_problem(response, len(requests_))
        if problem is not None:
            self._unknown_answer(rtype, items, problem)
            return
        conflicts: list[tuple[_Request, int]] = []
        resend: list[tuple[_Request, int]] = []
        matched: list[PlannedWrite] = []
        unknown: list[PlannedWrite] = []
        for request, entry in zip(requests_, response["entry"], strict=True):
            item = request.item
            status = entry_status(entry)
            outcome = entry_outcome(status, conditional_create=request.conditional_create)
            if outcome in ("written", "matched"):
                _record_written(item, rtype, entry)
                if not item.written_id:  # 2xx, but where? read it back
                    unknown.append(item)
                    continue
                self._unmark([item])
                if outcome == "matched":
                    matched.append(item)
                    continue
                item.outcome = "written"
                if request.kind == "conditional" and status == 200 and item.action == "create":
                    item.action = "update"  # the server found one and updated it
            elif outcome == "unknown":
                unknown.append(item)
            else:
                self._unmark([item])
                assert status is not None  # noqa: S101 - conflict/failed have a status
                (conflicts if outcome == "conflict" else resend).append((request, status))
        if conflicts and not retried:
            log.info(
                "%s transaction: %d entries answered 409/412; re-reading and re-applying",
                rtype,
                len(conflicts),
            )
            self._reapply_together(
                rtype, [r.item for r, _ in conflicts], "409/412 in a transaction answer", named=True
            )
        for request, status in conflicts if retried else ():
            log.info(
                "%s: %d in the transaction answer again; re-reading and re-applying",
                request.item.label,
                status,
            )
            self._after_conflict(request.item, f"HTTP {status} in a transaction answer", attempt=1)
        for request, status in resend:
            log.info(
                "%s: %d in the transaction answer; sending it on its own",
                request.item.label,
                status,
            )
            self._send_with_retries(request)
        if matched:
            self._reconcile(rtype, matched, "matched")
        if unknown:
            self._reconcile(rtype, unknown, "unknown")

    def _unknown_answer(self, rtype: str, items: Sequence[PlannedWrite], problem: str) -> None:
        self.summary.issues.append(
            Issue(
                resource=f"{rtype} transaction ({len(items)} entries)",
                problem=f"{problem}; every entry was re-read before anything was counted",
                action="recorded",
            )
        )
        log.warning("%s transaction of %d entries: %s; re-reading them", rtype, len(items), problem)
        self._reconcile(rtype, items, "unknown")

    def _reconcile(
        self, rtype: str, items: Sequence[PlannedWrite], why: str, *, resend: bool = True
    ) -> None:
        """Re-read items whose write is not known to have happened (`unknown`) or that a
        conditional create found already there (`matched`), and decide again: the server holds
        what this run would build (a landed write gets its Provenance; a match counts as
        matched), or the write is sent on its own."""
        fresh = self._read_existing(rtype, [item.identifier for item in items])
        landed: list[PlannedWrite] = []
        for item in items:
            if not self._prepare(item, fresh.get(item.identifier, [])):
                self._unmark([item])
                continue
            if item.action == "unchanged":
                if why == "matched":
                    item.outcome = "matched"
                else:
                    landed.append(item)
            elif item.action in ("create", "update"):
                if resend:
                    self._send_with_retries(self._request_for(item), reconcile=False)
                else:
                    self._unmark([item])
                    self._fail(
                        item,
                        "the server's answers to this write could not be read"
                        if why == "unknown"
                        else "a conditional create matched a "
                        "resource that a search by identifier does not return",
                    )
            else:
                self._unmark([item])
        self._recover_provenance(landed)

    def _after_conflict(self, item: PlannedWrite, problem: str, *, attempt: int = 0) -> None:
        """A 409/412 for a transaction entry (`attempt` re-reads already made for it): re-read,
        re-apply, send on its own (bounded by writeback.max_conflict_retries)."""
        if attempt >= self.cfg.max_conflict_retries:
            self._fail(
                item,
                f"version conflict ({problem})"
                + (f" after {attempt} re-read(s)" if attempt else ""),
            )
            return
        if self._reapply(item) and item.action in ("create", "update"):
            self._send_with_retries(self._request_for(item), attempt=attempt + 1)

    def _send_each(self, requests_: Sequence[_Request], *, attempt: int = 0) -> None:
        """One request each; `attempt`: conflict re-reads already made for them."""
        for request in requests_:
            self._send_with_retries(request, attempt=attempt)

    def _send_with_retries(
        self, request: _Request, *, attempt: int = 0, reconcile: bool = True
    ) -> None:
        """One write; on a version conflict re-read, rebuild and try again (bounded). An answer
        that cannot be read is settled by a re-read (once)."""
        item = request.item
        while True:
            retries = self.client.stats.retries
            try:
                self._send_one(request)
            except VersionConflictError as exc:
                # After a retry (an answer lost, the PUT sent again), the conflict may be with
                # this very write: found as built, it landed, and gets its Provenance.
                resent = self.client.stats.retries > retries
                self._unmark([item])
                if attempt >= self.cfg.max_conflict_retries:
                    self._fail(
                        item, f"version conflict persisted after {attempt} re-read(s): {exc}"
                    )
                    return
                attempt += 1
                log.info("%s: version conflict, re-reading and re-applying", item.label)
                if not self._reapply(item):
                    return
                if item.action == "unchanged" and resent:
                    self._recover_provenance([item])
                if item.action not in ("create", "update"):
                    return
                request = self._request_for(item)
                continue
            except FhirHttpError as exc:
                self._unmark([item])
                self._fail(item, str(exc))
                return
            if item.outcome == "unknown":
                if reconcile:
                    self._reconcile(item.rtype, [item], "unknown", resend=False)
                else:
                    self._unmark([item])
                    self._fail(item, "the server's answers to this write could not be read")
            elif item.outcome == "matched":
                self._reconcile(item.rtype, [item], "matched", resend=reconcile)
            return

    def _reapply(self, item: PlannedWrite) -> bool:
        """Rebuild `item` on what the server holds now. False when it is no longer ours."""
        fresh = self._read_existing(item.rtype, [item.identifier]).get(item.identifier, [])
        if not self._prepare(item, fresh):
            return False
        self.summary.conflicts_resolved += 1
        return True

    def _send_one(self, request: _Request) -> None:
        """Send one write and record what the server answered in `item.outcome`: written,
        matched (If-None-Exist found one), or unknown (a 2xx answer that cannot be read).
        Error statuses raise; a transport failure leaves the item unconfirmed and raises."""
        item, resource = request.item, request.item.resource
        assert resource is not None  # noqa: S101 - only built resources are sent
        self._mark([item])
        try:
            if request.kind == "update":
                written = self.client.update(resource, if_match=request.if_match)
                entry: dict[str, Any] = {"resource": written, "response": {"status": "200"}}
            elif request.kind == "conditional":
                entry = self._answer(
                    self.client.request(
                        "PUT",
                        request.url,
                        json=resource,
                        headers={"Prefer": "return=representation"},
                    )
                )
            elif request.if_none_exist:
                entry = self._answer(
                    self.client.request(
                        "POST",
                        item.rtype,
                        json=resource,
                        headers={
                            "If-None-Exist": request.if_none_exist,
                            "Prefer": "return=representation",
                        },
                    )
                )
            else:
                written = self.client.create(resource)
                entry = {"resource": written, "response": {"status": "201"}}
        except (FhirHttpError, TransportError):
            raise
        except SourceError as exc:  # 2xx, but the body is not a JSON object
            log.warning("%s: the answer to its write could not be read (%s)", item.label, exc)
            item.outcome = "unknown"
            return
        status = entry_status(entry)
        outcome = entry_outcome(status, conditional_create=request.conditional_create)
        _record_written(item, item.rtype, entry)
        if outcome not in ("written", "matched") or not item.written_id:
            item.outcome = "unknown"
            return
        self._unmark([item])
        item.outcome = outcome
        if request.kind == "conditional" and status == 200 and item.action == "create":
            item.action = "update"

    @staticmethod
    def _answer(response: requests.Response) -> dict[str, Any]:
        """A single write's answer in the shape of a transaction-response entry."""
        body: Any = {}
        if response.content.strip():
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise SourceError(f"answer to a write is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise SourceError("answer to a write is not a JSON object")
        return {
            "resource": body,
            "response": {
                "status": str(response.status_code),
                "location": response.headers.get("Location", ""),
                "etag": response.headers.get("ETag", ""),
            },
        }

    # ------------------------------------------------------------ confirmation bookkeeping

    def _mark(self, items: Iterable[PlannedWrite]) -> None:
        """About to send: unconfirmed until the server answers."""
        self.summary.unconfirmed.update((i.rtype, i.identifier) for i in items)

    def _unmark(self, items: Iterable[PlannedWrite]) -> None:
        """The server answered (or the item needs nothing more): no longer unconfirmed."""
        self.summary.unconfirmed.difference_update((i.rtype, i.identifier) for i in items)

    # ------------------------------------------------------------ Provenance

    def _record_provenance(self, written: Sequence[PlannedWrite]) -> None:
        targets = [_versioned(item) for item in written if item.written_id]
        if not targets:
            return
        activity = "CREATE" if all(i.action == "create" for i in written) else "UPDATE"
        provenance = build_provenance(
            targets, self.now, self.cfg, codes=self.tables.codes, activity=activity
        )
        self._mark(written)  # until the Provenance is confirmed
        try:
            self.client.create(provenance)
            self.summary.provenance += 1
        except FhirHttpError as exc:
            # The writes stand; their Provenance is owed: the targets stay marked, and the next
            # run that finds them as written writes it.
            self.summary.issues.append(
                Issue(
                    resource=f"Provenance ({len(targets)} targets)",
                    problem=f"{str(exc)[:260]}; written by the next run",
                    action="recorded",
                )
            )
            return
        except TransportError:
            raise  # the Provenance may or may not exist: its targets stay unconfirmed
        except SourceError as exc:  # 2xx that cannot be read: checked by the next run
            self.summary.issues.append(
                Issue(
                    resource=f"Provenance ({len(targets)} targets)",
                    problem=f"the answer could not be read ({str(exc)[:200]}); checked next run",
                    action="recorded",
                )
            )
            return
        self._unmark(written)

    def _settle_carried(self, rtype: str, items: Sequence[PlannedWrite]) -> None:
        """Writes an earlier run sent without an answer: one the server now holds as this run
        would build it landed, and gets its missing Provenance; one still to write is settled
        when this run's write is answered; one no longer ours (or no longer built) is done."""
        landed: list[PlannedWrite] = []
        for item in items:
            key = (item.rtype, item.identifier)
            if key not in self.carried or item.action in ("create", "update"):
                continue
            if item.action == "unchanged" and item.existing is not None:
                landed.append(item)
            else:
                self._unmark([item])
        self._recover_provenance(landed)

    def _recover_provenance(self, items: Sequence[PlannedWrite]) -> None:
        """A Provenance per resource whose write landed without an answer (found with the
        content fhirpanel builds), for its version on the server, unless one of ours already
        targets that version (the lost answer may have been the Provenance's own)."""
        for item in items:
            existing = item.existing or {}
            rid = existing.get("id")
            if not self.cfg.provenance or not isinstance(rid, str) or not rid:
                self._unmark([item])
                continue
            version = item.existing_version
            target = f"{item.rtype}/{rid}/_history/{version}" if version else f"{item.rtype}/{rid}"
            if self._has_provenance(item.rtype, rid, target):
                self._unmark([item])
                continue
            meta = existing.get("meta") if isinstance(existing.get("meta"), Mapping) else {}
            recorded = _instant(meta.get("lastUpdated") if isinstance(meta, Mapping) else None)
            provenance = build_provenance(
                [target],
                recorded or self.now,
                self.cfg,
                codes=self.tables.codes,
                activity="CREATE" if version == "1" else "UPDATE",
            )
            try:
                self.client.create(provenance)
                self.summary.provenance_recovered += 1
                log.info(
                    "%s: its earlier write landed without an answer; Provenance written", item.label
                )
            except FhirHttpError as exc:
                self.summary.issues.append(
                    Issue(
                        resource=f"Provenance ({target})", problem=str(exc)[:300], action="skipped"
                    )
                )
            except TransportError:
                raise
            except SourceError:  # 2xx that cannot be read: checked again by the next run
                continue
            self._unmark([item])

    def _has_provenance(self, rtype: str, rid: str, target: str) -> bool:
        """Whether one of fhirpanel's Provenance already targets `target` (a server that cannot
        search Provenance by target: no, and one is written)."""
        try:
            found = list(self.client.search("Provenance", [("target", f"{rtype}/{rid}")]))
        except FhirHttpError:
            return False
        return any(
            has_managed_tag(p, self.cfg)
            and any(
                isinstance(t, Mapping) and _reference_tail(t.get("reference")) == target
                for t in p.get("target") or ()
            )
            for p in found
        )

    # ------------------------------------------------------------ issues

    def _fail(self, item: PlannedWrite, problem: str) -> None:
        item.action = "failed"
        item.outcome = "failed"
        self.summary.failed_subjects.add(item.subject)
        self._issue(item, problem[:300], "skipped")

    def _issue(self, item: PlannedWrite, problem: str, action: str) -> None:
        log.warning("%s (%s): %s", item.label, item.subject, problem[:300])
        self.summary.issues.append(Issue(resource=item.label, problem=problem, action=action))


# --------------------------------------------------------------------------- builders bound


def _unbound(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
    raise AssertionError("builder not bound")  # pragma: no cover - replaced in _planned


def _team_builder(
    assignment: Assignment,
    as_of: Any,
    cfg: WritebackSettings,
    codes: WritebackCodes,
    clinician: ClinicianInfo | None,
    problems: list[str],
) -> Builder:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_care_team(
            assignment, existing, as_of, cfg, codes=codes, clinician=clinician, problems=problems
        )

    return build


def _plan_builder(
    assignment: Assignment,
    risk: Any,
    as_of: Any,
    cfg: WritebackSettings,
    tables: WritebackTables,
    team_ref: str | None,
    problems: list[str],
) -> Builder:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_care_plan(
            assignment,
            risk,
            existing,
            as_of,
            cfg,
            tables.templates,
            codes=tables.codes,
            labels=tables.labels,
            care_team_ref=team_ref,
            problems=problems,
        )

    return build


def _risk_builder(
    assignment: Assignment,
    risk: Any,
    as_of: Any,
    cfg: WritebackSettings,
    tables: WritebackTables,
    problems: list[str],
) -> Builder:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_risk_assessment(
            assignment, risk, existing, as_of, cfg, codes=tables.codes, labels=tables.labels
        )

    return build


def _group_builder(
    organization: str,
    members: Sequence[GroupMember],
    as_of: Any,
    cfg: WritebackSettings,
    codes: WritebackCodes,
    problems: list[str],
) -> Builder:
    def build(existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return build_attribution_group(organization, members, existing, as_of, cfg, codes=codes)

    return build


def _pcp_figures(
    teams: Sequence[PlannedWrite], codes: WritebackCodes
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((PCP participations ended, open ones now), (teams whose PCP changes, teams with one))
    for the CareTeams as planned (a team not written keeps what it has)."""
    ended = open_now = changed = with_pcp = 0
    for item in teams:
        before = open_pcp_members(item.existing, codes) if item.action != "skipped" else []
        if not before:
            continue
        with_pcp += 1
        open_now += len(before)
        after = (
            open_pcp_members(item.resource, codes)
            if item.action in ("create", "update")
            else before
        )
        remaining = list(after)
        for member in before:
            if member in remaining:
                remaining.remove(member)
            else:
                ended += 1
        changed += set(before) != set(after)
    return (ended, open_now), (changed, with_pcp)


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
        if (
            isinstance(ident, Mapping)
            and ident.get("system") == cfg.identifier_system
            and isinstance(ident.get("value"), str)
        ):
            yield ident["value"]


def _record_written(item: PlannedWrite, rtype: str, entry: Mapping[str, Any]) -> None:
    """Id and version from a transaction-response entry (location, etag) or a returned body."""
    response = entry.get("response") if isinstance(entry.get("response"), Mapping) else {}
    assert isinstance(response, Mapping)  # noqa: S101 - narrowed above
    resource = entry.get("resource") if isinstance(entry.get("resource"), Mapping) else {}
    assert isinstance(resource, Mapping)  # noqa: S101 - narrowed above
    rid, version = _id_version_from_location(str(response.get("location") or ""), rtype)
    meta = resource.get("meta") if isinstance(resource.get("meta"), Mapping) else {}
    if resource.get("resourceType") not in (None, rtype):
        resource, meta = {}, {}  # e.g. an OperationOutcome: says nothing about the id
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


def _reference_tail(reference: Any) -> str:
    """`CareTeam/1/_history/2` from an absolute or relative reference."""
    if not isinstance(reference, str):
        return ""
    parts = [p for p in urlsplit(reference).path.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        return "/".join(parts[-4:])
    return "/".join(parts[-2:])


def _instant(value: Any) -> datetime | None:
    """A FHIR instant as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _versioned(item: PlannedWrite) -> str:
    base = f"{item.rtype}/{item.written_id}"
    return f"{base}/_history/{item.written_version}" if item.written_version else base


def start_sizes(batch_size: int, given: Mapping[str, int] | None) -> dict[str, int]:
    """Entries per transaction for each kind of batch at the start of a run: `given` (an earlier
    run's `summary.batch_sizes`) where it holds a usable size, capped at `batch_size`."""
    sizes = dict.fromkeys(BATCH_KINDS, batch_size)
    for kind, size in (given or {}).items():
        if kind in sizes and isinstance(size, int) and not isinstance(size, bool):
            sizes[kind] = max(1, min(batch_size, size))
    return sizes


def sizes_text(sizes: Mapping[str, int]) -> str:
    """`transactions of at most 8 entries with a conditional entry, 50 without`."""
    conditional, plain = sizes[CONDITIONAL], sizes[PLAIN]
    if conditional == plain:
        return "single requests" if plain == 1 else f"transactions of at most {plain} entries"
    with_ = (
        "conditional entries one by one"
        if conditional == 1
        else f"at most {conditional} entries with a conditional entry"
    )
    without = "single requests without" if plain == 1 else f"{plain} without"
    return f"transactions of {with_}, {without}"


def _stats_snapshot(client: FhirClient) -> dict[str, Any]:
    return {"requests": client.stats.requests, "by_method": dict(client.stats.by_method)}


def _stats_delta(client: FhirClient, before: Mapping[str, Any]) -> dict[str, Any]:
    by_method = {
        method: n - int(before["by_method"].get(method, 0))
        for method, n in client.stats.by_method.items()
        if n - int(before["by_method"].get(method, 0))
    }
    return {
        "total": client.stats.requests - int(before["requests"]),
        "by_method": dict(sorted(by_method.items())),
    }
