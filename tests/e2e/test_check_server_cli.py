"""`fhirpanel check-server URL` as a user runs it: a table and a verdict, or JSON; exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fhirpanel.sandbox.server import SandboxServer, free_port
from tests.conftest import HAPI_DIR, ROOT
from tests.integration.test_check_server import ReplayServer, without


def fhirpanel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "COLUMNS": "160", **env}
    return subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_server_on_the_sandbox(loaded_sandbox: SandboxServer) -> None:
    out = fhirpanel("check-server", loaded_sandbox.base_url)
    assert out.returncode == 0, out.stderr
    for text in (
        "FHIR 4.0.1 (R4)",
        "PractitionerRole",
        "Encounter?patient",
        "CareTeam",
        "transaction",
        "$export (system)",
        "rest-hook Subscription",
        "SMART configuration",
        "fhirpanel can work with this server",
    ):
        assert text in out.stdout, text
    assert out.stderr == ""


def test_check_server_json_read_only(loaded_sandbox: SandboxServer) -> None:
    out = fhirpanel("check-server", loaded_sandbox.base_url, "--json", "--read-only")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] and data["read_only"] and data["release"] == "R4"
    assert {f["area"] for f in data["findings"]} >= {
        "server",
        "read",
        "search",
        "write",
        "bulk",
        "subscriptions",
        "smart",
    }


def test_check_server_on_a_hapi_stu3_replay_exits_15() -> None:
    statement = json.loads((HAPI_DIR / "capabilitystatement-stu3-1.json").read_text())
    with ReplayServer(statement) as server:
        out = fhirpanel("check-server", server.base_url)
    assert out.returncode == 15, out.stderr
    assert "HAPI FHIR Server 2.5-SNAPSHOT" in out.stdout
    assert "cannot work with this server: missing server FHIR version" in out.stdout


def test_check_server_with_a_config_file_that_turns_on_risk_assessments(tmp_path: Path) -> None:
    statement = json.loads((HAPI_DIR / "capability_r4_assembled.json").read_text())
    config = tmp_path / "fhirpanel.toml"
    config.write_text("[writeback]\nrisk_assessment = true\n")
    stripped = without(statement, "RiskAssessment", interactions=("create",))
    with ReplayServer(stripped) as server:
        default = fhirpanel("check-server", server.base_url, "--json")
        configured = fhirpanel("check-server", server.base_url, "--json", "--config", str(config))
    assert default.returncode == 0, default.stderr
    assert configured.returncode == 15, configured.stderr
    assert json.loads(configured.stdout)["missing"] == ["write RiskAssessment"]


def test_check_server_errors_are_one_line() -> None:
    unreachable = fhirpanel(
        "check-server",
        f"http://127.0.0.1:{free_port()}/fhir",
        FHIRPANEL_FHIR_MAX_RETRIES="1",
        FHIRPANEL_FHIR_BACKOFF_FACTOR="0.01",
    )
    assert unreachable.returncode == 10
    assert "cannot reach a FHIR server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    usage = fhirpanel("check-server", "ftp://example.org/fhir")
    assert usage.returncode == 2 and "must be http(s)" in usage.stderr
