"""Write-back against Medplum's own FHIR router with transactions turned on (atomic, at most 50
updates, at most 8 entries when one is conditional: tests/interop/medplum/README.md), holding the
committed population (`load_bundles`). Counted from what fhirpanel's client sent and got back:

- a first run: one refused transaction, then 8 entries per transaction for the conditional
  creates (Medplum's refusal text is read, no halving), 50 for updates by id;
- a run started from the learned sizes (`write_back(batch_sizes=...)`) refuses nothing;
- a concurrent edit fails an atomic transaction whole (412, no entry named): one re-read and one
  resend, not an entry-by-entry resend;
- the server's managed resources equal those of a clean run on the sandbox server.

The session's `medplum_atomic` fixture is shared by every interop module, so these tests start
their own servers: a clean one for the first run, another for a first run from learned sizes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import requests

from fhirpanel.checkserver import check_server
from fhirpanel.config import FhirSettings, Settings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.fhir.client import FhirClient
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.tables import Tables
from fhirpanel.writeback import WritebackTables, WriteSummary
from tests.integration.medplum_like import TOO_MANY_UPDATES
from tests.integration.snapshots import managed_snapshot
from tests.integration.test_writeback import analyse, write
from tests.interop.servers import MedplumServer, load_bundles, medplum_available

ROOT = Path(__file__).resolve().parents[2]
POPULATION = ROOT / "sandbox_fixtures" / "population"
TAG = "urn:fhirpanel:tag|managed"


def say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[medplum write-back] {text}")


def fresh_atomic() -> MedplumServer:
    """A new Medplum server (transactions on) holding the committed population. Skips when it
    cannot run here; with CI set, fails instead (as tests/interop/conftest.py does)."""
    reason = medplum_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Medplum server cannot run: {reason}")
        pytest.skip(f"the Medplum server cannot run: {reason}")
    server = MedplumServer(atomic_transactions=True).start()
    try:
        load_bundles(server.base_url, POPULATION)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class Sent:
    method: str
    path: str  # relative to the FHIR base, no query
    query: str
    status: int
    entries: int = 0  # a Bundle posted to the base
    conditional: int = 0  # of which conditional (ifNoneExist, or a PUT/DELETE with a search)


@dataclass
class Recorder:
    """Every HTTP exchange of a client with the server, as the client saw it."""

    base_path: str
    sent: list[Sent] = field(default_factory=list)

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        url = urlsplit(request.url or "")
        path = url.path.removeprefix(self.base_path).strip("/")
        entries = conditional = 0
        if request.method == "POST" and not path and request.body:
            bundle = orjson.loads(request.body)
            for entry in bundle.get("entry") or ():
                entries += 1
                req = entry.get("request") or {}
                conditional += bool(req.get("ifNoneExist")) or (
                    req.get("method") in ("PUT", "DELETE") and "?" in req.get("url", "")
                )
        self.sent.append(
            Sent(str(request.method), path, url.query, response.status_code, entries, conditional)
        )

    def clear(self) -> None:
        self.sent = []

    @property
    def transactions(self) -> list[Sent]:
        return [s for s in self.sent if s.method == "POST" and not s.path]

    @property
    def refused(self) -> list[Sent]:
        return [s for s in self.transactions if s.status >= 400]

    def searches(self, rtype: str, after_first_transaction: bool = False) -> int:
        start = 0
        if after_first_transaction:
            start = next(n for n, s in enumerate(self.sent) if s.method == "POST" and not s.path)
        return sum(1 for s in self.sent[start:] if s.method == "GET" and s.path == rtype)


def recording(server: MedplumServer) -> tuple[FhirClient, Recorder]:
    client = FhirClient(FhirSettings(base_url=server.base_url, max_retries=0))
    recorder = Recorder(urlsplit(server.base_url).path.rstrip("/"))
    client.session.hooks["response"].append(recorder.hook)
    return client, recorder


def suspend(client: FhirClient, teams: list[dict[str, Any]]) -> None:
    """Someone suspends teams on the server (fhirpanel sets them active again)."""
    for team in teams:
        current = client.read("CareTeam", team["id"])
        client.update({**current, "status": "suspended"})


def our_teams(client: FhirClient) -> list[dict[str, Any]]:
    return sorted(client.search("CareTeam", [("_tag", TAG)]), key=lambda t: str(t["id"]))


def refusal_texts(summary: WriteSummary) -> str:
    return " ".join(i.problem for i in summary.issues if i.resource == "write-back")


@pytest.fixture(scope="module")
def tables(tables: Tables) -> WritebackTables:
    return tables.writeback


@pytest.fixture(scope="module")
def clean_snapshot(tables: WritebackTables) -> dict[str, dict[str, Any]]:
    """The managed resources of one clean run on the sandbox server (no limits)."""
    with SandboxServer() as sandbox, FhirClient(FhirSettings(base_url=sandbox.base_url)) as fhir:
        sandbox.load_ndjson_dir(POPULATION)
        write(analyse(fhir), fhir, tables)
        return managed_snapshot(sandbox.base_url)


@pytest.fixture(scope="module")
def atomic() -> Iterator[MedplumServer]:
    """This module's own Medplum (transactions on), clean but for the population."""
    server = fresh_atomic()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class FirstRun:
    outcome: RunOutcome
    summary: WriteSummary
    sent: list[Sent]


@pytest.fixture(scope="module")
def first_run(atomic: MedplumServer, tables: WritebackTables) -> FirstRun:
    client, recorder = recording(atomic)
    with client:
        outcome = analyse(client)
        recorder.clear()
        summary = write(outcome, client, tables)
    return FirstRun(outcome, summary, list(recorder.sent))


def test_first_run_settles_at_medplums_limits_after_one_refusal(
    atomic: MedplumServer,
    first_run: FirstRun,
    clean_snapshot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary, sent = first_run.summary, first_run.sent
    recorder = Recorder("", sent)
    [refused] = recorder.refused
    assert (refused.status, refused.entries) == (400, 100)
    accepted = [t for t in recorder.transactions if t.status == 200]
    # Creates are conditional updates (PUT Type?identifier=...): 8 per transaction from the
    # first refusal on, never mixed with updates by id.
    assert max(t.entries for t in accepted) == 8
    assert all(t.conditional == t.entries for t in accepted)
    assert summary.batch_sizes == {"conditional": 8, "plain": 50}
    assert TOO_MANY_UPDATES in refusal_texts(summary)
    assert summary.requests["total"] == len(sent)
    assert summary.counts.total("failed") == 0 and summary.unconfirmed == set()
    assert managed_snapshot(atomic.base_url) == clean_snapshot
    say(
        capsys,
        f"first run: {len(sent)} requests, {len(recorder.transactions)} transactions "
        f"({len(recorder.refused)} refused), {summary.written} written, "
        f"sizes {summary.batch_sizes}",
    )


def test_updates_from_the_learned_sizes_refuse_nothing(
    atomic: MedplumServer,
    first_run: FirstRun,
    tables: WritebackTables,
    clean_snapshot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, recorder = recording(atomic)
    with client:
        client.capabilities()  # read once per client: not counted in either run
        teams = our_teams(client)
        counts = {}
        for start in (None, first_run.summary.batch_sizes):
            suspend(client, teams)
            recorder.clear()
            summary = write(first_run.outcome, client, tables, batch_sizes=start)
            assert summary.counts.get("CareTeam", "update") == len(teams)
            assert not any(t.conditional for t in recorder.transactions)
            assert max(t.entries for t in recorder.transactions if t.status == 200) == 50
            counts[start is not None] = (len(recorder.sent), len(recorder.refused))
            assert summary.batch_sizes == {"conditional": 8, "plain": 50}
    # From the configured size: one refusal (updates > 50), then 50. From the learned sizes:
    # none, and one request fewer.
    assert counts[False][1] == 1 and counts[True][1] == 0
    assert counts[True][0] == counts[False][0] - 1
    assert managed_snapshot(atomic.base_url) == clean_snapshot
    say(
        capsys,
        f"{len(teams)} updates by id: {counts[False][0]} requests from the configured "
        f"size, {counts[True][0]} from the learned sizes",
    )


def test_an_atomic_conflict_costs_one_re_read_and_one_resend(
    atomic: MedplumServer,
    first_run: FirstRun,
    tables: WritebackTables,
    clean_snapshot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """30 teams to set active again; a clinician edits one of them between fhirpanel's read and
    its write: Medplum fails the whole transaction (412 "Precondition Failed", no entry named).
    One search re-reads the 30, the change is re-applied on the edited one, the 30 go again as
    one transaction."""
    sizes = first_run.summary.batch_sizes
    client, recorder = recording(atomic)
    with client, FhirClient(FhirSettings(base_url=atomic.base_url)) as clinician:
        client.capabilities()  # read once per client: not counted in either run
        teams = our_teams(client)[:30]
        suspend(client, teams)
        recorder.clear()
        calm = write(first_run.outcome, client, tables, batch_sizes=sizes)
        without_conflict = len(recorder.sent)
        assert calm.counts.get("CareTeam", "update") == 30 and calm.conflicts_resolved == 0

        suspend(client, teams)

        def clinician_edits(*_: Any) -> None:
            current = clinician.read("CareTeam", teams[7]["id"])
            clinician.update({**current, "status": "inactive"})

        recorder.clear()
        summary = write(first_run.outcome, client, tables, batch_sizes=sizes, guard=clinician_edits)
    care_team_tx = [(t.entries, t.status) for t in recorder.transactions if t.entries == 30]
    assert care_team_tx == [(30, 412), (30, 200)]
    assert recorder.searches("CareTeam", after_first_transaction=True) == 1
    assert [s.method for s in recorder.sent if s.method != "GET"] == ["POST", "POST", "POST"]
    assert len(recorder.sent) == without_conflict + 2
    assert summary.counts.get("CareTeam", "update") == 30
    assert summary.conflicts_resolved == 1 and summary.counts.total("failed") == 0
    assert summary.provenance == 1
    assert managed_snapshot(atomic.base_url) == clean_snapshot
    say(
        capsys,
        f"an atomic 412 among 30 updates: {len(recorder.sent)} requests "
        f"({without_conflict} without the conflict)",
    )


def test_a_first_run_from_the_learned_sizes_refuses_nothing(
    first_run: FirstRun,
    tables: WritebackTables,
    clean_snapshot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fresh_atomic()
    try:
        client, recorder = recording(server)
        with client:
            outcome = analyse(client)
            recorder.clear()
            summary = write(outcome, client, tables, batch_sizes=first_run.summary.batch_sizes)
        assert recorder.refused == []
        assert not refusal_texts(summary)
        assert summary.counts.as_dict() == first_run.summary.counts.as_dict()
        assert len(recorder.sent) == len(first_run.sent) - 1
        assert managed_snapshot(server.base_url) == clean_snapshot
    finally:
        server.stop()
    say(capsys, f"first run from the learned sizes: {len(recorder.sent)} requests, none refused")


def test_check_server_reports_read_entries_and_medplums_write_limits(atomic: MedplumServer) -> None:
    """The probe's 100 count-only searches are accepted, while a write transaction of 100 was
    refused above: the finding speaks of read entries and gives Medplum's write limits."""
    settings = Settings.load(env={}).with_fhir(max_retries=1, backoff_factor=0.01)
    check = check_server(atomic.base_url, settings)
    assert check.ok and check.transaction_size == 100
    [size] = [f for f in check.findings if f.name == "transaction size"]
    assert size.status == "partial"
    assert size.server.startswith("100 read entries accepted; write entries: Medplum's limits")
    assert "expect 8 entries for creates and 50 for updates" in size.fhirpanel
    assert check.as_dict()["transaction_write_limits"] == {"conditional": 8, "plain": 50}
