"""Never act on a partial read (issue 12): a FaultProxy on 127.0.0.1 in front of the real sandbox
server empties a search page, drops its next link, breaks its `entry`, or moves its next link to
another origin; NDJSON folders are renamed, stripped and truncated. Each read either completes or
fails as a one-line SourceError (exit 10) before anything is written or stored."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.config import FhirSettings, Settings
from fhirpanel.errors import ExitCode, SourceError, UnsafeLinkError
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.source import NdjsonSource, ServerSource
from fhirpanel.jobs.refresh import full_refresh
from fhirpanel.report import build_report
from fhirpanel.run import run_full
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.conftest import AS_OF, ROOT
from tests.integration.faults import (
    DROP_NEXT,
    EMPTY_PAGE,
    ENTRY_STRING,
    ENTRY_STRINGS,
    FaultProxy,
    Status,
    next_link_on,
)

AS_OF_DATE = date.fromisoformat(AS_OF)
FAST: dict[str, Any] = {
    "max_retries": 1,
    "backoff_factor": 0.01,
    "backoff_max": 0.05,
    "retry_budget_seconds": 5.0,
    "page_size": 100,
}
FIRST_PATIENT_PAGE = ("/Patient?", "_count=100")  # with times=1: the first page only
SECOND_PATIENT_PAGE = ("/Patient?", "_offset=100")


@pytest.fixture
def proxy(loaded_sandbox: SandboxServer) -> Iterator[FaultProxy]:
    with FaultProxy(loaded_sandbox.base_url) as fault_proxy:
        yield fault_proxy


def client_for(proxy: FaultProxy, **changes: Any) -> FhirClient:
    return FhirClient(FhirSettings(base_url=proxy.base_url, **{**FAST, **changes}))


def read_ids(client: FhirClient, rtype: str = "Patient") -> list[str]:
    return [r["id"] for r in client.search(rtype)]


def fhirpanel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1, out.stderr
    return lines[0]


# ---------------------------------------------------------------- search pages


def test_a_clean_read_makes_up_the_total(proxy: FaultProxy) -> None:
    with client_for(proxy) as client:
        assert len(set(read_ids(client))) == 300
        assert client.stats.pages == 3


def test_an_empty_patient_page_is_a_failed_read(proxy: FaultProxy) -> None:
    proxy.on_path(*SECOND_PATIENT_PAGE, fault=EMPTY_PAGE)
    with client_for(proxy) as client, pytest.raises(SourceError) as caught:
        read_ids(client)
    assert str(caught.value) == (
        "Patient search: server said total 300 but its pages held 100 "
        "(page 2 came back empty); nothing from this search was used"
    )
    assert caught.value.exit_code == ExitCode.SOURCE
    assert [a.fault for a in proxy.arrivals] == ["pass", "empty-page"]


def test_an_empty_encounter_page_fails_the_whole_run(proxy: FaultProxy) -> None:
    proxy.on_path("/Encounter?", "_offset=200", fault=EMPTY_PAGE)
    source = ServerSource(client_for(proxy))
    with pytest.raises(
        SourceError,
        match=r"^Encounter search: server said total \d+ but its "
        r"pages held 200 \(page 3 came back empty\)",
    ):
        run_full(Settings.load(env={}), source, AS_OF_DATE)
    assert not proxy.arrivals_for(lambda a: a.method != "GET")  # nothing was written


def test_a_next_chain_that_ends_early_is_a_failed_read(proxy: FaultProxy) -> None:
    proxy.on_path(*FIRST_PATIENT_PAGE, fault=DROP_NEXT)
    with client_for(proxy) as client, pytest.raises(SourceError) as caught:
        read_ids(client)
    assert (
        "server said total 300 but its pages held 100 (a page came back short or the next "
        "links ended early)" in str(caught.value)
    )


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (ENTRY_STRING, "Bundle.entry is a string, not a list"),
        (ENTRY_STRINGS, "Bundle.entry[0] is a string, not an object"),
    ],
)
def test_a_bundle_with_a_broken_entry_is_a_one_line_source_error(
    proxy: FaultProxy, fault: Any, message: str
) -> None:
    proxy.on_path(*SECOND_PATIENT_PAGE, fault=fault)
    with client_for(proxy) as client, pytest.raises(SourceError) as caught:
        read_ids(client)
    assert re.fullmatch(
        r"Patient search page 2 \(http://127\.0\.0\.1:\d+/fhir/Patient\?"
        r"[^)]*\): " + re.escape(message),
        str(caught.value),
    ), str(caught.value)


def test_an_expired_page_restarts_and_still_makes_up_the_total(proxy: FaultProxy) -> None:
    proxy.on_path(*SECOND_PATIENT_PAGE, fault=Status(410))
    with client_for(proxy) as client:
        ids = read_ids(client)
        assert len(ids) == len(set(ids)) == 300  # no repeats, none missing
        assert client.stats.restarts == 1


@pytest.mark.parametrize(
    ("fault", "page", "expected"),
    [
        (EMPTY_PAGE, SECOND_PATIENT_PAGE, "(page 2 came back empty)"),
        (ENTRY_STRINGS, SECOND_PATIENT_PAGE, "Bundle.entry[0] is a string, not an object"),
    ],
)
def test_the_cli_exits_10_with_one_line(
    proxy: FaultProxy, fault: Any, page: tuple[str, ...], expected: str
) -> None:
    proxy.on_path(*page, fault=fault)
    out = fhirpanel(
        "run",
        "--source",
        proxy.base_url,
        "--as-of",
        AS_OF,
        env={"FHIRPANEL_FHIR_PAGE_SIZE": "100", "FHIRPANEL_FHIR_MAX_RETRIES": "1"},
    )
    assert out.returncode == ExitCode.SOURCE, out.stderr
    assert expected in one_line_error(out)
    assert not proxy.arrivals_for(lambda a: a.method != "GET")


def test_a_failed_read_leaves_the_store_and_watermark_as_they_were(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    base = Settings.load(env={})
    settings = base.with_fhir(base_url=proxy.base_url, **FAST)
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        first = full_refresh(settings, store, source=proxy.base_url, as_of=AS_OF_DATE, write=False)
        assert first.status == "succeeded", first.error
        states, watermark = store.assignment_states(), store.watermark(proxy.base_url)
        assert len(states) == 300 and watermark
        proxy.on_path(*SECOND_PATIENT_PAGE, fault=EMPTY_PAGE)
        failed = full_refresh(settings, store, source=proxy.base_url, as_of=AS_OF_DATE, write=False)
        assert failed.status == "failed"
        assert "server said total 300 but its pages held 100" in (failed.error or "")
        assert store.assignment_states() == states
        assert store.watermark(proxy.base_url) == watermark
        assert store.runs()[0]["status"] == "failed"
    finally:
        store.close()


# ---------------------------------------------------------------- next links elsewhere


def test_a_foreign_next_link_is_refused_naming_the_settings(proxy: FaultProxy) -> None:
    proxy.on_path(*FIRST_PATIENT_PAGE, fault=next_link_on("http://hapi.internal:8080"))
    with client_for(proxy) as client, pytest.raises(UnsafeLinkError) as caught:
        read_ids(client)
    message = str(caught.value)
    assert message.startswith("refusing a paging link to http://hapi.internal:8080/fhir/Patient?")
    assert "add http://hapi.internal:8080 to fhir.trusted_link_origins" in message
    assert "fhir.rewrite_foreign_links = true" in message
    assert caught.value.exit_code == ExitCode.SOURCE


def test_a_foreign_next_link_is_rewritten_onto_the_base(proxy: FaultProxy) -> None:
    proxy.on_path(*FIRST_PATIENT_PAGE, fault=next_link_on("http://hapi.internal:8080"))
    with client_for(proxy, rewrite_foreign_links=True) as client:
        assert len(set(read_ids(client))) == 300
    assert [a.fault for a in proxy.arrivals] == [
        "next-on http://hapi.internal:8080",
        "pass",
        "pass",
    ]
    assert proxy.arrivals[1].path.startswith("/fhir/Patient?")  # same path, on the base


def test_a_trusted_origin_is_followed_as_given(proxy: FaultProxy) -> None:
    other = f"http://localhost:{proxy.port}"  # the same proxy, by another name
    proxy.on_path(*FIRST_PATIENT_PAGE, fault=next_link_on(other))
    with client_for(proxy, trusted_link_origins=other) as client:
        assert len(set(read_ids(client))) == 300
        assert client.stats.pages == 3


# ---------------------------------------------------------------- NDJSON folders


def copy_population(population_dir: Path, target: Path, rename: Any = str) -> Path:
    target.mkdir()
    for path in population_dir.glob("*.ndjson"):
        shutil.copyfile(path, target / rename(path.name))
    return target


def test_lower_case_and_gzipped_file_names_give_the_same_report(
    population_dir: Path, tmp_path: Path
) -> None:
    settings = Settings.load(env={})
    lower = copy_population(population_dir, tmp_path / "lower", str.lower)
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for path in population_dir.glob("*.ndjson"):
        (zipped / f"{path.name.upper()}.gz").write_bytes(gzip.compress(path.read_bytes()))
    expected = build_report(run_full(settings, NdjsonSource(population_dir), AS_OF_DATE))
    for folder in (lower, zipped):
        report = build_report(run_full(settings, NdjsonSource(folder), AS_OF_DATE))
        assert report["summary"]["patients"] == 300
        assert report["patients"] == expected["patients"] and report["panels"] == expected["panels"]


def test_a_folder_without_encounters_exits_10(population_dir: Path, tmp_path: Path) -> None:
    folder = copy_population(population_dir, tmp_path / "pop")
    (folder / "Encounter.ndjson").unlink()
    out = fhirpanel("run", "--source", f"ndjson:{folder}", "--as-of", AS_OF)
    assert out.returncode == ExitCode.SOURCE
    assert one_line_error(out).endswith(
        f"ndjson:{folder} has no Encounter file (looked for Encounter*.ndjson[.gz], any case)"
    )


def test_a_truncated_gzip_exits_10(population_dir: Path, tmp_path: Path) -> None:
    folder = copy_population(population_dir, tmp_path / "pop")
    packed = gzip.compress((folder / "Patient.ndjson").read_bytes())
    (folder / "Patient.ndjson").unlink()
    (folder / "Patient.ndjson.gz").write_bytes(packed[: len(packed) * 2 // 3])
    out = fhirpanel("run", "--source", f"ndjson:{folder}", "--as-of", AS_OF)
    assert out.returncode == ExitCode.SOURCE
    assert "Patient.ndjson.gz could not be read to its end" in one_line_error(out)
