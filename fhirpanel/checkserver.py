"""What a FHIR server declares that fhirpanel uses, and what fhirpanel does where something is
missing: the checks behind `fhirpanel check-server URL` (fhirpanel.commands.check_server).

Reads `/metadata` (the CapabilityStatement) and `.well-known/smart-configuration` without
credentials: the FHIR RESTful API (capabilities interaction) and SMART App Launch (discovery) both
make them public. When credentials are configured (`fhir.auth`), one count-only Patient search
shows whether the server accepts them. Exits 15 (`ExitCode.CAPABILITY`) when something fhirpanel
cannot work without is missing, 11 when the credentials are refused, 2 when the credential
settings cannot even be tried; a URL where no FHIR server answers is a SourceError (10).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from fhirpanel.config import Settings, WritebackSettings
from fhirpanel.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    FhirHttpError,
    NotFoundError,
    SourceError,
    TransportError,
)
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import (
    FhirClient,
    NoAuth,
    auth_from_settings,
    outcome_messages,
    redact_url,
)
from fhirpanel.fhir.referenced import refused_search
from fhirpanel.writeback.identity import identifier_token
from fhirpanel.writeback.plan import (
    MEDPLUM_LIMITS,
    MEDPLUM_MAX_STRICT_ENTRIES,
    MEDPLUM_MAX_UPDATES,
    entry_status,
    refusal_kind,
    response_problem,
)

Status = Literal["yes", "no", "partial", "unknown"]
Credentials = Literal["accepted", "refused", "not tried", "unconfirmed"]

# What a run reads (ingest.py READ_ORDER) and what write-back writes (writeback/writer.py).
READ_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "Practitioner",
    "PractitionerRole",
    "Organization",
)
WRITE_TYPES = ("CareTeam", "CarePlan")
# Optional writes and the WritebackSettings flag that turns each on.
OPTIONAL_WRITES = (
    ("RiskAssessment", "risk_assessment"),
    ("Group", "attribution_group"),
    ("Provenance", "provenance"),
)
# FHIR R4 search, "Parameters for all resources": servers often leave them out of the statement.
COMMON_PARAMS = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True)
class ParamUse:
    """A search parameter fhirpanel sends, where, and whether reading cannot do without it."""

    rtype: str
    name: str
    use: str
    required: bool = False


# The parameters actually sent (fhir/source.py ServerSource.read_for_patients, fhir/client/rest.py
# search_since). `_count` and `_summary` are result parameters, never listed per resource.
READ_PARAMS = (
    ParamUse("Patient", "_id", "a batch of patients: Patient?_id=a,b,…"),
    ParamUse(
        "Encounter", "patient", "a patient's visits: Encounter?patient=Patient/a,…", required=True
    ),
    ParamUse(
        "Condition",
        "patient",
        "a patient's conditions: Condition?patient=Patient/a,…",
        required=True,
    ),
    ParamUse("Patient", "_lastUpdated", "incremental refresh: Patient?_lastUpdated=gt…"),
    ParamUse("Encounter", "_lastUpdated", "incremental refresh: Encounter?_lastUpdated=gt…"),
    ParamUse("Condition", "_lastUpdated", "incremental refresh: Condition?_lastUpdated=gt…"),
)


@dataclass(frozen=True)
class Finding:
    """One row of the check: what the server declares and what fhirpanel makes of it."""

    area: str
    name: str
    status: Status
    server: str
    fhirpanel: str
    required: bool = False

    @property
    def blocking(self) -> bool:
        return self.required and self.status in ("no", "partial")


@dataclass
class ServerCheck:
    url: str
    fhir_version: str
    release: str
    software: str
    read_only: bool
    findings: list[Finding] = field(default_factory=list)
    smart_configuration: dict[str, Any] | None = None
    credentials: Credentials | None = None  # None: fhir.auth = none
    # The largest transaction of read entries accepted (None: not probed). Write entries may be
    # capped lower, which a read-only probe cannot see.
    transaction_size: int | None = None
    # Write limits known for this server's software (Medplum's, with transactions turned on):
    # entries per transaction with a conditional entry ("conditional") and without ("plain").
    write_limits: dict[str, int] | None = None
    # Per read type, whether a count-only population search was allowed, refused or could not
    # be told (empty: not probed), and the read mode, profile and source recommended from it.
    population: dict[str, str] = field(default_factory=dict)
    recommendation: Recommendation | None = None

    @property
    def missing(self) -> list[Finding]:
        return [f for f in self.findings if f.blocking]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def exit_code(self) -> int:
        if self.credentials == "refused":
            return ExitCode.AUTH
        if self.credentials == "not tried":
            return ExitCode.USAGE
        return ExitCode.CAPABILITY if self.missing else ExitCode.OK

    def verdict(self) -> str:
        if self.credentials == "refused":
            return "fhirpanel cannot work with this server: it refused the configured credentials"
        if self.credentials == "not tried":
            return "fhirpanel cannot work with these settings: the credentials are not usable"
        if self.missing:
            names = ", ".join(f"{f.area} {f.name}" for f in self.missing)
            return f"fhirpanel cannot work with this server: missing {names}"
        mode = "read only" if self.read_only else "read and write back"
        verdict = f"fhirpanel can work with this server ({mode})"
        if self.recommendation is not None and self.recommendation.read_mode == "roster":
            verdict += (
                f"; population searches are refused: read by roster (fhir.read_mode = roster, "
                f"profile {self.recommendation.profile})"
            )
        return verdict

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "fhir_version": self.fhir_version,
            "release": self.release,
            "software": self.software,
            "read_only": self.read_only,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "verdict": self.verdict(),
            "missing": [f"{f.area} {f.name}" for f in self.missing],
            "credentials": self.credentials,
            "transaction_size": self.transaction_size,
            "transaction_write_limits": self.write_limits,
            "findings": [{**asdict(f), "blocking": f.blocking} for f in self.findings],
            "smart_configuration": self.smart_configuration,
            "population_search": dict(self.population),
            "recommendation": asdict(self.recommendation) if self.recommendation else None,
        }


# --------------------------------------------------------------------------- fetching


def check_server(url: str, settings: Settings, *, read_only: bool = False) -> ServerCheck:
    """Fetch what the server declares and judge it against what fhirpanel uses; when writing
    back in transactions, probe the largest transaction it accepts (`probe_transaction_size`)."""
    fhir = settings.with_fhir(base_url=url).fhir
    probe: TransactionProbe | None = None
    population: dict[str, PopulationProbe] = {}
    with FhirClient(fhir, auth=NoAuth()) as public:
        try:
            caps = _capabilities(public, url)
        except AuthError:
            caps = None  # some servers protect /metadata too: try with the credentials below
        smart_config, smart_note = _smart_configuration(public)
        if fhir.auth == "none" and caps is not None and _probing(caps, settings, read_only):
            probe = probe_transaction_size(public, settings.writeback)
        if fhir.auth == "none" and caps is not None:
            population = probe_population_searches(public)
    credentials: tuple[Finding, Credentials] | None = None
    if fhir.auth != "none":
        try:
            auth = auth_from_settings(fhir)
        except ConfigError as exc:
            if caps is None:
                raise
            credentials = _credentials_unusable(fhir.auth, exc)
        else:
            with FhirClient(fhir, auth=auth) as private:
                if caps is None:
                    caps = _capabilities(private, url)
                credentials = _probe_credentials(private, fhir.auth)
                usable = credentials[1] in ("accepted", "unconfirmed")
                if usable and _probing(caps, settings, read_only):
                    probe = probe_transaction_size(private, settings.writeback)
                if usable:
                    population = probe_population_searches(private)
    if caps is None:
        raise AuthError(
            401,
            "the server asks for credentials even for /metadata; configure "
            "fhir.auth (see fhirpanel.example.toml) and check again",
            url=redact_url(url.rstrip("/") + "/metadata"),
        )
    check = ServerCheck(
        url=redact_url(url),
        fhir_version=caps.fhir_version or "not stated",
        release=caps.release,
        software=" ".join(p for p in (caps.software_name, caps.software_version) if p)
        or "not stated",
        read_only=read_only,
        smart_configuration=smart_config,
        credentials=credentials[1] if credentials else None,
        transaction_size=probe.accepted if probe is not None else None,
        write_limits=dict(MEDPLUM_LIMITS) if is_medplum(caps) else None,
    )
    check.findings.extend(
        judge(caps, settings, read_only=read_only, smart_config=smart_config, smart_note=smart_note)
    )
    if probe is not None:
        check.findings.append(probe.finding(settings.writeback, caps))
    elif (
        _wants_transactions(caps, settings, read_only) and not settings.writeback.probe_transactions
    ):
        check.findings.append(
            Finding(
                "write",
                "transaction size",
                "unknown",
                "not probed",
                f"off (writeback.probe_transactions = false): starts at "
                f"{settings.writeback.batch_size} entries.{write_caveat(caps)}",
            )
        )
    if credentials is not None:
        check.findings.append(credentials[0])
    if population:
        check.population = {t: p.state for t, p in population.items()}
        check.recommendation = recommend(caps, population, url)
        check.findings.extend(population_findings(population, check.recommendation))
    return check


# --------------------------------------------------------------------------- population searches

# Read types whose population search a run cannot do without (a roster replaces it); the
# others are read by reference when refused (fhir/referenced.py).
PATIENT_TYPES = ("Patient", "Encounter", "Condition")
VENDOR_PROFILES = (("epic", "epic"), ("cerner", "oracle"), ("millennium", "oracle"))


@dataclass(frozen=True)
class PopulationProbe:
    """One count-only population search (`Type?_summary=count`): allowed, refused or unknown."""

    state: Literal["allowed", "refused", "unknown"]
    detail: str


@dataclass(frozen=True)
class Recommendation:
    profile: str
    read_mode: Literal["population", "roster"]
    source: str
    why: str


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


def _wants_transactions(caps: ServerCapabilities, settings: Settings, read_only: bool) -> bool:
    return not read_only and caps.transaction and settings.writeback.use_transactions


def _probing(caps: ServerCapabilities, settings: Settings, read_only: bool) -> bool:
    return _wants_transactions(caps, settings, read_only) and settings.writeback.probe_transactions


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


def _capabilities(client: FhirClient, url: str) -> ServerCapabilities:
    where = redact_url(url)
    try:
        return client.capabilities()
    except AuthError:
        raise
    except TransportError as exc:
        raise SourceError(f"cannot reach a FHIR server at {where}: {exc}") from exc
    except NotFoundError as exc:
        raise SourceError(
            f"no FHIR /metadata at {where} (HTTP 404): is it the FHIR base URL?"
        ) from exc
    except FhirHttpError as exc:
        raise SourceError(
            f"{where}/metadata did not answer with a CapabilityStatement: {exc}"
        ) from exc
    except SourceError as exc:  # not JSON, or JSON that is not a CapabilityStatement
        raise SourceError(f"{where} does not look like a FHIR server: {exc}") from exc


def _smart_configuration(client: FhirClient) -> tuple[dict[str, Any] | None, str]:
    """The SMART discovery document (SMART App Launch 2.x, "Conformance"), or why there is none."""
    try:
        response = client.request(
            "GET", ".well-known/smart-configuration", headers={"Accept": "application/json"}
        )
    except FhirHttpError as exc:
        return None, f"none (HTTP {exc.status})"
    except SourceError as exc:
        return None, f"could not be read ({str(exc)[:120]})"
    try:
        data = json.loads(response.content)
    except ValueError:
        return None, "not JSON"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, "found"


def _credentials_name(auth: str) -> str:
    return f"credentials (fhir.auth = {auth})"


def _credentials_unusable(auth: str, exc: ConfigError) -> tuple[Finding, Credentials]:
    return Finding(
        "auth",
        _credentials_name(auth),
        "no",
        f"not tried: {exc}",
        "fix the fhir.* settings before a run",
        required=True,
    ), "not tried"


def _probe_credentials(client: FhirClient, auth: str) -> tuple[Finding, Credentials]:
    """One authenticated search that returns a count only (no resource content)."""
    name = _credentials_name(auth)
    try:
        try:
            client.request("GET", "Patient", params=[("_summary", "count")])
        except AuthError as exc:
            if exc.status != 403:
                raise
            # A server that refuses population searches answers 403 to this one whatever the
            # credentials: a count for one (made-up) patient tells them apart.
            client.request(
                "GET",
                "Encounter",
                params=[("patient", "fhirpanel-credentials-probe"), ("_summary", "count")],
            )
            return Finding(
                "auth",
                name,
                "yes",
                "accepted (Encounter?patient=…&_summary=count; Patient?_summary=count refused)",
                "reads and writes with these credentials",
            ), "accepted"
    except AuthError as exc:
        return Finding(
            "auth",
            name,
            "no",
            f"refused: {exc}",
            "cannot read: fix the credentials before a run",
            required=True,
        ), "refused"
    except ConfigError as exc:  # SMART: no token endpoint found, a key that does not fit
        return _credentials_unusable(auth, exc)
    except (FhirHttpError, SourceError) as exc:
        return Finding(
            "auth",
            name,
            "unknown",
            f"not confirmed: {str(exc)[:160]}",
            "a count-only Patient search failed for another reason",
        ), "unconfirmed"
    return Finding(
        "auth",
        name,
        "yes",
        "accepted (Patient?_summary=count)",
        "reads and writes with these credentials",
    ), "accepted"


# --------------------------------------------------------------------------- judging


def judge(
    caps: ServerCapabilities,
    settings: Settings,
    *,
    read_only: bool = False,
    smart_config: Mapping[str, Any] | None = None,
    smart_note: str = "none",
) -> list[Finding]:
    """Every finding, pure: the statement, the SMART document and the settings in, rows out."""
    return [
        *_server_findings(caps),
        *_read_findings(caps),
        *_write_findings(caps, settings.writeback, read_only),
        *_bulk_findings(caps, settings),
        *_subscription_findings(caps, settings),
        *_smart_findings(caps, settings, smart_config, smart_note),
    ]


def _server_findings(caps: ServerCapabilities) -> Iterable[Finding]:
    version = f"{caps.fhir_version or 'not stated'} ({caps.release})"
    if caps.is_r4_family:
        yield Finding(
            "server", "FHIR version", "yes", version, "reads and writes FHIR R4", required=True
        )
    else:
        yield Finding(
            "server",
            "FHIR version",
            "no",
            version,
            "cannot work: fhirpanel reads and writes FHIR R4 (4.0.x) or R4B",
            required=True,
        )
    formats = [f.lower() for f in caps.formats]
    if not formats or any("json" in f for f in formats):
        yield Finding(
            "server",
            "JSON format",
            "yes" if formats else "unknown",
            ", ".join(caps.formats) or "not stated",
            "sends and reads FHIR JSON",
        )
    else:
        yield Finding(
            "server",
            "JSON format",
            "no",
            ", ".join(caps.formats),
            "cannot work: fhirpanel speaks FHIR JSON only",
            required=True,
        )


def _interactions(caps: ServerCapabilities, rtype: str, wanted: Sequence[str]) -> str:
    resource = caps.resources.get(rtype)
    if resource is None:
        return "not listed"
    have = [i for i in wanted if i in resource.interactions]
    lacking = [i for i in wanted if i not in resource.interactions]
    text = ", ".join(have) or "none of " + ", ".join(wanted)
    return f"{text}; no {', '.join(lacking)}" if have and lacking else text


def _read_findings(caps: ServerCapabilities) -> Iterable[Finding]:
    for rtype in READ_TYPES:
        searchable = caps.supports(rtype, "search-type")
        yield Finding(
            "read",
            rtype,
            "yes" if searchable else "no",
            _interactions(caps, rtype, ("search-type", "read")),
            "paged search (_count = fhir.page_size)"
            if searchable
            else "cannot work: every run searches this type",
            required=True,
        )
    for use in READ_PARAMS:
        declared = caps.supports_search_param(use.rtype, use.name)
        name = f"{use.rtype}?{use.name}"
        if declared:
            yield Finding("search", name, "yes", "declared", use.use, required=use.required)
        elif use.name in COMMON_PARAMS:
            yield Finding(
                "search",
                name,
                "unknown",
                "not declared",
                f"{use.use}; a parameter FHIR defines for every type, sent anyway",
            )
        else:
            yield Finding(
                "search",
                name,
                "no",
                "not declared",
                f"cannot read a patient's data: {use.use}",
                required=use.required,
            )


def _create_strategy(caps: ServerCapabilities, rtype: str, cfg: WritebackSettings) -> str:
    """The same choice as the writer's `_Session._create_strategy` (writeback/writer.py)."""
    if cfg.use_conditional_update and caps.conditional_update(rtype):
        return "conditional-update"
    resource = caps.resources.get(rtype)
    if resource is not None and resource.conditional_create:
        return "conditional-create"
    return "search-then-create"


_STRATEGY_TEXT = {
    "conditional-update": "creates with PUT {t}?identifier=… (conditional update)",
    "conditional-create": "creates with POST and If-None-Exist (conditional create)",
    "search-then-create": "searches by identifier, then POST (keep one writer: concurrent runs "
    "could duplicate)",
}


def _written_types(cfg: WritebackSettings, read_only: bool) -> list[tuple[str, str | None, bool]]:
    """(type, the setting that turns it on or None, written on this configuration)."""
    rows: list[tuple[str, str | None, bool]] = [(t, None, not read_only) for t in WRITE_TYPES]
    rows += [(t, flag, not read_only and bool(getattr(cfg, flag))) for t, flag in OPTIONAL_WRITES]
    return rows


def _write_findings(
    caps: ServerCapabilities, cfg: WritebackSettings, read_only: bool
) -> Iterable[Finding]:
    written = _written_types(cfg, read_only)
    for rtype, flag, used in written:
        provenance = rtype == "Provenance"
        needed = ("create",) if provenance else ("search-type", "create", "update")
        supported = all(caps.supports(rtype, i) for i in needed)
        server = _interactions(caps, rtype, needed)
        required = used and not provenance
        if not used:
            why = "--read-only" if read_only else f"writeback.{flag} = false"
            yield Finding(
                "write", rtype, "yes" if supported else "no", server, f"not written ({why})"
            )
        elif supported and provenance:
            yield Finding("write", rtype, "yes", server, "one Provenance per write batch")
        elif provenance:
            yield Finding(
                "write",
                rtype,
                "no",
                server,
                "each batch's Provenance is skipped and listed as an issue; "
                "set writeback.provenance = false",
            )
        elif supported:
            text = _STRATEGY_TEXT[_create_strategy(caps, rtype, cfg)].format(t=rtype)
            versioning = caps.resources[rtype].versioning
            text += "; updates PUT with If-Match"
            if versioning != "versioned-update":
                text += f" (the server does not promise to honour it: versioning {versioning})"
            yield Finding("write", rtype, "yes", server, text, required=required)
        else:
            how = f"turn writeback.{flag} off" if flag else "run with --dry-run or --read-only"
            yield Finding(
                "write", rtype, "no", server, f"cannot write back {rtype}: {how}", required=required
            )
        if not provenance:
            declared = caps.supports_search_param(rtype, "identifier")
            yield Finding(
                "write",
                f"{rtype}?identifier",
                "yes" if declared else "no",
                "declared" if declared else "not declared",
                (
                    "finds what fhirpanel wrote before (idempotent runs)"
                    if declared
                    else "cannot find what fhirpanel wrote: every run would create duplicates"
                )
                if used
                else "not needed (not written)",
                required=required,
            )
    yield from _write_mode_findings(
        caps, cfg, [t for t, _, used in written if used and t != "Provenance"]
    )


def _write_mode_findings(
    caps: ServerCapabilities, cfg: WritebackSettings, types: Sequence[str]
) -> Iterable[Finding]:
    def declaring(test: Any) -> list[str]:
        return [t for t in types if test(t)]

    updates = declaring(caps.conditional_update)
    creates = declaring(lambda t: t in caps.resources and caps.resources[t].conditional_create)
    listed = [t for t in (*WRITE_TYPES, *(t for t, _ in OPTIONAL_WRITES)) if t != "Provenance"]
    all_updates = [t for t in listed if caps.conditional_update(t)]
    all_creates = [
        t for t in listed if t in caps.resources and caps.resources[t].conditional_create
    ]
    if not types:
        yield Finding(
            "write",
            "conditional update",
            _share(all_updates, listed),
            _names(all_updates),
            "not needed (nothing is written)",
        )
        yield Finding(
            "write",
            "conditional create",
            _share(all_creates, listed),
            _names(all_creates),
            "not needed (nothing is written)",
        )
    else:
        lacking = [t for t in types if t not in updates]
        if not cfg.use_conditional_update:
            text = "off (writeback.use_conditional_update = false): creates use the fallbacks"
        elif not lacking:
            text = "new resources are created idempotently with PUT Type?identifier=…"
        else:
            text = (
                f"{', '.join(lacking)}: conditional create where declared, else search by "
                "identifier then POST"
            )
        yield Finding("write", "conditional update", _share(updates, types), _names(updates), text)
        fallback = [t for t in types if _create_strategy(caps, t, cfg) != "conditional-update"]
        if not fallback:
            text = "not needed (conditional update is used)"
        elif all(t in creates for t in fallback):
            text = f"used for {', '.join(fallback)} instead of conditional update"
        else:
            bare = [t for t in fallback if t not in creates]
            text = (
                f"{', '.join(bare)}: search by identifier, then POST (keep one writer: "
                "concurrent runs could duplicate)"
            )
        yield Finding("write", "conditional create", _share(creates, types), _names(creates), text)
    if not types:
        text = "not needed (nothing is written)"
    elif not caps.transaction:
        text = "one request per resource (more requests, the same result)"
    elif not cfg.use_transactions:
        text = "off (writeback.use_transactions = false): one request per resource"
    else:
        text = (
            f"writes in transaction Bundles of up to {cfg.batch_size}; one refused as too "
            "large lowers the size of its kind (with or without conditional entries) for "
            "the rest of the run, straight to the limit the refusal names when fhirpanel "
            "knows it (Medplum's), else by half; one refused whole for a version conflict "
            "is re-read and sent again once; any other is retried entry by entry"
        )
    yield Finding(
        "write",
        "transaction",
        "yes" if caps.transaction else "no",
        "declared" if caps.transaction else "not declared",
        text,
    )
    yield Finding(
        "write",
        "batch",
        "yes" if caps.batch else "no",
        "declared" if caps.batch else "not declared",
        "not used: fhirpanel sends transactions or single requests",
    )


def _share(have: Sequence[str], of: Sequence[str]) -> Status:
    if not of:
        return "unknown"
    if len(have) == len(of):
        return "yes"
    return "partial" if have else "no"


def _names(types: Sequence[str]) -> str:
    return ", ".join(types) if types else "none"


def _bulk_findings(caps: ServerCapabilities, settings: Settings) -> Iterable[Finding]:
    export = caps.export
    source = settings.scheduler.source
    # fhir/bulk.py exports a Group for `bulk:BASE/Group/ID` or bulk.group_id, else the system.
    group_id = settings.bulk.group_id or (
        source.rsplit("/Group/", 1)[-1].split("/")[0] if "/Group/" in source else ""
    )
    bulk_source = source.startswith("bulk:")  # the worker reads with $export
    fallback = "`bulk:` sources unavailable here: fhirpanel reads with paged searches"
    if export.system:
        text = (
            "`--source bulk:BASE` exports with $export"
            if not group_id
            else f"available; the configured export is Group/{group_id}"
        )
    else:
        text = fallback
    yield Finding(
        "bulk",
        "$export (system)",
        "yes" if export.system else "no",
        "declared" if export.system else "not declared",
        text,
        required=bulk_source and not group_id,
    )
    yield Finding(
        "bulk",
        "$export (Patient)",
        "yes" if export.patient else "no",
        "declared" if export.patient else "not declared",
        "not used: fhirpanel exports at system or Group level",
    )
    if export.group:
        text = (
            f"exports Group/{group_id}"
            if group_id
            else "`--source bulk:BASE/Group/ID` exports one Group"
        )
    else:
        text = f"cannot export Group/{group_id}: {fallback}" if group_id else fallback
    yield Finding(
        "bulk",
        "$export (Group)",
        "yes" if export.group else "no",
        "declared" if export.group else "not declared",
        text,
        required=bulk_source and bool(group_id),
    )


def _subscription_findings(caps: ServerCapabilities, settings: Settings) -> Iterable[Finding]:
    sched = settings.scheduler
    polling = f"the worker polls Encounter?_lastUpdated=gt… every {sched.incremental_minutes:g} min"
    if not caps.subscriptions_rest_hook:
        text = polling
    elif sched.subscriptions:
        text = "the worker registers an Encounter rest-hook Subscription (scheduler.subscriptions)"
    else:
        text = f"off (scheduler.subscriptions = false): {polling}"
    yield Finding(
        "subscriptions",
        "rest-hook Subscription",
        "yes" if caps.subscriptions_rest_hook else "no",
        "Subscription create declared"
        if caps.subscriptions_rest_hook
        else "no Subscription create",
        text,
    )
    if caps.subscription_topics:
        yield Finding(
            "subscriptions",
            "topics (R5 backport)",
            "yes",
            f"{len(caps.subscription_topics)} topic(s)",
            "not used: fhirpanel subscribes with R4 criteria",
        )


def _listed(config: Mapping[str, Any] | None, key: str) -> list[str] | None:
    value = config.get(key) if config is not None else None
    return [str(v) for v in value] if isinstance(value, list) else None


def _smart_findings(
    caps: ServerCapabilities, settings: Settings, config: Mapping[str, Any] | None, note: str
) -> Iterable[Finding]:
    fhir = settings.fhir
    smart = fhir.auth == "smart"
    unused = f"not used (fhir.auth = {fhir.auth})"
    declared = caps.smart.declared
    where = (
        ".well-known/smart-configuration"
        if config is not None
        else "CapabilityStatement only"
        if declared
        else f".well-known: {note}"
    )
    yield Finding(
        "smart",
        "SMART configuration",
        "yes" if config is not None or declared else "no",
        where,
        "discovers the token endpoint" if smart else unused,
    )
    token = (config or {}).get("token_endpoint") or caps.smart.token_url
    token_text = redact_url(str(token)) if token else "not stated"
    if fhir.smart_token_url:
        use = f"uses fhir.smart_token_url ({redact_url(fhir.smart_token_url)})"
    else:
        use = "requests tokens there" if token else "cannot get tokens: set fhir.smart_token_url"
    yield Finding(
        "smart",
        "token endpoint",
        "yes" if token else "no",
        token_text,
        use if smart else unused,
        required=smart and not fhir.smart_token_url,
    )
    checks = (
        (
            "client_credentials grant",
            "grant_types_supported",
            "client_credentials",
            "SMART Backend Services: a client-credentials grant",
        ),
        (
            "private_key_jwt",
            "token_endpoint_auth_methods_supported",
            "private_key_jwt",
            "authenticates with a signed JWT assertion",
        ),
        (
            f"{fhir.smart_algorithm} signatures",
            "token_endpoint_auth_signing_alg_values_supported",
            fhir.smart_algorithm,
            f"signs the assertion with {fhir.smart_algorithm} (fhir.smart_algorithm)",
        ),
    )
    for name, key, wanted, use in checks:
        values = _listed(config, key)
        if values is None:
            yield Finding("smart", name, "unknown", f"{key} not stated", use if smart else unused)
        elif wanted in values:
            yield Finding(
                "smart", name, "yes", ", ".join(values), use if smart else unused, required=smart
            )
        else:
            yield Finding(
                "smart",
                name,
                "no",
                ", ".join(values) or "none",
                f"cannot authenticate: {use}" if smart else unused,
                required=smart,
            )
    capabilities = _listed(config, "capabilities")
    permission = f"permission-{fhir.smart_scope_version}"
    scopes = "system/Patient.read" if fhir.smart_scope_version == "v1" else "system/Patient.rs"
    use = f"asks for {fhir.smart_scope_version} scopes ({scopes}, …)"
    if capabilities is None or not any(c.startswith("permission-") for c in capabilities):
        yield Finding("smart", "scope syntax", "unknown", "not stated", use if smart else unused)
    else:
        have = [c for c in capabilities if c.startswith("permission-")]
        other = "v2" if fhir.smart_scope_version == "v1" else "v1"
        yield Finding(
            "smart",
            "scope syntax",
            "yes" if permission in have else "no",
            ", ".join(have),
            (use if permission in have else f"set fhir.smart_scope_version = {other}")
            if smart
            else unused,
        )


# --------------------------------------------------------------------------- output

_MARKS: dict[Status, str] = {"yes": "yes", "no": "NO", "partial": "partly", "unknown": "?"}


def render(check: ServerCheck, console: Console) -> None:
    console.print(
        f"[bold]{check.url}[/bold]: {check.software}, FHIR {check.fhir_version} ({check.release})",
        highlight=False,
    )
    table = Table(show_lines=False, pad_edge=False)
    table.add_column("area")
    table.add_column("capability")
    table.add_column("ok", justify="center")
    table.add_column("server says")
    table.add_column("fhirpanel")
    previous = ""
    for f in check.findings:
        style = (
            "red"
            if f.blocking
            else "yellow"
            if f.status in ("no", "partial")
            else "dim"
            if f.status == "unknown"
            else ""
        )
        mark = _MARKS[f.status] + (" (required)" if f.blocking else "")
        table.add_row(
            f.area if f.area != previous else "",
            f.name,
            mark,
            f.server,
            f.fhirpanel,
            style=style or None,
        )
        previous = f.area
    console.print(table)
    if check.recommendation is not None:
        rec = check.recommendation
        console.print(
            f"Recommended: profile {rec.profile} (fhir.profile), read mode {rec.read_mode}: "
            f"{rec.source}",
            highlight=False,
            soft_wrap=True,
        )
    colour = "green" if check.ok else "red"
    console.print(f"[{colour}]{check.verdict()}[/{colour}]", highlight=False)
