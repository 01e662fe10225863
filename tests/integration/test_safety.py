"""Safety of the refresh jobs and `run --write` against the real sandbox and a SQLite store: the
brake on sudden change holds a pass before it writes or stores anything, an operator's acceptance
lets exactly that change through, one writer at a time, and a lease whose holder died on this
host is taken over at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from fhirpanel.jobs.refresh import accept_held_run, full_refresh
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from fhirpanel.store.lease import Holder, new_holder, process_start
from tests.integration.test_refresh import AS_OF_DATE, settings_for


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'state.db'}")
    yield st
    st.close()


def shrunken_copy(population_dir: Path, target: Path, keep: int) -> Path:
    """The committed population with only the first `keep` patients' Patient lines (the others'
    encounters and conditions stay: the read looks exactly like one that lost patient pages)."""
    shutil.copytree(population_dir, target, ignore=shutil.ignore_patterns("bundles"))
    lines = (population_dir / "Patient.ndjson").read_bytes().splitlines(keepends=True)
    (target / "Patient.ndjson").write_bytes(b"".join(lines[:keep]))
    return target


def test_a_full_refresh_that_would_remove_a_third_of_the_patients_is_held(
    store: Store, population_dir: Path, tmp_path: Path
) -> None:
    full = f"ndjson:{population_dir}"
    first = full_refresh(settings_for(full), store, as_of=AS_OF_DATE, write=False)
    assert first.status == "succeeded", first.error
    before = store.assignment_states()
    confirmations = [store.confirmations(p) for p in sorted(before)[:5]]
    assert len(before) >= 290

    short = shrunken_copy(population_dir, tmp_path / "short", keep=200)
    source = f"ndjson:{short}"
    held = full_refresh(settings_for(source), store, as_of=AS_OF_DATE, write=False)
    assert held.status == "held"
    assert held.exception is not None and held.exception.exit_code == 16
    figures = held.counts["held"]["removed_patients"]
    assert figures["of"] == len(before) and figures["count"] >= 90
    assert "stored patients" in (held.error or "") and "\n" not in (held.error or "")
    run = store.run(held.run_id or 0)
    assert run is not None and run["status"] == "held"
    assert run["counts"]["held"]["removed_patients"]["count"] == figures["count"]
    # Nothing stored: the same patients, assignments and confirmations; no watermark moved.
    assert store.assignment_states() == before
    assert [store.confirmations(p) for p in sorted(before)[:5]] == confirmations
    assert store.watermark(source) is None
    assert [r["status"] for r in store.held_runs()] == ["held"]

    # The operator reads the figures and accepts: the same change goes through, once.
    accepted, next_run = accept_held_run(settings_for(source), store, held.run_id or 0, "ops")
    assert accepted["status"] == "accepted"
    assert accepted["counts"]["accepted"]["by"] == "ops"
    assert next_run is not None
    deadline = time.monotonic() + 120
    while (store.run(next_run) or {}).get("status") in ("running", "queued", None):
        assert time.monotonic() < deadline, "the accepted run did not finish"
        time.sleep(0.2)
    done = store.run(next_run)
    assert done is not None and done["status"] == "succeeded", done
    assert len(store.assignment_states()) == len(before) - figures["count"]
    assert store.held_runs() == []
    audit = [a for a in store.audit() if a["action"] == "accept-change"]
    assert audit and audit[0]["actor"] == "ops"

    # The acceptance was used up: a second large change is held again.
    again = full_refresh(settings_for(full), store, as_of=AS_OF_DATE, write=False)
    assert again.status == "succeeded"  # adding patients back removes nobody
    held_again = full_refresh(settings_for(source), store, as_of=AS_OF_DATE, write=False)
    assert held_again.status == "held"


def test_accept_change_lets_a_large_change_through(
    store: Store, population_dir: Path, tmp_path: Path
) -> None:
    full_refresh(settings_for(f"ndjson:{population_dir}"), store, as_of=AS_OF_DATE, write=False)
    short = f"ndjson:{shrunken_copy(population_dir, tmp_path / 'short', keep=150)}"
    result = full_refresh(
        settings_for(short), store, as_of=AS_OF_DATE, write=False, accept_change=True
    )
    assert result.status == "succeeded", result.error
    assert result.counts["change"]["removed_patients"]["count"] >= 140
    assert len(store.assignment_states()) <= 150


def test_a_lease_whose_process_died_on_this_host_is_taken_over_at_once(store: Store) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    me = Holder.parse(new_holder())
    assert me is not None
    dead = str(
        Holder(me.host, child.pid, process_start(child.pid) or "", me.boot, me.pidns, "dead")
    )
    assert store.try_lock(dead, stale_seconds=900)
    run_id = store.start_run("full", "cli", "http://x", "2026-11-22")
    assert not store.try_lock(new_holder(), stale_seconds=900)  # alive: refused
    child.kill()
    child.wait(timeout=10)
    taker = new_holder()
    assert store.try_lock(taker, stale_seconds=900)  # dead: taken at once, not in 15 minutes
    crashed = store.run(run_id)
    assert crashed is not None and crashed["status"] == "crashed"
    assert "process is gone" in (crashed["error"] or "")
    store.release_lock(taker)


def test_a_lease_on_another_host_waits_for_the_stale_timeout(store: Store) -> None:
    me = Holder.parse(new_holder())
    assert me is not None
    remote = str(Holder("another-host", 1, "1", me.boot, me.pidns, "far"))
    assert store.try_lock(remote, stale_seconds=900)
    run_id = store.start_run("full", "cli", "http://x", "2026-11-22")
    assert not store.try_lock(new_holder(), stale_seconds=900)
    assert store.run(run_id)["status"] == "running"  # type: ignore[index]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_run_write_waits_for_no_one_but_refuses_while_the_lock_is_held(
    sandbox: SandboxServer, population_dir: Path, tmp_path: Path
) -> None:
    sandbox.load_ndjson_dir(population_dir)
    db = f"sqlite:///{tmp_path / 'state.db'}"
    store = Store(db)
    holder = new_holder()  # this test process: alive
    assert store.try_lock(holder, stale_seconds=900)
    busy = cli(
        "run",
        "--source",
        sandbox.base_url,
        "--as-of",
        "2026-11-22",
        "--write",
        "--quiet",
        "--database",
        db,
    )
    assert busy.returncode == 14, busy.stderr
    assert busy.stderr.count("\n") == 1 and "another run holds the refresh lock" in busy.stderr
    assert sandbox_count(sandbox, "CareTeam") == 0
    store.release_lock(holder)

    done = cli(
        "run",
        "--source",
        sandbox.base_url,
        "--as-of",
        "2026-11-22",
        "--write",
        "--quiet",
        "--database",
        db,
    )
    assert done.returncode == 0, done.stderr
    runs = store.runs()
    assert runs[0]["kind"] == "run" and runs[0]["status"] == "succeeded"
    assert runs[0]["counts"]["written"] == sandbox_count(sandbox, "CareTeam") + sandbox_count(
        sandbox, "CarePlan"
    )
    assert runs[1]["status"] == "skipped"
    assert store.lock_info() is None
    store.close()


def sandbox_count(sandbox: SandboxServer, rtype: str) -> int:
    import requests

    body = requests.get(
        f"{sandbox.base_url}/{rtype}", params={"_summary": "count"}, timeout=10
    ).content
    return int(orjson.loads(body)["total"])


def test_the_transaction_sizes_a_refusal_taught_start_the_next_incremental_pass(
    sandbox: SandboxServer, population_dir: Path, store: Store
) -> None:
    from tests.integration.medplum_like import MedplumLike
    from tests.integration.test_refresh import add_visits, pick_moves

    sandbox.load_ndjson_dir(population_dir)
    with MedplumLike(sandbox.base_url) as proxy:  # Medplum's 50 updates / 8 strict entries
        settings = settings_for(proxy.base_url)
        full = full_refresh(settings, store, as_of=AS_OF_DATE, write=True)
        assert full.status == "succeeded", full.error
        assert full.writeback.batch_sizes == {"conditional": 8, "plain": 50}
        learned = [
            i
            for i in full.writeback.issues
            if "transaction" in i.problem.lower() and "refused" in i.problem.lower()
        ]
        assert len(learned) == 1, [i.problem for i in full.writeback.issues]  # said once
        from fhirpanel.jobs.steps import learned_batch_sizes

        assert learned_batch_sizes(store, proxy.base_url) == {"conditional": 8, "plain": 50}
        add_visits(sandbox.base_url, pick_moves(store, 12), store)
        from fhirpanel.jobs.refresh import incremental_refresh

        step = incremental_refresh(settings, store, as_of=AS_OF_DATE)
        assert step.status == "succeeded", step.error
        assert step.writeback.batch_sizes == {"conditional": 8, "plain": 50}
        refusals = [
            i
            for i in step.writeback.issues
            if "transaction" in i.problem.lower() and "refused" in i.problem.lower()
        ]
        assert refusals == []  # started from what the full refresh learned: nothing refused
