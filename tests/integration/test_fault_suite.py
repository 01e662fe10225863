"""The data-safety fault suite (issue 12): each scenario an adversarial tester found, run as a
user runs fhirpanel (the CLI in a subprocess) against the real sandbox behind a fault-injecting
proxy on loopback. Each asserts the exit code, one line on stderr, the run's status, the store
(patients, confirmations, watermark, ledger) unchanged, and the server's managed resources
unchanged or equal to what a clean run produces."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.conftest import AS_OF
from tests.integration.faults import (
    DROP_NEXT,
    EMPTY_PAGE,
    ENTRY_STRING,
    ENTRY_STRINGS,
    FaultProxy,
    Stall,
    next_link_on,
)
from tests.integration.snapshots import ledger_rows, managed_snapshot

FAST_ENV = {
    "FHIRPANEL_FHIR_MAX_RETRIES": "1",
    "FHIRPANEL_FHIR_BACKOFF_FACTOR": "0.01",
    "FHIRPANEL_FHIR_BACKOFF_MAX": "0.05",
    "FHIRPANEL_FHIR_RETRY_BUDGET_SECONDS": "3",
    "FHIRPANEL_FHIR_PAGE_SIZE": "50",
    "FHIRPANEL_SCHEDULER_AS_OF": AS_OF,
}


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")}
    full_env.update(FAST_ENV)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


class World:
    """A sandbox loaded with the committed population, a proxy in front, a store that has had
    one clean full refresh with write-back, and a confirmation in it."""

    def __init__(self, server: SandboxServer, proxy: FaultProxy, db: str) -> None:
        self.server, self.proxy, self.db = server, proxy, db
        self.store = Store(db)

    def refresh(
        self, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return cli(
            "refresh", "--database", self.db, "--source", self.proxy.base_url, *extra, env=env
        )

    def run_write(
        self, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return cli(
            "run",
            "--source",
            self.proxy.base_url,
            "--as-of",
            AS_OF,
            "--write",
            "--quiet",
            "--database",
            self.db,
            *extra,
            env=env,
        )

    def state(self) -> dict[str, Any]:
        patients = sorted(self.store.assignment_states().items())
        return {
            "patients": patients,
            "confirmations": {p: self.store.confirmations(p) for p, _ in patients[:40]},
            "watermark": self.store.watermark(self.proxy.base_url),
            "ledger": ledger_rows(self.store),
        }


@pytest.fixture
def world(sandbox: SandboxServer, population_dir: Path, tmp_path: Path) -> Iterator[World]:
    sandbox.load_ndjson_dir(population_dir)
    with FaultProxy(sandbox.base_url) as proxy:
        w = World(sandbox, proxy, f"sqlite:///{tmp_path / 'state.db'}")
        first = w.refresh("--full")
        assert first.returncode == 0, first.stderr
        assigned = [(p, s) for p, s in w.store.assignment_states().items() if s[0] == "assigned"]
        for patient, (_, practitioner) in assigned[:3]:
            assert practitioner is not None
            w.store.confirm(patient, practitioner, confirmed_by="clinician", actor="test")
        yield w
        w.store.close()


def assert_nothing_changed(
    world: World, before: dict[str, Any], server_before: dict[str, Any]
) -> None:
    assert world.state() == before
    assert managed_snapshot(world.server.base_url) == server_before


def last_run(world: World) -> dict[str, Any]:
    runs = world.store.runs(limit=1)
    assert runs
    return runs[0]


# ---------------------------------------------------------------- short reads


def test_an_empty_patient_page_fails_the_full_refresh_and_changes_nothing(world: World) -> None:
    before, server_before = world.state(), managed_snapshot(world.server.base_url)
    world.proxy.on_path("/Patient", "_offset=100", fault=EMPTY_PAGE)
    result = world.refresh("--full")
    assert result.returncode == 10, result.stderr
    line = one_error_line(result)
    assert "Patient" in line and "total" in line
    assert last_run(world)["status"] == "failed"
    assert_nothing_changed(world, before, server_before)


def test_an_empty_encounter_page_stops_run_write_before_any_write(world: World) -> None:
    before, server_before = world.state(), managed_snapshot(world.server.base_url)
    world.proxy.script()  # count requests from here
    world.proxy.on_path("/Encounter", "_offset=", fault=EMPTY_PAGE)
    result = world.run_write()
    assert result.returncode == 10, result.stderr
    assert "Encounter" in one_error_line(result)
    writes = world.proxy.arrivals_for(lambda a: a.method in ("POST", "PUT", "DELETE"))
    assert writes == []
    assert last_run(world)["status"] == "failed"
    assert_nothing_changed(world, before, server_before)


def test_a_next_chain_that_ends_early_fails_the_read(world: World) -> None:
    before, server_before = world.state(), managed_snapshot(world.server.base_url)
    world.proxy.on_path("/Encounter", "_offset=", fault=DROP_NEXT)
    result = world.refresh("--full")
    assert result.returncode == 10, result.stderr
    assert "Encounter" in one_error_line(result)
    assert_nothing_changed(world, before, server_before)


@pytest.mark.parametrize("fault", [ENTRY_STRING, ENTRY_STRINGS], ids=["string", "strings"])
def test_a_bundle_whose_entry_is_not_a_list_of_objects_is_a_source_error(
    world: World, fault: Any
) -> None:
    before, server_before = world.state(), managed_snapshot(world.server.base_url)
    world.proxy.on_path("/Patient?", "_count=", fault=fault)
    result = world.refresh("--full")
    assert result.returncode == 10, result.stderr
    one_error_line(result)
    assert_nothing_changed(world, before, server_before)


# ---------------------------------------------------------------- NDJSON folders


def test_ndjson_file_names_in_any_case_are_read(
    world: World, population_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "lower"
    folder.mkdir()
    for path in population_dir.glob("*.ndjson"):
        target = folder / path.name.lower()
        if path.stem == "Encounter":
            with gzip.open(folder / "encounter.ndjson.gz", "wb") as out:
                out.write(path.read_bytes())
        else:
            shutil.copy(path, target)
    before = world.state()
    result = cli(
        "refresh", "--full", "--no-write", "--database", world.db, "--source", f"ndjson:{folder}"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(world.store.assignment_states().items()) == before["patients"]
    assert {p: world.store.confirmations(p) for p, _ in before["patients"][:40]} == before[
        "confirmations"
    ]


def test_an_ndjson_folder_without_encounters_is_refused(
    world: World, population_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(population_dir, folder, ignore=shutil.ignore_patterns("bundles", "Encounter*"))
    before = world.state()
    result = cli(
        "refresh", "--full", "--no-write", "--database", world.db, "--source", f"ndjson:{folder}"
    )
    assert result.returncode == 10, result.stderr
    assert "Encounter" in one_error_line(result)
    assert world.state() == before


def test_a_truncated_gzip_file_is_a_source_error(
    world: World, population_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "cut"
    shutil.copytree(population_dir, folder, ignore=shutil.ignore_patterns("bundles"))
    packed = gzip.compress((folder / "Encounter.ndjson").read_bytes())
    (folder / "Encounter.ndjson").unlink()
    (folder / "Encounter.ndjson.gz").write_bytes(packed[: len(packed) // 2])
    before = world.state()
    result = cli(
        "refresh", "--full", "--no-write", "--database", world.db, "--source", f"ndjson:{folder}"
    )
    assert result.returncode == 10, result.stderr
    assert "Encounter.ndjson.gz" in one_error_line(result)
    assert world.state() == before


# ---------------------------------------------------------------- links


def test_foreign_next_links_are_refused_unless_a_setting_allows_them(world: World) -> None:
    before, server_before = world.state(), managed_snapshot(world.server.base_url)
    world.proxy.on_path("/Encounter", fault=next_link_on("http://localhost:8080"), times=100)
    refused = world.refresh("--full")
    assert refused.returncode == 10, refused.stderr
    assert "rewrite_foreign_links" in one_error_line(refused)
    assert_nothing_changed(world, before, server_before)
    world.proxy.on_path("/Encounter", fault=next_link_on("http://localhost:8080"), times=100)
    allowed = world.refresh("--full", env={"FHIRPANEL_FHIR_REWRITE_FOREIGN_LINKS": "true"})
    assert allowed.returncode == 0, allowed.stderr
    assert sorted(world.store.assignment_states().items()) == before["patients"]


# ---------------------------------------------------------------- one writer, dead holders


def test_three_run_writes_at_once_leave_no_duplicates(
    sandbox: SandboxServer, population_dir: Path, tmp_path: Path
) -> None:
    sandbox.load_ndjson_dir(population_dir)
    db = f"sqlite:///{tmp_path / 'state.db'}"
    env = {
        **FAST_ENV,
        "FHIRPANEL_WRITEBACK_USE_CONDITIONAL_UPDATE": "false",
        "FHIRPANEL_WRITEBACK_USE_TRANSACTIONS": "false",
    }
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")} | env
    procs = [
        subprocess.Popen(  # the same command three times, at once
            [
                sys.executable,
                "-m",
                "fhirpanel",
                "run",
                "--source",
                sandbox.base_url,
                "--as-of",
                AS_OF,
                "--write",
                "--quiet",
                "--database",
                db,
            ],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert set(codes) <= {0, 14}, [p.stderr.read() if p.stderr else "" for p in procs]
    assert 0 in codes
    snapshot = managed_snapshot(sandbox.base_url)  # raises on a duplicate identifier
    assert sum(1 for key in snapshot if key.startswith("CareTeam|")) > 200


def test_a_killed_refresh_does_not_block_the_next_one(world: World) -> None:
    world.proxy.on_path("/Encounter", "_offset=", fault=Stall(60))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")}
    full_env.update({**FAST_ENV, "FHIRPANEL_FHIR_READ_TIMEOUT": "120"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhirpanel",
            "refresh",
            "--full",
            "--database",
            world.db,
            "--source",
            world.proxy.base_url,
        ],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not world.proxy.arrivals_for(lambda a: a.fault.startswith("stall")):
            assert time.monotonic() < deadline, "the refresh never reached the stalled page"
            time.sleep(0.1)
        stuck = last_run(world)
        assert stuck["status"] == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    started = time.monotonic()
    after = world.refresh("--full")
    assert after.returncode == 0, after.stderr
    assert time.monotonic() - started < 60  # not the 15-minute stale timeout
    crashed = world.store.run(stuck["id"])
    assert crashed is not None and crashed["status"] == "crashed"


# ---------------------------------------------------------------- the brake


def test_a_refresh_that_would_remove_a_third_of_the_patients_is_held(
    world: World, population_dir: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    shutil.copytree(population_dir, full, ignore=shutil.ignore_patterns("bundles"))
    first = cli(
        "refresh", "--full", "--no-write", "--database", world.db, "--source", f"ndjson:{full}"
    )
    assert first.returncode == 0, first.stderr
    before = world.state()
    lines = (full / "Patient.ndjson").read_bytes().splitlines(keepends=True)
    (full / "Patient.ndjson").write_bytes(b"".join(lines[:200]))
    held = cli(
        "refresh", "--full", "--no-write", "--database", world.db, "--source", f"ndjson:{full}"
    )
    assert held.returncode == 16, held.stderr
    line = one_error_line(held)
    assert "stored patients" in line and "--accept-change" in line
    run = last_run(world)
    assert run["status"] == "held"
    assert run["counts"]["held"]["removed_patients"]["count"] >= 90
    assert world.state() == before
    listed = cli("runs", "--database", world.db)
    assert "held" in listed.stdout
    accepted = cli(
        "refresh",
        "--full",
        "--no-write",
        "--accept-change",
        "--database",
        world.db,
        "--source",
        f"ndjson:{full}",
    )
    assert accepted.returncode == 0, accepted.stderr
    assert len(world.store.assignment_states()) < len(before["patients"]) - 90


def test_a_run_write_that_would_end_most_pcp_participations_is_held(world: World) -> None:
    before, server_before = world.state(), managed_snapshot(world.server.base_url)
    world.proxy.script()
    # Three years on, every visit is outside the look-back window: everyone would lose the PCP.
    late = cli(
        "run",
        "--source",
        world.proxy.base_url,
        "--as-of",
        "2029-11-22",
        "--write",
        "--quiet",
        "--database",
        world.db,
    )
    assert late.returncode == 16, late.stderr
    line = one_error_line(late)
    assert "active PCP participations" in line
    assert world.proxy.arrivals_for(lambda a: a.method in ("POST", "PUT", "DELETE")) == []
    run = last_run(world)
    assert run["kind"] == "run" and run["status"] == "held"
    assert run["counts"]["held"]["ended_participations"]["count"] > 200
    assert_nothing_changed(world, before, server_before)
