"""FhirClient against the real sandbox FHIR server (sekmet on 127.0.0.1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fhirpanel.config import FhirSettings
from fhirpanel.errors import (
    InvalidRequestError,
    NotFoundError,
    SourceError,
    VersionConflictError,
)
from fhirpanel.fhir.client import FhirClient
from fhirpanel.sandbox.server import SandboxServer

IDENTIFIER_SYSTEM = "https://fhirpanel.test/id/careteam"


def patients(n: int, prefix: str = "p") -> list[dict[str, Any]]:
    return [{"resourceType": "Patient", "id": f"{prefix}{i:04d}", "active": True} for i in range(n)]


def encounter(eid: str, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[FhirClient]:
    with FhirClient(
        FhirSettings(base_url=sandbox.base_url, max_retries=1, backoff_factor=0.01)
    ) as fhir:
        yield fhir


def settings_for(sandbox: SandboxServer, **changes: Any) -> FhirSettings:
    return FhirSettings(base_url=sandbox.base_url, max_retries=1, backoff_factor=0.01, **changes)


def test_paging_over_several_pages_yields_each_patient_once(sandbox: SandboxServer) -> None:
    sandbox.load(patients(250))
    with FhirClient(settings_for(sandbox, page_size=40)) as client:
        ids = [r["id"] for r in client.search("Patient")]
        assert len(ids) == 250 and set(ids) == {f"p{i:04d}" for i in range(250)}
        assert client.stats.pages == 7  # 6 full pages of 40 and one of 10
        assert client.stats.requests == 7 and client.stats.retries == 0
        assert client.stats.bytes > 250 * 40


def test_last_updated_gt_returns_only_newer_resources(
    sandbox: SandboxServer, client: FhirClient
) -> None:
    sandbox.load(patients(30))
    loaded = list(client.search("Patient"))
    watermark = max(r["meta"]["lastUpdated"] for r in loaded)  # the server's clock, not ours
    time.sleep(0.01)  # lastUpdated has millisecond precision
    for resource in loaded[:5]:
        client.update({**resource, "active": False})
    newer = list(client.search_since("Patient", watermark))
    assert sorted(r["id"] for r in newer) == sorted(r["id"] for r in loaded[:5])
    assert all(r["meta"]["lastUpdated"] > watermark for r in newer)
    assert all(r["meta"]["versionId"] == "2" for r in newer)
    latest = max(r["meta"]["lastUpdated"] for r in newer)
    assert list(client.search_since("Patient", latest)) == []


def test_batched_patient_searches(sandbox: SandboxServer) -> None:
    sandbox.load(patients(130))
    sandbox.load(encounter(f"e{i:04d}", f"p{i:04d}") for i in range(130))
    wanted = [f"p{i:04d}" for i in range(120)]
    with FhirClient(settings_for(sandbox, patient_batch=50)) as client:
        found = list(client.search_by_patients("Encounter", [f"Patient/{p}" for p in wanted]))
        assert sorted(r["subject"]["reference"] for r in found) == [f"Patient/{p}" for p in wanted]
        assert client.stats.requests == 3 and client.stats.pages == 3
        by_id = list(client.search_by_patients("Patient", wanted, param="_id"))
        assert sorted(r["id"] for r in by_id) == wanted
        assert client.stats.requests == 6


def test_include_entries_are_yielded_too(sandbox: SandboxServer, client: FhirClient) -> None:
    sandbox.load(patients(3))
    sandbox.load(encounter(f"e{i}", f"p{i:04d}") for i in range(3))
    got = list(client.search("Encounter", {"_include": "Encounter:subject"}))
    assert sorted((r["resourceType"], r["id"]) for r in got) == [
        ("Encounter", "e0"),
        ("Encounter", "e1"),
        ("Encounter", "e2"),
        ("Patient", "p0000"),
        ("Patient", "p0001"),
        ("Patient", "p0002"),
    ]


def test_paged_include_entries_do_not_count_toward_the_total(sandbox: SandboxServer) -> None:
    sandbox.load(patients(60))
    sandbox.load(encounter(f"e{i:03d}", f"p{i:04d}") for i in range(60))
    with FhirClient(settings_for(sandbox, page_size=25)) as client:
        got = list(client.search("Encounter", {"_include": "Encounter:subject"}))
        assert client.stats.pages == 3
    assert sum(1 for r in got if r["resourceType"] == "Encounter") == 60
    assert sum(1 for r in got if r["resourceType"] == "Patient") == 60


def test_a_result_that_grows_while_it_is_paged_is_a_failed_read(sandbox: SandboxServer) -> None:
    sandbox.load(patients(100))
    with FhirClient(settings_for(sandbox, page_size=40)) as client:
        pages = client.search("Patient")
        first = [next(pages)["id"] for _ in range(40)]
        client.create({"resourceType": "Patient", "active": True})  # between pages 1 and 2
        with pytest.raises(SourceError) as caught:
            list(pages)
    assert len(first) == 40
    assert str(caught.value) == (
        "Patient search: server said total 100 but its pages held 101 "
        "(more than the total: the result changed while it was read); "
        "nothing from this search was used"
    )


def test_count_only_searches_are_not_checked_against_their_pages(
    sandbox: SandboxServer, client: FhirClient
) -> None:
    sandbox.load(patients(7))
    for params in ([("_summary", "count")], [("_count", "0")]):
        (page,) = client.search_pages("Patient", params)
        assert page["total"] == 7 and page["entry"] == []


def test_strict_handling_turns_an_unknown_parameter_into_an_error(
    sandbox: SandboxServer, client: FhirClient
) -> None:
    sandbox.load(patients(3))
    with pytest.raises(InvalidRequestError) as caught:
        list(client.search("Patient", {"favourite-colour": "blue"}))
    assert caught.value.status == 400
    assert caught.value.outcome is not None
    diagnostics = caught.value.outcome["issue"][0]["diagnostics"]
    assert "favourite-colour" in diagnostics and diagnostics in str(caught.value)
    # Without the header sekmet drops the parameter silently and answers everything.
    with FhirClient(settings_for(sandbox, strict_search=False)) as lenient:
        assert len(list(lenient.search("Patient", {"favourite-colour": "blue"}))) == 3


def test_read_and_404(sandbox: SandboxServer, client: FhirClient) -> None:
    sandbox.load(patients(1))
    assert client.read("Patient", "p0000")["active"] is True
    with pytest.raises(NotFoundError) as caught:
        client.read("Patient", "no-such-patient")
    assert caught.value.status == 404 and caught.value.outcome is not None
    assert "Patient/no-such-patient" in str(caught.value)


def test_a_stale_if_match_is_a_version_conflict(sandbox: SandboxServer, client: FhirClient) -> None:
    sandbox.load(patients(1))
    current = client.read("Patient", "p0000")
    version = current["meta"]["versionId"]
    updated = client.update({**current, "active": False}, if_match=version)
    assert updated["meta"]["versionId"] == str(int(version) + 1)
    with pytest.raises(VersionConflictError) as caught:
        client.update({**current, "active": True}, if_match=version)  # now stale
    assert caught.value.status == 412  # sekmet; HAPI answers 409
    assert client.read("Patient", "p0000")["active"] is False


def test_conditional_update_creates_then_updates(
    sandbox: SandboxServer, client: FhirClient
) -> None:
    team = {
        "resourceType": "CareTeam",
        "status": "active",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": "pt-1"}],
        "subject": {"reference": "Patient/p0000"},
    }
    query = f"identifier={IDENTIFIER_SYSTEM}|pt-1"
    created = client.conditional_update(team, query)
    assert created["meta"]["versionId"] == "1"
    updated = client.conditional_update({**team, "status": "inactive"}, query)
    assert updated["id"] == created["id"] and updated["meta"]["versionId"] == "2"
    found = list(client.search("CareTeam", {"identifier": f"{IDENTIFIER_SYSTEM}|pt-1"}))
    assert [(r["id"], r["status"]) for r in found] == [(created["id"], "inactive")]
    assert client.stats.by_method == {"PUT": 2, "GET": 1}


def test_create_and_transaction_round_trip(sandbox: SandboxServer, client: FhirClient) -> None:
    made = client.create({"resourceType": "Patient", "active": True})
    assert made["id"] and made["meta"]["versionId"] == "1"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7f1c3e2a-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Patient", "active": True},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": encounter("tx-e1", made["id"]),
                "request": {"method": "PUT", "url": "Encounter/tx-e1"},
            },
        ],
    }
    answer = client.transaction(bundle)
    assert answer["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert [s.split()[0] for s in statuses] == ["201", "201"]
    assert client.read("Encounter", "tx-e1")["subject"]["reference"] == f"Patient/{made['id']}"
    assert len(list(client.search("Patient"))) == 2


def test_capabilities_of_the_sandbox(client: FhirClient) -> None:
    caps = client.capabilities()
    assert caps.release == "R4" and caps.fhir_version == "4.0.1"
    assert caps.software_name and "SEKMET" in caps.software_name
    assert caps.transaction and caps.batch
    assert caps.export.system and caps.export.patient and caps.export.group
    assert caps.supports("Encounter", "search-type") and caps.supports("Patient", "read")
    # The harness adds CareTeam's identifier search before start (tests/conftest.py).
    assert "identifier" in caps.search_params("CareTeam")
    assert caps.conditional_update("CareTeam")
    assert {"patient", "date", "class", "participant"} <= set(caps.search_params("Encounter"))
    assert not caps.smart.declared
    assert client.capabilities() is caps and client.stats.requests == 1
