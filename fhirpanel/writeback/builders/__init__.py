"""Pure builders for write-back: attribution and risk results in, FHIR R4 JSON out, one module
per resource type (docs/methods.md s.6).

Every builder takes what the server holds now (`existing`, or None) and returns the resource as it
should be, or None when there is nothing to write. It keeps what fhirpanel does not manage
(participants, activities, categories or identifiers someone else added) and changes only its own
parts, so building from an unchanged input gives back a resource equal to `existing` and the
writer sends nothing. Dates come in as parameters, never from a clock. Every resource carries a
deterministic business identifier and fhirpanel's `meta.tag` (`writeback.identity`), and is
validated with the fhir.resources R4B model before it is returned; a resource that fails is a bug
here and raises BuildError.
"""

from fhirpanel.writeback.builders.care_plan import (
    build_care_plan,
    care_plan_called_for,
    element_id,
)
from fhirpanel.writeback.builders.care_team import (
    ClinicianDirectory,
    ClinicianInfo,
    build_care_team,
    open_pcp_members,
)
from fhirpanel.writeback.builders.common import BuildError, validate_resource
from fhirpanel.writeback.builders.group import GroupMember, build_attribution_group
from fhirpanel.writeback.builders.provenance import build_provenance
from fhirpanel.writeback.builders.risk_assessment import build_risk_assessment

__all__ = [
    "BuildError",
    "ClinicianDirectory",
    "ClinicianInfo",
    "GroupMember",
    "build_attribution_group",
    "build_care_plan",
    "build_care_team",
    "build_provenance",
    "build_risk_assessment",
    "care_plan_called_for",
    "element_id",
    "open_pcp_members",
    "validate_resource",
]
