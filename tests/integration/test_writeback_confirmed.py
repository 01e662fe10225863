"""Only confirmed writes count: write-back against a server that writes like Medplum (a
`transaction` run as a batch, per-entry statuses, its 50/8 transaction limits), put in front of
the real sandbox FHIR server by tests/integration/medplum_like.py.

Each test checks the server's managed resources (count and content) against one clean run of
the same data, not only the counters: per-entry 412/422 in a transaction-response, an answer
that cannot be read entry by entry, Medplum's limits (read from the refusal: 8 entries with a
conditional entry, 50 without, after one refusal; the learned sizes start the next run with
none), a refusal that cannot be read (its kind halves), a conflict in an atomic transaction (one
re-read, one resend), an If-None-Exist match, a server that drops element ids (3 runs, no
growth), and a lost answer (the rerun writes the missing Provenance, once).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.config import FhirSettings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.errors import ExitCode, WriteBackError
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import FhirClient
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.tables import Tables
from fhirpanel.writeback import WriteBackInterrupted, WritebackTables, WriteSummary
from fhirpanel.writeback.identity import identifier_value
from fhirpanel.writeback.plan import known_limits
from fhirpanel.writeback.transactions import sizes_text, start_sizes
from tests.integration.faults import PASS, RESET_MID_BODY, Status
from tests.integration.medplum_like import (
    NO_STATUS,
    SEARCHSET,
    TOO_MANY_STRICT,
    TOO_MANY_UPDATES,
    MedplumLike,
    TransactionScript,
    bad_request,
    strip_ids,
)
from tests.integration.test_writeback import (
    analyse,
    assigned_patients,
    by_identifier,
    end_state,
    expected_plans,
    ours,
    write,
)

NO_LIMITS: dict[str, Any] = {"max_updates": None, "max_strict_entries": None}


class DictLedger:
    """The state store's write-back ledger, in memory."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def lookup(self, rtype: str, identifiers: Any) -> dict[str, dict[str, Any]]:
        return {i: self.rows[(rtype, i)] for i in identifiers if (rtype, i) in self.rows}

    def record(self, rtype: str, identifier: str, resource: Mapping[str, Any]) -> None:
        self.rows[(rtype, identifier)] = dict(resource)

    def forget(self, rtype: str, identifier: str) -> None:
        self.rows.pop((rtype, identifier), None)


@pytest.fixture(scope="module")
def tables(tables: Tables) -> WritebackTables:
    """Here `tables` is the write-back part of the session's (tests/conftest.py)."""
    return tables.writeback


@pytest.fixture(scope="module")
def clean(population_dir: Path, tables: WritebackTables) -> dict[str, Any]:
    """The end state of one clean run straight against the sandbox."""
    with SandboxServer() as server, FhirClient(FhirSettings(base_url=server.base_url)) as fhir:
        server.load_ndjson_dir(population_dir)
        write(analyse(fhir), fhir, tables)
        return end_state(fhir)


@pytest.fixture
def loaded(sandbox: SandboxServer, population_dir: Path) -> SandboxServer:
    sandbox.load_ndjson_dir(population_dir)
    return sandbox


@pytest.fixture
def direct(loaded: SandboxServer) -> Iterator[FhirClient]:
    """Straight to the sandbox: to read what the server holds."""
    with FhirClient(FhirSettings(base_url=loaded.base_url)) as fhir:
        yield fhir


@pytest.fixture
def outcome(direct: FhirClient) -> RunOutcome:
    return analyse(direct)


def through(proxy: MedplumLike) -> FhirClient:
    return FhirClient(
        FhirSettings(base_url=proxy.base_url, max_retries=1, backoff_factor=0.01, read_timeout=10.0)
    )


def provenance_targets(client: FhirClient) -> Counter[str]:
    """Every versioned target of fhirpanel's Provenance on the server, with how often."""
    return Counter(t["reference"] for p in ours(client, "Provenance") for t in p["target"])


def suspend(server: SandboxServer, teams: list[dict[str, Any]]) -> None:
    """Someone suspends teams on the server (fhirpanel will set them active again)."""
    for team in teams:
        server.ctx.store.update({**team, "status": "suspended"}, origin="internal")


def in_write_order(
    outcome: RunOutcome, teams: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Our CareTeams in the order the writer sends them (the assignments' order)."""
    order = {a.patient: n for n, a in enumerate(outcome.attribution.assignments)}
    return sorted(teams.values(), key=lambda t: order[t["subject"]["reference"]])


def counts(summary: WriteSummary, rtype: str) -> dict[str, int]:
    return {k: v for k, v in summary.counts.as_dict().get(rtype, {}).items() if v}


# --------------------------------------------------------------------------- per-entry statuses


def test_failed_entries_in_a_transaction_response_are_not_counted_written(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    ledger = DictLedger()
    with (
        MedplumLike(loaded.base_url, status_text=True, **NO_LIMITS) as proxy,
        through(proxy) as client,
    ):
        write(outcome, client, tables, ledger=ledger)
        assert end_state(direct) == clean
        teams = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))
        first, second = teams[0], teams[1]
        suspend(loaded, [first, second])
        provenance_before = provenance_targets(direct)

        # Both updates go in one transaction, answered 200: entry 0 "412 Precondition Failed",
        # entry 1 "422 Unprocessable Entity"; on its own, entry 1 is refused again.
        proxy.reset_counts()
        proxy.script_transaction(TransactionScript(entries={0: 412, 1: 422}))
        proxy.script_writes(PASS, PASS, Status(422))
        summary = write(outcome, client, tables, ledger=ledger, trust_ledger=False)

    assert [t.entries for t in proxy.transactions] == [2]
    assert counts(summary, "CareTeam") == {"update": 1, "failed": 1, "unchanged": len(teams) - 2}
    assert summary.written == 1 and summary.conflicts_resolved == 1
    second_patient = second["subject"]["reference"]
    assert summary.failed_subjects == {second_patient}
    assert summary.unconfirmed == set()
    # The server: the re-applied one is active again, the failed one still suspended.
    now_first = direct.read("CareTeam", first["id"])
    assert now_first["status"] == "active"
    assert direct.read("CareTeam", second["id"])["status"] == "suspended"
    # Provenance: one new one, for the confirmed write only (its new version).
    added = provenance_targets(direct) - provenance_before
    assert added == Counter(
        {f"CareTeam/{first['id']}/_history/{now_first['meta']['versionId']}": 1}
    )
    # The ledger holds what the server confirmed and forgets the failed write ...
    first_key = ("CareTeam", identifier_value("careteam-pcp", first["subject"]["reference"]))
    second_key = ("CareTeam", identifier_value("careteam-pcp", second_patient))
    assert ledger.rows[first_key]["meta"]["versionId"] == now_first["meta"]["versionId"]
    assert second_key not in ledger.rows
    # ... so the next incremental pass, trusting the ledger, writes it.
    with MedplumLike(loaded.base_url, **NO_LIMITS) as proxy, through(proxy) as client:
        rerun = write(outcome, client, tables, ledger=ledger)
    assert counts(rerun, "CareTeam") == {"update": 1, "unchanged": len(teams) - 1}
    assert end_state(direct) == clean
    assert len(ours(direct, "CareTeam")) == len(assigned_patients(outcome))


@pytest.mark.parametrize(
    "script",
    [TransactionScript(answer=SEARCHSET), TransactionScript(entries={1: NO_STATUS})],
    ids=["searchset-answer", "entry-without-status"],
)
def test_an_answer_that_cannot_be_read_is_re_read_not_counted(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
    script: TransactionScript,
) -> None:
    with MedplumLike(loaded.base_url, **NO_LIMITS) as proxy, through(proxy) as client:
        write(outcome, client, tables)
        teams = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))
        suspend(loaded, teams[:2])
        proxy.script_transaction(script)
        summary = write(outcome, client, tables)
    # Both writes landed, but the answer did not say so: re-read, found as built, never
    # counted as written; each gets the Provenance its write should have had.
    unknown = 2 if script.answer == SEARCHSET else 1
    assert summary.written == 2 - unknown
    assert counts(summary, "CareTeam").get("unchanged") == len(teams) - 2 + unknown
    assert summary.provenance_recovered == unknown
    assert end_state(direct) == clean
    targets = provenance_targets(direct)
    for team in teams[:2]:
        version = direct.read("CareTeam", team["id"])["meta"]["versionId"]
        assert targets[f"CareTeam/{team['id']}/_history/{version}"] == 1
    if script.answer == SEARCHSET:
        assert any("searchset" in i.problem for i in summary.issues)


# --------------------------------------------------------------------------- Medplum's limits


def test_medplum_limits_are_read_and_the_learned_sizes_start_the_next_run(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
    population_dir: Path,
) -> None:
    with MedplumLike(loaded.base_url) as proxy, through(proxy) as client:
        # Creates are conditional updates (PUT CareTeam?identifier=...). The first transaction
        # of 100 is refused for its updates (> 50); Medplum would refuse any batch with a
        # conditional entry above 8 next: straight to 8 after that one refusal, 50 without.
        first = write(outcome, client, tables)
        refused = [t for t in proxy.transactions if t.status == 400]
        accepted = [t for t in proxy.transactions if t.status == 200]
        assert [t.entries for t in refused] == [100]
        assert max(t.entries for t in accepted) == 8 and all(t.conditional for t in accepted)
        assert first.batch_sizes == {"conditional": 8, "plain": 50} and first.batch_size == 50
        assert first.as_report()["batch_sizes"] == {"conditional": 8, "plain": 50}
        # No entry-by-entry resend: every write was a transaction or a Provenance, but for the
        # last entry of a write batch when it is left alone (a transaction of 1 is not sent).
        kinds = Counter((a.method, a.path.split("?")[0].rsplit("/", 1)[-1]) for a in proxy.writes())
        singles = {
            k: n for k, n in kinds.items() if k not in (("POST", "fhir"), ("POST", "Provenance"))
        }
        assert sum(singles.values()) <= first.batches
        assert kinds[("POST", "fhir")] == len(proxy.transactions)
        [issue] = [i for i in first.issues if i.resource == "write-back"]
        assert "transaction of 100 entries" in issue.problem and TOO_MANY_UPDATES in issue.problem
        assert "at most 8 entries with a conditional entry, 50 without" in issue.problem
        assert end_state(direct) == clean
        assert len(ours(direct, "CareTeam")) == len(assigned_patients(outcome))
        assert len(ours(direct, "CarePlan")) == len(expected_plans(outcome))
        assert first.provenance == first.batches  # one per write batch of 100, as before

        # The next run, given the learned sizes: 60 updates by id and 10 re-creates in one write
        # batch go apart (50 + 10 without a conditional entry, 8 + 2 with), none refused.
        teams = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))
        suspend(loaded, teams[:60])
        for team in teams[60:70]:
            direct.request("DELETE", f"CareTeam/{team['id']}")
        proxy.reset_counts()
        second = write(outcome, client, tables, batch_sizes=first.batch_sizes)
        seen = [t for t in proxy.transactions]
    assert [t.status for t in seen] == [200] * len(seen)
    assert not any(t.mixed for t in seen)
    assert all(t.entries <= (8 if t.conditional else 50) for t in seen)
    care_teams = [t.entries for t in seen[:4]]
    assert sorted(care_teams) == [2, 8, 10, 50]
    assert counts(second, "CareTeam") == {"update": 60, "create": 10, "unchanged": len(teams) - 70}
    assert second.batch_sizes == first.batch_sizes
    assert not [i for i in second.issues if i.resource == "write-back"]
    assert end_state(direct) == clean

    # A first run on a clean server from the learned sizes: the same writes, none refused,
    # one request fewer.
    with SandboxServer() as other:
        other.load_ndjson_dir(population_dir)
        with (
            MedplumLike(other.base_url) as proxy,
            through(proxy) as client,
            FhirClient(FhirSettings(base_url=other.base_url)) as other_direct,
        ):
            again = write(outcome, client, tables, batch_sizes=first.batch_sizes)
            assert [t.status for t in proxy.transactions if t.status != 200] == []
            assert again.requests["total"] == first.requests["total"] - 1
            assert again.counts.as_dict() == first.counts.as_dict()
            assert end_state(other_direct) == clean


def test_updates_by_id_from_the_configured_size_settle_at_50(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    """Updates by id alone (no conditional entry): one refusal, then Medplum's 50."""
    write(outcome, direct, tables)
    teams = list(by_identifier(ours(direct, "CareTeam")).values())
    suspend(loaded, teams)
    with MedplumLike(loaded.base_url) as proxy, through(proxy) as client:
        second = write(outcome, client, tables)
    assert [t.entries for t in proxy.transactions if t.status == 400] == [100]
    assert max(t.entries for t in proxy.transactions if t.status == 200) == 50
    assert not any(t.conditional for t in proxy.transactions)
    assert not any(a.method == "PUT" for a in proxy.writes())
    assert counts(second, "CareTeam") == {"update": len(teams)}
    assert second.batch_sizes == {"conditional": 8, "plain": 50}
    assert TOO_MANY_STRICT not in " ".join(i.problem for i in second.issues)
    assert end_state(direct) == clean


def test_a_size_refusal_fhirpanel_cannot_read_halves_its_own_kind(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    """A server that caps every transaction at 30 entries (`too-costly`, no known text): the
    size of the refused kind halves, the other kind's stays until it is refused itself."""
    with (
        MedplumLike(loaded.base_url, max_entries=30, **NO_LIMITS) as proxy,
        through(proxy) as client,
    ):
        first = write(outcome, client, tables)
        assert [t.entries for t in proxy.transactions if t.status == 400] == [100, 50]
        assert max(t.entries for t in proxy.transactions if t.status == 200) == 25
        assert first.batch_sizes == {"conditional": 25, "plain": 100}
        teams = list(by_identifier(ours(direct, "CareTeam")).values())
        suspend(loaded, teams)
        proxy.reset_counts()
        second = write(outcome, client, tables, batch_sizes=first.batch_sizes)
    assert [t.entries for t in proxy.transactions if t.status == 400] == [100, 50]
    assert second.batch_sizes == {"conditional": 25, "plain": 25}
    assert end_state(direct) == clean


def test_start_sizes_are_capped_by_the_configured_batch_size() -> None:
    assert start_sizes(100, None) == {"conditional": 100, "plain": 100}
    assert start_sizes(40, {"conditional": 8, "plain": 50, "other": 3}) == {
        "conditional": 8,
        "plain": 40,
    }
    assert start_sizes(100, {"conditional": 0, "plain": True}) == {  # type: ignore[dict-item]
        "conditional": 1,
        "plain": 100,
    }
    assert known_limits(400, orjson.loads(bad_request(TOO_MANY_STRICT))) == {
        "conditional": 8,
        "plain": 50,
    }
    assert known_limits(400, None, f"HTTP 400: {TOO_MANY_UPDATES}") == {
        "conditional": 8,
        "plain": 50,
    }
    assert known_limits(400, orjson.loads(bad_request("Bundle too large"))) is None
    assert known_limits(412, orjson.loads(bad_request(TOO_MANY_STRICT))) is None
    assert sizes_text({"conditional": 1, "plain": 1}) == "single requests"
    assert sizes_text({"conditional": 1, "plain": 50}) == (
        "transactions of conditional entries one by one, 50 without"
    )


# --------------------------------------------------------------------------- If-None-Exist


def conditional_create_only(caps: ServerCapabilities) -> ServerCapabilities:
    """The sandbox's capabilities without conditional update: creates are POST + If-None-Exist."""
    return dataclasses.replace(
        caps,
        resources={
            rtype: dataclasses.replace(res, conditional_update=False)
            for rtype, res in caps.resources.items()
        },
    )


def test_an_if_none_exist_match_is_counted_matched_not_created(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    caps = conditional_create_only(direct.capabilities())
    taken: dict[str, Any] = {}

    def another_run_gets_there_first(bundle: dict[str, Any]) -> None:
        # Between fhirpanel's read and its write, another writer creates the first team,
        # exactly as fhirpanel would.
        resource = {**bundle["entry"][0]["resource"], "id": "concurrent-team"}
        loaded.load([resource])
        taken["identifier"] = resource["identifier"][0]["value"]

    with MedplumLike(loaded.base_url, **NO_LIMITS) as proxy, through(proxy) as client:
        proxy.before_transaction = another_run_gets_there_first
        summary = write(outcome, client, tables, capabilities=caps)
    assert summary.strategy["CareTeam"] == "conditional-create"
    patients = assigned_patients(outcome)
    assert counts(summary, "CareTeam") == {"create": len(patients) - 1, "matched": 1}
    assert summary.written == len(patients) - 1 + len(expected_plans(outcome))
    assert "CareTeam/concurrent-team" not in " ".join(provenance_targets(direct))
    for provenance in ours(direct, "Provenance"):
        refs = [t["reference"] for t in provenance["target"]]
        assert not any(r.startswith("CareTeam/concurrent-team") for r in refs)
    teams = by_identifier(ours(direct, "CareTeam"))  # one per identifier: no duplicate
    assert teams[taken["identifier"]]["id"] == "concurrent-team"
    assert end_state(direct) == clean


# --------------------------------------------------------------------------- element ids dropped


def test_a_server_that_drops_element_ids_stays_stable_over_three_runs(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    with (
        MedplumLike(loaded.base_url, strip_element_ids=True, **NO_LIMITS) as proxy,
        through(proxy) as client,
    ):
        runs = [write(outcome, client, tables) for _ in range(3)]
    assert runs[0].written == len(assigned_patients(outcome)) + len(expected_plans(outcome))
    for later in runs[1:]:
        assert later.written == 0 and later.write_requests == 0 and later.issues == []
    teams = by_identifier(ours(direct, "CareTeam"))
    assert all(len(t["participant"]) == 1 for t in teams.values())
    assert not any("id" in p for t in teams.values() for p in t["participant"])
    # The same resources as a clean run on a server that keeps ids, less the element ids.
    assert end_state(direct) == {k: strip_ids(v) for k, v in clean.items()}


# --------------------------------------------------------------------------- lost answers


@pytest.mark.parametrize("lost", ["transaction", "provenance"])
def test_a_lost_answer_ends_the_write_back_and_the_rerun_writes_the_missing_provenance(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
    lost: str,
) -> None:
    with MedplumLike(loaded.base_url, **NO_LIMITS) as proxy, through(proxy) as client:
        # The first transaction (100 CareTeams) lands; its answer, or that of its Provenance,
        # is cut off halfway through the body.
        proxy.script_writes(
            *([RESET_MID_BODY] if lost == "transaction" else [PASS, RESET_MID_BODY])
        )
        with pytest.raises(WriteBackInterrupted) as caught:
            write(outcome, client, tables)
        error = caught.value
        assert isinstance(error, WriteBackError) and error.exit_code == ExitCode.WRITEBACK == 13
        assert "\n" not in str(error) and "unconfirmed" in str(error)
        interrupted = error.summary
        assert interrupted is not None
        assert len(interrupted.unconfirmed) == 100
        assert {rtype for rtype, _ in interrupted.unconfirmed} == {"CareTeam"}
        assert interrupted.written == (0 if lost == "transaction" else 100)
        landed = by_identifier(ours(direct, "CareTeam"))
        assert set(landed) == {value for _, value in interrupted.unconfirmed}
        provenance_on_server = len(ours(direct, "Provenance"))
        assert provenance_on_server == (0 if lost == "transaction" else 1)

        # The rerun, given the unconfirmed set: the 100 are found as built, and get the
        # Provenance they lack (none when the lost answer was the Provenance's own).
        rerun = write(outcome, client, tables, unconfirmed=interrupted.unconfirmed)
        assert rerun.unconfirmed == set()
        assert rerun.provenance_recovered == (100 if lost == "transaction" else 0)
        assert counts(rerun, "CareTeam") == {
            "unchanged": 100,
            "create": len(assigned_patients(outcome)) - 100,
        }
        assert end_state(direct) == clean
        targets = provenance_targets(direct)
        for team in landed.values():
            assert targets[f"CareTeam/{team['id']}/_history/1"] == 1, team["id"]
        # Given the same set again (a caller that did not save the new one): nothing twice.
        again = write(outcome, client, tables, unconfirmed=interrupted.unconfirmed)
        assert again.provenance_recovered == 0 and again.write_requests == 0
    assert provenance_targets(direct) == targets


# --------------------------------------------------------------------------- atomic transactions


def re_reads(proxy: MedplumLike, rtype: str) -> int:
    """Searches of a type after the first transaction (the phase's own reads come before)."""
    arrivals = proxy.arrivals_for()
    first = next(
        n
        for n, a in enumerate(arrivals)
        if a.method == "POST" and a.path.split("?")[0].rstrip("/") == proxy.base_path
    )
    return sum(
        1
        for a in arrivals[first:]
        if a.method == "GET" and a.path.split("?")[0].endswith(f"/{rtype}")
    )


def test_an_atomic_conflict_costs_one_re_read_and_one_resend(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    """A project with transactions turned on: all or nothing. A clinician edits one of three
    teams between fhirpanel's read and its write: the transaction fails whole (412, Medplum's
    "Precondition Failed", no entry named). One search re-reads the three, the change is
    re-applied on the edited one, and the three go again as one transaction."""
    with MedplumLike(loaded.base_url, atomic=True) as proxy, through(proxy) as client:
        write(outcome, client, tables)
        assert end_state(direct) == clean
        teams = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))
        suspend(loaded, teams[:3])

        def clinician_edits(bundle: dict[str, Any]) -> None:
            current = direct.read("CareTeam", teams[1]["id"])
            loaded.ctx.store.update({**current, "status": "inactive"}, origin="internal")

        proxy.reset_counts()
        proxy.before_transaction = clinician_edits
        summary = write(outcome, client, tables)
        searched = re_reads(proxy, "CareTeam")
    assert [(t.entries, t.status) for t in proxy.transactions] == [(3, 412), (3, 200)]
    assert [a.method for a in proxy.writes()] == ["POST", "POST", "POST"]  # + its Provenance
    assert searched == 1  # the one re-read
    assert counts(summary, "CareTeam") == {"update": 3, "unchanged": len(teams) - 3}
    assert summary.conflicts_resolved == 1 and summary.provenance == 1
    assert summary.batch_size == 100 and summary.failed_subjects == set()
    assert end_state(direct) == clean


def test_an_atomic_conflict_again_after_the_re_read_goes_one_by_one(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    """The resend conflicts too (another edit in between): its entries go one by one, and only
    the edited one is re-read again."""
    with MedplumLike(loaded.base_url, atomic=True) as proxy, through(proxy) as client:
        write(outcome, client, tables)
        teams = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))
        suspend(loaded, teams[:3])

        def edit(n: int) -> Any:
            def hook(bundle: dict[str, Any]) -> None:
                current = direct.read("CareTeam", teams[n]["id"])
                loaded.ctx.store.update({**current, "status": "inactive"}, origin="internal")
                if n == 1:
                    proxy.before_transaction = edit(2)

            return hook

        proxy.reset_counts()
        proxy.before_transaction = edit(1)
        summary = write(outcome, client, tables)
        searched = re_reads(proxy, "CareTeam")
    assert [(t.entries, t.status) for t in proxy.transactions] == [(3, 412), (3, 412)]
    assert [a.method for a in proxy.writes()] == [
        "POST",
        "POST",
        "PUT",
        "PUT",
        "PUT",
        "PUT",
        "POST",
    ]
    assert searched == 2  # the batch's re-read, then team 2's alone
    assert counts(summary, "CareTeam") == {"update": 3, "unchanged": len(teams) - 3}
    assert summary.conflicts_resolved == 2 and summary.failed_subjects == set()
    assert end_state(direct) == clean


def test_conflicting_entries_of_a_transaction_response_are_re_read_together(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    """Medplum's default (a transaction run as a batch): two entries answered 412 are re-read
    in one search and sent again in one transaction."""
    with MedplumLike(loaded.base_url, **NO_LIMITS) as proxy, through(proxy) as client:
        write(outcome, client, tables)
        teams = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))
        suspend(loaded, teams[:4])
        proxy.reset_counts()
        proxy.script_transaction(TransactionScript(entries={0: 412, 2: 412}))
        summary = write(outcome, client, tables)
        searched = re_reads(proxy, "CareTeam")
    assert [(t.entries, t.status) for t in proxy.transactions] == [(4, 200), (2, 200)]
    assert [a.method for a in proxy.writes()] == ["POST", "POST", "POST"]
    assert searched == 1
    assert counts(summary, "CareTeam") == {"update": 4, "unchanged": len(teams) - 4}
    assert summary.conflicts_resolved == 2 and summary.provenance == 1
    assert end_state(direct) == clean


def test_a_single_update_whose_answer_is_lost_and_retried_gets_its_provenance(
    loaded: SandboxServer,
    direct: FhirClient,
    outcome: RunOutcome,
    tables: WritebackTables,
    clean: dict[str, Any],
) -> None:
    """One request per resource: a PUT is sent again after its answer was cut off; the retry
    meets its own landed write (412 on the old version). Re-read, found as built: no second
    write, and the Provenance the lost answer would have brought."""
    caps = dataclasses.replace(direct.capabilities(), system_interactions=frozenset())
    with MedplumLike(loaded.base_url) as proxy, through(proxy) as client:
        write(outcome, client, tables, capabilities=caps)
        [team] = in_write_order(outcome, by_identifier(ours(direct, "CareTeam")))[:1]
        suspend(loaded, [team])
        proxy.reset_counts()
        proxy.script_writes(RESET_MID_BODY)
        summary = write(outcome, client, tables, capabilities=caps)
    assert [a.method for a in proxy.writes()] == ["PUT", "PUT", "POST"]
    assert summary.written == 0 and summary.provenance_recovered == 1
    assert summary.unconfirmed == set()
    assert counts(summary, "CareTeam") == {"unchanged": len(assigned_patients(outcome))}
    version = direct.read("CareTeam", team["id"])["meta"]["versionId"]
    assert provenance_targets(direct)[f"CareTeam/{team['id']}/_history/{version}"] == 1
    assert end_state(direct) == clean


# --------------------------------------------------------------------------- the guard


class Held(Exception):
    pass


def test_the_guard_sees_the_planned_care_teams_before_anything_is_sent(
    loaded: SandboxServer, direct: FhirClient, outcome: RunOutcome, tables: WritebackTables
) -> None:
    """`write_back(guard=...)` (the brake of `run --write`): the figures of the CareTeams as
    planned; raising stops the write-back with nothing sent."""
    seen: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def record(ended: tuple[int, int], changed: tuple[int, int]) -> None:
        seen.append((ended, changed))

    write(outcome, direct, tables, guard=record)
    assert seen == [((0, 0), (0, 0))]  # nothing on the server yet
    teams = len(ours(direct, "CareTeam"))
    # Three years on, the visits have left the look-back window: most teams would end.
    later = analyse(direct, outcome.as_of.replace(year=outcome.as_of.year + 3))
    still = assigned_patients(later)
    leaving = sum(
        1
        for t in by_identifier(ours(direct, "CareTeam")).values()
        if t["subject"]["reference"] not in still
    )
    assert leaving > teams // 2

    def hold(ended: tuple[int, int], changed: tuple[int, int]) -> None:
        seen.append((ended, changed))
        raise Held

    before = end_state(direct)
    posts = direct.stats.by_method.get("POST", 0) + direct.stats.by_method.get("PUT", 0)
    with pytest.raises(Held):
        write(later, direct, tables, guard=hold)
    ended, changed = seen[-1]
    assert ended[1] == changed[1] == teams
    assert ended[0] >= leaving and changed[0] >= leaving
    assert direct.stats.by_method.get("POST", 0) + direct.stats.by_method.get("PUT", 0) == posts
    assert end_state(direct) == before
