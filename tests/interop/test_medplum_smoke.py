"""Smoke tests of the Medplum server (tests/interop/medplum/): Medplum's own FHIR router over HTTP,
read and written through fhirpanel's FhirClient, in both transaction modes, and judged by
`fhirpanel check-server`. Prints the server's startup time and memory."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from fhirpanel.config import FhirSettings
from fhirpanel.errors import InvalidRequestError, VersionConflictError
from fhirpanel.fhir.client import FhirClient, url_origin
from tests.interop.servers import MedplumServer, bundle_files, post_json

ROOT = Path(__file__).resolve().parents[2]
POPULATION = ROOT / "sandbox_fixtures" / "population"
SYSTEM = "urn:fhirpanel:interop-smoke"


def say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[medplum] {text}")


def client(server: MedplumServer, page_size: int = 200) -> FhirClient:
    return FhirClient(FhirSettings(base_url=server.base_url, page_size=page_size, max_retries=0))


def tag() -> str:
    return uuid.uuid4().hex[:12]


def patient(value: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": "Smoke", "given": [value]}],
        **extra,
    }


def entry_statuses(answer: dict[str, Any]) -> list[str]:
    return [str(e["response"]["status"]) for e in answer["entry"]]


@pytest.fixture(scope="module")
def first_bundle(medplum: MedplumServer) -> dict[str, Any]:
    """The first committed transaction bundle, POSTed as a transaction (run as a batch)."""
    bundle: dict[str, Any] = json.loads(bundle_files(POPULATION)[0].read_text())
    status, answer = post_json(medplum.base_url, bundle)
    assert status == 200, answer
    assert answer["type"] == "transaction-response"
    assert set(entry_statuses(answer)) == {"200"}  # PUT Type/id: update as create
    assert len(answer["entry"]) == len(bundle["entry"])
    return bundle


def test_startup_time_and_memory(
    medplum: MedplumServer, first_bundle: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert medplum.startup_seconds is not None and medplum.startup_seconds < 60
    rss = medplum.rss_kb()
    assert rss is not None
    say(capsys, f"{medplum.ready_line}")
    say(
        capsys,
        f"startup {medplum.startup_seconds:.2f}s; RSS {rss / 1024:.0f} MiB after "
        f"{len(first_bundle['entry'])} resources (pid {medplum.pid})",
    )
    metadata = requests.get(medplum.base_url + "/metadata", timeout=10)
    assert metadata.headers["Content-Type"].startswith("application/fhir+json")
    statement = metadata.json()
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["software"]["name"] == "medplum-fhir-router"
    codes = {i["code"] for i in statement["rest"][0]["interaction"]}
    assert {"transaction", "batch"} <= codes


def test_paged_search_through_fhirclient(
    medplum: MedplumServer, first_bundle: dict[str, Any]
) -> None:
    patients = {
        e["resource"]["id"]
        for e in first_bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    }
    with client(medplum, page_size=10) as fhir:
        pages = list(fhir.search_pages("Patient"))
        found = [e["resource"]["id"] for page in pages for e in page["entry"]]
        assert set(found) >= patients and len(found) == len(set(found))
        assert len(pages) >= 3
        for page in pages[:-1]:  # next links on the server's own loopback origin, by _offset
            nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
            assert url_origin(nxt) == url_origin(medplum.base_url) and "_offset=" in nxt
        assert "total" not in pages[0]  # Medplum gives a total only when asked (_total)
        assert all(e["fullUrl"].startswith(medplum.base_url) for e in pages[0]["entry"])
        some = sorted(patients)[:3]
        encounters = list(fhir.search_by_patients("Encounter", [f"Patient/{p}" for p in some]))
        expected = [
            e
            for e in first_bundle["entry"]
            if e["resource"]["resourceType"] == "Encounter"
            and e["resource"].get("subject", {}).get("reference") in {f"Patient/{p}" for p in some}
        ]
        assert len(encounters) == len(expected) > 0
        count = fhir.request("GET", "Patient", params=[("_summary", "count")]).json()
        assert count["total"] >= len(patients) and not count.get("entry")
        with pytest.raises(InvalidRequestError, match="Unknown search parameter"):
            list(fhir.search("Patient", [("no-such-param", "x")]))


def mixed_transaction(stale_id: str, value: str) -> dict[str, Any]:
    """A valid create, an update with a stale If-Match, and an invalid create."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": patient(value)},
            {
                "request": {"method": "PUT", "url": f"Patient/{stale_id}", "ifMatch": 'W/"stale"'},
                "resource": patient(value + "-u", id=stale_id),
            },
            {
                "request": {"method": "POST", "url": "Condition"},
                "resource": {"resourceType": "Condition", "code": {"text": "no subject"}},
            },
        ],
    }


def found(server: MedplumServer, value: str) -> int:
    with client(server) as fhir:
        return len(list(fhir.search("Patient", [("identifier", f"{SYSTEM}|{value}")])))


def test_transaction_runs_as_batch_by_default(medplum: MedplumServer) -> None:
    value = tag()
    with client(medplum) as fhir:
        existing = fhir.create(patient(value + "-e"))
        answer = fhir.transaction(mixed_transaction(existing["id"], value))
    assert answer["type"] == "transaction-response"
    assert entry_statuses(answer) == ["201", "412", "400"]
    assert answer["entry"][0]["response"]["location"].startswith("Patient/")
    assert answer["entry"][2]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert found(medplum, value) == 1  # not atomic: the valid create stays written


def test_atomic_transaction_and_its_limits(medplum_atomic: MedplumServer) -> None:
    value = tag()
    with client(medplum_atomic) as fhir:
        existing = fhir.create(patient(value + "-e"))
        with pytest.raises(InvalidRequestError):
            fhir.transaction(mixed_transaction(existing["id"], value))
        assert found(medplum_atomic, value) == 0  # rolled back
        good = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "request": {"method": "POST", "url": "Patient"},
                    "resource": patient(f"{value}-{n}"),
                }
                for n in range(3)
            ],
        }
        answer = fhir.transaction(good)
        assert entry_statuses(answer) == ["201"] * 3
        updates = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "request": {"method": "PUT", "url": f"Patient/{value}-{n}"},
                    "resource": patient(f"{value}-{n}", id=f"{value}-{n}"),
                }
                for n in range(51)
            ],
        }
        with pytest.raises(InvalidRequestError, match="more update operations than allowed"):
            fhir.transaction(updates)
        conditional = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "request": {
                        "method": "PUT",
                        "url": f"Patient?identifier={SYSTEM}|{value}-c{n}",
                    },
                    "resource": patient(f"{value}-c{n}"),
                }
                for n in range(9)
            ],
        }
        with pytest.raises(InvalidRequestError, match="strict isolation"):
            fhir.transaction(conditional)
        conditional["entry"] = conditional["entry"][:8]
        assert entry_statuses(fhir.transaction(conditional)) == ["201"] * 8


def test_update_with_if_match_and_stale_412(medplum: MedplumServer) -> None:
    with client(medplum) as fhir:
        first = fhir.create(patient(tag()))
        version = first["meta"]["versionId"]
        second = fhir.update({**first, "gender": "female"}, if_match=version)
        assert second["meta"]["versionId"] != version
        with pytest.raises(VersionConflictError) as stale:
            fhir.update({**first, "gender": "male"}, if_match=version)
        assert stale.value.status == 412
        read = fhir.request("GET", f"Patient/{first['id']}")
        assert read.headers["ETag"] == f'W/"{second["meta"]["versionId"]}"'
        old = fhir.request("GET", f"Patient/{first['id']}/_history/{version}").json()
        assert "gender" not in old
        for _ in range(2):  # newest first, every time (MemoryRepository alone alternates)
            history = fhir.request("GET", f"Patient/{first['id']}/_history").json()
            assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == [
                second["meta"]["versionId"],
                version,
            ]


def test_conditional_create_and_update(medplum: MedplumServer) -> None:
    value = tag()
    query = f"identifier={SYSTEM}|{value}"
    with client(medplum) as fhir:
        created = fhir.request(
            "POST", "Patient", json=patient(value), headers={"If-None-Exist": query}
        )
        assert created.status_code == 201 and created.headers["Location"].startswith(
            medplum.base_url + "/Patient/"
        )
        again = fhir.request(
            "POST", "Patient", json=patient(value), headers={"If-None-Exist": query}
        )
        assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
        updated = fhir.conditional_update(patient(value, gender="other"), query)
        assert updated["id"] == created.json()["id"] and updated["gender"] == "other"
        fhir.create(patient(value))  # a second match
        with pytest.raises(VersionConflictError):
            fhir.conditional_update(patient(value), query)


def test_validation_on_write(medplum: MedplumServer) -> None:
    response = requests.post(
        medplum.base_url + "/Condition",
        timeout=10,
        json={"resourceType": "Condition", "code": {"text": "x"}},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Missing required property" in json.dumps(outcome)
    bad_date = requests.post(
        medplum.base_url + "/Patient",
        timeout=10,
        json={"resourceType": "Patient", "birthDate": "2025-13-45"},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert bad_date.status_code == 400 and "Invalid date" in bad_date.text


@pytest.mark.parametrize("mode", ["batch", "atomic"])
def test_check_server_verdict(
    mode: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    server: MedplumServer = request.getfixturevalue(
        "medplum" if mode == "batch" else "medplum_atomic"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fhirpanel", "check-server", server.base_url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    check = json.loads(done.stdout)
    say(
        capsys,
        f"check-server ({mode}): {check['verdict']}; software {check['software']}; "
        f"transaction size {check['transaction_size']}",
    )
    assert check["ok"] and check["verdict"].startswith("fhirpanel can work with this server")
