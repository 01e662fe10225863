"""Write-back against the real sandbox FHIR server (sekmet on 127.0.0.1), seeded with the
committed population and read back through the real client: first run, idempotent second run,
a PCP change, a crash mid-write, foreign resources, a server without conditional update or
transactions, a stale version conflict, and the optional resources."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhirpanel.config import FhirSettings, Settings, WritebackSettings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.source import ServerSource
from fhirpanel.run import run_full
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.tables import Tables
from fhirpanel.writeback import (
    WriteBackInterrupted,
    WritebackTables,
    WriteSummary,
    write_back,
    writer,
)
from fhirpanel.writeback.builders import care_plan_called_for
from fhirpanel.writeback.identity import PCP_PARTICIPANT_PREFIX, business_identifier, comparable
from tests.conftest import AS_OF
from tests.integration.faults import ConnectionCut, FaultProxy, Status

AS_OF_DATE = date.fromisoformat(AS_OF)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SNOMED = "http://snomed.info/sct"
ENCOUNTER_CLASS = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@pytest.fixture(scope="module")
def tables(tables: Tables) -> WritebackTables:
    """Here `tables` is the write-back part of the session's (tests/conftest.py)."""
    return tables.writeback


@pytest.fixture
def loaded(sandbox: SandboxServer, population_dir: Path) -> SandboxServer:
    sandbox.load_ndjson_dir(population_dir)
    return sandbox


@pytest.fixture
def client(loaded: SandboxServer) -> Iterator[FhirClient]:
    with FhirClient(FhirSettings(base_url=loaded.base_url)) as fhir:
        yield fhir


def analyse(client: FhirClient, as_of: date = AS_OF_DATE) -> RunOutcome:
    return run_full(Settings.load(env={}), ServerSource(client), as_of)


def write(
    outcome: RunOutcome,
    client: FhirClient,
    tables: WritebackTables,
    settings: WritebackSettings | None = None,
    **kwargs: Any,
) -> WriteSummary:
    return write_back(
        outcome,
        client,
        settings or WritebackSettings(),
        dry_run=False,
        now=NOW,
        tables=tables,
        **kwargs,
    )


def ours(client: FhirClient, rtype: str) -> list[dict[str, Any]]:
    cfg = WritebackSettings()
    return list(client.search(rtype, [("_tag", f"{cfg.tag_system}|{cfg.tag_code}")]))


def by_identifier(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    cfg = WritebackSettings()
    counts = Counter(business_identifier(r, cfg) for r in resources)
    duplicated = {k: n for k, n in counts.items() if n != 1}
    assert duplicated == {}, f"duplicates by identifier: {duplicated}"
    return {str(business_identifier(r, cfg)): r for r in resources}


def assigned_patients(outcome: RunOutcome) -> set[str]:
    return {a.patient for a in outcome.attribution.assignments if a.status == "assigned"}


def expected_plans(outcome: RunOutcome) -> set[str]:
    cfg = WritebackSettings()
    return {
        a.patient
        for a in outcome.attribution.assignments
        if a.status == "assigned" and care_plan_called_for(outcome.risk[a.patient], cfg)
    }


def without_conditional_update(caps: ServerCapabilities) -> ServerCapabilities:
    """The sandbox's capabilities with conditional update/create and transactions taken away."""
    return dataclasses.replace(
        caps,
        system_interactions=frozenset(),
        resources={
            rtype: dataclasses.replace(res, conditional_update=False, conditional_create=False)
            for rtype, res in caps.resources.items()
        },
    )


def end_state(client: FhirClient) -> dict[str, Any]:
    """Our CareTeams and CarePlans by identifier, server ids replaced by identifiers."""
    teams = by_identifier(ours(client, "CareTeam"))
    plans = by_identifier(ours(client, "CarePlan"))
    team_ids = {f"CareTeam/{t['id']}": ident for ident, t in teams.items()}
    state: dict[str, Any] = {ident: comparable(t) for ident, t in teams.items()}
    for ident, plan in plans.items():
        flat = comparable(plan)
        flat["careTeam"] = [team_ids[ref["reference"]] for ref in flat.get("careTeam", [])]
        state[ident] = flat
    return state


# --------------------------------------------------------------------------- first and second run


def test_first_run_creates_teams_and_plans_and_second_run_writes_nothing(
    client: FhirClient, tables: WritebackTables
) -> None:
    outcome = analyse(client)
    patients = assigned_patients(outcome)
    plans_for = expected_plans(outcome)
    assert len(patients) > 200 and len(plans_for) > 20

    planned = write_back(outcome, client, WritebackSettings(), dry_run=True, now=NOW, tables=tables)
    assert planned.counts.get("CareTeam", "create") == len(patients)
    assert planned.counts.get("CarePlan", "create") == len(plans_for)
    assert planned.write_requests == 0
    assert ours(client, "CareTeam") == []

    first = write(outcome, client, tables)
    assert first.counts.get("CareTeam", "create") == len(patients)
    assert first.counts.get("CarePlan", "create") == len(plans_for)
    assert first.issues == []
    assert first.provenance == first.batches >= 2
    teams = by_identifier(ours(client, "CareTeam"))
    plans = by_identifier(ours(client, "CarePlan"))
    assert {t["subject"]["reference"] for t in teams.values()} == patients
    assert {p["subject"]["reference"] for p in plans.values()} == plans_for
    team_of = {t["subject"]["reference"]: t for t in teams.values()}

    for team in teams.values():
        get_fhir_model_class("CareTeam").model_validate(team)
        assert team["status"] == "active"
        assert team["category"][0]["coding"][0]["code"] == "LA28865-6"
        assert team["period"]["start"] == AS_OF
        [pcp] = team["participant"]
        assert pcp["role"][0]["coding"][0]["system"] == SNOMED
        assert pcp["member"]["reference"].startswith(("PractitionerRole/", "Practitioner/"))
        assert pcp["period"] == {"start": AS_OF}
    roles = Counter(t["participant"][0]["role"][0]["coding"][0]["code"] for t in teams.values())
    assert set(roles) == {"446050000", "224571005", "449161006"}  # MD/DO, NP and PA PCPs
    for plan in plans.values():
        get_fhir_model_class("CarePlan").model_validate(plan)
        assert (plan["status"], plan["intent"]) == ("active", "plan")
        assert plan["category"][0]["coding"][0]["code"] == "assess-plan"
        assert plan["text"]["status"] == "generated" and "tier" in plan["text"]["div"]
        team = team_of[plan["subject"]["reference"]]
        assert plan["careTeam"] == [{"reference": f"CareTeam/{team['id']}"}]
        assert plan["activity"] and plan["period"]["start"] == AS_OF
    for provenance in ours(client, "Provenance"):
        get_fhir_model_class("Provenance").model_validate(provenance)
        assert all("/_history/" in t["reference"] for t in provenance["target"])

    # The same data again: only reads.
    before = dict(client.stats.by_method)
    second = write(analyse(client), client, tables)
    assert second.written == 0 and second.write_requests == 0 and second.provenance == 0
    assert second.counts.get("CareTeam", "unchanged") == len(patients)
    assert second.counts.get("CarePlan", "unchanged") == len(plans_for)
    sent = {m: n - before.get(m, 0) for m, n in client.stats.by_method.items()}
    assert {m for m, n in sent.items() if n} == {"GET"}


# --------------------------------------------------------------------------- a PCP change


def visit(eid: str, patient: str, practitioner: str, day: date) -> dict[str, Any]:
    start = datetime(day.year, day.month, day.day, 15, 0, tzinfo=UTC)
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": ENCOUNTER_CLASS, "code": "AMB"},
        "type": [{"text": "Office visit"}],
        "subject": {"reference": patient},
        "participant": [
            {
                "type": [{"coding": [{"system": PARTICIPATION, "code": "PPRF"}]}],
                "individual": {"reference": practitioner},
            }
        ],
        "period": {"start": start.isoformat(), "end": (start + timedelta(minutes=20)).isoformat()},
    }


def test_changed_visit_history_moves_the_patient(
    client: FhirClient, loaded: SandboxServer, tables: WritebackTables
) -> None:
    outcome = analyse(client)
    write(outcome, client, tables)
    patient = next(
        a
        for a in outcome.attribution.assignments
        if a.status == "assigned" and a.patient in expected_plans(outcome)
    )
    old_pcp = patient.practitioner
    identifier = f"careteam-pcp.{patient.patient.split('/')[1]}"
    [before] = by_identifier(ours(client, "CareTeam"))[identifier]["participant"]
    # Another family-medicine clinician the patient now sees more often than the current PCP.
    new_pcp = next(
        r.practitioner
        for r in sorted(outcome.population.roles.values(), key=lambda r: r.id)
        if r.practitioner != old_pcp and any(c.code == "207Q00000X" for c in r.specialties)
    )
    assert new_pcp is not None
    later = AS_OF_DATE + timedelta(days=30)
    visits = max(n for _, n in patient.visits) + 2
    loaded.load(
        [
            visit(f"enc-move-{n}", patient.patient, new_pcp, AS_OF_DATE + timedelta(days=n))
            for n in range(1, visits + 1)
        ]
    )

    moved = analyse(client, later)
    now = next(a for a in moved.attribution.assignments if a.patient == patient.patient)
    assert now.practitioner == new_pcp
    summary = write(moved, client, tables)
    assert summary.counts.get("CareTeam", "update") >= 1
    teams = by_identifier(ours(client, "CareTeam"))
    team = teams[identifier]
    ended, added = team["participant"]
    assert ended == {**before, "period": {"start": AS_OF, "end": later.isoformat()}}
    assert added["period"] == {"start": later.isoformat()}
    assert added["member"]["reference"] in {new_pcp} | {
        r.id for r in moved.population.roles.values() if r.practitioner == new_pcp
    }
    assert added["id"] == f"{PCP_PARTICIPANT_PREFIX}2"
    assert team["status"] == "active"
    assert len(teams) == len(assigned_patients(moved))


# --------------------------------------------------------------------------- a crash mid-write


@pytest.mark.parametrize("plain_server", [False, True], ids=["transactions", "single-requests"])
def test_run_killed_mid_write_converges(
    client: FhirClient, tables: WritebackTables, plain_server: bool, cut_connection: ConnectionCut
) -> None:
    outcome = analyse(client)
    caps = client.capabilities()
    if plain_server:
        caps = without_conditional_update(caps)
    settings = WritebackSettings(batch_size=40)
    cut_connection.arm(after_batches=2)
    with pytest.raises(WriteBackInterrupted) as stopped:
        write(outcome, client, tables, settings, capabilities=caps)
    cut_connection.disarm()
    assert cut_connection.refused  # the third batch never reached the server
    assert stopped.value.summary is not None and stopped.value.summary.batches == 2
    assert len(by_identifier(ours(client, "CareTeam"))) == 80
    rerun = write(outcome, client, tables, settings, capabilities=caps)
    assert rerun.counts.get("CareTeam", "unchanged") == 80
    teams = by_identifier(ours(client, "CareTeam"))
    assert {t["subject"]["reference"] for t in teams.values()} == assigned_patients(outcome)
    assert len(teams) == len(assigned_patients(outcome))
    assert len(by_identifier(ours(client, "CarePlan"))) == len(expected_plans(outcome))
    assert write(outcome, client, tables, settings, capabilities=caps).write_requests == 0


# --------------------------------------------------------------------------- foreign resources


@pytest.mark.parametrize("bulk_read", [False, True], ids=["identifier-batches", "paged-read"])
def test_foreign_care_teams_are_left_untouched(
    client: FhirClient,
    loaded: SandboxServer,
    tables: WritebackTables,
    bulk_read: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if bulk_read:  # what a large run does: read all of ours in pages
        monkeypatch.setattr(writer, "BULK_READ_MIN", 10)
    outcome = analyse(client)
    patients = sorted(assigned_patients(outcome))
    cfg = WritebackSettings()
    foreign = {
        "resourceType": "CareTeam",
        "id": "ehr-team-1",
        "status": "active",
        "name": "Diabetes team",
        "subject": {"reference": patients[0]},
        "identifier": [{"system": "urn:ehr:careteam", "value": "42"}],
        "participant": [
            {
                "role": [{"text": "Diabetes educator"}],
                "member": {"reference": "Practitioner/prac-0001"},
            }
        ],
    }
    # Someone else's team that happens to carry our identifier, without our tag.
    squatter = {
        "resourceType": "CareTeam",
        "id": "ehr-team-2",
        "status": "proposed",
        "subject": {"reference": patients[1]},
        "identifier": [
            {"system": cfg.identifier_system, "value": f"careteam-pcp.{patients[1].split('/')[1]}"}
        ],
    }
    loaded.load([foreign, squatter])
    before = [orjson.dumps(client.read("CareTeam", rid)) for rid in ("ehr-team-1", "ehr-team-2")]

    summary = write(outcome, client, tables)
    assert write(outcome, client, tables).write_requests == 0
    after = [orjson.dumps(client.read("CareTeam", rid)) for rid in ("ehr-team-1", "ehr-team-2")]
    assert after == before
    assert summary.foreign == 1
    assert [i.resource for i in summary.issues] == ["CareTeam/ehr-team-2"]
    teams = by_identifier(ours(client, "CareTeam"))
    assert len(teams) == len(patients) - 1  # the squatted patient gets none of ours
    team_subjects = {t["subject"]["reference"] for t in teams.values()}
    assert patients[0] in team_subjects and patients[1] not in team_subjects


# --------------------------------------------------------------------------- no conditional update


def test_server_without_conditional_update_reaches_the_same_end_state(
    client: FhirClient, population_dir: Path, tables: WritebackTables
) -> None:
    outcome = analyse(client)
    write(outcome, client, tables)
    with SandboxServer() as plain, FhirClient(FhirSettings(base_url=plain.base_url)) as other:
        plain.load_ndjson_dir(population_dir)
        caps = without_conditional_update(other.capabilities())
        summary = write(analyse(other), other, tables, capabilities=caps)
        assert summary.strategy == {
            "CareTeam": "search-then-create",
            "CarePlan": "search-then-create",
        }
        assert not summary.transactions
        assert end_state(other) == end_state(client)
        assert write(analyse(other), other, tables, capabilities=caps).write_requests == 0


# --------------------------------------------------------------------------- version conflicts


class MeddlingClient(FhirClient):
    """Lets a test change a resource on the server just before fhirpanel's next update of it."""

    meddle: Any = None

    def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
        if self.meddle is not None:
            meddle, self.meddle = self.meddle, None
            meddle(resource)
        return super().update(resource, if_match=if_match)


def test_stale_version_conflict_is_reapplied(
    loaded: SandboxServer, tables: WritebackTables
) -> None:
    with MeddlingClient(FhirSettings(base_url=loaded.base_url)) as client:
        outcome = analyse(client)
        write(outcome, client, tables)
        team = next(iter(by_identifier(ours(client, "CareTeam")).values()))
        store = loaded.ctx.store
        # Someone suspends our team (version 2): fhirpanel will set it active again ...
        store.update({**team, "status": "suspended"}, origin="internal")

        def clinician_adds_a_member(_: Mapping[str, Any]) -> None:
            # ... but just before it does, a clinician adds a member (version 3).
            current = client.read("CareTeam", team["id"])
            current["participant"].append(
                {
                    "role": [{"text": "Care manager"}],
                    "member": {"reference": "Practitioner/prac-0019"},
                }
            )
            store.update(current, origin="internal")

        client.meddle = clinician_adds_a_member
        summary = write(outcome, client, tables)
        assert client.meddle is None
        assert summary.conflicts_resolved == 1
        assert summary.counts.get("CareTeam", "update") == 1
        assert summary.issues == []
        final = client.read("CareTeam", team["id"])
        assert final["meta"]["versionId"] == "4"
        assert final["status"] == "active"
        assert final["participant"][-1]["member"] == {"reference": "Practitioner/prac-0019"}
        assert final["participant"][0] == team["participant"][0]


# --------------------------------------------------------------------------- optional resources


def test_risk_assessments_and_attribution_groups(
    client: FhirClient, tables: WritebackTables
) -> None:
    outcome = analyse(client)
    settings = WritebackSettings(risk_assessment=True, attribution_group=True)
    first = write(outcome, client, tables, settings)
    not_excluded = {a.patient for a in outcome.attribution.assignments if a.status != "excluded"}
    assessments = by_identifier(ours(client, "RiskAssessment"))
    assert {r["subject"]["reference"] for r in assessments.values()} == not_excluded
    for assessment in assessments.values():
        get_fhir_model_class("RiskAssessment").model_validate(assessment)
        tier = outcome.risk[assessment["subject"]["reference"]].tier
        assert f"tier {tier}" in assessment["prediction"][0]["outcome"]["text"]
    groups = by_identifier(ours(client, "Group"))
    members = [m for g in groups.values() for m in g["member"]]
    assert {m["entity"]["reference"] for m in members} == assigned_patients(outcome)
    assert {m["extension"][1]["valueCode"] for m in members} == {"new"}
    for group in groups.values():
        get_fhir_model_class("Group").model_validate(group)
        assert group["quantity"] == len(group["member"])
    assert first.counts.get("Group", "create") == len(groups) >= 2
    assert write(outcome, client, tables, settings).write_requests == 0


def test_an_ehr_that_refuses_the_count_of_ours_is_read_by_identifier(
    client: FhirClient,
    loaded: SandboxServer,
    tables: WritebackTables,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large run first counts our resources (`identifier=system|&_summary=count`); an EHR
    refuses that as a population search. The refusal means "not said": the write-back reads
    by batched identifiers instead, writes everything once, and a second run writes nothing."""
    monkeypatch.setattr(writer, "BULK_READ_MIN", 10)
    outcome = analyse(client)
    with (
        FaultProxy(loaded.base_url) as proxy,
        FhirClient(FhirSettings(base_url=proxy.base_url)) as behind,
    ):
        proxy.on_path("_summary=count", fault=Status(403), times=100)
        first = write(outcome, behind, tables)
        refused = proxy.arrivals_for(lambda a: "_summary=count" in a.path)
        again = write(outcome, behind, tables)
    assert refused, "the count was never asked for: BULK_READ_MIN did not apply"
    assert first.counts.total("failed") == 0
    assert first.counts.get("CareTeam", "create") == len(assigned_patients(outcome))
    assert again.write_requests == 0
