"""Bulk Data `$export` through `bulk:` sources: against the real sandbox server (sekmet runs
`$export` asynchronously, in a thread, answering `Retry-After: 1`), through a fault proxy in front
of it, and against a small scripted Bulk Data server on 127.0.0.1 for what sekmet cannot be made
to do (long waits, transient poll errors, files elsewhere). Waits in the scripted tests go through
an injected clock: nothing here sleeps longer than sekmet asks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from fhirpanel.config import BulkSettings, FhirSettings, Settings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import AuthError, ExitCode, SourceError
from fhirpanel.fhir.bulk import BulkExport, BulkSource
from fhirpanel.fhir.client import BearerAuth, FhirClient
from fhirpanel.fhir.source import ServerSource, source_from_spec
from fhirpanel.ingest import read_population
from fhirpanel.report import build_report
from fhirpanel.run import run_full
from fhirpanel.sandbox.server import SandboxServer, iter_ndjson_dir
from tests.conftest import AS_OF, POPULATION_DIR, ROOT
from tests.integration.faults import (
    RESET_MID_BODY,
    Arrival,
    Fault,
    FaultProxy,
    LoopbackServer,
    Status,
    outcome,
    read_body,
    send,
)

FAST: dict[str, Any] = {
    "max_retries": 2,
    "backoff_factor": 0.01,
    "backoff_max": 0.1,
    "retry_budget_seconds": 10.0,
    "connect_timeout": 2.0,
    "read_timeout": 10.0,
}
GROUP_ID = "panel-sample"


@pytest.fixture(scope="module")
def bulk_sandbox() -> Iterator[SandboxServer]:
    """Our own server with the committed population and a Group of 25 of its patients."""
    with SandboxServer() as server:
        server.load_ndjson_dir(POPULATION_DIR)
        members = sorted(
            r["id"] for r in iter_ndjson_dir(POPULATION_DIR) if r["resourceType"] == "Patient"
        )[:25]
        server.load(
            [
                {
                    "resourceType": "Group",
                    "id": GROUP_ID,
                    "type": "person",
                    "actual": True,
                    "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members],
                }
            ]
        )
        yield server


def client_for(base_url: str, **changes: Any) -> FhirClient:
    return FhirClient(FhirSettings(base_url=base_url, **{**FAST, **changes}))


def bulk_source(spec: str, download_dir: Path, **bulk: Any) -> BulkSource:
    source = source_from_spec(
        spec, client_for, bulk=BulkSettings(download_dir=str(download_dir), **bulk)
    )
    assert isinstance(source, BulkSource)
    return source


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


# ---------------------------------------------------------------- against the sandbox


def test_bulk_run_gives_the_same_report_as_the_paged_read(
    bulk_sandbox: SandboxServer, tmp_path: Path
) -> None:
    settings = Settings.load(env={})
    as_of = date.fromisoformat(AS_OF)
    with bulk_source(f"bulk:{bulk_sandbox.base_url}", tmp_path) as source:
        from_bulk = build_report(run_full(settings, source, as_of))
        assert source.result is not None
        manifest_types = {f.type for f in source.result.manifest.output}
        assert manifest_types == {
            "Patient",
            "Encounter",
            "Condition",
            "Practitioner",
            "PractitionerRole",
            "Organization",
        }
        assert source.result.counts["Patient"] == 300
        assert source.result.stats.polls >= 1 and source.transaction_time
        assert leftovers(tmp_path)  # the NDJSON is there while the source is open
    assert leftovers(tmp_path) == []  # and gone after close
    with client_for(bulk_sandbox.base_url, page_size=100) as client:
        from_pages = build_report(run_full(settings, ServerSource(client), as_of))
    for key in ("patients", "panels", "issues", "summary"):
        assert from_bulk[key] == from_pages[key], key
    assert from_bulk["summary"]["assigned"] > 100


def test_group_export_reads_the_members_and_clinicians_by_search(
    bulk_sandbox: SandboxServer, tmp_path: Path
) -> None:
    with bulk_source(f"bulk:{bulk_sandbox.base_url}/Group/{GROUP_ID}", tmp_path) as source:
        assert source.describe().endswith(f"/Group/{GROUP_ID}")
        population = read_population(source)
        assert source.result is not None
        # sekmet's Group export holds the members' compartments only (Patient, Encounter,
        # Condition); clinicians and organisations come from paged searches.
        assert set(source.result.counts) == {"Patient", "Encounter", "Condition"}
    assert len(population.patients) == 25
    assert len(population.practitioners) == 19 and len(population.organizations) == 4
    assert population.encounters
    assert {e.patient for e in population.encounters} <= set(population.patients)


@pytest.mark.parametrize("read_mode", ["roster", "population"])
def test_a_group_export_from_an_ehr_reads_clinicians_by_reference(
    read_mode: str, tmp_path: Path
) -> None:
    """A strict EHR (fhirpanel/sandbox/strict.py) exports a Group but refuses population
    searches of clinicians: with the roster read mode they are read by reference at once; in
    the population mode after the refusal of each. Either way the same population."""
    with SandboxServer(strict=True) as ehr:
        ehr.load_ndjson_dir(POPULATION_DIR)
        ehr.add_group("everyone", ehr.patient_ids())

        def client(base_url: str) -> FhirClient:
            return client_for(base_url, read_mode=read_mode)

        spec = f"bulk:{ehr.base_url}/Group/everyone"
        source = source_from_spec(spec, client, bulk=BulkSettings(download_dir=str(tmp_path)))
        assert isinstance(source, BulkSource)
        with source:
            population = read_population(source)
        stats = ehr.stats.as_dict()
    assert len(population.patients) == 300
    assert len(population.practitioners) == 19 and len(population.roles) == 19
    assert len(population.organizations) == 4
    refused = {t: 1 for t in ("Organization", "Practitioner", "PractitionerRole")}
    assert stats["population_by_type"] == ({} if read_mode == "roster" else refused)
    assert stats["searches_by_type"]["Practitioner"] >= 1


def test_an_unknown_group_is_a_clear_error(bulk_sandbox: SandboxServer, tmp_path: Path) -> None:
    source = bulk_source(f"bulk:{bulk_sandbox.base_url}/Group/no-such-group", tmp_path)
    with pytest.raises(SourceError, match="Group/no-such-group not found"):
        list(source.read("Patient"))


def test_incremental_export_with_since(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.load(
        r
        for r in iter_ndjson_dir(POPULATION_DIR)
        if r["resourceType"] in ("Practitioner", "Organization")
    )
    with client_for(sandbox.base_url) as client:
        first = BulkExport(client, BulkSettings(download_dir=str(tmp_path))).run()
        assert first.counts == {"Practitioner": 19, "Organization": 4}
        created = client.create({"resourceType": "Patient", "active": True})
        second = BulkExport(
            client, BulkSettings(download_dir=str(tmp_path)), since=first.manifest.transaction_time
        ).run()
    assert second.counts == {"Patient": 1}
    assert "_since=" in second.manifest.request
    line = (second.directory / "Patient.0001.ndjson").read_bytes()
    assert orjson.loads(line)["id"] == created["id"]


def test_files_need_the_token_when_the_server_says_so(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from sekmet.config import ServerAuth

    sandbox.load(r for r in iter_ndjson_dir(POPULATION_DIR) if r["resourceType"] == "Practitioner")
    sandbox.ctx.settings.server_auth = ServerAuth(types=["bearer"], tokens=["tok-123"])
    settings = BulkSettings(download_dir=str(tmp_path))
    with client_for(sandbox.base_url) as anonymous, pytest.raises(AuthError):
        BulkExport(anonymous, settings).run()
    with FhirClient(
        FhirSettings(base_url=sandbox.base_url, **FAST), auth=BearerAuth("tok-123")
    ) as client:
        result = BulkExport(client, settings).run()
    assert result.manifest.requires_access_token is True
    assert result.counts == {"Practitioner": 19}


# ---------------------------------------------------------------- through a fault proxy


@dataclass(frozen=True)
class Reply:
    """Answer with this status and OperationOutcome instead of forwarding."""

    status: int
    diagnostics: str
    code: str = "exception"


class PathFaultProxy(FaultProxy):
    """A FaultProxy whose faults fire on paths: `(fragment, fault)` answers the first request
    whose path holds `fragment`, once."""

    def __init__(self, upstream: str, rules: list[tuple[str, Fault | Reply]]) -> None:
        super().__init__(upstream)
        self.rules = list(rules)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        fault: Fault | Reply | None = None
        with self._lock:
            for n, (fragment, candidate) in enumerate(self.rules):
                if fragment in handler.path and handler.command == "GET":
                    fault = candidate
                    del self.rules[n]
                    break
            if isinstance(fault, Reply):
                self.arrivals.append(_arrival(handler, str(fault.status)))
            elif fault is not None:
                self._faults.appendleft(fault)
        if isinstance(fault, Reply):
            read_body(handler)
            send(handler, fault.status, outcome(fault.diagnostics, fault.code))
            return
        super().handle(handler)


def _arrival(handler: BaseHTTPRequestHandler, fault: str) -> Arrival:
    return Arrival(handler.command, handler.path, time.monotonic(), fault)


@pytest.fixture
def proxied(bulk_sandbox: SandboxServer) -> Iterator[PathFaultProxy]:
    with PathFaultProxy(bulk_sandbox.base_url, []) as proxy:
        yield proxy


def deletes(proxy: FaultProxy) -> list[str]:
    return [a.path for a in proxy.arrivals_for(lambda a: a.method == "DELETE")]


def test_a_file_that_fails_mid_export_imports_nothing(
    proxied: PathFaultProxy, tmp_path: Path
) -> None:
    proxied.rules = [("/bulk-files/", RESET_MID_BODY), ("Encounter.ndjson", Status(500))]
    source = bulk_source(f"bulk:{proxied.base_url}", tmp_path)
    with pytest.raises(SourceError, match=r"Encounter file .* could not be downloaded: HTTP 500"):
        read_population(source)
    assert leftovers(tmp_path) == []  # not one file, not even the ones that came through
    assert source.result is None
    assert len(deletes(proxied)) == 1 and "/bulk-status/" in deletes(proxied)[0]
    # The failure is kept: a second read neither exports again nor imports anything.
    with pytest.raises(SourceError, match="HTTP 500"):
        list(source.read("Patient"))
    assert len(proxied.arrivals_for(lambda a: "$export" in a.path)) == 1


def test_a_body_cut_off_is_downloaded_again(proxied: PathFaultProxy, tmp_path: Path) -> None:
    proxied.rules = [("Patient.ndjson", RESET_MID_BODY)]
    with bulk_source(f"bulk:{proxied.base_url}", tmp_path) as source:
        read_population(source)
        assert source.result is not None and source.result.counts["Patient"] == 300
    assert len(proxied.arrivals_for(lambda a: "Patient.ndjson" in a.path)) == 2


def test_an_expired_file_is_a_clear_error(proxied: PathFaultProxy, tmp_path: Path) -> None:
    proxied.rules = [("Condition.ndjson", Reply(410, "export files expired", "expired"))]
    source = bulk_source(f"bulk:{proxied.base_url}", tmp_path)
    with pytest.raises(SourceError, match=r"Condition file .* is gone .*410.* expired"):
        list(source.read("Patient"))
    assert leftovers(tmp_path) == []


def test_an_export_that_fails_on_the_server_says_why(
    proxied: PathFaultProxy, tmp_path: Path
) -> None:
    proxied.rules = [("/bulk-status/", Reply(500, "export job crashed: disk full"))]
    source = bulk_source(f"bulk:{proxied.base_url}", tmp_path)
    with pytest.raises(SourceError, match=r"Bulk export failed: .*disk full") as caught:
        read_population(source)
    assert caught.value.exit_code == ExitCode.SOURCE
    assert leftovers(tmp_path) == []
    assert len(deletes(proxied)) == 1


# ---------------------------------------------------------------- a scripted Bulk Data server


PATIENTS = (
    b'{"resourceType":"Patient","id":"a","active":true}\n'
    b'{"resourceType":"Patient","id":"b","active":true}\n'
)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FakeBulkServer(LoopbackServer):
    """Kick-off at `/fhir/$export`; the status endpoint answers from `polls` (status, headers,
    body), then `repeat` when set, else the manifest; files under `/files/`, listed in the
    manifest at `file_origin` (another server) when given. Records every request."""

    def __init__(
        self,
        polls: list[tuple[int, dict[str, str], bytes]] | None = None,
        *,
        repeat: tuple[int, dict[str, str], bytes] | None = None,
        requires_token: bool = False,
        file_origin: str = "",
        files: dict[str, bytes] | None = None,
        errors: dict[str, bytes] | None = None,
        counts: dict[str, int] | None = None,
        location_origin: str = "",
    ) -> None:
        super().__init__()
        self.location_origin = location_origin  # where Content-Location says the status is
        self.polls = deque(polls or [])
        self.repeat = repeat
        self.requires_token = requires_token
        self.file_origin = file_origin
        self.files = {"Patient.ndjson": PATIENTS} if files is None else files
        self.errors = errors or {}
        self.counts = counts or {}
        self.seen: list[Seen] = []

    @property
    def base_url(self) -> str:
        return f"{self.origin}/fhir"

    def requests_to(self, fragment: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.seen if fragment in s.path and s.method == method]

    def manifest(self) -> dict[str, Any]:
        origin = self.file_origin or self.origin
        return {
            "transactionTime": "2026-11-22T00:00:00Z",
            "request": f"{self.base_url}/$export",
            "requiresAccessToken": self.requires_token,
            "output": [
                {
                    "type": name.split(".")[0],
                    "url": f"{origin}/files/{name}",
                    "count": self.counts.get(name, body.count(b"\n")),
                }
                for name, body in self.files.items()
            ],
            "error": [
                {"type": "OperationOutcome", "url": f"{origin}/files/{name}"}
                for name in self.errors
            ],
        }

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        read_body(handler)
        path = urlsplit(handler.path).path
        self.seen.append(Seen(handler.command, path, dict(handler.headers.items())))
        name = path.removeprefix("/files/")
        if path == "/fhir/$export":
            status_base = f"{self.location_origin or self.origin}/fhir"
            send(handler, 202, headers={"Content-Location": f"{status_base}/status/1"})
        elif path == "/fhir/status/1" and handler.command == "DELETE":
            send(handler, 202)
        elif path == "/fhir/status/1" and (self.polls or self.repeat):
            status, headers, body = self.polls.popleft() if self.polls else self.repeat or ()
            send(handler, status, body, headers)
        elif path == "/fhir/status/1":
            send(handler, 200, orjson.dumps(self.manifest()), content_type="application/json")
        elif name in self.files or name in self.errors:
            send(
                handler,
                200,
                self.files.get(name) or self.errors[name],
                content_type="application/fhir+ndjson",
            )
        else:
            send(handler, 404, outcome("no such path", "not-found"))


class FakeClock:
    """`sleep` only moves the clock forward and records the wait."""

    def __init__(self, wall: float = 1_795_000_000.0) -> None:
        self.now = 0.0
        self.wall = wall
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall + self.now


def scripted_export(
    server: FakeBulkServer,
    tmp_path: Path,
    clock: FakeClock,
    client: FhirClient | None = None,
    **bulk: Any,
) -> BulkExport:
    settings = BulkSettings(download_dir=str(tmp_path / "bulk"), **bulk)
    return BulkExport(
        client or client_for(server.base_url),
        settings,
        sleep=clock.sleep,
        clock=clock.monotonic,
        wall_clock=clock.time,
    )


def test_retry_after_is_honoured_in_seconds_and_as_a_date(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    polls = [
        (202, {"Retry-After": "3", "X-Progress": "collecting 10%"}, b""),
        (202, {"Retry-After": "1.5"}, b""),
        (202, {"Retry-After": formatdate(clock.wall + 12, usegmt=True)}, b""),  # at 4.5 s
        (202, {}, b""),  # no Retry-After: the configured poll interval
    ]
    caplog.set_level(logging.INFO, logger="fhirpanel.fhir.bulk")
    with FakeBulkServer(polls) as server:
        result = scripted_export(server, tmp_path, clock, poll_interval=0.5).run()
        assert len(server.requests_to("/status/1")) == 5
        assert len(server.requests_to("/status/1", "DELETE")) == 1
        kickoff = server.requests_to("$export")[0]
    assert clock.waits == [3.0, 1.5, 7.5, 0.5]
    assert result.stats.polls == 5
    assert result.counts == {"Patient": 2}
    assert kickoff.headers["Prefer"] == "respond-async"
    assert kickoff.headers["Accept"] == "application/fhir+json"
    assert "collecting 10%" in caplog.text


def test_an_operator_can_cap_a_long_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    polls = [(202, {"Retry-After": "120"}, b""), (202, {"Retry-After": "2"}, b"")]
    with FakeBulkServer(polls) as server:
        result = scripted_export(server, tmp_path, clock, max_retry_after=5).run()
    assert clock.waits == [5.0, 2.0]  # HAPI's 120 s capped; a shorter wait kept as asked
    assert result.counts == {"Patient": 2}


def test_the_wait_is_bounded_and_the_export_cancelled(tmp_path: Path) -> None:
    clock = FakeClock()
    with FakeBulkServer(repeat=(202, {"Retry-After": "5"}, b"")) as server:
        export = scripted_export(server, tmp_path, clock, max_wait_seconds=12)
        with pytest.raises(SourceError, match=r"not finished within 12s"):
            export.run()
        assert len(server.requests_to("/status/1")) == 3  # at 0, 5 and 10 s; 15 s is too late
        assert len(server.requests_to("/status/1", "DELETE")) == 1
        assert server.requests_to("/files/") == []
    assert clock.waits == [5.0, 5.0]
    assert leftovers(tmp_path / "bulk") == []


def test_the_poll_count_is_bounded_too(tmp_path: Path) -> None:
    clock = FakeClock()
    with FakeBulkServer(repeat=(202, {"Retry-After": "0"}, b"")) as server:
        export = scripted_export(server, tmp_path, clock)
        export.max_polls = 4
        with pytest.raises(SourceError, match="after 4 status polls"):
            export.run()
        assert len(server.requests_to("/status/1")) == 4
    assert clock.waits == [0.1, 0.1, 0.1]  # a Retry-After of 0 still waits the floor


def test_a_transient_poll_error_is_polled_again(tmp_path: Path) -> None:
    clock = FakeClock()
    polls = [(500, {}, outcome("index busy", "transient")), (202, {"Retry-After": "2"}, b"")]
    with FakeBulkServer(polls) as server:
        result = scripted_export(server, tmp_path, clock, poll_interval=1.0).run()
    assert clock.waits == [1.0, 2.0]
    assert result.counts == {"Patient": 2}


@pytest.mark.parametrize("requires_token", [True, False])
def test_the_token_goes_to_the_files_only_when_required(
    tmp_path: Path, requires_token: bool
) -> None:
    clock = FakeClock()
    with FakeBulkServer(requires_token=requires_token) as server:
        client = FhirClient(
            FhirSettings(base_url=server.base_url, **FAST), auth=BearerAuth("s3cret")
        )
        scripted_export(server, tmp_path, clock, client=client).run()
        (file_request,) = server.requests_to("/files/")
        status_request = server.requests_to("/status/1")[0]
    assert file_request.headers["Accept"] == "application/fhir+ndjson"
    assert status_request.headers.get("Authorization") == "Bearer s3cret"
    assert ("Authorization" in file_request.headers) is requires_token
    if requires_token:
        assert file_request.headers["Authorization"] == "Bearer s3cret"


def test_files_elsewhere_get_no_credentials_and_are_refused_when_they_need_them(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with FakeBulkServer(files={}) as storage:
        storage.files = {"Patient.ndjson": PATIENTS}
        with FakeBulkServer(file_origin=storage.origin, files={}) as server:
            server.files = {"Patient.ndjson": PATIENTS}  # listed here, served by `storage`
            client = FhirClient(
                FhirSettings(base_url=server.base_url, **FAST), auth=BearerAuth("s3cret")
            )
            result = scripted_export(server, tmp_path, clock, client=client).run()
            assert result.counts == {"Patient": 2}
            (fetched,) = storage.requests_to("/files/")
            assert "Authorization" not in fetched.headers
            server.requires_token = True
            with pytest.raises(SourceError, match="needs our access token but is not on"):
                scripted_export(server, tmp_path, clock, client=client).run()
            assert len(storage.requests_to("/files/")) == 1
    assert [p for p in leftovers(tmp_path / "bulk") if p.endswith(".partial")] == []


def test_error_files_become_issues_and_counts_are_checked(tmp_path: Path) -> None:
    clock = FakeClock()
    errors = {"errors.ndjson": outcome("Patient/zz could not be exported", "processing") + b"\n"}
    with FakeBulkServer(errors=errors, counts={"Patient.ndjson": 2}) as server:
        export = scripted_export(server, tmp_path, clock)
        with BulkSource(export) as source:
            first = list(source.read("Patient"))
            again = list(source.read("Patient"))
            assert source.result is not None
            warnings = source.result.warnings
            files = leftovers(source.result.directory)
    issues = [i for i in first if isinstance(i, Issue)]
    assert issues == [
        Issue(
            "OperationOutcome/? (error.0001.ndjson:1)",
            "export error: Patient/zz could not be exported",
            "recorded",
        )
    ]
    assert [r["id"] for r in first if isinstance(r, dict)] == ["a", "b"]
    assert not any(isinstance(i, Issue) for i in again)  # reported once
    assert warnings == []  # the manifest's count matched
    assert files == ["Patient.0001.ndjson"]  # the error file is read and not kept


def test_a_file_short_of_its_manifest_count_imports_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    with FakeBulkServer(counts={"Patient.ndjson": 3}) as server:
        source = BulkSource(scripted_export(server, tmp_path, clock))
        with pytest.raises(SourceError) as caught:
            list(source.read("Patient"))
        assert len(server.requests_to("/status/1", "DELETE")) == 1
    assert str(caught.value) == (
        f"Bulk export Patient file Patient.0001.ndjson ({server.origin}/files/Patient.ndjson): "
        "the manifest says 3 resources but 2 lines were downloaded (short); nothing was imported"
    )
    assert caught.value.exit_code == ExitCode.SOURCE
    assert leftovers(tmp_path / "bulk") == []


@pytest.mark.parametrize(
    "body",
    [PATIENTS + b"\n \n\r\n", PATIENTS.rstrip(b"\n"), b"\n" + PATIENTS.replace(b"\n", b"\n\n")],
)
def test_blank_lines_do_not_count_against_the_manifest(tmp_path: Path, body: bytes) -> None:
    with FakeBulkServer(files={"Patient.ndjson": body}, counts={"Patient.ndjson": 2}) as server:
        result = scripted_export(server, tmp_path, FakeClock()).run()
    assert result.counts == {"Patient": 2}


def test_a_full_export_without_an_encounter_file_is_refused(tmp_path: Path) -> None:
    with FakeBulkServer() as server:  # the manifest lists a Patient file only
        source = BulkSource(scripted_export(server, tmp_path, FakeClock()))
        assert [r["id"] for r in source.read("Patient") if isinstance(r, dict)] == ["a", "b"]
        with pytest.raises(
            SourceError,
            match=r"has no Encounter file \(looked for "
            r"Encounter\*\.ndjson\[\.gz\], any case\)",
        ):
            list(source.read("Encounter"))
        source.close()
        # An incremental export (`_since`) may have nothing of a type: no file is fine there.
        since = BulkSource(
            scripted_export(server, tmp_path, FakeClock(), since="2026-11-01T00:00:00Z")
        )
        assert list(since.read("Encounter")) == []
        since.close()


# ---------------------------------------------------------------- links on another origin


def test_a_status_url_on_another_origin_is_refused_with_the_settings_that_allow_it(
    tmp_path: Path,
) -> None:
    with FakeBulkServer() as server:
        server.location_origin = f"http://localhost:{server.port}"
        with pytest.raises(SourceError) as caught:
            scripted_export(server, tmp_path, FakeClock()).run()
        assert server.requests_to("/status/1") == []
    assert "refusing a Bulk status URL to http://localhost:" in str(caught.value)
    assert f"add http://localhost:{server.port} to fhir.trusted_link_origins" in str(caught.value)


def test_a_trusted_origin_is_followed_as_given(tmp_path: Path) -> None:
    with FakeBulkServer() as server:
        foreign = f"http://localhost:{server.port}"
        server.location_origin = server.file_origin = foreign
        client = client_for(
            server.base_url, trusted_link_origins=foreign, auth="bearer", token="s3cret"
        )
        server.requires_token = True
        result = scripted_export(server, tmp_path, FakeClock(), client=client).run()
        polls = server.requests_to("/status/1")
        (file_request,) = server.requests_to("/files/")
    assert result.counts == {"Patient": 2}
    assert {p.headers["Host"] for p in polls} == {f"localhost:{server.port}"}
    assert file_request.headers["Host"] == f"localhost:{server.port}"
    assert file_request.headers["Authorization"] == "Bearer s3cret"


def test_status_and_file_urls_are_rewritten_onto_the_base_when_asked(tmp_path: Path) -> None:
    with FakeBulkServer() as server:
        # HAPI behind a proxy without server_address: it names itself by an address we cannot
        # reach. Every URL it gives must come to the configured base instead.
        server.location_origin = server.file_origin = "http://hapi.internal:8080"
        client = client_for(server.base_url, rewrite_foreign_links=True)
        result = scripted_export(server, tmp_path, FakeClock(), client=client).run()
        polls = server.requests_to("/status/1")
        files = server.requests_to("/files/")
    assert result.counts == {"Patient": 2}
    assert polls and {p.headers["Host"] for p in polls} == {f"127.0.0.1:{server.port}"}
    assert [f.path for f in files] == ["/files/Patient.ndjson"]


def test_kick_off_must_be_asynchronous(tmp_path: Path) -> None:
    class Synchronous(FakeBulkServer):
        def handle(self, handler: BaseHTTPRequestHandler) -> None:
            read_body(handler)
            send(handler, 200, b'{"resourceType":"Bundle"}')

    with Synchronous() as server, pytest.raises(SourceError, match="not 202 Accepted"):
        scripted_export(server, tmp_path, FakeClock()).run()


# ---------------------------------------------------------------- the command line


def test_cli_run_with_a_bulk_source(bulk_sandbox: SandboxServer, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    downloads = tmp_path / "bulk"
    env = {**os.environ, "COLUMNS": "160", "FHIRPANEL_BULK_DOWNLOAD_DIR": str(downloads)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhirpanel",
            "run",
            "--source",
            f"bulk:{bulk_sandbox.base_url}",
            "--as-of",
            AS_OF,
            "--report",
            str(report),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(report.read_text())
    assert data["summary"]["patients"] == 300 and data["as_of"] == AS_OF
    assert "writeback" in data  # a dry run against the server the export came from
    assert leftovers(downloads) == []


def test_cli_bulk_failure_is_one_line_and_exit_10(tmp_path: Path) -> None:
    with FakeBulkServer([(500, {}, outcome("export job crashed", "exception"))]) as server:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "fhirpanel",
                "run",
                "--source",
                f"bulk:{server.base_url}",
                "--as-of",
                AS_OF,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "FHIRPANEL_BULK_DOWNLOAD_DIR": str(tmp_path)},
        )
    assert out.returncode == ExitCode.SOURCE
    assert "Bulk export failed" in out.stderr and "export job crashed" in out.stderr
    assert "Traceback" not in out.stderr
