"""The write-back plan: the diff that decides create/update/unchanged, which existing resource
is ours, and the summary the run report and the terminal show."""

from __future__ import annotations

from typing import Any

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import WriteBackError
from fhirpanel.writeback.identity import comparable, same_content
from fhirpanel.writeback.plan import (
    PlannedWrite,
    WriteCounts,
    choose_existing,
    decide,
    entry_outcome,
    entry_status,
    refusal_kind,
    response_problem,
)
from fhirpanel.writeback.sending import _id_version_from_location
from fhirpanel.writeback.summary import WriteBackInterrupted, WriteSummary

CFG = WritebackSettings()
TAG = {"system": CFG.tag_system, "code": CFG.tag_code}


def team(
    rid: str | None = None,
    *,
    tagged: bool = True,
    div: str = "<div><p>x</p></div>",
    status: str = "active",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "CareTeam",
        "meta": {"tag": [TAG] if tagged else [], "versionId": "3"},
        "text": {"status": "generated", "div": div},
        "identifier": [{"system": CFG.identifier_system, "value": "careteam-pcp.p1"}],
        "status": status,
        "subject": {"reference": "Patient/p1"},
    }
    if rid:
        resource["id"] = rid
    return resource


def test_decide() -> None:
    built = team()
    assert decide(None, None) == "none"
    assert decide(None, team("a")) == "none"
    assert decide(built, None) == "create"
    assert decide(built, team("a")) == "unchanged"
    assert decide(built, team("a", status="inactive")) == "update"


def test_diff_ignores_meta_id_and_narrative_whitespace() -> None:
    built = team(div='<div xmlns="http://www.w3.org/1999/xhtml"><p>Primary care team</p></div>')
    stored = team(
        "srv-9",
        div='<div xmlns="http://www.w3.org/1999/xhtml">\n  <p>Primary care team</p>\n</div>',
    )
    stored["meta"] = {
        "versionId": "7",
        "lastUpdated": "2026-11-22T10:00:00+01:00",
        "tag": [TAG, {"system": "other", "code": "x"}],
    }
    assert same_content(built, stored)
    assert same_content(
        team(div="<div><p>hcc&gt;=1 &amp; ed</p></div>"),
        team(div="<div>\n<p>hcc>=1 &#38; ed</p></div>"),
    )
    assert "meta" not in comparable(stored) and "id" not in comparable(stored)
    # ... but not words in the narrative, nor any other element.
    assert not same_content(built, team(div="<div><p>Primary care teams</p></div>"))
    assert not same_content(built, {**stored, "name": "x"})


def test_choose_existing() -> None:
    assert choose_existing([], CFG).resource is None
    one = choose_existing([team("b")], CFG)
    assert one.resource is not None and one.resource["id"] == "b"
    assert not one.problems and not one.foreign
    dupes = choose_existing([team("b"), team("a"), team("c", tagged=False)], CFG)
    assert dupes.resource is not None and dupes.resource["id"] == "a"
    assert not dupes.foreign
    assert dupes.problems and "3 resources share this identifier (a, b, c)" in dupes.problems[0]
    foreign = choose_existing([team("z", tagged=False)], CFG)
    assert foreign.foreign and foreign.resource is not None


def test_planned_write_prepares_against_what_exists() -> None:
    calls: list[Any] = []

    def build(existing: Any) -> dict[str, Any]:
        calls.append(existing)
        return team(status="active")

    item = PlannedWrite("CareTeam", "careteam-pcp.p1", "Patient/p1", build)
    assert item.label == "CareTeam?identifier=careteam-pcp.p1"
    actions = []
    for existing in (None, team("srv-1", status="inactive"), team("srv-1")):
        item.prepare(existing)
        actions.append(item.action)
    assert actions == ["create", "update", "unchanged"]
    assert (item.current_id, item.existing_version, item.label) == ("srv-1", "3", "CareTeam/srv-1")
    assert len(calls) == 3


def test_counts_and_summary() -> None:
    counts = WriteCounts()
    counts.add("CareTeam", "create", 5)
    counts.add("CareTeam", "unchanged", 2)
    counts.add("CarePlan", "update")
    assert counts.total("create") == 5 and counts.get("CarePlan", "update") == 1
    summary = WriteSummary(
        dry_run=False,
        counts=counts,
        provenance=2,
        batches=2,
        requests={"total": 9, "by_method": {"GET": 6, "POST": 3}},
        issues=[Issue("CareTeam/x", "HTTP 400", "skipped")],
    )
    assert summary.written == 6
    assert summary.write_requests == 3
    report = summary.as_report()
    assert report["counts"]["CareTeam"] == {
        "create": 5,
        "update": 0,
        "matched": 0,
        "unchanged": 2,
        "skipped": 0,
        "failed": 0,
    }
    assert report["issues"] == [
        {"resource": "CareTeam/x", "problem": "HTTP 400", "action": "skipped"}
    ]
    lines = summary.lines()
    assert lines[1] == "  CareTeam: 5 created, 0 updated, 2 unchanged"
    assert "3 writes" in lines[3]
    planned = WriteSummary(dry_run=True, counts=counts).lines()
    assert "dry run" in planned[0]
    assert planned[1] == "  CareTeam: 5 to create, 0 to update, 2 unchanged"


def test_location_parsing() -> None:
    assert _id_version_from_location(
        "http://127.0.0.1:8080/fhir/CareTeam/abc/_history/4", "CareTeam"
    ) == ("abc", "4")
    assert _id_version_from_location("CarePlan/12", "CarePlan") == ("12", None)
    assert _id_version_from_location("", "CarePlan") == (None, None)


# --------------------------------------------------------------------------- server answers


def test_entry_status_reads_every_form_servers_use() -> None:
    assert entry_status({"response": {"status": "201 Created"}}) == 201
    assert entry_status({"response": {"status": "412"}}) == 412  # Medplum: the number only
    assert entry_status({"response": {"status": "HTTP/1.1 200 OK"}}) == 200
    assert entry_status({"response": {"status": 204}}) == 204
    for broken in (
        {},
        {"response": "201"},
        {"response": {}},
        {"response": {"status": "ok"}},
        {"response": {"status": True}},
        {"response": {"status": 999}},
        {"response": {"status": "2010"}},
    ):
        assert entry_status(broken) is None, broken


def test_entry_outcome() -> None:
    assert entry_outcome(201, conditional_create=False) == "written"
    assert entry_outcome(200, conditional_create=False) == "written"
    # If-None-Exist answered 200: the server found one and wrote nothing.
    assert entry_outcome(200, conditional_create=True) == "matched"
    assert entry_outcome(201, conditional_create=True) == "written"
    assert entry_outcome(412, conditional_create=False) == "conflict"
    assert entry_outcome(409, conditional_create=True) == "conflict"
    assert entry_outcome(500, conditional_create=False) == "failed"
    assert entry_outcome(400, conditional_create=False) == "failed"
    assert entry_outcome(None, conditional_create=False) == "unknown"


def test_response_problem_refuses_what_cannot_be_read_entry_by_entry() -> None:
    ok = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": "201"}}] * 2,
    }
    assert response_problem(ok, 2) is None
    assert response_problem({**ok, "type": "batch-response"}, 2) is None
    assert "3 sent" in str(response_problem(ok, 3))
    assert "searchset" in str(response_problem({**ok, "type": "searchset"}, 2))
    assert "not a Bundle" in str(response_problem({"resourceType": "OperationOutcome"}, 2))
    assert response_problem({**ok, "entry": "x"}, 2) is not None
    assert response_problem({**ok, "entry": ["x", "y"]}, 2) is not None
    assert "0 entries" in str(response_problem({**ok, "entry": None}, 2))


def _medplum(text: str) -> dict[str, Any]:
    """Medplum's badRequest(): code `invalid`, the reason in details.text."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "details": {"text": text}}],
    }


def test_refusal_kind() -> None:
    # Medplum's two size refusals (packages/fhir-router/src/batch.ts).
    assert (
        refusal_kind(400, _medplum("Transaction contains more update operations than allowed"))
        == "size"
    )
    assert (
        refusal_kind(
            400, _medplum("Transaction requires strict isolation but has too many entries")
        )
        == "size"
    )
    assert refusal_kind(413, None) == "size"
    too_costly = {"issue": [{"severity": "error", "code": "too-costly"}]}
    assert refusal_kind(422, too_costly) == "size"
    unsupported = {"issue": [{"severity": "error", "code": "not-supported"}]}
    assert refusal_kind(400, unsupported) == "unsupported"
    assert refusal_kind(400, _medplum("Transactions are not supported")) == "unsupported"
    assert refusal_kind(405, None) == "unsupported"
    # Anything else: entry by entry, the size stays.
    assert refusal_kind(400, _medplum("Invalid resource: missing status")) is None
    assert refusal_kind(500, _medplum("too many entries")) is None
    assert refusal_kind(412, None) is None


def test_summary_shows_matched_recovered_and_unconfirmed() -> None:
    counts = WriteCounts()
    counts.add("CareTeam", "create", 3)
    counts.add("CareTeam", "matched")
    summary = WriteSummary(
        dry_run=False,
        counts=counts,
        provenance=1,
        provenance_recovered=2,
        batch_size=6,
        unconfirmed={("CarePlan", "careplan-cm.p2")},
        requests={"total": 5, "by_method": {"POST": 2, "GET": 3}},
    )
    assert summary.written == 3  # a match writes nothing
    lines = summary.lines()
    assert lines[1] == "  CareTeam: 3 created, 0 updated, 0 unchanged, 1 matched"
    assert lines[2].startswith("  1 Provenance (+2 for earlier writes)")
    assert "1 write(s) unconfirmed" in lines[3]
    report = summary.as_report()
    assert report["unconfirmed"] == [["CarePlan", "careplan-cm.p2"]]
    assert (report["provenance_recovered"], report["batch_size"]) == (2, 6)


def test_interrupted_write_back_is_one_line_exit_13_with_its_summary() -> None:
    summary = WriteSummary(dry_run=False, unconfirmed={("CareTeam", "careteam-pcp.p1")})
    error = WriteBackInterrupted("POST http://x/fhir failed\n(ConnectionError:\r\n reset)", summary)
    assert isinstance(error, WriteBackError) and error.exit_code == 13
    assert str(error) == "POST http://x/fhir failed (ConnectionError: reset)"
    assert error.summary is summary
