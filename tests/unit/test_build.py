"""The write-back builders: US Core CareTeam and CarePlan elements, PCP changes, closing plans,
RiskAssessment, the ATR attribution Group, Provenance, determinism and R4B validation."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhirpanel.config import Settings, WritebackSettings
from fhirpanel.domain.attribution import Assignment
from fhirpanel.domain.records import (
    NUCC,
    SNOMED,
    Code,
    PatientRecord,
    Population,
    PractitionerRecord,
    PractitionerRoleRecord,
)
from fhirpanel.domain.risk import RiskResult
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_templates, parse_writeback_codes
from fhirpanel.tables.writeback import CarePlanTemplates, NarrativeLabels, WritebackCodes
from fhirpanel.writeback.builders import (
    BuildError,
    ClinicianDirectory,
    ClinicianInfo,
    GroupMember,
    build_attribution_group,
    build_care_plan,
    build_care_team,
    build_provenance,
    build_risk_assessment,
    care_plan_called_for,
    element_id,
    validate_resource,
)
from fhirpanel.writeback.identity import PCP_PARTICIPANT_PREFIX, is_managed, same_content

AS_OF = date(2026, 11, 22)
LATER = date(2027, 2, 1)
V2_0360 = "http://terminology.hl7.org/CodeSystem/v2-0360"
CFG = WritebackSettings()


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def codes(tables: Tables) -> WritebackCodes:
    return tables.writeback.codes


@pytest.fixture(scope="module")
def templates(tables: Tables) -> CarePlanTemplates:
    return tables.writeback.templates


@pytest.fixture(scope="module")
def labels(tables: Tables) -> NarrativeLabels:
    return tables.writeback.labels


def assigned(
    patient: str = "Patient/p1",
    practitioner: str = "Practitioner/d1",
    role: str | None = "PractitionerRole/r1",
) -> Assignment:
    return Assignment(
        patient=patient,
        status="assigned",
        practitioner=practitioner,
        practitioner_role=role,
        rule="plurality",
        step="four-cut-18m",
    )


def risk_result(
    tier: int = 3, *, ccm: bool = True, patient: str = "Patient/p1", hcc: float | None = 1.734
) -> RiskResult:
    return RiskResult(
        patient=patient,
        charlson=3,
        charlson_categories=("chf", "diab"),
        hcc=hcc,
        hccs=("HCC226", "HCC38"),
        interactions=(),
        ed_visits=2,
        inpatient_stays=1,
        chronic_conditions=("diabetes", "heart_failure") if ccm else ("diabetes",),
        ccm_eligible=ccm,
        tier=tier,
        tier_rule="high: inpatient>=1",
        basis_conditions=("Condition/c2", "Condition/c1"),
    )


def physician() -> ClinicianInfo:
    return ClinicianInfo(
        practitioner="Practitioner/d1",
        role="PractitionerRole/r1",
        kind="physician",
        organization="Organization/o1",
    )


def as_stored(resource: dict[str, Any], rid: str = "srv-1", version: str = "1") -> dict[str, Any]:
    """What a server hands back: an id and server meta added."""
    stored = copy.deepcopy(resource)
    stored["id"] = rid
    stored["meta"] = {
        **stored.get("meta", {}),
        "versionId": version,
        "lastUpdated": "2026-11-22T10:00:00Z",
    }
    return stored


def codings(concepts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for concept in concepts for c in concept["coding"]}


# --------------------------------------------------------------------------- CareTeam


def test_care_team_has_every_us_core_element(codes: WritebackCodes) -> None:
    team = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert team is not None
    get_fhir_model_class("CareTeam").model_validate(team)
    assert team["status"] == "active"
    assert team["subject"] == {"reference": "Patient/p1"}
    assert ("http://loinc.org", "LA28865-6") in codings(team["category"])
    assert team["period"] == {"start": "2026-11-22"}
    assert team["managingOrganization"] == [{"reference": "Organization/o1"}]
    assert team["name"]
    [pcp] = team["participant"]
    assert codings(pcp["role"]) == {(SNOMED, "446050000")}
    assert pcp["member"] == {"reference": "PractitionerRole/r1"}
    assert pcp["period"] == {"start": "2026-11-22"}
    assert team["identifier"] == [{"system": CFG.identifier_system, "value": "careteam-pcp.p1"}]
    assert {"system": CFG.tag_system, "code": CFG.tag_code} in team["meta"]["tag"]
    assert "us-core-careteam" in team["meta"]["profile"][0]
    assert team["text"]["status"] == "generated"
    assert team["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert is_managed(team, CFG)


@pytest.mark.parametrize(
    ("qualification", "snomed"),
    [("MD", "446050000"), ("DO", "446050000"), ("NP", "224571005"), ("PA", "449161006")],
)
def test_role_follows_the_clinician_qualification(
    codes: WritebackCodes, qualification: str, snomed: str
) -> None:
    population = Population(
        practitioners={
            "Practitioner/d1": PractitionerRecord(
                id="Practitioner/d1", qualifications=(Code(V2_0360, qualification),)
            )
        }
    )
    info = ClinicianDirectory(population, codes).resolve(assigned(role=None))
    assert info is not None
    team = build_care_team(assigned(role=None), None, AS_OF, CFG, codes=codes, clinician=info)
    assert team is not None
    assert codings(team["participant"][0]["role"]) == {(SNOMED, snomed)}
    # No PractitionerRole known: the member is the Practitioner.
    assert team["participant"][0]["member"] == {"reference": "Practitioner/d1"}


@pytest.mark.parametrize(
    ("taxonomy", "kind"),
    [
        ("363LF0000X", "nurse_practitioner"),
        ("363A00000X", "physician_assistant"),
        ("207Q00000X", "physician"),
    ],
)
def test_kind_from_role_taxonomy_when_no_qualification(
    codes: WritebackCodes, taxonomy: str, kind: str
) -> None:
    population = Population(
        practitioners={"Practitioner/d1": PractitionerRecord(id="Practitioner/d1")},
        roles={
            "PractitionerRole/r1": PractitionerRoleRecord(
                id="PractitionerRole/r1",
                practitioner="Practitioner/d1",
                organization="Organization/o9",
                specialties=(Code(NUCC, taxonomy),),
            )
        },
    )
    info = ClinicianDirectory(population, codes).resolve(assigned(role=None))
    assert info == ClinicianInfo("Practitioner/d1", "PractitionerRole/r1", kind, "Organization/o9")


def test_member_is_the_practitioner_when_its_role_is_ambiguous(codes: WritebackCodes) -> None:
    roles = {
        f"PractitionerRole/r{n}": PractitionerRoleRecord(
            id=f"PractitionerRole/r{n}",
            practitioner="Practitioner/d1",
            organization=f"Organization/o{n}",
        )
        for n in (1, 2)
    }
    population = Population(
        patients={
            "Patient/p1": PatientRecord(id="Patient/p1", managing_organization="Organization/home")
        },
        practitioners={"Practitioner/d1": PractitionerRecord(id="Practitioner/d1")},
        roles=roles,
    )
    info = ClinicianDirectory(population, codes).resolve(assigned(role=None))
    assert info is not None
    assert info.member == "Practitioner/d1"
    assert info.kind == "physician"  # the configured default
    assert info.organization == "Organization/home"  # the patient's managing organisation


def test_unchanged_input_rebuilds_an_equal_team(codes: WritebackCodes) -> None:
    first = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert first is not None
    stored = as_stored(first)
    again = build_care_team(assigned(), stored, LATER, CFG, codes=codes, clinician=physician())
    assert again is not None
    assert same_content(again, stored)
    assert again["id"] == "srv-1"


def test_pcp_change_ends_the_old_participant_and_keeps_foreign_ones(codes: WritebackCodes) -> None:
    first = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert first is not None
    stored = as_stored(first)
    foreign = {"role": [{"text": "Care coordinator"}], "member": {"reference": "Practitioner/cc"}}
    stored["participant"].append(foreign)
    stored["note"] = [{"text": "kept"}]
    new_pcp = ClinicianInfo("Practitioner/d2", None, "nurse_practitioner", "Organization/o1")
    moved = build_care_team(
        assigned(practitioner="Practitioner/d2", role=None),
        stored,
        LATER,
        CFG,
        codes=codes,
        clinician=new_pcp,
    )
    assert moved is not None
    old, kept, new = moved["participant"]
    assert old["member"] == {"reference": "PractitionerRole/r1"}
    assert old["period"] == {"start": "2026-11-22", "end": "2027-02-01"}
    assert kept == foreign
    assert new["member"] == {"reference": "Practitioner/d2"}
    assert new["period"] == {"start": "2027-02-01"}
    assert codings(new["role"]) == {(SNOMED, "224571005")}
    assert new["id"] == f"{PCP_PARTICIPANT_PREFIX}2"
    assert moved["status"] == "active"
    assert moved["period"] == {"start": "2026-11-22"}
    assert moved["note"] == [{"text": "kept"}]


@pytest.mark.parametrize("status", ["unassigned", "excluded"])
def test_unassigned_or_excluded_patient_gets_an_inactive_team(
    codes: WritebackCodes, status: str
) -> None:
    leaving = Assignment(patient="Patient/p1", status=status)  # type: ignore[arg-type]
    assert build_care_team(leaving, None, LATER, CFG, codes=codes) is None
    first = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert first is not None
    closed = build_care_team(leaving, as_stored(first), LATER, CFG, codes=codes)
    assert closed is not None
    assert closed["status"] == "inactive"
    assert closed["period"] == {"start": "2026-11-22", "end": "2027-02-01"}
    assert closed["participant"][0]["period"]["end"] == "2027-02-01"
    # Closing again, later, changes nothing.
    stored = as_stored(closed, version="2")
    assert same_content(
        build_care_team(leaving, stored, date(2027, 6, 1), CFG, codes=codes) or {}, stored
    )


def test_a_status_a_person_recorded_ends_the_pcp_with_a_note_once(codes: WritebackCodes) -> None:
    first = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert first is not None
    moved = Assignment(patient="Patient/p1", status="excluded", reason="moved-away")
    closed = build_care_team(moved, as_stored(first), LATER, CFG, codes=codes)
    assert closed is not None
    assert closed["status"] == "inactive"
    assert closed["participant"][0]["period"]["end"] == "2027-02-01"
    assert closed["note"] == [
        {
            "authorString": CFG.author_name,
            "time": "2027-02-01",
            "text": "Primary-care participation ended on 2027-02-01: the patient moved away.",
        }
    ]
    # The next pass ends nothing more and adds no second note.
    stored = as_stored(closed, version="2")
    again = build_care_team(moved, stored, date(2027, 6, 1), CFG, codes=codes)
    assert same_content(again or {}, stored)
    # The record's own exclusions end the team without a note, as before.
    inactive = Assignment(patient="Patient/p1", status="excluded", reason="inactive")
    plain = build_care_team(inactive, as_stored(first), LATER, CFG, codes=codes)
    assert plain is not None and "note" not in plain


def build_all_bytes() -> bytes:
    """A CareTeam, a CarePlan and a Group built from scratch, as bytes (also run by
    test_builders_are_deterministic in fresh interpreters)."""
    tables = Tables.load(Settings.load(env={})).writeback
    codes, templates, labels = tables.codes, tables.templates, tables.labels
    team = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    plan = build_care_plan(
        assigned(),
        risk_result(),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    group = build_attribution_group(
        "Organization/o1",
        [
            GroupMember("Patient/p2", "Practitioner/d1"),
            GroupMember("Patient/p1", "Practitioner/d1"),
        ],
        None,
        AS_OF,
        CFG,
        codes=codes,
    )
    return orjson.dumps([team, plan, group])


def test_builders_are_deterministic(codes: WritebackCodes) -> None:
    # Across interpreters with different hash seeds (set and dict orders), not only twice in
    # one process where any ordering accident would repeat itself.
    script = (
        "import sys; from tests.unit.test_build import build_all_bytes; "
        "sys.stdout.buffer.write(build_all_bytes())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "1", "4242")
    }
    assert len(outputs) == 1
    assert outputs == {build_all_bytes()}
    reordered = build_attribution_group(
        "Organization/o1",
        [
            GroupMember("Patient/p1", "Practitioner/d1"),
            GroupMember("Patient/p2", "Practitioner/d1"),
        ],
        None,
        AS_OF,
        CFG,
        codes=codes,
    )
    assert orjson.dumps(reordered) == orjson.dumps(orjson.loads(build_all_bytes())[2])


def test_directory_does_not_depend_on_record_order(codes: WritebackCodes) -> None:
    roles = [
        PractitionerRoleRecord(
            id="PractitionerRole/r1",
            practitioner="Practitioner/d1",
            specialties=(Code(NUCC, "363L00000X"),),
        )
    ]
    forward = Population(roles={r.id: r for r in roles})
    backward = Population(roles={r.id: r for r in reversed(roles)})
    assert ClinicianDirectory(forward, codes).resolve(assigned(role=None)) == ClinicianDirectory(
        backward, codes
    ).resolve(assigned(role=None))


# --------------------------------------------------------------------------- CarePlan


def test_care_plan_has_every_us_core_element(
    codes: WritebackCodes, templates: CarePlanTemplates, labels: NarrativeLabels
) -> None:
    plan = build_care_plan(
        assigned(),
        risk_result(),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert plan is not None
    get_fhir_model_class("CarePlan").model_validate(plan)
    assert plan["status"] == "active"
    assert plan["intent"] == "plan"
    categories = codings(plan["category"])
    assert ("http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "assess-plan") in categories
    assert (SNOMED, "737427001") in categories
    assert plan["subject"] == {"reference": "Patient/p1"}
    assert plan["careTeam"] == [{"reference": "CareTeam/t1"}]
    assert plan["addresses"] == [{"reference": "Condition/c1"}, {"reference": "Condition/c2"}]
    assert plan["period"] == {"start": "2026-11-22"}
    assert plan["text"]["status"] == "generated"
    div = plan["text"]["div"]
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    for driver in (
        "tier 3",
        "High risk",
        "1.734",
        "HCC38",
        "Charlson Comorbidity Index 3",
        "Congestive heart failure",
        "Emergency visits: 2",
        "inpatient stays: 1",
        "Diabetes mellitus",
        "Chronic Care Management",
        "inpatient&gt;=1",
    ):
        assert driver in div
    tier3 = templates.for_tier(3)
    assert tier3 is not None
    assert len(plan["activity"]) == len(tier3.activities)
    for activity, template in zip(plan["activity"], tier3.activities, strict=True):
        detail = activity["detail"]
        assert detail["status"] == "not-started"
        assert detail["kind"] == template.kind
        assert codings([detail["code"]]) == {(template.code["system"], template.code["code"])}
        assert detail["description"] == template.text
    assert "us-core-careplan" in plan["meta"]["profile"][0]


def test_narratives_identify_no_patient(
    codes: WritebackCodes, templates: CarePlanTemplates, labels: NarrativeLabels
) -> None:
    # Only clinical drivers: no patient reference (and the inputs carry no name or birth date).
    fields = {f.name for f in dataclasses.fields(Assignment)} | {
        f.name for f in dataclasses.fields(RiskResult)
    }
    assert not fields & {"name", "birth_date", "birthDate", "address"}
    team = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    plan = build_care_plan(
        assigned(),
        risk_result(),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    ra = build_risk_assessment(
        assigned(), risk_result(), None, AS_OF, CFG, codes=codes, labels=labels
    )
    for resource in (team, plan, ra):
        assert resource is not None
        assert "Patient/" not in resource["text"]["div"]
        assert "p1" not in resource["text"]["div"]


@pytest.mark.parametrize(
    ("tier", "ccm", "expected"),
    [(1, True, False), (2, False, False), (2, True, True), (3, False, True), (4, False, True)],
)
def test_which_tiers_get_a_plan(tier: int, ccm: bool, expected: bool) -> None:
    assert care_plan_called_for(risk_result(tier, ccm=ccm), CFG) is expected
    assert not care_plan_called_for(
        risk_result(2, ccm=True), dataclasses.replace(CFG, care_plan_tier2_when_ccm=False)
    )


def test_tier2_plan_uses_the_tier2_template(
    codes: WritebackCodes, templates: CarePlanTemplates
) -> None:
    plan = build_care_plan(
        assigned(),
        risk_result(2),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        care_team_ref="CareTeam/t1",
    )
    tier2 = templates.for_tier(2)
    assert plan is not None and tier2 is not None
    assert [a["id"] for a in plan["activity"]] == [element_id(a) for a in tier2.activities]
    assert "Chronic Care Management eligibility" in plan["text"]["div"]
    assert (
        build_care_plan(assigned(), risk_result(1), None, AS_OF, CFG, templates, codes=codes)
        is None
    )


def test_plan_keeps_activity_progress_and_is_stable(
    codes: WritebackCodes, templates: CarePlanTemplates, labels: NarrativeLabels
) -> None:
    first = build_care_plan(
        assigned(),
        risk_result(3),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert first is not None
    stored = as_stored(first)
    stored["activity"][0]["detail"]["status"] = "in-progress"
    stored["activity"].append({"reference": {"reference": "ServiceRequest/x"}})
    again = build_care_plan(
        assigned(),
        risk_result(3),
        stored,
        LATER,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert again is not None and same_content(again, stored)
    # Up to tier 4: new activities, progress kept, the clinician's own activity kept last.
    up = build_care_plan(
        assigned(),
        risk_result(4),
        stored,
        LATER,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert up is not None
    assert up["activity"][0]["detail"]["status"] == "in-progress"
    assert up["activity"][-1] == {"reference": {"reference": "ServiceRequest/x"}}
    assert "fhirpanel-home-visit" in [a.get("id") for a in up["activity"]]
    assert up["period"] == {"start": "2026-11-22"}


def test_plan_completes_when_the_patient_leaves_the_tiers(
    codes: WritebackCodes, templates: CarePlanTemplates, labels: NarrativeLabels
) -> None:
    first = build_care_plan(
        assigned(),
        risk_result(3),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert first is not None
    stored = as_stored(first)
    stored["activity"][1]["detail"]["status"] = "completed"
    closed = build_care_plan(
        assigned(),
        risk_result(1, ccm=False),
        stored,
        LATER,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert closed is not None
    assert closed["status"] == "completed"
    assert closed["period"] == {"start": "2026-11-22", "end": "2027-02-01"}
    statuses = [a["detail"]["status"] for a in closed["activity"]]
    assert statuses[1] == "completed"
    assert set(statuses[:1] + statuses[2:]) == {"cancelled"}
    assert closed["careTeam"] == [{"reference": "CareTeam/t1"}]
    assert "completed on 2027-02-01" in closed["text"]["div"]
    # Never reopened by an unchanged input, never deleted.
    stored_closed = as_stored(closed, version="2")
    again = build_care_plan(
        assigned(),
        risk_result(1, ccm=False),
        stored_closed,
        date(2027, 5, 1),
        CFG,
        templates,
        codes=codes,
        labels=labels,
    )
    assert again is not None and same_content(again, stored_closed)


def test_plan_is_revoked_when_the_patient_is_excluded(
    codes: WritebackCodes, templates: CarePlanTemplates
) -> None:
    first = build_care_plan(
        assigned(),
        risk_result(4),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        care_team_ref="CareTeam/t1",
    )
    assert first is not None
    excluded = Assignment(patient="Patient/p1", status="excluded", reason="deceased")
    revoked = build_care_plan(
        excluded, risk_result(4), as_stored(first), LATER, CFG, templates, codes=codes
    )
    assert revoked is not None
    assert revoked["status"] == "revoked"
    assert revoked["period"]["end"] == "2027-02-01"
    assert (
        build_care_plan(excluded, risk_result(4), None, LATER, CFG, templates, codes=codes) is None
    )


# --------------------------------------------------------------------------- servers that drop ids


def drop_element_ids(value: Any, top: bool = True) -> Any:
    """What a server that keeps no element ids stores: every nested `id` gone."""
    if isinstance(value, dict):
        return {k: drop_element_ids(v, False) for k, v in value.items() if top or k != "id"}
    if isinstance(value, list):
        return [drop_element_ids(v, False) for v in value]
    return value


def test_team_on_a_server_that_drops_element_ids_does_not_grow(codes: WritebackCodes) -> None:
    stored = None
    for run in range(3):
        problems: list[str] = []
        team = build_care_team(
            assigned(), stored, AS_OF, CFG, codes=codes, clinician=physician(), problems=problems
        )
        assert team is not None and problems == []
        if stored is not None:
            assert same_content(team, stored), f"run {run + 1} changed the team"
        stored = drop_element_ids(as_stored(team, version=str(run + 1)))
    assert stored is not None and len(stored["participant"]) == 1
    # A PCP change still ends ours (recognised by content) and adds the new one.
    new_pcp = ClinicianInfo("Practitioner/d2", None, "nurse_practitioner", "Organization/o1")
    moved = build_care_team(
        assigned(practitioner="Practitioner/d2", role=None),
        stored,
        LATER,
        CFG,
        codes=codes,
        clinician=new_pcp,
    )
    assert moved is not None
    old, new = moved["participant"]
    assert "id" not in old and old["period"] == {"start": "2026-11-22", "end": "2027-02-01"}
    assert new["member"] == {"reference": "Practitioner/d2"}


def test_team_growth_is_reported_not_repeated(codes: WritebackCodes) -> None:
    first = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert first is not None
    # Two copies already there (the old behaviour on an id-dropping server): neither is ended,
    # no third is added, and the problem is reported.
    grown = drop_element_ids(as_stored(first))
    grown["participant"].append(copy.deepcopy(grown["participant"][0]))
    problems: list[str] = []
    team = build_care_team(
        assigned(), grown, LATER, CFG, codes=codes, clinician=physician(), problems=problems
    )
    assert team is not None and team["participant"] == grown["participant"]
    assert len(problems) == 1 and "2 open copies" in problems[0]
    # A server that rewrites our participant (an absolute reference, a display): not ours by
    # content any more, but another would be a duplicate.
    rewritten = drop_element_ids(as_stored(first))
    participant = rewritten["participant"][0]
    participant["member"] = {
        "reference": "https://ehr.example.org/fhir/PractitionerRole/r1",
        "display": "Dr One",
    }
    problems = []
    team = build_care_team(
        assigned(), rewritten, LATER, CFG, codes=codes, clinician=physician(), problems=problems
    )
    assert team is not None and len(team["participant"]) == 1
    assert len(problems) == 1 and "looks like fhirpanel's own" in problems[0]


def test_ids_kept_means_only_ids_count(codes: WritebackCodes) -> None:
    """On a server that keeps element ids, an id-less participant with a PCP role is someone
    else's (an EHR user's): never ended, and ours is kept alongside."""
    first = build_care_team(assigned(), None, AS_OF, CFG, codes=codes, clinician=physician())
    assert first is not None
    stored = as_stored(first)
    theirs = {
        "role": [{"coding": [dict(codes.role_for("physician"))]}],
        "member": {"reference": "Practitioner/d9"},
        "period": {"start": "2026-01-01"},
    }
    stored["participant"].append(theirs)
    new_pcp = ClinicianInfo("Practitioner/d2", None, "physician", "Organization/o1")
    moved = build_care_team(
        assigned(practitioner="Practitioner/d2", role=None),
        stored,
        LATER,
        CFG,
        codes=codes,
        clinician=new_pcp,
    )
    assert moved is not None
    assert moved["participant"][1] == theirs
    assert moved["participant"][2]["id"] == f"{PCP_PARTICIPANT_PREFIX}2"


def test_plan_on_a_server_that_drops_element_ids_does_not_grow(
    codes: WritebackCodes, templates: CarePlanTemplates, labels: NarrativeLabels
) -> None:
    stored = None
    for run in range(3):
        problems: list[str] = []
        plan = build_care_plan(
            assigned(),
            risk_result(3),
            stored,
            AS_OF,
            CFG,
            templates,
            codes=codes,
            labels=labels,
            care_team_ref="CareTeam/t1",
            problems=problems,
        )
        assert plan is not None and problems == []
        if stored is not None:
            assert same_content(plan, stored), f"run {run + 1} changed the plan"
        stored = drop_element_ids(as_stored(plan, version=str(run + 1)))
    assert stored is not None
    tier3 = templates.for_tier(3)
    assert tier3 is not None and len(stored["activity"]) == len(tier3.activities)
    # Progress is kept, the tier change adds exactly the new activity, closing cancels ours.
    stored["activity"][0]["detail"]["status"] = "in-progress"
    up = build_care_plan(
        assigned(),
        risk_result(4),
        stored,
        LATER,
        CFG,
        templates,
        codes=codes,
        labels=labels,
        care_team_ref="CareTeam/t1",
    )
    assert up is not None
    tier4 = templates.for_tier(4)
    assert tier4 is not None and len(up["activity"]) == len(tier4.activities)
    assert up["activity"][0]["detail"]["status"] == "in-progress"
    assert [a.get("id") for a in up["activity"]].count(None) == len(tier3.activities)
    closed = build_care_plan(
        assigned(),
        risk_result(1, ccm=False),
        stored,
        LATER,
        CFG,
        templates,
        codes=codes,
        labels=labels,
    )
    assert closed is not None
    assert [a["detail"]["status"] for a in closed["activity"]][1:] == ["cancelled"] * (
        len(tier3.activities) - 1
    )


def test_plan_growth_is_reported_not_repeated(
    codes: WritebackCodes, templates: CarePlanTemplates
) -> None:
    first = build_care_plan(
        assigned(),
        risk_result(3),
        None,
        AS_OF,
        CFG,
        templates,
        codes=codes,
        care_team_ref="CareTeam/t1",
    )
    assert first is not None
    grown = drop_element_ids(as_stored(first))
    grown["activity"] = grown["activity"] + copy.deepcopy(grown["activity"])  # 1 -> 2
    problems: list[str] = []
    plan = build_care_plan(
        assigned(),
        risk_result(3),
        grown,
        LATER,
        CFG,
        templates,
        codes=codes,
        care_team_ref="CareTeam/t1",
        problems=problems,
    )
    assert plan is not None and same_content(plan, grown)
    assert len(problems) == len(first["activity"])
    assert all("2 copies" in p for p in problems)
    # An activity the server rewrote (its code lost a coding field): not another one.
    rewritten = drop_element_ids(as_stored(first))
    rewritten["activity"][0]["detail"]["code"]["coding"][0].pop("system")
    problems = []
    plan = build_care_plan(
        assigned(),
        risk_result(3),
        rewritten,
        LATER,
        CFG,
        templates,
        codes=codes,
        care_team_ref="CareTeam/t1",
        problems=problems,
    )
    assert plan is not None and len(plan["activity"]) == len(first["activity"])
    assert len(problems) == 1 and "looks like fhirpanel's" in problems[0]


# --------------------------------------------------------------------------- RiskAssessment


def test_risk_assessment(codes: WritebackCodes, labels: NarrativeLabels) -> None:
    ra = build_risk_assessment(
        assigned(), risk_result(3), None, AS_OF, CFG, codes=codes, labels=labels
    )
    assert ra is not None
    assert ra["status"] == "final"
    assert ra["occurrenceDateTime"] == "2026-11-22"
    assert ra["basis"] == [{"reference": "Condition/c1"}, {"reference": "Condition/c2"}]
    [prediction] = ra["prediction"]
    assert codings([prediction["qualitativeRisk"]]) == {
        ("http://terminology.hl7.org/CodeSystem/risk-probability", "high")
    }
    assert prediction["relativeRisk"] == 1.734
    assert "tier 3" in prediction["outcome"]["text"]
    assert "Charlson Comorbidity Index 3" in prediction["rationale"]
    assert ra["method"]["text"]
    stored = as_stored(ra)
    same = build_risk_assessment(
        assigned(), risk_result(3), stored, LATER, CFG, codes=codes, labels=labels
    )
    assert same is not None and same_content(same, stored)  # keeps its date
    changed = build_risk_assessment(
        assigned(), risk_result(2), stored, LATER, CFG, codes=codes, labels=labels
    )
    assert changed is not None
    assert changed["status"] == "amended"
    assert changed["occurrenceDateTime"] == "2027-02-01"
    assert changed["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == "moderate"


# --------------------------------------------------------------------------- Group


def member_changes(group: dict[str, Any]) -> dict[str, str]:
    return {m["entity"]["reference"]: m["extension"][1]["valueCode"] for m in group["member"]}


def test_attribution_group_after_the_atr_list(codes: WritebackCodes) -> None:
    members = [
        GroupMember("Patient/p1", "PractitionerRole/r1"),
        GroupMember("Patient/p2", "PractitionerRole/r1"),
        GroupMember("Patient/p3", "Practitioner/d3"),
    ]
    group = build_attribution_group("Organization/o1", members, None, AS_OF, CFG, codes=codes)
    assert group is not None
    assert (group["type"], group["actual"], group["quantity"]) == ("person", True, 3)
    assert group["managingEntity"] == {"reference": "Organization/o1"}
    first = group["member"][0]
    assert first["extension"][0] == {
        "url": "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-attributedProvider",
        "valueReference": {"reference": "PractitionerRole/r1"},
    }
    assert first["extension"][1]["url"] == (
        "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-changeType"
    )
    assert set(member_changes(group).values()) == {"new"}
    stored = as_stored(group)
    unchanged = build_attribution_group("Organization/o1", members, stored, LATER, CFG, codes=codes)
    assert unchanged is not None and same_content(unchanged, stored)
    moved = [
        GroupMember("Patient/p1", "PractitionerRole/r1"),
        GroupMember("Patient/p2", "Practitioner/d9"),
        GroupMember("Patient/p4", "Practitioner/d3"),
    ]
    changed = build_attribution_group("Organization/o1", moved, stored, LATER, CFG, codes=codes)
    assert changed is not None
    assert member_changes(changed) == {
        "Patient/p1": "nochange",
        "Patient/p2": "changed",
        "Patient/p3": "dropped",
        "Patient/p4": "new",
    }
    dropped = next(m for m in changed["member"] if m["entity"]["reference"] == "Patient/p3")
    assert dropped["inactive"] is True
    assert dropped["period"] == {"start": "2026-11-22", "end": "2027-02-01"}
    assert changed["quantity"] == 3


# --------------------------------------------------------------------------- Provenance


def test_provenance(codes: WritebackCodes) -> None:
    recorded = datetime(2026, 11, 22, 12, 30, tzinfo=UTC)
    prov = build_provenance(
        ["CareTeam/b/_history/1", "CareTeam/a/_history/2"],
        recorded,
        CFG,
        codes=codes,
        activity="CREATE",
    )
    assert prov["target"] == [
        {"reference": "CareTeam/a/_history/2"},
        {"reference": "CareTeam/b/_history/1"},
    ]
    assert prov["recorded"] == "2026-11-22T12:30:00.000Z"
    assert prov["agent"][0]["who"] == {"type": "Device", "display": "fhirpanel"}
    assert prov["activity"]["coding"][0]["code"] == "CREATE"
    assert prov["reason"][0]["coding"][0]["code"] == "TREAT"
    with pytest.raises(BuildError, match="timezone"):
        build_provenance(
            ["CareTeam/a"], datetime(2026, 11, 22), CFG, codes=codes, activity="CREATE"
        )


# --------------------------------------------------------------------------- errors


def test_invalid_resource_is_a_build_error_naming_it() -> None:
    bad = {
        "resourceType": "CareTeam",
        "identifier": [{"value": "careteam-pcp.p9"}],
        "period": {"start": "2026-13-45"},
    }
    with pytest.raises(BuildError, match=r"CareTeam careteam-pcp\.p9"):
        validate_resource(bad)


def test_mapping_files_are_validated() -> None:
    broken = copy.deepcopy(load_mapping_ref("writeback_codes"))
    broken["roles"]["physician"]["code"] = "446050001"  # bad SNOMED check digit
    with pytest.raises(MappingError, match=r"^writeback_codes: roles\.physician: .*check digit"):
        parse_writeback_codes(broken)
    broken = copy.deepcopy(load_mapping_ref("writeback_codes"))
    broken["care_plan"]["categories"].reverse()
    with pytest.raises(MappingError, match="first category must be US Core assess-plan"):
        parse_writeback_codes(broken)
    plans = copy.deepcopy(load_mapping_ref("careplan_templates"))
    plans["tiers"]["3"]["activities"][0]["kind"] = "Procedure"
    with pytest.raises(
        MappingError,
        match=r"tiers\.3\.activities\[1\]\.kind: Input should be "
        r"'Appointment', ",
    ):
        parse_templates(plans)
    plans = copy.deepcopy(load_mapping_ref("careplan_templates"))
    plans["tiers"]["3"]["activities"][1]["key"] = "care-management"
    with pytest.raises(MappingError, match=r"tiers\.3\.activities: activity keys must be unique"):
        parse_templates(plans)
    templates = parse_templates(load_mapping_ref("careplan_templates"))
    templates.require({2, 3, 4})
    with pytest.raises(MappingError, match=r"tier\(s\) \[5\]"):
        templates.require({3, 5})
