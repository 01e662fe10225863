"""The dashboard pages through the Flask test client, over a store filled by a full refresh of
the committed population: sign-in, every page's content against the store, filters, paging and
sorting, the confirm and override forms (CSRF, validation, audit, the refresh they ask for), and
a read token that sees everything but can change nothing. One test writes back to a real
sandbox FHIR server so the patient page shows the CareTeam and CarePlan ids from the ledger."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fhirpanel.api.app import create_app
from fhirpanel.api.dashboard import RUN_STATUS, SESSION_KEY
from fhirpanel.api.openapi import RUN_STATUSES
from fhirpanel.config import Settings
from fhirpanel.jobs.refresh import full_refresh
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.conftest import AS_OF, POPULATION_DIR

AS_OF_DATE = date.fromisoformat(AS_OF)
ADMIN, READ = "admin-secret-token", "read-secret-token"
ROW = re.compile(r'<tr data-patient="([^"]+)"')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class Trigger:
    """Stands in for request_run: records calls, answers a run id or None (busy)."""

    def __init__(self, answer: int | None = 41) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    def __call__(self, kind: str, trigger: str) -> int | None:
        self.calls.append((kind, trigger))
        return self.answer


def make_settings(db: Path, **api: Any) -> Settings:
    base = Settings.load(env={})
    return dataclasses.replace(
        base,
        database_url=f"sqlite:///{db}",
        api=dataclasses.replace(
            base.api,
            admin_tokens=f"boss={ADMIN}",
            read_tokens=f"viewer={READ}",
            secret_key="test-secret",
            **api,
        ),
    )


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full refresh of the committed population (NDJSON, no write-back), copied per test."""
    db = tmp_path_factory.mktemp("dash") / "filled.db"
    store = Store(f"sqlite:///{db}")
    result = full_refresh(
        Settings.load(env={}),
        store,
        source=f"ndjson:{POPULATION_DIR}",
        as_of=AS_OF_DATE,
        write=False,
    )
    assert result.status == "succeeded", result.error
    store.close()
    return db


@pytest.fixture
def store(filled_db: Path, tmp_path: Path) -> Iterator[Store]:
    db = tmp_path / "state.db"
    shutil.copy(filled_db, db)
    st = Store(f"sqlite:///{db}")
    yield st
    st.close()


@pytest.fixture
def trigger() -> Trigger:
    return Trigger()


@pytest.fixture
def app(store: Store, trigger: Trigger, tmp_path: Path) -> Flask:
    application = create_app(
        make_settings(tmp_path / "state.db", page_size=10), store=store, trigger=trigger
    )
    application.testing = True
    return application


def sign_in(app: Flask, token: str = ADMIN) -> FlaskClient:
    """The sign-in form, posted (the only way a token signs in)."""
    client = app.test_client()
    response = client.post("/login", data={"token": token, "csrf_token": csrf(client)})
    assert response.status_code == 303
    return client


def csrf(client: FlaskClient) -> str:
    """The CSRF token a page's forms carry (the sign-out page when signed in, else the
    sign-in page)."""
    with client.session_transaction() as session:
        signed_in = SESSION_KEY in session
    found = CSRF_FIELD.search(page(client, "/logout" if signed_in else "/login"))
    assert found is not None
    return found.group(1)


def page(client: FlaskClient, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.get_data(as_text=True)


def flashes(html: str) -> list[str]:
    return re.findall(r'<li class="(?:success|error|info)">([^<]*)</li>', html)


def biggest(store: Store) -> dict[str, Any]:
    return max(store.clinicians(), key=lambda c: c["size"])


def assigned_patient(store: Store, practitioner: str) -> str:
    return next(
        p
        for p in store.patient_ids()
        if (store.patient_state(p) or {}).get("practitioner") == practitioner
    )


# ---------------------------------------------------------------- sign-in


def test_every_page_needs_sign_in(app: Flask) -> None:
    client = app.test_client()
    for url in (
        "/",
        "/panels/prac-0001",
        "/patients/pat-000001",
        "/unassigned",
        "/outreach",
        "/runs",
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response.location.startswith("/login?next=")
    response = client.post("/patients/pat-000001/confirm", data={"confirmed_by": "clinician"})
    assert response.status_code == 401
    assert "Please sign in" in response.get_data(as_text=True)


def test_login_form_checks_token_and_csrf(app: Flask) -> None:
    client = app.test_client()
    html = page(client, "/login?next=/runs")
    assert 'type="password"' in html and "Access token" in html
    assert client.post("/login", data={"token": ADMIN}).status_code == 400  # no CSRF token
    refused = client.post("/login", data={"token": "nope", "csrf_token": csrf(client)})
    assert refused.status_code == 401
    assert "not recognised" in refused.get_data(as_text=True)
    ok = client.post("/login", data={"token": ADMIN, "csrf_token": csrf(client), "next": "/runs"})
    assert ok.status_code == 303 and ok.location == "/runs"


def test_the_session_cookie_keeps_only_a_session_id_and_logout_ends_it(app: Flask) -> None:
    client = sign_in(app)
    with client.session_transaction() as session:
        kept = dict(session)
    assert list(kept) == [SESSION_KEY] and ADMIN not in json.dumps(kept)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", kept[SESSION_KEY])
    assert "Signed in as <strong>boss</strong>" in page(client, "/")
    # Signed in, the sign-in page sends the browser on; a foreign `next` is ignored.
    assert client.get("/login?next=//evil.example/").location == "/"
    assert 'action="/logout"' in page(client, "/logout")  # a typed URL asks first
    assert client.get("/").status_code == 200
    response = client.post("/logout", data={"csrf_token": csrf(client)})
    assert response.status_code == 303
    assert client.get("/").status_code == 302


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", "runs"],
)
def test_login_ignores_a_next_that_leaves_the_site(app: Flask, target: str) -> None:
    client = app.test_client()
    response = client.post(
        "/login", data={"token": ADMIN, "next": target, "csrf_token": csrf(client)}
    )
    assert response.status_code == 303 and response.location == "/"


def test_pages_are_not_cached_or_framed(app: Flask) -> None:
    response = sign_in(app).get("/")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_a_removed_token_signs_its_sessions_out(app: Flask, store: Store, tmp_path: Path) -> None:
    client = sign_in(app)
    cookie = client.get_cookie("session")
    assert cookie is not None
    settings = make_settings(tmp_path / "state.db")
    settings = dataclasses.replace(
        settings, api=dataclasses.replace(settings.api, admin_tokens="boss=a-new-token")
    )
    other = create_app(settings, store=store, trigger=Trigger()).test_client()
    other.set_cookie("session", cookie.value)
    assert other.get("/").status_code == 302


# ---------------------------------------------------------------- pages


def test_overview_shows_panels_against_capacity(app: Flask, store: Store) -> None:
    html = page(sign_in(app), "/")
    for words in (
        "Panel size",
        "Risk-adjusted size",
        "Capacity",
        "Unconfirmed",
        "Unassigned",
        "Room left",
    ):
        assert words in html
    raw = re.search(r'<script type="application/json" id="panel-data">(.*?)</script>', html, re.S)
    assert raw is not None
    chart = json.loads(raw.group(1))
    clinicians = [c for c in store.clinicians() if c["eligible"] or c["size"]]
    assert chart["size"] == [c["size"] for c in clinicians]
    assert chart["risk_adjusted"] == [c["risk_adjusted_size"] for c in clinicians]
    assert chart["capacity"] == [c["capacity"] for c in clinicians]
    assert "chart.umd.js" in html
    for c in clinicians:
        assert f'data-practitioner="{c["practitioner"]}"' in html
    unassigned = sum(
        1 for p in store.patient_ids() if (store.patient_state(p) or {})["status"] == "unassigned"
    )
    assert f'id="count-unassigned">{unassigned}<' in html
    assert 'id="last-run-status">succeeded<' in html


def test_overview_shows_supply_capacity_basis_blended_and_peers(app: Flask, store: Store) -> None:
    from markupsafe import escape

    from fhirpanel.api.dashboard.pages import vs_peers

    html = page(sign_in(app), "/")
    for words in ("Supply (visits/12&nbsp;mo)", "Capacity used", "Blended", "vs peers"):
        assert words in html
    clinicians = [c for c in store.clinicians() if c["eligible"] or c["size"]]
    with_supply = [c for c in clinicians if c["supply"] is not None]
    assert with_supply
    for c in with_supply:
        assert f'title="{escape(c["capacity_basis"])}"' in html
        assert f'<td class="num">{round(c["supply"])}</td>' in html
    peers = [c for c in clinicians if c["relative"] is not None]
    assert peers
    for c in peers:
        text = vs_peers(c["relative"])
        assert text is not None and "pct" in text and str(escape(text)) in html
    assert vs_peers(
        {"risk_adjusted_ratio": 1.1666, "percentile": 63.6, "framework": "adult", "peers": 5}
    ) == ("1.17× median, 64th pct")
    assert vs_peers({"risk_adjusted_ratio": None, "percentile": 12.0}) == "12th pct"
    assert vs_peers(None) is None


def test_static_files_are_served_with_the_chart_library_licence(app: Flask) -> None:
    client = app.test_client()
    chart = client.get("/assets/chart.umd.js").get_data(as_text=True)
    assert "MIT License" in chart[:3000] and "chart.js@4" in chart[:3000]
    assert client.get("/assets/dashboard.css").status_code == 200


def test_panel_page_pages_filters_and_sorts(app: Flask, store: Store) -> None:
    client = sign_in(app)
    top = biggest(store)
    pid = top["practitioner"].split("/")[1]
    html = page(client, f"/panels/{pid}")
    rows = ROW.findall(html)
    assert len(rows) == 10 and rows == sorted(rows)
    pages = -(-top["size"] // 10)
    assert f"Page 1 of {pages}" in html
    last = ROW.findall(page(client, f"/panels/{pid}?page={pages}"))
    assert len(last) == top["size"] - 10 * (pages - 1)
    assert ROW.findall(page(client, f"/panels/{pid}?page=999")) == last  # clamped
    # The `Practitioner/` form is accepted too.
    assert ROW.findall(page(client, f"/panels/{top['practitioner']}")) == rows

    states = {p: store.patient_state(p) for p in store.patient_ids()}
    mine = [s for s in states.values() if s and s["practitioner"] == top["practitioner"]]
    tier = max(mine, key=lambda s: s["tier"])["tier"]
    tiered = ROW.findall(page(client, f"/panels/{pid}?tier={tier}&sort=patient"))
    assert tiered and all(states[p]["tier"] == tier for p in tiered)  # type: ignore[index]
    ordered = ROW.findall(page(client, f"/panels/{pid}?sort=-tier"))
    tiers = [states[p]["tier"] for p in ordered]  # type: ignore[index]
    assert tiers == sorted(tiers, reverse=True) and tiers[0] == tier
    overdue = ROW.findall(page(client, f"/panels/{pid}?overdue=1"))
    assert overdue and all(states[p]["outreach"] for p in overdue)  # type: ignore[index]
    first = mine[0]["patient"]
    store.confirm(first, top["practitioner"], confirmed_by="clinician", actor="test")
    unconfirmed = ROW.findall(page(client, f"/panels/{pid}?unconfirmed=1&sort=patient"))
    assert first not in unconfirmed and len(unconfirmed) == min(10, top["size"] - 1)
    assert "No panel for" in page(client, "/panels/prac-9999", 404)


def test_patient_page_explains_the_assignment(app: Flask, store: Store) -> None:
    client = sign_in(app)
    state = next(
        s for p in store.patient_ids() if (s := store.patient_state(p)) and s["rule"] == "plurality"
    )
    html = page(client, f"/patients/{state['patient'].split('/')[1]}")
    assert "Seen most often" in html and "cut 2" in html
    assert "visits in the last 18 months" in html
    for practitioner, count in state["detail"]["visits"].items():
        assert f"{count}</td>" in html
        assert practitioner.split("/")[1] in html or store.clinician(practitioner)
    for encounter in state["detail"]["evidence"]:
        assert encounter in html
    assert "Charlson index" in html and "HCC score" in html
    assert '<dd id="framework">adult' in html or '<dd id="framework">pediatric' in html
    blend = state["detail"]["blend"]
    assert f'<dd id="blend">{blend["factor"]:.2f} ' in html
    assert f"Charlson {blend['charlson']:.2f}, utilisation {blend['utilisation']:.2f}" in html
    assert "Written to the record" in html and "not written" in html  # NDJSON: no write-back
    assert "Assignment history" in html
    unassigned = next(
        s
        for p in store.patient_ids()
        if (s := store.patient_state(p)) and s["status"] == "unassigned"
    )
    html = page(client, f"/patients/{unassigned['patient']}")
    assert "Suggested clinician" in html and unassigned["reason"] in html
    assert "No patient pat-nobody" in page(client, "/patients/pat-nobody", 404)


def test_patient_page_shows_a_childs_framework_and_no_hcc(app: Flask, store: Store) -> None:
    client = sign_in(app)
    child = next(
        s
        for p in store.patient_ids()
        if (s := store.patient_state(p))
        and (s["detail"].get("risk") or {}).get("framework") == "pediatric"
    )
    risk = child["detail"]["risk"]
    html = page(client, f"/patients/{child['patient'].split('/')[1]}")
    assert (
        f'<dd id="framework">pediatric <span class="small muted">(PMCA: {risk["complexity"]}'
        in html
    )
    assert "(pediatric framework: no CMS-HCC under 18)" in html


def test_unassigned_outreach_and_runs_pages(app: Flask, store: Store) -> None:
    client = sign_in(app)
    states = [s for p in store.patient_ids() if (s := store.patient_state(p))]
    html = page(client, "/unassigned")
    total = sum(1 for s in states if s["status"] == "unassigned")
    assert f"{total} patients" in html and "Assign to suggested" in html
    html = page(client, "/outreach")
    flagged = sum(1 for s in states if s["status"] == "assigned" and s["outreach"])
    assert f"{flagged} patients" in html
    assert "No check-up in 24 months" in html or "Not seen in 12 months" in html
    html = page(client, "/runs")
    assert "Run incremental refresh" in html and "Run full refresh" in html
    assert 'class="badge ok run-status">succeeded<' in html
    found = client.get("/find?patient=Patient/pat-000001")
    assert found.location == "/patients/pat-000001"


# ---------------------------------------------------------------- changes


def test_confirm_needs_csrf_and_is_stored_and_audited(app: Flask, store: Store) -> None:
    client = sign_in(app)
    top = biggest(store)
    patient = assigned_patient(store, top["practitioner"])
    bare = patient.split("/")[1]
    assert (
        client.post(f"/patients/{bare}/confirm", data={"confirmed_by": "clinician"}).status_code
        == 400
    )
    assert (
        client.post(
            f"/patients/{bare}/confirm", data={"confirmed_by": "clinician", "csrf_token": "forged"}
        ).status_code
        == 400
    )
    assert (store.patient_state(patient) or {})["confirmation"] == "proposed"

    back = f"/panels/{top['practitioner'].split('/')[1]}?sort=-tier"
    response = client.post(
        f"/patients/{bare}/confirm",
        data={"confirmed_by": "patient", "csrf_token": csrf(client), "next": back},
    )
    assert response.status_code == 303 and response.location == back
    assert (store.patient_state(patient) or {})["confirmation"] == "patient"
    assert store.audit(patient=patient)[0]["actor"] == "boss"
    html = page(client, back)
    assert any("confirmed with the patient" in f for f in flashes(html))
    assert (store.clinician(top["practitioner"]) or {})["unconfirmed"] == top["unconfirmed"] - 1
    bad = client.post(
        f"/patients/{bare}/confirm",
        data={"confirmed_by": "family", "csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any("Choose who confirmed" in f for f in flashes(bad.get_data(as_text=True)))


def test_override_is_stored_asks_for_a_refresh_and_shows_after_one(
    app: Flask, store: Store, trigger: Trigger
) -> None:
    client = sign_in(app)
    clinicians = [c for c in store.clinicians() if c["eligible"] and not c["pediatric"]]
    source, target = clinicians[0], clinicians[1]
    patient = assigned_patient(store, source["practitioner"])
    bare = patient.split("/")[1]
    form = page(client, f"/patients/{bare}/override?next=/panels/x")
    assert "Who asked?" in form and target["practitioner"] in form

    response = client.post(
        f"/patients/{bare}/override",
        data={
            "practitioner": target["practitioner"],
            "requested_by": "family",
            "reason": "moved closer to this clinic",
            "csrf_token": csrf(client),
        },
    )
    assert response.status_code == 303
    override = store.override_for(patient)
    assert override is not None and override["practitioner"] == target["practitioner"]
    assert override["actor"] == "boss" and override["requested_by"] == "family"
    assert trigger.calls == [("incremental", "dashboard")]
    assert patient in store.pending_patients()
    html = page(client, f"/patients/{bare}")
    assert any("run #41" in f for f in flashes(html))
    assert "waiting for refresh" in html and "Remove override" in html

    # The next refresh applies it: the patient is on the new panel, by rule manual.
    result = full_refresh(
        Settings.load(env={}),
        store,
        source=f"ndjson:{POPULATION_DIR}",
        as_of=AS_OF_DATE,
        write=False,
    )
    assert result.status == "succeeded"
    state = store.patient_state(patient) or {}
    assert state["practitioner"] == target["practitioner"] and state["rule"] == "manual"
    html = page(client, f"/panels/{target['practitioner'].split('/')[1]}?sort=rule")
    assert patient in ROW.findall(html) or patient in page(
        client, f"/panels/{target['practitioner'].split('/')[1]}?unconfirmed=1&sort=-tier"
    )
    assert 'id="patient-rule">Override<' in page(client, f"/patients/{bare}")

    removed = client.post(
        f"/patients/{bare}/override/remove",
        data={"csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any("Override of patient" in f for f in flashes(removed.get_data(as_text=True)))
    assert store.override_for(patient) is None


def test_a_status_needs_csrf_takes_the_patient_off_the_panel_and_clears(
    app: Flask, store: Store, trigger: Trigger
) -> None:
    client = sign_in(app)
    patient = assigned_patient(store, biggest(store)["practitioner"])
    bare = patient.split("/")[1]
    html = page(client, f"/patients/{bare}")
    assert "Record that the patient left" in html and "Clear status" not in html
    data = {"status": "moved-away", "reason": "letter returned"}
    assert client.post(f"/patients/{bare}/status", data=data).status_code == 400
    assert store.active_statuses() == {}

    done = client.post(
        f"/patients/{bare}/status",
        data=dict(data, csrf_token=csrf(client)),
        follow_redirects=True,
    )
    assert any("recorded as moved away" in f for f in flashes(done.get_data(as_text=True)))
    assert store.active_statuses() == {patient: "moved-away"}
    assert trigger.calls == [("incremental", "dashboard")]
    assert store.audit(patient=patient)[0]["actor"] == "boss"
    refused = client.post(
        f"/patients/{bare}/status",
        data={"status": "gone", "reason": "x", "csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any("Choose what happened" in f for f in flashes(refused.get_data(as_text=True)))

    # The next refresh excludes the patient with the reason; the page says why.
    result = full_refresh(
        Settings.load(env={}),
        store,
        source=f"ndjson:{POPULATION_DIR}",
        as_of=AS_OF_DATE,
        write=False,
    )
    assert result.status == "succeeded"
    state = store.patient_state(patient) or {}
    assert (state["status"], state["reason"]) == ("excluded", "moved-away")
    html = page(client, f"/patients/{bare}")
    assert 'id="patient-status-set"' in html and "letter returned" in html
    cleared = client.post(
        f"/patients/{bare}/status/clear",
        data={"csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any("cleared" in f for f in flashes(cleared.get_data(as_text=True)))
    assert store.active_statuses() == {}


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"practitioner": "", "requested_by": "family", "reason": "x"}, "Choose the clinician"),
        (
            {"practitioner": "Practitioner/prac-9999", "requested_by": "family", "reason": "x"},
            "Choose the clinician",
        ),
        ({"requested_by": "family", "reason": "x"}, "Choose the clinician"),
        ({"requested_by": "neighbour", "reason": "x", "eligible": True}, "who asked"),
        ({"requested_by": "patient", "reason": "  ", "eligible": True}, "short reason"),
        ({"requested_by": "patient", "reason": "x", "ineligible": True}, "not a primary-care"),
    ],
)
def test_override_refuses_bad_input(
    app: Flask, store: Store, trigger: Trigger, form: dict[str, Any], message: str
) -> None:
    client = sign_in(app)
    patient = assigned_patient(store, biggest(store)["practitioner"])
    data = {k: v for k, v in form.items() if k not in ("eligible", "ineligible")}
    if form.get("eligible"):
        data["practitioner"] = next(c["practitioner"] for c in store.clinicians() if c["eligible"])
    if form.get("ineligible"):
        ineligible = [c for c in store.clinicians() if not c["eligible"]]
        if not ineligible:  # every stored clinician is eligible: mark one as not
            from sqlalchemy import update

            from fhirpanel.store.models import Clinician

            with store.session() as s:
                s.execute(
                    update(Clinician)
                    .where(Clinician.practitioner == "Practitioner/prac-0007")
                    .values(eligible=False)
                )
            ineligible = [store.clinician("Practitioner/prac-0007") or {}]
        data["practitioner"] = ineligible[0]["practitioner"]
    data["csrf_token"] = csrf(client)
    response = client.post(
        f"/patients/{patient.split('/')[1]}/override", data=data, follow_redirects=True
    )
    assert any(message in f for f in flashes(response.get_data(as_text=True))), message
    assert store.override_for(patient) is None and trigger.calls == []
    assert (
        client.post(
            "/patients/pat-nobody/override", data=dict(data, csrf_token=csrf(client))
        ).status_code
        == 404
    )


def test_read_token_sees_everything_but_cannot_change(
    app: Flask, store: Store, trigger: Trigger
) -> None:
    client = sign_in(app, READ)
    top = biggest(store)
    pid = top["practitioner"].split("/")[1]
    html = page(client, f"/panels/{pid}")
    assert "view only" in html and len(ROW.findall(html)) == 10
    assert "Confirm with clinician" not in html and "Change clinician" not in html
    assert "Run full refresh" not in page(client, "/runs")
    assert "Assign to suggested" not in page(client, "/unassigned")
    patient = assigned_patient(store, top["practitioner"])
    bare = patient.split("/")[1]
    assert "Confirm with" not in page(client, f"/patients/{bare}")
    token = csrf(client)
    for url, data in (
        (f"/patients/{bare}/confirm", {"confirmed_by": "clinician"}),
        (
            f"/patients/{bare}/override",
            {"practitioner": top["practitioner"], "requested_by": "patient", "reason": "x"},
        ),
        (f"/patients/{bare}/override/remove", {}),
        ("/runs/start", {"kind": "full"}),
        ("/unassigned/assign-suggested", {"pairs": f"{patient} {top['practitioner']}"}),
    ):
        response = client.post(url, data=dict(data, csrf_token=token))
        assert response.status_code == 403, url
        assert "view only" in response.get_data(as_text=True)
    assert client.get(f"/patients/{bare}/override").status_code == 403
    assert (store.patient_state(patient) or {})["confirmation"] == "proposed"
    assert store.override_for(patient) is None and trigger.calls == []
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303


def test_run_buttons_start_a_refresh_or_say_one_is_running(
    app: Flask, store: Store, trigger: Trigger
) -> None:
    client = sign_in(app)
    response = client.post(
        "/runs/start",
        data={"kind": "incremental", "csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any(
        "Incremental refresh started (run #41)" in f
        for f in flashes(response.get_data(as_text=True))
    )
    assert trigger.calls == [("incremental", "dashboard")]
    trigger.answer = None
    response = client.post(
        "/runs/start", data={"kind": "full", "csrf_token": csrf(client)}, follow_redirects=True
    )
    assert any("already running" in f for f in flashes(response.get_data(as_text=True)))
    bad = client.post(
        "/runs/start",
        data={"kind": "everything", "csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any("Choose an incremental" in f for f in flashes(bad.get_data(as_text=True)))
    # While a refresh holds the lock the buttons are disabled and every page says so.
    assert store.try_lock("somebody-else", 3600)
    run_id = store.start_run("full", "schedule", "test", AS_OF)
    html = page(client, "/runs")
    assert "disabled" in html and f"run #{run_id}" in html
    assert "refresh is running" in page(client, "/")
    store.release_lock("somebody-else")


# ---------------------------------------------------------------- held runs

HELD = {
    "removed_patients": {"count": 100, "of": 300, "share": 0.3333, "limit": 0.05},
    "ended_participations": {"count": 2, "of": 248, "share": 0.0081, "limit": 0.05},
}
REMOVED_WORDS = "would remove 100 of 300 stored patients (33.3%, limit 5%)"


def held_app(store: Store, tmp_path: Path) -> Flask:
    """The app with a source configured, so accepting a held refresh can queue the next."""
    settings = make_settings(tmp_path / "state.db", page_size=10)
    settings = dataclasses.replace(
        settings,
        scheduler=dataclasses.replace(
            settings.scheduler, source=f"ndjson:{POPULATION_DIR}", as_of=AS_OF
        ),
    )
    application = create_app(settings, store=store, trigger=Trigger())
    application.testing = True
    return application


def record_held(store: Store) -> int:
    run_id = store.start_run("full", "schedule", f"ndjson:{POPULATION_DIR}", AS_OF)
    store.finish_run(
        run_id,
        "held",
        counts={"held": HELD},
        seconds=1.0,
        error="full refresh held: it would remove 100 of 300 stored patients",
    )
    return run_id


def test_a_held_run_is_shown_in_words_and_an_admin_accepts_it_after_confirming(
    store: Store, tmp_path: Path
) -> None:
    app = held_app(store, tmp_path)
    run_id = record_held(store)
    store.worker_heartbeat()  # a live worker: the next pass is queued, not run in the test
    client = sign_in(app)

    # Every page but the runs page carries the banner; the runs page has the figures in words.
    overview = page(client, "/")
    banner = overview.split('id="held-banner"', 1)[1].split("</div>", 1)[0]
    assert f"run #{run_id} (full) is <strong>held</strong>" in banner
    assert REMOVED_WORDS in banner and "would end" not in banner  # only what is over
    assert "accept if the change is real" in banner
    assert 'id="held-banner"' in page(client, "/unassigned")
    runs = page(client, "/runs")
    assert 'id="held-banner"' not in runs
    row = runs.split(f'<tr data-run="{run_id}">', 1)[1].split("</tr>", 1)[0]
    assert "held: needs review" in row
    assert f"{REMOVED_WORDS} <strong>(over the limit)</strong>" in row
    assert "would end 2 of 248 active PCP participations (0.8%, limit 5%)" in row
    assert f'action="/runs/{run_id}/accept"' in row and "Accept this change" in row

    # The button (a POST without CSRF is refused) leads to a confirmation with the figures.
    assert client.post(f"/runs/{run_id}/accept", data={"confirm": "yes"}).status_code == 400
    step = client.post(f"/runs/{run_id}/accept", data={"csrf_token": csrf(client)})
    assert step.status_code == 200
    confirm = step.get_data(as_text=True)
    assert f"Accept the change held in run #{run_id}?" in confirm and REMOVED_WORDS in confirm
    assert 'name="confirm" value="yes"' in confirm
    assert REMOVED_WORDS in page(client, f"/runs/{run_id}/accept")  # the same page by address
    stored = store.run(run_id)
    assert stored is not None and stored["status"] == "held"
    assert not [a for a in store.audit() if a["action"] == "accept-change"]

    done = client.post(
        f"/runs/{run_id}/accept", data={"csrf_token": csrf(client), "confirm": "yes"}
    )
    assert done.status_code == 303 and done.location == "/runs"
    accepted = store.run(run_id)
    assert accepted is not None and accepted["status"] == "accepted"
    assert accepted["counts"]["accepted"]["by"] == "boss"
    audit = [a for a in store.audit() if a["action"] == "accept-change"]
    assert len(audit) == 1 and audit[0]["actor"] == "boss" and audit[0]["detail"]["run"] == run_id
    queued = [r for r in store.runs() if r["status"] == "queued"]
    assert len(queued) == 1 and queued[0]["kind"] == "full" and queued[0]["id"] > run_id
    html = page(client, "/runs")
    assert any(
        f"Run #{run_id} accepted: run {queued[0]['id']} is queued" in f for f in flashes(html)
    )
    row = html.split(f'<tr data-run="{run_id}">', 1)[1].split("</tr>", 1)[0]
    assert "held, then accepted" in row and "Accepted by boss" in row
    assert "Accept this change" not in row and 'id="held-banner"' not in page(client, "/")

    # A second accept is refused with a message; nothing more is audited or queued.
    again = client.post(
        f"/runs/{run_id}/accept",
        data={"csrf_token": csrf(client), "confirm": "yes"},
        follow_redirects=True,
    )
    assert any("already accepted by boss" in f for f in flashes(again.get_data(as_text=True)))
    assert len([a for a in store.audit() if a["action"] == "accept-change"]) == 1
    assert len([r for r in store.runs() if r["status"] == "queued"]) == 1
    assert client.get("/runs/999/accept").status_code == 404


def test_a_read_token_sees_a_held_run_but_cannot_accept_it(store: Store, tmp_path: Path) -> None:
    app = held_app(store, tmp_path)
    run_id = record_held(store)
    client = sign_in(app, READ)
    banner = page(client, "/").split('id="held-banner"', 1)[1].split("</div>", 1)[0]
    assert REMOVED_WORDS in banner and "an administrator can accept" in banner
    runs = page(client, "/runs")
    assert REMOVED_WORDS in runs and "Accept this change" not in runs
    assert "An administrator can accept it" in runs
    assert client.get(f"/runs/{run_id}/accept").status_code == 403
    response = client.post(
        f"/runs/{run_id}/accept", data={"csrf_token": csrf(client), "confirm": "yes"}
    )
    assert response.status_code == 403
    stored = store.run(run_id)
    assert stored is not None and stored["status"] == "held"


def test_a_held_run_a_later_run_superseded_leaves_the_banner(store: Store, tmp_path: Path) -> None:
    app = held_app(store, tmp_path)
    run_id = record_held(store)
    client = sign_in(app)
    assert 'id="held-banner"' in page(client, "/")
    later = store.start_run("full", "schedule", f"ndjson:{POPULATION_DIR}", AS_OF)
    store.finish_run(later, "succeeded", counts={"assigned": 248}, seconds=1.0)
    assert 'id="held-banner"' not in page(client, "/")
    row = page(client, "/runs").split(f'<tr data-run="{run_id}">', 1)[1].split("</tr>", 1)[0]
    assert "held, superseded" in row and REMOVED_WORDS in row
    assert f"Run #{later} (full, succeeded) came after it" in row
    assert "Accept this change" not in row
    refused = client.post(
        f"/runs/{run_id}/accept",
        data={"csrf_token": csrf(client), "confirm": "yes"},
        follow_redirects=True,
    )
    assert any(f"superseded by run {later}" in f for f in flashes(refused.get_data(as_text=True)))
    stored = store.run(run_id)
    assert stored is not None and stored["status"] == "held"


def test_every_run_status_has_a_label(app: Flask, store: Store) -> None:
    assert set(RUN_STATUS) == set(RUN_STATUSES)
    for status in RUN_STATUSES:
        # One source each: a later succeeded run of the same source would supersede.
        run_id = store.start_run("incremental", "schedule", status, AS_OF, status=status)
        store.finish_run(run_id, status, seconds=0.1)
    html = page(sign_in(app), "/runs")
    for label, css in RUN_STATUS.values():
        assert f'class="badge {css} run-status">{label}<' in html


# ---------------------------------------------------------------- with a FHIR server


def test_patient_page_shows_the_care_team_and_plan_written(
    sandbox: SandboxServer, population_dir: Path, tmp_path: Path
) -> None:
    sandbox.load_ndjson_dir(population_dir)
    settings = make_settings(tmp_path / "written.db")
    settings = dataclasses.replace(
        settings, fhir=dataclasses.replace(settings.fhir, base_url=sandbox.base_url)
    )
    store = Store(settings.database)
    try:
        result = full_refresh(settings, store, as_of=AS_OF_DATE, write=True)
        assert result.status == "succeeded", result.error
        from fhirpanel.writeback.identity import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value

        patient = next(
            p
            for p in store.patient_ids()
            if store.ledger_entry("CarePlan", identifier_value(CARE_PLAN_KIND, p))
        )
        team = store.ledger_entry("CareTeam", identifier_value(CARE_TEAM_KIND, patient)) or {}
        plan = store.ledger_entry("CarePlan", identifier_value(CARE_PLAN_KIND, patient)) or {}
        client = sign_in(create_app(settings, store=store, trigger=Trigger()))
        html = page(client, f"/patients/{patient.split('/')[1]}")
        assert team["id"] in html and plan["id"] in html
        assert re.search(r'<td class="num">1</td>', html)  # version 1 of each
        # The server really has them, under those ids.
        for rtype, entry in (("CareTeam", team), ("CarePlan", plan)):
            resource = sandbox_read(sandbox, rtype, entry["id"])
            assert resource["subject"]["reference"] == patient
    finally:
        store.close()


def sandbox_read(sandbox: SandboxServer, rtype: str, rid: str) -> dict[str, Any]:
    import requests

    response = requests.get(
        f"{sandbox.base_url}/{rtype}/{rid}", headers={"Accept": "application/fhir+json"}, timeout=10
    )
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def test_confirm_refuses_when_the_patient_moved_since_the_page_loaded(
    app: Flask, store: Store
) -> None:
    client = sign_in(app)
    top = biggest(store)
    patient = assigned_patient(store, top["practitioner"])
    other = next(
        c["practitioner"] for c in store.clinicians() if c["practitioner"] != top["practitioner"]
    )
    response = client.post(
        f"/patients/{patient.split('/')[1]}/confirm",
        data={"confirmed_by": "clinician", "practitioner": other, "csrf_token": csrf(client)},
        follow_redirects=True,
    )
    assert any("moved to" in f for f in flashes(response.get_data(as_text=True)))
    assert (store.patient_state(patient) or {})["confirmation"] == "proposed"
    assert store.confirmations(patient) == []
