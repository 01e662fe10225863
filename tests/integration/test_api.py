"""The JSON API with Flask's test client over a store filled from the committed population (a
full refresh from NDJSON, no write-back): every endpoint, auth failures, bad input answered with
problem documents, paging, sorting, filters, the audit log, refreshes asked for after changes,
the readiness probe against the real sandbox FHIR server, and `fhirpanel serve` under gunicorn.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from fhirpanel.api.app import create_app
from fhirpanel.api.auth import TokenTable
from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError
from fhirpanel.jobs.refresh import full_refresh, run_queued
from fhirpanel.sandbox.server import SandboxServer, free_port
from fhirpanel.store import Store, reads
from fhirpanel.store.models import Clinician, PatientState
from fhirpanel.writeback.identity import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value
from tests.conftest import AS_OF, POPULATION_DIR, ROOT

ADMIN = "admin-token-for-tests-0123456789"
READ = "read-token-for-tests-0123456789"
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
READ_H = {"Authorization": f"Bearer {READ}"}
PROBLEM = "application/problem+json"
RUN_WAIT_SECONDS = 60.0


def api_settings(**env: str) -> Settings:
    base = {
        "FHIRPANEL_API_ADMIN_TOKENS": f"alice={ADMIN}",
        "FHIRPANEL_API_READ_TOKENS": READ,
        "FHIRPANEL_API_PAGE_SIZE": "20",
        "FHIRPANEL_API_MAX_PAGE_SIZE": "100",
        "FHIRPANEL_SCHEDULER_SOURCE": f"ndjson:{POPULATION_DIR}",
        "FHIRPANEL_SCHEDULER_AS_OF": AS_OF,
        "FHIRPANEL_SCHEDULER_WRITE": "false",
    }
    return Settings.load(env={**base, **env})


def fill_template(directory: Path) -> Path:
    """A store filled by one full refresh of the committed population, closed (so the file
    can be copied)."""
    path = directory / "filled.db"
    store = Store(f"sqlite:///{path}")
    result = full_refresh(
        api_settings(),
        store,
        source=f"ndjson:{POPULATION_DIR}",
        as_of=date.fromisoformat(AS_OF),
        write=False,
    )
    assert result.status == "succeeded", result.error
    store.close()
    return path


def copy_store(template: Path, directory: Path) -> Store:
    target = directory / "state.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{template}{suffix}").exists():
            shutil.copy(f"{template}{suffix}", f"{target}{suffix}")
    return Store(f"sqlite:///{target}")


class TriggerRecorder:
    """Stands in for `request_run`: records calls and answers a run id (or None: busy)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answer: int | None = 4242
        self.error: Exception | None = None

    def __call__(self, kind: str, trigger: str) -> int | None:
        self.calls.append((kind, trigger))
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_template(tmp_path_factory.mktemp("api-template"))


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Iterator[Store]:
    st = copy_store(template, tmp_path)
    yield st
    st.close()


@pytest.fixture
def trigger() -> TriggerRecorder:
    return TriggerRecorder()


@pytest.fixture
def app(store: Store, trigger: TriggerRecorder) -> Flask:
    return create_app(api_settings(), store=store, trigger=trigger)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body  # type: ignore[no-any-return]


def patients_where(store: Store, *conditions: Any) -> list[dict[str, Any]]:
    with store.session() as s:
        rows = s.scalars(select(PatientState).where(*conditions).order_by(PatientState.patient))
        return [
            {
                "patient": r.patient,
                "practitioner": r.practitioner,
                "tier": r.tier,
                "status": r.status,
                "confirmation": r.confirmation,
                "outreach": list(r.outreach or []),
            }
            for r in rows
        ]


def biggest_panel(store: Store) -> dict[str, Any]:
    return max(store.clinicians(), key=lambda c: (c["size"], c["practitioner"]))


def first_assigned(store: Store, practitioner: str | None = None) -> dict[str, Any]:
    conditions = [PatientState.status == "assigned"]
    if practitioner:
        conditions.append(PatientState.practitioner == practitioner)
    return patients_where(store, *conditions)[0]


def bare(ref: str) -> str:
    return ref.split("/", 1)[1]


# ---------------------------------------------------------------- app construction and auth


def test_tokens_parse_names_labels_and_scopes() -> None:
    table = TokenTable.from_settings(
        api_settings(
            FHIRPANEL_API_ADMIN_TOKENS=f"alice={ADMIN}, second-admin-token-xyz",
            FHIRPANEL_API_READ_TOKENS=f"{READ},{ADMIN}",
        ).api
    )
    assert [(a.name, a.scope) for a in table.accounts] == [
        ("alice", "admin"),
        ("admin-2", "admin"),
        ("read-1", "read"),
    ]
    assert table.lookup(ADMIN).name == "alice"  # type: ignore[union-attr]
    assert table.lookup(READ).scope == "read"  # type: ignore[union-attr]
    assert table.lookup("nope") is None
    assert ADMIN not in repr(table.accounts)  # tokens stay out of reprs
    with pytest.raises(ConfigError, match="used twice"):
        TokenTable.from_settings(
            api_settings(
                FHIRPANEL_API_ADMIN_TOKENS="bob=token-one-aaaaaaaaaaaa",
                FHIRPANEL_API_READ_TOKENS="bob=token-two-bbbbbbbbbbbb",
            ).api
        )
    with pytest.raises(ConfigError, match="name"):
        TokenTable.from_settings(api_settings(FHIRPANEL_API_ADMIN_TOKENS="bad name=x").api)


def test_app_refuses_to_start_without_tokens(store: Store) -> None:
    settings = api_settings(FHIRPANEL_API_ADMIN_TOKENS="", FHIRPANEL_API_READ_TOKENS="")
    with pytest.raises(ConfigError, match="no API tokens"):
        create_app(settings, store=store)
    client = create_app(settings, store=store, allow_no_tokens=True).test_client()
    assert client.get("/healthz").status_code == 200
    problem(client.get("/api/panels", headers=READ_H), 401)


def test_derived_session_key_is_stable_and_secret_key_wins(store: Store) -> None:
    a = create_app(api_settings(), store=store)
    b = create_app(api_settings(), store=store)
    assert a.secret_key == b.secret_key and a.secret_key
    assert ADMIN not in str(a.secret_key)
    c = create_app(api_settings(FHIRPANEL_API_SECRET_KEY="explicit-key"), store=store)
    assert c.secret_key == "explicit-key"


PROTECTED_GETS = [
    "/api/panels",
    "/api/panels/prac-0001",
    "/api/patients/pat-000006",
    "/api/unassigned",
    "/api/outreach",
    "/api/runs",
    "/api/runs/1",
    "/metrics",
    "/openapi.json",
]
ADMIN_CALLS = [
    (
        "post",
        "/api/assignments/pat-000006/override",
        {"practitioner": "prac-0001", "reason": "moved", "requested_by": "patient"},
    ),
    ("delete", "/api/assignments/pat-000006/override", None),
    ("put", "/api/patients/pat-000006/status", {"status": "moved-away", "reason": "moved"}),
    ("delete", "/api/patients/pat-000006/status", None),
    ("post", "/api/assignments/pat-000006/confirm", {"confirmed_by": "clinician"}),
    ("post", "/api/runs", {"kind": "full"}),
    ("post", "/api/runs/1/accept", None),
    ("post", "/api/unassigned/assign-suggested", {"suggestions": "all"}),
]


@pytest.mark.parametrize("path", PROTECTED_GETS)
def test_every_endpoint_but_health_needs_a_token(client: FlaskClient, path: str) -> None:
    body = problem(client.get(path), 401)
    response = client.get(path)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="fhirpanel"'
    assert body["instance"] == path.split("?")[0]
    unknown = client.get(path, headers={"Authorization": "Bearer not-a-configured-token"})
    problem(unknown, 401)
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    basic = client.get(path, headers={"Authorization": f"Basic {ADMIN}"})
    problem(basic, 401)
    assert client.get(path, headers=READ_H).status_code == 200
    # The scheme name is case-insensitive (RFC 6750 section 2.1 via RFC 9110).
    assert client.get(path, headers={"Authorization": f"bearer {READ}"}).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_read_tokens_cannot_change_anything(
    client: FlaskClient,
    store: Store,
    trigger: TriggerRecorder,
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    call: Callable[..., Any] = getattr(client, method)
    response = call(path, json=body, headers=READ_H)
    problem(response, 403)
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="admin"' in response.headers["WWW-Authenticate"]
    problem(call(path, json=body), 401)
    assert store.audit() == [] and trigger.calls == []
    assert store.override_for("Patient/pat-000006") is None


def test_health_checks_need_no_token(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["store"]["ok"] and body["checks"]["fhir"]["detail"] == "not configured"
    assert body["checks"]["last_run"]["status"] == "succeeded"


def test_tokens_never_reach_the_log(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/api/panels", headers=READ_H)
    client.get("/api/panels", headers={"Authorization": "Bearer wrong-token-xyz-123"})
    client.post(
        "/api/assignments/pat-000006/confirm", json={"confirmed_by": "clinician"}, headers=ADMIN_H
    )
    text = caplog.text
    assert "refused" in text  # the unknown token was logged as an event...
    for secret in (READ, ADMIN, "wrong-token-xyz-123"):
        assert secret not in text  # ...but no token ever is


# ---------------------------------------------------------------- readiness


def test_readyz_reaches_the_real_sandbox_fhir_server(store: Store, sandbox: SandboxServer) -> None:
    settings = api_settings(FHIRPANEL_FHIR_BASE_URL=sandbox.base_url)
    client = create_app(settings, store=store).test_client()
    body = client.get("/readyz").get_json()
    assert body["checks"]["fhir"] == {"ok": True, "detail": "answered HTTP 200"}


def test_readyz_is_503_when_the_fhir_server_is_down(store: Store) -> None:
    settings = api_settings(FHIRPANEL_FHIR_BASE_URL=f"http://127.0.0.1:{free_port()}/fhir")
    client = create_app(settings, store=store).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready"
    assert not body["checks"]["fhir"]["ok"] and body["checks"]["store"]["ok"]


def test_readyz_is_503_before_any_refresh(tmp_path: Path) -> None:
    empty = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        response = create_app(api_settings(), store=empty).test_client().get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["checks"]["last_run"]["ok"] is False
    finally:
        empty.close()


def test_readyz_serves_the_last_good_run_after_a_failed_one(
    client: FlaskClient, store: Store
) -> None:
    run_id = store.start_run("incremental", "schedule", "x", AS_OF)
    store.finish_run(run_id, "failed", error="boom")
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert body["checks"]["last_run"]["status"] == "failed"
    assert "serving the results of run 1" in body["checks"]["last_run"]["detail"]


# ---------------------------------------------------------------- panels


def test_panels_lists_every_clinician_with_figures(client: FlaskClient, store: Store) -> None:
    body = client.get("/api/panels", headers=READ_H).get_json()
    clinicians = {c["practitioner"]: c for c in store.clinicians()}
    assert {p["practitioner"] for p in body["panels"]} == set(clinicians)
    for panel in body["panels"]:
        c = clinicians[panel["practitioner"]]
        for key in (
            "size",
            "risk_adjusted_size",
            "capacity",
            "open_capacity",
            "tiers",
            "unconfirmed",
            "eligible",
        ):
            assert panel[key] == c[key]
    assigned = patients_where(store, PatientState.status == "assigned")
    assert body["totals"]["assigned"] == len(assigned) == sum(p["size"] for p in body["panels"])
    assert body["totals"]["unassigned"] == 44 and body["totals"]["patients"] == 300
    assert body["totals"]["unconfirmed"] == len(assigned)  # nothing confirmed yet
    assert body["as_of"] == AS_OF


def test_panels_carry_supply_capacity_basis_and_peers_as_the_run_report(
    client: FlaskClient, store: Store
) -> None:
    from fhirpanel.fhir.source import NdjsonSource
    from fhirpanel.report import build_report
    from fhirpanel.run import run_full

    outcome = run_full(api_settings(), NdjsonSource(POPULATION_DIR), date.fromisoformat(AS_OF))
    report = {p["practitioner"]: p for p in build_report(outcome)["panels"]}
    body = client.get("/api/panels", headers=READ_H).get_json()
    assert {p["practitioner"] for p in body["panels"]} == set(report)
    keys = (
        "supply",
        "demand",
        "expected_visits",
        "share_used",
        "capacity_method",
        "capacity_basis",
        "blended_size",
        "relative",
    )
    for panel in body["panels"]:
        entry = report[panel["practitioner"]]
        assert {k: panel[k] for k in keys} == {k: entry.get(k) for k in keys}
    eligible = [p for p in body["panels"] if p["eligible"]]
    assert eligible and all(p["relative"] is not None for p in eligible)
    assert all(p["relative"] is None for p in body["panels"] if not p["eligible"])
    observed = [p for p in eligible if p["capacity_method"] == "observed"]
    assert observed and all(p["supply"] > 0 for p in observed)
    assert all(p["capacity_basis"].startswith("observed: ") for p in observed)
    one = client.get(f"/api/panels/{bare(observed[0]['practitioner'])}", headers=READ_H)
    assert one.get_json()["panel"]["capacity_basis"] == observed[0]["capacity_basis"]


def test_panel_pages_cover_the_panel_exactly_once(client: FlaskClient, store: Store) -> None:
    panel = biggest_panel(store)
    expected = [
        p["patient"]
        for p in patients_where(
            store,
            PatientState.status == "assigned",
            PatientState.practitioner == panel["practitioner"],
        )
    ]
    assert len(expected) == panel["size"] > 7
    seen: list[str] = []
    url: str | None = f"/api/panels/{bare(panel['practitioner'])}?page_size=7"
    pages = 0
    while url and pages < 50:
        body = client.get(url, headers=READ_H).get_json()
        pages += 1
        assert body["total"] == len(expected) and body["page_size"] == 7
        assert body["pages"] == -(-len(expected) // 7)
        assert (body["prev"] is None) == (body["page"] == 1)
        seen += [row["patient"] for row in body["items"]]
        url = body["next"]
    assert pages == -(-len(expected) // 7)
    assert seen == expected  # default sort: patient id, no gaps, no repeats
    assert len(body["items"]) == len(expected) - 7 * (pages - 1)  # the last page's remainder


def test_panel_accepts_both_id_forms_and_pages_past_the_end(
    client: FlaskClient, store: Store
) -> None:
    panel = biggest_panel(store)
    ref = panel["practitioner"]
    a = client.get(f"/api/panels/{bare(ref)}", headers=READ_H).get_json()
    b = client.get(f"/api/panels/{ref}", headers=READ_H).get_json()
    assert a["items"] == b["items"] and a["page_size"] == 20  # the configured default
    assert a["panel"]["practitioner"] == ref
    past = client.get(f"/api/panels/{bare(ref)}?page=99&page_size=10", headers=READ_H)
    body = past.get_json()
    assert past.status_code == 200 and body["items"] == [] and body["next"] is None
    assert body["prev"].endswith(f"page={body['pages']}&page_size=10")
    full = client.get(f"/api/panels/{bare(ref)}?page_size=100", headers=READ_H).get_json()
    assert len(full["items"]) == panel["size"] and full["next"] is None


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=2%0A", "page"),
        ("page=1_0", "page"),
        ("page=%201", "page"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=", "page_size"),
        ("sort=name", "sort"),
        ("tier=high", "tier"),
        ("tier=10", "tier"),
        ("unconfirmed=maybe", "unconfirmed"),
        ("overdue=1", "overdue"),
    ],
)
def test_panel_rejects_bad_query_parameters(
    client: FlaskClient, store: Store, query: str, name: str
) -> None:
    ref = biggest_panel(store)["practitioner"]
    body = problem(client.get(f"/api/panels/{bare(ref)}?{query}", headers=READ_H), 400)
    assert body["errors"][0]["field"] == name


def test_panel_sorting(client: FlaskClient, store: Store) -> None:
    ref = bare(biggest_panel(store)["practitioner"])

    def rows(sort: str) -> list[dict[str, Any]]:
        return client.get(
            f"/api/panels/{ref}?sort={sort}&page_size=100",  # type: ignore[no-any-return]
            headers=READ_H,
        ).get_json()["items"]

    by_tier = rows("-tier")
    keys = [(-r["tier"], r["patient"]) for r in by_tier]
    assert keys == sorted(keys)  # highest tier first, ties by patient id
    assert by_tier[0]["tier"] > by_tier[-1]["tier"]
    visits = [r["last_visit"] for r in rows("last_visit")]
    assert visits == sorted(visits)
    assert [r["last_visit"] for r in rows("-last_visit")] == sorted(visits, reverse=True)
    rules = [r["rule"] for r in rows("rule")]
    assert rules == sorted(rules)


def test_panel_filters(client: FlaskClient, store: Store) -> None:
    panel = biggest_panel(store)
    ref = bare(panel["practitioner"])
    tier2 = client.get(f"/api/panels/{ref}?tier=2&page_size=100", headers=READ_H).get_json()
    assert tier2["total"] == panel["tiers"]["2"] > 0
    assert {r["tier"] for r in tier2["items"]} == {2}
    assert tier2["filters"] == {"tier": 2, "unconfirmed": False, "overdue": False}
    overdue = client.get(f"/api/panels/{ref}?overdue=true&page_size=100", headers=READ_H).get_json()
    expected = [
        p
        for p in patients_where(
            store,
            PatientState.practitioner == panel["practitioner"],
            PatientState.status == "assigned",
        )
        if p["outreach"]
    ]
    assert overdue["total"] == len(expected) > 0
    assert all(r["outreach"] for r in overdue["items"])
    # The next pages keep the filter.
    small = client.get(f"/api/panels/{ref}?overdue=true&page_size=2", headers=READ_H)
    assert "overdue=true" in small.get_json()["next"]
    # Confirm one, then it drops out of the unconfirmed filter.
    first = tier2["items"][0]["patient"]
    client.post(
        f"/api/assignments/{bare(first)}/confirm", json={"confirmed_by": "patient"}, headers=ADMIN_H
    )
    unconfirmed = client.get(
        f"/api/panels/{ref}?unconfirmed=true&page_size=100", headers=READ_H
    ).get_json()
    assert unconfirmed["total"] == panel["size"] - 1
    assert first not in {r["patient"] for r in unconfirmed["items"]}
    assert {r["confirmation"] for r in unconfirmed["items"]} == {"proposed"}


def test_panel_rows_carry_risk_drivers(client: FlaskClient, store: Store) -> None:
    ref = bare(biggest_panel(store)["practitioner"])
    rows = client.get(f"/api/panels/{ref}?sort=-tier", headers=READ_H).get_json()["items"]
    top = rows[0]
    detail = store.patient_state(top["patient"])["detail"]  # type: ignore[index]
    assert top["drivers"]["tier_rule"] == detail["risk"]["tier_rule"]
    assert top["drivers"]["hccs"] == detail["risk"]["hccs"]
    assert top["rule"] and top["step"] and top["last_visit"]


def test_unknown_or_malformed_clinician_is_404(client: FlaskClient) -> None:
    problem(client.get("/api/panels/prac-9999", headers=READ_H), 404)
    problem(client.get("/api/panels/Practitioner/prac-9999", headers=READ_H), 404)
    problem(client.get("/api/panels/bad%20id", headers=READ_H), 404)
    problem(client.get("/api/panels/Patient/pat-000006", headers=READ_H), 404)


# ---------------------------------------------------------------- patients


def test_patient_explanation(client: FlaskClient, store: Store) -> None:
    state = store.patient_state("Patient/pat-000006")
    assert state is not None
    body = client.get("/api/patients/pat-000006", headers=READ_H).get_json()
    assert body == client.get("/api/patients/Patient/pat-000006", headers=READ_H).get_json()
    detail = state["detail"]
    assert body["patient"] == "Patient/pat-000006"
    assert body["practitioner"] == state["practitioner"] and body["rule"] == state["rule"]
    assert body["step"] == detail["step"] and body["tie_broken"] == detail["tie_broken"]
    assert body["visits"] == detail["visits"] and body["evidence"] == detail["evidence"]
    assert body["risk"] == detail["risk"]
    # The blended factor and its parts, each metric over the practice mean (methods.md s.3.4).
    blend = body["blend"]
    assert blend == detail["blend"] and set(blend) == {
        "factor",
        "age_sex",
        "hcc",
        "charlson",
        "utilisation",
    }
    assert blend["factor"] > 0
    assert body["written"] == {"CareTeam": None, "CarePlan": None}  # no write-back here
    assert [h["practitioner"] for h in body["history"]] == [state["practitioner"]]
    assert body["overrides"] == [] and body["active_override"] is None
    assert body["confirmations"] == [] and body["audit"] == [] and body["pending"] is False


def test_patient_explanation_names_the_risk_framework(client: FlaskClient, store: Store) -> None:
    """A child is in the pediatric framework: no HCC score, a PMCA category instead."""
    frameworks: dict[str, str] = {}
    for patient in store.patient_ids():
        state = store.patient_state(patient)
        risk = (state or {}).get("detail", {}).get("risk")
        if risk and risk["framework"] not in frameworks.values():
            frameworks[patient] = risk["framework"]
    assert sorted(frameworks.values()) == ["adult", "pediatric"]
    for patient, framework in frameworks.items():
        risk = client.get(f"/api/patients/{patient}", headers=READ_H).get_json()["risk"]
        assert risk["framework"] == framework
        if framework == "pediatric":
            assert risk["hcc"] is None and risk["hccs"] == []
            assert risk["complexity"] in ("complex-chronic", "non-complex-chronic", "no-chronic")
        else:
            assert "complexity" not in risk


def test_patient_explanation_shows_what_was_written(client: FlaskClient, store: Store) -> None:
    ledger = store.ledger(1)
    ledger.record(
        "CareTeam",
        identifier_value(CARE_TEAM_KIND, "Patient/pat-000006"),
        {"resourceType": "CareTeam", "id": "ct-77", "meta": {"versionId": "3"}},
    )
    ledger.record(
        "CarePlan",
        identifier_value(CARE_PLAN_KIND, "Patient/pat-000006"),
        {"resourceType": "CarePlan", "id": "cp-5"},
    )
    with store.session() as s:
        ledger.flush(s)
    written = client.get("/api/patients/pat-000006", headers=READ_H).get_json()["written"]
    assert written["CareTeam"]["reference"] == "CareTeam/ct-77"
    assert written["CareTeam"]["version"] == "3"
    assert written["CarePlan"]["reference"] == "CarePlan/cp-5"
    assert written["CarePlan"]["identifier"] == "careplan-cm.pat-000006"


def test_the_explanation_reads_in_one_session_what_the_store_methods_read(store: Store) -> None:
    """`reads.patient_record` (one session) agrees with the store's methods (one session
    each), with overrides, a confirmation, the audit and a ledger entry in place."""
    patient = first_assigned(store)
    ref, doc = patient["patient"], patient["practitioner"]
    other = eligible_other(store, doc)
    store.confirm(ref, doc, confirmed_by="patient", actor="alice", note="x")
    store.add_override(ref, other, reason="one", requested_by="family", actor="alice")
    store.add_override(ref, doc, reason="two", requested_by="clinician", actor="bob")
    ledger = store.ledger(1)
    team = identifier_value(CARE_TEAM_KIND, ref)
    ledger.record(
        "CareTeam", team, {"resourceType": "CareTeam", "id": "ct-1", "meta": {"versionId": "4"}}
    )
    with store.session() as s:
        ledger.flush(s)
    plan = identifier_value(CARE_PLAN_KIND, ref)
    record = reads.patient_record(
        store, ref, ledger=[("CareTeam", team), ("CarePlan", plan)], audit_limit=2
    )
    assert record is not None
    assert record["state"] == store.patient_state(ref)
    assert record["history"] == store.history(ref)
    assert record["overrides"] == store.overrides(ref) and len(record["overrides"]) == 2
    assert record["active_override"] == store.override_for(ref)
    assert record["active_override"]["reason"] == "two"
    assert record["confirmations"] == store.confirmations(ref)
    assert record["audit"] == store.audit(limit=2, patient=ref)
    assert [a["action"] for a in record["audit"]] == ["override", "override"]
    assert record["pending"] is True and ref in store.pending_patients()
    assert record["ledger"] == {"CareTeam": store.ledger_entry("CareTeam", team), "CarePlan": None}
    assert record["ledger"]["CareTeam"]["id"] == "ct-1"
    assert reads.patient_record(store, "Patient/pat-999999") is None


def test_unknown_patient_is_404(client: FlaskClient) -> None:
    body = problem(client.get("/api/patients/pat-999999", headers=READ_H), 404)
    assert "Patient/pat-999999" in body["detail"]
    problem(client.get("/api/patients/" + "x" * 65, headers=READ_H), 404)
    problem(client.get("/api/patients/pat-000006%0A", headers=READ_H), 404)
    problem(client.get("/api/patients/Practitioner/prac-0001", headers=READ_H), 404)


def test_unassigned_with_suggestions(client: FlaskClient, store: Store) -> None:
    expected = patients_where(store, PatientState.status == "unassigned")
    body = client.get("/api/unassigned?page_size=100", headers=READ_H).get_json()
    assert body["total"] == len(expected) == 44
    assert {r["patient"] for r in body["items"]} == {p["patient"] for p in expected}
    suggested = [r for r in body["items"] if r["suggested"]]
    assert suggested and all(
        r["suggested"]["practitioner"].startswith("Practitioner/") for r in suggested
    )
    eligible = {c["practitioner"] for c in store.clinicians() if c["eligible"]}
    assert {r["suggested"]["practitioner"] for r in suggested} <= eligible
    tiers = [r["tier"] if r["tier"] is not None else -1 for r in body["items"]]
    assert tiers == sorted(tiers, reverse=True)  # default sort: highest risk first
    tier3 = client.get("/api/unassigned?tier=3", headers=READ_H).get_json()
    assert tier3["total"] == sum(1 for p in expected if p["tier"] == 3)


def test_outreach_list_and_filters(client: FlaskClient, store: Store) -> None:
    flagged = [p for p in patients_where(store, PatientState.status == "assigned") if p["outreach"]]
    body = client.get("/api/outreach?page_size=100", headers=READ_H).get_json()
    assert body["total"] == len(flagged) > 0
    assert all(r["outreach"] for r in body["items"])
    assert body["thresholds"] == {"not_seen_months": 12, "sentinel_months": 24}
    for kind in ("not-seen", "no-sentinel"):
        want = {
            p["patient"] for p in flagged if any(o.startswith(kind + "-") for o in p["outreach"])
        }
        got = client.get(f"/api/outreach?reason={kind}&page_size=100", headers=READ_H)
        assert got.get_json()["total"] == len(want)
    doc = flagged[0]["practitioner"]
    mine = client.get(
        f"/api/outreach?practitioner={bare(doc)}&page_size=100", headers=READ_H
    ).get_json()
    assert mine["total"] == sum(1 for p in flagged if p["practitioner"] == doc)
    assert {r["practitioner"] for r in mine["items"]} == {doc}
    problem(client.get("/api/outreach?reason=late", headers=READ_H), 400)
    problem(client.get("/api/outreach?practitioner=a%20b", headers=READ_H), 400)


# ---------------------------------------------------------------- overrides and confirmations


def eligible_other(store: Store, current: str | None) -> str:
    return str(
        next(
            c["practitioner"]
            for c in store.clinicians()
            if c["eligible"] and c["practitioner"] != current
        )
    )


def test_override_is_stored_audited_and_triggers_a_refresh(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    patient = first_assigned(store)
    target = eligible_other(store, patient["practitioner"])
    response = client.post(
        f"/api/assignments/{bare(patient['patient'])}/override",
        json={
            "practitioner": bare(target),
            "reason": "moved  closer\nto the clinic",
            "requested_by": "family",
        },
        headers=ADMIN_H,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["override"]["practitioner"] == target
    assert body["override"]["actor"] == "alice"
    assert body["override"]["reason"] == "moved closer to the clinic"
    assert body["refresh"] == {"run_id": 4242, "started": True, "detail": "a refresh has started"}
    assert trigger.calls == [("incremental", "api")]
    assert store.override_for(patient["patient"])["practitioner"] == target  # type: ignore[index]
    [entry] = store.audit()
    assert (entry["actor"], entry["action"], entry["patient"]) == (
        "alice",
        "override",
        patient["patient"],
    )
    assert entry["detail"]["requested_by"] == "family"
    explained = client.get(f"/api/patients/{bare(patient['patient'])}", headers=READ_H).get_json()
    assert explained["pending"] is True and explained["active_override"]["practitioner"] == target
    assert explained["audit"][0]["action"] == "override"
    # Not applied yet: the next refresh does it.
    assert explained["practitioner"] == patient["practitioner"]


def test_a_status_is_set_audited_explained_and_cleared(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    patient = first_assigned(store)
    path = f"/api/patients/{bare(patient['patient'])}/status"
    response = client.put(
        path, json={"status": "transferred-care", "reason": "records\n sent"}, headers=ADMIN_H
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["status"]["status"], body["status"]["reason"]) == (
        "transferred-care",
        "records sent",
    )
    assert body["status"]["actor"] == "alice" and body["refresh"]["run_id"] == 4242
    assert store.active_statuses() == {patient["patient"]: "transferred-care"}
    explained = client.get(f"/api/patients/{bare(patient['patient'])}", headers=READ_H).get_json()
    assert explained["pending"] is True
    assert explained["active_status"]["status"] == "transferred-care"
    cleared = client.delete(path, headers=ADMIN_H)
    assert cleared.status_code == 200
    assert cleared.get_json()["cleared"] is True
    assert store.active_statuses() == {}
    assert [(a["action"], a["actor"]) for a in store.audit(patient=patient["patient"])] == [
        ("status-cleared", "alice"),
        ("status", "alice"),
    ]
    assert trigger.calls == [("incremental", "api")] * 2
    problem(client.delete(path, headers=ADMIN_H), 404)  # nothing left to clear
    wrong = problem(client.put(path, json={"status": "gone", "reason": "x"}, headers=ADMIN_H), 422)
    assert wrong["errors"][0]["field"] == "status"
    problem(client.put(path, json={"status": "dismissed", "reason": " "}, headers=ADMIN_H), 422)
    unknown = "/api/patients/pat-999999/status"
    problem(client.put(unknown, json={"status": "dismissed", "reason": "x"}, headers=ADMIN_H), 404)


def test_a_status_for_a_patient_the_record_excludes_is_a_conflict(
    client: FlaskClient, store: Store
) -> None:
    excluded = patients_where(store, PatientState.status == "excluded")[0]
    body = problem(
        client.put(
            f"/api/patients/{bare(excluded['patient'])}/status",
            json={"status": "deceased", "reason": "family called"},
            headers=ADMIN_H,
        ),
        409,
    )
    assert body["type"].endswith(":record-excludes")
    assert store.active_statuses() == {}


def test_override_when_the_refresh_is_busy_or_cannot_start(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    patient = first_assigned(store)
    target = eligible_other(store, patient["practitioner"])
    body = {"practitioner": target, "reason": "asked", "requested_by": "patient"}
    trigger.answer = None
    busy = client.post(
        f"/api/assignments/{bare(patient['patient'])}/override", json=body, headers=ADMIN_H
    )
    assert busy.status_code == 201 and busy.get_json()["refresh"]["started"] is False
    trigger.error = ConfigError("nothing to read")
    failed = client.post(
        f"/api/assignments/{bare(patient['patient'])}/override", json=body, headers=ADMIN_H
    )
    assert failed.status_code == 201
    assert failed.get_json()["refresh"] == {
        "run_id": None,
        "started": False,
        "detail": "nothing to read",
    }
    # The second override replaced the first.
    assert [o["removed_at"] is None for o in store.overrides(patient["patient"])] == [False, True]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "r", "requested_by": "patient"}, "practitioner"),
        ({"practitioner": "prac-0001", "requested_by": "patient"}, "reason"),
        ({"practitioner": "prac-0001", "reason": "   ", "requested_by": "patient"}, "reason"),
        ({"practitioner": "prac-0001", "reason": "r"}, "requested_by"),
        ({"practitioner": "prac-0001", "reason": "r", "requested_by": "neighbour"}, "requested_by"),
        ({"practitioner": "prac-0001", "reason": "r", "requested_by": "patient", "x": 1}, "x"),
        ({"practitioner": 7, "reason": "r", "requested_by": "patient"}, "practitioner"),
        ({"practitioner": None, "reason": "r", "requested_by": "patient"}, "practitioner"),
        ({"practitioner": "prac 1", "reason": "r", "requested_by": "patient"}, "practitioner"),
        ({"practitioner": "prac-0001", "reason": "r" * 501, "requested_by": "patient"}, "reason"),
        ({"practitioner": "prac-9999", "reason": "r", "requested_by": "patient"}, "practitioner"),
        (["prac-0001"], "(body)"),
    ],
)
def test_override_body_is_validated_strictly(
    client: FlaskClient, store: Store, trigger: TriggerRecorder, body: Any, field: str
) -> None:
    response = client.post("/api/assignments/pat-000006/override", json=body, headers=ADMIN_H)
    problem_body = problem(response, 422)
    assert problem_body["errors"] == [
        {"field": field, "message": problem_body["errors"][0]["message"]}
    ]
    assert store.audit() == [] and trigger.calls == []


def test_override_to_an_ineligible_clinician_is_422(client: FlaskClient, store: Store) -> None:
    # A clinician no longer eligible for a panel (kept while patients are still assigned).
    doc = biggest_panel(store)["practitioner"]
    with store.session() as s:
        s.execute(update(Clinician).where(Clinician.practitioner == doc).values(eligible=False))
    body = problem(
        client.post(
            "/api/assignments/pat-000006/override",
            json={"practitioner": doc, "reason": "asked", "requested_by": "clinician"},
            headers=ADMIN_H,
        ),
        422,
    )
    assert body["errors"][0]["field"] == "practitioner" and "not eligible" in body["detail"]
    # A practitioner on the server who is not a primary-care clinician (no panel at all).
    known = {c["practitioner"] for c in store.clinicians()}
    specialist = next(
        f"Practitioner/prac-{i:04d}"
        for i in range(1, 100)
        if f"Practitioner/prac-{i:04d}" not in known
    )
    body = problem(
        client.post(
            "/api/assignments/pat-000006/override",
            json={"practitioner": specialist, "reason": "asked", "requested_by": "clinician"},
            headers=ADMIN_H,
        ),
        422,
    )
    assert body["errors"][0]["field"] == "practitioner"
    assert store.override_for("Patient/pat-000006") is None and store.audit() == []


def test_malformed_json_and_wrong_content_type(client: FlaskClient, store: Store) -> None:
    url = "/api/assignments/pat-000006/override"
    body = problem(
        client.post(
            url, data='{"practitioner": ', headers=ADMIN_H, content_type="application/json"
        ),
        400,
    )
    assert body["type"].endswith("malformed-json")
    problem(client.post(url, data="", headers=ADMIN_H, content_type="application/json"), 400)
    problem(
        client.post(url, data='{"reason": NaN}', headers=ADMIN_H, content_type="application/json"),
        400,
    )
    problem(
        client.post(
            url,
            data="practitioner=prac-0001",
            headers=ADMIN_H,
            content_type="application/x-www-form-urlencoded",
        ),
        415,
    )
    problem(
        client.post(url, data="x" * 70_000, headers=ADMIN_H, content_type="application/json"), 413
    )
    assert store.audit() == []


def test_override_of_unknown_or_excluded_patients(client: FlaskClient, store: Store) -> None:
    target = eligible_other(store, None)
    body = {"practitioner": target, "reason": "asked", "requested_by": "patient"}
    problem(client.post("/api/assignments/pat-999999/override", json=body, headers=ADMIN_H), 404)
    excluded = patients_where(store, PatientState.status == "excluded")[0]["patient"]
    conflict = problem(
        client.post(f"/api/assignments/{bare(excluded)}/override", json=body, headers=ADMIN_H), 409
    )
    assert conflict["type"].endswith("patient-excluded")


def test_override_removal(client: FlaskClient, store: Store, trigger: TriggerRecorder) -> None:
    patient = first_assigned(store)["patient"]
    problem(client.delete(f"/api/assignments/{bare(patient)}/override", headers=ADMIN_H), 404)
    client.post(
        f"/api/assignments/{bare(patient)}/override",
        headers=ADMIN_H,
        json={
            "practitioner": eligible_other(store, None),
            "reason": "asked",
            "requested_by": "clinician",
        },
    )
    removed = client.delete(f"/api/assignments/{patient}/override", headers=ADMIN_H)
    assert removed.status_code == 200
    assert removed.get_json()["removed"] is True and removed.get_json()["patient"] == patient
    assert store.override_for(patient) is None
    assert [e["action"] for e in store.audit()] == ["override-removed", "override"]
    assert trigger.calls == [("incremental", "api")] * 2
    problem(client.delete(f"/api/assignments/{bare(patient)}/override", headers=ADMIN_H), 404)
    problem(client.delete("/api/assignments/pat-999999/override", headers=ADMIN_H), 404)


def test_confirm_an_assignment(client: FlaskClient, store: Store, trigger: TriggerRecorder) -> None:
    patient = first_assigned(store)
    doc = patient["practitioner"]
    before = store.clinician(doc)["unconfirmed"]  # type: ignore[index]
    response = client.post(
        f"/api/assignments/{bare(patient['patient'])}/confirm",
        json={
            "confirmed_by": "clinician",
            "practitioner": bare(doc),
            "note": "seen at the\n  team meeting",
        },
        headers=ADMIN_H,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    confirmation = response.get_json()["confirmation"]
    assert confirmation["practitioner"] == doc and confirmation["actor"] == "alice"
    assert confirmation["note"] == "seen at the team meeting"
    assert store.patient_state(patient["patient"])["confirmation"] == "clinician"  # type: ignore[index]
    panels = client.get("/api/panels", headers=READ_H).get_json()["panels"]
    assert next(p for p in panels if p["practitioner"] == doc)["unconfirmed"] == before - 1
    assert store.audit()[0]["action"] == "confirm" and store.audit()[0]["actor"] == "alice"
    assert trigger.calls == []  # a confirmation changes no attribution: no refresh
    explained = client.get(f"/api/patients/{bare(patient['patient'])}", headers=READ_H).get_json()
    assert explained["confirmation"] == "clinician"
    assert explained["confirmations"][0]["confirmed_by"] == "clinician"


def test_confirm_needs_an_assigned_patient_and_the_current_clinician(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    unassigned = patients_where(store, PatientState.status == "unassigned")[0]["patient"]
    body = problem(
        client.post(
            f"/api/assignments/{bare(unassigned)}/confirm",
            json={"confirmed_by": "patient"},
            headers=ADMIN_H,
        ),
        409,
    )
    assert body["type"].endswith("patient-not-assigned")
    patient = first_assigned(store)
    other = eligible_other(store, patient["practitioner"])
    changed = problem(
        client.post(
            f"/api/assignments/{bare(patient['patient'])}/confirm",
            json={"confirmed_by": "patient", "practitioner": other},
            headers=ADMIN_H,
        ),
        409,
    )
    assert changed["type"].endswith("assignment-changed")
    missing = problem(
        client.post(
            f"/api/assignments/{bare(patient['patient'])}/confirm",
            json={"note": "x"},
            headers=ADMIN_H,
        ),
        422,
    )
    assert missing["errors"][0]["field"] == "confirmed_by"
    wrong = problem(
        client.post(
            f"/api/assignments/{bare(patient['patient'])}/confirm",
            json={"confirmed_by": "family"},
            headers=ADMIN_H,
        ),
        422,
    )
    assert wrong["errors"][0]["field"] == "confirmed_by"
    problem(
        client.post(
            "/api/assignments/pat-999999/confirm", json={"confirmed_by": "patient"}, headers=ADMIN_H
        ),
        404,
    )
    assert store.audit() == [] and trigger.calls == []


# ---------------------------------------------------------------- runs


def test_runs_list_and_one_run(client: FlaskClient, store: Store) -> None:
    for _ in range(3):
        store.record_skipped("incremental", "schedule", "x", AS_OF, "busy")
    body = client.get("/api/runs?page_size=3", headers=READ_H).get_json()
    assert body["total"] == 4 and body["pages"] == 2
    assert [r["id"] for r in body["items"]] == [4, 3, 2]
    last = client.get(body["next"], headers=READ_H).get_json()
    assert [r["id"] for r in last["items"]] == [1] and last["next"] is None
    run = client.get("/api/runs/1", headers=READ_H).get_json()
    assert run["kind"] == "full" and run["status"] == "succeeded"
    assert run["counts"]["assigned"] == 248
    problem(client.get("/api/runs/999", headers=READ_H), 404)
    problem(client.get("/api/runs/99999999999999999999", headers=READ_H), 404)


def test_post_runs_validates_and_reports_busy(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    run_id = store.start_run("full", "api", "x", AS_OF)
    trigger.answer = run_id
    started = client.post("/api/runs", json={"kind": "full"}, headers=ADMIN_H)
    assert started.status_code == 202
    assert started.headers["Location"].endswith(f"/api/runs/{run_id}")
    assert started.get_json()["status"] == "running"
    assert trigger.calls == [("full", "api")]
    trigger.answer = None
    busy = problem(client.post("/api/runs", json={"kind": "incremental"}, headers=ADMIN_H), 409)
    assert busy["type"].endswith("refresh-running")
    problem(client.post("/api/runs", json={"kind": "weekly"}, headers=ADMIN_H), 422)
    problem(client.post("/api/runs", json={}, headers=ADMIN_H), 422)
    trigger.error = ConfigError("nothing to read: give --source")
    unavailable = problem(client.post("/api/runs", json={"kind": "full"}, headers=ADMIN_H), 503)
    assert "nothing to read" in unavailable["detail"]


def wait_for_run(store: Store, run_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        run = store.run(run_id)
        if run and run["status"] != "running" and store.lock_info() is None:
            return run
        time.sleep(0.1)
    pytest.fail(f"run {run_id} did not finish within {RUN_WAIT_SECONDS} s")


def test_real_refresh_runs_and_the_lock(store: Store) -> None:
    """The default trigger (`request_run`): POST /api/runs starts a real refresh of the
    committed population; 409 while another holder has the lock."""
    client = create_app(api_settings(), store=store).test_client()
    assert store.try_lock("someone-else", stale_seconds=3600)
    try:
        problem(client.post("/api/runs", json={"kind": "full"}, headers=ADMIN_H), 409)
        assert store.count_runs() == 1  # nothing recorded for the refused attempt
    finally:
        store.release_lock("someone-else")
    response = client.post("/api/runs", json={"kind": "full"}, headers=ADMIN_H)
    assert response.status_code == 202
    run = wait_for_run(store, response.get_json()["id"])
    assert run["status"] == "succeeded" and run["trigger"] == "api"
    assert run["counts"]["assigned"] == 248


def test_override_takes_effect_at_the_refresh_it_triggers(
    loaded_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Against the real sandbox server (read only: no write-back): the override's incremental
    refresh reassigns the patient by the `manual` rule; an NDJSON source cannot run one."""
    settings = api_settings(
        FHIRPANEL_SCHEDULER_SOURCE=loaded_sandbox.base_url,
        FHIRPANEL_FHIR_BASE_URL=loaded_sandbox.base_url,
    )
    store = Store(f"sqlite:///{tmp_path / 'server.db'}")
    try:
        filled = full_refresh(settings, store, as_of=date.fromisoformat(AS_OF), write=False)
        assert filled.status == "succeeded", filled.error
        client = create_app(settings, store=store).test_client()
        patient = first_assigned(store)
        target = eligible_other(store, patient["practitioner"])
        response = client.post(
            f"/api/assignments/{bare(patient['patient'])}/override",
            json={"practitioner": target, "reason": "closer to home", "requested_by": "patient"},
            headers=ADMIN_H,
        )
        refresh = response.get_json()["refresh"]
        assert refresh["started"] is True, refresh
        run = wait_for_run(store, refresh["run_id"])
        assert (run["kind"], run["status"], run["trigger"]) == ("incremental", "succeeded", "api")
        body = client.get(f"/api/patients/{bare(patient['patient'])}", headers=READ_H).get_json()
        assert body["practitioner"] == target and body["rule"] == "manual"
        assert body["pending"] is False
        assert [h["practitioner"] for h in body["history"]] == [patient["practitioner"], target]
        assert client.get("/readyz").get_json()["checks"]["fhir"]["ok"] is True
    finally:
        store.close()


def test_an_ndjson_source_cannot_run_an_incremental_refresh(store: Store) -> None:
    app = create_app(api_settings(), store=store)  # the real trigger, an NDJSON source
    patient = first_assigned(store)
    others = [
        c["practitioner"]
        for c in store.clinicians()
        if c["eligible"] and c["practitioner"] != patient["practitioner"]
    ]
    response = app.test_client().post(
        f"/api/assignments/{bare(patient['patient'])}/override",
        json={"practitioner": bare(others[0]), "reason": "choice", "requested_by": "patient"},
        headers=ADMIN_H,
    )
    assert response.status_code == 201  # stored all the same
    refresh = response.get_json()["refresh"]
    assert refresh["started"] is False and "FHIR server source" in refresh["detail"]
    assert store.lock_info() is None


# ---------------------------------------------------------------- held runs

FIGURES = {
    "removed_patients": {"count": 100, "of": 300, "share": 0.3333, "limit": 0.05},
    "changed_assignments": {"count": 3, "of": 248, "share": 0.0121, "limit": 0.1},
}


def held_run(store: Store, kind: str = "full", source: str = "http://x/fhir") -> int:
    """A run the brake held, as the refresh jobs record one."""
    run_id = store.start_run(kind, "schedule", source, AS_OF)
    store.finish_run(
        run_id,
        "held",
        counts={"held": FIGURES},
        seconds=0.5,
        error="full refresh held: it would remove 100 of 300 stored patients",
    )
    return run_id


def shrunken_source(directory: Path, keep: int) -> str:
    """The committed population with only the first `keep` Patient lines: a read that lost
    patients (their encounters and conditions stay)."""
    target = directory / "short"
    shutil.copytree(POPULATION_DIR, target, ignore=shutil.ignore_patterns("bundles"))
    lines = (POPULATION_DIR / "Patient.ndjson").read_bytes().splitlines(keepends=True)
    (target / "Patient.ndjson").write_bytes(b"".join(lines[:keep]))
    return f"ndjson:{target}"


def runs_held_metrics(client: FlaskClient) -> dict[str, float]:
    samples = metric_samples(client.get("/metrics", headers=READ_H).get_data(as_text=True))
    out = {"held_gauge": samples[("fhirpanel_runs_held", ())]}
    for status in ("held", "accepted", "crashed", "queued"):
        out[status] = samples[("fhirpanel_runs_total", (("kind", "full"), ("status", status)))]
    return out


def test_a_held_refresh_is_accepted_through_the_api_and_the_next_pass_applies_it(
    store: Store, tmp_path: Path
) -> None:
    """A real held run (a full refresh whose read lost a third of the patients), its figures
    in the API and /metrics, accepted by an admin: the run is `accepted` and audited, the next
    pass is queued for the worker and, run, goes through; a second accept is a 409."""
    source = shrunken_source(tmp_path, keep=200)
    settings = api_settings(FHIRPANEL_SCHEDULER_SOURCE=source)
    before = store.assignment_states()
    result = full_refresh(settings, store, as_of=date.fromisoformat(AS_OF), write=False)
    assert result.status == "held" and result.run_id is not None
    run_id = result.run_id
    removed = result.counts["held"]["removed_patients"]
    assert removed["of"] == len(before) and removed["count"] == len(before) - 200
    trigger = TriggerRecorder()
    client = create_app(settings, store=store, trigger=trigger).test_client()

    shown = client.get(f"/api/runs/{run_id}", headers=READ_H).get_json()
    assert shown["status"] == "held" and shown["counts"]["held"]["removed_patients"] == removed
    assert runs_held_metrics(client) == {
        "held_gauge": 1,
        "held": 1,
        "accepted": 0,
        "crashed": 0,
        "queued": 0,
    }
    problem(client.post(f"/api/runs/{run_id}/accept", headers=READ_H), 403)
    assert store.run(run_id)["status"] == "held"  # type: ignore[index]

    store.worker_heartbeat()  # a live worker: the next pass is queued for it, not run here
    response = client.post(f"/api/runs/{run_id}/accept", headers=ADMIN_H)
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    next_run = body["next_run"]
    assert isinstance(next_run, int) and next_run != run_id
    assert response.headers["Location"].endswith(f"/api/runs/{next_run}")
    assert body["run"]["id"] == run_id and body["run"]["status"] == "accepted"
    assert body["run"]["counts"]["accepted"]["by"] == "alice"
    assert "queued" in body["detail"]
    assert trigger.calls == []  # accept_held_run starts the next pass itself

    # The store: accepted, audited under the token's name, the next pass queued.
    stored = store.run(run_id)
    assert stored is not None and stored["status"] == "accepted"
    assert stored["counts"]["held"]["removed_patients"] == removed  # the figures stay
    audit = [a for a in store.audit() if a["action"] == "accept-change"]
    assert len(audit) == 1 and audit[0]["actor"] == "alice"
    assert audit[0]["detail"]["run"] == run_id
    assert audit[0]["detail"]["figures"]["removed_patients"]["count"] == removed["count"]
    queued = store.run(next_run)
    assert queued is not None and queued["status"] == "queued" and queued["kind"] == "full"
    assert store.held_runs() == []
    assert runs_held_metrics(client) == {
        "held_gauge": 0,
        "held": 0,
        "accepted": 1,
        "crashed": 0,
        "queued": 1,
    }

    again = problem(client.post(f"/api/runs/{run_id}/accept", headers=ADMIN_H), 409)
    assert again["type"] == "urn:fhirpanel:problem:run-not-held"
    assert "already accepted by alice" in again["detail"]
    assert len([a for a in store.audit() if a["action"] == "accept-change"]) == 1

    # The worker runs the queued pass: the accepted change goes through.
    done = run_queued(settings, store)
    assert done is not None and done.run_id == next_run and done.status == "succeeded", (
        done and done.error
    )
    assert len(store.assignment_states()) == 200


def test_accept_refuses_unknown_and_unheld_runs_and_says_what_happens_next(
    client: FlaskClient, store: Store, trigger: TriggerRecorder
) -> None:
    problem(client.post("/api/runs/999/accept", headers=ADMIN_H), 404)
    problem(client.post("/api/runs/99999999999999999999/accept", headers=ADMIN_H), 404)
    not_held = problem(client.post("/api/runs/1/accept", headers=ADMIN_H), 409)
    assert not_held["type"].endswith("run-not-held")
    assert "not held (it is succeeded)" in not_held["detail"]
    assert store.run(1)["status"] == "succeeded"  # type: ignore[index]

    # A held `run --write`: accepted; nothing starts here (the operator runs it again).
    write_run = held_run(store, kind="run")
    response = client.post(f"/api/runs/{write_run}/accept", headers=ADMIN_H)
    assert response.status_code == 202
    body = response.get_json()
    assert body["next_run"] is None and "Location" not in response.headers
    assert "run --write" in body["detail"] and body["run"]["kind"] == "run"

    # A held full refresh while another process holds the lock: accepted, no run started.
    full_run = held_run(store, kind="full")
    assert store.try_lock("someone-else", stale_seconds=3600)
    try:
        response = client.post(f"/api/runs/{full_run}/accept", headers=ADMIN_H)
    finally:
        store.release_lock("someone-else")
    assert response.status_code == 202
    assert response.get_json()["next_run"] is None
    assert "a refresh is running" in response.get_json()["detail"]
    assert store.run(full_run)["status"] == "accepted"  # type: ignore[index]

    # A held incremental pass on an NDJSON source: the acceptance stands though the next
    # pass cannot start (an NDJSON source cannot run incrementally); the answer says why. The
    # next pass reads the held run's own source, whatever the settings name.
    incremental = held_run(store, kind="incremental", source=f"ndjson:{POPULATION_DIR}")
    response = client.post(f"/api/runs/{incremental}/accept", headers=ADMIN_H)
    assert response.status_code == 202
    assert response.get_json()["next_run"] is None
    assert "could not start" in response.get_json()["detail"]
    assert store.run(incremental)["status"] == "accepted"  # type: ignore[index]
    assert [a["detail"]["run"] for a in store.audit() if a["action"] == "accept-change"] == [
        incremental,
        full_run,
        write_run,
    ]
    assert trigger.calls == [] and store.held_runs() == []


def test_a_held_run_a_later_run_superseded_no_longer_waits_and_cannot_be_accepted(
    client: FlaskClient, store: Store
) -> None:
    """The source was fixed and the next full refresh went through: the held run is moot. It
    leaves the gauge, and accepting it (a standing permission for the next pass) is refused."""
    stale = held_run(store, kind="full", source="http://x/fhir")
    other_source = held_run(store, kind="full", source="http://y/fhir")
    assert runs_held_metrics(client)["held_gauge"] == 2
    later = store.start_run("full", "schedule", "http://x/fhir", AS_OF)
    store.finish_run(later, "succeeded", counts={}, seconds=1.0)
    metrics = runs_held_metrics(client)
    assert metrics["held_gauge"] == 1 and metrics["held"] == 2  # runs_total counts them all
    refused = problem(client.post(f"/api/runs/{stale}/accept", headers=ADMIN_H), 409)
    assert refused["type"] == "urn:fhirpanel:problem:run-superseded"
    assert f"superseded by run {later} (full, succeeded)" in refused["detail"]
    assert store.run(stale)["status"] == "held"  # type: ignore[index]
    assert [a for a in store.audit() if a["action"] == "accept-change"] == []
    # A held incremental pass is superseded by a later full refresh of its source as well.
    incremental = held_run(store, kind="incremental", source="http://y/fhir")
    done = store.start_run("full", "schedule", "http://y/fhir", AS_OF)
    store.finish_run(done, "partial", counts={}, seconds=1.0)
    problem(client.post(f"/api/runs/{incremental}/accept", headers=ADMIN_H), 409)
    problem(client.post(f"/api/runs/{other_source}/accept", headers=ADMIN_H), 409)
    assert runs_held_metrics(client)["held_gauge"] == 0


# ---------------------------------------------------------------- metrics, problems, dashboard


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics(client: FlaskClient, store: Store) -> None:
    run_id = store.start_run("incremental", "schedule", "http://x/fhir", AS_OF)
    store.finish_run(
        run_id,
        "partial",
        seconds=1.5,
        counts={
            "writeback": {"CareTeam": {"created": 3, "unchanged": 5}, "CarePlan": {"failed": 1}}
        },
    )
    client.get("/api/panels", headers=READ_H)
    client.get("/api/panels", headers=READ_H)
    response = client.get("/metrics", headers=READ_H)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = metric_samples(response.get_data(as_text=True))
    assert samples[("fhirpanel_store_up", ())] == 1
    assert samples[("fhirpanel_runs_total", (("kind", "full"), ("status", "succeeded")))] == 1
    assert samples[("fhirpanel_runs_total", (("kind", "incremental"), ("status", "partial")))] == 1
    assert samples[("fhirpanel_last_run_duration_seconds", (("kind", "incremental"),))] == 1.5
    assert (
        samples[
            (
                "fhirpanel_last_run_writeback",
                (("action", "created"), ("kind", "incremental"), ("resource_type", "CareTeam")),
            )
        ]
        == 3
    )
    assert (
        samples[
            (
                "fhirpanel_last_run_writeback",
                (("action", "failed"), ("kind", "incremental"), ("resource_type", "CarePlan")),
            )
        ]
        == 1
    )
    assert samples[("fhirpanel_patients", (("status", "assigned"),))] == 248
    assert samples[("fhirpanel_patients", (("status", "unassigned"),))] == 44
    tiers = {
        k[1][0][1]: v for k, v in samples.items() if k[0] == "fhirpanel_assigned_patients_by_tier"
    }
    with_tier = [
        p for p in patients_where(store, PatientState.status == "assigned") if p["tier"] is not None
    ]
    assert sum(tiers.values()) == len(with_tier)
    assert samples[("fhirpanel_unconfirmed_assignments", ())] == 248
    assert samples[("fhirpanel_refresh_running", ())] == 0
    latency = (
        "fhirpanel_http_request_duration_seconds_count",
        (("endpoint", "/api/panels"), ("method", "GET"), ("status", "200")),
    )
    assert samples[latency] == 2


def test_every_error_is_a_problem_document(client: FlaskClient) -> None:
    problem(client.get("/api/nothing-here", headers=READ_H), 404)
    wrong_method = client.put("/api/panels", headers=READ_H)
    problem(wrong_method, 405)
    assert "GET" in wrong_method.headers["Allow"]
    response = client.get("/api/panels", headers=READ_H)
    assert response.headers["Cache-Control"] == "no-store"


def test_the_dashboard_is_registered(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


# ---------------------------------------------------------------- fhirpanel serve (gunicorn)


def test_serve_runs_gunicorn_on_loopback(template: Path, tmp_path: Path) -> None:
    copy_store(template, tmp_path).close()
    port = free_port()
    env = {**os.environ, "FHIRPANEL_API_READ_TOKENS": READ, "FHIRPANEL_API_WORKERS": "2"}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fhirpanel",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                f"sqlite:///{tmp_path / 'state.db'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            pytest.fail("fhirpanel serve did not answer: " + log_path.read_text())
        panels = requests.get(f"{base}/api/panels", headers=READ_H, timeout=10)
        assert panels.status_code == 200 and panels.json()["totals"]["patients"] == 300
        assert requests.get(f"{base}/api/panels", timeout=10).status_code == 401
        # An old sign-in address with a token: the form, nobody signed in, nothing logged.
        old = requests.get(f"{base}/login?token={READ}", timeout=10, allow_redirects=False)
        assert old.status_code == 200 and "no longer sign you in" in old.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    output = log_path.read_text()
    assert '"GET /api/panels" 200' in output  # the access log...
    assert READ not in output  # ...without query strings (an old bookmark may carry a token)


def test_serve_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRPANEL_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhirpanel",
            "serve",
            "--port",
            str(free_port()),
            "--database",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no API tokens configured" in result.stderr
