"""The report on the committed population is a golden file: any change to it is deliberate,
regenerated with the command below and explained in its commit.

    .venv/bin/fhirpanel run --source ndjson:sandbox_fixtures/population --as-of 2026-11-22 \\
        --report tests/golden/population-report.json --quiet

A 10,000-patient population from the generator is held by its report's SHA-256 (the report is
9 MB): it covers the generator as well as the pass, at a size where orderings and ties show.

    .venv/bin/fhirpanel generate --patients 10000 --seed 14 --out /tmp/pop10k --as-of 2026-11-22
    .venv/bin/fhirpanel run --source ndjson:/tmp/pop10k --as-of 2026-11-22 --report r.json --quiet
    sha256sum r.json   # the first field of tests/golden/generated-10k-report.sha256
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import AS_OF, POPULATION_DIR, ROOT

GOLDEN = ROOT / "tests" / "golden" / "population-report.json"
GOLDEN_10K = ROOT / "tests" / "golden" / "generated-10k-report.sha256"


def fhirpanel(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr


def test_the_committed_population_gives_the_golden_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhirpanel",
            "run",
            "--source",
            f"ndjson:{POPULATION_DIR}",
            "--as-of",
            AS_OF,
            "--report",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == GOLDEN.read_bytes(), (
        "the report changed: if that is deliberate, regenerate tests/golden/ (see this module's "
        "docstring) and say why in the commit"
    )


def test_a_generated_10k_population_gives_the_recorded_report(tmp_path: Path) -> None:
    population = tmp_path / "pop10k"
    fhirpanel(
        "generate",
        "--patients",
        "10000",
        "--seed",
        "14",
        "--out",
        str(population),
        "--as-of",
        AS_OF,
        cwd=tmp_path,
    )
    out = tmp_path / "report.json"
    fhirpanel(
        "run",
        "--source",
        f"ndjson:{population}",
        "--as-of",
        AS_OF,
        "--report",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    expected = GOLDEN_10K.read_text(encoding="utf-8").split()[0]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected, (
        "the 10,000-patient report changed (generator or pass): if deliberate, regenerate the "
        "digest (see this module's docstring) and say why in the commit"
    )
