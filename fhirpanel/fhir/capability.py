"""What a FHIR server says it can do: a pure reading of its CapabilityStatement (`GET /metadata`).

Reads R4/R4B/R5 statements and STU3 ones (HAPI's older servers still answer STU3), flagging the
release so callers can refuse what they cannot talk to. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhirpanel.errors import CapabilityError, SourceError

# FHIR version prefixes -> release names (FHIR version history, hl7.org/fhir/directory.html).
_RELEASES: tuple[tuple[str, str], ...] = (
    ("1.0", "DSTU2"),
    ("3.0", "STU3"),
    ("4.0", "R4"),
    ("4.3", "R4B"),
    ("5.0", "R5"),
)

# restful-security-service: R4 system, and the STU3 one it replaced.
_SECURITY_SERVICE_SYSTEMS = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "http://hl7.org/fhir/restful-security-service",
    }
)
_SMART_SERVICE_CODE = "SMART-on-FHIR"
# SMART App Launch 1.0, "Conformance" section: the oauth-uris extension on rest.security.
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
# FHIR core extension naming a server's websocket endpoint for Subscription notifications.
_WEBSOCKET = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"
# Subscriptions R5 Backport IG: topics a server offers, on rest.resource (Subscription).
_SUBSCRIPTION_TOPIC = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "capabilitystatement-subscriptiontopic-canonical"
)


@dataclass(frozen=True)
class ResourceCapability:
    """One `rest.resource` entry."""

    type: str
    interactions: frozenset[str] = frozenset()
    search_params: tuple[str, ...] = ()
    operations: frozenset[str] = frozenset()
    conditional_create: bool = False
    conditional_update: bool = False
    versioning: str | None = None
    search_includes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportSupport:
    """Bulk Data `$export` at each level (FHIR Bulk Data Access IG)."""

    system: bool = False
    patient: bool = False
    group: bool = False

    @property
    def any(self) -> bool:
        return self.system or self.patient or self.group


@dataclass(frozen=True)
class SmartSupport:
    """SMART on FHIR as declared in `rest.security` (the `.well-known` document may say more)."""

    declared: bool = False
    authorize_url: str | None = None
    token_url: str | None = None
    register_url: str | None = None


@dataclass(frozen=True)
class ServerCapabilities:
    fhir_version: str
    release: str  # "R4", "R4B", "R5", "STU3", "DSTU2" or "unknown"
    software_name: str | None = None
    software_version: str | None = None
    formats: tuple[str, ...] = ()
    resources: Mapping[str, ResourceCapability] = field(default_factory=dict)
    system_interactions: frozenset[str] = frozenset()
    system_operations: frozenset[str] = frozenset()
    export: ExportSupport = field(default_factory=ExportSupport)
    smart: SmartSupport = field(default_factory=SmartSupport)
    subscriptions: bool = False  # the server accepts Subscription resources (create)
    subscription_websocket_url: str | None = None
    subscription_topics: tuple[str, ...] = ()
    security_services: tuple[str, ...] = ()

    @property
    def is_r4_family(self) -> bool:
        """R4 and R4B share the resource shapes fhirpanel reads and writes."""
        return self.release in ("R4", "R4B")

    @property
    def transaction(self) -> bool:
        return "transaction" in self.system_interactions

    @property
    def batch(self) -> bool:
        return "batch" in self.system_interactions

    @property
    def subscriptions_rest_hook(self) -> bool:
        """R4 has no element listing Subscription channel types; rest-hook is the baseline channel
        of R4 Subscription, so a server accepting Subscription is taken to offer it."""
        return self.subscriptions

    def supports(self, resource_type: str, interaction: str) -> bool:
        """`interaction` is a TypeRestfulInteraction code: read, vread, update, patch, delete,
        history-instance, history-type, create, search-type."""
        res = self.resources.get(resource_type)
        return res is not None and interaction in res.interactions

    def search_params(self, resource_type: str) -> tuple[str, ...]:
        res = self.resources.get(resource_type)
        return res.search_params if res is not None else ()

    def supports_search_param(self, resource_type: str, name: str) -> bool:
        return name in self.search_params(resource_type)

    def conditional_update(self, resource_type: str) -> bool:
        res = self.resources.get(resource_type)
        return res is not None and res.conditional_update and "update" in res.interactions

    def require(self, resource_type: str, interaction: str) -> None:
        """Raise CapabilityError unless the server declares the interaction."""
        if not self.supports(resource_type, interaction):
            who = f"{self.software_name or 'the server'} ({self.release})"
            raise CapabilityError(f"{who} does not declare {interaction} on {resource_type}")


def fhir_release(fhir_version: str) -> str:
    for prefix, name in _RELEASES:
        if fhir_version == prefix or fhir_version.startswith(prefix + "."):
            return name
    return "unknown"


def parse_capability_statement(cs: Mapping[str, Any]) -> ServerCapabilities:
    """A CapabilityStatement (R4/R4B/R5/STU3) or a DSTU2 Conformance as a plain dict."""
    kind = cs.get("resourceType")
    if kind not in ("CapabilityStatement", "Conformance"):
        raise SourceError(f"expected a CapabilityStatement from /metadata, got {kind!r}")
    fhir_version = _text(cs.get("fhirVersion")) or ""
    software = _mapping(cs.get("software"))
    server_rest = [r for r in _mappings(cs.get("rest")) if r.get("mode", "server") == "server"]

    resources: dict[str, ResourceCapability] = {}
    system_interactions: set[str] = set()
    system_operations: list[Mapping[str, Any]] = []
    resource_operations: dict[str, list[Mapping[str, Any]]] = {}
    security: list[Mapping[str, Any]] = []
    for rest in server_rest:
        system_interactions.update(_codes(rest.get("interaction")))
        system_operations.extend(_mappings(rest.get("operation")))
        if isinstance(rest.get("security"), Mapping):
            security.append(rest["security"])
        for entry in _mappings(rest.get("resource")):
            parsed = _resource(entry)
            if parsed is None:
                continue
            resources[parsed.type] = parsed
            resource_operations[parsed.type] = list(_mappings(entry.get("operation")))

    subscription = resources.get("Subscription")
    subscription_entry = _find_resource(server_rest, "Subscription")
    return ServerCapabilities(
        fhir_version=fhir_version,
        release=fhir_release(fhir_version),
        software_name=_text(software.get("name")),
        software_version=_text(software.get("version")),
        formats=tuple(f for f in cs.get("format", ()) if isinstance(f, str)),
        resources=resources,
        system_interactions=frozenset(system_interactions),
        system_operations=frozenset(_operation_name(op) for op in system_operations),
        export=_export_support(system_operations, resource_operations),
        smart=_smart_support(security),
        subscriptions=subscription is not None and "create" in subscription.interactions,
        subscription_websocket_url=_extension_value(
            (ext for rest in server_rest for ext in _mappings(rest.get("extension"))), _WEBSOCKET
        ),
        subscription_topics=tuple(
            str(ext.get("valueCanonical") or ext.get("valueUri"))
            for ext in _mappings(subscription_entry.get("extension") if subscription_entry else ())
            if ext.get("url") == _SUBSCRIPTION_TOPIC
            and (ext.get("valueCanonical") or ext.get("valueUri"))
        ),
        security_services=tuple(
            sorted(
                {
                    str(coding["code"])
                    for sec in security
                    for service in _mappings(sec.get("service"))
                    for coding in _mappings(service.get("coding"))
                    if isinstance(coding.get("code"), str)
                }
            )
        ),
    )


def _resource(entry: Mapping[str, Any]) -> ResourceCapability | None:
    rtype = entry.get("type")
    if not isinstance(rtype, str) or not rtype:
        return None
    return ResourceCapability(
        type=rtype,
        interactions=frozenset(_codes(entry.get("interaction"))),
        search_params=tuple(
            p["name"] for p in _mappings(entry.get("searchParam")) if isinstance(p.get("name"), str)
        ),
        operations=frozenset(_operation_name(op) for op in _mappings(entry.get("operation"))),
        conditional_create=entry.get("conditionalCreate") is True,
        conditional_update=entry.get("conditionalUpdate") is True,
        versioning=_text(entry.get("versioning")),
        search_includes=tuple(i for i in entry.get("searchInclude", ()) if isinstance(i, str)),
    )


def _find_resource(rests: Iterable[Mapping[str, Any]], rtype: str) -> Mapping[str, Any] | None:
    for rest in rests:
        for entry in _mappings(rest.get("resource")):
            if entry.get("type") == rtype:
                return entry
    return None


def _operation_name(op: Mapping[str, Any]) -> str:
    return str(op.get("name", "")).lstrip("$")


def _operation_definition(op: Mapping[str, Any]) -> str:
    """R4 `definition` is a canonical string; STU3 has a Reference {reference: ...}."""
    definition = op.get("definition")
    if isinstance(definition, Mapping):
        definition = definition.get("reference")
    return definition if isinstance(definition, str) else ""


def _export_support(
    system_ops: list[Mapping[str, Any]], resource_ops: Mapping[str, list[Mapping[str, Any]]]
) -> ExportSupport:
    system = patient = group = False
    for op in system_ops:
        if _operation_name(op) != "export":
            continue
        # Some servers list every operation at system level; their definition names the level
        # (Bulk Data IG: .../OperationDefinition/patient-export, group-export).
        definition = _operation_definition(op).rsplit("/", 1)[-1].lower()
        if definition.startswith("patient-"):
            patient = True
        elif definition.startswith("group-"):
            group = True
        else:
            system = True

    def has_export(rtype: str) -> bool:
        return any(_operation_name(op) == "export" for op in resource_ops.get(rtype, ()))

    patient = patient or has_export("Patient")
    group = group or has_export("Group")
    return ExportSupport(system=system, patient=patient, group=group)


def _smart_support(security: list[Mapping[str, Any]]) -> SmartSupport:
    declared = False
    urls: dict[str, str] = {}
    for sec in security:
        for service in _mappings(sec.get("service")):
            for coding in _mappings(service.get("coding")):
                if coding.get("code") == _SMART_SERVICE_CODE and (
                    coding.get("system") in _SECURITY_SERVICE_SYSTEMS or "system" not in coding
                ):
                    declared = True
        for ext in _mappings(sec.get("extension")):
            if ext.get("url") != _OAUTH_URIS:
                continue
            declared = True
            for sub in _mappings(ext.get("extension")):
                value = sub.get("valueUri") or sub.get("valueUrl")
                if isinstance(sub.get("url"), str) and isinstance(value, str):
                    urls[sub["url"]] = value
    return SmartSupport(
        declared=declared,
        authorize_url=urls.get("authorize"),
        token_url=urls.get("token"),
        register_url=urls.get("register"),
    )


def _extension_value(extensions: Iterable[Mapping[str, Any]], url: str) -> str | None:
    for ext in extensions:
        if ext.get("url") == url:
            value = ext.get("valueUrl") or ext.get("valueUri")
            if isinstance(value, str):
                return value
    return None


def _codes(items: Any) -> Iterable[str]:
    return (i["code"] for i in _mappings(items) if isinstance(i.get("code"), str))


def _mappings(items: Any) -> list[Mapping[str, Any]]:
    if not isinstance(items, list | tuple):
        return []
    return [i for i in items if isinstance(i, Mapping)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
