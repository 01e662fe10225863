"""One scenario suite, every real server (issue 13 item 3): fhirpanel's CLI, run as a user runs
it (subprocess, a fresh SQLite store per test), against each server of
tests/interop/scenario_servers.py loaded with the committed population.

Each server is started once per session. Tests that only read come first and share the loaded
server; a test that writes marks it dirty, and the next test gets the committed population back
(a restart, or HAPI's `$expunge` and a reload). Writes build on each other only inside one test
(`test_write_lifecycle`). A scenario a server cannot do is skipped with the reason its
CapabilityStatement gives. Results go to tests/output/interop/compat.json
(tests/interop/compat.py); `python -m tests.interop.compat` renders the table in docs/interop.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.writeback.identity import CARE_TEAM_KIND, identifier_value
from tests.integration.faults import FaultProxy, Status
from tests.interop.scenario_servers import (
    POPULATION,
    ROOT,
    SERVER_NAMES,
    Handle,
    entry,
    get_json,
    next_page_fragment,
    post_json,
    session_handles,
)

pytest_plugins = ("tests.interop.compat",)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

AS_OF = "2026-11-22"  # the committed population's date
LATER = "2027-03-01"
LATEST = "2027-03-05"
ID_SYSTEM = "urn:fhirpanel:id"
CLINICIAN = {"role": [{"text": "Care manager"}], "member": {"reference": "Practitioner/prac-0019"}}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def _handles() -> Iterator[dict[str, Handle]]:
    with session_handles() as handles:
        yield handles


@pytest.fixture(scope="session", params=SERVER_NAMES)
def server_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    reason = entry(name).available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} cannot run here: {reason}")
        pytest.skip(f"{name} cannot run here: {reason}")
    return name


@pytest.fixture
def server(server_name: str, _handles: dict[str, Handle], request: pytest.FixtureRequest) -> Handle:
    """The session's server of this name, started and loaded with the committed population
    (reloaded first when an earlier test wrote to it)."""
    handle = _handles.setdefault(server_name, Handle(entry(server_name)))
    try:
        handle.start()
        lacks = getattr(request.function, "requires", None)
        if lacks is not None:  # skipped before the population is reloaded for nothing
            reason = getattr(handle, lacks)()
            if reason:
                pytest.skip(reason)
        handle.clean()
    except pytest.skip.Exception:
        raise
    except Exception as exc:  # a server that cannot start or load: the reason, not a traceback
        pytest.fail(f"{server_name}: could not start and load: {exc}")
    note_server(
        server_name,
        software=handle.software(),
        startup_seconds=handle.startup_seconds,
        load_seconds=handle.load_seconds,
        rss_mib=handle.rss_mib(),
        describe=handle.entry.describe,
    )
    return handle


@pytest.fixture(scope="session")
def ndjson_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("ndjson") / "report.json"
    cli(
        "run",
        "--source",
        f"ndjson:{POPULATION}",
        "--as-of",
        AS_OF,
        "--report",
        str(path),
        "--quiet",
    )
    return dict(json.loads(path.read_bytes()))


# --------------------------------------------------------------------------- helpers


def note_server(name: str, **info: Any) -> None:
    """compat.note_server, imported late: pytest imports the plugin (and rewrites its asserts)
    after this module."""
    from tests.interop.compat import note_server as note

    note(name, **info)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    """`fhirpanel ARGS` as a user runs it, with none of this shell's FHIRPANEL_ settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")}
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "fhirpanel", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode in ok, (
        f"fhirpanel {' '.join(args)} exited {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def run(
    base: str,
    as_of: str,
    tmp: Path,
    name: str,
    *extra: str,
    env: dict[str, str] | None = None,
    ok: tuple[int, ...] = (0,),
) -> dict[str, Any]:
    """`fhirpanel run` (dry unless --write is in extra); the JSON report, with the exit code and
    stderr under `_exit` and `_stderr`."""
    report = tmp / f"{name}.json"
    args = ["run", "--source", base, "--as-of", as_of, "--report", str(report), "--quiet"]
    if "--write" in extra:
        args += ["--database", f"sqlite:///{tmp / 'store.db'}"]
    done = cli(*args, *extra, env=env, ok=ok)
    data = dict(json.loads(report.read_bytes())) if report.is_file() else {}
    data["_exit"], data["_stderr"] = done.returncode, done.stderr
    report.unlink(missing_ok=True)  # a held run writes no report: never read a stale one
    return data


def counts(report: dict[str, Any], rtype: str) -> dict[str, int]:
    return dict(report["writeback"]["counts"].get(rtype) or {})


def writes(report: dict[str, Any]) -> int:
    return int(report["writeback"]["written"])


def search(base: str, query: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    url: str | None = f"{base}/{query}"
    for _ in range(100):
        if url is None:
            break
        bundle = get_json(url)
        out.extend(e["resource"] for e in bundle.get("entry") or () if "resource" in e)
        url = next(
            (x["url"] for x in bundle.get("link") or () if x.get("relation") == "next"), None
        )
    return out


def count(base: str, rtype: str, query: str = "") -> int:
    return int(get_json(f"{base}/{rtype}?_summary=count{query}")["total"])


def team(base: str, patient: str) -> list[dict[str, Any]]:
    value = identifier_value(CARE_TEAM_KIND, patient)
    return search(base, f"CareTeam?identifier={ID_SYSTEM}|{value}")


def put(base: str, resource: dict[str, Any]) -> None:
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - loopback test servers only
        f"{base}/{resource['resourceType']}/{resource['id']}",
        method="PUT",
        data=json.dumps(resource).encode(),
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        assert response.status in (200, 201)


def refusal_notes(report: dict[str, Any]) -> list[str]:
    """Write-back issues that are the server's transaction size limit (Medplum atomic): fhirpanel
    halves its batches and says so; anything else is a finding."""
    return [
        i["problem"]
        for i in report["writeback"]["issues"]
        if i["resource"] == "write-back" and "refused a transaction" in i["problem"]
    ]


def other_issues(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        i
        for i in report["writeback"]["issues"]
        if not (i["resource"] == "write-back" and "refused a transaction" in i["problem"])
    ]


class HookProxy(FaultProxy):
    """A FaultProxy that records every forwarded request (method, path, headers, JSON body) and
    calls `before(method, path, body)` before forwarding it: a clinician's edit between
    fhirpanel's read and its write."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.sent: list[tuple[str, str, dict[str, str], Any]] = []
        self.answers: list[tuple[str, int, dict[str, str]]] = []
        self.before: Callable[[str, str, Any], None] | None = None

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        self.sent.append((handler.command, handler.path, dict(handler.headers.items()), parsed))
        if self.before is not None and handler.command in ("POST", "PUT"):
            self.before(handler.command, handler.path, parsed)
        # Uncompressed answers: FaultProxy moves the server's own base URL in bodies onto the
        # proxy (HAPI gzips for a client that accepts it, and its paging links would escape).
        del handler.headers["Accept-Encoding"]
        status, headers, data = super()._forward(handler, body)
        self.answers.append((handler.path, status, dict(headers)))
        return status, headers, data

    def updates(self) -> list[tuple[str, str | None]]:
        """Every `PUT Type/id` fhirpanel sent (in a Bundle or alone): (url, its If-Match)."""
        out: list[tuple[str, str | None]] = []
        for method, path, headers, body in self.sent:
            if isinstance(body, dict) and body.get("resourceType") == "Bundle":
                for e in body.get("entry") or ():
                    req = e.get("request") or {}
                    if req.get("method") == "PUT" and "?" not in str(req.get("url")):
                        out.append((str(req["url"]), req.get("ifMatch")))
            elif method == "PUT" and "?" not in path.rsplit("/", 2)[-1]:
                out.append((path, headers.get("If-Match")))
        return out


def entries_of(method: str, path: str, body: Any) -> list[dict[str, Any]]:
    """The requests in what fhirpanel sent: a Bundle's entries, or the request itself."""
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return [e for e in body.get("entry") or () if isinstance(e, dict)]
    tail = path.split("/fhir", 1)[-1].lstrip("/")
    tail = tail.split("/R4/", 1)[-1] if "/R4/" in path else tail
    return [{"request": {"method": method, "url": tail}, "resource": body}]


# --------------------------------------------------------------------------- read-only scenarios


def test_load_population(server: Handle) -> None:
    statuses = server.load_statuses
    assert sum(statuses.values()) == 3976 and all(k.startswith("2") for k in statuses)
    per_type: dict[str, int] = {}
    for path in sorted((POPULATION / "bundles").glob("transaction-*.json")):
        for e in json.loads(path.read_text())["entry"]:
            rtype = e["resource"]["resourceType"]
            per_type[rtype] = per_type.get(rtype, 0) + 1
    assert {rtype: count(server.base_url, rtype) for rtype in per_type} == per_type
    assert per_type["Patient"] == 300


def test_check_server(server: Handle, record_property: Callable[[str, Any], None]) -> None:
    done = cli("check-server", server.base_url, "--json", ok=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    check = json.loads(done.stdout)
    note_server(
        server.name, verdict=check["verdict"], transaction_size=check.get("transaction_size")
    )
    assert check["ok"], check["verdict"]


def dry_report(server: Handle, tmp: Path) -> dict[str, Any]:
    cached = server.cache.get("dry")
    if cached is None:
        cached = server.cache["dry"] = run(server.base_url, AS_OF, tmp, "dry")
    return dict(cached)


def without_writeback(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("writeback", "_exit", "_stderr")}


def test_dry_run_report_equals_ndjson(
    server: Handle, ndjson_report: dict[str, Any], tmp_path: Path
) -> None:
    """Byte for byte, except: (1) `writeback` (the dry-run plan a server source adds; NDJSON has
    no server to plan against); (2) `issues` and `summary.issues`: the NDJSON files hold 42
    malformed records the bundles leave out (servers refuse them), so the server's issues are
    exactly the NDJSON issues whose resource the bundles carry, in the same order."""
    from fhirpanel.report import write_report

    report = dry_report(server, tmp_path)
    in_bundles = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for path in sorted((POPULATION / "bundles").glob("transaction-*.json"))
        for e in json.loads(path.read_text())["entry"]
    }
    expected = json.loads(json.dumps(ndjson_report))
    expected["issues"] = [i for i in ndjson_report["issues"] if i["resource"] in in_bundles]
    expected["summary"]["issues"] = len(expected["issues"])
    assert len(ndjson_report["issues"]) - len(expected["issues"]) == 23
    differing = sorted(
        k
        for k in set(report) | set(ndjson_report)
        if k not in ("_exit", "_stderr") and report.get(k) != ndjson_report.get(k)
    )
    assert differing == ["issues", "summary", "writeback"]
    assert {
        k for k in report["summary"] if report["summary"][k] != ndjson_report["summary"].get(k)
    } == {"issues"}
    write_report(without_writeback(report), tmp_path / "server.json")
    write_report(expected, tmp_path / "ndjson.json")
    assert (tmp_path / "server.json").read_bytes() == (tmp_path / "ndjson.json").read_bytes()
    assert report["writeback"]["dry_run"] is True
    assert set(report["writeback"]["requests"]["by_method"]) == {"GET"}


def test_expired_search_page(server: Handle, tmp_path: Path) -> None:
    """A 410 on the first `next` page (HAPI's answer for an evicted search): the read restarts
    that search once from its first page and the report is the same."""
    fragment = next_page_fragment(server.base_url)
    with HookProxy(server.base_url) as proxy:
        proxy.on_path(fragment, fault=Status(410), times=1)
        report = run(
            proxy.base_url, AS_OF, tmp_path, "expired", env={"FHIRPANEL_LOG_LEVEL": "WARNING"}
        )
        gone = proxy.arrivals_for(lambda a: a.fault == "410")
    assert len(gone) == 1, f"no next page ({fragment}) was requested"
    assert report["_stderr"].count("restarting from the first page") == 1, report["_stderr"]
    assert without_writeback(report) == without_writeback(dry_report(server, tmp_path))


def test_bulk_export(
    server: Handle, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    began = time.monotonic()
    with HookProxy(server.base_url) as proxy:
        # HAPI asks for 120 s between polls even for this small export: poll every 3 s here
        # (bulk.max_retry_after), as an operator in a hurry may.
        report = run(
            f"bulk:{proxy.base_url}",
            AS_OF,
            tmp_path,
            "bulk",
            env={"FHIRPANEL_BULK_MAX_RETRY_AFTER": "3"},
        )
        waits = [h.get("Retry-After") for _, status, h in proxy.answers if status == 202]
    seconds = time.monotonic() - began
    assert without_writeback(report) == without_writeback(dry_report(server, tmp_path))
    slow = [w for w in waits if w and w.isdigit() and int(w) >= 30]
    if slow:
        record_property(
            "compat",
            f"known limit: the server answers status polls with "
            f"Retry-After: {max(slow)}, which fhirpanel honours (a wait "
            f"of {max(slow)} s per poll); workaround: "
            f"bulk.max_retry_after (3 s: the export took {seconds:.0f} s), "
            f"or none needed for a nightly full refresh",
        )


test_bulk_export.requires = "lacks_export"  # type: ignore[attr-defined]

# --------------------------------------------------------------------------- writing scenarios


def test_write_lifecycle(
    server: Handle, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """--write; a rerun that writes nothing; a later as-of that updates with If-Match, with a
    clinician editing one CareTeam between fhirpanel's read and its write (the edit survives);
    a PCP change; the optional RiskAssessment/Group/Provenance. One server state, in order."""
    base = server.base_url
    server.dirty = True

    def step(name: str) -> None:
        record_property("compat_step", name)

    # 1. --write
    first = run(base, AS_OF, tmp_path, "write", "--write")
    assigned = first["summary"]["assigned"]
    assert counts(first, "CareTeam")["create"] == assigned == 248
    assert counts(first, "CarePlan")["create"] > 20
    assert first["writeback"]["counts"]["CareTeam"]["failed"] == 0
    assert other_issues(first) == []
    for note in refusal_notes(first):
        # The smallest size the run settled on avoids even the first refusal.
        smallest = min(
            (first["writeback"].get("batch_sizes") or {}).values(),
            default=first["writeback"]["batch_size"],
        )
        record_property(
            "compat",
            f"known limit: {note}; workaround (to avoid even the one "
            f"refusal): writeback.batch_size = {smallest}",
        )
    assert count(base, "CareTeam") == assigned
    assert count(base, "Provenance") == first["writeback"]["provenance"] >= 1
    step("write")

    # 2. a rerun writes nothing
    again = run(base, AS_OF, tmp_path, "rerun", "--write")
    assert writes(again) == 0 and set(again["writeback"]["requests"]["by_method"]) == {"GET"}
    step("rerun")

    # 3. a later as-of: updates with If-Match; a clinician edits one team first
    edited: dict[str, Any] = {}

    def clinician(method: str, path: str, body: Any) -> None:
        if edited:
            return
        for e in entries_of(method, path, body):
            url = str((e.get("request") or {}).get("url", ""))
            if url.startswith("CareTeam/") and "?" not in url:
                current = get_json(f"{base}/{url}")
                current["participant"] = [*current.get("participant", []), CLINICIAN]
                put(base, current)
                edited.update(id=current["id"], version=current["meta"]["versionId"])
                return

    with HookProxy(base) as proxy:
        proxy.before = clinician
        later = run(proxy.base_url, LATER, tmp_path, "later", "--write", "--accept-change")
        updates = proxy.updates()
    assert edited, "fhirpanel sent no CareTeam update at the later as-of"
    assert counts(later, "CareTeam")["update"] >= 1 and counts(later, "CareTeam")["failed"] == 0
    assert updates and all(match for _, match in updates), updates
    assert other_issues(later) == []
    step("later_as_of")
    final = get_json(f"{base}/CareTeam/{edited['id']}")
    assert CLINICIAN in [{k: v for k, v in p.items() if k != "id"} for p in final["participant"]], (
        final["participant"]
    )
    assert later["writeback"]["conflicts_resolved"] >= 1
    settled = run(base, LATER, tmp_path, "settled", "--write")
    assert writes(settled) == 0, settled["writeback"]["counts"]
    step("stale_if_match")

    # 4. a PCP change: visits to another family-medicine clinician
    from tests.integration.test_refresh import office_visit

    moved = next(
        p
        for p in later["patients"]
        if p["status"] == "assigned"
        and p["rule"] in ("plurality", "single-provider")
        and not p.get("tie_broken")
    )
    patient, old = moved["patient"], moved["practitioner"]
    roles = search(base, "PractitionerRole?_count=100")
    new = next(
        r["practitioner"]["reference"]
        for r in sorted(roles, key=lambda r: r["id"])
        if r["practitioner"]["reference"] != old
        and any(
            c.get("code") == "207Q00000X"
            for s in r.get("specialty") or ()
            for c in s.get("coding") or ()
        )
    )
    day = date.fromisoformat(LATEST)
    for n in range(max(moved["visits"].values()) + 2):
        status, answer = post_json(
            f"{base}/Encounter", office_visit(patient, new, day - timedelta(days=3 + n), n)
        )
        assert status == 201, answer
    pcp = run(base, LATEST, tmp_path, "pcp", "--write", "--accept-change")
    [after] = team(base, patient)
    pcps = [
        p
        for p in after["participant"]
        if str(p["member"]["reference"]).startswith(("Practitioner/", "PractitionerRole/"))
    ]
    ended = [p for p in pcps if p.get("period", {}).get("end")]
    current = [p for p in pcps if not p.get("period", {}).get("end")]
    assert len(ended) >= 1 and ended[-1]["period"]["end"] == LATEST, pcps
    assert len(current) == 1 and current[0]["period"]["start"] == LATEST, pcps
    assert counts(pcp, "CareTeam")["update"] >= 1 and other_issues(pcp) == []
    step("pcp_change")

    # 5. the optional RiskAssessment and attribution Groups (and their Provenance)
    optional = {
        "FHIRPANEL_WRITEBACK_RISK_ASSESSMENT": "true",
        "FHIRPANEL_WRITEBACK_ATTRIBUTION_GROUP": "true",
    }
    provenance_before = count(base, "Provenance")
    extra = run(base, LATEST, tmp_path, "optional", "--write", env=optional)
    not_excluded = extra["summary"]["patients"] - extra["summary"]["excluded"]
    assert counts(extra, "RiskAssessment")["create"] == not_excluded
    assert counts(extra, "Group")["create"] >= 2
    assert count(base, "RiskAssessment") == not_excluded
    assert count(base, "Provenance") == provenance_before + extra["writeback"]["provenance"]
    assert other_issues(extra) == []
    assert writes(run(base, LATEST, tmp_path, "optional-again", "--write", env=optional)) == 0
    step("optional")


def test_conditional_update_two_matches(server: Handle, tmp_path: Path) -> None:
    """Between fhirpanel's read (no CareTeam yet) and its conditional update, two CareTeams with
    the same identifier appear: the conditional update meets two matches. fhirpanel must report
    it and must not create a third."""
    base = server.base_url
    server.dirty = True
    duplicated: dict[str, Any] = {}

    def twice(method: str, path: str, body: Any) -> None:
        if duplicated:
            return
        for e in entries_of(method, path, body):
            req = e.get("request") or {}
            if req.get("method") == "PUT" and str(req.get("url", "")).startswith(
                "CareTeam?identifier="
            ):
                resource = {k: v for k, v in e["resource"].items() if k != "id"}
                for _ in range(2):
                    status, answer = post_json(f"{base}/CareTeam", resource)
                    assert status == 201, answer
                duplicated.update(url=req["url"], subject=resource["subject"]["reference"])
                return

    with HookProxy(base) as proxy:
        proxy.before = twice
        report = run(proxy.base_url, AS_OF, tmp_path, "dup", "--write", ok=(0, 13))
    assert duplicated, "fhirpanel sent no conditional update of a CareTeam"
    teams = team(base, duplicated["subject"])
    assert len(teams) == 2, f"{len(teams)} CareTeams for {duplicated['subject']}"
    said = [
        i
        for i in report["writeback"]["issues"]
        if duplicated["subject"].split("/")[1] in i["resource"]
        or "share this identifier" in i["problem"]
    ]
    assert said, report["writeback"]["issues"]
    assert count(base, "CareTeam") == report["summary"]["assigned"] + 1


def test_refresh_full_and_incremental(server: Handle, tmp_path: Path) -> None:
    from fhirpanel.store import Store
    from tests.integration.test_refresh import add_visits, pick_moves, team_practitioner

    base = server.base_url
    server.dirty = True
    db = f"sqlite:///{tmp_path / 'state.db'}"
    full = json.loads(
        cli(
            "refresh", "--full", "--source", base, "--as-of", AS_OF, "--database", db, "--json"
        ).stdout
    )
    assert full["status"] == "succeeded", full
    store = Store(db)
    try:
        moves = pick_moves(store, 2)
        add_visits(base, moves, store)
        inc = json.loads(
            cli("refresh", "--source", base, "--as-of", AS_OF, "--database", db, "--json").stdout
        )
        assert inc["status"] == "succeeded", inc
        assert inc["counts"]["writeback"]["CareTeam"]["update"] == 2, inc["counts"]
        for patient, target in moves.items():
            assert (store.patient_state(patient) or {})["practitioner"] == target
            assert team_practitioner(base, patient) == target
        quiet = json.loads(
            cli("refresh", "--source", base, "--as-of", AS_OF, "--database", db, "--json").stdout
        )
        assert quiet["status"] == "succeeded" and not quiet["counts"].get("written"), quiet
    finally:
        store.close()


def test_worker_subscription(server: Handle, tmp_path: Path) -> None:
    """The worker registers its rest-hook Subscription; a new encounter moves a patient through
    the notification; SIGTERM ends it cleanly and removes the Subscription."""
    from fhirpanel.store import Store
    from tests.integration.test_refresh import add_visits, pick_moves, team_practitioner

    base = server.base_url
    server.dirty = True
    db = tmp_path / "state.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")}
    env.update(
        FHIRPANEL_FHIR_BASE_URL=base,
        FHIRPANEL_DATABASE_URL=f"sqlite:///{db}",
        FHIRPANEL_LOG_LEVEL="INFO",
        FHIRPANEL_SCHEDULER_AS_OF=AS_OF,
        FHIRPANEL_SCHEDULER_INCREMENTAL_MINUTES="60",
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhirpanel", "worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    store = Store(f"sqlite:///{db}", upgrade=False)

    def wait(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                f"worker exited {proc.returncode}: {log.read_text()[-2000:]}"
            )
            try:
                if check():
                    return
            except Exception:  # noqa: S110 - the store or server is not ready yet
                pass
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{log.read_text()[-2000:]}")

    try:
        wait(
            lambda: (store.last_run(kind="full") or {}).get("status") == "succeeded",
            "the worker's first full refresh",
        )
        wait(
            lambda: any(s.get("status") == "active" for s in search(base, "Subscription")),
            "an active Subscription",
        )
        moves = pick_moves(store, 1)
        patient, target = next(iter(moves.items()))
        add_visits(base, moves, store)
        wait(
            lambda: team_practitioner(base, patient) == target,
            f"the CareTeam of {patient} to name {target}",
        )
        # The CareTeam is written before the pass commits its run to the store: wait for both.
        wait(
            lambda: (
                "subscription"
                in {
                    r["trigger"]
                    for r in store.runs()
                    if r["kind"] == "incremental" and (r["counts"] or {}).get("patients")
                }
            ),
            "an incremental run triggered by the Subscription, recorded in the store",
        )
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=10)
        store.close()
    assert code == 0, log.read_text()[-2000:]
    assert search(base, "Subscription") == []


test_worker_subscription.requires = "lacks_rest_hook"  # type: ignore[attr-defined]
