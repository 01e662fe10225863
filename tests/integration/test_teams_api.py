"""Transitions, open or closed panels, care teams, panel reviews and readiness through the API,
over a store filled by a full refresh of the committed population: a clinician's panel planned
onto the others (continuity first, never over capacity, closed panels skipped), accepted in bulk
(one audited override each, one refresh) and applied by a real refresh; stale moves
refused by name; teams summed from mappings/teams.toml; a review recorded with what was done
since the last; the readiness measures."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from fhirpanel.api.app import create_app
from fhirpanel.config import Settings
from fhirpanel.domain.teams import NUCC, Teams
from fhirpanel.jobs.refresh import full_refresh
from fhirpanel.store import Store
from fhirpanel.store.models import PatientState
from fhirpanel.tables import Tables
from tests.conftest import AS_OF, POPULATION_DIR
from tests.integration.test_api import (
    ADMIN_H,
    READ_H,
    TriggerRecorder,
    api_settings,
    copy_store,
    fill_template,
    problem,
)
from tests.integration.test_dashboard import READ, flashes, make_settings, page, sign_in
from tests.integration.test_placement_api import CSRF_FIELD, PAIRS_FIELD

LEAVING = "Practitioner/prac-0008"
URL = "/api/clinicians/prac-0008/transition"
PREFIX = f"panel transition accepted from {LEAVING}: "


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_template(tmp_path_factory.mktemp("teams-template"))


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Iterator[Store]:
    st = copy_store(template, tmp_path)
    yield st
    st.close()


@pytest.fixture
def trigger() -> TriggerRecorder:
    return TriggerRecorder()


def tables_with(closed: frozenset[str] = frozenset(), teams: Teams | None = None) -> Tables:
    tables = Tables.load(Settings.load(env={}))
    capacities = dataclasses.replace(tables.method.capacities, closed=closed)
    return dataclasses.replace(
        tables,
        method=dataclasses.replace(tables.method, capacities=capacities),
        writeback=dataclasses.replace(tables.writeback, teams=teams or Teams()),
    )


def make_client(
    store: Store, trigger: TriggerRecorder, tables: Tables | None = None, **env: str
) -> FlaskClient:
    return create_app(
        api_settings(**env), store=store, trigger=trigger, tables=tables or tables_with()
    ).test_client()


@pytest.fixture
def client(store: Store, trigger: TriggerRecorder) -> FlaskClient:
    return make_client(store, trigger)


def plan_of(client: FlaskClient, url: str = URL) -> dict[str, Any]:
    response = client.get(url, headers=READ_H)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def transition_audit(store: Store) -> list[dict[str, Any]]:
    return [
        a
        for a in store.audit(limit=10_000)
        if a["action"] == "override" and a["detail"]["reason"].startswith(PREFIX)
    ]


# ---------------------------------------------------------------- the plan


def test_the_plan_moves_every_patient_continuity_first_and_within_capacity(
    client: FlaskClient, store: Store
) -> None:
    plan = plan_of(client)
    panel = [
        r["patient"]
        for r in client.get("/api/panels/prac-0008?page_size=100", headers=READ_H).get_json()[
            "items"
        ]
    ]
    assert [m["patient"] for m in plan["moves"]] == sorted(panel) and len(panel) == 60
    assert plan["patients"] == 60 == plan["placed"] + plan["no_room"]
    assert plan["placed"] > 0 and plan["pending"] == 0
    assert all(m["to"] != LEAVING for m in plan["moves"])
    clinicians = {c["practitioner"]: c for c in store.clinicians()}
    # Continuity: the eligible clinician seen most after prac-0008, by the stored visits.
    continuity = [m for m in plan["moves"] if m["basis"] == "visit-history"]
    assert continuity
    for move in continuity:
        visits = client.get(f"/api/patients/{move['patient']}", headers=READ_H).get_json()["visits"]
        others = {k: v for k, v in visits.items() if k != LEAVING}
        assert others[move["to"]] == max(others.values())
    # Never over capacity, and the panels add up.
    for change in plan["panels"]:
        grew = change["size_after"] - change["size"]
        assert grew == sum(1 for m in plan["moves"] if m["to"] == change["practitioner"])
        if grew:
            assert (
                change["risk_adjusted_size_after"]
                <= clinicians[change["practitioner"]]["capacity"] + 0.05
            )
    assert {c["practitioner"] for c in plan["panels"]} == {
        ref for ref, c in clinicians.items() if c["eligible"] and ref != LEAVING
    }
    no_room = [m for m in plan["moves"] if m["to"] is None]
    assert all(m["basis"] == "no-room" and "no room" in m["reason"] for m in no_room)


def test_a_closed_panel_gets_nobody_and_shows_as_closed(
    store: Store, trigger: TriggerRecorder
) -> None:
    usual = moves_to(plan_of(make_client(store, trigger)))
    busiest = max(usual, key=lambda ref: usual[ref])
    closed_client = make_client(store, trigger, tables_with(closed=frozenset({busiest})))
    plan = plan_of(closed_client)
    assert busiest not in moves_to(plan)
    row = next(c for c in plan["panels"] if c["practitioner"] == busiest)
    assert row["open"] is False and row["size_after"] == row["size"]
    panels = closed_client.get("/api/panels", headers=READ_H).get_json()["panels"]
    assert {p["practitioner"]: p["open"] for p in panels}[busiest] is False
    assert sum(1 for p in panels if p["open"]) == len(panels) - 1


def moves_to(plan: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for move in plan["moves"]:
        if move["to"]:
            counts[move["to"]] = counts.get(move["to"], 0) + 1
    return counts


# ---------------------------------------------------------------- accepting it


def test_accept_all_then_a_refresh_moves_the_patients(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    plan = plan_of(client)
    placed = {m["patient"]: m for m in plan["moves"] if m["to"]}
    response = client.post(URL, json={"moves": "all"}, headers=ADMIN_H)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["refused"] == []
    assert {a["patient"]: a["practitioner"] for a in body["assigned"]} == {
        p: m["to"] for p, m in placed.items()
    }
    for entry in body["assigned"]:
        override = entry["override"]
        assert override["reason"] == PREFIX + placed[entry["patient"]]["reason"]
        assert (override["requested_by"], override["actor"]) == ("staff", "alice")
    assert len(transition_audit(store)) == len(placed)
    assert trigger.calls == [("incremental", "api")]  # one refresh for the lot
    # Before the refresh: every accepted move is pending, and pressing again stores nothing.
    again = plan_of(client)
    assert again["pending"] == len(placed)
    second = client.post(URL, json={"moves": "all"}, headers=ADMIN_H).get_json()
    assert second["assigned"] == [] and second["refresh"] is None
    # A refresh (NDJSON is read whole: a full one) applies the overrides.
    result = full_refresh(
        api_settings(),
        store,
        source=f"ndjson:{POPULATION_DIR}",
        as_of=date.fromisoformat(AS_OF),
        write=False,
    )
    assert result.status == "succeeded", result.error
    for patient, move in placed.items():
        state = store.patient_state(patient)
        assert state is not None
        assert (state["status"], state["practitioner"]) == ("assigned", move["to"])
    left = plan_of(client)
    assert left["patients"] == 60 - len(placed)
    assert store.clinician(LEAVING)["size"] == 60 - len(placed)  # type: ignore[index]


def test_stale_moves_are_refused_by_name(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    plan = plan_of(client)
    first, second, third = [m for m in plan["moves"] if m["to"]][:3]
    elsewhere = next(
        c["practitioner"]
        for c in store.clinicians()
        if c["eligible"] and c["practitioner"] not in (LEAVING, second["to"])
    )
    # a refresh moved the third patient off the panel since the plan was shown
    with store.session() as s:
        s.execute(
            update(PatientState)
            .where(PatientState.patient == third["patient"])
            .values(practitioner=elsewhere)
        )
    moves = [
        {"patient": first["patient"], "to": first["to"]},
        {"patient": second["patient"], "to": elsewhere},
        {"patient": third["patient"].removeprefix("Patient/"), "to": third["to"]},
        {"patient": first["patient"], "to": first["to"]},
        {"patient": "Patient/nobody-here", "to": first["to"]},
    ]
    body = client.post(URL, json={"moves": moves}, headers=ADMIN_H).get_json()
    assert [a["patient"] for a in body["assigned"]] == [first["patient"]]
    refused = [(r["patient"], r["problem"]) for r in body["refused"]]
    assert refused == [
        (second["patient"], "plan-changed"),
        (third["patient"], "patient-not-on-panel"),
        (first["patient"], "listed-twice"),
        ("Patient/nobody-here", "patient-not-found"),
    ]
    detail = body["refused"][0]["detail"]
    assert detail == (
        f"{second['patient']}'s planned clinician changed since it was shown ({elsewhere}, "
        f"now {second['to']}): reload and check the new plan"
    )
    assert body["refused"][1]["detail"] == (
        f"{third['patient']} is no longer on {LEAVING}'s panel (now with {elsewhere})"
    )
    assert len(transition_audit(store)) == 1 and trigger.calls == [("incremental", "api")]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "moves"),
        ({"moves": "some"}, "moves"),
        ({"moves": []}, "moves"),
        ({"moves": "all", "why": 1}, "why"),
        ({"moves": [{"patient": "pat-000003"}]}, "moves[0].to"),
        ({"moves": [{"patient": "pat-000003", "to": "p", "x": 1}]}, "moves[0].x"),
        ({"moves": [{"patient": "pat 3", "to": "prac-0001"}]}, "moves[0].patient"),
    ],
)
def test_bodies_are_checked_strictly(
    client: FlaskClient, store: Store, payload: Any, field: str
) -> None:
    body = problem(client.post(URL, json=payload, headers=ADMIN_H), 422)
    assert body["errors"][0]["field"] == field
    assert transition_audit(store) == []


def test_read_tokens_unknown_clinicians_and_non_json(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    problem(client.post(URL, json={"moves": "all"}, headers=READ_H), 403)
    problem(client.get("/api/clinicians/prac-9999/transition", headers=READ_H), 404)
    problem(client.get("/api/clinicians/bad id/transition", headers=READ_H), 404)
    problem(client.post(URL, data="moves=all", headers=ADMIN_H), 415)
    assert transition_audit(store) == [] and trigger.calls == []


# ---------------------------------------------------------------- teams


def test_teams_sum_their_members_panels(store: Store, trigger: TriggerRecorder) -> None:
    teams = Teams.create(
        {
            "physician": (NUCC, "207Q00000X", "Family Medicine Physician"),
            "nurse": (NUCC, "163W00000X", "Registered Nurse"),
        },
        [
            (
                "blue",
                "Blue team",
                [
                    ("Practitioner/prac-0001", "physician"),
                    ("Practitioner/prac-0002", "physician"),
                    ("Practitioner/rn-1", "nurse"),  # no panel: counts nothing
                ],
            )
        ],
    )
    client = make_client(store, trigger, tables_with(teams=teams))
    listed = client.get("/api/teams", headers=READ_H).get_json()["teams"]
    one, two = store.clinician("Practitioner/prac-0001"), store.clinician("Practitioner/prac-0002")
    assert one is not None and two is not None
    assert listed == [
        {
            "id": "blue",
            "name": "Blue team",
            "members": 3,
            "totals": {
                "size": one["size"] + two["size"],
                "risk_adjusted_size": round(
                    one["risk_adjusted_size"] + two["risk_adjusted_size"], 1
                ),
                "capacity": one["capacity"] + two["capacity"],
                "open_capacity": round(
                    one["capacity"]
                    + two["capacity"]
                    - one["risk_adjusted_size"]
                    - two["risk_adjusted_size"],
                    1,
                ),
                "share_used": round(
                    (one["risk_adjusted_size"] + two["risk_adjusted_size"])
                    / (one["capacity"] + two["capacity"]),
                    3,
                ),
                "unconfirmed": one["unconfirmed"] + two["unconfirmed"],
            },
        }
    ]
    team = client.get("/api/teams/blue", headers=READ_H).get_json()
    assert [(m["practitioner"], m["role"]["code"], m["size"]) for m in team["members"]] == [
        ("Practitioner/prac-0001", "207Q00000X", one["size"]),
        ("Practitioner/prac-0002", "207Q00000X", two["size"]),
        ("Practitioner/rn-1", "163W00000X", None),
    ]
    problem(client.get("/api/teams/red", headers=READ_H), 404)
    assert make_client(store, trigger).get("/api/teams", headers=READ_H).get_json() == {"teams": []}


# ---------------------------------------------------------------- reviews and readiness


def test_a_review_records_what_was_done_since_the_last(client: FlaskClient, store: Store) -> None:
    ref = "Practitioner/prac-0001"
    url = "/api/clinicians/prac-0001/reviews"
    before = client.get(url, headers=READ_H).get_json()
    assert before["state"] == "never-reviewed" and before["reviews"] == []
    first = client.post(url, json={"note": "quarterly  check"}, headers=ADMIN_H)
    assert first.status_code == 201
    review = first.get_json()["review"]
    panel = store.clinician(ref)
    assert panel is not None
    assert (review["actor"], review["patients"], review["note"], review["since"]) == (
        "alice",
        panel["size"],
        "quarterly check",
        None,
    )
    assert first.get_json()["state"]["state"] == "current"
    # Since then: two confirmations, one patient moved off, one onto, one removed.
    mine = [
        r["patient"]
        for r in client.get("/api/panels/prac-0001?page_size=10", headers=READ_H).get_json()[
            "items"
        ]
    ]
    other = next(
        r["patient"]
        for r in client.get("/api/panels/prac-0002?page_size=1", headers=READ_H).get_json()["items"]
    )
    store.confirm(mine[0], ref, confirmed_by="clinician", actor="bob")
    store.confirm(mine[1], ref, confirmed_by="patient", actor="bob")
    store.add_override(
        mine[2], "Practitioner/prac-0002", reason="moved", requested_by="patient", actor="bob"
    )
    store.add_override(other, ref, reason="asked", requested_by="family", actor="bob")
    store.set_status(mine[3], "moved-away", reason="left town", actor="bob")
    assert client.get(url, headers=READ_H).get_json()["since_last_review"] == {
        "confirmed": 2,
        "moved": 2,
        "removed": 1,
    }
    second = client.post(url, json={}, headers=ADMIN_H).get_json()["review"]
    assert (second["confirmed"], second["moved"], second["removed"]) == (2, 2, 1)
    assert second["since"] == review["reviewed_at"]
    history = client.get(url, headers=READ_H).get_json()
    assert [r["id"] for r in history["reviews"]] == [second["id"], review["id"]]
    assert history["since_last_review"] == {"confirmed": 0, "moved": 0, "removed": 0}
    audit = [a for a in store.audit(limit=100) if a["action"] == "panel-review"]
    assert len(audit) == 2 and audit[0]["detail"]["moved"] == 2
    # The reviewed panel is no longer due; the others are, never reviewed.
    due = client.get("/api/reviews?due=true", headers=READ_H).get_json()
    assert due["panel_review_months"] == 3
    assert ref not in {p["practitioner"] for p in due["panels"]}
    assert {p["state"] for p in due["panels"]} == {"never-reviewed"}
    every = client.get("/api/reviews", headers=READ_H).get_json()["panels"]
    assert every[-1]["practitioner"] == ref and every[-1]["state"] == "current"


def test_review_requests_are_checked(client: FlaskClient, store: Store) -> None:
    url = "/api/clinicians/prac-0001/reviews"
    problem(client.post(url, json={"note": "x"}, headers=READ_H), 403)
    assert (
        problem(client.post(url, json={"who": "x"}, headers=ADMIN_H), 422)["errors"][0]["field"]
        == "who"
    )
    problem(client.post(url, json={"note": 3}, headers=ADMIN_H), 422)
    problem(client.post("/api/clinicians/prac-9999/reviews", json={}, headers=ADMIN_H), 404)
    assert client.get(url, headers=READ_H).get_json()["reviews"] == []


def test_readiness_reports_the_milestones_measures(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    report = client.get("/api/readiness", headers=READ_H).get_json()
    totals = client.get("/api/panels", headers=READ_H).get_json()["totals"]
    active = totals["assigned"] + totals["unassigned"]
    assert report["active_patients"] == active and report["assigned"] == totals["assigned"]
    assert report["share_assigned"] == round(totals["assigned"] / active, 4)
    eligible = sum(1 for c in store.clinicians() if c["eligible"])
    assert (report["panels"], report["panels_due"], report["panels_never_reviewed"]) == (
        eligible,
        eligible,
        eligible,
    )
    confirmed = {r: report[f"confirmed_by_{r}"] for r in ("clinician", "patient")}
    patient = next(
        r["patient"]
        for r in client.get(
            "/api/panels/prac-0002?unconfirmed=true&page_size=1", headers=READ_H
        ).get_json()["items"]
    )
    store.confirm(patient, "Practitioner/prac-0002", confirmed_by="patient", actor="bob")
    client.post("/api/clinicians/prac-0002/reviews", json={}, headers=ADMIN_H)
    after = client.get("/api/readiness", headers=READ_H).get_json()
    assert after["confirmed_by_patient"] == confirmed["patient"] + 1
    assert after["confirmed_by_clinician"] == confirmed["clinician"]
    assert after["share_confirmed_by_patient"] == round(
        after["confirmed_by_patient"] / after["assigned"], 4
    )
    assert after["panels_due"] == eligible - 1
    row = next(r for r in after["reviews"] if r["practitioner"] == "Practitioner/prac-0002")
    assert row["last_reviewed"] == datetime.now(UTC).date().isoformat()
    assert row["last_review"]["actor"] == "alice"
    # The review period is a setting.
    monthly = make_client(store, trigger, FHIRPANEL_REVIEW_PANEL_REVIEW_MONTHS="1")
    assert monthly.get("/api/readiness", headers=READ_H).get_json()["panel_review_months"] == 1


# ---------------------------------------------------------------- the dashboard


def dashboard_app(
    store: Store, trigger: TriggerRecorder, tmp_path: Path, tables: Tables | None = None
) -> Flask:
    app = create_app(
        make_settings(tmp_path / "state.db", page_size=10),
        store=store,
        trigger=trigger,
        tables=tables or tables_with(),
    )
    app.testing = True
    return app


def test_the_transition_page_shows_the_plan_and_accepts_it(
    store: Store, trigger: TriggerRecorder, tmp_path: Path
) -> None:
    client = sign_in(dashboard_app(store, trigger, tmp_path))
    panel_html = page(client, "/panels/prac-0008")
    assert 'href="/panels/prac-0008/transition"' in panel_html
    assert 'id="panel-closed"' not in panel_html
    html = page(client, "/panels/prac-0008/transition")
    plan = plan_of(make_client(store, trigger))
    rows = re.findall(r'<tr data-patient="([^"]+)" data-to="([^"]*)">', html)
    assert rows == [(m["patient"], m["to"] or "") for m in plan["moves"]]
    assert f"Accept all {plan['placed']} moves" in html
    pairs = unescape(PAIRS_FIELD.search(html).group(1))  # type: ignore[union-attr]
    csrf = CSRF_FIELD.search(html).group(1)  # type: ignore[union-attr]
    response = client.post(
        "/panels/prac-0008/transition",
        data={"pairs": pairs, "csrf_token": csrf, "next": "/panels/prac-0008/transition"},
    )
    assert response.status_code == 303
    after = page(client, "/panels/prac-0008/transition")
    assert flashes(after) == [
        f"{plan['placed']} patients of {store.clinician(LEAVING)['name']} will move to the "  # type: ignore[index]
        "planned clinician (one override each, in the audit log). A refresh (run #4242) has "
        "started to apply it."
    ]
    assert after.count("change pending") == plan["placed"]
    assert "Accept all" not in after  # every planned move waits for the refresh
    assert len(transition_audit(store)) == plan["placed"]
    assert {a["actor"] for a in transition_audit(store)} == {"boss"}
    assert trigger.calls == [("incremental", "dashboard")]


def test_a_read_token_sees_the_plan_but_cannot_accept_it(
    store: Store, trigger: TriggerRecorder, tmp_path: Path
) -> None:
    client = sign_in(dashboard_app(store, trigger, tmp_path), READ)
    html = page(client, "/panels/prac-0008/transition")
    assert 'id="transition-moves"' in html and "Accept all" not in html
    page(client, "/panels/prac-9999/transition", 404)
    assert transition_audit(store) == []


def test_teams_closed_panels_and_reviews_on_the_dashboard(
    store: Store, trigger: TriggerRecorder, tmp_path: Path
) -> None:
    teams = Teams.create(
        {"physician": (NUCC, "207Q00000X", "Family Medicine Physician")},
        [("blue", "Blue team", [("Practitioner/prac-0001", "physician")])],
    )
    tables = tables_with(closed=frozenset({"Practitioner/prac-0001"}), teams=teams)
    client = sign_in(dashboard_app(store, trigger, tmp_path, tables))
    listing = page(client, "/teams")
    assert '<tr data-team="blue">' in listing and 'href="/teams/blue"' in listing
    one = page(client, "/teams/blue")
    assert "Family Medicine Physician" in one and "closed" in one
    size = store.clinician("Practitioner/prac-0001")["size"]  # type: ignore[index]
    assert f'<div class="value" id="team-size">{size}</div>' in one
    page(client, "/teams/red", 404)
    assert 'id="panel-closed"' in page(client, "/panels/prac-0001")
    readiness = page(client, "/readiness")
    states = dict(re.findall(r'<tr data-practitioner="([^"]+)" data-state="([^"]+)">', readiness))
    assert set(states.values()) == {"never-reviewed"}
    csrf = CSRF_FIELD.search(readiness).group(1)  # type: ignore[union-attr]
    response = client.post(
        "/panels/prac-0001/review", data={"csrf_token": csrf, "next": "/readiness"}
    )
    assert response.status_code == 303
    after = page(client, "/readiness")
    assert unescape(flashes(after)[0]).startswith("Review of ")
    assert "0 confirmed, 0 moved, 0 removed." in flashes(after)[0]
    states = dict(re.findall(r'<tr data-practitioner="([^"]+)" data-state="([^"]+)">', after))
    assert states["Practitioner/prac-0001"] == "current"
    assert stored_reviews(store) == 1
    # a read token sees the page but has no button, and cannot post
    viewer = sign_in(dashboard_app(store, trigger, tmp_path / "v", tables), READ)
    assert "Record review" not in page(viewer, "/readiness")
    token = CSRF_FIELD.search(page(viewer, "/logout")).group(1)  # type: ignore[union-attr]
    assert viewer.post("/panels/prac-0001/review", data={"csrf_token": token}).status_code == 403
    assert stored_reviews(store) == 1


def stored_reviews(store: Store) -> int:
    return sum(1 for a in store.audit(limit=1000) if a["action"] == "panel-review")


def test_the_readiness_command_prints_the_apis_figures(
    client: FlaskClient, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhirpanel.cli import main

    client.post("/api/clinicians/prac-0003/reviews", json={}, headers=ADMIN_H)
    api = client.get("/api/readiness", headers=READ_H).get_json()
    assert main(["readiness", "--database", store.url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == api and printed["panels_never_reviewed"] == printed["panels"] - 1
    assert main(["readiness", "--database", store.url]) == 0
    text = capsys.readouterr().out
    assert f"({api['assigned']:,} of {api['active_patients']:,})" in text
    assert "Practitioner/prac-0003" in text and "current" in text


def test_the_overview_marks_a_closed_panel(
    store: Store, trigger: TriggerRecorder, tmp_path: Path
) -> None:
    closed = tables_with(closed=frozenset({"Practitioner/prac-0002"}))
    html = page(sign_in(dashboard_app(store, trigger, tmp_path, closed)), "/")
    rows = dict(re.findall(r'<tr data-practitioner="([^"]+)">(.*?)</tr>', html, re.S))
    assert ">closed</span>" in rows["Practitioner/prac-0002"]
    assert sum(">closed</span>" in cells for cells in rows.values()) == 1


def test_a_review_recorded_from_the_panel_page_returns_there(
    store: Store, trigger: TriggerRecorder, tmp_path: Path
) -> None:
    client = sign_in(dashboard_app(store, trigger, tmp_path))
    html = page(client, "/panels/prac-0004")
    assert "Record panel review" in html
    csrf = CSRF_FIELD.search(html).group(1)  # type: ignore[union-attr]
    response = client.post(
        "/panels/prac-0004/review", data={"csrf_token": csrf, "next": "/panels/prac-0004"}
    )
    assert response.status_code == 303 and response.headers["Location"] == "/panels/prac-0004"
    assert unescape(flashes(page(client, "/panels/prac-0004"))[0]).startswith("Review of ")
    assert stored_reviews(store) == 1
