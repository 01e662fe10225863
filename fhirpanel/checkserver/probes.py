"""The requests `check-server` sends besides the statement: a count-only population search per
read type (and the read mode recommended from the answers), and the largest read transaction
the server accepts. None writes or returns patient data."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fhirpanel.checkserver.model import (
    READ_TYPES,
    Finding,
    PopulationProbe,
    Recommendation,
    Status,
)
from fhirpanel.config import Settings, WritebackSettings
from fhirpanel.errors import (
    FhirHttpError,
    SourceError,
)
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import (
    FhirClient,
    outcome_messages,
    redact_url,
)
from fhirpanel.fhir.referenced import refused_search
from fhirpanel.writeback.identity import identifier_token
from fhirpanel.writeback.plan import (
    MEDPLUM_MAX_STRICT_ENTRIES,
    MEDPLUM_MAX_UPDATES,
    entry_status,
    refusal_kind,
    response_problem,
)

# --------------------------------------------------------------------------- population searches

# Read types whose population search a run cannot do without (a roster replaces it); the
# others are read by reference when refused (fhir/referenced.py).
PATIENT_TYPES = ("Patient", "Encounter", "Condition")
VENDOR_PROFILES = (("epic", "epic"), ("cerner", "oracle"), ("millennium", "oracle"))


def probe_population_searches(client: FhirClient) -> dict[str, PopulationProbe]:
    """Whether the server runs a search that names no patient, per read type: one count-only
    request each (`_summary=count`: no resource is returned). 400, 403, 405 or 422 is a
    refusal (as Epic and Oracle Health answer one: docs/profiles.md)."""
    found: dict[str, PopulationProbe] = {}
    for rtype in READ_TYPES:
        try:
            response = client.request(
                "GET",
                rtype,
                params=[("_summary", "count")],
                headers={"Cache-Control": "no-cache"},
            )
        except FhirHttpError as exc:
            said = "; ".join(outcome_messages(exc.outcome or {}))[:120] or "no OperationOutcome"
            if exc.status == 401:
                found[rtype] = PopulationProbe("unknown", "HTTP 401: needs credentials")
            elif refused_search(exc):
                found[rtype] = PopulationProbe("refused", f"HTTP {exc.status}: {said}")
            else:
                found[rtype] = PopulationProbe("unknown", f"HTTP {exc.status}: {said}")
            continue
        except SourceError as exc:
            found[rtype] = PopulationProbe("unknown", str(exc)[:120])
            continue
        try:
            total = json.loads(response.content).get("total")
        except (ValueError, AttributeError):
            total = None
        shown = f" (total {total})" if isinstance(total, int) else ""
        found[rtype] = PopulationProbe("allowed", f"allowed{shown}")
    return found


def recommend(
    caps: ServerCapabilities, population: Mapping[str, PopulationProbe], url: str
) -> Recommendation:
    """The profile, read mode and source to use, from the software's name and the probes."""
    name = (caps.software_name or "").lower()
    vendor = next((p for key, p in VENDOR_PROFILES if key in name), "")
    software = vendor or ("hapi" if "hapi" in name else "medplum" if is_medplum(caps) else "")
    base = redact_url(url).rstrip("/")
    refused = [t for t, p in population.items() if p.state == "refused"]
    if any(t in refused for t in PATIENT_TYPES):
        profile = vendor or "generic"
        roster = f"--source {base} --roster Group/<ID> (or a CSV file of patient ids)"
        bulk = f"; full refreshes: bulk:{base}/Group/<ID>" if caps.export.group else ""
        setting = "" if vendor else " with fhir.read_mode = roster"
        return Recommendation(
            profile,
            "roster",
            roster + bulk,
            f"population searches of {', '.join(t for t in PATIENT_TYPES if t in refused)} "
            f"are refused: read by roster, profile {profile}{setting}",
        )
    profile = software or "generic"
    bulk = f" (or bulk:{base} for a Bulk export)" if caps.export.system else ""
    if refused:
        why = (
            f"population searches of {', '.join(refused)} are refused: fhirpanel reads them "
            "by the references in encounters and patients"
        )
    elif all(p.state == "allowed" for p in population.values()):
        why = "population searches are allowed: paged searches read everything"
    else:
        why = "could not tell whether population searches are allowed: try a population read"
    return Recommendation(profile, "population", f"--source {base}{bulk}", why)


def population_findings(
    population: Mapping[str, PopulationProbe], recommendation: Recommendation
) -> Iterable[Finding]:
    for rtype, probe in population.items():
        marks: dict[str, Status] = {"allowed": "yes", "refused": "no", "unknown": "unknown"}
        status = marks[probe.state]
        if probe.state != "refused":
            use = "paged search" if probe.state == "allowed" else "paged search, if allowed"
        elif rtype in PATIENT_TYPES:
            use = "refused: read by roster (--roster, fhir.roster), a batch of patients at a time"
        else:
            use = "refused: read by reference (Type?_id=a,b,c)"
        yield Finding("read mode", f"{rtype}? (population)", status, probe.detail, use)
    yield Finding(
        "read mode",
        "recommended",
        "yes",
        f"profile {recommendation.profile}, read mode {recommendation.read_mode}",
        f"{recommendation.why}: {recommendation.source}",
    )


# --------------------------------------------------------------------------- transaction size

# The search each probe entry sends: a count of CareTeams carrying fhirpanel's identifier system
# with a value fhirpanel never writes (its values are "<kind>.<id>"): no resource is returned,
# nothing is written, no patient data is read.
PROBE_TYPE = "CareTeam"
PROBE_VALUE = "fhirpanel-transaction-size-probe"
PROBE_MAX_TRIES = 12  # halving from any batch size a server will take ends well before this


def is_medplum(caps: ServerCapabilities) -> bool:
    """The CapabilityStatement's software name says Medplum (Medplum's server: "medplum")."""
    return "medplum" in (caps.software_name or "").lower()


def write_caveat(caps: ServerCapabilities) -> str:
    """What a read-only probe cannot tell about write transactions, and what a run does."""
    adapts = (
        "fhirpanel adapts on the first refusal (to the limit a refusal names when it "
        "knows the text, else halving) and the next run starts from the learned sizes"
    )
    if is_medplum(caps):
        return (
            f" Medplum, with transactions turned on, refuses a write transaction of more "
            f"than {MEDPLUM_MAX_UPDATES} updates, or of more than "
            f"{MEDPLUM_MAX_STRICT_ENTRIES} entries when one is conditional (fhirpanel's "
            f"creates are): expect {MEDPLUM_MAX_STRICT_ENTRIES} entries for creates and "
            f"{MEDPLUM_MAX_UPDATES} for updates; {adapts}."
        )
    return (
        f" Servers may cap write entries lower than reads (Medplum: {MEDPLUM_MAX_UPDATES} "
        f"updates, {MEDPLUM_MAX_STRICT_ENTRIES} entries when one is conditional), which "
        f"this read-only probe cannot see; {adapts}."
    )


@dataclass(frozen=True)
class TransactionProbe:
    """The largest transaction of read entries a server accepted (0: none), and what it said on
    the way. It says nothing about write entries, which a server may cap lower."""

    accepted: int
    refused: tuple[tuple[int, str], ...] = ()  # (entries, why), in the order tried
    problem: str = ""  # why the probe could not tell

    def finding(self, cfg: WritebackSettings, caps: ServerCapabilities) -> Finding:
        tried = "; ".join(f"{n} refused ({why})" for n, why in self.refused)
        caveat = write_caveat(caps)
        medplum = is_medplum(caps)
        if self.problem:
            return Finding(
                "write",
                "transaction size",
                "unknown",
                f"{tried + '; ' if tried else ''}{self.problem}",
                f"could not be probed: starts at {cfg.batch_size} entries.{caveat}",
            )
        if self.accepted == 0:
            return Finding(
                "write",
                "transaction size",
                "no",
                tried or "refused",
                "transactions refused: the run writes one request per resource "
                f"after the first refusal.{caveat}",
            )
        server = f"{self.accepted} read entries accepted" + (f"; {tried}" if tried else "")
        if medplum:
            server += (
                f"; write entries: Medplum's limits ({MEDPLUM_MAX_UPDATES} updates, "
                f"{MEDPLUM_MAX_STRICT_ENTRIES} with a conditional entry)"
            )
        if self.accepted >= cfg.batch_size:
            text = (
                f"read transactions of {cfg.batch_size} (writeback.batch_size) accepted; "
                f"not a promise for writes.{caveat}"
            )
            return Finding(
                "write", "transaction size", "partial" if medplum else "yes", server, text
            )
        text = (
            f"set writeback.batch_size = {self.accepted}: larger transactions are refused "
            f"even for reads (a run lowers its size on its own after the first "
            f"refusal).{caveat}"
        )
        return Finding("write", "transaction size", "partial", server, text)


def wants_transactions(caps: ServerCapabilities, settings: Settings, read_only: bool) -> bool:
    return not read_only and caps.transaction and settings.writeback.use_transactions


def probing(caps: ServerCapabilities, settings: Settings, read_only: bool) -> bool:
    return wants_transactions(caps, settings, read_only) and settings.writeback.probe_transactions


def probe_bundle(cfg: WritebackSettings, entries: int) -> dict[str, Any]:
    """A transaction of `entries` count-only searches for identifiers that never exist. Each
    entry asks for its own value: HAPI answers repeated searches from its cache and adds an
    `X-Cache` header per entry, and more than 100 headers break HTTP clients (http.client)."""

    def query(n: int) -> str:
        token = identifier_token(cfg, f"{PROBE_VALUE}-{n}")
        return f"identifier={quote(token, safe=':')}&_summary=count"

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": f"{PROBE_TYPE}?{query(n)}"}}
            for n in range(entries)
        ],
    }


def probe_transaction_size(client: FhirClient, cfg: WritebackSettings) -> TransactionProbe:
    """The largest transaction of read entries the server accepts, from writeback.batch_size
    down, halving on a refusal for size. Read-only: GET entries only, count-only searches for an
    identifier fhirpanel never writes; at most PROBE_MAX_TRIES requests. Never writes, so it
    cannot see limits on write entries (Medplum counts updates and conditional entries): the
    finding says so, and a run adapts on the first such refusal."""
    size = max(1, cfg.batch_size)
    refused: list[tuple[int, str]] = []
    for _ in range(PROBE_MAX_TRIES):
        try:
            answer = client.transaction(probe_bundle(cfg, size))
        except FhirHttpError as exc:
            why = "; ".join(outcome_messages(exc.outcome or {})) or str(exc)
            refused.append((size, f"HTTP {exc.status}: {' '.join(why.split())[:160]}"))
            if refusal_kind(exc.status, exc.outcome, str(exc)) == "size" and size > 1:
                size //= 2
                continue
            return TransactionProbe(0, tuple(refused))
        except SourceError as exc:
            return TransactionProbe(0, tuple(refused), f"no usable answer: {str(exc)[:160]}")
        problem = response_problem(answer, size)
        if problem is not None:
            return TransactionProbe(0, tuple(refused), f"answered oddly: {problem}")
        failed = [
            s for s in (entry_status(e) for e in answer["entry"]) if s is None or not 200 <= s < 300
        ]
        if failed:
            return TransactionProbe(
                size,
                tuple(refused),
                f"{size} entries accepted, but {len(failed)} entry answer(s) without a 2xx status",
            )
        return TransactionProbe(size, tuple(refused))
    return TransactionProbe(0, tuple(refused), "no size accepted")
