"""The integration scenarios against a real FHIR server named by FHIRPANEL_LIVE_FHIR_BASE.

Safe on a shared server holding millions of resources (the public HAPI sandbox): the suite
uploads a small synthetic population of its own, every resource under a run-unique id prefix and
tag, reads back only those (patients by id and `patient=`, clinicians and organisations by tag),
attributes them, writes CareTeam/CarePlan/RiskAssessment/Group/Provenance under a run-unique
identifier system and tag, checks that a second write-back writes nothing, and in the end deletes
everything it uploaded or wrote, by id, in an order referential integrity allows. Every loop is
bounded by count and time. Credentials, when the server needs them, come from the usual
FHIRPANEL_FHIR_* variables (fhir.auth and friends).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.checkserver import check_server
from fhirpanel.config import Settings
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.records import Issue
from fhirpanel.errors import FhirHttpError, GoneError, NotFoundError
from fhirpanel.fhir.client import FhirClient
from fhirpanel.fhir.source import Item, MemorySource, ServerSource
from fhirpanel.ingest import read_population
from fhirpanel.report import build_report
from fhirpanel.run import analyse
from fhirpanel.sandbox.generate import write_population
from fhirpanel.tables import Tables
from fhirpanel.writeback import write_back

pytestmark = pytest.mark.live
log = logging.getLogger(__name__)

AS_OF = date(2026, 11, 22)  # the generator's reference date, as for the committed population
PATIENTS = 12  # about 170 resources: enough for every attribution rule to have a case or two
SEED = 11
LIVE_TAG_SYSTEM = "urn:fhirpanel:live-test"
# Upload order: everything a resource refers to is in the same or an earlier transaction.
UPLOAD_ORDER = (
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "Encounter",
    "Condition",
)
WRITTEN_TYPES = ("Provenance", "CarePlan", "CareTeam", "RiskAssessment", "Group")
# Delete what refers before what is referred to (HAPI enforces referential integrity on delete).
DELETE_ORDER = (
    *WRITTEN_TYPES,
    "Condition",
    "Encounter",
    "Patient",
    "PractitionerRole",
    "Practitioner",
    "Organization",
)
UPLOAD_BATCH = 100
CLEANUP_SECONDS = 600.0
MAX_PAGES = 50


@dataclasses.dataclass
class LiveRun:
    run_id: str
    settings: Settings
    client: FhirClient
    resources: list[dict[str, Any]]  # what was uploaded (ids prefixed, tagged)

    @property
    def tag(self) -> str:
        return f"{LIVE_TAG_SYSTEM}|{self.run_id}"

    @property
    def written_tag(self) -> str:
        wb = self.settings.writeback
        return f"{wb.tag_system}|{wb.tag_code}"

    @property
    def patients(self) -> list[str]:
        return sorted(
            f"Patient/{r['id']}" for r in self.resources if r["resourceType"] == "Patient"
        )

    def count(self, rtype: str) -> int:
        return sum(1 for r in self.resources if r["resourceType"] == rtype)


class TaggedSource(ServerSource):
    """The server, narrowed to this run: whole-type reads search by the run's tag only."""

    def __init__(self, client: FhirClient, tag: str) -> None:
        super().__init__(client)
        self.tag = tag

    def read(self, resource_type: str) -> Iterator[Item]:
        yield from self.client.search(resource_type, [("_tag", self.tag)])


# --------------------------------------------------------------------------- population


def prefixed_population(tmp: Path, run_id: str) -> list[dict[str, Any]]:
    """The generator's population with every id and reference prefixed by the run id, tagged."""
    write_population(tmp, PATIENTS, SEED, AS_OF, malformed_rate=0.0)
    out: list[dict[str, Any]] = []
    for rtype in UPLOAD_ORDER:
        for line in (tmp / f"{rtype}.ndjson").read_bytes().splitlines():
            if not line.strip():
                continue
            resource = _prefix_references(orjson.loads(line), run_id)
            resource["id"] = f"{run_id}-{resource['id']}"
            meta = resource.setdefault("meta", {})
            meta["tag"] = [*meta.get("tag", []), {"system": LIVE_TAG_SYSTEM, "code": run_id}]
            out.append(resource)
    return out


def _prefix_references(value: Any, run_id: str) -> Any:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.split("/", 1)[0] in UPLOAD_ORDER and "/" in ref:
            rtype, rid = ref.split("/", 1)
            value = {**value, "reference": f"{rtype}/{run_id}-{rid}"}
        return {
            k: _prefix_references(v, run_id) if k != "reference" else v for k, v in value.items()
        }
    if isinstance(value, list):
        return [_prefix_references(v, run_id) for v in value]
    return value


def upload(run: LiveRun) -> None:
    """PUT by id: in transactions of UPLOAD_BATCH where the server offers them, else one by one."""
    if run.client.capabilities().transaction:
        for start in range(0, len(run.resources), UPLOAD_BATCH):
            chunk = run.resources[start : start + UPLOAD_BATCH]
            run.client.transaction(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {
                            "resource": r,
                            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                        }
                        for r in chunk
                    ],
                }
            )
    else:
        for resource in run.resources:
            run.client.update(resource)


def clean_up(run: LiveRun) -> list[str]:
    """Delete everything the run uploaded or wrote; return what could not be deleted."""
    deadline = time.monotonic() + CLEANUP_SECONDS
    targets: dict[str, set[str]] = {t: set() for t in DELETE_ORDER}
    for resource in run.resources:
        targets[resource["resourceType"]].add(resource["id"])
    leftovers: list[str] = []
    for rtype in WRITTEN_TYPES:
        try:
            targets[rtype] |= _ids(run.client, rtype, [("_tag", run.written_tag)])
        except FhirHttpError as exc:
            leftovers.append(f"{rtype}?_tag={run.written_tag} (search failed: {exc})")
    for rtype in DELETE_ORDER:
        for rid in sorted(targets[rtype]):
            if time.monotonic() > deadline:
                leftovers.append(f"{rtype}/{rid} (cleanup ran out of time)")
                continue
            try:
                run.client.request("DELETE", f"{rtype}/{rid}")
            except (NotFoundError, GoneError):
                pass  # never created, or gone already
            except FhirHttpError as exc:
                leftovers.append(f"{rtype}/{rid} ({exc})")
    # What is still findable by either tag (a delete the server accepted but did not do).
    for rtype in DELETE_ORDER:
        tag = run.written_tag if rtype in WRITTEN_TYPES else run.tag
        try:
            leftovers += [
                f"{rtype}/{rid} (still there)"
                for rid in sorted(_ids(run.client, rtype, [("_tag", tag)]))
            ]
        except FhirHttpError as exc:
            leftovers.append(f"{rtype}?_tag={tag} (check failed: {exc})")
    return leftovers


def _ids(client: FhirClient, rtype: str, params: Sequence[tuple[str, str]]) -> set[str]:
    return {str(r["id"]) for r in client.search(rtype, params) if isinstance(r.get("id"), str)}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    base = os.environ["FHIRPANEL_LIVE_FHIR_BASE"]
    run_id = f"fp{uuid.uuid4().hex[:10]}"
    loaded = Settings.load()  # fhir.auth and credentials from FHIRPANEL_FHIR_*, as in a run
    writeback = dataclasses.replace(
        loaded.writeback,
        identifier_system=f"urn:fhirpanel:live-test:{run_id}",
        tag_code=f"live-{run_id}",
        risk_assessment=True,
        attribution_group=True,
    )
    settings = dataclasses.replace(loaded, writeback=writeback).with_fhir(
        base_url=base, max_pages=MAX_PAGES, page_size=min(loaded.fhir.page_size, 100)
    )
    # The client sends Cache-Control: no-cache on searches, so HAPI's 60 s search cache does
    # not hide the first write-back from the second.
    client = FhirClient(settings.fhir)
    run = LiveRun(
        run_id,
        settings,
        client,
        prefixed_population(tmp_path_factory.mktemp("live-population"), run_id),
    )
    log.info("live run %s against %s: %d resources", run_id, base, len(run.resources))
    try:
        upload(run)
        yield run
    finally:
        leftovers = clean_up(run)
        client.close()
    assert not leftovers, f"the live suite left {len(leftovers)} resource(s): {leftovers[:20]}"


@pytest.fixture(scope="module")
def outcome(live: LiveRun) -> RunOutcome:
    population = read_population(TaggedSource(live.client, live.tag), patients=live.patients)
    return analyse(population, AS_OF, Tables.load(live.settings).method, source="live")


# --------------------------------------------------------------------------- scenarios


def test_server_check(live: LiveRun) -> None:
    check = check_server(live.settings.fhir.base_url, live.settings)
    log.info("check-server: %s", check.verdict())
    assert check.release in ("R4", "R4B")
    assert not [f for f in check.missing if f.area in ("read", "search", "write")], check.missing


def test_read_only_this_runs_patients(live: LiveRun, outcome: RunOutcome) -> None:
    pop = outcome.population
    assert sorted(pop.patients) == live.patients
    assert len(pop.encounters) == live.count("Encounter")
    assert len(pop.conditions) == live.count("Condition")
    assert len(pop.practitioners) == live.count("Practitioner")
    assert len(pop.roles) == live.count("PractitionerRole")
    assert len(pop.organizations) == live.count("Organization")
    assert not [i for i in pop.issues if isinstance(i, Issue) and i.action == "skipped"]


def test_attribution_matches_the_same_resources_read_from_memory(
    live: LiveRun, outcome: RunOutcome
) -> None:
    assigned = [a for a in outcome.attribution.assignments if a.status == "assigned"]
    assert assigned, "the synthetic population always has attributable patients"
    local = read_population(MemorySource(live.resources))
    expected = analyse(local, AS_OF, Tables.load(live.settings).method, source="live")
    server_report, local_report = build_report(outcome), build_report(expected)
    for key in ("patients", "panels", "summary"):
        assert server_report[key] == local_report[key], key


def test_write_back_then_a_second_pass_writes_nothing(live: LiveRun, outcome: RunOutcome) -> None:
    cfg = live.settings.writeback
    tables = Tables.load(live.settings).writeback
    first = write_back(outcome, live.client, cfg, dry_run=False, tables=tables)
    assert first.counts.total("failed") == 0, first.issues[:3]
    assert first.counts.get("CareTeam", "create") > 0 and first.written > 0
    teams = _ids(live.client, "CareTeam", [("identifier", f"{cfg.identifier_system}|")])
    assert len(teams) == first.counts.get("CareTeam", "create")

    second = write_back(outcome, live.client, cfg, dry_run=False, tables=tables)
    assert second.written == 0 and second.write_requests == 0, second.counts.as_dict()
    assert second.counts.total("unchanged") == first.written
