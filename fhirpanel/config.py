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


@dataclass(frozen=True)
class FhirSettings:
    base_url: str = ""
    auth: Literal["none", "bearer", "basic"] = "none"
    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
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


@dataclass(frozen=True)
class AttributionSettings:
    pipeline: str = "pipelines/mgma"  # a file under mappings/, or a path to a TOML file
    qualifying_visits: str = "qualifying_visits"
    sentinel_exams: str = "sentinel_exams"
    primary_care: str = "primary_care"
    capacity: str = "capacity"
    outreach_not_seen_months: int = 12
    outreach_sentinel_months: int = 24


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

    @property
    def care_plan_tier_set(self) -> frozenset[int]:
        return frozenset(int(t) for t in self.care_plan_tiers.split(",") if t.strip())


@dataclass(frozen=True)
class Settings:
    fhir: FhirSettings = field(default_factory=FhirSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    writeback: WritebackSettings = field(default_factory=WritebackSettings)
    mappings_dir: str = ""  # empty: the mappings/ folder shipped with fhirpanel
    database_url: str = ""  # empty: sqlite file under ./var
    log_level: str = "INFO"

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
        settings: Settings = _build(cls, data, env, ENV_PREFIX, where=str(path or "settings"))
        return settings

    def with_fhir(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, fhir=dataclasses.replace(self.fhir, **changes))

    @property
    def mappings_path(self) -> Path | None:
        return Path(self.mappings_dir) if self.mappings_dir else None


def _build(cls: type[Any], data: Mapping[str, Any], env: Mapping[str, str], prefix: str,
           where: str) -> Any:
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
            kwargs[f.name] = _build(hint, data.get(f.name, {}), env, env_key + "_",
                                    f"{where}[{f.name}]")
        elif env_key in env:
            kwargs[f.name] = _coerce(hint, env[env_key], env_key)
        elif f.name in data:
            kwargs[f.name] = _coerce(hint, data[f.name], f"{where}.{f.name}")
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
