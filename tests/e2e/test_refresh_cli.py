"""`fhirpanel refresh` and `fhirpanel runs` as a user runs them, on a SQLite store: a full
refresh from NDJSON, an incremental pass against the sandbox server, the run list, and the
errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

from fhirpanel.errors import ExitCode
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.conftest import AS_OF, POPULATION_DIR
from tests.e2e.test_cli import fhirpanel


def test_full_refresh_then_runs(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'state.db'}"
    out = fhirpanel(
        "refresh",
        "--full",
        "--source",
        f"ndjson:{POPULATION_DIR}",
        "--as-of",
        AS_OF,
        "--database",
        db,
    )
    assert out.returncode == 0, out.stderr
    assert "full refresh (run 1): succeeded" in out.stdout
    assert "assigned: 248" in out.stdout

    listing = fhirpanel("runs", "--database", db, "--json")
    assert listing.returncode == 0, listing.stderr
    runs = json.loads(listing.stdout)
    assert [(r["id"], r["kind"], r["status"]) for r in runs] == [(1, "full", "succeeded")]
    assert runs[0]["counts"]["patients_stored"] == 300

    table = fhirpanel("runs", "--database", db)
    assert table.returncode == 0 and "succeeded" in table.stdout

    # NDJSON has no `_lastUpdated` search: an incremental pass on it is refused clearly.
    inc = fhirpanel(
        "refresh", "--source", f"ndjson:{POPULATION_DIR}", "--as-of", AS_OF, "--database", db
    )
    assert inc.returncode == ExitCode.USAGE, inc.stdout + inc.stderr
    assert "needs a FHIR server source" in inc.stderr


def test_incremental_refresh_against_the_sandbox(
    loaded_sandbox: SandboxServer, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'state.db'}"
    base = loaded_sandbox.base_url
    first = fhirpanel("refresh", "--source", base, "--as-of", AS_OF, "--database", db, "--no-write")
    # No full refresh stored yet: the first pass is a full one.
    assert first.returncode == 0, first.stderr
    assert "full refresh (run 1): succeeded" in first.stdout
    second = fhirpanel(
        "refresh", "--source", base, "--as-of", AS_OF, "--database", db, "--no-write"
    )
    assert second.returncode == 0, second.stderr
    assert "incremental refresh (run 2): succeeded" in second.stdout
    assert "patients: 0" in second.stdout


def test_refresh_while_another_holds_the_lock_exits_busy(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'state.db'}"
    store = Store(db)
    assert store.try_lock("another-worker", stale_seconds=3600)
    out = fhirpanel(
        "refresh",
        "--full",
        "--source",
        f"ndjson:{POPULATION_DIR}",
        "--as-of",
        AS_OF,
        "--database",
        db,
    )
    assert out.returncode == ExitCode.BUSY
    assert "skipped" in out.stdout
    assert out.stderr == "error: another refresh is running (lock held by another-worker)\n"
    store.close()


def test_refresh_without_a_source_is_a_usage_error(tmp_path: Path) -> None:
    out = fhirpanel("refresh", "--database", f"sqlite:///{tmp_path / 's.db'}")
    assert out.returncode == ExitCode.USAGE
    assert "nothing to read" in out.stderr


def test_an_unreachable_store_is_its_own_exit_code_with_one_line(tmp_path: Path) -> None:
    from tests.integration.faults import LoopbackServer

    with LoopbackServer() as closed:  # a port nothing answers once the server is gone
        port = closed.port
    out = fhirpanel(
        "refresh",
        "--full",
        "--source",
        f"ndjson:{POPULATION_DIR}",
        "--as-of",
        AS_OF,
        "--database",
        f"postgresql+psycopg://fhirpanel@127.0.0.1:{port}/none",
    )
    assert out.returncode == ExitCode.STORE == 17, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot migrate the store")


def test_refresh_with_a_roster_on_a_strict_server(tmp_path: Path) -> None:
    """`refresh --roster` on a server that refuses population searches: the full pass, then an
    incremental one that polls the roster; neither sends a population search."""
    db = f"sqlite:///{tmp_path / 'state.db'}"
    with SandboxServer(strict=True) as ehr:
        ehr.load_ndjson_dir(POPULATION_DIR)
        roster = tmp_path / "roster.csv"
        roster.write_text("patient\n" + "\n".join(ehr.patient_ids()) + "\n")
        args = ("--source", ehr.base_url, "--as-of", AS_OF, "--database", db, "--no-write")
        full = fhirpanel("refresh", "--full", "--roster", str(roster), *args)
        assert full.returncode == 0, full.stderr
        assert "full refresh (run 1): succeeded" in full.stdout
        inc = fhirpanel("refresh", "--roster", str(roster), *args)
        assert inc.returncode == 0, inc.stderr
        assert "incremental refresh (run 2): succeeded" in inc.stdout
        assert ehr.stats.population_searches == 0
    store = Store(db)
    try:
        assert len(store.patient_ids()) == 300
    finally:
        store.close()
