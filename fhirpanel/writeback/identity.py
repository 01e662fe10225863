"""How fhirpanel knows its own resources and compares them: business identifiers, its tag, the
element ids it gives what it adds, and the content the diff looks at (docs/methods.md s.6).

Every resource fhirpanel writes carries a deterministic business identifier
(`identifier_system` + `<kind>.<subject id>`) and fhirpanel's `meta.tag`; it may change a
resource only when both are there.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any, Final

from fhirpanel.config import WritebackSettings

Resource = dict[str, Any]

# Business identifier kinds: identifier value = "<kind>.<subject id>".
CARE_TEAM_KIND: Final = "careteam-pcp"
CARE_PLAN_KIND: Final = "careplan-cm"
RISK_ASSESSMENT_KIND: Final = "riskassessment"
ATTRIBUTION_GROUP_KIND: Final = "attribution-group"

# Element ids mark the participants and activities fhirpanel added; everything else is kept as is.
PCP_PARTICIPANT_PREFIX: Final = "fhirpanel-pcp-"
# The PCP's care-team colleagues (mappings/teams.toml) on the patient's CareTeam.
TEAM_PARTICIPANT_PREFIX: Final = "fhirpanel-team-"
ACTIVITY_ID_PREFIX: Final = "fhirpanel-"

_BETWEEN_TAGS = re.compile(r">\s+<")


# --------------------------------------------------------------------------- identifiers


def identifier_value(kind: str, subject: str) -> str:
    """`careteam-pcp.pat-1` for ("careteam-pcp", "Patient/pat-1")."""
    return f"{kind}.{subject.split('/', 1)[-1]}"


def identifier_token(cfg: WritebackSettings, value: str) -> str:
    """`system|value`, as a token search or a conditional URL takes it."""
    return f"{cfg.identifier_system}|{value}"


def business_identifier(resource: Mapping[str, Any], cfg: WritebackSettings) -> str | None:
    """The value of fhirpanel's identifier on a resource, if it has one."""
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and ident.get("system") == cfg.identifier_system:
            value = ident.get("value")
            if isinstance(value, str) and value:
                return value
    return None


def has_managed_tag(resource: Mapping[str, Any], cfg: WritebackSettings) -> bool:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    return any(
        isinstance(t, Mapping)
        and t.get("system") == cfg.tag_system
        and t.get("code") == cfg.tag_code
        for t in tags or ()
    )


def is_managed(resource: Mapping[str, Any], cfg: WritebackSettings) -> bool:
    """fhirpanel may change a resource only when it carries both its tag and its identifier."""
    return has_managed_tag(resource, cfg) and business_identifier(resource, cfg) is not None


def has_our_id(element: Mapping[str, Any], prefix: str) -> bool:
    """An element (participant, activity) fhirpanel added, by the prefix of its element id."""
    return str(element.get("id", "")).startswith(prefix)


def without_id(element: Mapping[str, Any]) -> bool:
    return not element.get("id")


# --------------------------------------------------------------------------- comparison


def squash_xhtml(div: str) -> str:
    """Narrative with insignificant whitespace removed and character references resolved, for
    comparison (a server may re-serialise XHTML: `&gt;` or `>`, new lines between tags)."""
    return html.unescape(" ".join(_BETWEEN_TAGS.sub("><", div).split()))


def comparable(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resource the diff looks at: no `meta`, no `id`, narrative whitespace
    squashed (servers may re-indent XHTML)."""
    out = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    text = out.get("text")
    if isinstance(text, Mapping) and isinstance(text.get("div"), str):
        out["text"] = {**text, "div": squash_xhtml(text["div"])}
    return out


def same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return comparable(a) == comparable(b)
