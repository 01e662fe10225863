"""`fhirpanel check-server` against the real sandbox server and against replayed HAPI statements.

The replays serve, from a loopback HTTP server, the recorded STU3 CapabilityStatement and the R4
one assembled from HAPI's documentation (sandbox_fixtures/hapi/README.md says how), plus copies
stripped of what fhirpanel needs. The 404 answer to `.well-known/smart-configuration` is built here
in HAPI's OperationOutcome shape, not recorded.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from fhirpanel.checkserver import READ_TYPES, ServerCheck, check_server, judge, render
from fhirpanel.cli import main
from fhirpanel.config import Settings
from fhirpanel.errors import ExitCode, SourceError
from fhirpanel.fhir.capability import parse_capability_statement
from fhirpanel.sandbox.server import SandboxServer, free_port
from tests.conftest import HAPI_DIR
from tests.integration.faults import LoopbackServer, outcome, read_body, send
from tests.integration.medplum_like import MedplumLike

R4_ASSEMBLED = HAPI_DIR / "capability_r4_assembled.json"
STU3_RECORDED = HAPI_DIR / "capabilitystatement-stu3-1.json"


def hermetic(**env: str) -> Settings:
    """Settings from defaults and the given variables only, retrying little (fast failures)."""
    return Settings.load(env=env).with_fhir(
        max_retries=1, backoff_factor=0.01, connect_timeout=2.0, read_timeout=10.0
    )


def load(path: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def finding(check: ServerCheck, area: str, name: str) -> Any:
    matches = [f for f in check.findings if f.area == area and f.name == name]
    assert len(matches) == 1, (area, name, [(f.area, f.name) for f in check.findings])
    return matches[0]


def rendered(check: ServerCheck) -> str:
    console = Console(width=240, record=True, color_system=None)
    render(check, console)
    return console.export_text()


class ReplayServer(LoopbackServer):
    """`/baseR4/metadata` answers `metadata` (a dict, or raw bytes with a content type); the SMART
    document is absent (404), as on HAPI. `/baseR4/Patient` answers a count to `Bearer good`
    only; any other path is a 404."""

    def __init__(self, metadata: dict[str, Any] | bytes, content_type: str = "") -> None:
        super().__init__()
        self.metadata = metadata
        self.content_type = content_type
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.origin}/baseR4"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        read_body(handler)  # a POST (check-server's transaction probe) leaves none behind
        path = urlsplit(handler.path).path
        with self._lock:
            self.requests.append((path, handler.headers.get("Authorization")))
        if path == "/baseR4/metadata":
            if isinstance(self.metadata, bytes):
                send(handler, 200, self.metadata, content_type=self.content_type or "text/html")
            else:
                send(handler, 200, json.dumps(self.metadata).encode())
        elif path == "/baseR4/Patient":
            if handler.headers.get("Authorization") != "Bearer good":
                send(handler, 401, outcome("HAPI-0644: not authorized", code="security"))
            else:
                send(
                    handler,
                    200,
                    json.dumps(
                        {"resourceType": "Bundle", "type": "searchset", "total": 0}
                    ).encode(),
                )
        else:
            send(
                handler,
                404,
                outcome(f"HAPI-0302: Unknown resource type '{path}'", code="not-found"),
            )


@pytest.fixture
def replay(request: pytest.FixtureRequest) -> Iterator[ReplayServer]:
    with ReplayServer(request.param) as server:
        yield server


def without(
    statement: dict[str, Any],
    rtype: str,
    *,
    interactions: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A copy of the statement with some interactions or conditional flags taken off a type."""
    stripped = copy.deepcopy(statement)
    for entry in stripped["rest"][0]["resource"]:
        if entry["type"] == rtype:
            entry["interaction"] = [
                i for i in entry["interaction"] if i["code"] not in interactions
            ]
            for flag in flags:
                entry.pop(flag, None)
    return stripped


# --------------------------------------------------------------------------- the sandbox


def test_the_sandbox_server_offers_everything(loaded_sandbox: SandboxServer) -> None:
    check = check_server(loaded_sandbox.base_url, hermetic())
    assert check.exit_code == ExitCode.OK and check.ok and not check.missing
    assert (check.fhir_version, check.release) == ("4.0.1", "R4")
    for rtype in (
        "Patient",
        "Encounter",
        "Condition",
        "Practitioner",
        "PractitionerRole",
        "Organization",
    ):
        assert finding(check, "read", rtype).status == "yes"
    assert finding(check, "search", "Encounter?patient").status == "yes"
    assert finding(check, "write", "CarePlan?identifier").status == "yes"
    assert "PUT CareTeam?identifier=" in finding(check, "write", "CareTeam").fhirpanel
    assert finding(check, "write", "transaction").status == "yes"
    assert finding(check, "bulk", "$export (system)").status == "yes"
    assert finding(check, "subscriptions", "rest-hook Subscription").status == "yes"
    # sekmet serves a SMART discovery document with a token endpoint on the same origin.
    assert check.smart_configuration is not None
    token = finding(check, "smart", "token endpoint")
    assert token.status == "yes" and token.server.endswith("/auth/token")
    assert finding(check, "smart", "private_key_jwt").status == "yes"

    text = rendered(check)
    assert "SEKMET FHIR R4 Tester" in text and "FHIR 4.0.1 (R4)" in text
    assert "fhirpanel can work with this server (read and write back)" in text
    for line in (
        "Encounter?patient",
        "conditional update",
        "$export (Group)",
        "rest-hook Subscription",
        "RS384 signatures",
    ):
        assert line in text


# --------------------------------------------------------------------------- population searches


def test_the_plain_sandbox_gets_the_population_read(loaded_sandbox: SandboxServer) -> None:
    check = check_server(loaded_sandbox.base_url, hermetic())
    assert check.population == {t: "allowed" for t in READ_TYPES}
    assert finding(check, "read mode", "Patient? (population)").server == "allowed (total 300)"
    rec = check.recommendation
    assert rec is not None and (rec.read_mode, rec.profile) == ("population", "generic")
    assert rec.source.startswith(f"--source {loaded_sandbox.base_url}")
    assert "bulk:" in rec.source  # the sandbox declares a system $export
    assert check.verdict() == "fhirpanel can work with this server (read and write back)"
    assert "Recommended: profile generic (fhir.profile), read mode population" in rendered(check)


def test_the_strict_sandbox_is_read_by_roster(population_dir: Any) -> None:
    with SandboxServer(strict=True) as strict:
        strict.load_ndjson_dir(population_dir)
        check = check_server(strict.base_url, hermetic())
        stats = strict.stats.as_dict()
    assert check.population == {t: "refused" for t in READ_TYPES}
    row = finding(check, "read mode", "Encounter? (population)")
    assert row.status == "no" and "population search is not allowed" in row.server
    assert "read by roster" in row.fhirpanel
    assert (
        "read by reference" in finding(check, "read mode", "Practitioner? (population)").fhirpanel
    )
    rec = check.recommendation
    assert rec is not None and rec.read_mode == "roster" and rec.profile == "generic"
    assert "--roster Group/<ID>" in rec.source and f"bulk:{strict.base_url}/Group/" in rec.source
    # Refused reads are no reason to give up: roster reads need none of them.
    assert check.exit_code == ExitCode.OK and check.ok
    assert "population searches are refused: read by roster" in check.verdict()
    assert check.as_dict()["recommendation"]["read_mode"] == "roster"
    # One count-only request per read type, nothing else refused, no data read.
    assert stats["population_by_type"] == {t: 1 for t in READ_TYPES}
    assert stats["refused"] == len(READ_TYPES)


def test_credentials_on_a_strict_server_are_told_from_its_refusals(population_dir: Any) -> None:
    """Its 403 to `Patient?_summary=count` is about the search, not the credentials."""
    with SandboxServer(strict=True) as strict:
        strict.load_ndjson_dir(population_dir)
        check = check_server(
            strict.base_url, hermetic(FHIRPANEL_FHIR_AUTH="bearer", FHIRPANEL_FHIR_TOKEN="t0k")
        )
    credentials = finding(check, "auth", "credentials (fhir.auth = bearer)")
    assert credentials.status == "yes" and "Encounter?patient=" in credentials.server
    assert check.credentials == "accepted" and check.exit_code == ExitCode.OK
    assert check.recommendation is not None and check.recommendation.read_mode == "roster"


def test_a_vendors_name_picks_its_profile() -> None:
    from fhirpanel.checkserver import PopulationProbe, recommend

    refused = {t: PopulationProbe("refused", "HTTP 403") for t in READ_TYPES}
    allowed = {t: PopulationProbe("allowed", "allowed") for t in READ_TYPES}
    stmt = load(R4_ASSEMBLED)
    for name, profile in (("Epic", "epic"), ("Cerner Millennium", "oracle")):
        caps = parse_capability_statement({**stmt, "software": {"name": name}})
        rec = recommend(caps, refused, "https://ehr.example.org/fhir")
        assert (rec.profile, rec.read_mode) == (profile, "roster")
    hapi = parse_capability_statement(stmt)
    rec = recommend(hapi, allowed, "https://ehr.example.org/fhir")
    assert (rec.profile, rec.read_mode) == ("hapi", "population")


# --------------------------------------------------------------------------- transaction size


def test_the_transaction_probe_finds_the_size_that_works(loaded_sandbox: SandboxServer) -> None:
    check = check_server(loaded_sandbox.base_url, hermetic())
    size = finding(check, "write", "transaction size")
    assert (size.status, size.server, check.transaction_size) == (
        "yes",
        "100 read entries accepted",
        100,
    )
    # Only reads were tried: the finding says write entries may be capped lower, and how a run
    # meets that.
    assert "not a promise for writes" in size.fhirpanel
    assert (
        "Servers may cap write entries lower than reads (Medplum: 50 updates, 8 entries "
        "when one is conditional)" in size.fhirpanel
    )
    assert "adapts on the first refusal" in size.fhirpanel
    assert check.write_limits is None and check.as_dict()["transaction_write_limits"] is None
    # A server that caps every transaction at 30 entries: 100 and 50 refused, 25 accepted.
    with MedplumLike(loaded_sandbox.base_url, max_entries=30) as capped:
        check = check_server(capped.base_url, hermetic())
        posts = capped.arrivals_for(lambda a: a.method == "POST")
        assert [t.entries for t in capped.transactions] == [100, 50, 25]
    assert check.transaction_size == 25 and check.ok
    assert check.as_dict()["transaction_size"] == 25
    size = finding(check, "write", "transaction size")
    assert size.status == "partial" and not size.blocking
    assert size.server.startswith("25 read entries accepted; 100 refused (HTTP 400")
    assert "set writeback.batch_size = 25" in size.fhirpanel
    # Read-only: GET entries, count-only searches for an identifier fhirpanel never writes.
    assert len(posts) == 3 and not capped.arrivals_for(lambda a: a.method in ("PUT", "DELETE"))


def test_the_probe_cannot_see_medplum_write_limits_and_says_so(
    loaded_sandbox: SandboxServer,
) -> None:
    """Medplum's write limits do not apply to read entries: the probe's 100 is accepted, yet a
    write transaction of 100 would be refused. Named Medplum by its CapabilityStatement, the
    finding gives the limits (not a "yes"), and the JSON carries them."""
    with MedplumLike(loaded_sandbox.base_url, software=("medplum", "5.2.13")) as medplum:
        check = check_server(medplum.base_url, hermetic())
        assert [t.entries for t in medplum.transactions] == [100]
        assert not medplum.arrivals_for(lambda a: a.method in ("PUT", "DELETE", "PATCH"))
    assert check.software == "medplum 5.2.13" and check.ok
    assert check.transaction_size == 100
    size = finding(check, "write", "transaction size")
    assert size.status == "partial" and not size.blocking
    assert size.server == (
        "100 read entries accepted; write entries: Medplum's limits "
        "(50 updates, 8 with a conditional entry)"
    )
    assert (
        "refuses a write transaction of more than 50 updates, or of more than 8 entries "
        "when one is conditional" in size.fhirpanel
    )
    assert "expect 8 entries for creates and 50 for updates" in size.fhirpanel
    assert check.as_dict()["transaction_write_limits"] == {"conditional": 8, "plain": 50}
    text = rendered(check)
    assert "100 read entries accepted" in text


def test_the_probe_is_skipped_read_only_or_when_turned_off(loaded_sandbox: SandboxServer) -> None:
    with MedplumLike(loaded_sandbox.base_url) as proxy:
        read_only = check_server(proxy.base_url, hermetic(), read_only=True)
        off = check_server(proxy.base_url, hermetic(FHIRPANEL_WRITEBACK_PROBE_TRANSACTIONS="false"))
        assert proxy.arrivals_for(lambda a: a.method == "POST") == []
    assert read_only.transaction_size is None
    assert not [f for f in read_only.findings if f.name == "transaction size"]
    row = finding(off, "write", "transaction size")
    assert row.status == "unknown" and "probe_transactions = false" in row.fhirpanel
    assert off.as_dict()["transaction_size"] is None


def test_cli_prints_json(loaded_sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-server", loaded_sandbox.base_url, "--json", "--read-only"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] is True and out["exit_code"] == 0
    assert out["read_only"] is True and out["verdict"].endswith("(read only)")
    names = {(f["area"], f["name"]) for f in out["findings"]}
    assert ("read", "Encounter") in names and ("write", "CareTeam") in names


# --------------------------------------------------------------------------- HAPI replays


@pytest.mark.parametrize("replay", [load(R4_ASSEMBLED)], indirect=True)
def test_hapi_r4_statement(replay: ReplayServer) -> None:
    check = check_server(replay.base_url, hermetic())
    assert check.exit_code == ExitCode.OK, check.verdict()
    assert check.software == "HAPI FHIR Server 8.12.0" and check.release == "R4"
    # HAPI declares transaction but not batch; batch is not something fhirpanel needs.
    assert finding(check, "write", "transaction").status == "yes"
    batch = finding(check, "write", "batch")
    assert batch.status == "no" and not batch.blocking
    assert "PUT CarePlan?identifier=" in finding(check, "write", "CarePlan").fhirpanel
    export = {
        n: finding(check, "bulk", n).status
        for n in ("$export (system)", "$export (Patient)", "$export (Group)")
    }
    assert export == {
        "$export (system)": "yes",
        "$export (Patient)": "yes",
        "$export (Group)": "yes",
    }
    # No SMART on a stock HAPI: the discovery document is a 404, which is fine without SMART.
    smart = finding(check, "smart", "SMART configuration")
    assert smart.status == "no" and "HTTP 404" in smart.server and not smart.blocking
    assert check.smart_configuration is None
    # Both documents are public: nothing was sent with credentials. Then the transaction probe
    # (POST to the base), which this replay does not serve: not blocking; then one count-only
    # population search per read type (the 401 to Patient is tried once more, as any 401 is).
    assert list(dict.fromkeys(p for p, _ in replay.requests)) == [
        "/baseR4/metadata",
        "/baseR4/.well-known/smart-configuration",
        "/baseR4",
        *(f"/baseR4/{t}" for t in READ_TYPES),
    ]
    assert check.population["Patient"] == "unknown"  # 401: needs credentials
    assert all(auth is None for _, auth in replay.requests)
    size = finding(check, "write", "transaction size")
    assert size.status == "no" and not size.blocking and "HTTP 404" in size.server
    assert check.transaction_size == 0
    assert "fhirpanel can work with this server" in rendered(check)


@pytest.mark.parametrize("replay", [load(STU3_RECORDED)], indirect=True)
def test_recorded_hapi_stu3_statement_cannot_work(replay: ReplayServer) -> None:
    check = check_server(replay.base_url, hermetic())
    assert check.exit_code == ExitCode.CAPABILITY
    version = finding(check, "server", "FHIR version")
    assert version.blocking and version.server == "3.0.1 (STU3)"
    assert [f"{f.area} {f.name}" for f in check.missing] == ["server FHIR version"]
    # Everything else the 2017 UHN server declares is read as usual.
    assert finding(check, "read", "Encounter").status == "yes"
    assert finding(check, "write", "CareTeam?identifier").status == "yes"
    text = rendered(check)
    assert "HAPI FHIR Server 2.5-SNAPSHOT" in text
    assert "fhirpanel cannot work with this server: missing server FHIR version" in text


@pytest.mark.parametrize(
    "replay",
    [without(load(R4_ASSEMBLED), "CarePlan", interactions=("create", "update"))],
    indirect=True,
)
def test_a_statement_without_careplan_writes_fails_unless_read_only(
    replay: ReplayServer, capsys: pytest.CaptureFixture[str]
) -> None:
    check = check_server(replay.base_url, hermetic())
    assert check.exit_code == ExitCode.CAPABILITY
    assert [f"{f.area} {f.name}" for f in check.missing] == ["write CarePlan"]
    plan = finding(check, "write", "CarePlan")
    assert plan.server == "search-type; no create, update"
    assert "cannot write back CarePlan" in plan.fhirpanel
    assert check_server(replay.base_url, hermetic(), read_only=True).exit_code == ExitCode.OK

    assert main(["check-server", replay.base_url]) == ExitCode.CAPABILITY
    assert "missing write CarePlan" in capsys.readouterr().out


@pytest.mark.parametrize(
    "replay",
    [
        without(
            without(load(R4_ASSEMBLED), "CareTeam", flags=("conditionalUpdate",)),
            "CarePlan",
            flags=("conditionalUpdate", "conditionalCreate"),
        )
    ],
    indirect=True,
)
def test_fallbacks_for_missing_conditional_writes(replay: ReplayServer) -> None:
    check = check_server(replay.base_url, hermetic())
    assert check.exit_code == ExitCode.OK  # fallbacks exist: nothing is required
    assert "If-None-Exist" in finding(check, "write", "CareTeam").fhirpanel
    assert "searches by identifier, then POST" in finding(check, "write", "CarePlan").fhirpanel
    update = finding(check, "write", "conditional update")
    assert update.status == "no" and "CareTeam, CarePlan" in update.fhirpanel
    create = finding(check, "write", "conditional create")
    assert create.status == "partial" and create.fhirpanel.startswith("CarePlan: search by")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("replay", "message"),
    [
        (b"<html><body>Welcome to nginx</body></html>", "does not look like a FHIR server"),
        ({"resourceType": "Patient", "id": "x"}, "expected a CapabilityStatement"),
        ({"hello": "world"}, "expected a CapabilityStatement"),
    ],
    indirect=["replay"],
)
def test_non_fhir_answers_are_clear_errors(
    replay: ReplayServer, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SourceError, match=message):
        check_server(replay.base_url, hermetic())
    assert main(["check-server", replay.base_url]) == ExitCode.SOURCE
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_a_missing_metadata_endpoint_is_a_clear_error() -> None:
    with (
        ReplayServer({}) as server,
        pytest.raises(SourceError, match=r"no FHIR /metadata .* is it the FHIR base URL"),
    ):
        check_server(server.origin + "/not-fhir", hermetic())


def test_an_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    with pytest.raises(SourceError, match="cannot reach a FHIR server at"):
        check_server(url, hermetic())


@pytest.mark.parametrize("replay", [load(R4_ASSEMBLED)], indirect=True)
@pytest.mark.parametrize(
    ("token", "status", "code"), [("good", "yes", ExitCode.OK), ("stale", "no", ExitCode.AUTH)]
)
def test_configured_credentials_are_tried_once(
    replay: ReplayServer, token: str, status: str, code: int
) -> None:
    check = check_server(
        replay.base_url, hermetic(FHIRPANEL_FHIR_AUTH="bearer", FHIRPANEL_FHIR_TOKEN=token)
    )
    credentials = finding(check, "auth", "credentials (fhir.auth = bearer)")
    assert credentials.status == status and check.exit_code == code
    sent = [(p, a) for p, a in replay.requests if p == "/baseR4/Patient"]
    assert sent and all(a == f"Bearer {token}" for _, a in sent)
    # /metadata and the SMART document still went without credentials; the transaction probe
    # (POST to the base) and the population probes only with credentials the server accepted.
    public = ("/baseR4/metadata", "/baseR4/.well-known/smart-configuration")
    assert all(a is None for p, a in replay.requests if p in public)
    probes = [a for p, a in replay.requests if p == "/baseR4"]
    assert probes == ([f"Bearer {token}"] if status == "yes" else [])
    counts = [a for p, a in replay.requests if p == "/baseR4/Encounter"]
    assert counts == ([f"Bearer {token}"] if status == "yes" else [])
    assert token not in json.dumps(check.as_dict())


# --------------------------------------------------------------------------- settings matter


SMART_DOC = {
    "token_endpoint": "https://auth.example.org/token",
    "grant_types_supported": ["client_credentials"],
    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES384"],
    "capabilities": ["permission-v2"],
}


def judged(
    settings: Settings, config: dict[str, Any] | None, read_only: bool = False
) -> ServerCheck:
    caps = parse_capability_statement(load(R4_ASSEMBLED))
    check = ServerCheck(
        url="u",
        fhir_version="4.0.1",
        release="R4",
        software="s",
        read_only=read_only,
        smart_configuration=config,
    )
    check.findings.extend(judge(caps, settings, read_only=read_only, smart_config=config))
    return check


def test_smart_requirements_apply_only_with_smart_auth() -> None:
    assert judged(hermetic(), SMART_DOC).ok  # fhir.auth = none: SMART rows are information
    check = judged(hermetic(FHIRPANEL_FHIR_AUTH="smart"), SMART_DOC)
    assert {f.name for f in check.missing} == {"private_key_jwt", "RS384 signatures"}
    assert finding(check, "smart", "scope syntax").fhirpanel == "set fhir.smart_scope_version = v2"
    es384 = judged(
        hermetic(FHIRPANEL_FHIR_AUTH="smart", FHIRPANEL_FHIR_SMART_ALGORITHM="ES384"), SMART_DOC
    )
    assert finding(es384, "smart", "ES384 signatures").status == "yes"
    # No discovery document and no token URL in settings: no way to get a token.
    bare = judged(hermetic(FHIRPANEL_FHIR_AUTH="smart"), None)
    assert "token endpoint" in {f.name for f in bare.missing}
    given = judged(
        hermetic(
            FHIRPANEL_FHIR_AUTH="smart", FHIRPANEL_FHIR_SMART_TOKEN_URL="https://auth.example.org/t"
        ),
        None,
    )
    assert "token endpoint" not in {f.name for f in given.missing}


def test_optional_writes_and_bulk_sources_follow_the_settings() -> None:
    caps_doc = without(load(R4_ASSEMBLED), "RiskAssessment", interactions=("update",))
    caps = parse_capability_statement(caps_doc)
    off = judge(caps, hermetic())
    assert not [f for f in off if f.blocking]
    on = judge(caps, hermetic(FHIRPANEL_WRITEBACK_RISK_ASSESSMENT="true"))
    assert [f.name for f in on if f.blocking] == ["RiskAssessment"]

    statement = load(R4_ASSEMBLED)
    rest = statement["rest"][0]
    rest["operation"] = [op for op in rest["operation"] if op["name"] != "export"]
    for entry in rest["resource"]:
        entry["operation"] = [op for op in entry["operation"] if op["name"] != "export"]
    no_export = parse_capability_statement(statement)
    assert not no_export.export.any
    worker_on_bulk = hermetic(FHIRPANEL_SCHEDULER_SOURCE="bulk:http://127.0.0.1:1/fhir")
    assert [f.name for f in judge(no_export, worker_on_bulk) if f.blocking] == ["$export (system)"]
    on_group = hermetic(FHIRPANEL_SCHEDULER_SOURCE="bulk:http://127.0.0.1:1/fhir/Group/g1")
    assert [f.name for f in judge(no_export, on_group) if f.blocking] == ["$export (Group)"]
    assert not [f for f in judge(no_export, hermetic()) if f.blocking]


@pytest.mark.parametrize("replay", [load(R4_ASSEMBLED)], indirect=True)
def test_unusable_credential_settings_still_show_the_server(
    replay: ReplayServer, tmp_path: Any
) -> None:
    settings = hermetic(
        FHIRPANEL_FHIR_AUTH="bearer", FHIRPANEL_FHIR_TOKEN_FILE=str(tmp_path / "missing-token")
    )
    check = check_server(replay.base_url, settings)
    assert check.exit_code == ExitCode.USAGE and check.credentials == "not tried"
    row = finding(check, "auth", "credentials (fhir.auth = bearer)")
    assert row.blocking and "token_file" in row.server
    assert finding(check, "read", "Patient").status == "yes"  # the statement was still read
