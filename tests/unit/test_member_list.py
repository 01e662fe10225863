"""The payer's member attribution list (issue 18, item 1): each form read (ATR Group JSON, a
server Group, CSV), what is left out as an issue, and the list feeding case study 1's
`risk-product` step through `analyse` on hand-built patients."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fhirpanel.config import Settings
from fhirpanel.domain.members import MemberList
from fhirpanel.domain.records import Population
from fhirpanel.errors import ConfigError, NotFoundError, SourceError
from fhirpanel.fhir.member_list import (
    ATTRIBUTED_PROVIDER,
    CHANGE_TYPE,
    MemberListSpec,
    members_from_csv,
    members_from_group,
    parse_member_list_spec,
    read_member_list,
)
from fhirpanel.report import build_report, render_summary
from fhirpanel.run import analyse, load_member_list
from fhirpanel.tables import MethodTables, Tables
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_pipeline
from tests.unit.test_attribution import doc, pid
from tests.unit.test_pipelines import AS_OF, practice

LABEL = "atr.json"


def member(patient: str, clinician: str | None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"entity": {"reference": patient}, **extra}
    extensions = list(extra.pop("extension", []))
    if clinician is not None:
        extensions.append({"url": ATTRIBUTED_PROVIDER, "valueReference": {"reference": clinician}})
    entry["extension"] = extensions
    return entry


def change(code: str) -> dict[str, Any]:
    return {"url": CHANGE_TYPE, "valueCode": code}


def group(*members: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": "atr",
        "type": "person",
        "member": list(members),
        **extra,
    }


def problems(found: MemberList) -> dict[str, str]:
    return {i.resource: i.problem for i in found.issues}


# --------------------------------------------------------------------------- ATR Group JSON


def test_an_atr_group_gives_each_active_member_and_its_attributed_clinician() -> None:
    found = members_from_group(
        group(
            member("Patient/p1", "Practitioner/d1"),
            member("https://ehr.example/fhir/Patient/p2", "PractitionerRole/r3"),
            member("Patient/p3", "Practitioner/d2", extension=[change("nochange")]),
            member("Patient/p4", "Practitioner/d2", extension=[change("new")]),
            member("Patient/p5", "Practitioner/d1", period={"start": "2026-01-01"}),
        ),
        LABEL,
        AS_OF,
    )
    assert dict(found.members) == {
        "Patient/p1": "Practitioner/d1",
        "Patient/p2": "PractitionerRole/r3",
        "Patient/p3": "Practitioner/d2",  # `nochange` is still a member (atr-changetype)
        "Patient/p4": "Practitioner/d2",
        "Patient/p5": "Practitioner/d1",
    }
    assert found.issues == ()
    assert found.entries == 5


def test_inactive_dropped_and_ended_members_are_issues_not_members() -> None:
    found = members_from_group(
        group(
            member("Patient/p1", "Practitioner/d1", inactive=True),
            member("Patient/p2", "Practitioner/d1", extension=[change("dropped")]),
            member("Patient/p3", "Practitioner/d1", period={"end": "2026-11-21"}),
            member("Patient/p4", "Practitioner/d1", period={"start": "2026-12-01"}),
            member("Patient/p5", "Practitioner/d1", period={"end": "2026-11-22"}),  # ends today
        ),
        LABEL,
        AS_OF,
    )
    assert dict(found.members) == {"Patient/p5": "Practitioner/d1"}
    assert problems(found) == {
        "Patient/p1": "risk-product list atr.json member 1: inactive member: ignored",
        "Patient/p2": (
            "risk-product list atr.json member 2: dropped from the list (ATR changeType): ignored"
        ),
        "Patient/p3": "risk-product list atr.json member 3: membership ended 2026-11-21: ignored",
        "Patient/p4": (
            "risk-product list atr.json member 4: membership starts 2026-12-01, after the as-of "
            "date: ignored"
        ),
    }


def test_malformed_members_and_clashing_duplicates_are_issues() -> None:
    found = members_from_group(
        group(
            "not a member",
            member("Group/g1", "Practitioner/d1"),
            member("Patient/p1", None),
            member("Patient/p2", "Organization/o1"),
            member("Patient/p3", "Practitioner/d1"),
            member("Patient/p3", "Practitioner/d2"),  # two clinicians: neither is followed
            member("Patient/p3", "Practitioner/d1"),
            member("Patient/p4", "Practitioner/d4"),
            member("Patient/p4", "Practitioner/d4"),  # listed twice alike: one member
            quantity=12,
        ),
        LABEL,
        AS_OF,
    )
    assert dict(found.members) == {"Patient/p4": "Practitioner/d4"}
    messages = [(i.resource, i.problem.split(": ", 1)[1]) for i in found.issues]
    assert messages == [
        (LABEL, "not a member object: skipped"),
        (LABEL, "entity is not a Patient reference: skipped"),
        ("Patient/p1", "no attributed clinician: skipped"),
        (
            "Patient/p2",
            "attributed to Organization/o1, not a Practitioner or PractitionerRole: skipped",
        ),
        ("Patient/p3", "listed with Practitioner/d1 and Practitioner/d2: left to the other steps"),
        (LABEL, "lists 9 of its 12 members: the rest are unused"),
    ]
    assert found.entries == 9


def test_a_group_json_file_is_read_and_what_cannot_be_read_is_one_config_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "atr.json"
    path.write_text(json.dumps(group(member("Patient/p1", "Practitioner/d1"))))
    found = read_member_list(parse_member_list_spec(str(path)), AS_OF)
    assert (found.label, dict(found.members)) == ("atr.json", {"Patient/p1": "Practitioner/d1"})

    with pytest.raises(ConfigError, match=r"is neither Group/ID nor a file"):
        parse_member_list_spec(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"empty"):
        parse_member_list_spec("  ")
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Group", ')
    with pytest.raises(ConfigError, match=r"broken.json is not JSON \(line 1\)"):
        read_member_list(parse_member_list_spec(str(broken)), AS_OF)
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle"}))
    with pytest.raises(ConfigError, match=r"bundle.json holds no Group resource"):
        read_member_list(parse_member_list_spec(str(bundle)), AS_OF)


# --------------------------------------------------------------------------- CSV


def test_a_csv_takes_references_or_bare_ids_and_a_bare_clinician_is_a_practitioner() -> None:
    text = (
        "practitioner,patient\n"  # columns in any order under a header
        "Practitioner/d1,Patient/p1\n"
        "d2,p2\n"
        "PractitionerRole/r3,p3\n"
        "\n"
        "# a comment\n"
        "Organization/o1,p4\n"
        "d1,not an id\n"
        "d5\n"
        "d1,p6\n"
        "d2,p6\n"
    )
    found = members_from_csv(text, "list.csv")
    assert dict(found.members) == {
        "Patient/p1": "Practitioner/d1",
        "Patient/p2": "Practitioner/d2",
        "Patient/p3": "PractitionerRole/r3",
    }
    assert [i.problem.removeprefix("risk-product list list.csv ") for i in found.issues] == [
        "line 7: attributed to Organization/o1, not a Practitioner or PractitionerRole: skipped",
        "line 8: not a Patient id or reference: skipped",
        "line 9: fewer than two columns: skipped",
        "line 11: listed with Practitioner/d1 and Practitioner/d2: left to the other steps",
    ]
    assert found.entries == 8


def test_a_csv_without_a_header_is_patient_then_practitioner() -> None:
    found = members_from_csv("p1,d1\nPatient/p2,Practitioner/d2\n", "list.csv")
    assert dict(found.members) == {"Patient/p1": "Practitioner/d1", "Patient/p2": "Practitioner/d2"}
    # A header after a comment is still the header (here: practitioner first).
    found = members_from_csv("# from the payer\nPractitioner,Patient\nd1,p1\nd2,bad id\n", "l")
    assert dict(found.members) == {"Patient/p1": "Practitioner/d1"}
    assert [i.problem for i in found.issues] == [
        "risk-product list l line 4: not a Patient id or reference: skipped"
    ]


def test_a_csv_header_without_a_practitioner_column_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"list.csv has no `practitioner` column"):
        members_from_csv("patient,clinician\np1,d1\n", "list.csv")


# --------------------------------------------------------------------------- Group/ID


class FakeServer:
    """A FHIR server's `read` with Groups by id (a fake, not a mock)."""

    def __init__(self, groups: dict[str, dict[str, Any]]) -> None:
        self.groups = groups
        self.reads: list[tuple[str, str]] = []

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        self.reads.append((resource_type, resource_id))
        if resource_id not in self.groups:
            raise NotFoundError(404, f"{resource_type}/{resource_id} not found")
        return self.groups[resource_id]


def test_a_server_group_is_read_once_through_the_client() -> None:
    server = FakeServer({"atr": group(member("Patient/p1", "Practitioner/d1"))})
    spec = parse_member_list_spec("Group/atr")
    assert spec == MemberListSpec(group_id="atr")
    found = read_member_list(spec, AS_OF, lambda: server)
    assert (found.label, dict(found.members)) == ("Group/atr", {"Patient/p1": "Practitioner/d1"})
    assert server.reads == [("Group", "atr")]
    with pytest.raises(SourceError, match=r"risk-product list Group/gone not found"):
        read_member_list(MemberListSpec(group_id="gone"), AS_OF, lambda: server)
    with pytest.raises(ConfigError, match=r"Group/atr is read from a FHIR server"):
        read_member_list(spec, AS_OF, None)


def test_load_member_list_reads_the_setting_through_the_sources_client(tmp_path: Path) -> None:
    class Source:
        client = FakeServer({"atr": group(member("Patient/p1", "Practitioner/d1"))})

    class Wrapper:  # a pass's wrapper around its source (jobs/steps.py SeenRecorder)
        source = Source()

    settings = Settings.load(env={"FHIRPANEL_ATTRIBUTION_RISK_PRODUCT_LIST": "Group/atr"})
    assert settings.attribution.risk_product_list == "Group/atr"
    found = load_member_list(settings, Wrapper(), AS_OF)
    assert found is not None and dict(found.members) == {"Patient/p1": "Practitioner/d1"}
    assert load_member_list(Settings(), Wrapper(), AS_OF) is None


# --------------------------------------------------------------------------- through analyse

TABLES = Tables.load(Settings()).method


def pipeline_tables(name: str) -> MethodTables:
    return dataclasses.replace(
        TABLES, pipeline=parse_pipeline(load_mapping_ref(f"pipelines/{name}"))
    )


LIST = MemberList(
    "atr.json",
    {
        pid(2): doc(2),  # p2 never saw d2
        pid(5): doc(9),  # d9 is a cardiologist: not eligible
        pid(77): doc(1),  # not a patient of the practice
    },
    (),
    4,
)


def run(name: str, members: MemberList | None = LIST) -> tuple[dict[str, Any], Population]:
    population = practice()
    outcome = analyse(population, AS_OF, pipeline_tables(name), risk_product_members=members)
    return build_report(outcome), population


def test_case_study_1_gives_a_listed_patient_the_listed_clinician_they_never_saw() -> None:
    report, _ = run("case_study_1")
    by_patient = {p["patient"]: p for p in report["patients"]}
    assert by_patient[pid(2)]["practitioner"] == doc(2)
    assert (by_patient[pid(2)]["rule"], by_patient[pid(2)]["step"]) == (
        "risk-product",
        "risk-product",
    )
    assert by_patient[pid(2)]["evidence"] == []  # no visit decided it
    assert report["summary"]["by_rule"]["risk-product"] == 1
    assert report["summary"]["risk_product_list"] == {
        "list": "atr.json",
        "entries": 4,
        "members": 3,
        "assigned": 1,
    }


def test_under_mgma_the_list_is_not_followed_and_a_warning_says_so() -> None:
    report, population = run("mgma")
    by_patient = {p["patient"]: p for p in report["patients"]}
    assert by_patient[pid(2)]["practitioner"] == doc(3)  # the clinician they saw
    assert "risk-product" not in report["summary"]["by_rule"]
    assert "risk_product_list" not in report["summary"]
    assert any("has no risk-product step" in w for w in report["warnings"])
    assert not [i for i in population.issues if "risk-product list" in i.problem]


def test_an_ineligible_listed_clinician_falls_through_to_four_cut_with_an_issue() -> None:
    report, _ = run("case_study_1")
    p5 = next(p for p in report["patients"] if p["patient"] == pid(5))
    assert (p5["practitioner"], p5["step"], p5["rule"]) == (
        doc(2),
        "four-cut-12m",
        "single-provider",
    )
    assert {
        "resource": pid(5),
        "problem": (
            "risk-product list atr.json: Practitioner/d9 is not eligible for primary-care "
            "attribution: attributed by the next step"
        ),
        "action": "skipped",
    } in report["issues"]


def test_an_unknown_patient_on_the_list_is_an_issue() -> None:
    report, _ = run("case_study_1")
    assert {
        "resource": pid(77),
        "problem": "risk-product list atr.json: not in the population",
        "action": "skipped",
    } in report["issues"]
    assert pid(77) not in {p["patient"] for p in report["patients"]}


def test_an_inactive_member_is_ignored_with_an_issue() -> None:
    listed = members_from_group(
        group(member(pid(2), doc(2), inactive=True), member(pid(3), doc(1))), "atr.json", AS_OF
    )
    report, _ = run("case_study_1", listed)
    by_patient = {p["patient"]: p for p in report["patients"]}
    assert (by_patient[pid(2)]["practitioner"], by_patient[pid(2)]["step"]) == (
        doc(3),
        "four-cut-12m",
    )
    assert (by_patient[pid(3)]["practitioner"], by_patient[pid(3)]["rule"]) == (
        doc(1),
        "risk-product",
    )
    assert {
        "resource": pid(2),
        "problem": "risk-product list atr.json member 1: inactive member: ignored",
        "action": "skipped",
    } in report["issues"]
    assert report["summary"]["risk_product_list"]["assigned"] == 1


def test_an_incremental_subset_keeps_its_patients_and_drops_the_readers_issues() -> None:
    listed = members_from_group(
        group(
            member(pid(2), doc(2)), member(pid(3), doc(1)), member(pid(4), doc(1), inactive=True)
        ),
        "atr.json",
        AS_OF,
    )
    part = listed.subset([pid(2)])
    assert (dict(part.members), part.issues) == ({pid(2): doc(2)}, ())
    assert len(listed.issues) == 1


def test_a_role_on_the_list_names_its_clinician() -> None:
    listed = MemberList("l", {pid(1): "PractitionerRole/r4", pid(3): "PractitionerRole/r99"})
    report, _ = run("case_study_1", listed)
    by_patient = {p["patient"]: p for p in report["patients"]}
    assert (by_patient[pid(1)]["practitioner"], by_patient[pid(1)]["practitioner_role"]) == (
        doc(4),
        "PractitionerRole/r4",
    )
    assert {
        "resource": pid(3),
        "problem": (
            "risk-product list l: PractitionerRole/r99 is not a known PractitionerRole: "
            "attributed by the next step"
        ),
        "action": "skipped",
    } in report["issues"]


def test_the_terminal_summary_counts_the_patients_the_list_assigned() -> None:
    report, _ = run("case_study_1")
    console = Console(record=True, width=200)
    render_summary(report, "memory", console)
    text = console.export_text()
    assert "Risk-product list atr.json: 3 members of 4 entries; patients it assigned: 1" in text
    assert "risk-product 1" in text  # the rule among the others in "Assigned by"
