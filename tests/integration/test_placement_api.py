"""Placement of unassigned patients through the API and the dashboard, over a store filled by a
full refresh of the committed population: accepting every suggestion (one audited override
each, one refresh), a suggestion changed since it was shown refused by name, read tokens
refused, the before/after table on the unassigned page; and on the demo population itself,
every panel within capacity once all suggestions are accepted, with room to spare or short."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from fhirpanel.api.app import create_app
from fhirpanel.config import Settings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.panels import CapacitySettings, ClinicianCapacity
from fhirpanel.domain.placement import NO_ROOM, NO_ROOM_TEXT
from fhirpanel.jobs.rows import stored_suggestions
from fhirpanel.jobs.steps import suggestions_for
from fhirpanel.run import open_source, run_full
from fhirpanel.service.review import ReviewService
from fhirpanel.store import Store
from fhirpanel.store.models import Clinician, PatientState
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

ACCEPTED = "placement suggestion accepted: "
URL = "/api/unassigned/assign-suggested"
PAIRS_FIELD = re.compile(r'name="pairs" value="([^"]*)"')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_template(tmp_path_factory.mktemp("placement-template"))


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Iterator[Store]:
    st = copy_store(template, tmp_path)
    yield st
    st.close()


@pytest.fixture
def trigger() -> TriggerRecorder:
    return TriggerRecorder()


@pytest.fixture
def client(store: Store, trigger: TriggerRecorder) -> FlaskClient:
    return create_app(api_settings(), store=store, trigger=trigger).test_client()


@pytest.fixture
def dashboard(store: Store, trigger: TriggerRecorder, tmp_path: Path) -> Flask:
    app = create_app(
        make_settings(tmp_path / "state.db", page_size=10), store=store, trigger=trigger
    )
    app.testing = True
    return app


def suggested(store: Store) -> list[dict[str, Any]]:
    return [r for r in stored_suggestions(store) if r["suggested"]]


def overrides_by_patient(store: Store) -> dict[str, dict[str, Any]]:
    found = {}
    for patient in store.patient_ids():
        row = store.override_for(patient)
        if row is not None:
            found[patient] = row
    return found


def placement_audit(store: Store) -> list[dict[str, Any]]:
    return [
        a
        for a in store.audit(limit=10_000)
        if a["action"] == "override" and a["detail"]["reason"].startswith(ACCEPTED)
    ]


def set_suggestion(store: Store, patient: str, practitioner: str | None, reason: str) -> None:
    """What a refresh placing the patient again does to the stored row."""
    with store.session() as s:
        s.execute(
            update(PatientState)
            .where(PatientState.patient == patient)
            .values(suggested=practitioner, suggestion_reason=reason)
        )


def other_eligible(store: Store, than: str) -> str:
    return next(
        c["practitioner"] for c in store.clinicians() if c["eligible"] and c["practitioner"] != than
    )


# ---------------------------------------------------------------- the JSON API


def test_assign_all_as_admin_makes_one_audited_override_per_suggestion(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    wanted = suggested(store)
    assert len(wanted) >= 20  # the demo's unassigned patients, each with a suggestion
    response = client.post(URL, json={"suggestions": "all"}, headers=ADMIN_H)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["refused"] == []
    assert [(a["patient"], a["practitioner"]) for a in body["assigned"]] == [
        (r["patient"], r["suggested"]) for r in wanted
    ]
    stored = overrides_by_patient(store)
    assert set(stored) == {r["patient"] for r in wanted}
    for row in wanted:
        override = stored[row["patient"]]
        assert override["practitioner"] == row["suggested"]
        assert override["reason"] == ACCEPTED + row["suggestion_reason"]
        assert (override["requested_by"], override["actor"]) == ("staff", "alice")
    assert len(placement_audit(store)) == len(wanted)
    assert trigger.calls == [("incremental", "api")]  # one refresh for the lot
    assert body["refresh"] == {"run_id": 4242, "started": True, "detail": "a refresh has started"}
    # pressed again before the refresh: every patient already has a change waiting
    again = client.post(URL, json={"suggestions": "all"}, headers=ADMIN_H).get_json()
    assert again["assigned"] == [] and again["refresh"] is None
    assert {r["problem"] for r in again["refused"]} == {"override-pending"}
    assert len(placement_audit(store)) == len(wanted)


def test_a_stale_pair_is_refused_with_a_clear_message(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    first, second, third = suggested(store)[:3]
    moved = other_eligible(store, second["suggested"])
    # a refresh placed the second patient again after the caller read the list
    set_suggestion(store, second["patient"], moved, "most room: 1 of 2 open")
    pairs = [{"patient": r["patient"], "practitioner": r["suggested"]} for r in (first, second)]
    pairs.append(
        {"patient": third["patient"].removeprefix("Patient/"), "practitioner": "prac-0008"}
    )
    response = client.post(URL, json={"suggestions": pairs}, headers=ADMIN_H)
    assert response.status_code == 200
    body = response.get_json()
    assert [a["patient"] for a in body["assigned"]] == [first["patient"]]
    refused = {r["patient"]: r for r in body["refused"]}
    assert refused[second["patient"]]["problem"] == "suggestion-changed"
    assert refused[second["patient"]]["detail"] == (
        f"{second['patient']}'s suggested clinician changed since it was shown "
        f"({second['suggested']}, now {moved}): reload and check the new suggestion"
    )
    if third["suggested"] != "Practitioner/prac-0008":
        assert refused[third["patient"]]["problem"] == "suggestion-changed"
    assert set(overrides_by_patient(store)) == {first["patient"]}


def test_a_read_token_is_refused(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    body = problem(client.post(URL, json={"suggestions": "all"}, headers=READ_H), 403)
    assert body["type"].endswith("insufficient-scope")
    assert overrides_by_patient(store) == {} and trigger.calls == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "suggestions"),
        ({"suggestions": "some"}, "suggestions"),
        ({"suggestions": []}, "suggestions"),
        ({"suggestions": "all", "why": "x"}, "why"),
        ({"suggestions": [{"patient": "pat-000003"}]}, "suggestions[0].practitioner"),
        (
            {"suggestions": [{"patient": "pat-000003", "practitioner": "p", "x": 1}]},
            "suggestions[0].x",
        ),
        ({"suggestions": [{"patient": "pat 3", "practitioner": "p"}]}, "suggestions[0].patient"),
        ({"suggestions": ["pat-000003"]}, "suggestions[0]"),
        ([], "(body)"),
    ],
)
def test_bodies_are_checked_strictly(
    client: FlaskClient, store: Store, payload: Any, field: str
) -> None:
    body = problem(client.post(URL, json=payload, headers=ADMIN_H), 422)
    assert body["errors"][0]["field"] == field
    assert overrides_by_patient(store) == {}


def test_malformed_or_non_json_bodies(client: FlaskClient) -> None:
    problem(client.post(URL, data="{", content_type="application/json", headers=ADMIN_H), 400)
    problem(client.post(URL, data="suggestions=all", headers=ADMIN_H), 415)


def test_a_patient_without_room_is_listed_with_the_reason(
    client: FlaskClient, store: Store
) -> None:
    row = suggested(store)[0]
    reason = f"{NO_ROOM_TEXT} (short 0.4: weight 1.0, most open panel 0.6)"
    set_suggestion(store, row["patient"], None, reason)
    items = client.get("/api/unassigned?page_size=100&sort=patient", headers=READ_H).get_json()
    found = next(i for i in items["items"] if i["patient"] == row["patient"])
    assert found["suggested"] == {"practitioner": None, "reason": reason}
    explained = client.get(f"/api/patients/{row['patient']}", headers=READ_H).get_json()
    assert explained["suggested"] == {"practitioner": None, "reason": reason}


# ---------------------------------------------------------------- the dashboard


def placement_table(html: str) -> dict[str, list[str]]:
    """The before/after table: clinician -> its cells' text."""
    table = html.split('<table id="placement">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for practitioner, cells in re.findall(
        r'<tr data-practitioner="([^"]+)">(.*?)</tr>', table, re.S
    ):
        texts = [
            " ".join(re.sub(r"<[^>]+>", " ", c).split())
            for c in re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S)
        ]
        rows[practitioner] = [unescape(t) for t in texts]
    return rows


def test_the_unassigned_page_shows_each_panel_before_and_after(
    dashboard: Flask, store: Store
) -> None:
    html = page(sign_in(dashboard), "/unassigned")
    assert "If every suggestion is accepted" in html
    table = placement_table(html)
    added = Counter(r["suggested"] for r in suggested(store))
    clinicians = {c["practitioner"]: c for c in store.clinicians() if c["eligible"]}
    assert set(table) == set(clinicians)
    for ref, cells in table.items():
        c = clinicians[ref]
        size_after = c["size"] + added[ref]
        assert cells[1] == str(c["size"])
        assert cells[2] == str(size_after) + (f" (+{added[ref]})" if added[ref] else "")
        assert cells[5] == str(c["capacity"])
        before, after = (float(x.rstrip("%")) for x in cells[6].split(" → "))
        assert before == pytest.approx(100 * c["risk_adjusted_size"] / c["capacity"], abs=0.06)
        assert after >= before and after <= 100
    assert f"Assign all {sum(added.values())} suggested" in html


def test_assign_all_from_the_dashboard(
    dashboard: Flask, store: Store, trigger: TriggerRecorder
) -> None:
    client = sign_in(dashboard)
    html = page(client, "/unassigned")
    pairs = unescape(PAIRS_FIELD.search(html).group(1))  # type: ignore[union-attr]
    csrf = CSRF_FIELD.search(html).group(1)  # type: ignore[union-attr]
    wanted = suggested(store)
    assert pairs == ",".join(f"{r['patient']} {r['suggested']}" for r in wanted)
    response = client.post(
        "/unassigned/assign-suggested",
        data={"pairs": pairs, "csrf_token": csrf, "next": "/unassigned"},
    )
    assert response.status_code == 303
    after = page(client, "/unassigned")
    assert flashes(after) == [
        f"{len(wanted)} patients will move to the suggested clinician (one override each, in the "
        "audit log). A refresh (run #4242) has started to apply it."
    ]
    assert len(placement_audit(store)) == len(wanted)
    assert {a["actor"] for a in placement_audit(store)} == {"boss"}
    assert trigger.calls == [("incremental", "dashboard")]
    assert "change pending" in after


def test_a_stale_pair_from_the_dashboard_is_named(dashboard: Flask, store: Store) -> None:
    client = sign_in(dashboard)
    html = page(client, "/unassigned")
    pairs = unescape(PAIRS_FIELD.search(html).group(1))  # type: ignore[union-attr]
    csrf = CSRF_FIELD.search(html).group(1)  # type: ignore[union-attr]
    stale = suggested(store)[0]
    set_suggestion(store, stale["patient"], None, f"{NO_ROOM_TEXT} (short 1.0)")
    client.post("/unassigned/assign-suggested", data={"pairs": pairs, "csrf_token": csrf})
    messages = [unescape(m) for m in flashes(page(client, "/unassigned"))]
    bare = stale["patient"].removeprefix("Patient/")
    assert messages[0] == (
        f"1 suggestion not accepted: patient {bare}'s suggestion changed since the page was "
        "loaded (now: nobody has room)."
    )
    assert messages[1].startswith(f"{len(suggested(store))} patients will move")
    assert stale["patient"] not in overrides_by_patient(store)


def test_the_button_sends_as_many_pairs_as_a_request_body_holds(
    store: Store, trigger: TriggerRecorder, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "state.db", page_size=10, max_body_bytes=1300)
    app = create_app(settings, store=store, trigger=trigger)
    html = page(sign_in(app), "/unassigned")
    sent = unescape(PAIRS_FIELD.search(html).group(1)).split(",")  # type: ignore[union-attr]
    wanted = suggested(store)
    assert 1 < len(sent) < len(wanted)
    assert sent == [f"{r['patient']} {r['suggested']}" for r in wanted[: len(sent)]]
    assert f"Assign all {len(sent)} suggested" in html
    assert f"The first {len(sent)} of {len(wanted)}" in html


def test_a_read_token_sees_the_table_but_no_button_and_cannot_post(
    dashboard: Flask, store: Store, trigger: TriggerRecorder
) -> None:
    client = sign_in(dashboard, READ)
    html = page(client, "/unassigned")
    assert '<table id="placement">' in html and "Assign all" not in html
    csrf = CSRF_FIELD.search(page(client, "/logout")).group(1)  # type: ignore[union-attr]
    row = suggested(store)[0]
    response = client.post(
        "/unassigned/assign-suggested",
        data={"pairs": f"{row['patient']} {row['suggested']}", "csrf_token": csrf},
    )
    assert response.status_code == 403
    assert overrides_by_patient(store) == {} and trigger.calls == []


# ---------------------------------------------------------------- the demo population


def demo(capacities: CapacitySettings | None = None) -> RunOutcome:
    settings = Settings.load(env={})
    tables = Tables.load(settings)
    if capacities is not None:
        tables = dataclasses.replace(
            tables, method=dataclasses.replace(tables.method, capacities=capacities)
        )
    source = open_source(f"ndjson:{POPULATION_DIR}", settings)
    return run_full(settings, source, date.fromisoformat(AS_OF), tables=tables)


def assert_within_capacity(outcome: RunOutcome) -> None:
    """Every panel with every suggestion accepted, from the panels and the suggestions alone."""
    load = {p.practitioner: p.risk_adjusted_size for p in outcome.panels.panels}
    for s in outcome.panels.suggestions:
        if s.practitioner is not None:
            load[s.practitioner] += s.weight
    for panel in outcome.panels.panels:
        grew = load[panel.practitioner] > panel.risk_adjusted_size
        assert not grew or load[panel.practitioner] <= panel.capacity + 1e-9, panel
    for change in outcome.panels.changes:
        assert change.load_after == pytest.approx(load[change.practitioner])


def test_the_demo_population_stays_within_capacity_once_every_suggestion_is_accepted() -> None:
    outcome = demo()
    unassigned = [a.patient for a in outcome.attribution.assignments if a.status == "unassigned"]
    assert [s.patient for s in outcome.panels.suggestions] == unassigned
    assert all(s.practitioner for s in outcome.panels.suggestions)
    assert_within_capacity(outcome)
    # Short of room: each clinician has 3 places left. Still nobody goes over; the rest wait.
    tight = {
        p.practitioner: ClinicianCapacity(1.0, p.risk_adjusted_size + 3.0, 1.0)
        for p in outcome.panels.panels
    }
    short = demo(CapacitySettings(default=ClinicianCapacity(1.0, 1.0, 1.0), overrides=tight))
    assert_within_capacity(short)
    bases = Counter(s.basis for s in short.panels.suggestions)
    assert 0 < bases[NO_ROOM] < len(unassigned)
    no_room = [s for s in short.panels.suggestions if s.basis == NO_ROOM]
    assert all(s.reason.startswith(NO_ROOM_TEXT) and s.shortfall for s in no_room)


def test_the_stored_demo_stays_within_capacity_once_every_suggestion_is_accepted(
    store: Store,
) -> None:
    preview = ReviewService.over(store, TriggerRecorder(), "test").placement_preview()
    assert preview.pairs and preview.no_room == 0
    assert preview.over_capacity_after == []
    assert sum(c.added for c in preview.changes) == len(preview.pairs)


def test_an_incremental_pass_places_its_patients_after_the_stored_suggestions(
    store: Store,
) -> None:
    """An incremental pass recomputes a few patients: the stored suggestions of the others keep
    their room, so a newcomer does not take it (here: none is left) and the list as a whole
    stays within capacity."""
    outcome = demo()
    tables = Tables.load(Settings.load(env={})).method
    newcomer = next(
        s
        for s in outcome.panels.suggestions
        if s.basis == "capacity" and "pediatric" not in s.reason
    )
    one = next(a for a in outcome.attribution.assignments if a.patient == newcomer.patient)
    outcome.attribution = dataclasses.replace(outcome.attribution, assignments=(one,))
    held: dict[str, float] = {}
    for row in suggested(store):
        if row["patient"] != newcomer.patient:
            held[row["suggested"]] = held.get(row["suggested"], 0.0) + row["weight"]

    def fill(room: dict[str, float]) -> None:
        """Each eligible panel's stored size set so that after the stored suggestions it has
        `room` left (0 unless named)."""
        with store.session() as s:
            for c in s.query(Clinician).filter(Clinician.eligible.is_(True)):
                c.risk_adjusted_size = (
                    c.capacity - held.get(c.practitioner, 0.0) - room.get(c.practitioner, 0.0)
                )

    fill({})
    (alone,) = suggestions_for(store, outcome, tables, outcome.panels.weights)
    assert (alone.patient, alone.practitioner, alone.basis) == (newcomer.patient, None, NO_ROOM)
    fill({"Practitioner/prac-0006": 5.0})
    (alone,) = suggestions_for(store, outcome, tables, outcome.panels.weights)
    assert alone.practitioner == "Practitioner/prac-0006"
