"""Roster reads on the strict sandbox (a real server on 127.0.0.1 behind fhirpanel's EHR-like
front, fhirpanel/sandbox/strict.py, refusing population searches as Epic and Oracle Health do):
the same report as a population read of what the roster reaches, byte for byte, with zero
population searches; refused comma lists, a 429, a Group the server cuts short, a short URL limit;
unresolvable identifiers and unreadable clinicians as issues; clinicians read by reference where
only their population searches are refused; and incremental passes that poll the roster."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.cli import main
from fhirpanel.config import FhirSettings, Settings
from fhirpanel.errors import SourceError
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.parse import reference_id
from fhirpanel.fhir.source import MemorySource, RosterSource, ServerSource
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
from fhirpanel.report import build_report, write_report
from fhirpanel.run import open_source, run_full
from fhirpanel.sandbox.server import SandboxServer, iter_ndjson_dir
from fhirpanel.sandbox.strict import StrictRules
from fhirpanel.store import Store
from tests.conftest import AS_OF, POPULATION_DIR
from tests.integration.faults import EMPTY_PAGE, FaultProxy
from tests.integration.test_refresh import add_visits, office_visit, pick_moves

AS_OF_DATE = date.fromisoformat(AS_OF)
MRN_SYSTEM = "urn:fhirpanel:sandbox:mrn"
ALL, SUBSET = "all", "subset"
CLINICIAN_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization"})


def committed() -> list[dict[str, Any]]:
    return list(iter_ndjson_dir(POPULATION_DIR))


def patient_ids() -> list[str]:
    return sorted(r["id"] for r in committed() if r["resourceType"] == "Patient")


def subset_ids() -> list[str]:
    return patient_ids()[::3]  # 100 of the 300


def reached(patients: set[str]) -> list[dict[str, Any]]:
    """The committed population as a roster of `patients` reaches it: those patients, their
    encounters and conditions, every clinician and organisation. Resources about no patient on
    the roster (no subject, or a patient the population lacks) are what a population read
    sees and a patient-scoped read cannot."""
    out = []
    for res in committed():
        rtype = res["resourceType"]
        if rtype == "Patient" and res["id"] not in patients:
            continue
        if rtype in ("Encounter", "Condition"):
            subject = reference_id(res.get("subject"), "Patient")
            if subject is None or subject.split("/", 1)[1] not in patients:
                continue
        out.append(res)
    return out


def expected_report(patients: set[str], path: Path) -> bytes:
    """Today's read of that population, as `write_report` writes it."""
    outcome = run_full(Settings.load(env={}), MemorySource(reached(patients)), AS_OF_DATE)
    write_report(build_report(outcome), path)
    return path.read_bytes()


def run_report(tmp_path: Path, name: str, *args: str) -> bytes:
    """`fhirpanel run ... --report` (a dry run), its report without the write-back plan a server
    source adds, as `write_report` writes it."""
    report = tmp_path / f"{name}.json"
    assert main(["run", "--as-of", AS_OF, "--quiet", "--report", str(report), *args]) == 0
    data = orjson.loads(report.read_bytes())
    assert data.pop("writeback")["dry_run"] is True
    plain = tmp_path / f"{name}.plain.json"
    write_report(data, plain)
    return plain.read_bytes()


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads settings from the environment: none from the machine's."""
    for key in list(os.environ):
        if key.startswith("FHIRPANEL_") and key != "FHIRPANEL_LOG_LEVEL":
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def strict_server() -> Iterator[SandboxServer]:
    with SandboxServer(strict=True) as server:
        server.load_ndjson_dir(POPULATION_DIR)
        server.add_group(ALL, server.patient_ids())
        server.add_group(SUBSET, subset_ids())
        yield server


@pytest.fixture
def ehr(strict_server: SandboxServer) -> Iterator[SandboxServer]:
    """The shared strict server with its default rules and fresh counts."""

    def reset() -> None:
        fresh = StrictRules(enabled=True)
        for f in dataclasses.fields(StrictRules):
            setattr(strict_server.rules, f.name, getattr(fresh, f.name))
        strict_server.stats.reset()

    reset()
    yield strict_server
    reset()


@pytest.fixture
def fresh_ehr() -> Iterator[SandboxServer]:
    """A strict server of its own, for tests that change the data."""
    with SandboxServer(strict=True) as server:
        server.load_ndjson_dir(POPULATION_DIR)
        server.add_group(ALL, server.patient_ids())
        yield server


def settings_for(base_url: str, **fhir: Any) -> Settings:
    base = Settings.load(env={})
    return dataclasses.replace(
        base,
        fhir=dataclasses.replace(base.fhir, base_url=base_url, **fhir),
        scheduler=dataclasses.replace(base.scheduler, source=base_url),
    )


# ---------------------------------------------------------------- the same report


def test_a_group_roster_gives_the_population_reads_report(
    ehr: SandboxServer, tmp_path: Path
) -> None:
    expected = expected_report(set(patient_ids()), tmp_path / "expected.json")
    got = run_report(tmp_path, "group", "--source", ehr.base_url, "--roster", f"Group/{ALL}")
    assert got == expected
    stats = ehr.stats.as_dict()
    assert stats["population_searches"] == 0 and stats["refused"] == 0
    assert stats["searches_by_type"]["Encounter"] >= 6  # 300 patients, 50 a batch


def test_the_strict_server_refuses_todays_population_read(ehr: SandboxServer) -> None:
    assert main(["run", "--as-of", AS_OF, "--quiet", "--source", ehr.base_url]) == 11
    assert ehr.stats.refused == 1 and ehr.stats.population_by_type == {"Patient": 1}


def test_a_roster_file_of_ids_and_identifiers_gives_the_subsets_report(
    ehr: SandboxServer, tmp_path: Path
) -> None:
    subset = subset_ids()
    mrns = {
        r["id"]: next(i["value"] for i in r["identifier"] if i["system"] == MRN_SYSTEM)
        for r in committed()
        if r["resourceType"] == "Patient" and r["id"] in subset
    }
    lines = ["patient"]
    for n, pid in enumerate(subset):
        lines.append(f"Patient/{pid}" if n % 2 else f"{MRN_SYSTEM}|{mrns[pid]}")
    roster = tmp_path / "roster.csv"
    roster.write_text("\n".join(lines) + "\n")
    expected = expected_report(set(subset), tmp_path / "expected.json")
    got = run_report(tmp_path, "file", "--source", ehr.base_url, "--roster", str(roster))
    assert got == expected
    by_group = run_report(
        tmp_path, "group", "--source", ehr.base_url, "--roster", f"Group/{SUBSET}"
    )
    assert by_group == expected
    assert ehr.stats.population_searches == 0


# ---------------------------------------------------------------- what the server refuses


def test_a_refused_comma_list_falls_back_to_one_patient_per_request(
    ehr: SandboxServer, tmp_path: Path
) -> None:
    ehr.rules.multi_value = False
    expected = expected_report(set(subset_ids()), tmp_path / "expected.json")
    got = run_report(tmp_path, "single", "--source", ehr.base_url, "--roster", f"Group/{SUBSET}")
    assert got == expected
    stats = ehr.stats.as_dict()
    # Learned on the first refusal, remembered for the rest of the read: only the batches
    # already in flight (fhir.roster_concurrency = 4, two queued each) meet it again.
    assert 1 <= stats["list_refused"] <= 8
    assert stats["searches_by_type"]["Encounter"] >= 100  # one patient a request
    assert stats["population_searches"] == 0


def test_a_429_mid_read_is_survived(ehr: SandboxServer, tmp_path: Path) -> None:
    ehr.rules.throttle_at = frozenset({8, 9, 10})
    settings = settings_for(ehr.base_url, roster=f"Group/{SUBSET}")
    source = open_source(ehr.base_url, settings)
    outcome = run_full(settings, source, AS_OF_DATE)
    assert ehr.stats.throttled == 3
    assert source.client.stats.retries >= 3  # type: ignore[attr-defined]
    write_report(build_report(outcome), tmp_path / "got.json")
    expected = expected_report(set(subset_ids()), tmp_path / "expected.json")
    assert (tmp_path / "got.json").read_bytes() == expected


def test_a_group_the_server_cuts_short_is_completed(ehr: SandboxServer, tmp_path: Path) -> None:
    ehr.rules.group_member_limit = 40
    settings = settings_for(ehr.base_url, roster=f"Group/{ALL}")
    source = open_source(ehr.base_url, settings)
    assert isinstance(source, RosterSource)
    assert len(source.patient_ids()) == 300  # 40 listed, the rest by _has:Group:member
    assert ehr.stats.population_searches == 0


def test_a_short_url_limit_makes_smaller_batches(ehr: SandboxServer, tmp_path: Path) -> None:
    settings = settings_for(ehr.base_url, roster=f"Group/{SUBSET}", max_url_length=400)
    outcome = run_full(settings, open_source(ehr.base_url, settings), AS_OF_DATE)
    write_report(build_report(outcome), tmp_path / "got.json")
    assert (tmp_path / "got.json").read_bytes() == expected_report(
        set(subset_ids()), tmp_path / "expected.json"
    )
    # About 26 ids fit in 400 characters (pat-000123 and %2C: 13 each): 4 batches, not 2.
    assert ehr.stats.searches_by_type["Condition"] >= 4


def test_the_encounter_date_floor_keeps_the_assignments(ehr: SandboxServer, tmp_path: Path) -> None:
    settings = settings_for(ehr.base_url, roster=f"Group/{ALL}")
    source = open_source(ehr.base_url, settings)
    assert isinstance(source, RosterSource)
    source.set_encounter_floor(date(2025, 5, 23))  # the Four Cut's 18 months, exactly
    floored = build_report(run_full(settings, source, AS_OF_DATE))
    whole = orjson.loads(expected_report(set(patient_ids()), tmp_path / "expected.json"))
    assert (
        floored["summary"]["resources_read"]["Encounter"]
        < (whole["summary"]["resources_read"]["Encounter"])
    )

    def decisions(report: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (p["patient"], p["status"], p.get("practitioner"), p.get("rule"), p.get("step"))
            for p in report["patients"]
        ]

    assert decisions(floored) == decisions(whole)


def test_a_batch_that_comes_back_short_fails_the_read(ehr: SandboxServer) -> None:
    """The data-safety checks hold per batch: a page of one batch's Encounters emptied on the
    way (its `total` no longer made up) fails the whole read."""
    with FaultProxy(ehr.base_url) as proxy:
        proxy.on_path("/Encounter?", "_offset=", fault=EMPTY_PAGE)
        settings = settings_for(proxy.base_url, roster=f"Group/{ALL}", max_retries=1)
        source = open_source(proxy.base_url, settings)
        with pytest.raises(SourceError, match="Encounter search: server said total"):
            run_full(settings, source, AS_OF_DATE)
        source.close()  # type: ignore[attr-defined]


# ---------------------------------------------------------------- issues, not failures


def test_unresolvable_identifiers_and_unreadable_clinicians_are_issues(
    fresh_ehr: SandboxServer, tmp_path: Path
) -> None:
    patients = [r for r in committed() if r["resourceType"] == "Patient"]
    first, second = patients[0], patients[1]
    mrn = next(i["value"] for i in second["identifier"] if i["system"] == MRN_SYSTEM)
    twin = {**second, "id": "twin-of-second"}  # shares the second patient's MRN
    fresh_ehr.load([twin])
    encounters = [r for r in committed() if r["resourceType"] == "Encounter"]
    seen = next(
        reference_id(p.get("individual"), "Practitioner")
        for e in encounters
        if reference_id(e.get("subject"), "Patient") == f"Patient/{first['id']}"
        for p in e.get("participant") or ()
        if reference_id(p.get("individual"), "Practitioner")
    )
    assert seen is not None
    with FhirClient(FhirSettings(base_url=fresh_ehr.base_url)) as client:
        client.request("DELETE", seen)
    roster = tmp_path / "r.csv"
    roster.write_text(f"{first['id']}\n{MRN_SYSTEM}|NO-SUCH-MRN\n{MRN_SYSTEM}|{mrn}\nnot an id!\n")
    report = tmp_path / "report.json"
    code = main(
        [
            "run",
            "--as-of",
            AS_OF,
            "--quiet",
            "--source",
            fresh_ehr.base_url,
            "--roster",
            str(roster),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    data = orjson.loads(report.read_bytes())
    issues = {(i["resource"], i["problem"]) for i in data["issues"]}
    assert ("roster r.csv line 2", f"identifier ({MRN_SYSTEM}) matches no patient") in issues
    assert (
        "roster r.csv line 3",
        f"identifier ({MRN_SYSTEM}) matches 2 patients: left out",
    ) in issues
    assert (
        "roster r.csv line 4",
        "neither a Patient id nor a system|value identifier",
    ) in issues
    assert any(r == seen and "could not be read (HTTP 4" in p for r, p in issues)
    assert mrn not in report.read_text()  # identifier values stay out of the report
    assert [p["patient"] for p in data["patients"]] == [f"Patient/{first['id']}"]
    assert fresh_ehr.stats.population_searches == 0


def test_refused_clinician_searches_are_read_by_reference(
    ehr: SandboxServer, tmp_path: Path
) -> None:
    """A server that lists patients but not clinicians: today's population read, with
    Practitioner, PractitionerRole and Organization read by the references to them."""
    ehr.rules.only = CLINICIAN_TYPES
    settings = settings_for(ehr.base_url)
    with FhirClient(settings.fhir) as client:
        source = ServerSource(client)
        by_reference = build_report(run_full(settings, source, AS_OF_DATE))
        assert set(source.refused) == CLINICIAN_TYPES
    ehr.rules.enabled = False
    with FhirClient(settings.fhir) as client:
        listed = build_report(run_full(settings, ServerSource(client), AS_OF_DATE))
    assert by_reference == listed
    assert ehr.stats.refused == 3


# ---------------------------------------------------------------- refreshes


def test_full_and_incremental_refresh_on_a_roster(fresh_ehr: SandboxServer, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        settings = settings_for(fresh_ehr.base_url, roster=f"Group/{ALL}")
        full = full_refresh(settings, store, as_of=AS_OF_DATE, write=True)
        assert full.status == "succeeded", full.error
        assert len(store.patient_ids()) == 300 and full.counts["written"] > 0
        assert fresh_ehr.stats.population_searches == 0

        # New visits move three patients; a new patient joins the roster with a visit.
        moves = pick_moves(store, 3)
        add_visits(fresh_ehr.base_url, moves, store)
        newcomer = {
            "resourceType": "Patient",
            "id": "newcomer-1",
            "active": True,
            "gender": "female",
            "birthDate": "1960-04-01",
        }
        doctor = next(iter(moves.values()))
        with FhirClient(FhirSettings(base_url=fresh_ehr.base_url)) as client:
            client.update(newcomer)
            for n in range(2):
                visit = office_visit(
                    "Patient/newcomer-1", doctor, AS_OF_DATE - timedelta(days=3), n
                )
                client.create(visit)
        fresh_ehr.add_group(ALL, [*fresh_ehr.patient_ids()])

        result = incremental_refresh(settings, store, as_of=AS_OF_DATE)
        assert result.status == "succeeded", result.error
        assert set(result.patients) == {*moves, "Patient/newcomer-1"}
        assert result.counts["roster_joined"] == 1
        for patient, target in moves.items():
            state = store.patient_state(patient)
            assert state is not None and state["practitioner"] == target
        assert fresh_ehr.stats.population_searches == 0

        quiet = incremental_refresh(settings, store, as_of=AS_OF_DATE)
        assert quiet.status == "succeeded" and quiet.patients == ()
        assert fresh_ehr.stats.population_searches == 0
    finally:
        store.close()
