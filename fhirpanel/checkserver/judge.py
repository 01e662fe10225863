"""Every finding from the CapabilityStatement, the SMART document and the settings, pure: what
the server declares against what fhirpanel reads, writes and needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fhirpanel.checkserver.model import (
    COMMON_PARAMS,
    OPTIONAL_WRITES,
    READ_PARAMS,
    READ_TYPES,
    WRITE_TYPES,
    Finding,
    Status,
)
from fhirpanel.config import Settings, WritebackSettings
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import redact_url


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
            yield _declared(
                "write",
                f"{rtype}?identifier",
                declared,
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
    yield _declared(
        "write",
        "transaction",
        caps.transaction,
        text,
    )
    yield _declared(
        "write",
        "batch",
        caps.batch,
        "not used: fhirpanel sends transactions or single requests",
    )


def _declared(
    area: str, name: str, declared: bool, fhirpanel: str, *, required: bool = False
) -> Finding:
    """A finding on one thing the statement declares or not."""
    return Finding(
        area,
        name,
        "yes" if declared else "no",
        "declared" if declared else "not declared",
        fhirpanel,
        required=required,
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
    # fhir/bulk/ exports a Group for `bulk:BASE/Group/ID` or bulk.group_id, else the system.
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
    yield _declared(
        "bulk",
        "$export (system)",
        export.system,
        text,
        required=bulk_source and not group_id,
    )
    yield _declared(
        "bulk",
        "$export (Patient)",
        export.patient,
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
    yield _declared(
        "bulk",
        "$export (Group)",
        export.group,
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
