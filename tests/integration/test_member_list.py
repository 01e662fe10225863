"""`fhirpanel run` with a payer's member list (attribution.risk_product_list) under case study 1:
from a CSV file on the committed population's NDJSON, and from a Da Vinci ATR Group posted to
the sandbox FHIR server (read through the client as `Group/ID`). The listed patients get the
listed clinicians (rule `risk-product`), what the list cannot use is in the report's issues, and
a list that cannot be read is exit 2."""

from __future__ import annotations

import dataclasses
import os
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.cli import main
from fhirpanel.config import FhirSettings
from fhirpanel.errors import ExitCode
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.member_list import ATTRIBUTED_PROVIDER, CHANGE_TYPE
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from tests.conftest import AS_OF, POPULATION_DIR, ROOT
from tests.integration.test_refresh import add_visits, settings_for

AS_OF_DATE = date.fromisoformat(AS_OF)

GOLDEN = ROOT / "tests" / "golden" / "population-report.json"


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI reads settings from the environment: none from the machine's."""
    for key in list(os.environ):
        if key.startswith("FHIRPANEL_") and key != "FHIRPANEL_LOG_LEVEL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("FHIRPANEL_DATABASE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("FHIRPANEL_ATTRIBUTION_PIPELINE", "pipelines/case_study_1")


def choose() -> tuple[str, str, str]:
    """From the committed population's report: an assigned patient, an eligible clinician they
    never had a qualifying visit with, and a second assigned patient (listed as dropped)."""
    report = orjson.loads(GOLDEN.read_bytes())
    assigned = [p for p in report["patients"] if p["status"] == "assigned"]
    clinicians = sorted({p["practitioner"] for p in assigned})
    first = assigned[0]
    never_seen = next(c for c in clinicians if c not in first["visits"])
    return first["patient"], never_seen, assigned[1]["patient"]


def run(tmp_path: Path, *args: str) -> dict[str, Any]:
    report = tmp_path / "report.json"
    code = main(["run", "--as-of", AS_OF, "--quiet", "--report", str(report), *args])
    assert code == 0
    data: dict[str, Any] = orjson.loads(report.read_bytes())
    return data


def entry(report: dict[str, Any], patient: str) -> dict[str, Any]:
    return next(p for p in report["patients"] if p["patient"] == patient)


def test_a_csv_list_assigns_its_members_on_the_ndjson_population(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient, clinician, _ = choose()
    listed = tmp_path / "members.csv"
    listed.write_text(
        "patient,practitioner\n"
        f"{patient},{clinician}\n"
        "Patient/not-ours,Practitioner/prac-0001\n"
        f"{choose()[2]},Practitioner/nobody\n"
    )
    monkeypatch.setenv("FHIRPANEL_ATTRIBUTION_RISK_PRODUCT_LIST", str(listed))
    report = run(tmp_path, "--source", f"ndjson:{POPULATION_DIR}")
    got = entry(report, patient)
    assert (got["practitioner"], got["rule"], got["step"]) == (
        clinician,
        "risk-product",
        "risk-product",
    )
    assert report["summary"]["risk_product_list"] == {
        "list": "members.csv",
        "entries": 3,
        "members": 3,
        "assigned": 1,
    }
    problems = {(i["resource"], i["problem"]) for i in report["issues"]}
    assert ("Patient/not-ours", "risk-product list members.csv: not in the population") in problems
    assert (
        choose()[2],
        "risk-product list members.csv: Practitioner/nobody is not a known clinician: "
        "attributed by the next step",
    ) in problems
    assert entry(report, choose()[2])["rule"] != "risk-product"


def test_an_atr_group_on_the_server_is_read_as_group_id(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.load_ndjson_dir(POPULATION_DIR)
    patient, clinician, dropped = choose()

    def member(who: str, change: str) -> dict[str, Any]:
        return {
            "entity": {"reference": who},
            "extension": [
                {"url": ATTRIBUTED_PROVIDER, "valueReference": {"reference": clinician}},
                {"url": CHANGE_TYPE, "valueCode": change},
            ],
        }

    group = {
        "resourceType": "Group",
        "id": "atr-2026q4",
        "type": "person",
        "actual": True,
        "member": [member(patient, "nochange"), member(dropped, "dropped")],
    }
    with FhirClient(FhirSettings(base_url=sandbox.base_url)) as client:
        client.update(group)
    monkeypatch.setenv("FHIRPANEL_ATTRIBUTION_RISK_PRODUCT_LIST", "Group/atr-2026q4")
    report = run(tmp_path, "--source", sandbox.base_url)
    assert (entry(report, patient)["practitioner"], entry(report, patient)["rule"]) == (
        clinician,
        "risk-product",
    )
    assert entry(report, dropped)["rule"] != "risk-product"
    assert report["summary"]["risk_product_list"]["list"] == "Group/atr-2026q4"
    assert report["summary"]["risk_product_list"]["assigned"] == 1
    assert {
        "resource": dropped,
        "problem": (
            "risk-product list Group/atr-2026q4 member 2: dropped from the list (ATR changeType): "
            "ignored"
        ),
        "action": "skipped",
    } in report["issues"]


def test_a_list_that_cannot_be_read_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "atr.json"
    broken.write_text("not json at all")
    monkeypatch.setenv("FHIRPANEL_ATTRIBUTION_RISK_PRODUCT_LIST", str(broken))
    code = main(["run", "--as-of", AS_OF, "--quiet", "--source", f"ndjson:{POPULATION_DIR}"])
    assert code == ExitCode.USAGE == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: attribution.risk_product_list: atr.json is not JSON (line 1)"]


def test_the_full_and_incremental_refreshes_follow_the_list(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """The list decides in the full pass and keeps deciding in the incremental pass that follows
    new visits: a listed patient who then sees another clinician more stays with the listed one,
    while an unlisted patient given the same visits moves."""
    sandbox.load_ndjson_dir(POPULATION_DIR)
    patient, listed_clinician, other = choose()
    listed = tmp_path / "members.csv"
    listed.write_text(f"patient,practitioner\n{patient},{listed_clinician}\n")
    base = settings_for(sandbox.base_url)
    settings = dataclasses.replace(
        base,
        attribution=dataclasses.replace(
            base.attribution, pipeline="pipelines/case_study_1", risk_product_list=str(listed)
        ),
    )
    store = Store(f"sqlite:///{tmp_path / 'refresh.db'}")
    try:
        full = full_refresh(settings, store, as_of=AS_OF_DATE, write=False)
        assert full.status == "succeeded", full.error
        state = store.patient_state(patient)
        assert state is not None
        assert (state["practitioner"], state["rule"]) == (listed_clinician, "risk-product")
        before_other = store.patient_state(other)
        assert before_other is not None
        target = next(
            c["practitioner"]
            for c in store.clinicians()
            if c["eligible"]
            and not c["pediatric"]
            and c["practitioner"] not in (listed_clinician, before_other["practitioner"])
        )
        add_visits(sandbox.base_url, {patient: target, other: target}, store)

        step = incremental_refresh(settings, store, as_of=AS_OF_DATE, write=False)
        assert step.status == "succeeded", step.error
        assert set(step.patients) == {patient, other}
        after = store.patient_state(patient)
        assert after is not None
        assert (after["practitioner"], after["rule"]) == (listed_clinician, "risk-product")
        moved = store.patient_state(other)
        assert moved is not None and moved["practitioner"] == target
    finally:
        store.close()
