"""Typed settings, read once from an optional TOML file and the environment, then passed down.

Every setting has a TOML key `[section] key` and an environment variable
`FHIRPANEL_<SECTION>_<KEY>` (upper case); the environment wins. Secrets (tokens, passwords) are
excluded from `repr` so they never reach a log line.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fhirpanel.errors import ConfigError

ENV_PREFIX = "FHIRPANEL_"
DEFAULT_DATABASE_URL = "sqlite:///var/fhirpanel.db"


@dataclass(frozen=True)
class FhirSettings:
    base_url: str = ""
    auth: Literal["none", "bearer", "basic", "smart"] = "none"
    token: str = field(default="", repr=False)
    token_file: str = ""  # read the bearer token from this file instead
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    # SMART Backend Services (auth = "smart"): a client-credentials grant with a JWT assertion.
    smart_client_id: str = ""
    smart_key_file: str = ""  # PEM private key; or the key itself in smart_private_key
    smart_private_key: str = field(default="", repr=False)
    smart_key_id: str = ""  # the `kid` of the key in the JWKS registered with the EHR
    smart_algorithm: Literal["RS384", "ES384"] = "RS384"
    smart_scope_version: Literal["v1", "v2"] = "v1"  # system/Patient.read vs system/Patient.rs
    smart_scopes: str = ""  # empty: read and write scopes for the types fhirpanel uses
    smart_token_url: str = ""  # empty: discovered from .well-known/smart-configuration
    page_size: int = 200  # HAPI's public server caps _count at 500
    patient_batch: int = 50  # ids per `patient=a,b,c` search
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 5
    backoff_factor: float = 0.5  # seconds; doubles each try, with jitter
    backoff_max: float = 30.0
    retry_budget_seconds: float = 300.0  # all retries of one request, waits included
    max_pages: int = 100_000  # a bound on any paging loop
    strict_search: bool = True  # send Prefer: handling=strict
    verify_tls: bool = True
    user_agent: str = "fhirpanel/0.1"
    # Paging links (and Bulk status/file URLs) on another origin than base_url are refused unless
    # their origin is listed here (comma-separated `scheme://host[:port]`; followed as given, with
    # our credentials) or rewrite_foreign_links is on (sent to base_url's scheme, host and port
    # with the link's own path and query: fhir/client/links.py `resolve_link`).
    trusted_link_origins: str = ""
    rewrite_foreign_links: bool = False
    # A server profile sets the choices below (and a few in [writeback], [bulk], [scheduler]) that
    # are not set explicitly: PROFILES, docs/profiles.md.
    profile: Literal["generic", "hapi", "medplum", "epic", "oracle"] = "generic"
    # population: paged searches of every type. roster: the patients come from `roster`, their
    # Patient, Encounter and Condition are searched a batch of patients at a time, clinicians and
    # organisations read by the references to them (docs/profiles.md).
    read_mode: Literal["population", "roster"] = "population"
    roster: str = ""  # `Group/ID`, or a CSV file of patient ids or `system|value` identifiers
    roster_concurrency: int = 4  # roster and reference reads in flight at once
    max_url_length: int = 4000  # a batch of ids is cut so its search URL stays within this
    # Roster reads ask every encounter ("none"), or Encounter?date=ge<as-of minus the longest
    # look-back the pass decides with> ("window": the decisions are the same, but a date older
    # than the floor, such as an outreach entry's last sentinel exam, is not known).
    encounter_floor: Literal["none", "window"] = "none"
    # What the incremental pass polls per roster batch: `_lastUpdated=gt<watermark>` on Patient,
    # Encounter and Condition, or `date=ge<watermark day>` on Encounter only (servers without
    # `_lastUpdated`).
    roster_poll: Literal["_lastUpdated", "date"] = "_lastUpdated"


@dataclass(frozen=True)
class AttributionSettings:
    pipeline: str = "pipelines/mgma"  # a file under mappings/, or a path to a TOML file
    qualifying_visits: str = "qualifying_visits"
    sentinel_exams: str = "sentinel_exams"
    primary_care: str = "primary_care"
    capacity: str = "capacity"
    teams: str = "teams"  # care teams (mappings/teams.toml)
    outreach_not_seen_months: int = 12
    outreach_sentinel_months: int = 24
    # The payer's member list the `risk-product` step follows: a Da Vinci ATR Group as JSON, a
    # `Group/ID` on the FHIR server, or a `patient,practitioner` CSV (docs/methods.md s.2.3).
    risk_product_list: str = ""


@dataclass(frozen=True)
class RiskSettings:
    charlson_weights: Literal["charlson1987", "quan2011"] = "charlson1987"
    charlson_age_points: bool = False
    hcc_model: Literal["V24", "V28"] = "V28"
    hcc_segment: str = "CNA"  # community, non-dual, aged
    tiers: str = "tiers"


@dataclass(frozen=True)
class WritebackSettings:
    identifier_system: str = "urn:fhirpanel:id"  # system of every business identifier we write
    tag_system: str = "urn:fhirpanel:tag"  # meta.tag marking resources fhirpanel manages
    tag_code: str = "managed"
    care_plan_tiers: str = "3,4"  # tiers that get a CarePlan; tier 2 too when CCM-eligible
    care_plan_tier2_when_ccm: bool = True
    care_plan_templates: str = "careplan_templates"
    risk_assessment: bool = False
    attribution_group: bool = False
    provenance: bool = True
    batch_size: int = 100  # entries per transaction Bundle
    max_conflict_retries: int = 3  # re-read and re-apply on 409/412, bounded
    use_conditional_update: bool = True  # when the server advertises it
    use_transactions: bool = True  # when the server advertises them
    author_name: str = "fhirpanel"  # Provenance agent display
    # check-server sends read-only transactions (count-only searches for identifiers that never
    # exist) to find the largest transaction of read entries the server accepts, up to
    # batch_size; write entries may be capped lower, which the first write run adapts to.
    probe_transactions: bool = True

    @property
    def care_plan_tier_set(self) -> frozenset[int]:
        return frozenset(int(t) for t in self.care_plan_tiers.split(",") if t.strip())


@dataclass(frozen=True)
class BulkSettings:
    """Bulk Data `$export` (`--source bulk:URL`)."""

    group_id: str = ""  # export one Group (`Group/<id>/$export`); empty: system-level export
    poll_interval: float = 2.0  # seconds between status polls when the server sends no Retry-After
    max_wait_seconds: float = 3600.0  # give up on an export that takes longer
    # Poll at least this often, whatever Retry-After asks (0: honour it as sent). HAPI asks for
    # 120 s on its first polls even for a small export.
    max_retry_after: float = 0.0
    download_dir: str = ""  # empty: a temporary folder under var/
    since: str = ""  # `_since` for an incremental export (an instant)
    # Added with the bulk source: keep the downloaded NDJSON folder after the run (debugging).
    keep_files: bool = False


@dataclass(frozen=True)
class SchedulerSettings:
    """`fhirpanel worker` and `fhirpanel refresh`."""

    source: str = ""  # what to read; empty: fhir.base_url
    as_of: str = ""  # a fixed as-of date (YYYY-MM-DD) for demos and replays; empty: today
    incremental_minutes: float = 5.0
    full_cron: str = "0 2 * * *"  # nightly full refresh (crontab syntax, local time)
    overlap_seconds: int = 120  # re-search this far behind the watermark (clock skew, late commits)
    write: bool = True  # write CareTeam/CarePlan back; false: compute and store only
    subscriptions: bool = True  # register an Encounter rest-hook Subscription where supported
    hook_host: str = "127.0.0.1"  # where the worker listens for notifications
    hook_port: int = 0  # 0: a free port
    hook_url: str = ""  # the URL the FHIR server calls; empty: http://hook_host:hook_port/hook
    hook_token: str = field(default="", repr=False)  # sent by the server in Authorization
    # A refresh lock whose holder has not renewed it (every minute) for this long is taken over.
    lock_stale_seconds: int = 900
    # Minutes between incremental passes on a roster source (fhir.roster): each polls every
    # roster patient, batch by batch, so it costs far more requests than a `_lastUpdated` search.
    roster_poll_minutes: float = 60.0


@dataclass(frozen=True)
class SafetySettings:
    """The brake on sudden change: a pass that would change more than these shares of what the
    store or the server holds stops before writing and is recorded `held` until an operator
    accepts it. A practice's population moves well under 1% a day (deaths, moves, transfers) and
    a nightly pass sees one day of it; a lost search page moves a page's worth at once."""

    max_removed_patients: float = 0.05  # share of stored patients one pass may remove
    max_ended_participations: float = 0.05  # share of active PCP participations one pass may end
    max_changed_assignments: float = 0.10  # share of stored assignments one pass may change
    # Below this many removals/ends/changes a pass is never held (a 40-patient test practice
    # must not stop on its third change).
    min_count: int = 10


@dataclass(frozen=True)
class ApiSettings:
    """`fhirpanel serve`: the API and dashboard."""

    host: str = "127.0.0.1"
    port: int = 8000
    read_tokens: str = field(default="", repr=False)  # comma-separated; may read
    admin_tokens: str = field(default="", repr=False)  # comma-separated; may also change things
    secret_key: str = field(default="", repr=False)  # signs dashboard sessions; empty: derived
    workers: int = 2  # gunicorn worker processes
    page_size: int = 50
    max_page_size: int = 500
    max_body_bytes: int = 65536  # a larger request body gets 413, chunked or not
    # The dashboard cookie's `Secure` flag: auto sets it unless `host` is a loopback address.
    secure_cookie: Literal["auto", "always", "never"] = "auto"
    session_hours: int = 12  # a dashboard sign-in ends this long after it began...
    session_idle_minutes: int = 120  # ...or after this long without a page (server-side)


@dataclass(frozen=True)
class ReviewSettings:
    """Reviewing assignments and panels (docs/methods.md s.2.9, s.3.8)."""

    # A confirmation (by the clinician or by the patient) holds the assignment this long after
    # it was given, then expires so it is renewed at the panel's review.
    confirmation_months: int = 12
    panel_review_months: int = 3  # each panel reviewed quarterly

    def __post_init__(self) -> None:
        if not 1 <= self.confirmation_months <= 120:
            raise ConfigError(
                f"review.confirmation_months: {self.confirmation_months} is not 1 to 120"
            )
        if not 1 <= self.panel_review_months <= 60:
            raise ConfigError(
                f"review.panel_review_months: {self.panel_review_months} is not 1 to 60"
            )


@dataclass(frozen=True)
class Settings:
    fhir: FhirSettings = field(default_factory=FhirSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    writeback: WritebackSettings = field(default_factory=WritebackSettings)
    bulk: BulkSettings = field(default_factory=BulkSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    mappings_dir: str = ""  # empty: the mappings/ folder shipped with fhirpanel
    database_url: str = field(default="", repr=False)  # empty: sqlite:///var/fhirpanel.db
    # fhirpanel's and its libraries' log level; empty: each process's own (`log_level_for`).
    log_level: Literal["", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = ""

    @classmethod
    def load(
        cls, toml_path: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then the TOML file, then the environment."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        path = toml_path or env.get(ENV_PREFIX + "CONFIG")
        if path:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            try:
                data = tomllib.loads(p.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        given: set[str] = set()
        settings: Settings = _build(
            cls, data, env, ENV_PREFIX, where=str(path or "settings"), given=given
        )
        return apply_profile(settings, given)

    def with_fhir(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, fhir=dataclasses.replace(self.fhir, **changes))

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of the state store."""
        return self.database_url or DEFAULT_DATABASE_URL

    @property
    def mappings_path(self) -> Path | None:
        return Path(self.mappings_dir) if self.mappings_dir else None

    def log_level_for(self, *, service: bool) -> str:
        """fhirpanel's own log level in this process: `log_level` when set, else INFO in a
        long-running service (the worker, the API: its log is the record of what it did) and
        WARNING in a command that prints a summary on the terminal, so the summary is not
        buried. The one place the per-process default is decided."""
        return self.log_level or ("INFO" if service else "WARNING")


# What each `fhir.profile` sets, as `section.key`: applied to every setting the file and the
# environment leave out, so an explicit setting always wins. The published constraint behind
# each choice is in docs/profiles.md.
PROFILES: dict[str, dict[str, Any]] = {
    "generic": {},
    # HAPI asks for Retry-After: 120 on its first $export polls even for a small export.
    "hapi": {"bulk.max_retry_after": 5.0},
    # Medplum with transactions on refuses more than 50 updates in one (fhir-router batch.ts).
    "medplum": {"writeback.batch_size": 50},
    # Patient.Search needs an id, an identifier or demographics per request; the clinical
    # searches need a patient; no transactions or conditional writes are documented.
    "epic": {
        "fhir.read_mode": "roster",
        "fhir.patient_batch": 1,
        "fhir.page_size": 100,
        "fhir.roster_poll": "date",
        "fhir.encounter_floor": "window",
        "writeback.use_transactions": False,
        "writeback.use_conditional_update": False,
        "writeback.probe_transactions": False,
    },
    # Millennium R4: Encounter and Condition searches need _id, patient, subject (or account);
    # `_id` takes a comma list, `_lastUpdated` is supported on Encounter.
    "oracle": {
        "fhir.read_mode": "roster",
        "fhir.patient_batch": 1,
        "fhir.page_size": 100,
        "fhir.encounter_floor": "window",
        "writeback.use_transactions": False,
        "writeback.use_conditional_update": False,
        "writeback.probe_transactions": False,
    },
}


def apply_profile(settings: Settings, given: set[str] | frozenset[str] = frozenset()) -> Settings:
    """`settings` with its profile's choices laid over every setting not in `given` (the
    `section.key` names a file or the environment set)."""
    choices = PROFILES[settings.fhir.profile]
    sections: dict[str, dict[str, Any]] = {}
    for name, value in choices.items():
        if name not in given:
            section, key = name.split(".", 1)
            sections.setdefault(section, {})[key] = value
    changes = {
        section: dataclasses.replace(getattr(settings, section), **values)
        for section, values in sections.items()
    }
    return dataclasses.replace(settings, **changes) if changes else settings


def _build(
    cls: type[Any],
    data: Mapping[str, Any],
    env: Mapping[str, str],
    prefix: str,
    where: str,
    given: set[str] | None = None,
    section: str = "",
) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        env_key = f"{prefix}{f.name.upper()}"
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(
                hint,
                data.get(f.name, {}),
                env,
                env_key + "_",
                f"{where}[{f.name}]",
                given,
                f"{section}{f.name}.",
            )
            continue
        if env_key in env:
            kwargs[f.name] = _coerce(hint, env[env_key], env_key)
        elif f.name in data:
            kwargs[f.name] = _coerce(hint, data[f.name], f"{where}.{f.name}")
        else:
            continue
        if given is not None:
            given.add(f"{section}{f.name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin in (types.UnionType, typing.Union):
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if hint in (int, float, str):
            return hint(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {value!r} is not a valid {hint.__name__}") from exc
    return value
