"""Confirmed assignments hold, end to end (issue 17, items 1 and 2): through the JSON API and a
real store, with real full and incremental refreshes against the sandbox FHIR server. A patient
confirmed by the clinician and by the patient, who then sees another clinician more often,
stays; the move is proposed with its evidence; accepting it moves the patient at the next
refresh (an audited override, the old confirmations ended); dismissing it keeps them, and the
same move is not raised again until a new visit changes the evidence. The dashboard shows both
confirmations and decides moves behind CSRF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from fhirpanel.api.app import create_app
from fhirpanel.config import FhirSettings
from fhirpanel.fhir.client import FhirClient
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.integration.test_api import ADMIN_H, READ_H, TriggerRecorder, api_settings, problem
from tests.integration.test_dashboard import READ, csrf, flashes, make_settings, page, sign_in
from tests.integration.test_dashboard import Trigger as DashboardTrigger
from tests.integration.test_refresh import (
    AS_OF_DATE,
    add_visits,
    office_visit,
    pick_moves,
    settings_for,
)


@pytest.fixture
def loaded(sandbox: SandboxServer, population_dir: Path) -> SandboxServer:
    sandbox.load_ndjson_dir(population_dir)
    return sandbox


@pytest.fixture
def store(tmp_path: Path, loaded: SandboxServer) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'state.db'}")
    result = full_refresh(settings_for(loaded.base_url), st, as_of=AS_OF_DATE, write=False)
    assert result.status == "succeeded", result.error
    yield st
    st.close()


@pytest.fixture
def client(store: Store) -> FlaskClient:
    return create_app(api_settings(), store=store, trigger=TriggerRecorder()).test_client()


def bare(ref: str) -> str:
    return ref.split("/", 1)[1]


def refresh(loaded: SandboxServer, store: Store) -> dict[str, Any]:
    result = incremental_refresh(
        settings_for(loaded.base_url), store, as_of=AS_OF_DATE, write=False
    )
    assert result.status == "succeeded", result.error
    return result.counts


def confirm(client: FlaskClient, patient: str, by: str, method: str) -> dict[str, Any]:
    response = client.post(
        f"/api/assignments/{bare(patient)}/confirm",
        json={"confirmed_by": by, "method": method, "note": "at the review"},
        headers=ADMIN_H,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["confirmation"]  # type: ignore[no-any-return]


def open_moves(client: FlaskClient) -> list[dict[str, Any]]:
    response = client.get("/api/proposed-moves", headers=READ_H)
    assert response.status_code == 200
    return response.get_json()["items"]  # type: ignore[no-any-return]


def test_both_confirmations_are_kept_shown_and_filtered(client: FlaskClient, store: Store) -> None:
    moves = pick_moves(store, 2)
    (both, _), (patient_only, _) = list(moves.items())
    practitioner = (store.patient_state(both) or {})["practitioner"]
    first = confirm(client, both, "clinician", "visit")
    assert (first["method"], first["expired"]) == ("visit", False)
    assert first["expires_on"] > first["confirmed_on"]
    confirm(client, both, "patient", "portal")
    confirm(client, patient_only, "patient", "phone")
    assert (store.patient_state(both) or {})["confirmation"] == "both"
    assert (store.patient_state(patient_only) or {})["confirmation"] == "patient"
    explained = client.get(f"/api/patients/{bare(both)}", headers=READ_H).get_json()
    current = explained["current_confirmations"]
    assert (current["clinician"]["method"], current["patient"]["method"]) == ("visit", "portal")
    # The unconfirmed filter, per side.
    panel = bare(practitioner)
    no_clinician = client.get(
        f"/api/panels/{panel}?unconfirmed=clinician&page_size=100", headers=READ_H
    ).get_json()
    listed = {r["patient"] for r in no_clinician["items"]}
    assert both not in listed
    assert no_clinician["filters"]["unconfirmed"] == "clinician"
    no_patient = client.get(
        f"/api/panels/{panel}?unconfirmed=patient&page_size=100", headers=READ_H
    ).get_json()
    assert both not in {r["patient"] for r in no_patient["items"]}
    # A method outside the list and a day in the future are refused by name.
    bad = client.post(
        f"/api/assignments/{bare(both)}/confirm",
        json={"confirmed_by": "patient", "method": "fax"},
        headers=ADMIN_H,
    )
    assert problem(bad, 422)["errors"][0]["field"] == "method"
    future = client.post(
        f"/api/assignments/{bare(both)}/confirm",
        json={"confirmed_by": "patient", "confirmed_on": "2999-01-01"},
        headers=ADMIN_H,
    )
    assert problem(future, 422)["errors"][0]["field"] == "confirmed_on"


def test_a_confirmed_patient_stays_the_move_is_proposed_and_accepting_it_moves_them(
    client: FlaskClient, store: Store, loaded: SandboxServer
) -> None:
    patient, target = next(iter(pick_moves(store, 1).items()))
    first = (store.patient_state(patient) or {})["practitioner"]
    confirm(client, patient, "clinician", "visit")
    add_visits(loaded.base_url, {patient: target}, store)
    counts = refresh(loaded, store)
    assert counts["proposed_moves"] == 1
    # Held, and not counted as a change by the brake.
    assert counts["change"]["changed_assignments"]["count"] == 0
    state = store.patient_state(patient) or {}
    assert (state["practitioner"], state["rule"], state["confirmation"]) == (
        first,
        "confirmed",
        "clinician",
    )
    (move,) = open_moves(client)
    assert (move["patient"], move["from"], move["to"], move["status"]) == (
        patient,
        first,
        target,
        "open",
    )
    assert move["visits"][target] > move["visits"].get(first, 0)
    assert move["held_by"] == ["clinician"] and move["evidence"]
    # A read token may not decide.
    assert client.post(f"/api/proposed-moves/{move['id']}/accept", headers=READ_H).status_code == (
        403
    )
    accepted = client.post(
        f"/api/proposed-moves/{move['id']}/accept", json={"note": "agreed"}, headers=ADMIN_H
    )
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    body = accepted.get_json()
    assert body["move"]["status"] == "accepted" and body["refresh"]["started"]
    assert body["move"]["override"]["practitioner"] == target
    assert [c["ended_reason"] for c in store.confirmations(patient)] == ["move accepted"]
    again = client.post(f"/api/proposed-moves/{move['id']}/accept", headers=ADMIN_H)
    assert problem(again, 409)["type"].endswith("move-decided")
    refresh(loaded, store)
    state = store.patient_state(patient) or {}
    assert (state["practitioner"], state["rule"], state["confirmation"]) == (
        target,
        "manual",
        "proposed",
    )
    assert open_moves(client) == []
    actions = [a["action"] for a in store.audit(patient=patient)]
    assert {"confirm", "move-accepted", "override"} <= set(actions)


def test_a_dismissed_move_is_not_raised_again_until_the_evidence_changes(
    client: FlaskClient, store: Store, loaded: SandboxServer
) -> None:
    patient, target = next(iter(pick_moves(store, 1).items()))
    first = (store.patient_state(patient) or {})["practitioner"]
    confirm(client, patient, "patient", "in-person")  # a patient's confirmation holds too
    add_visits(loaded.base_url, {patient: target}, store)
    refresh(loaded, store)
    (move,) = open_moves(client)
    dismissed = client.post(f"/api/proposed-moves/{move['id']}/dismiss", headers=ADMIN_H)
    assert dismissed.status_code == 200
    assert dismissed.get_json()["move"]["status"] == "dismissed"
    # A full pass computes the patient again: kept, and the same move is not proposed.
    full = full_refresh(settings_for(loaded.base_url), store, as_of=AS_OF_DATE, write=False)
    assert full.ok and full.counts["proposed_moves"] == 0
    assert (store.patient_state(patient) or {})["practitioner"] == first
    assert open_moves(client) == []
    # One more visit elsewhere is new evidence: proposed again.
    with FhirClient(FhirSettings(base_url=loaded.base_url)) as fhir:
        fhir.create(office_visit(patient, target, AS_OF_DATE - timedelta(days=1), 55))
    refresh(loaded, store)
    (again,) = open_moves(client)
    assert again["id"] != move["id"] and again["visits"][target] == move["visits"][target] + 1
    listed = client.get("/api/proposed-moves?status=all", headers=READ_H).get_json()
    assert {m["status"] for m in listed["items"]} == {"open", "dismissed"}


def test_unknown_and_bad_move_ids(client: FlaskClient) -> None:
    assert problem(client.post("/api/proposed-moves/99/dismiss", headers=ADMIN_H), 404)
    assert client.get("/api/proposed-moves?status=maybe", headers=READ_H).status_code == 400


def test_the_dashboard_shows_both_confirmations_and_decides_moves_with_csrf(
    store: Store, loaded: SandboxServer, tmp_path: Path
) -> None:
    app = create_app(make_settings(tmp_path / "state.db"), store=store, trigger=DashboardTrigger())
    app.testing = True
    admin, viewer = sign_in(app), sign_in(app, READ)
    (patient, target), (other, other_target) = list(pick_moves(store, 2).items())
    first = (store.patient_state(patient) or {})["practitioner"]
    # The confirm forms carry how; both sides end up on the patient page with when and expiry.
    for by, method in (("clinician", "visit"), ("patient", "phone")):
        response = admin.post(
            f"/patients/{bare(patient)}/confirm",
            data={"confirmed_by": by, "method": method, "csrf_token": csrf(admin)},
        )
        assert response.status_code == 303
    html = page(admin, f"/patients/{bare(patient)}")
    table = html.split('id="current-confirmations"', 1)[1].split("</table>", 1)[0]
    assert "visit" in table and "phone" in table and "not confirmed" not in table
    panel = page(admin, f"/panels/{bare(first)}?unconfirmed=clinician&sort=patient")
    assert f'data-patient="{patient}"' not in panel
    store.confirm(
        other, (store.patient_state(other) or {})["practitioner"], confirmed_by="patient", actor="t"
    )
    add_visits(loaded.base_url, {patient: target, other: other_target}, store)
    refresh(loaded, store)
    moves = page(admin, "/moves")
    assert "Proposed moves" in page(admin, "/")  # the nav link
    ids = re.findall(r'<tr id="move-(\d+)" data-move="\d+" data-patient="([^"]+)"', moves)
    by_patient = {p: int(i) for i, p in ids}
    assert set(by_patient) == {patient, other}
    assert "Review the proposed move" in page(admin, f"/patients/{bare(patient)}")
    # Read tokens see no buttons and may not decide; a POST without CSRF is refused.
    assert "Accept</button>" not in page(viewer, "/moves")
    accept = f"/moves/{by_patient[patient]}/accept"
    assert viewer.post(accept, data={"csrf_token": csrf(viewer)}).status_code == 403
    assert admin.post(accept).status_code == 400
    done = admin.post(accept, data={"csrf_token": csrf(admin)}, follow_redirects=True)
    assert any("Move accepted" in f for f in flashes(done.get_data(as_text=True)))
    dismissed = admin.post(
        f"/moves/{by_patient[other]}/dismiss",
        data={"csrf_token": csrf(admin)},
        follow_redirects=True,
    )
    assert any("Move dismissed" in f for f in flashes(dismissed.get_data(as_text=True)))
    again = admin.post(accept, data={"csrf_token": csrf(admin)}, follow_redirects=True)
    assert any("accepted already" in f for f in flashes(again.get_data(as_text=True)))
    refresh(loaded, store)
    assert (store.patient_state(patient) or {})["practitioner"] == target
    assert (store.patient_state(other) or {})["practitioner"] != other_target
