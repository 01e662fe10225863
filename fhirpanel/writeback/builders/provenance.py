"""One Provenance per write batch (docs/methods.md s.6)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from fhirpanel.config import WritebackSettings
from fhirpanel.fhir.parse import fhir_instant
from fhirpanel.tables.writeback import WritebackCodes
from fhirpanel.writeback.builders.common import BuildError, concept, validate_resource
from fhirpanel.writeback.identity import Resource


def _recorded(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BuildError("Provenance.recorded needs a timezone-aware instant")
    return fhir_instant(moment)


def build_provenance(
    targets: Iterable[str],
    recorded: datetime,
    cfg: WritebackSettings,
    *,
    codes: WritebackCodes,
    activity: str,
) -> Resource:
    """One Provenance for a write batch: the written resources with their versions
    (`Type/id/_history/v`), when, the v3-DataOperation `activity` (CREATE or UPDATE), the reason,
    and fhirpanel as the agent (a Device named by `author_name`). R4 Provenance has no
    identifier element; it is tagged, and only ever created."""
    listed = sorted(set(targets))
    if not listed:
        raise BuildError("Provenance needs at least one target")
    display = {"CREATE": "create", "UPDATE": "revise"}.get(activity, activity.lower())
    provenance: Resource = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": cfg.tag_system, "code": cfg.tag_code}]},
        "target": [{"reference": t} for t in listed],
        "recorded": _recorded(recorded),
        "activity": concept(
            {"system": codes.provenance_activity_system, "code": activity, "display": display}
        ),
        "reason": [concept(codes.provenance_reason)],
        "agent": [
            {
                "type": concept(codes.provenance_agent_type),
                "who": {"type": "Device", "display": cfg.author_name},
            }
        ],
    }
    return validate_resource(provenance)
