"""The state store on SQLite always, and on PostgreSQL when FHIRPANEL_TEST_DATABASE_URL names
one (each test gets its own schema there): migrations match the models, the refresh lock,
runs, overrides and confirmations, history and panels, and the write-back ledger."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from fhirpanel.config import Settings
from fhirpanel.domain.attribution import Assignment, AttributionResult, EligibilityReport
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.outreach import OutreachItem
from fhirpanel.domain.panels import AgeSexWeights, Panel, PanelSummary, Suggestion
from fhirpanel.domain.records import PatientRecord, Population, PractitionerRecord
from fhirpanel.domain.risk import RiskResult
from fhirpanel.fhir.source import NdjsonSource
from fhirpanel.jobs.refresh import full_refresh
from fhirpanel.jobs.rows import result_rows
from fhirpanel.report import build_report
from fhirpanel.run import run_full
from fhirpanel.store import Store
from fhirpanel.store.models import Base
from fhirpanel.store.results import ClinicianRow, PatientRow, ResultRows
from tests.conftest import AS_OF, POPULATION_DIR

AS_OF_DATE = date.fromisoformat(AS_OF)
PG_URL = os.environ.get("FHIRPANEL_TEST_DATABASE_URL", "")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="set FHIRPANEL_TEST_DATABASE_URL to test the store on PostgreSQL"
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        st = Store(f"sqlite:///{tmp_path / 'state.db'}")
        yield st
        st.close()
        return
    # A fresh database per test on the server named by the URL, dropped afterwards.
    name = f"fhirpanel_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    st = Store(url)
    try:
        yield st
    finally:
        st.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def filled(store: Store) -> Store:
    settings = Settings.load(env={})
    result = full_refresh(
        settings, store, source=f"ndjson:{POPULATION_DIR}", as_of=AS_OF_DATE, write=False
    )
    assert result.status == "succeeded", result.error
    return store


def test_migrations_create_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.upgrade()  # idempotent


def test_lock_is_exclusive_released_and_taken_over_when_stale(store: Store) -> None:
    assert store.try_lock("a", stale_seconds=3600)
    assert not store.try_lock("b", stale_seconds=3600)
    assert store.try_lock("a", stale_seconds=3600)  # the holder may renew
    info = store.lock_info()
    assert info is not None and info["holder"] == "a"
    assert store.try_lock("b", stale_seconds=0)  # a's lease is stale at once: taken over
    assert (store.lock_info() or {})["holder"] == "b"
    store.release_lock("a")  # not the holder: nothing happens
    assert (store.lock_info() or {})["holder"] == "b"
    store.release_lock("b")
    assert store.lock_info() is None


def test_only_one_of_many_concurrent_lockers_wins(store: Store) -> None:
    barrier = threading.Barrier(6)
    wins: list[str] = []

    def grab(name: str) -> None:
        barrier.wait()
        if store.try_lock(name, stale_seconds=3600):
            wins.append(name)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(wins) == 1


def test_runs_are_recorded_and_stale_ones_abandoned(store: Store) -> None:
    run_id = store.start_run("full", "cli", "ndjson:x", AS_OF)
    assert store.runs()[0]["status"] == "running"
    assert store.abandon_stale_runs() == 1
    run = store.run(run_id)
    assert run is not None and run["status"] == "abandoned" and run["error"]
    skipped = store.record_skipped("incremental", "api", "ndjson:x", AS_OF, "busy")
    assert (store.run(skipped) or {})["status"] == "skipped"
    assert store.count_runs() == 2


def test_full_refresh_stores_patients_panels_and_context(filled: Store) -> None:
    outcome = run_full(Settings.load(env={}), NdjsonSource(POPULATION_DIR), AS_OF_DATE)
    assigned = {a.patient: a for a in outcome.attribution.assignments if a.status == "assigned"}
    assert len(filled.patient_ids()) == len(outcome.attribution.assignments)
    for patient, a in list(assigned.items())[:25]:
        state = filled.patient_state(patient)
        assert state is not None
        assert (state["practitioner"], state["rule"]) == (a.practitioner, a.rule)
        assert state["detail"]["patient"] == patient
        assert filled.history(patient)[0]["valid_to"] is None
    panels = {p.practitioner: p for p in outcome.panels.panels}
    for clinician in filled.clinicians():
        panel = panels[clinician["practitioner"]]
        assert clinician["size"] == panel.size
        assert clinician["risk_adjusted_size"] == pytest.approx(panel.risk_adjusted_size, 0.05)
        assert clinician["unconfirmed"] == panel.size
    assert filled.context("weights")
    assert filled.context("as_of") == AS_OF
    report = {p["practitioner"]: p for p in build_report(outcome)["panels"]}
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
    stored = {c["practitioner"]: c for c in filled.clinicians()}
    assert any(c["supply"] is not None for c in stored.values())
    assert any(c["relative"] is not None for c in stored.values())
    for practitioner, entry in report.items():
        assert {k: stored[practitioner][k] for k in keys} == {k: entry.get(k) for k in keys}
    summary = filled.context("summary")
    assert summary["summary"]["assigned"] == len(assigned)


def test_a_second_full_refresh_changes_nothing(filled: Store) -> None:
    before = {p: filled.patient_state(p) for p in filled.patient_ids()}
    result = full_refresh(
        Settings.load(env={}),
        filled,
        source=f"ndjson:{POPULATION_DIR}",
        as_of=AS_OF_DATE,
        write=False,
    )
    assert result.counts["assignments_changed"] == 0
    assert result.counts["patients_new"] == 0
    for patient, state in before.items():
        after = filled.patient_state(patient)
        assert after is not None and state is not None
        assert {k: v for k, v in after.items() if k not in ("run_id", "updated_at")} == {
            k: v for k, v in state.items() if k not in ("run_id", "updated_at")
        }
        assert len(filled.history(patient)) == 1


def test_overrides_confirmations_and_audit(filled: Store) -> None:
    patient = next(
        p
        for p in filled.patient_ids()
        if (filled.patient_state(p) or {}).get("status") == "assigned"
    )
    state = filled.patient_state(patient)
    assert state is not None
    current = state["practitioner"]
    other = next(
        c["practitioner"]
        for c in filled.clinicians()
        if c["eligible"] and c["practitioner"] != current
    )

    confirmed = filled.confirm(
        patient, current, confirmed_by="patient", actor="nurse", note="at the visit"
    )
    assert confirmed["confirmed_by"] == "patient"
    assert (filled.patient_state(patient) or {})["confirmation"] == "patient"
    clinician = filled.clinician(current)
    assert clinician is not None and clinician["unconfirmed"] == clinician["size"] - 1

    filled.add_override(
        patient, other, reason="moved closer", requested_by="family", actor="manager"
    )
    assert filled.pending_patients() == [patient]
    assert filled.active_overrides()[patient].practitioner == other
    filled.add_override(
        patient, current, reason="changed mind", requested_by="patient", actor="manager"
    )  # replaces the first
    assert len([o for o in filled.overrides(patient) if o["removed_at"] is None]) == 1
    assert filled.remove_override(patient, actor="manager")
    assert not filled.remove_override(patient, actor="manager")
    assert filled.active_overrides() == {}
    actions = [a["action"] for a in filled.audit(patient=patient)]
    assert actions == ["override-removed", "override", "override", "confirm"]
    with pytest.raises(ValueError, match="requested_by"):
        filled.add_override(patient, other, reason="", requested_by="robot", actor="x")


def test_patient_statuses_are_set_replaced_cleared_queued_and_audited(filled: Store) -> None:
    patient = filled.patient_ids()[0]
    filled.set_status(patient, "moved-away", reason="letter returned", actor="clerk")
    assert filled.pending_patients() == [patient]
    assert filled.active_statuses() == {patient: "moved-away"}
    filled.set_status(patient, "transferred-care", reason="records sent", actor="clerk")
    assert filled.active_statuses() == {patient: "transferred-care"}  # replaces the first
    history = filled.statuses(patient)
    assert [(x["status"], x["cleared_by"]) for x in history] == [
        ("moved-away", "clerk"),
        ("transferred-care", None),
    ]
    assert (filled.status_for(patient) or {})["reason"] == "records sent"
    assert filled.clear_status(patient, actor="manager")
    assert not filled.clear_status(patient, actor="manager")
    assert filled.active_statuses() == {} and filled.status_for(patient) is None
    actions = [(a["action"], a["actor"]) for a in filled.audit(patient=patient)]
    assert actions == [("status-cleared", "manager"), ("status", "clerk"), ("status", "clerk")]
    with pytest.raises(ValueError, match="status must be one of"):
        filled.set_status(patient, "on-holiday", reason="x", actor="x")


def test_migration_0005_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from fhirpanel.store.engine import MIGRATIONS

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        store.set_status("Patient/p1", "dismissed", reason="conduct", actor="manager")
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0004")
        assert "patient_statuses" not in inspect(store.engine).get_table_names()
        store.upgrade()
        assert "patient_statuses" in inspect(store.engine).get_table_names()
        assert store.active_statuses() == {}  # the downgrade dropped what it held
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        store.close()


def test_migration_0006_adds_and_drops_the_capacity_columns(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from fhirpanel.store.engine import MIGRATIONS

    added = {
        "supply",
        "demand",
        "expected_visits",
        "blended_size",
        "capacity_method",
        "capacity_basis",
        "relative",
    }
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        columns = {c["name"] for c in inspect(store.engine).get_columns("clinicians")}
        assert added <= columns
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0005")
        columns = {c["name"] for c in inspect(store.engine).get_columns("clinicians")}
        assert not added & columns and "capacity" in columns
        store.upgrade()
        columns = {c["name"] for c in inspect(store.engine).get_columns("clinicians")}
        assert added <= columns
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        store.close()


def test_migration_0007_keeps_older_confirmations_valid_and_downgrades(tmp_path: Path) -> None:
    """A confirmation stored before 0007 gets its day from when it was entered, and the
    patient's confirmation that held gets its day per side; the downgrade drops it all."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from fhirpanel.store.engine import MIGRATIONS

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0006")
        assert "proposed_moves" not in inspect(store.engine).get_table_names()
        with store.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO patients (patient, status, practitioner, confirmation, "
                    "ccm_eligible, weight, override, outreach, detail, updated_at) VALUES "
                    "('Patient/p1', 'assigned', 'Practitioner/d1', 'clinician', 0, 1.0, 0, "
                    "'[]', '{}', '2026-01-02 10:00:00')"
                )
            )
            for by, at in (
                ("patient", "2025-12-01 09:00:00"),
                ("clinician", "2026-01-02 10:00:00"),
            ):
                connection.execute(
                    text(
                        "INSERT INTO confirmations (patient, practitioner, confirmed_by, note, "
                        "actor, created_at) VALUES ('Patient/p1', 'Practitioner/d1', :by, '', "
                        "'nurse', :at)"
                    ),
                    {"by": by, "at": at},
                )
        store.upgrade()
        state = store.patient_state("Patient/p1") or {}
        # The summary named the clinician: that side's day is filled; the patient's was not
        # what held, so it stays empty.
        assert (state["clinician_confirmed"], state["patient_confirmed"]) == ("2026-01-02", None)
        days = [
            (c["confirmed_by"], c["confirmed_on"], c["method"])
            for c in store.confirmations("Patient/p1")
        ]
        assert days == [("patient", "2025-12-01", None), ("clinician", "2026-01-02", None)]
        assert store.confirmed_assignments()["Patient/p1"].clinician_on == date(2026, 1, 2)
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0006")
        columns = {c["name"] for c in inspect(store.engine).get_columns("confirmations")}
        assert "method" not in columns and "confirmed_by" in columns
        store.upgrade()
    finally:
        store.close()


def test_two_confirmations_per_assignment_and_their_days(filled: Store) -> None:
    patient = next(
        p for p in filled.patient_ids() if (filled.patient_state(p) or {})["status"] == "assigned"
    )
    current = (filled.patient_state(patient) or {})["practitioner"]
    filled.confirm(patient, current, confirmed_by="clinician", actor="dr", method="visit")
    filled.confirm(
        patient,
        current,
        confirmed_by="patient",
        actor="nurse",
        method="letter",
        confirmed_on=date(2026, 10, 1),
    )
    # A late entry of an older confirmation keeps the newer day of that side.
    filled.confirm(
        patient, current, confirmed_by="patient", actor="nurse", confirmed_on=date(2026, 9, 1)
    )
    state = filled.patient_state(patient) or {}
    assert (state["confirmation"], state["patient_confirmed"]) == ("both", "2026-10-01")
    held = filled.confirmed_assignments([patient])[patient]
    assert (held.practitioner, held.patient_on) == (current, date(2026, 10, 1))
    with pytest.raises(ValueError, match="method must be one of"):
        filled.confirm(patient, current, confirmed_by="patient", actor="x", method="fax")


def test_ledger_round_trip_and_forget(store: Store) -> None:
    run_id = store.start_run("full", "cli", "x", AS_OF)
    ledger = store.ledger(run_id)
    team = {"resourceType": "CareTeam", "id": "ct1", "meta": {"versionId": "3"}, "status": "active"}
    ledger.record("CareTeam", "careteam-p1", team)
    ledger.record("CareTeam", "careteam-p2", {"resourceType": "CareTeam"})  # no id: ignored
    assert ledger.lookup("CareTeam", ["careteam-p1"]) == {}  # not flushed yet
    with store.session() as s:
        assert ledger.flush(s) == 1
    again = store.ledger(run_id)
    assert again.lookup("CareTeam", ["careteam-p1", "careteam-x"]) == {"careteam-p1": team}
    entry = store.ledger_entry("CareTeam", "careteam-p1")
    assert entry is not None and (entry["id"], entry["version"]) == ("ct1", "3")
    again.forget("CareTeam", "careteam-p1")
    with store.session() as s:
        again.flush(s)
    assert store.ledger_entry("CareTeam", "careteam-p1") is None


def test_a_bad_database_url_is_a_clear_error() -> None:
    from fhirpanel.errors import ConfigError

    with pytest.raises(ConfigError, match="database_url"):
        Store("not a url ::")


def test_overrides_saved_at_once_leave_one_in_force(filled: Store) -> None:
    patient = filled.patient_ids()[0]
    clinicians = [c["practitioner"] for c in filled.clinicians() if c["eligible"]][:4]
    barrier = threading.Barrier(len(clinicians))
    errors: list[BaseException] = []

    def save(practitioner: str) -> None:
        barrier.wait()
        try:
            filled.add_override(
                patient, practitioner, reason="race", requested_by="staff", actor=practitioner
            )
        except BaseException as exc:  # collected: the test fails on any
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(c,)) for c in clinicians]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    active = [o for o in filled.overrides(patient) if o["removed_at"] is None]
    assert len(active) == 1
    assert filled.pending_patients() == [patient]


def test_confirming_a_clinician_the_patient_no_longer_has_is_refused(filled: Store) -> None:
    from fhirpanel.store.repository import AssignmentChanged

    patient = next(
        p
        for p in filled.patient_ids()
        if (filled.patient_state(p) or {}).get("status") == "assigned"
    )
    current = (filled.patient_state(patient) or {})["practitioner"]
    other = next(c["practitioner"] for c in filled.clinicians() if c["practitioner"] != current)
    with pytest.raises(AssignmentChanged):
        filled.confirm(patient, other, confirmed_by="clinician", actor="x")
    assert filled.confirmations(patient) == []


@pytest.mark.parametrize("remove_missing", [True, False])
def test_a_full_run_removes_absent_patients_only_when_its_read_was_complete(
    filled: Store, remove_missing: bool
) -> None:
    from fhirpanel.fhir.source import MemorySource, NdjsonSource

    resources = [
        r
        for r in (
            item
            for rtype in (
                "Patient",
                "Encounter",
                "Condition",
                "Practitioner",
                "PractitionerRole",
                "Organization",
            )
            for item in NdjsonSource(POPULATION_DIR).read(rtype)
        )
        if isinstance(r, dict)
    ]
    keep = {f"Patient/{r['id']}" for r in resources if r["resourceType"] == "Patient"}
    keep = set(sorted(keep)[:10])
    subset = [
        r
        for r in resources
        if r["resourceType"] not in ("Patient", "Encounter", "Condition")
        or f"Patient/{r.get('id')}" in keep
        or (r.get("subject") or {}).get("reference") in keep
    ]
    outcome = run_full(Settings.load(env={}), MemorySource(subset), AS_OF_DATE)
    run_id = filled.start_run("full", "test", "memory", AS_OF)
    with filled.session() as s:
        counts = filled.save_results(
            s,
            result_rows(outcome, clinicians=True),
            run_id,
            full=True,
            remove_missing=remove_missing,
        )
    assert counts["patients_removed"] == (300 - len(keep) if remove_missing else 0)
    assert len(filled.patient_ids()) == (len(keep) if remove_missing else 300)


def small_outcome() -> RunOutcome:
    """Three patients and two clinicians, every field the rows carry set by hand."""
    as_of = date(2026, 11, 22)
    population = Population(
        patients={
            "Patient/a": PatientRecord("Patient/a", birth_date=date(1950, 1, 1), sex="female"),
            "Patient/b": PatientRecord("Patient/b", birth_date=date(2020, 6, 1), sex="male"),
            "Patient/c": PatientRecord("Patient/c", active=False),
        },
        practitioners={"Practitioner/p1": PractitionerRecord("Practitioner/p1", name="Dr One")},
    )
    eligibility = EligibilityReport(
        by_code=("Practitioner/p1", "Practitioner/p2"),
        by_text=(),
        not_matched=(),
        fallback_all_on_visits=False,
        pediatric=("Practitioner/p2",),
    )
    assignments = (
        Assignment(
            "Patient/a",
            "assigned",
            "Practitioner/p1",
            rule="plurality",
            step="four-cut-18m",
            last_visit=date(2026, 3, 4),
        ),
        Assignment("Patient/b", "unassigned", reason="no qualifying visit"),
        Assignment("Patient/c", "excluded", reason="inactive"),
    )
    risk = RiskResult(
        "Patient/a",
        charlson=3,
        charlson_categories=("chf",),
        hcc=1.234,
        hccs=("HCC85",),
        interactions=(),
        ed_visits=1,
        inpatient_stays=0,
        chronic_conditions=("chf", "copd"),
        ccm_eligible=True,
        tier=2,
        tier_rule="charlson",
        basis_conditions=("Condition/k1",),
    )
    panels = PanelSummary(
        panels=(
            Panel(
                "Practitioner/p1",
                1,
                2.5,
                1800.0,
                1797.5,
                tiers=(("1", 0), ("2", 1)),
                hcc_adjusted_size=1.1,
            ),
            Panel("Practitioner/p2", 0, 0.0, 1500.0, 1500.0),
        ),
        suggestions=(Suggestion("Patient/b", "Practitioner/p2", "most open capacity"),),
        weights=AgeSexWeights({("75-84", "female"): 2.5}),
    )
    return RunOutcome(
        as_of=as_of,
        source="memory",
        population=population,
        attribution=AttributionResult(as_of, "default", assignments, eligibility),
        risk={"Patient/a": risk},
        panels=panels,
        outreach=(
            OutreachItem("Patient/a", "Practitioner/p1", ("not-seen-12m",), date(2026, 3, 4), None),
        ),
        tier_distribution={"2": 1},
    )


def test_result_rows_map_an_outcome_to_plain_rows() -> None:
    outcome = small_outcome()
    rows = result_rows(outcome, clinicians=True)
    a, b, c = rows.patients
    assert a == PatientRow(
        patient="Patient/a",
        status="assigned",
        practitioner="Practitioner/p1",
        rule="plurality",
        step="four-cut-18m",
        reason=None,
        tier=2,
        charlson=3,
        hcc=1.234,
        ccm_eligible=True,
        weight=2.5,
        last_visit="2026-03-04",
        outreach=("not-seen-12m",),
        suggested=None,
        suggestion_reason=None,
        detail=a.detail,
    )
    assert a.detail["practitioner"] == "Practitioner/p1"
    assert a.detail["risk"]["tier"] == 2 and a.detail["last_visit"] == "2026-03-04"
    # No weight for a boy of 6 in the table: 1.0; no risk: the defaults.
    assert (b.status, b.weight, b.tier, b.charlson, b.hcc, b.ccm_eligible) == (
        "unassigned",
        1.0,
        None,
        None,
        None,
        False,
    )
    assert (b.suggested, b.suggestion_reason, b.reason) == (
        "Practitioner/p2",
        "most open capacity",
        "no qualifying visit",
    )
    assert (c.status, c.reason, c.detail) == (
        "excluded",
        "inactive",
        {"patient": "Patient/c", "status": "excluded", "reason": "inactive"},
    )
    assert rows.clinicians == (
        ClinicianRow(
            "Practitioner/p1",
            "Dr One",
            eligible=True,
            pediatric=False,
            size=1,
            risk_adjusted_size=2.5,
            capacity=1800.0,
            open_capacity=1797.5,
            hcc_adjusted_size=1.1,
            tiers={"1": 0, "2": 1},
        ),
        ClinicianRow(
            "Practitioner/p2",
            None,
            eligible=True,
            pediatric=True,
            size=0,
            risk_adjusted_size=0.0,
            capacity=1500.0,
            open_capacity=1500.0,
        ),
    )
    assert result_rows(outcome, clinicians=False).clinicians is None


def test_the_store_saves_plain_rows(store: Store) -> None:
    rows = result_rows(small_outcome(), clinicians=True)
    run_id = store.start_run("full", "test", "memory", AS_OF)
    with store.session() as s:
        counts = store.save_results(s, rows, run_id, full=True)
    assert counts == {
        "patients_stored": 3,
        "assignments_changed": 0,
        "patients_new": 3,
        "patients_removed": 0,
        "moves_proposed": 0,
        "moves_superseded": 0,
    }
    a = store.patient_state("Patient/a")
    assert a is not None
    assert {
        k: a[k]
        for k in (
            "status",
            "practitioner",
            "rule",
            "tier",
            "weight",
            "outreach",
            "confirmation",
            "override",
            "run_id",
        )
    } == {
        "status": "assigned",
        "practitioner": "Practitioner/p1",
        "rule": "plurality",
        "tier": 2,
        "weight": 2.5,
        "outreach": ["not-seen-12m"],
        "confirmation": "proposed",
        "override": False,
        "run_id": run_id,
    }
    p1 = store.clinician("Practitioner/p1")
    assert p1 is not None
    assert (p1["name"], p1["size"], p1["tiers"], p1["unconfirmed"]) == (
        "Dr One",
        1,
        {"1": 0, "2": 1},
        1,
    )
    # An incremental pass keeps the panels and recomputes them from the patients table.
    moved = ResultRows(
        patients=(
            PatientRow("Patient/a", "assigned", "Practitioner/p2", rule="plurality", weight=2.5),
        )
    )
    with store.session() as s:
        counts = store.save_results(s, moved, run_id, full=False)
    assert counts["assignments_changed"] == 1
    assert [h["practitioner"] for h in store.history("Patient/a")] == [
        "Practitioner/p1",
        "Practitioner/p2",
    ]
    assert [(c["practitioner"], c["size"]) for c in store.clinicians()] == [
        ("Practitioner/p1", 0),
        ("Practitioner/p2", 1),
    ]
    with pytest.raises(ValueError, match="clinicians"), store.session() as s:
        store.save_results(s, moved, run_id, full=True)
