"""One organisation's attributed patients as a Group after the Da Vinci Member Attribution
List (optional, `writeback.attribution_group`; docs/methods.md s.6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirpanel.config import WritebackSettings
from fhirpanel.tables.writeback import WritebackCodes
from fhirpanel.writeback.builders.common import (
    day,
    div,
    esc,
    identifiers,
    meta,
    order,
    start_resource,
    validate_resource,
)
from fhirpanel.writeback.identity import ATTRIBUTION_GROUP_KIND, Resource, identifier_value


@dataclass(frozen=True, order=True)
class GroupMember:
    patient: str
    provider: str  # PractitionerRole/... or Practitioner/...


def build_attribution_group(
    organization: str,
    members: Iterable[GroupMember],
    existing: Mapping[str, Any] | None,
    as_of: date,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
) -> Resource | None:
    """One organisation's attributed patients after the Da Vinci Member Attribution List: Group
    type person, actual, managingEntity the organisation, each member with the ATR
    attributedProvider and changeType extensions. A new version is built only when a member
    joins, leaves or changes provider; then changeType is new, changed or nochange, and members
    who left are listed once as dropped (inactive, `period.end` = as-of)."""
    wanted = {m.patient: m.provider for m in members}
    if not wanted and existing is None:
        return None
    today = day(as_of)
    previous = _group_members(existing, codes)
    current = {p: m for p, m in previous.items() if m["change"] != codes.change_dropped}
    value = identifier_value(ATTRIBUTION_GROUP_KIND, organization)
    group = start_resource(existing, "Group")
    if existing is None or {p: m["provider"] for p, m in current.items()} != wanted:
        listed: list[dict[str, Any]] = []
        for patient in sorted(wanted):
            provider, before = wanted[patient], current.get(patient)
            if before is None:
                change, start = codes.change_new, today
            elif before["provider"] != provider:
                change, start = codes.change_changed, today
            else:
                change, start = codes.change_none, before["start"] or today
            listed.append(_group_member(patient, provider, change, {"start": start}, codes))
        for patient in sorted(set(current) - set(wanted)):
            before = current[patient]
            start = before["start"] or today
            member = _group_member(
                patient,
                before["provider"],
                codes.change_dropped,
                {"start": start, "end": max(today, start)},
                codes,
            )
            member["inactive"] = True
            listed.append(member)
        group["member"] = listed
        counts = {
            c: sum(1 for m in listed if _member_change(m, codes) == c)
            for c in (codes.change_new, codes.change_changed, codes.change_dropped)
        }
        group["text"] = div(
            f"<p>Attribution list for {esc(organization)}: {len(wanted)} patients "
            f"({counts[codes.change_new]} new, {counts[codes.change_changed]} changed provider, "
            f"{counts[codes.change_dropped]} dropped) as of {esc(today)}.</p>"
        )
    group["identifier"] = identifiers(existing, cfg, value)
    group["meta"] = meta(existing, cfg, None)
    group["active"] = True
    group["type"] = "person"
    group["actual"] = True
    group["name"] = group.get("name") or f"fhirpanel attribution list, {organization}"
    group["managingEntity"] = {"reference": organization}
    group["quantity"] = len(wanted)
    group = order(
        group,
        (
            "resourceType",
            "id",
            "meta",
            "text",
            "identifier",
            "active",
            "type",
            "actual",
            "name",
            "managingEntity",
            "quantity",
            "member",
        ),
    )
    return validate_resource(group)


def _group_member(
    patient: str, provider: str, change: str, period: dict[str, str], codes: WritebackCodes
) -> dict[str, Any]:
    return {
        "extension": [
            {"url": codes.attributed_provider_url, "valueReference": {"reference": provider}},
            {"url": codes.change_type_url, "valueCode": change},
        ],
        "entity": {"reference": patient},
        "period": period,
    }


def _member_change(member: Mapping[str, Any], codes: WritebackCodes) -> str | None:
    for ext in member.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == codes.change_type_url:
            value = ext.get("valueCode")
            return value if isinstance(value, str) else None
    return None


def _group_members(
    existing: Mapping[str, Any] | None, codes: WritebackCodes
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for member in (existing or {}).get("member") or ():
        if not isinstance(member, Mapping):
            continue
        patient = (member.get("entity") or {}).get("reference")
        if not isinstance(patient, str):
            continue
        provider = None
        for ext in member.get("extension") or ():
            if isinstance(ext, Mapping) and ext.get("url") == codes.attributed_provider_url:
                provider = (ext.get("valueReference") or {}).get("reference")
        out[patient] = {
            "provider": provider,
            "change": _member_change(member, codes),
            "start": (member.get("period") or {}).get("start"),
        }
    return out
