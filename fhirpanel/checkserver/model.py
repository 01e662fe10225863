"""The check's result: findings (one row each), the population probes' verdicts, the
recommended read mode, and what fhirpanel reads and writes (the lists the findings judge)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fhirpanel.errors import ExitCode
from fhirpanel.fhir.parse import RESOURCE_TYPES

Status = Literal["yes", "no", "partial", "unknown"]
Credentials = Literal["accepted", "refused", "not tried", "unconfirmed"]

# What a run reads (ingest.py READ_ORDER) and what write-back writes (writeback/writer.py).
READ_TYPES = RESOURCE_TYPES
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
