"""Incremental and full refresh against the real sandbox FHIR server and a SQLite store: new
encounters move exactly the patients they belong to, a pass with nothing new writes nothing,
failures leave the watermark in place and the next pass completes the work, and two refreshes
started together give one run and one skip."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.config import FhirSettings, Settings
from fhirpanel.fhir.client import FhirClient
from fhirpanel.jobs import full as full_module
from fhirpanel.jobs.job import RefreshResult
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh, request_run, run_queued
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from fhirpanel.writeback.identity import CARE_TEAM_KIND, identifier_value
from tests.conftest import AS_OF
from tests.integration.faults import ConnectionCut, FaultProxy, outcome, send

AS_OF_DATE = date.fromisoformat(AS_OF)
FAST = {"max_retries": 1, "backoff_factor": 0.01, "backoff_max": 0.05, "retry_budget_seconds": 5.0}


def settings_for(base_url: str, **fhir: Any) -> Settings:
    base = Settings.load(env={})
    return dataclasses.replace(
        base,
        fhir=dataclasses.replace(base.fhir, base_url=base_url, **fhir),
        scheduler=dataclasses.replace(base.scheduler, source=base_url),
    )


@pytest.fixture
def loaded(sandbox: SandboxServer, population_dir: Path) -> SandboxServer:
    sandbox.load_ndjson_dir(population_dir)
    return sandbox


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'state.db'}")
    yield st
    st.close()


@pytest.fixture
def after_full(loaded: SandboxServer, store: Store) -> RefreshResult:
    result = full_refresh(settings_for(loaded.base_url), store, as_of=AS_OF_DATE, write=True)
    assert result.status == "succeeded", result.error
    return result


def office_visit(patient: str, practitioner: str, day: date, n: int) -> dict[str, Any]:
    start = f"{day.isoformat()}T09:{n:02d}:00Z"
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [
            {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "185349003",
                        "display": "Encounter for check up",
                    },
                    {"system": "urn:fhirpanel:sandbox:visit-type", "code": "OFFICE"},
                ]
            }
        ],
        "subject": {"reference": patient},
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "PPRF",
                            }
                        ]
                    }
                ],
                "individual": {"reference": practitioner},
            }
        ],
        "period": {"start": start, "end": start.replace(":00Z", ":30Z")},
    }


def pick_moves(store: Store, count: int) -> dict[str, str]:
    """`count` assigned adults (plurality or single-provider) and, for each, another eligible,
    non-pediatric clinician to move them to."""
    clinicians = [
        c["practitioner"] for c in store.clinicians() if c["eligible"] and not c["pediatric"]
    ]
    moves: dict[str, str] = {}
    for patient in store.patient_ids():
        state = store.patient_state(patient)
        assert state is not None
        if state["status"] != "assigned" or state["rule"] not in ("plurality", "single-provider"):
            continue
        target = next(c for c in clinicians if c != state["practitioner"])
        moves[patient] = target
        if len(moves) == count:
            break
    assert len(moves) == count
    return moves


def add_visits(base_url: str, moves: dict[str, str], store: Store) -> None:
    with FhirClient(FhirSettings(base_url=base_url)) as client:
        for patient, target in moves.items():
            state = store.patient_state(patient)
            assert state is not None
            most = max(state["detail"].get("visits", {}).values(), default=0)
            for n in range(most + 2):  # strictly more visits than anyone else in the window
                client.create(office_visit(patient, target, AS_OF_DATE - timedelta(days=5 + n), n))


def care_team_version(store: Store, patient: str) -> str | None:
    entry = store.ledger_entry("CareTeam", identifier_value(CARE_TEAM_KIND, patient))
    return entry["version"] if entry else None


def server_care_team(base_url: str, patient: str) -> dict[str, Any]:
    with FhirClient(FhirSettings(base_url=base_url)) as client:
        token = f"urn:fhirpanel:id|{identifier_value(CARE_TEAM_KIND, patient)}"
        teams = list(client.search("CareTeam", [("identifier", token)]))
    assert len(teams) == 1
    return teams[0]


def active_pcp(team: dict[str, Any]) -> str | None:
    for participant in team.get("participant") or ():
        period = participant.get("period") or {}
        member = (participant.get("member") or {}).get("reference", "")
        if member.startswith(("Practitioner/", "PractitionerRole/")) and not period.get("end"):
            return str(member)
    return None


def team_practitioner(base_url: str, patient: str) -> str | None:
    """The Practitioner behind the CareTeam's current PCP participant (which may name the
    PractitionerRole)."""
    member = active_pcp(server_care_team(base_url, patient))
    if member and member.startswith("PractitionerRole/"):
        with FhirClient(FhirSettings(base_url=base_url)) as client:
            role = client.read("PractitionerRole", member.split("/", 1)[1])
        return str(role["practitioner"]["reference"])
    return member


# ---------------------------------------------------------------- tests


def test_full_refresh_stores_every_patient_and_the_ledger(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    assert len(store.patient_ids()) == 300
    assert after_full.watermark_after is not None
    assert store.watermark(loaded.base_url) == after_full.watermark_after
    assert after_full.counts["written"] > 0
    assigned = [
        p for p in store.patient_ids() if (store.patient_state(p) or {}).get("status") == "assigned"
    ]
    assert all(care_team_version(store, p) for p in assigned)
    panels = store.clinicians()
    assert sum(c["size"] for c in panels) == len(assigned)
    runs = store.runs()
    assert runs[0]["status"] == "succeeded" and runs[0]["kind"] == "full"


def test_incremental_moves_exactly_the_patients_with_new_encounters(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    settings = settings_for(loaded.base_url)
    before = {p: store.patient_state(p) for p in store.patient_ids()}
    versions = {p: care_team_version(store, p) for p in before}
    moves = pick_moves(store, 3)
    add_visits(loaded.base_url, moves, store)

    result = incremental_refresh(settings, store, as_of=AS_OF_DATE)
    assert result.status == "succeeded", result.error
    assert set(result.patients) == set(moves)
    for patient, target in moves.items():
        state = store.patient_state(patient)
        assert state is not None and state["practitioner"] == target
        assert team_practitioner(loaded.base_url, patient) == target
        history = store.history(patient)
        assert [h["practitioner"] for h in history] == [before[patient]["practitioner"], target]
        assert history[0]["valid_to"] is not None and history[1]["valid_to"] is None
    for patient, state in before.items():
        if patient in moves:
            continue
        now = store.patient_state(patient)
        assert now is not None
        assert (now["practitioner"], now["rule"], now["status"]) == (
            state["practitioner"],
            state["rule"],
            state["status"],
        ), patient
        assert care_team_version(store, patient) == versions[patient], patient
    # Requests grow with the patients touched, not the population: 3 change searches, the
    # clinicians (3 types), 3 batched patient searches, a few writes and CarePlan reads.
    assert result.requests <= 20, result.requests
    counts = result.counts["writeback"]
    assert counts["CareTeam"]["update"] == 3
    assert result.counts["ledger_hits"] >= 3
    panel_sizes = {c["practitioner"]: c["size"] for c in store.clinicians()}
    assert sum(panel_sizes.values()) == sum(
        1 for p in store.patient_ids() if (store.patient_state(p) or {})["status"] == "assigned"
    )

    again = incremental_refresh(settings, store, as_of=AS_OF_DATE)
    assert again.status == "succeeded"
    assert again.patients == ()
    assert again.counts.get("written", 0) == 0
    assert again.watermark_after == result.watermark_after
    assert store.watermark(loaded.base_url) == result.watermark_after
    assert again.requests <= 3


def test_the_same_patient_twice_is_processed_once(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    moves = pick_moves(store, 1)
    add_visits(loaded.base_url, moves, store)  # several encounters, one patient
    add_visits(loaded.base_url, moves, store)
    result = incremental_refresh(settings_for(loaded.base_url), store, as_of=AS_OF_DATE)
    assert result.patients == tuple(moves)
    assert result.counts["writeback"]["CareTeam"]["update"] == 1


def test_a_crash_before_commit_leaves_the_watermark_and_the_next_pass_finishes(
    loaded: SandboxServer, store: Store, after_full: RefreshResult, cut_connection: ConnectionCut
) -> None:
    settings = settings_for(loaded.base_url)
    watermark = store.watermark(loaded.base_url)
    moves = pick_moves(store, 2)
    add_visits(loaded.base_url, moves, store)

    cut_connection.arm(after_batches=0)  # the server goes away at the pass's first write
    crashed = incremental_refresh(settings, store, as_of=AS_OF_DATE)
    cut_connection.disarm()
    assert crashed.status == "failed"
    assert "connection to the FHIR server lost" in (crashed.error or "")
    assert store.watermark(loaded.base_url) == watermark
    assert store.runs()[0]["status"] == "failed"
    assert store.lock_info() is None  # released

    done = incremental_refresh(settings, store, as_of=AS_OF_DATE)
    assert done.status == "succeeded"
    assert set(done.patients) == set(moves)
    assert done.watermark_after != watermark
    for patient, target in moves.items():
        assert (store.patient_state(patient) or {})["practitioner"] == target
        assert team_practitioner(loaded.base_url, patient) == target


class FailWrites(FaultProxy):
    """Passes reads through; answers 500 to every write while `failing` is set."""

    failing = True

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        if self.failing and handler.command in ("POST", "PUT", "DELETE"):
            length = int(handler.headers.get("Content-Length") or 0)
            handler.rfile.read(length)
            send(handler, 500, outcome("injected write failure", code="exception"))
            return
        super().handle(handler)


def test_server_errors_after_the_fetch_keep_the_watermark_and_queue_the_patients(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    moves = pick_moves(store, 2)
    add_visits(loaded.base_url, moves, store)
    with FailWrites(loaded.base_url) as proxy:
        # The watermark and the store are keyed by source: use the proxy as the source.
        settings = settings_for(proxy.base_url, **FAST)
        proxy.failing = False
        full = full_refresh(settings, store, as_of=AS_OF_DATE)
        assert full.status == "succeeded", full.error
        watermark = store.watermark(proxy.base_url)
        more = pick_moves(store, 2)
        add_visits(loaded.base_url, more, store)
        proxy.failing = True
        failed = incremental_refresh(settings, store, as_of=AS_OF_DATE)
        assert failed.status == "partial"
        assert failed.counts["writeback_failed"] >= 2
        assert store.watermark(proxy.base_url) == watermark
        assert set(store.pending_patients()) >= set(more)

        proxy.failing = False
        done = incremental_refresh(settings, store, as_of=AS_OF_DATE)
        assert done.status == "succeeded", done.error
        assert set(done.patients) >= set(more)
        assert store.pending_patients() == []
        assert store.watermark(proxy.base_url) != watermark
        for patient, target in more.items():
            assert team_practitioner(loaded.base_url, patient) == target


def test_a_refresh_while_the_lock_is_held_is_skipped(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    assert store.try_lock("someone-else", stale_seconds=3600)
    result = incremental_refresh(settings_for(loaded.base_url), store, as_of=AS_OF_DATE)
    assert result.status == "skipped"
    assert "another refresh is running" in (result.error or "")
    assert store.runs()[0]["status"] == "skipped"
    store.release_lock("someone-else")


def test_two_refreshes_started_together_run_once(loaded: SandboxServer, store: Store) -> None:
    settings = settings_for(loaded.base_url)
    barrier = threading.Barrier(2)
    results: list[RefreshResult] = []

    def go() -> None:
        barrier.wait()
        results.append(full_refresh(settings, store, as_of=AS_OF_DATE, write=False))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.status for r in results) == ["skipped", "succeeded"]


def test_overrides_take_effect_at_the_next_pass(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    patient, target = next(iter(pick_moves(store, 1).items()))
    store.add_override(
        patient, target, reason="patient's choice", requested_by="patient", actor="test"
    )
    assert store.pending_patients() == [patient]
    result = incremental_refresh(settings_for(loaded.base_url), store, as_of=AS_OF_DATE)
    assert result.patients == (patient,)
    state = store.patient_state(patient)
    assert state is not None
    assert (state["practitioner"], state["rule"], state["override"]) == (target, "manual", True)
    assert team_practitioner(loaded.base_url, patient) == target
    assert store.pending_patients() == []


def test_an_incremental_pass_blends_its_patients_on_the_practices_scale(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    """The full pass stores each patient's blended factor and the practice means; a pass over
    one patient divides by those means, not by its own one-patient means (which would make
    every metric 1.0), so the factor it stores is the full pass's."""
    assert store.context("blend_means")
    blends = {
        p: ((store.patient_state(p) or {}).get("detail") or {}).get("blend")
        for p in store.patient_ids()
    }
    assigned = [p for p in blends if (store.patient_state(p) or {}).get("status") == "assigned"]
    assert assigned and all(blends[p] for p in assigned)
    patient = next(p for p in sorted(assigned) if abs(blends[p]["factor"] - 1.0) > 0.1)
    current = (store.patient_state(patient) or {})["practitioner"]
    store.add_override(patient, current, reason="kept", requested_by="patient", actor="test")
    result = incremental_refresh(settings_for(loaded.base_url), store, as_of=AS_OF_DATE)
    assert result.status == "succeeded" and result.patients == (patient,)
    after = ((store.patient_state(patient) or {}).get("detail") or {}).get("blend")
    assert after == blends[patient]


@pytest.mark.parametrize("first", ["incremental", "full"])
def test_a_status_ends_the_care_team_participation_with_the_reason_and_clearing_restores(
    loaded: SandboxServer, store: Store, after_full: RefreshResult, first: str
) -> None:
    patient = next(iter(pick_moves(store, 1)))
    before = (store.patient_state(patient) or {})["practitioner"]
    settings = settings_for(loaded.base_url)
    store.set_status(patient, "moved-away", reason="letter returned", actor="clerk")
    assert store.pending_patients() == [patient]
    # Either pass takes the patient off the panel: the incremental one the change queues, or
    # the nightly full one.
    if first == "incremental":
        result = incremental_refresh(settings, store, as_of=AS_OF_DATE)
        assert result.patients == (patient,)
    else:
        result = full_refresh(settings, store, as_of=AS_OF_DATE, write=True)
    assert result.status == "succeeded", result.error
    state = store.patient_state(patient) or {}
    assert (state["status"], state["reason"], state["practitioner"]) == (
        "excluded",
        "moved-away",
        None,
    )
    assert state["detail"]["status"] == "excluded" and state["detail"]["reason"] == "moved-away"
    team = server_care_team(loaded.base_url, patient)
    assert team["status"] == "inactive" and active_pcp(team) is None
    assert [n["text"] for n in team["note"]] == [
        f"Primary-care participation ended on {AS_OF}: the patient moved away."
    ]
    # A full refresh with write-back then keeps it so and writes the team no second time.
    version = care_team_version(store, patient)
    full = full_refresh(settings, store, as_of=AS_OF_DATE, write=True)
    assert full.status == "succeeded", full.error
    assert (store.patient_state(patient) or {})["reason"] == "moved-away"
    assert care_team_version(store, patient) == version
    # Cleared: the next pass brings the patient back to their clinician.
    store.clear_status(patient, actor="clerk")
    incremental_refresh(settings, store, as_of=AS_OF_DATE)
    assert (store.patient_state(patient) or {})["practitioner"] == before
    assert team_practitioner(loaded.base_url, patient) == before


def test_runs_asked_for_while_a_worker_lives_are_queued_for_it(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    settings = settings_for(loaded.base_url)
    threaded = request_run(settings, store, "incremental", "api")  # no worker: a thread here
    assert threaded is not None
    deadline = time.monotonic() + 60
    while (store.run(threaded) or {}).get("status") == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (store.run(threaded) or {})["status"] == "succeeded"
    assert store.lock_info() is None
    store.worker_heartbeat()
    run_id = request_run(settings, store, "incremental", "api")
    assert run_id is not None
    assert (store.run(run_id) or {})["status"] == "queued"
    assert request_run(settings, store, "full", "api") is None  # one queued run is enough
    result = run_queued(settings, store)
    assert result is not None and result.run_id == run_id and result.status == "succeeded"
    assert run_queued(settings, store) is None
    assert (store.run(run_id) or {})["trigger"] == "api"


def test_a_full_refresh_through_bulk_export_writes_back_to_the_same_server(
    loaded: SandboxServer, store: Store
) -> None:
    settings = settings_for(loaded.base_url)
    result = full_refresh(settings, store, source=f"bulk:{loaded.base_url}", as_of=AS_OF_DATE)
    assert result.status == "succeeded", result.error
    assert result.counts["patients_stored"] == 300
    assert result.counts["written"] > 0
    assert store.watermark(f"bulk:{loaded.base_url}") is not None
    patient = next(
        p for p in store.patient_ids() if (store.patient_state(p) or {}).get("status") == "assigned"
    )
    assert (
        team_practitioner(loaded.base_url, patient)
        == (store.patient_state(patient) or {})["practitioner"]
    )


def test_changes_during_a_full_refresh_reach_the_next_pass(
    loaded: SandboxServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full refresh's watermark is the server's time before its read: what changes while it
    reads (new visits, an override, a confirmation) is applied by the next pass, not lost."""
    settings = settings_for(loaded.base_url)
    seed = Store(f"sqlite:///{store.url.split('///', 1)[1]}.seed")
    assert full_refresh(settings, seed, as_of=AS_OF_DATE, write=False).ok
    moves = pick_moves(seed, 2)
    (moved, target), (overridden, chosen) = list(moves.items())
    confirmed = next(
        p
        for p in seed.patient_ids()
        if p not in moves and (seed.patient_state(p) or {})["status"] == "assigned"
    )
    confirmed_with = (seed.patient_state(confirmed) or {})["practitioner"]
    assert full_refresh(settings, store, as_of=AS_OF_DATE).ok  # the store's first full run
    real_run_full = full_module.run_full

    def run_full_with_changes(*args: Any, **kwargs: Any) -> Any:
        outcome = real_run_full(*args, **kwargs)  # the read is done: now things change
        add_visits(loaded.base_url, {moved: target}, seed)
        store.add_override(
            overridden, chosen, reason="during the run", requested_by="patient", actor="test"
        )
        store.confirm(confirmed, confirmed_with, confirmed_by="clinician", actor="test")
        return outcome

    monkeypatch.setattr(full_module, "run_full", run_full_with_changes)
    during = full_refresh(settings, store, as_of=AS_OF_DATE)
    monkeypatch.undo()
    assert during.ok, during.error
    assert (store.patient_state(confirmed) or {})["confirmation"] == "clinician"
    assert store.override_for(overridden)["applied_run"] is None  # type: ignore[index]
    assert overridden in store.pending_patients()

    after = incremental_refresh(settings, store, as_of=AS_OF_DATE)
    assert after.status == "succeeded", after.error
    assert {moved, overridden} <= set(after.patients), (after.counts, during.watermark_after)
    assert (store.patient_state(moved) or {})["practitioner"] == target
    state = store.patient_state(overridden) or {}
    assert (state["practitioner"], state["rule"]) == (chosen, "manual")
    assert (store.patient_state(confirmed) or {})["confirmation"] == "clinician"
    seed.close()


def test_a_confirmation_lapses_when_the_patient_moves_away_and_back(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    settings = settings_for(loaded.base_url)
    patient, target = next(iter(pick_moves(store, 1).items()))
    first = (store.patient_state(patient) or {})["practitioner"]
    store.confirm(patient, first, confirmed_by="patient", actor="test")
    store.add_override(patient, target, reason="trial", requested_by="clinician", actor="t")
    assert incremental_refresh(settings, store, as_of=AS_OF_DATE).ok
    assert (store.patient_state(patient) or {})["confirmation"] == "proposed"
    store.remove_override(patient, actor="t")
    assert incremental_refresh(settings, store, as_of=AS_OF_DATE).ok
    state = store.patient_state(patient) or {}
    assert state["practitioner"] == first
    assert state["confirmation"] == "proposed"  # the old confirmation does not come back


def test_a_deleted_patient_leaves_the_store_at_the_next_pass(
    loaded: SandboxServer, store: Store, after_full: RefreshResult
) -> None:
    settings = settings_for(loaded.base_url)
    patient = next(
        p for p in store.patient_ids() if (store.patient_state(p) or {})["status"] == "assigned"
    )
    store.queue_patients([patient], "test: re-read")
    # Delete the patient's compartment as an EHR merge or purge would.
    with FhirClient(FhirSettings(base_url=loaded.base_url)) as client:
        for rtype in ("CarePlan", "CareTeam", "Condition", "Encounter"):
            for res in list(client.search(rtype, [("patient", patient)])):
                client.request("DELETE", f"{rtype}/{res['id']}")
        client.request("DELETE", patient)
    result = incremental_refresh(settings, store, as_of=AS_OF_DATE)
    assert result.ok, result.error
    assert result.counts["patients_not_found"] == 1
    assert store.patient_state(patient) is None
    assert store.history(patient)[-1]["valid_to"] is not None
