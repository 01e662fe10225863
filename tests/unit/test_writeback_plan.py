"""The write-back plan: the diff that decides create/update/unchanged, which existing resource
is ours, and the summary the run report and the terminal show."""

from __future__ import annotations

from typing import Any

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.records import Issue
from fhirpanel.fhir.build import comparable, same_content
from fhirpanel.writeback.plan import PlannedWrite, WriteCounts, choose_existing, decide
from fhirpanel.writeback.writer import WriteSummary, _id_version_from_location

CFG = WritebackSettings()
TAG = {"system": CFG.tag_system, "code": CFG.tag_code}


def team(rid: str | None = None, *, tagged: bool = True, div: str = "<div><p>x</p></div>",
         status: str = "active") -> dict[str, Any]:
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
    stored = team("srv-9", div='<div xmlns="http://www.w3.org/1999/xhtml">\n  <p>Primary care '
                               'team</p>\n</div>')
    stored["meta"] = {"versionId": "7", "lastUpdated": "2026-11-22T10:00:00+01:00",
                      "tag": [TAG, {"system": "other", "code": "x"}]}
    assert same_content(built, stored)
    assert same_content(team(div="<div><p>hcc&gt;=1 &amp; ed</p></div>"),
                        team(div="<div>\n<p>hcc>=1 &#38; ed</p></div>"))
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
    assert (item.current_id, item.existing_version, item.label) == (
        "srv-1", "3", "CareTeam/srv-1")
    assert len(calls) == 3


def test_counts_and_summary() -> None:
    counts = WriteCounts()
    counts.add("CareTeam", "create", 5)
    counts.add("CareTeam", "unchanged", 2)
    counts.add("CarePlan", "update")
    assert counts.total("create") == 5 and counts.get("CarePlan", "update") == 1
    summary = WriteSummary(dry_run=False, counts=counts, provenance=2, batches=2,
                           requests={"total": 9, "by_method": {"GET": 6, "POST": 3}},
                           issues=[Issue("CareTeam/x", "HTTP 400", "skipped")])
    assert summary.written == 6
    assert summary.write_requests == 3
    report = summary.as_report()
    assert report["counts"]["CareTeam"] == {"create": 5, "update": 0, "unchanged": 2,
                                            "skipped": 0, "failed": 0}
    assert report["issues"] == [{"resource": "CareTeam/x", "problem": "HTTP 400",
                                 "action": "skipped"}]
    lines = summary.lines()
    assert lines[1] == "  CareTeam: 5 created, 0 updated, 2 unchanged"
    assert "3 writes" in lines[3]
    planned = WriteSummary(dry_run=True, counts=counts).lines()
    assert "dry run" in planned[0]
    assert planned[1] == "  CareTeam: 5 to create, 0 to update, 2 unchanged"


def test_location_parsing() -> None:
    assert _id_version_from_location(
        "http://127.0.0.1:8080/fhir/CareTeam/abc/_history/4", "CareTeam") == ("abc", "4")
    assert _id_version_from_location("CarePlan/12", "CarePlan") == ("12", None)
    assert _id_version_from_location("", "CarePlan") == (None, None)
