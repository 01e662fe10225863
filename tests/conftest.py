"""Shared fixtures: a real sandbox FHIR server on 127.0.0.1 and the committed population."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.config import Settings
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.tables import Tables
from tests.integration.faults import ConnectionCut

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "sandbox_fixtures"
POPULATION_DIR = FIXTURES / "population"  # Patient.ndjson, Encounter.ndjson, ... (committed)
HAPI_DIR = FIXTURES / "hapi"  # recorded HAPI responses (see its README)
AS_OF = "2026-11-22"  # the as-of date the committed population was generated for


@pytest.fixture(scope="session")
def population_dir() -> Path:
    if not (POPULATION_DIR / "Patient.ndjson").is_file():
        pytest.fail(f"committed population missing under {POPULATION_DIR}")
    return POPULATION_DIR


@pytest.fixture(scope="session")
def tables() -> Tables:
    """The shipped mapping tables, as one pass loads them with default settings."""
    return Tables.load(Settings.load(env={}))


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """An empty sandbox FHIR server for one test (in-memory store)."""
    with SandboxServer() as server:
        yield server


@pytest.fixture(scope="session")
def loaded_sandbox(population_dir: Path) -> Iterator[SandboxServer]:
    """One sandbox server per session seeded with the committed population. Read-only: tests that
    write must use `sandbox` (or load what they need into it)."""
    with SandboxServer() as server:
        server.load_ndjson_dir(population_dir)
        yield server


@pytest.fixture
def cut_connection(monkeypatch: pytest.MonkeyPatch) -> ConnectionCut:
    """Arm with `.arm(after_batches=N)`: the HTTP layer then loses the FHIR server after N
    write batches (tests/integration/faults.py, ConnectionCut)."""
    import requests.adapters

    cut = ConnectionCut()
    real = requests.adapters.HTTPAdapter.send

    def send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        return cut.send(real, adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return cut


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder for artefacts a person may want to look at (screenshots, reports)."""
    path = ROOT / "tests" / "output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FHIRPANEL_LIVE_FHIR_BASE"):
        return
    skip = pytest.mark.skip(reason="set FHIRPANEL_LIVE_FHIR_BASE to run the live suite")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)
