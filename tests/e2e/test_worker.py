"""`fhirpanel worker` as a user runs it: a separate process against the sandbox FHIR server.
It does a full refresh at start; a new encounter that should move a patient then changes the
CareTeam within a bounded wait, through the rest-hook Subscription, or through polling when
Subscriptions are off. SIGTERM stops it cleanly (exit 0, Subscription removed, lock free)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fhirpanel.config import FhirSettings, Settings
from fhirpanel.fhir.client import FhirClient
from fhirpanel.jobs.refresh import request_run
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.conftest import AS_OF, ROOT
from tests.integration.test_refresh import add_visits, pick_moves, team_practitioner

WAIT = 90.0  # seconds: a bound, not a speed target


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def loaded(sandbox: SandboxServer, population_dir: Path) -> SandboxServer:
    sandbox.load_ndjson_dir(population_dir)
    return sandbox


def start_worker(base_url: str, db: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "FHIRPANEL_FHIR_BASE_URL": base_url,
        "FHIRPANEL_DATABASE_URL": f"sqlite:///{db}",
        "FHIRPANEL_LOG_LEVEL": "INFO",
        "FHIRPANEL_SCHEDULER_AS_OF": AS_OF,  # the committed population's date, not today
        **env,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fhirpanel", "worker"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def full_run_done(store: Store) -> bool:
    run = store.last_run(kind="full")
    return run is not None and run["status"] == "succeeded"


def subscriptions(base_url: str) -> list[dict[str, object]]:
    with FhirClient(FhirSettings(base_url=base_url)) as client:
        return list(client.search("Subscription", [("_count", "100")]))


@pytest.mark.parametrize("mode", ["subscription", "polling"])
def test_worker_moves_a_patient_after_a_new_encounter(
    mode: str,
    loaded: SandboxServer,
    tmp_path: Path,
    output_dir: Path,
    stop_later: list[subprocess.Popen[bytes]],
) -> None:
    db = tmp_path / "state.db"
    log = output_dir / f"worker-{mode}.log"
    env = (
        {"FHIRPANEL_SCHEDULER_INCREMENTAL_MINUTES": "60"}
        if mode == "subscription"
        else {
            "FHIRPANEL_SCHEDULER_SUBSCRIPTIONS": "false",
            "FHIRPANEL_SCHEDULER_INCREMENTAL_MINUTES": "0.05",
        }
    )  # every 3 s
    proc = start_worker(loaded.base_url, db, log, **env)
    stop_later.append(proc)
    store = Store(f"sqlite:///{db}")
    wait_for(lambda: full_run_done(store), "the worker's first full refresh")
    if mode == "subscription":
        wait_for(
            lambda: any(s.get("status") == "active" for s in subscriptions(loaded.base_url)),
            "an active Subscription",
        )

    moves = pick_moves(store, 1)
    patient, target = next(iter(moves.items()))
    add_visits(loaded.base_url, moves, store)
    wait_for(
        lambda: team_practitioner(loaded.base_url, patient) == target,
        f"the CareTeam of {patient} to name {target}",
    )
    # The CareTeam is written before the pass commits to the store: wait for the store too.
    wait_for(
        lambda: (store.patient_state(patient) or {}).get("practitioner") == target,
        f"the store to assign {patient} to {target}",
    )
    wanted = "subscription" if mode == "subscription" else "schedule"
    wait_for(
        lambda: (
            wanted
            in {
                r["trigger"]
                for r in store.runs()
                if r["kind"] == "incremental"
                and r["status"] == "succeeded"
                and (r["counts"] or {}).get("patients")
            }
        ),
        f"a succeeded incremental run triggered by {wanted}",
    )

    if mode == "polling":
        # A run asked for through the API while the worker lives is queued and the worker runs
        # it (the web process does no refresh work itself).
        settings = Settings.load(env={"FHIRPANEL_SCHEDULER_AS_OF": AS_OF}).with_fhir(
            base_url=loaded.base_url
        )
        run_id = request_run(settings, store, "full", "api")
        assert run_id is not None
        wait_for(
            lambda: (store.run(run_id) or {}).get("status") == "succeeded",
            "the worker to run the queued full refresh",
        )

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert store.lock_info() is None
    assert not any(r["status"] == "running" for r in store.runs())
    if mode == "subscription":
        assert subscriptions(loaded.base_url) == []
    store.close()
