"""Pure parts of the Bulk Data client: spec parsing, manifest parsing, file naming, Retry-After,
error files."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.config import BulkSettings, FhirSettings, Settings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import ConfigError, FhirHttpError, SourceError
from fhirpanel.fhir.bulk import (
    BulkExport,
    BulkSource,
    BulkTarget,
    ManifestFile,
    check_since,
    download_names,
    error_file_issues,
    error_file_name,
    is_transient,
    parse_bulk_spec,
    parse_manifest,
    retry_after_seconds,
)
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.source import NdjsonSource, source_from_spec

BASE = "http://127.0.0.1:8080/fhir"


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        (f"bulk:{BASE}", BulkTarget(BASE)),
        (f"bulk:{BASE}/", BulkTarget(BASE)),
        (f"bulk:{BASE}/$export", BulkTarget(BASE)),
        (f"bulk:{BASE}/Group/g-1.a", BulkTarget(BASE, "g-1.a")),
        (f"bulk:{BASE}/Group/42/$export", BulkTarget(BASE, "42")),
        (
            "bulk:https://ehr.example.org/api/FHIR/R4/Group/e3f",
            BulkTarget("https://ehr.example.org/api/FHIR/R4", "e3f"),
        ),
    ],
)
def test_bulk_specs(spec: str, target: BulkTarget) -> None:
    assert parse_bulk_spec(spec) == target


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bulk:ftp://x/fhir", "http"),
        ("bulk:", "http"),
        (f"bulk:{BASE}?_since=2026-01-01", "no query"),
        (f"bulk:{BASE}/Group/has%20space", "not a FHIR id"),
        (f"bulk:{BASE}/Group/{'x' * 65}", "not a FHIR id"),
    ],
)
def test_bad_bulk_specs_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bulk_spec(spec)


def client_factory(base_url: str) -> FhirClient:
    return FhirClient(FhirSettings(base_url=base_url))


def test_source_from_spec_gives_a_bulk_source_with_the_settings() -> None:
    settings = BulkSettings(group_id="from-settings", since="2026-11-01T00:00:00Z", keep_files=True)
    source = source_from_spec(f"bulk:{BASE}", client_factory, bulk=settings)
    assert isinstance(source, BulkSource)
    assert source.client.base_url == BASE
    assert source.export.group_id == "from-settings"  # the setting, when the spec names none
    assert source.export.since == "2026-11-01T00:00:00Z" and source.keep_files
    assert source.describe() == f"bulk:{BASE}/Group/from-settings"
    named = source_from_spec(f"bulk:{BASE}/Group/g7", client_factory, bulk=settings)
    assert isinstance(named, BulkSource) and named.export.group_id == "g7"  # the spec wins
    assert named.export.kickoff_path == "Group/g7/$export"
    plain = source_from_spec(f"bulk:{BASE}", client_factory)
    assert isinstance(plain, BulkSource) and plain.export.kickoff_path == "$export"
    assert not plain.keep_files


def test_bulk_settings_come_from_the_environment() -> None:
    settings = Settings.load(
        env={"FHIRPANEL_BULK_KEEP_FILES": "yes", "FHIRPANEL_BULK_DOWNLOAD_DIR": "var/exports"}
    )
    assert settings.bulk.keep_files and settings.bulk.download_dir == "var/exports"


def test_a_bulk_spec_needs_a_client() -> None:
    with pytest.raises(ConfigError, match="needs a client"):
        source_from_spec(f"bulk:{BASE}")


@pytest.mark.parametrize("since", ["2026-11-01T00:00:00Z", "2026-11-01T00:00:00.123+01:00"])
def test_since_must_be_an_instant(since: str) -> None:
    assert check_since(since) == since


@pytest.mark.parametrize("since", ["2026-11-01", "yesterday", "2026-11-01T00:00:00"])
def test_a_bad_since_is_a_config_error(since: str) -> None:
    with pytest.raises(ConfigError, match="not a FHIR instant"):
        BulkExport(client_factory(BASE), BulkSettings(since=since))


def manifest(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "transactionTime": "2026-11-22T10:00:00Z",
        "request": f"{BASE}/$export?_type=Patient",
        "requiresAccessToken": True,
        "output": [
            {"type": "Patient", "url": f"{BASE}/files/1", "count": 10},
            {"type": "Patient", "url": f"{BASE}/files/2"},
            {"type": "Encounter", "url": f"{BASE}/files/3", "count": "many"},
        ],
        "error": [{"type": "OperationOutcome", "url": f"{BASE}/files/err"}],
    }
    data.update(changes)
    return data


def test_manifest_parsing() -> None:
    parsed = parse_manifest(manifest())
    assert parsed.transaction_time == "2026-11-22T10:00:00Z"
    assert parsed.requires_access_token is True
    assert parsed.output == (
        ManifestFile("Patient", f"{BASE}/files/1", 10),
        ManifestFile("Patient", f"{BASE}/files/2", None),
        ManifestFile("Encounter", f"{BASE}/files/3", None),
    )
    assert parsed.error == (ManifestFile("OperationOutcome", f"{BASE}/files/err"),)
    empty = parse_manifest({"transactionTime": "t", "request": "r", "output": []})
    assert empty.output == () and empty.error == () and not empty.requires_access_token


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "not a JSON object"),
        (manifest(output={"type": "Patient"}), "output is not a list"),
        (manifest(output=[{"type": "patient", "url": f"{BASE}/f"}]), "no valid resource type"),
        (manifest(output=[{"type": "../etc", "url": f"{BASE}/f"}]), "no valid resource type"),
        (manifest(output=[{"type": "Patient", "url": "file:///etc/passwd"}]), "no http"),
        (manifest(output=["x"]), "not an object"),
        (manifest(requiresAccessToken="yes"), "requiresAccessToken"),
    ],
)
def test_malformed_manifests_are_source_errors(data: Any, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_manifest(data)


def test_download_names_are_numbered_per_type_and_recognised(tmp_path: Path) -> None:
    files = [
        ManifestFile(t, f"{BASE}/{n}")
        for n, t in enumerate(["Patient", "Encounter", "Patient", "Patient", "PractitionerRole"])
    ]
    names = download_names(files)
    assert names == [
        "Patient.0001.ndjson",
        "Encounter.0001.ndjson",
        "Patient.0002.ndjson",
        "Patient.0003.ndjson",
        "PractitionerRole.0001.ndjson",
    ]
    for name in [*names, error_file_name(1), "Patient.0004.ndjson.part"]:
        (tmp_path / name).write_bytes(b"")
    source = NdjsonSource(tmp_path)
    assert [p.name for p in source.files_for("Patient")] == names[0:1] + names[2:4]
    assert [p.name for p in source.files_for("PractitionerRole")] == [names[4]]
    assert source.files_for("OperationOutcome") == []


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = 1_795_000_000.0
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(" 2.5 ", now) == 2.5
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now) == 30.0
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now) == 0.0  # past: now
    assert retry_after_seconds("-4", now) == 0.0
    for bad in (None, "", "soon", "nan"):
        assert retry_after_seconds(bad, now) is None


def error(code: str) -> FhirHttpError:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": "x"}],
    }
    return FhirHttpError(500, "x", outcome=outcome)


def test_transient_poll_errors() -> None:
    assert is_transient(error("transient")) and is_transient(error("throttled"))
    assert not is_transient(error("exception"))  # sekmet's (and HAPI's) failed job
    assert not is_transient(FhirHttpError(500, "no outcome"))


def test_error_file_lines_become_issues() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Condition/c1 not exported"},
            {"severity": "error", "code": "processing", "details": {"text": "Encounter/e2 bad"}},
        ],
    }
    lines = [orjson.dumps(outcome) + b"\n", b"\n", b"not json\n"]
    assert error_file_issues(lines, "error.0001.ndjson") == [
        Issue(
            "OperationOutcome/? (error.0001.ndjson:1)",
            "export error: Condition/c1 not exported",
            "recorded",
        ),
        Issue(
            "OperationOutcome/? (error.0001.ndjson:1)", "export error: Encounter/e2 bad", "recorded"
        ),
        Issue(
            "OperationOutcome/? (error.0001.ndjson:3)",
            "export error: unreadable error line",
            "recorded",
        ),
    ]
    many = error_file_issues([orjson.dumps(outcome)] * 3, "e", limit=4)
    assert len(many) == 5 and many[-1].problem == "export error: 2 more error lines not listed"


def test_stale_download_folders_are_swept(tmp_path: Path) -> None:
    import os
    import time

    from fhirpanel.fhir.bulk import sweep_stale

    old, new, other = tmp_path / "export-a.partial", tmp_path / "export-b", tmp_path / "keep"
    for folder in (old, new, other):
        folder.mkdir()
        (folder / "Patient.ndjson").write_text("{}\n")
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    sweep_stale(tmp_path, older_than=24 * 3600)
    assert not old.exists() and new.exists() and other.exists()
