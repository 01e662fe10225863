"""The report on the committed population is a golden file: any change to it is deliberate,
regenerated with the command below and explained in its commit.

    .venv/bin/fhirpanel run --source ndjson:sandbox_fixtures/population --as-of 2026-11-22 \\
        --report tests/golden/population-report.json --quiet
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import AS_OF, POPULATION_DIR, ROOT

GOLDEN = ROOT / "tests" / "golden" / "population-report.json"


def test_the_committed_population_gives_the_golden_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "fhirpanel", "run", "--source", f"ndjson:{POPULATION_DIR}",
         "--as-of", AS_OF, "--report", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == GOLDEN.read_bytes(), (
        "the report changed: if that is deliberate, regenerate tests/golden/ (see this module's "
        "docstring) and say why in the commit")
