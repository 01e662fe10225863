"""Roster files, batching by URL length and what refusals teach, references to follow, the date
floor, and the strict sandbox's rules (pure parts; the reads themselves are in
tests/integration/test_roster.py)."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest
import requests

from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError
from fhirpanel.fhir.batching import BatchPolicy, pack, url_length
from fhirpanel.fhir.referenced import References
from fhirpanel.fhir.roster import parse_roster_spec, parse_roster_text
from fhirpanel.ingest import encounter_floor, read_order, read_window_months
from fhirpanel.sandbox.strict import scoped
from fhirpanel.tables import Tables

BASE = "https://ehr.example.org/api/FHIR/R4"

# ---------------------------------------------------------------- roster files


def test_roster_file_ids_identifiers_header_comments_and_duplicates() -> None:
    text = (
        "patient,name\n"
        "# a comment\n"
        "\n"
        "abc-1,Ann\n"
        "Patient/abc-2\n"
        "https://ehr.example.org/fhir/Patient/abc-3\n"
        "abc-1\n"
        "urn:oid:1.2.3|MRN001\n"
        "|LOCAL7\n"
        "urn:oid:1.2.3|MRN001\n"
    )
    lines = parse_roster_text(text, "practice.csv")
    assert lines.ids == ["abc-1", "abc-2", "abc-3"]
    assert [(i.line, i.system, i.value) for i in lines.identifiers] == [
        (8, "urn:oid:1.2.3", "MRN001"),
        (9, "", "LOCAL7"),
    ]
    assert lines.issues == []


def test_bad_roster_lines_are_issues_naming_the_line_not_the_value() -> None:
    lines = parse_roster_text("ok-1\nnot an id!\nurn:oid:1.2.3|\nok-2\n", "r.csv")
    assert lines.ids == ["ok-1", "ok-2"]
    assert [(i.resource, i.action) for i in lines.issues] == [
        ("roster r.csv line 2", "skipped"),
        ("roster r.csv line 3", "skipped"),
    ]
    assert all("not an id" not in i.problem for i in lines.issues)
    # Identifier values (MRNs) stay out of repr, hence out of logs.
    ident = parse_roster_text("urn:x|SECRET-MRN\n").identifiers[0]
    assert "SECRET-MRN" not in repr(ident)


def test_roster_spec_is_a_group_or_an_existing_file(tmp_path: Path) -> None:
    assert parse_roster_spec("Group/attributed-pcp").group_id == "attributed-pcp"
    assert parse_roster_spec("https://ehr.example.org/fhir/Group/g-1").group_id == "g-1"
    path = tmp_path / "roster.csv"
    path.write_text("p1\n")
    assert parse_roster_spec(str(path)).path == str(path)
    with pytest.raises(ConfigError, match="neither Group/ID nor a file"):
        parse_roster_spec(str(tmp_path / "missing.csv"))
    with pytest.raises(ConfigError, match="empty roster"):
        parse_roster_spec("  ")


# ---------------------------------------------------------------- batching


def test_url_length_is_what_requests_sends() -> None:
    params = [("_count", "200"), ("patient", "a1,b2,Patient/c3"), ("date", "ge2025-01-01")]
    prepared = requests.Request("GET", f"{BASE}/Encounter", params=params).prepare()
    assert url_length(BASE, "Encounter", params) == len(prepared.url or "")


def test_pack_keeps_every_url_within_the_limit_and_the_count() -> None:
    ids = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(200)]
    policy = BatchPolicy(max_values=50, max_url=1000)
    fixed = url_length(BASE, "Encounter", [("_count", "200"), ("patient", "")])
    batches = list(pack(ids, fixed, policy))
    assert [i for b in batches for i in b] == ids  # nothing lost, order kept
    for batch in batches:
        params = [("_count", "200"), ("patient", ",".join(batch))]
        assert url_length(BASE, "Encounter", params) <= 1000
        assert len(batch) <= 50
    # The limit binds before the count: 36-character ids, about 38 on the wire with a comma.
    assert max(len(b) for b in batches) < 50
    assert len(list(pack(ids, fixed, BatchPolicy(max_values=50, max_url=100_000)))) == 4


def test_a_value_too_long_alone_still_goes_alone() -> None:
    policy = BatchPolicy(max_values=10, max_url=80)
    fixed = url_length(BASE, "Patient", [("_id", "")])
    assert list(pack(["x" * 200, "a", "b"], fixed, policy)) == [["x" * 200], ["a", "b"]]


def test_what_a_refusal_teaches_applies_to_the_next_batch() -> None:
    policy = BatchPolicy(max_values=3, max_url=10_000)
    batches = pack([str(n) for n in range(9)], 10, policy)
    assert next(batches) == ["0", "1", "2"]
    policy.refuse_lists("Encounter", "patient")  # a 400 on a comma list
    assert list(batches) == [["3"], ["4"], ["5"], ["6"], ["7"], ["8"]]
    assert policy.per_batch == 1
    policy.shrink_url(2000)
    assert policy.max_url == 1500
    policy.shrink_url(100)
    assert policy.max_url == 256  # never below a usable URL


# ---------------------------------------------------------------- references and order


def test_references_followed_from_each_type() -> None:
    refs = References()
    refs.note(
        {
            "resourceType": "Encounter",
            "participant": [
                {"individual": {"reference": "Practitioner/d1"}},
                {"individual": {"reference": "PractitionerRole/r1"}},
                {"individual": {"reference": "RelatedPerson/x"}},
            ],
            "serviceProvider": {"reference": "https://ehr.example.org/fhir/Organization/o1"},
        }
    )
    refs.note(
        {
            "resourceType": "Patient",
            "generalPractitioner": [{"reference": "Practitioner/d2"}],
            "managingOrganization": {"reference": "Organization/o2"},
        }
    )
    refs.note(
        {"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/d3"}}
    )
    refs.note({"resourceType": "Organization", "partOf": {"reference": "Organization/o3"}})
    assert refs.ids("Practitioner") == ["d1", "d2", "d3"]
    assert refs.ids("PractitionerRole") == ["r1"]
    assert refs.ids("Organization") == ["o1", "o2", "o3"]


def test_read_order_is_the_sources_own_when_it_has_one() -> None:
    from fhirpanel.fhir.source import PATIENTS_FIRST, MemorySource
    from fhirpanel.ingest import READ_ORDER

    class Patients:
        read_order = PATIENTS_FIRST

    class Older:  # an order written before a type was added to READ_ORDER
        read_order = ("Patient", "PractitionerRole", "Practitioner", "Organization")

    assert read_order(MemorySource([])) == READ_ORDER
    assert read_order(Patients()) == PATIENTS_FIRST  # type: ignore[arg-type]
    # What the source's order lacks still comes before the clinicians read by reference.
    assert read_order(Older()) == (  # type: ignore[arg-type]
        "Patient",
        "Encounter",
        "Condition",
        "PractitionerRole",
        "Practitioner",
        "Organization",
    )


# ---------------------------------------------------------------- the date floor


def test_the_floor_covers_the_longest_window_the_pass_decides_with() -> None:
    settings = Settings.load(env={})
    tables = Tables.load(settings)
    assert read_window_months(settings, tables.method) is None  # off by default
    on = dataclasses.replace(
        settings, fhir=dataclasses.replace(settings.fhir, encounter_floor="window")
    )
    months = read_window_months(on, tables.method)
    assert months is not None
    assert months >= max(
        tables.method.pipeline.widest_window or 0,
        settings.attribution.outreach_sentinel_months,
        tables.method.risk.utilisation.lookback_months,
    )
    assert encounter_floor(date(2026, 11, 22), 24) == date(2024, 11, 22)


# ---------------------------------------------------------------- the strict sandbox's rules


@pytest.mark.parametrize(
    ("rtype", "params", "allowed"),
    [
        ("Patient", [], False),
        ("Patient", [("_summary", "count")], False),
        ("Patient", [("_id", "a,b")], True),
        ("Patient", [("identifier", "urn:x|M1")], True),
        ("Patient", [("identifier", "urn:x|")], False),  # a whole system: a population
        ("Patient", [("family", "Lin"), ("birthdate", "1973-06-03")], True),
        ("Patient", [("family", "Lin")], False),
        ("Patient", [("_has:Group:member:_id", "g1")], True),
        ("Encounter", [("_lastUpdated", "gt2026-01-01")], False),
        ("Encounter", [("patient", "a,b"), ("date", "ge2024-01-01")], True),
        ("Condition", [("subject", "Patient/a")], True),
        ("Practitioner", [("name", "Smith")], False),
        ("Practitioner", [("_id", "d1")], True),
        ("PractitionerRole", [("practitioner", "d1,d2")], True),
        ("Organization", [("_count", "10")], False),
        ("CareTeam", [("identifier", "urn:fhirpanel:id|")], True),  # write-back's own
        ("Observation", [("code", "1234-5")], False),
    ],
)
def test_strict_rules(rtype: str, params: list[tuple[str, str]], allowed: bool) -> None:
    assert scoped(rtype, params) is allowed


def test_the_worker_polls_a_roster_on_its_own_cadence() -> None:
    from fhirpanel.jobs.worker import poll_interval

    settings = Settings.load(env={})
    assert poll_interval(settings) == (5.0, "incremental_minutes")
    roster = Settings.load(env={"FHIRPANEL_FHIR_ROSTER": "Group/g1"})
    assert poll_interval(roster) == (60.0, "roster_poll_minutes")
    epic = Settings.load(
        env={"FHIRPANEL_FHIR_PROFILE": "epic", "FHIRPANEL_SCHEDULER_ROSTER_POLL_MINUTES": "30"}
    )
    assert poll_interval(epic) == (30.0, "roster_poll_minutes")
