"""What a FHIR server and a store hold, reduced to what must be equal between a clean run and a
run that met faults and was rerun: managed resources by business identifier (server ids, versions
and timestamps left out), the store's assignments, and the ledger checked against the server."""

from __future__ import annotations

from typing import Any

import orjson
import requests
from sqlalchemy import select

from fhirpanel.store import Store
from fhirpanel.store.models import LedgerEntry

MANAGED_TYPES = ("CareTeam", "CarePlan")
IDENTIFIER_SYSTEM = "urn:fhirpanel:id"


def server_resources(base_url: str, rtype: str) -> list[dict[str, Any]]:
    """Every resource of a type (paged; bounded)."""
    out: list[dict[str, Any]] = []
    url: str | None = f"{base_url}/{rtype}?_count=500"
    for _ in range(200):
        if url is None:
            break
        bundle = orjson.loads(
            requests.get(url, timeout=30, headers={"Cache-Control": "no-cache"}).content
        )
        out.extend(e["resource"] for e in bundle.get("entry") or () if "resource" in e)
        url = next(
            (link["url"] for link in bundle.get("link") or () if link.get("relation") == "next"),
            None,
        )
    return out


def our_identifier(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier") or ():
        if ident.get("system") == IDENTIFIER_SYSTEM:
            return str(ident.get("value"))
    return None


def managed_snapshot(base_url: str) -> dict[str, dict[str, Any]]:
    """`Type|identifier` -> content without id, meta and narrative; a CarePlan's CareTeam named
    by the team's identifier. Raises on two resources sharing an identifier (a duplicate)."""
    teams = server_resources(base_url, "CareTeam")
    team_ids = {f"CareTeam/{t['id']}": our_identifier(t) for t in teams}
    snapshot: dict[str, dict[str, Any]] = {}
    for rtype, resources in (
        ("CareTeam", teams),
        ("CarePlan", server_resources(base_url, "CarePlan")),
    ):
        for resource in resources:
            ident = our_identifier(resource)
            if ident is None:
                continue
            key = f"{rtype}|{ident}"
            if key in snapshot:
                raise AssertionError(f"duplicate managed resource {key}")
            body = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
            if rtype == "CarePlan":
                body["careTeam"] = [
                    team_ids.get(ref.get("reference"), ref.get("reference"))
                    for ref in body.get("careTeam") or ()
                ]
            snapshot[key] = _strip_element_ids(body)
    return snapshot


def _strip_element_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_element_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_strip_element_ids(v) for v in value]
    return value


def current_versions(base_url: str) -> dict[str, str]:
    """`Type/id` -> versionId of every managed resource."""
    out = {}
    for rtype in MANAGED_TYPES:
        for resource in server_resources(base_url, rtype):
            if our_identifier(resource) is not None:
                out[f"{rtype}/{resource['id']}"] = str(resource.get("meta", {}).get("versionId"))
    return out


def provenance_targets(base_url: str) -> set[str]:
    """`Type/id/_history/v` targets of every Provenance (versionless targets as `Type/id`)."""
    targets = set()
    for prov in server_resources(base_url, "Provenance"):
        for target in prov.get("target") or ():
            ref = target.get("reference")
            if isinstance(ref, str):
                targets.add(ref)
    return targets


def uncovered_versions(base_url: str) -> list[str]:
    """Managed resource versions no Provenance names."""
    targets = provenance_targets(base_url)
    return sorted(
        f"{ref}/_history/{v}"
        for ref, v in current_versions(base_url).items()
        if f"{ref}/_history/{v}" not in targets and ref not in targets
    )


def ledger_rows(store: Store) -> dict[tuple[str, str], tuple[str, str | None]]:
    with store.session() as s:
        return {
            (r.rtype, r.identifier): (r.server_id, r.version)
            for r in s.scalars(select(LedgerEntry))
        }


def ledger_mismatches(store: Store, base_url: str) -> list[str]:
    """Ledger entries that do not name the server's current id and version."""
    by_ident = {}
    for rtype in MANAGED_TYPES:
        for resource in server_resources(base_url, rtype):
            ident = our_identifier(resource)
            if ident is not None:
                by_ident[(rtype, ident)] = (
                    resource["id"],
                    str(resource.get("meta", {}).get("versionId")),
                )
    wrong = []
    for key, (rid, version) in ledger_rows(store).items():
        if by_ident.get(key) != (rid, version):
            wrong.append(f"{key}: ledger {rid}@{version}, server {by_ident.get(key)}")
    return wrong
