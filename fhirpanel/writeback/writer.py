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

A transport failure (a lost answer, an unreachable server) ends the write-back with
`WriteBackInterrupted` (exit 13) carrying the summary so far; the writes whose answer was lost
are `summary.unconfirmed`, which the caller keeps and passes to the next run: one found on the
server with the content fhirpanel would build landed, and gets the Provenance it never had.

Here: `write_back` and the pass over the resource types (read what exists, build and decide,
write in batches, keep the ledger). What each pass writes: `bound`; sending one write:
`sending`; transactions, their sizes and refusals: `transactions`; Provenance: `provenance`;
what it reports: `summary`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fhirpanel.config import WritebackSettings
from fhirpanel.errors import AuthError, InvalidRequestError, TransportError
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import FhirClient
from fhirpanel.tables import WritebackTables
from fhirpanel.writeback import bound
from fhirpanel.writeback.builders import ClinicianDirectory
from fhirpanel.writeback.identity import identifier_token, is_managed
from fhirpanel.writeback.plan import PlannedWrite, choose_existing
from fhirpanel.writeback.provenance import ProvenanceWriter
from fhirpanel.writeback.state import log
from fhirpanel.writeback.summary import Key, Ledger, WriteBackInterrupted, WriteSummary
from fhirpanel.writeback.transactions import TransactionSender

if TYPE_CHECKING:  # run.py may call write_back: no import cycle at run time
    from fhirpanel.domain.outcome import RunOutcome

# Called once the CareTeams are planned, before anything is sent: (PCP participations this
# pass would end, of the open ones on the server), (teams whose PCP would change, of the teams
# with one). It may raise (a ChangeHeld brake) to stop the write-back with nothing written.
Guard = Callable[[tuple[int, int], tuple[int, int]], None]

# Identifier tokens per search: `identifier=sys|v1,sys|v2,...` stays well under URL limits.
IDENTIFIER_BATCH = 50
# From this many identifiers, read all of ours in pages when the server holds at most
# BULK_READ_MAX_RATIO times as many (a full run); otherwise search in batches.
BULK_READ_MIN = 500
BULK_READ_MAX_RATIO = 2
# The attribution rule of an override (`jobs.brake.BY_A_PERSON`): a person decided the move.
BY_A_PERSON = "manual"


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


class _Session(TransactionSender, ProvenanceWriter):
    """One write-back pass: the phases here, sending and Provenance from the mixins."""

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
        self._start_transactions(batch_sizes)
        self.carried = frozenset(unconfirmed)
        self._by_a_person: frozenset[str] = frozenset()
        self.summary = WriteSummary(
            dry_run=dry_run, transactions=self.transactions, unconfirmed=set(self.carried)
        )

    # ------------------------------------------------------------ phases

    def run(self, outcome: RunOutcome) -> None:
        try:
            self._run(outcome)
        finally:
            self._end_transactions()

    def _run(self, outcome: RunOutcome) -> None:
        codes, cfg = self.tables.codes, self.cfg
        directory = ClinicianDirectory(outcome.population, codes)
        clinicians = {a.patient: directory.resolve(a) for a in outcome.attribution.assignments}
        # Assigned by a person (an override): their moves are no sudden change for the brake.
        self._by_a_person = frozenset(
            a.patient for a in outcome.attribution.assignments if a.rule == BY_A_PERSON
        )

        teams = bound.care_teams(outcome, clinicians, cfg, codes, self.tables.teams)
        self._phase("CareTeam", teams)
        team_refs = {item.subject: self._reference(item) for item in teams}
        self._phase(
            "CarePlan",
            bound.care_plans(outcome, team_refs, cfg, self.tables),
            check=bound.plan_has_team,
        )
        if cfg.risk_assessment:
            self._phase("RiskAssessment", bound.risk_assessments(outcome, cfg, self.tables))
        if cfg.attribution_group:
            self._phase("Group", bound.attribution_groups(outcome, clinicians, cfg, codes))

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
            self.guard(*bound.pcp_figures(items, self.tables.codes, self._by_a_person))
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
        """How many resources of the type carry our identifier system (None: not said). An EHR
        that refuses this as a population search (400, 403) has not said: the caller reads by
        batched identifiers instead."""
        params = [("identifier", f"{self.cfg.identifier_system}|"), ("_summary", "count")]
        try:
            for bundle in self.client.search_pages(rtype, params):
                total = bundle.get("total")
                return total if isinstance(total, int) else None
        except (InvalidRequestError, AuthError) as exc:
            log.info("%s count refused (%s): reading by identifier", rtype, exc.status)
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

    # ------------------------------------------------------------ writes in batches

    def _write_chunk(self, rtype: str, items: list[PlannedWrite]) -> None:
        """Write one batch (up to writeback.batch_size items), then count what the server
        confirmed and write one Provenance for it."""
        self._send_items(rtype, items)
        self._finish_chunk(rtype, items)

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


# --------------------------------------------------------------------------- helpers


def _our_identifier_values(resource: Mapping[str, Any], cfg: WritebackSettings) -> Iterator[str]:
    for ident in resource.get("identifier") or ():
        if (
            isinstance(ident, Mapping)
            and ident.get("system") == cfg.identifier_system
            and isinstance(ident.get("value"), str)
        ):
            yield ident["value"]


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
