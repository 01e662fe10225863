"""FHIR JSON to records: field mapping, clinician choice, dates, and bad input as issues."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.domain.records import (
    ConditionRecord,
    EncounterRecord,
    Issue,
    PatientRecord,
    PractitionerRecord,
    PractitionerRoleRecord,
)
from fhirpanel.fhir.parse import parse_instant, parse_resource, reference_id

HAPI = Path(__file__).resolve().parents[2] / "sandbox_fixtures" / "hapi"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PART = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def entries(name: str) -> list[dict[str, Any]]:
    bundle = json.loads((HAPI / name).read_text())
    return [e["resource"] for e in bundle.get("entry", [])]


def encounter(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": ACT, "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-03-01T09:00:00Z"},
    }
    base.update(fields)
    return base


def participant(ref: str, *types: str) -> dict[str, Any]:
    part: dict[str, Any] = {"individual": {"reference": ref}}
    if types:
        part["type"] = [{"coding": [{"system": PART, "code": t}]} for t in types]
    return part


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"reference": "Patient/123"}, "Patient/123"),
        ({"reference": "http://h/fhir/Patient/123/_history/4"}, "Patient/123"),
        ({"reference": "https://hapi.fhir.org/baseR4/Practitioner/abc-1"}, "Practitioner/abc-1"),
        ("Organization/o1", "Organization/o1"),
        ({"reference": "#contained"}, None),
        ({"reference": "urn:uuid:0b0c"}, None),
        ({"reference": "Patient?identifier=x|1"}, None),
        ({"display": "no reference"}, None),
        ({"reference": "123"}, None),
    ],
)
def test_reference_id(value: Any, expected: str | None) -> None:
    assert reference_id(value) == expected


def test_reference_id_checks_the_type() -> None:
    assert reference_id({"reference": "Group/g"}, "Patient") is None


def test_instants_with_local_offsets_become_utc() -> None:
    # HAPI sends the server's local offset (searchset-encounter-3): same instant as Z.
    assert parse_instant("2020-03-01T07:00:00-05:00") == datetime(2020, 3, 1, 12, tzinfo=UTC)
    assert parse_instant("2020-03-01") == datetime(2020, 3, 1, tzinfo=UTC)


def test_patient_fields() -> None:
    rec = parse_resource(
        {
            "resourceType": "Patient",
            "id": "p1",
            "gender": "female",
            "birthDate": "1954-06",
            "deceasedDateTime": "2026-01-02T10:00:00Z",
            "active": True,
            "link": [{"type": "replaced-by", "other": {"reference": "Patient/p2"}}],
            "generalPractitioner": [{"reference": "PractitionerRole/r1"}, {"display": "x"}],
            "managingOrganization": {"reference": "Organization/o1"},
        }
    )
    assert rec == PatientRecord(
        id="Patient/p1",
        active=True,
        birth_date=date(1954, 6, 1),
        sex="female",
        deceased=True,
        deceased_date=date(2026, 1, 2),
        replaced_by="Patient/p2",
        general_practitioners=("PractitionerRole/r1",),
        managing_organization="Organization/o1",
    )


def test_absent_active_means_active_and_false_means_inactive() -> None:
    active = parse_resource({"resourceType": "Patient", "id": "a"})
    inactive = parse_resource({"resourceType": "Patient", "id": "b", "active": False})
    assert isinstance(active, PatientRecord) and active.active
    assert isinstance(inactive, PatientRecord) and not inactive.active


def test_encounter_prefers_primary_performer_over_attender_and_order() -> None:
    rec = parse_resource(
        encounter(
            participant=[
                participant("Practitioner/att", "ATND"),
                participant("Practitioner/second", "SPRF"),
                participant("Practitioner/prim", "PPRF"),
            ]
        )
    )
    assert isinstance(rec, EncounterRecord)
    assert rec.practitioner == "Practitioner/prim"


def test_encounter_falls_back_to_attender_then_first_individual() -> None:
    att = parse_resource(
        encounter(
            participant=[participant("Practitioner/first"), participant("Practitioner/att", "ATND")]
        )
    )
    first = parse_resource(
        encounter(
            participant=[
                {"type": [{"text": "interpreter"}]},
                participant("RelatedPerson/mum"),
                participant("Practitioner/first", "SPRF"),
            ]
        )
    )
    assert isinstance(att, EncounterRecord) and att.practitioner == "Practitioner/att"
    assert isinstance(first, EncounterRecord) and first.practitioner == "Practitioner/first"


def test_encounter_keeps_a_practitioner_role_for_later_resolution() -> None:
    rec = parse_resource(encounter(participant=[participant("PractitionerRole/r9", "PPRF")]))
    assert isinstance(rec, EncounterRecord)
    assert (rec.practitioner, rec.practitioner_role) == (None, "PractitionerRole/r9")


def test_encounter_codes_from_type_service_type_and_reason() -> None:
    rec = parse_resource(
        encounter(
            type=[
                {
                    "coding": [{"system": "http://snomed.info/sct", "code": "185349003"}],
                    "text": "Office Visit",
                }
            ],
            serviceType={"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99396"}]},
            reasonCode=[{"coding": [{"system": "http://snomed.info/sct", "code": "162673000"}]}],
        )
    )
    assert isinstance(rec, EncounterRecord)
    assert [c.code for c in rec.codes] == ["185349003", "99396", "162673000"]
    assert "office visit" in rec.type_texts


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"subject": None}, "no subject"),
        ({"subject": {"reference": "Group/g1"}}, "subject is not a Patient reference"),
        ({"period": {"start": "2025-13-45"}}, "bad dateTime '2025-13-45'"),
        ({"period": {}}, "no period.start"),
        ({"id": None}, "no id"),
        ({"period": "2026-01-01"}, "no period.start"),
    ],
)
def test_malformed_encounters_become_issues(change: dict[str, Any], problem: str) -> None:
    res = encounter()
    for key, value in change.items():
        if value is None:
            res.pop(key)
        else:
            res[key] = value
    out = parse_resource(res)
    assert isinstance(out, Issue)
    assert out.problem == problem
    assert out.action == "skipped"


def test_wrong_type_and_non_objects_are_issues() -> None:
    assert parse_resource([1, 2], where="Encounter.ndjson:3") == Issue(
        "Encounter.ndjson:3", "not a JSON object"
    )
    out = parse_resource({"resourceType": "Observation", "id": "o"}, expected_type="Encounter")
    assert isinstance(out, Issue) and out.resource == "Observation/o"


def test_condition_fields() -> None:
    rec = parse_resource(
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "code": {
                "coding": [
                    {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"},
                    {"system": "http://snomed.info/sct", "code": "44054006"},
                ],
                "text": "Diabetes",
            },
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "verificationStatus": {"coding": [{"code": "confirmed"}]},
            "category": [{"coding": [{"code": "problem-list-item"}]}],
            "onsetDateTime": "2019-05-04T00:00:00-04:00",
            "encounter": {"reference": "Encounter/e1"},
        }
    )
    assert isinstance(rec, ConditionRecord)
    assert [c.code for c in rec.codes] == ["E11.9", "44054006"]
    assert rec.clinical_status == "active" and rec.verification_status == "confirmed"
    assert rec.categories == ("problem-list-item",)
    assert rec.onset == date(2019, 5, 4) and rec.encounter == "Encounter/e1"


def test_practitioner_role_texts_for_label_matching() -> None:
    rec = parse_resource(
        {
            "resourceType": "PractitionerRole",
            "id": "r1",
            "practitioner": {"reference": "Practitioner/d1"},
            "specialty": [{"text": "Family Medicine"}],
            "code": [
                {
                    "coding": [
                        {
                            "system": "http://nucc.org/provider-taxonomy",
                            "code": "207Q00000X",
                            "display": "Family Medicine Physician",
                        }
                    ]
                }
            ],
        }
    )
    assert isinstance(rec, PractitionerRoleRecord)
    assert rec.practitioner == "Practitioner/d1"
    assert "family medicine" in rec.texts and "family medicine physician" in rec.texts


# ---------------------------------------------------------------- recorded HAPI responses


def test_recorded_hapi_encounters_parse() -> None:
    synthea = [parse_resource(r) for r in entries("searchset-encounter-4.json")]
    assert all(isinstance(r, EncounterRecord) for r in synthea)
    first = synthea[0]
    assert isinstance(first, EncounterRecord)
    assert first.class_code == "AMB"
    assert first.practitioner == "Practitioner/22d56828-df1d-4739-82b9-45a3757b3a5f"
    assert first.patient == "Patient/b8c71d92-a06b-4044-b053-64664e82f851"

    public = [parse_resource(r) for r in entries("searchset-encounter-1.json")]
    enc = public[0]
    assert isinstance(enc, EncounterRecord)
    assert enc.type_texts == ("primary care visit",)  # text-only type on hapi.fhir.org
    assert enc.practitioner == "Practitioner/8728213"


def test_recorded_hapi_local_offsets_parse() -> None:
    recs = [parse_resource(r) for r in entries("searchset-encounter-3.json")]
    assert all(isinstance(r, EncounterRecord) for r in recs)


def test_recorded_hapi_conditions_and_patients_parse() -> None:
    conds = [parse_resource(r) for r in entries("searchset-condition-2.json")]
    assert [c.clinical_status for c in conds if isinstance(c, ConditionRecord)] == [
        "resolved",
        "active",
        "resolved",
        "resolved",
        "active",
    ]
    pats = [parse_resource(r) for r in entries("searchset-patient-1.json")]
    assert all(isinstance(p, PatientRecord) for p in pats)


def test_recorded_hapi_practitioners_parse() -> None:
    roles = [parse_resource(r) for r in entries("searchset-practitionerrole-1.json")]
    assert len(roles) == 10
    assert all(isinstance(r, PractitionerRoleRecord) for r in roles)
    docs = [parse_resource(r) for r in entries("searchset-practitioner-1.json")]
    assert isinstance(docs[0], PractitionerRecord) and docs[0].npi


@pytest.mark.parametrize(
    ("resource", "problem"),
    [
        # A valid dateTime whose UTC value falls outside the calendar: OverflowError inside.
        (encounter(period={"start": "0001-01-01T00:00:00+01:00"}), "bad dateTime"),
        (encounter(period={"start": "9999-12-31T23:00:00-05:00"}), "bad dateTime"),
        ({"resourceType": "Patient", "id": "p1", "birthDate": "0000"}, "bad date '0000'"),
        ({"resourceType": "Patient", "id": "p1", "birthDate": ["x"] * 500}, "bad date ['x', "),
        ({"resourceType": "Patient", "id": "p1", "link": 7}, "malformed: TypeError"),
        (
            {"resourceType": "Practitioner", "id": "d1", "name": [{"given": 5}]},
            "malformed: TypeError",
        ),
    ],
)
def test_out_of_range_and_wrongly_shaped_values_are_issues(
    resource: dict[str, Any], problem: str
) -> None:
    out = parse_resource(resource)
    assert isinstance(out, Issue)
    assert out.problem.startswith(problem) and len(out.problem) < 100


def test_a_huge_resource_type_is_cut_short_in_the_issue() -> None:
    out = parse_resource({"resourceType": "X" * 10_000, "id": "a"}, expected_type="Patient")
    assert isinstance(out, Issue)
    assert out.problem.startswith("expected Patient, got 'XXX") and len(out.problem) < 100
