"""Ingest through the in-memory and NDJSON sources: roles resolved, bad input recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from fhirpanel.domain.records import Issue
from fhirpanel.fhir.source import MemorySource, NdjsonSource
from fhirpanel.ingest import read_population


def resources() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "gender": "male"},
        {"resourceType": "Patient", "id": "p2", "gender": "female"},
        {"resourceType": "Practitioner", "id": "d1"},
        {"resourceType": "PractitionerRole", "id": "r1",
         "practitioner": {"reference": "Practitioner/d1"}},
        {"resourceType": "PractitionerRole", "id": "r-empty"},
        {"resourceType": "Encounter", "id": "e1", "status": "finished",
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-01-05"},
         "participant": [{"individual": {"reference": "PractitionerRole/r1"}}]},
        {"resourceType": "Encounter", "id": "e2", "status": "finished",
         "subject": {"reference": "Patient/ghost"}, "period": {"start": "2026-01-05"}},
        {"resourceType": "Encounter", "id": "e3", "status": "finished",
         "subject": {"reference": "Patient/p2"}, "period": {"start": "2026-01-06"}},
        {"resourceType": "Encounter", "id": "e4", "status": "finished",
         "subject": {"reference": "Patient/p2"}, "period": {"start": "2026-01-07"},
         "participant": [{"individual": {"reference": "PractitionerRole/r-empty"}}]},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}},
        {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"},
         "code": {"text": "uncoded"}},
    ]


def test_roles_resolve_to_their_practitioner_and_problems_are_recorded() -> None:
    pop = read_population(MemorySource(resources()))
    encs = {e.id: e for e in pop.encounters}
    assert encs["Encounter/e1"].practitioner == "Practitioner/d1"
    assert encs["Encounter/e1"].practitioner_role == "PractitionerRole/r1"
    assert "Encounter/e2" not in encs  # unknown subject: skipped
    assert encs["Encounter/e3"].practitioner is None  # kept for utilisation, not attribution
    problems = {(i.resource, i.action) for i in pop.issues}
    assert ("Encounter/e2", "skipped") in problems
    assert ("Encounter/e3", "recorded") in problems
    assert ("Encounter/e4", "recorded") in problems
    assert ("Condition/c2", "skipped") in problems
    assert [c.id for c in pop.conditions] == ["Condition/c1"]


def test_duplicates_keep_the_newer_version() -> None:
    old = {"resourceType": "Patient", "id": "p1", "gender": "male",
           "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}}
    new = {"resourceType": "Patient", "id": "p1", "gender": "female",
           "meta": {"lastUpdated": "2026-02-01T00:00:00Z"}}
    pop = read_population(MemorySource([new, old]))
    assert pop.patients["Patient/p1"].sex == "female"
    assert Issue("Patient/p1", "duplicate id in source", "deduplicated") in pop.issues


def test_ndjson_source_streams_and_reports_bad_lines(tmp_path: Path) -> None:
    lines = [orjson.dumps(r) for r in resources() if r["resourceType"] == "Patient"]
    lines.insert(1, b"{not json")
    lines.append(b'{"resourceType": "Encounter", "id": "wrong-file"}')
    lines.append(b"[1, 2]")
    (tmp_path / "Patient.ndjson").write_bytes(b"\n".join(lines) + b"\n\n")
    (tmp_path / "Practitioner.000.ndjson").write_bytes(
        orjson.dumps({"resourceType": "Practitioner", "id": "d1"}) + b"\n")
    (tmp_path / "notes.txt").write_text("ignored")
    pop = read_population(NdjsonSource(tmp_path))
    assert sorted(pop.patients) == ["Patient/p1", "Patient/p2"]
    assert list(pop.practitioners) == ["Practitioner/d1"]
    bad = sorted(i.problem for i in pop.issues)
    assert bad == ["invalid JSON line", "line is not a JSON object",
                   "resourceType 'Encounter' in a Patient file"]
    assert all("Patient.ndjson:" in i.resource for i in pop.issues)


def test_patient_filtered_read(tmp_path: Path) -> None:
    pop = read_population(MemorySource(resources()), patients=["Patient/p2"])
    assert list(pop.patients) == ["Patient/p2"]
    assert {e.id for e in pop.encounters} == {"Encounter/e3", "Encounter/e4"}
    assert pop.conditions == []
    assert "Practitioner/d1" in pop.practitioners  # clinicians are always read
