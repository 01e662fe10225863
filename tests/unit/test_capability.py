"""Reading CapabilityStatements: HAPI's recorded STU3 one, and small R4 ones built by hand."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.errors import CapabilityError, SourceError
from fhirpanel.fhir.capability import fhir_release, parse_capability_statement

HAPI_DIR = Path(__file__).resolve().parents[2] / "sandbox_fixtures" / "hapi"
SEARCH = {"code": "search-type"}


def recorded_stu3() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((HAPI_DIR / "capabilitystatement-stu3-1.json").read_bytes())
    return data


def r4_statement() -> dict[str, Any]:
    """An R4 statement with what fhirpanel looks for: SMART, $export at three levels,
    conditional update, transaction and batch, Subscription with a websocket endpoint."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "software": {"name": "Example EHR", "version": "24.1"},
        "rest": [
            {"mode": "client", "resource": [{"type": "Basic", "interaction": [SEARCH]}]},
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                            "oauth-uris",
                            "extension": [
                                {"url": "token", "valueUri": "https://ehr.test/oauth/token"},
                                {
                                    "url": "authorize",
                                    "valueUri": "https://ehr.test/oauth/authorize",
                                },
                            ],
                        }
                    ],
                },
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                        "valueUri": "wss://ehr.test/ws",
                    }
                ],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                ],
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    }
                ],
                "resource": [
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, SEARCH],
                        "searchParam": [
                            {"name": "_id", "type": "token"},
                            {"name": "identifier", "type": "token"},
                            {"name": "_lastUpdated", "type": "date"},
                        ],
                        "operation": [
                            {
                                "name": "export",
                                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
                                "patient-export",
                            }
                        ],
                    },
                    {
                        "type": "Group",
                        "interaction": [{"code": "read"}],
                        "operation": [
                            {
                                "name": "export",
                                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
                                "group-export",
                            }
                        ],
                    },
                    {
                        "type": "CareTeam",
                        "conditionalUpdate": True,
                        "interaction": [
                            {"code": "read"},
                            {"code": "update"},
                            {"code": "create"},
                            SEARCH,
                        ],
                        "searchParam": [
                            {"name": "identifier", "type": "token"},
                            {"name": "patient", "type": "reference"},
                        ],
                    },
                    {
                        "type": "CarePlan",
                        "conditionalUpdate": True,
                        "interaction": [{"code": "read"}, SEARCH],
                    },
                    {"type": "Subscription", "interaction": [{"code": "create"}]},
                    {"interaction": [{"code": "read"}]},  # no type: skipped
                ],
            },
        ],
    }


def test_the_recorded_hapi_stu3_statement() -> None:
    caps = parse_capability_statement(recorded_stu3())
    assert (caps.fhir_version, caps.release) == ("3.0.1", "STU3")
    assert not caps.is_r4_family
    assert (caps.software_name, caps.software_version) == ("HAPI FHIR Server", "2.5-SNAPSHOT")
    assert len(caps.resources) == 117
    assert caps.transaction and not caps.batch
    assert "history-system" in caps.system_interactions
    assert caps.supports("Patient", "read") and caps.supports("Patient", "search-type")
    assert caps.supports("Encounter", "update")
    assert not caps.supports("Patient", "batch") and not caps.supports("Nope", "read")
    assert caps.conditional_update("Patient")
    params = caps.search_params("Patient")
    assert {"birthdate", "_language", "identifier", "family"} <= set(params)
    assert caps.supports_search_param("Encounter", "patient")
    assert caps.search_params("Nope") == ()
    assert "Patient:organization" in caps.resources["Patient"].search_includes
    assert caps.resources["Patient"].versioning == "versioned-update"
    # HAPI 2.5 lists every operation at system level, none of them $export.
    assert {"meta", "validate", "expand"} <= caps.system_operations
    assert not caps.export.any
    assert not caps.smart.declared and caps.security_services == ()
    assert caps.subscriptions and caps.subscriptions_rest_hook
    assert caps.formats == ("application/fhir+xml", "application/fhir+json")


def test_a_hand_built_r4_statement() -> None:
    caps = parse_capability_statement(r4_statement())
    assert caps.release == "R4" and caps.is_r4_family
    assert caps.transaction and caps.batch
    assert caps.export.system and caps.export.patient and caps.export.group
    assert caps.smart.declared
    assert caps.smart.token_url == "https://ehr.test/oauth/token"
    assert caps.smart.authorize_url == "https://ehr.test/oauth/authorize"
    assert caps.security_services == ("SMART-on-FHIR",)
    assert caps.subscriptions and caps.subscription_websocket_url == "wss://ehr.test/ws"
    assert caps.conditional_update("CareTeam")
    assert not caps.conditional_update("CarePlan")  # declared, but no update interaction
    assert not caps.conditional_update("Patient")
    assert caps.search_params("CareTeam") == ("identifier", "patient")
    assert "Basic" not in caps.resources  # client-mode rest entries are not the server's
    assert set(caps.resources) == {"Patient", "Group", "CareTeam", "CarePlan", "Subscription"}
    caps.require("CareTeam", "update")
    message = re.escape("Example EHR (R4) does not declare update on CarePlan")
    with pytest.raises(CapabilityError, match=message):
        caps.require("CarePlan", "update")


def test_export_declared_only_at_system_level_with_level_named_definitions() -> None:
    cs = r4_statement()
    rest = cs["rest"][1]
    rest["operation"] = [
        {"name": "$export", "definition": {"reference": "OperationDefinition/Patient-export"}},
        {"name": "export", "definition": "http://example.test/OperationDefinition/group-export"},
    ]
    for res in rest["resource"]:
        res.pop("operation", None)
    caps = parse_capability_statement(cs)
    assert caps.export.patient and caps.export.group and not caps.export.system


def test_smart_declared_by_the_oauth_extension_alone() -> None:
    cs = r4_statement()
    del cs["rest"][1]["security"]["service"]
    caps = parse_capability_statement(cs)
    assert caps.smart.declared and caps.security_services == ()


def test_a_bare_statement_parses_with_nothing_supported() -> None:
    caps = parse_capability_statement(
        {"resourceType": "CapabilityStatement", "fhirVersion": "4.3.0", "rest": "garbage"}
    )
    assert caps.release == "R4B" and caps.resources == {}
    assert not (caps.transaction or caps.batch or caps.export.any or caps.smart.declared)
    assert not caps.subscriptions


def test_not_a_capability_statement_is_refused() -> None:
    with pytest.raises(SourceError, match="expected a CapabilityStatement"):
        parse_capability_statement({"resourceType": "OperationOutcome"})


@pytest.mark.parametrize(
    ("version", "release"),
    [
        ("1.0.2", "DSTU2"),
        ("3.0.1", "STU3"),
        ("3.0.2", "STU3"),
        ("4.0.0", "R4"),
        ("4.0.1", "R4"),
        ("4.3.0", "R4B"),
        ("5.0.0", "R5"),
        ("4.01", "unknown"),
        ("", "unknown"),
    ],
)
def test_fhir_release_names(version: str, release: str) -> None:
    assert fhir_release(version) == release


def test_a_dstu2_conformance_is_flagged() -> None:
    caps = parse_capability_statement(
        {
            "resourceType": "Conformance",
            "fhirVersion": "1.0.2",
            "rest": [
                {"mode": "server", "resource": [{"type": "Patient", "interaction": [SEARCH]}]}
            ],
        }
    )
    assert caps.release == "DSTU2" and caps.supports("Patient", "search-type")
