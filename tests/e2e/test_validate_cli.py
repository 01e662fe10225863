"""`fhirpanel validate` and `fhirpanel snapshot` as a user runs them, on the committed
population (their default source)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.test_cli import fhirpanel


def test_validate_prints_the_table_and_writes_json_svg_and_the_store(tmp_path: Path) -> None:
    output = tmp_path / "out" / "validation.json"
    db = tmp_path / "state.db"
    out = fhirpanel("validate", "--output", str(output), "--database", f"sqlite:///{db}")
    assert out.returncode == 0, out.stderr
    assert "Scored as of 2025-11-22" in out.stdout
    for label in ("Charlson index", "CMS-HCC score (adults)", "Blended factor", "Tier"):
        assert label in out.stdout
    assert "Tiers 3-4:" in out.stdout
    data = json.loads(output.read_text())
    assert data["as_of"] == "2026-11-22" and data["baseline"] == "2025-11-22"
    assert [m["metric"] for m in data["metrics"]] == [
        "charlson",
        "hcc",
        "utilisation",
        "blended",
        "tier",
    ]
    for metric in data["metrics"]:
        assert 0.0 <= metric["c_statistic"] <= 1.0
        assert sum(d["patients"] for d in metric["deciles"]) == metric["patients"]
    svg = output.with_suffix(".svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 5
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT as_of, patients FROM validation_runs").fetchall()
    assert rows == [("2026-11-22", data["patients"])]


def test_a_closed_month_rerun_gives_the_same_bytes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'state.db'}"
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    out = fhirpanel("snapshot", "--month", "2026-10", "--output", str(first), "--database", db)
    assert out.returncode == 0, out.stderr
    assert "stored" in out.stdout
    out = fhirpanel("snapshot", "--month", "2026-10", "--output", str(second), "--database", db)
    assert out.returncode == 0, out.stderr
    assert "unchanged" in out.stdout
    assert first.read_bytes() == second.read_bytes()
    content = json.loads(first.read_text())
    assert content["month"] == "2026-10" and content["as_of"] == "2026-10-31"
    assert content["panels"] and content["counts"]["assigned"] > 0
    assert first.read_text() == json.dumps(content, sort_keys=True, indent=2) + "\n"


def test_an_open_month_is_refused_unless_allowed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'state.db'}"
    output = tmp_path / "open.json"
    out = fhirpanel("snapshot", "--month", "2999-01", "--output", str(output), "--database", db)
    assert out.returncode == 2
    assert "has not ended yet" in out.stderr and "--allow-open" in out.stderr
    assert not output.exists()
    out = fhirpanel("snapshot", "--month", "13-2026", "--database", db)
    assert out.returncode == 2 and "not a month" in out.stderr
    out = fhirpanel(
        "snapshot", "--month", "2999-01", "--allow-open", "--output", str(output), "--database", db
    )
    assert out.returncode == 0, out.stderr
    assert "provisional, not stored" in out.stdout and output.exists()
    assert not (tmp_path / "state.db").exists()  # a provisional snapshot is not kept
