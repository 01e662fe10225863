"""Ingest through the in-memory and NDJSON sources: roles resolved, bad input recorded."""

from __future__ import annotations

import gzip
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.domain.records import Issue
from fhirpanel.errors import SourceError
from fhirpanel.fhir.source import MemorySource, NdjsonSource
from fhirpanel.ingest import (
    ENCOUNTER_IN_FUTURE,
    add_future_date_issues,
    future_date_issues,
    read_population,
)


def resources() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "gender": "male"},
        {"resourceType": "Patient", "id": "p2", "gender": "female"},
        {"resourceType": "Practitioner", "id": "d1"},
        {
            "resourceType": "PractitionerRole",
            "id": "r1",
            "practitioner": {"reference": "Practitioner/d1"},
        },
        {"resourceType": "PractitionerRole", "id": "r-empty"},
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "subject": {"reference": "Patient/p1"},
            "period": {"start": "2026-01-05"},
            "participant": [{"individual": {"reference": "PractitionerRole/r1"}}],
        },
        {
            "resourceType": "Encounter",
            "id": "e2",
            "status": "finished",
            "subject": {"reference": "Patient/ghost"},
            "period": {"start": "2026-01-05"},
        },
        {
            "resourceType": "Encounter",
            "id": "e3",
            "status": "finished",
            "subject": {"reference": "Patient/p2"},
            "period": {"start": "2026-01-06"},
        },
        {
            "resourceType": "Encounter",
            "id": "e4",
            "status": "finished",
            "subject": {"reference": "Patient/p2"},
            "period": {"start": "2026-01-07"},
            "participant": [{"individual": {"reference": "PractitionerRole/r-empty"}}],
        },
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        },
        {
            "resourceType": "Condition",
            "id": "c2",
            "subject": {"reference": "Patient/p1"},
            "code": {"text": "uncoded"},
        },
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
    old = {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "male",
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
    }
    new = {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "meta": {"lastUpdated": "2026-02-01T00:00:00Z"},
    }
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
        orjson.dumps({"resourceType": "Practitioner", "id": "d1"}) + b"\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "Encounter.ndjson").write_bytes(b"")  # present, and empty
    pop = read_population(NdjsonSource(tmp_path))
    assert sorted(pop.patients) == ["Patient/p1", "Patient/p2"]
    assert list(pop.practitioners) == ["Practitioner/d1"]
    bad = sorted(i.problem for i in pop.issues)
    assert bad == [
        "invalid JSON line",
        "line is not a JSON object",
        "resourceType 'Encounter' in a Patient file",
    ]
    assert all("Patient.ndjson:" in i.resource for i in pop.issues)


def test_patient_filtered_read(tmp_path: Path) -> None:
    pop = read_population(MemorySource(resources()), patients=["Patient/p2"])
    assert list(pop.patients) == ["Patient/p2"]
    assert {e.id for e in pop.encounters} == {"Encounter/e3", "Encounter/e4"}
    assert pop.conditions == []
    assert "Practitioner/d1" in pop.practitioners  # clinicians are always read


# ---------------------------------------------------------------- NDJSON file names and reads


def ndjson(*resources: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


P1 = {"resourceType": "Patient", "id": "p1"}
E1 = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2026-01-05"},
}


@pytest.mark.parametrize(
    ("patient_name", "encounter_name"),
    [
        ("patient.ndjson", "encounter.ndjson"),
        ("PATIENT.ndjson.gz", "ENCOUNTER.NDJSON"),
        ("1.patient.ndjson", "Encounter.0001.ndjson.GZ"),
    ],
)
def test_ndjson_file_names_match_in_any_case_and_gzipped(
    tmp_path: Path, patient_name: str, encounter_name: str
) -> None:
    for name, body in ((patient_name, ndjson(P1)), (encounter_name, ndjson(E1))):
        (tmp_path / name).write_bytes(gzip.compress(body) if name.lower().endswith(".gz") else body)
    pop = read_population(NdjsonSource(tmp_path))
    assert list(pop.patients) == ["Patient/p1"]
    assert [e.id for e in pop.encounters] == ["Encounter/e1"]
    assert [i.problem for i in pop.issues] == [
        "no clinician participant; not counted for attribution"
    ]  # read, not a line issue


@pytest.mark.parametrize(
    ("present", "missing"), [("Encounter", "Patient"), ("Patient", "Encounter")]
)
def test_a_folder_without_patient_or_encounter_files_is_refused(
    tmp_path: Path, present: str, missing: str
) -> None:
    (tmp_path / f"{present}.ndjson").write_bytes(ndjson(P1 if present == "Patient" else E1))
    (tmp_path / "Practitioner.ndjson").write_bytes(b"")
    with pytest.raises(SourceError) as caught:
        read_population(NdjsonSource(tmp_path))
    assert str(caught.value) == (
        f"ndjson:{tmp_path} has no {missing} file (looked for {missing}*.ndjson[.gz], any case)"
    )
    # Types a run can do without stay optional, and `require` can be narrowed.
    assert list(NdjsonSource(tmp_path).read("Condition")) == []
    assert list(NdjsonSource(tmp_path, require=()).read(missing)) == []


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_file_is_a_failed_read_not_a_short_one(tmp_path: Path, damage: str) -> None:
    body = gzip.compress(ndjson(*({**P1, "id": f"p{i}"} for i in range(2000))))
    if damage == "truncated":
        body = body[: len(body) // 2]
    else:
        body = body[:20] + bytes(b ^ 0x5A for b in body[20:60]) + body[60:]
    (tmp_path / "Patient.ndjson.gz").write_bytes(body)
    (tmp_path / "Encounter.ndjson").write_bytes(ndjson(E1))
    with pytest.raises(SourceError) as caught:
        read_population(NdjsonSource(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"ndjson:{tmp_path}: Patient.ndjson.gz could not be read to its end")
    assert "truncated or corrupt" in message and "\n" not in message


# ---------------------------------------------------------------- dates after the as-of date


def test_future_birth_dates_and_encounters_are_recorded_and_kept() -> None:
    as_of = date(2026, 11, 22)
    pop = read_population(
        MemorySource(
            [
                {"resourceType": "Patient", "id": "born-later", "birthDate": "2027-01-01"},
                {"resourceType": "Patient", "id": "born-today", "birthDate": "2026-11-22"},
                {
                    **E1,
                    "id": "e-today",
                    "subject": {"reference": "Patient/born-today"},
                    "period": {"start": "2026-11-22T18:00:00-05:00"},
                },  # 23:00Z: still the as-of day
                {
                    **E1,
                    "id": "e-late",
                    "subject": {"reference": "Patient/born-today"},
                    "period": {"start": "2026-11-22T20:00:00-05:00"},
                },  # 01:00Z the day after
                {
                    **E1,
                    "id": "e-booked",
                    "status": "planned",
                    "subject": {"reference": "Patient/born-today"},
                    "period": {"start": "2026-12-01"},
                },
                {
                    **E1,
                    "id": "e-called-off",
                    "status": "cancelled",
                    "subject": {"reference": "Patient/born-today"},
                    "period": {"start": "2026-12-02"},
                },
            ]
        )
    )
    assert future_date_issues(pop, as_of) == [
        Issue("Patient/born-later", "birth date after the as-of date", "recorded"),
        Issue("Encounter/e-late", ENCOUNTER_IN_FUTURE, "recorded"),
    ]
    before = len(pop.issues)
    add_future_date_issues(pop, as_of)
    add_future_date_issues(pop, as_of)  # once, however often it is called
    assert len(pop.issues) == before + 2
    assert pop.issues == sorted(pop.issues, key=lambda i: (i.resource, i.problem))
    assert "Patient/born-later" in pop.patients  # recorded, not skipped
    assert "Encounter/e-late" in {e.id for e in pop.encounters}
    assert future_date_issues(pop, date(2027, 6, 1)) == []
