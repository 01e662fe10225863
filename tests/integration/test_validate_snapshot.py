"""`validate` and `snapshot` through the service, on NDJSON sources: generated populations whose
future utilisation does or does not follow risk (the c-statistics must tell them apart), the
committed population's snapshot against data that arrives late, and what the store keeps as
the API and the dashboard show it."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask

from fhirpanel.api.app import create_app
from fhirpanel.config import Settings
from fhirpanel.domain.snapshot import differences
from fhirpanel.sandbox.generate import write_population
from fhirpanel.service.validation import (
    SnapshotDiffers,
    compute_snapshot,
    read_once,
    read_snapshot,
    run_validation,
    store_snapshot,
    store_validation,
)
from fhirpanel.store import Store
from fhirpanel.tables import Tables
from tests.conftest import AS_OF, POPULATION_DIR
from tests.integration.test_api import READ_H, api_settings
from tests.integration.test_dashboard import page, sign_in

AS_OF_DATE = date.fromisoformat(AS_OF)
OCTOBER_END = date(2026, 10, 31)
PATIENTS = 1200  # small for a shared machine; enough for the c-statistics to settle


def generated(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Path:
    out = tmp_path_factory.mktemp(f"pop-{mode}")
    write_population(out, PATIENTS, 7, AS_OF_DATE, malformed_rate=0.0, utilisation=mode)
    return out


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    import dataclasses

    db = tmp_path_factory.mktemp("store") / "state.db"
    return dataclasses.replace(api_settings(), database_url=f"sqlite:///{db}")


# --- validate ----------------------------------------------------------------------------------


def test_c_statistics_well_above_chance_when_utilisation_follows_risk(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> None:
    source = generated(tmp_path_factory, "risk")
    result = run_validation(settings, f"ndjson:{source}", AS_OF_DATE).result
    c = result.c_statistics()
    assert set(c) == {"charlson", "hcc", "utilisation", "blended", "tier"}
    assert all(v is not None and v > 0.65 for v in c.values()), c
    # Tiers 3-4 hold a larger share of next year's events than of patients.
    share = result.capture.event_share
    assert share is not None and result.capture.patient_share is not None
    assert share > 2 * result.capture.patient_share
    # The observed rate rises from the lowest to the highest decile of the blended factor.
    deciles = next(m for m in result.metrics if m.metric == "blended").deciles
    assert deciles[-1].observed_rate > 3 * deciles[0].observed_rate


def test_c_statistics_near_chance_when_utilisation_is_independent_of_risk(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> None:
    source = generated(tmp_path_factory, "independent")
    result = run_validation(settings, f"ndjson:{source}", AS_OF_DATE).result
    c = result.c_statistics()
    assert all(v is not None and 0.4 < v < 0.6 for v in c.values()), c
    assert result.patients > 0.9 * PATIENTS


def test_scores_use_only_what_was_on_record_a_year_back(settings: Settings) -> None:
    """Scoring the committed population a year back gives the same figures as scoring a copy
    from which everything dated after the baseline was cut."""
    tables, population, _ = read_once(settings, f"ndjson:{POPULATION_DIR}", AS_OF_DATE, None)
    from fhirpanel.service.validation import validate_population

    whole = validate_population(settings, tables, population, AS_OF_DATE).result
    assert whole.baseline == date(2025, 11, 22)
    assert whole.patients > 250 and whole.with_outcome > 0
    # Prior-year utilisation at the baseline cannot see the outcome year's visits: moving
    # the outcome year's encounters out of the population leaves every score unchanged.
    cut = type(population)(
        patients=population.patients,
        encounters=[e for e in population.encounters if e.day and e.day <= whole.baseline],
        conditions=population.conditions,
        practitioners=population.practitioners,
        roles=population.roles,
        organizations=population.organizations,
    )
    scores_only = validate_population(settings, tables, cut, AS_OF_DATE).result
    assert scores_only.with_outcome == 0
    assert [m.deciles and [d.mean_score for d in m.deciles] for m in whole.metrics] == [
        m.deciles and [d.mean_score for d in m.deciles] for m in scores_only.metrics
    ]


# --- snapshot ----------------------------------------------------------------------------------


def copy_population(tmp_path: Path) -> Path:
    target = tmp_path / "population"
    target.mkdir()
    for path in POPULATION_DIR.glob("*.ndjson"):
        shutil.copy(path, target / path.name)
    return target


def add_office_visit(directory: Path, patient: str, day: str, eid: str) -> None:
    """A finished office visit with an eligible clinician (a copy of one in the population)."""
    first = (directory / "Encounter.ndjson").read_text().splitlines()[0]
    visit: dict[str, Any] = json.loads(first)
    assert visit["class"]["code"] == "AMB" and visit["status"] == "finished"
    visit["id"] = eid
    visit["subject"] = {"reference": patient}
    visit["period"] = {"start": f"{day}T10:00:00-06:00", "end": f"{day}T10:20:00-06:00"}
    with (directory / "Encounter.ndjson").open("a") as handle:
        handle.write(json.dumps(visit) + "\n")


def test_a_closed_month_ignores_data_dated_after_it_and_refuses_a_changed_rerun(
    tmp_path: Path, settings: Settings
) -> None:
    import dataclasses

    settings = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 's.db'}")
    directory = copy_population(tmp_path)
    spec = f"ndjson:{directory}"
    first, described = read_snapshot(settings, spec, "2026-10", OCTOBER_END)
    assert store_snapshot(settings, first, described, replace=False) == "stored"
    unassigned = sorted(
        p for p, a in first.content["patients"].items() if a["status"] == "unassigned"
    )
    assert unassigned
    patient = unassigned[0]

    # A visit dated in November arrives: October's snapshot is the same, byte for byte.
    add_office_visit(directory, patient, "2026-11-05", "late-november")
    again, _ = read_snapshot(settings, spec, "2026-10", OCTOBER_END)
    assert again.data == first.data
    assert store_snapshot(settings, again, described, replace=False) == "unchanged"
    # ... though it is data the method uses: November's snapshot does see it.
    tables = Tables.load(settings)
    _, population, _ = read_once(settings, spec, date(2026, 11, 30), None)
    november = compute_snapshot(settings, tables, population, "2026-11", date(2026, 11, 30))
    assert november.content["patients"][patient]["status"] == "assigned"

    # A visit dated in October arrives late: the rerun differs, refused with how.
    add_office_visit(directory, patient, "2026-10-15", "late-october")
    changed, _ = read_snapshot(settings, spec, "2026-10", OCTOBER_END)
    assert changed.data != first.data
    assert changed.content["patients"][patient]["status"] == "assigned"
    with pytest.raises(SnapshotDiffers) as refused:
        store_snapshot(settings, changed, described, replace=False)
    assert "count assigned:" in str(refused.value) and "count unassigned:" in str(refused.value)
    assert differences(first.content, changed.content) == refused.value.lines
    assert store_snapshot(settings, changed, described, replace=True) == "replaced"
    store = Store(settings.database)
    try:
        from fhirpanel.store.validation import get_snapshot

        stored = get_snapshot(store, "2026-10")
        assert stored is not None and stored["content"].encode() == changed.data
    finally:
        store.close()


# --- the store, the API and the dashboard ------------------------------------------------------


@pytest.fixture(scope="module")
def app(settings: Settings) -> Flask:
    spec = f"ndjson:{POPULATION_DIR}"
    store_validation(settings, run_validation(settings, spec, AS_OF_DATE))
    snapshot, described = read_snapshot(settings, spec, "2026-10", OCTOBER_END)
    store_snapshot(settings, snapshot, described, replace=True)
    store = Store(settings.database)
    application = create_app(settings, store=store, trigger=lambda kind, by: None)
    application.testing = True
    return application


def test_the_api_answers_as_documented(app: Flask) -> None:
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=READ_H)
    statuses = []
    for path, parameters in (
        ("/api/validation", {}),
        ("/api/snapshots", {}),
        ("/api/snapshots/{month}", {"month": "2026-10"}),
        ("/api/snapshots/{month}", {"month": "2026-09"}),
    ):
        case = loaded[path]["GET"].Case(path_parameters=parameters)
        statuses.append(case.call_and_validate(headers=READ_H).status_code)
    assert statuses == [200, 200, 200, 404]
    client = app.test_client()
    body = client.get("/api/validation", headers=READ_H).get_json()
    assert body["result"]["baseline"] == "2025-11-22"
    assert body["svg"].startswith("<svg")
    listing = client.get("/api/snapshots", headers=READ_H).get_json()["items"]
    assert [s["month"] for s in listing] == ["2026-10"]
    one = client.get("/api/snapshots/2026-10", headers=READ_H).get_json()
    assert one["content"]["as_of"] == "2026-10-31" and one["digest"] == listing[0]["digest"]
    assert client.get("/api/snapshots/nonsense", headers=READ_H).status_code == 404
    assert client.get("/api/validation").status_code == 401


def test_the_validation_page_shows_the_table_and_the_plot(app: Flask) -> None:
    from tests.integration.test_api import ADMIN

    html = page(sign_in(app, ADMIN), "/validation")
    assert 'aria-current="page">Validation</a>' in html
    assert 'id="validation-summary"' in html and "2025-11-22" in html
    for metric in ("charlson", "hcc", "utilisation", "blended", "tier"):
        assert f'data-metric="{metric}"' in html
    assert 'id="calibration-plot" src="data:image/svg+xml;base64,' in html
    assert 'id="snapshots"' in html and "2026-10" in html
