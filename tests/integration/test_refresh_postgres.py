"""A full refresh and an incremental pass with the store on PostgreSQL (CI starts one on
loopback with .ci/postgres and names it in FHIRPANEL_TEST_DATABASE_URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.integration.test_refresh import (
    AS_OF_DATE,
    add_visits,
    pick_moves,
    settings_for,
    team_practitioner,
)

PG_URL = os.environ.get("FHIRPANEL_TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="set FHIRPANEL_TEST_DATABASE_URL to run refreshes on PostgreSQL"
)


@pytest.fixture
def pg_store() -> Iterator[Store]:
    """A fresh schema of its own in the test database, dropped afterwards."""
    schema = f"refresh_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    store = Store(url.render_as_string(hide_password=False))
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_full_then_incremental_on_postgresql(
    sandbox: SandboxServer, population_dir: Path, pg_store: Store
) -> None:
    assert not pg_store.is_sqlite
    sandbox.load_ndjson_dir(population_dir)
    settings = settings_for(sandbox.base_url)
    full = full_refresh(settings, pg_store, as_of=AS_OF_DATE, write=True)
    assert full.status == "succeeded", full.error
    assert len(pg_store.patient_ids()) == full.counts["patients_stored"] >= 290
    assert pg_store.watermark(sandbox.base_url) == full.watermark_after

    moves = pick_moves(pg_store, 2)
    add_visits(sandbox.base_url, moves, pg_store)
    step = incremental_refresh(settings, pg_store, as_of=AS_OF_DATE)
    assert step.status == "succeeded", step.error
    assert set(step.patients) == set(moves)
    for patient, target in moves.items():
        state = pg_store.patient_state(patient)
        assert state is not None and state["practitioner"] == target
        assert team_practitioner(sandbox.base_url, patient) == target
    assert step.counts["writeback"]["CareTeam"]["update"] == 2
    assert pg_store.lock_info() is None


def test_a_confirmed_patient_is_held_and_the_accepted_move_applies_on_postgresql(
    sandbox: SandboxServer, population_dir: Path, pg_store: Store
) -> None:
    """Migration 0007 on PostgreSQL: two confirmations, a proposed move stored, accepted (an
    override in the same transaction, the old confirmations ended) and applied."""
    sandbox.load_ndjson_dir(population_dir)
    settings = settings_for(sandbox.base_url)
    assert full_refresh(settings, pg_store, as_of=AS_OF_DATE, write=False).ok
    (patient, target), (dismissed, elsewhere) = list(pick_moves(pg_store, 2).items())
    first = (pg_store.patient_state(patient) or {})["practitioner"]
    pg_store.confirm(patient, first, confirmed_by="clinician", actor="t", method="visit")
    pg_store.confirm(patient, first, confirmed_by="patient", actor="t", method="portal")
    other = (pg_store.patient_state(dismissed) or {})["practitioner"]
    pg_store.confirm(dismissed, other, confirmed_by="patient", actor="t")
    assert (pg_store.patient_state(patient) or {})["confirmation"] == "both"
    add_visits(sandbox.base_url, {patient: target, dismissed: elsewhere}, pg_store)
    step = incremental_refresh(settings, pg_store, as_of=AS_OF_DATE, write=False)
    assert step.status == "succeeded", step.error
    assert step.counts["proposed_moves"] == 2
    moves = {m["patient"]: m for m in pg_store.proposed_moves()}
    assert (pg_store.patient_state(patient) or {})["practitioner"] == first
    pg_store.accept_move(moves[patient]["id"], actor="boss")
    pg_store.dismiss_move(moves[dismissed]["id"], actor="boss")
    assert all(c["ended_at"] for c in pg_store.confirmations(patient))
    again = incremental_refresh(settings, pg_store, as_of=AS_OF_DATE, write=False)
    assert again.status == "succeeded", again.error
    assert (pg_store.patient_state(patient) or {})["practitioner"] == target
    assert (pg_store.patient_state(dismissed) or {})["practitioner"] == other
    assert pg_store.proposed_moves() == []
