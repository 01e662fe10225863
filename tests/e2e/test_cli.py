"""The CLI as a user runs it: `fhirpanel run`, `generate`, `demo`, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fhirpanel.sandbox.server import free_port
from tests.conftest import AS_OF, POPULATION_DIR, ROOT


def fhirpanel(
    *args: str, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_run_on_ndjson_writes_the_report_and_a_summary(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    out = fhirpanel(
        "run", "--source", f"ndjson:{POPULATION_DIR}", "--as-of", AS_OF, "--report", str(report)
    )
    assert out.returncode == 0, out.stderr
    assert "Panels" in out.stdout and "assigned" in out.stdout
    data = json.loads(report.read_text())
    assert {"as_of", "patients", "panels", "issues"} <= set(data)
    assert data["as_of"] == AS_OF
    statuses = {p["status"] for p in data["patients"]}
    assert statuses == {"assigned", "unassigned", "excluded"}
    assigned = [p for p in data["patients"] if p["status"] == "assigned"]
    for entry in assigned:
        assert entry["practitioner"].startswith("Practitioner/")
        assert entry["rule"] in {
            "single-provider",
            "plurality",
            "sentinel-exam",
            "last-visit",
            "declared-pcp",
            "manual",
        }
        assert entry["visits"] and entry["evidence"]
        assert {"charlson", "hcc", "tier", "ccm_eligible"} <= set(entry["risk"])
    excluded = [p for p in data["patients"] if p["status"] == "excluded"]
    assert {p["reason"] for p in excluded} <= {"inactive", "deceased", "merged"}
    assert data["issues"], "the committed population carries deliberate malformed records"
    assert all(set(i) == {"resource", "problem", "action"} for i in data["issues"])


def test_generate_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = fhirpanel(
            "generate", "--patients", "40", "--seed", "3", "--out", str(out), "--as-of", AS_OF
        )
        assert res.returncode == 0, res.stderr
    for name in ("Patient.ndjson", "Encounter.ndjson", "Condition.ndjson"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--source", "ftp://nowhere"], 2, "unknown source"),
        (["run", "--source", "ndjson:/nonexistent/dir"], 2, "not found"),
        (["run", "--source", "ndjson:.", "--config", "/nonexistent.toml"], 2, "not found"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    out = fhirpanel(*args)
    assert out.returncode == code
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_server_is_a_source_error() -> None:
    port = free_port()  # nothing listens there
    env_args = ["run", "--source", f"http://127.0.0.1:{port}/fhir", "--as-of", AS_OF]
    out = subprocess.run(
        [sys.executable, "-m", "fhirpanel", *env_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "FHIRPANEL_FHIR_MAX_RETRIES": "1",
            "FHIRPANEL_FHIR_BACKOFF_FACTOR": "0.01",
        },
    )
    assert out.returncode == 10, out.stderr
    assert "error:" in out.stderr and "Traceback" not in out.stderr


def test_demo_runs_the_main_job_on_the_sandbox(tmp_path: Path) -> None:
    out = fhirpanel("demo", "--no-serve", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Sandbox FHIR base: http://127.0.0.1:" in out.stdout
    assert "Panels" in out.stdout
    report = json.loads((tmp_path / "var" / "demo" / "report.json").read_text())
    assert report["summary"]["assigned"] > 0


def test_log_level_is_one_setting_from_the_environment_or_the_file(tmp_path: Path) -> None:
    args = ("run", "--source", f"ndjson:{POPULATION_DIR}", "--as-of", AS_OF, "--quiet")
    quiet = fhirpanel(*args)
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr  # a command: warnings only
    config = tmp_path / "fhirpanel.toml"
    config.write_text('log_level = "INFO"\n')
    from_file = fhirpanel(*args, "--config", str(config))
    assert from_file.returncode == 0 and " INFO fhirpanel.run: read " in from_file.stderr
    env = {**os.environ, "FHIRPANEL_LOG_LEVEL": "WARNING"}  # the environment wins
    out = subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args, "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0 and " INFO " not in out.stderr


def test_smart_jwks_prints_the_public_key_only(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "smart.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        **os.environ,
        "FHIRPANEL_FHIR_SMART_KEY_FILE": str(key),
        "FHIRPANEL_FHIR_SMART_ALGORITHM": "ES384",
    }
    out = subprocess.run(
        [sys.executable, "-m", "fhirpanel", "smart-jwks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (jwk,) = json.loads(out.stdout)["keys"]
    assert jwk["kty"] == "EC" and jwk["alg"] == "ES384" and "d" not in jwk
    missing = subprocess.run(
        [sys.executable, "-m", "fhirpanel", "smart-jwks"],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "FHIRPANEL_FHIR_SMART_KEY_FILE"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: SMART: no private key")


def test_exit_codes_are_mapped_in_one_place() -> None:
    from fhirpanel.cli import exit_code_for, exit_code_for_run
    from fhirpanel.errors import BusyError, ChangeHeld, ConfigError, ExitCode
    from fhirpanel.store import StoreError
    from fhirpanel.vocabulary import RunStatus

    assert exit_code_for(StoreError("no database")) == ExitCode.STORE == 17
    assert exit_code_for(ConfigError("x")) == ExitCode.USAGE
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert exit_code_for(ValueError("a bug")) == ExitCode.FAILURE
    assert exit_code_for_run(RunStatus.SUCCEEDED) == ExitCode.OK
    assert exit_code_for_run(RunStatus.PARTIAL) == ExitCode.WRITEBACK
    assert exit_code_for_run(RunStatus.SKIPPED, BusyError("x")) == ExitCode.BUSY
    assert exit_code_for_run(RunStatus.HELD, ChangeHeld("x", {})) == ExitCode.HELD
    assert exit_code_for_run(RunStatus.FAILED, StoreError("x")) == ExitCode.STORE
    assert exit_code_for_run(RunStatus.ABANDONED) == ExitCode.FAILURE


def test_strict_ehr_sandbox_refuses_population_searches_and_serves_a_roster(
    tmp_path: Path,
) -> None:
    """`fhirpanel sandbox --strict-ehr` as a process: population searches get 403, its roster
    Group is served, `run --roster` reads through it with zero population searches."""
    import requests

    port = free_port()
    command = ["sandbox", "--strict-ehr", "--port", str(port), "--db", ":memory:"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fhirpanel", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == f"sandbox FHIR base: {base}"
        assert "roster Group/sandbox-roster" in proc.stdout.readline()
        for _ in range(300):  # the server is up once /metadata answers (bounded: 30 s)
            try:
                if requests.get(f"{base}/metadata", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        refused = requests.get(f"{base}/Encounter", timeout=10)
        assert refused.status_code == 403
        assert refused.json()["issue"][0]["code"] == "forbidden"
        assert "add patient=" in refused.json()["issue"][0]["diagnostics"]
        group = requests.get(f"{base}/Group/sandbox-roster", timeout=10).json()
        assert len(group["member"]) == 300
        report = tmp_path / "report.json"
        out = fhirpanel(
            "run",
            "--source",
            base,
            "--roster",
            "Group/sandbox-roster",
            "--as-of",
            AS_OF,
            "--report",
            str(report),
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(report.read_text())["summary"]["patients"] == 300
        stats = requests.get(f"{base}/$stats", timeout=10).json()
        assert stats["population_searches"] == 1 and stats["refused"] == 1  # our Encounter?
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
