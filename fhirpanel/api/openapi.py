"""The OpenAPI 3.1 document served at `/openapi.json`, written as data.

Keep it in step with the routes: `tests/integration/test_openapi.py` checks that every URL rule
of the app (the dashboard's HTML pages aside) is described here, validates the document, and
checks the app's answers against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from fhirpanel import __version__
from fhirpanel.api.params import MAX_JSON_DEPTH
from fhirpanel.api.routes import MAX_PAIRS, REFUSALS
from fhirpanel.config import ApiSettings
from fhirpanel.store.queries import OUTREACH_KINDS, SORT_VALUES
from fhirpanel.store.repository import CONFIRMERS, REQUESTERS, STATUSES
from fhirpanel.vocabulary import FHIR_ID_PATTERN, STARTABLE_KINDS, RunKind, RunStatus

JSON = "application/json"
PROBLEM = "application/problem+json"
RUN_KINDS = [k.value for k in STARTABLE_KINDS]  # what POST /api/runs starts
RECORDED_KINDS = [k.value for k in RunKind]  # a recorded run: also `fhirpanel run --write`
# Every status the store writes (`RunStatus` says what each means), in the order this document
# and /metrics have always listed them; a status added later comes at the end.
_LISTED = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.SUCCEEDED,
    RunStatus.PARTIAL,
    RunStatus.FAILED,
    RunStatus.SKIPPED,
    RunStatus.ABANDONED,
    RunStatus.HELD,
    RunStatus.ACCEPTED,
    RunStatus.CRASHED,
)
RUN_STATUSES = [s.value for s in (*_LISTED, *(s for s in RunStatus if s not in _LISTED))]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_: str, **more: Any) -> dict[str, Any]:
    return {"type": [type_, "null"], **more}


def _obj(
    properties: dict[str, Any],
    required: list[str] | None = None,
    *,
    closed: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problem(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _paged(item: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A page of `item`s with its paging fields and links."""
    properties: dict[str, Any] = {
        "items": {"type": "array", "items": _ref(item)},
        "total": {"type": "integer", "minimum": 0},
        "page": {"type": "integer", "minimum": 1},
        "page_size": {"type": "integer", "minimum": 1},
        "pages": {"type": "integer", "minimum": 1},
        "next": _nullable("string", description="The next page's URL, null on the last page"),
        "prev": _nullable("string", description="The previous page's URL, null on the first"),
        **(extra or {}),
    }
    return _obj(properties)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _body(schema: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": _ref(schema)}},
    }


def build_openapi(api: ApiSettings) -> dict[str, Any]:
    """The document for an app with these API settings (page size limits)."""
    paging = [
        _query(
            "page",
            {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
            "Page number, from 1. A page past the end is empty.",
        ),
        _query(
            "page_size",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": api.max_page_size,
                "default": api.page_size,
            },
            "Items per page",
        ),
    ]
    tier = _query(
        "tier", {"type": "integer", "minimum": 0, "maximum": 9}, "Only patients in this risk tier"
    )

    def sort(default: str) -> dict[str, Any]:
        return _query(
            "sort",
            {"type": "string", "enum": list(SORT_VALUES), "default": default},
            "Sort key; a leading `-` sorts descending. Ties go by patient id.",
        )

    patient_id = _path(
        "patient",
        {"type": "string", "pattern": f"^(Patient/)?{FHIR_ID_PATTERN}$"},
        "The patient's id, bare (`pat-1`) or as a reference (`Patient/pat-1`)",
    )
    read_errors = {"401": _problem("Unauthorized"), "503": _problem("Unavailable")}
    admin_errors = {
        **read_errors,
        "403": _problem("Forbidden"),
        "413": _problem("TooLarge"),
        "415": _problem("UnsupportedMediaType"),
        "400": _problem("BadRequest"),
        "422": _problem("Unprocessable"),
    }
    admin_note = "Needs an admin token."
    run_id = _path(
        "run_id", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, "The run's id"
    )

    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["health"],
                "security": [],
                "summary": "The process is up",
                "responses": {"200": _json(_ref("Health"), "Up")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["health"],
                "security": [],
                "summary": "Ready to serve: store and FHIR server reachable, results stored",
                "description": "The FHIR server is checked with `GET [base]/metadata` (short "
                "timeout, cached a few seconds); with no server configured that "
                "check passes as `not configured`.",
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready"),
                    "503": _json(_ref("Readiness"), "Not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "The Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **read_errors,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI document"),
                    **read_errors,
                },
            }
        },
        "/api/panels": {
            "get": {
                "operationId": "listPanels",
                "tags": ["panels"],
                "summary": "Every clinician's panel",
                "description": "Panel size, risk-adjusted size, capacity, open capacity, tier mix "
                "and unconfirmed assignments per clinician, with supply, demand, how capacity "
                "was found and the panel against its peers, and practice totals.",
                "responses": {"200": _json(_ref("PanelList"), "The panels"), **read_errors},
            }
        },
        "/api/panels/{practitioner}": {
            "get": {
                "operationId": "getPanel",
                "tags": ["panels"],
                "summary": "The patients of one panel",
                "parameters": [
                    _path(
                        "practitioner",
                        {"type": "string", "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$"},
                        "The clinician's id, bare or as `Practitioner/<id>`",
                    ),
                    *paging,
                    sort("patient"),
                    tier,
                    _query(
                        "unconfirmed",
                        {"type": "boolean"},
                        "Only assignments nobody has confirmed yet",
                    ),
                    _query(
                        "overdue",
                        {"type": "boolean"},
                        "Only patients flagged for outreach (not seen, sentinel exam overdue)",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("PanelPage"), "A page of the panel"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                    **read_errors,
                },
            }
        },
        "/api/patients/{patient}": {
            "get": {
                "operationId": "getPatient",
                "tags": ["patients"],
                "summary": "Why a patient is assigned where they are, and their risk",
                "description": "Visits per clinician in the look-back window, the rule and step "
                "that decided, the evidence encounters, risk components, the "
                "CareTeam and CarePlan written, overrides, confirmations, the "
                "assignment history and the audit trail.",
                "parameters": [patient_id],
                "responses": {
                    "200": _json(_ref("PatientExplanation"), "The explanation"),
                    "404": _problem("NotFound"),
                    **read_errors,
                },
            }
        },
        "/api/patients/{patient}/status": {
            "put": {
                "operationId": "setPatientStatus",
                "tags": ["patients"],
                "summary": "Record that a patient moved away, transferred care, was dismissed "
                "or died",
                "description": "Replaces any status in force. Stored and audited at once; the "
                "patient leaves every panel at the next refresh (excluded with the "
                "status's reason: `moved-away`, `transferred-care`, `dismissed`, "
                "`deceased-recorded`), which this starts when no refresh is running. "
                "409 when the patient's record already excludes them. " + admin_note,
                "x-fhirpanel-scope": "admin",
                "parameters": [patient_id],
                "requestBody": _body("StatusRequest", "The status, and why"),
                "responses": {
                    "200": _json(_ref("StatusResult"), "Stored"),
                    "404": _problem("NotFound"),
                    "409": _problem("Conflict"),
                    **admin_errors,
                },
            },
            "delete": {
                "operationId": "clearPatientStatus",
                "tags": ["patients"],
                "summary": "Clear a patient's status",
                "description": "The patient counts again from the next refresh. " + admin_note,
                "x-fhirpanel-scope": "admin",
                "parameters": [patient_id],
                "responses": {
                    "200": _json(_ref("ClearedStatus"), "Cleared"),
                    "404": _problem("NotFound"),
                    "401": _problem("Unauthorized"),
                    "403": _problem("Forbidden"),
                    "503": _problem("Unavailable"),
                },
            },
        },
        "/api/unassigned": {
            "get": {
                "operationId": "listUnassigned",
                "tags": ["patients"],
                "summary": "Active patients without a clinician, with a suggested one",
                "parameters": [*paging, sort("-tier"), tier],
                "responses": {
                    "200": _json(_ref("UnassignedPage"), "A page of patients"),
                    "400": _problem("BadRequest"),
                    **read_errors,
                },
            }
        },
        "/api/unassigned/assign-suggested": {
            "post": {
                "operationId": "assignSuggested",
                "tags": ["assignments"],
                "summary": "Accept the placement suggestions for unassigned patients",
                "description": "One override per accepted suggestion, to the suggested clinician, "
                "asked for by staff, with the reason `placement suggestion accepted: "
                "<the suggestion's reason>` (stored and audited at once; the "
                "assignments change at the next refresh, which this starts when no "
                "refresh is running). Send the pairs the caller saw: each is checked "
                "against the stored suggestion, and one whose patient is gone, no "
                "longer unassigned or already has an override waiting, whose "
                "suggestion changed since (a refresh placed the patient again), "
                "whose clinician is no longer eligible, or that is listed twice, is "
                'not stored but listed in `refused` with the reason. `"all"` '
                "accepts every stored suggestion as it is now. Patients no clinician "
                "has room for have no suggestion to accept. A change this large may "
                "be held by the brake at the next refresh (`[safety]`). " + admin_note,
                "x-fhirpanel-scope": "admin",
                "requestBody": _body(
                    "AssignSuggestedRequest", 'The suggestions to accept, or "all"'
                ),
                "responses": {
                    "200": _json(_ref("AssignSuggestedResult"), "Accepted and refused"),
                    **admin_errors,
                },
            }
        },
        "/api/outreach": {
            "get": {
                "operationId": "listOutreach",
                "tags": ["patients"],
                "summary": "Patients to reach out to",
                "description": "Assigned patients not seen in N months or whose sentinel exam is "
                "overdue (N from the attribution settings).",
                "parameters": [
                    *paging,
                    sort("-tier"),
                    _query(
                        "practitioner",
                        {"type": "string", "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$"},
                        "Only this clinician's patients",
                    ),
                    _query(
                        "reason",
                        {"type": "string", "enum": list(OUTREACH_KINDS)},
                        "Only this kind of outreach",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("OutreachPage"), "A page of patients"),
                    "400": _problem("BadRequest"),
                    **read_errors,
                },
            }
        },
        "/api/assignments/{patient}/override": {
            "post": {
                "operationId": "addOverride",
                "tags": ["assignments"],
                "summary": "Assign a patient to a clinician by hand",
                "description": "Replaces any override in force. Stored and audited at once; "
                "the assignment changes at the next refresh, which this starts "
                "when no refresh is running. " + admin_note,
                "x-fhirpanel-scope": "admin",
                "parameters": [patient_id],
                "requestBody": _body("OverrideRequest", "The clinician, why, and who asked"),
                "responses": {
                    "201": _json(_ref("OverrideResult"), "Stored"),
                    "404": _problem("NotFound"),
                    "409": _problem("Conflict"),
                    **admin_errors,
                },
            },
            "delete": {
                "operationId": "removeOverride",
                "tags": ["assignments"],
                "summary": "Remove a patient's override",
                "description": "The usual rules decide again at the next refresh. " + admin_note,
                "x-fhirpanel-scope": "admin",
                "parameters": [patient_id],
                "responses": {
                    "200": _json(_ref("RemovedOverride"), "Removed"),
                    "404": _problem("NotFound"),
                    "401": _problem("Unauthorized"),
                    "403": _problem("Forbidden"),
                    "503": _problem("Unavailable"),
                },
            },
        },
        "/api/assignments/{patient}/confirm": {
            "post": {
                "operationId": "confirmAssignment",
                "tags": ["assignments"],
                "summary": "Confirm a patient's current clinician",
                "description": "Confirmed with the clinician or with the patient; it holds while "
                "the patient stays with that clinician. The patient must be "
                "assigned (409 otherwise); when `practitioner` is given it must be "
                "the current one (409 when the assignment changed). " + admin_note,
                "x-fhirpanel-scope": "admin",
                "parameters": [patient_id],
                "requestBody": _body("ConfirmRequest", "Who confirmed, and an optional note"),
                "responses": {
                    "201": _json(_ref("ConfirmResult"), "Stored"),
                    "404": _problem("NotFound"),
                    "409": _problem("Conflict"),
                    **admin_errors,
                },
            }
        },
        "/api/runs": {
            "get": {
                "operationId": "listRuns",
                "tags": ["runs"],
                "summary": "Refresh runs, newest first",
                "parameters": paging,
                "responses": {
                    "200": _json(_ref("RunPage"), "A page of runs"),
                    "400": _problem("BadRequest"),
                    **read_errors,
                },
            },
            "post": {
                "operationId": "startRun",
                "tags": ["runs"],
                "summary": "Start a full or incremental refresh",
                "description": "Runs in the background; 409 while another refresh holds the "
                "lock. " + admin_note,
                "x-fhirpanel-scope": "admin",
                "requestBody": _body("RunRequest", "Which kind of refresh"),
                "responses": {
                    "202": {
                        **_json(_ref("Run"), "Started"),
                        "headers": {
                            "Location": {
                                "description": "The run's URL",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "409": _problem("Conflict"),
                    **admin_errors,
                },
            },
        },
        "/api/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "tags": ["runs"],
                "summary": "One run",
                "parameters": [run_id],
                "responses": {
                    "200": _json(_ref("Run"), "The run"),
                    "404": _problem("NotFound"),
                    **read_errors,
                },
            }
        },
        "/api/runs/{run_id}/accept": {
            "post": {
                "operationId": "acceptRun",
                "tags": ["runs"],
                "summary": "Let a held run's change through",
                "description": "A pass that would remove, end or change more than the `[safety]` "
                "limits allow is recorded `held` with its figures in "
                "`counts.held` (`{name: {count, of, share, limit}}` for "
                "`removed_patients`, `ended_participations`, "
                "`changed_assignments`) and writes nothing. Accepting it, after "
                "reading those figures, marks it `accepted` (audited under the "
                "token's name, `counts.accepted` = `{by, at}`) and starts or queues "
                "the next refresh (`next_run`; null when a refresh is running, or "
                "for a held `fhirpanel run --write`, which is simply run again): "
                "that pass goes ahead when it changes no more than the accepted "
                "figures (give or take 5%). No body. 409 when the run is not held "
                "(already accepted, or never held). " + admin_note,
                "x-fhirpanel-scope": "admin",
                "parameters": [run_id],
                "responses": {
                    "202": {
                        **_json(_ref("AcceptResult"), "Accepted"),
                        "headers": {
                            "Location": {
                                "description": "The next run's URL, when one was started",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "404": _problem("NotFound"),
                    "409": _problem("Conflict"),
                    "401": _problem("Unauthorized"),
                    "403": _problem("Forbidden"),
                    "413": _problem("TooLarge"),
                    "503": _problem("Unavailable"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fhirpanel API",
            "version": __version__,
            "description": (
                "Panels, patients, overrides, confirmations and refresh runs of a fhirpanel "
                "store. Every endpoint but `/healthz` and `/readyz` needs "
                "`Authorization: Bearer <token>`: read tokens may read; admin tokens "
                "(marked `x-fhirpanel-scope: admin`) may also change things. Errors are RFC "
                "9457 problem documents. References use the FHIR `Type/id` form. The HTML "
                "dashboard (`/`, signing in by a POST to `/login` or a single-use "
                "`/login/once/{code}` link, with a session cookie) is not part of this API."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": n}
            for n in ("health", "operations", "panels", "patients", "assignments", "runs")
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `api.read_tokens` or `api.admin_tokens`",
                }
            },
            "schemas": _schemas(),
            "responses": _responses(api),
        },
    }


def _responses(api: ApiSettings) -> dict[str, Any]:
    def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM: {"schema": _ref("Problem")}},
        }
        if headers:
            out["headers"] = headers
        return out

    challenge = {
        "WWW-Authenticate": {
            "description": "The bearer challenge (RFC 6750)",
            "schema": {"type": "string"},
        }
    }
    return {
        "BadRequest": problem(
            "Malformed JSON, JSON nesting arrays or objects more than "
            f"{MAX_JSON_DEPTH} levels deep, or a wrong query parameter "
            "(named in `errors`)"
        ),
        "Unauthorized": problem("No token, or a token that is not configured", challenge),
        "Forbidden": problem("A read token on an endpoint that needs admin", challenge),
        "NotFound": problem("No such patient, clinician, override, status or run"),
        "Conflict": problem(
            "The state does not allow it (patient not assigned or excluded, "
            "a status for a patient their record already excludes, "
            "assignment changed, a refresh already running, a run to accept "
            "that is not held)"
        ),
        "TooLarge": problem(
            f"The body is larger than {api.max_body_bytes} bytes "
            "(`api.max_body_bytes`), whether sent with a Content-Length or "
            "chunked"
        ),
        "UnsupportedMediaType": problem("The body is not sent as application/json"),
        "Unprocessable": problem(
            "A body member is missing, unknown or wrong (named in "
            "`errors`), or the clinician is unknown or not eligible"
        ),
        "Unavailable": problem(
            "The store cannot answer, or a refresh cannot start (no source configured)"
        ),
    }


def _schemas() -> dict[str, Any]:
    string, integer, number, boolean = (
        {"type": t} for t in ("string", "integer", "number", "boolean")
    )
    reference = {"type": "string", "pattern": f"^[A-Za-z]+/{FHIR_ID_PATTERN}$"}
    tiers = {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
        "description": 'Patients per risk tier (`"1"` .. `"4"`)',
    }
    confirmation_state = {"type": "string", "enum": ["proposed", *CONFIRMERS]}
    relative = _obj(
        {
            "framework": {"type": "string", "enum": ["adult", "pediatric"]},
            "peers": {"type": "integer", "minimum": 1},
            "risk_adjusted_ratio": _nullable("number"),
            "blended_ratio": _nullable("number"),
            "percentile": {"type": "number", "minimum": 0, "maximum": 100},
            "blended_percentile": _nullable("number", minimum=0, maximum=100),
        },
        description="Ratios to the peers' median and percentile ranks among the peers",
    )
    refresh = _obj(
        {"run_id": _nullable("integer"), "started": boolean, "detail": string},
        description="The refresh asked for after a change (best effort)",
    )
    return {
        "Problem": _obj(
            {
                "type": {
                    "type": "string",
                    "description": "A URN naming the kind of problem, or about:blank",
                },
                "title": string,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": string,
                "instance": string,
                "errors": {"type": "array", "items": _obj({"field": string, "message": string})},
            },
            ["type", "title", "status", "detail"],
            description="RFC 9457 problem details",
        ),
        "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}),
        "Check": {
            "type": "object",
            "required": ["ok", "detail"],
            "properties": {"ok": boolean, "detail": string},
        },
        "Readiness": _obj(
            {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": _obj(
                    {"store": _ref("Check"), "fhir": _ref("Check"), "last_run": _ref("Check")}
                ),
            }
        ),
        "Totals": _obj(
            {
                k: {"type": "integer", "minimum": 0}
                for k in (
                    "patients",
                    "assigned",
                    "unassigned",
                    "excluded",
                    "unconfirmed",
                    "overrides",
                    "pending",
                )
            }
        ),
        "Panel": _obj(
            {
                "practitioner": reference,
                "name": _nullable("string"),
                "eligible": boolean,
                "pediatric": boolean,
                "size": integer,
                "risk_adjusted_size": number,
                "hcc_adjusted_size": _nullable("number"),
                "capacity": number,
                "open_capacity": number,
                "tiers": tiers,
                "unconfirmed": {"type": "integer", "minimum": 0},
                "supply": _nullable(
                    "number",
                    description="Capacity in visits a year (qualifying visits in 12 months)",
                ),
                "demand": _nullable("number", description="Visits per patient per year"),
                "expected_visits": _nullable(
                    "number", description="Visits a year the panel is expected to need"
                ),
                "share_used": _nullable(
                    "number", description="Risk-adjusted size over capacity; null without capacity"
                ),
                "capacity_method": {
                    "type": ["string", "null"],
                    "enum": ["observed", "configured", None],
                },
                "capacity_basis": _nullable("string", description="How capacity was found"),
                "blended_size": _nullable("number"),
                "relative": {
                    "oneOf": [relative, {"type": "null"}],
                    "description": "The panel against its eligible peers; null when not eligible",
                },
            },
            description="Capacity, supply, demand, blended size and relative are as the last "
            "full refresh found them",
        ),
        "PanelList": _obj(
            {
                "panels": {"type": "array", "items": _ref("Panel")},
                "totals": _ref("Totals"),
                "as_of": _nullable("string"),
            }
        ),
        "PanelPatient": _obj(
            {
                "patient": reference,
                "tier": _nullable("integer"),
                "charlson": _nullable("integer"),
                "hcc": _nullable("number"),
                "ccm_eligible": boolean,
                "drivers": {
                    "type": "object",
                    "description": "Risk components: Charlson "
                    "categories, HCCs, chronic conditions, ED visits, inpatient stays, "
                    "the tier rule",
                },
                "rule": _nullable("string"),
                "step": _nullable("string"),
                "last_visit": _nullable("string"),
                "confirmation": confirmation_state,
                "override": boolean,
                "outreach": {"type": "array", "items": string},
            }
        ),
        "PanelPage": _paged(
            "PanelPatient",
            {
                "panel": _ref("Panel"),
                "sort": string,
                "filters": _obj(
                    {"tier": _nullable("integer"), "unconfirmed": boolean, "overdue": boolean}
                ),
            },
        ),
        "Suggestion": _obj(
            {
                "practitioner": {
                    "oneOf": [reference, {"type": "null"}],
                    "description": "null: no clinician has room for the patient (the reason "
                    "gives the shortfall)",
                },
                "reason": _nullable("string"),
            },
            description="The clinician suggested for an unassigned patient and why "
            "(docs/methods.md s.3.5)",
        ),
        "UnassignedPatient": _obj(
            {
                "patient": reference,
                "tier": _nullable("integer"),
                "reason": _nullable("string"),
                "last_visit": _nullable("string"),
                "suggested": {"oneOf": [_ref("Suggestion"), {"type": "null"}]},
            }
        ),
        "UnassignedPage": _paged(
            "UnassignedPatient", {"sort": string, "filters": _obj({"tier": _nullable("integer")})}
        ),
        "OutreachPatient": _obj(
            {
                "patient": reference,
                "practitioner": _nullable("string"),
                "tier": _nullable("integer"),
                "last_visit": _nullable("string"),
                "outreach": {"type": "array", "items": string},
                "confirmation": confirmation_state,
            }
        ),
        "OutreachPage": _paged(
            "OutreachPatient",
            {
                "sort": string,
                "filters": _obj(
                    {"practitioner": _nullable("string"), "reason": _nullable("string")}
                ),
                "thresholds": _obj({"not_seen_months": integer, "sentinel_months": integer}),
            },
        ),
        "Written": {
            "oneOf": [
                {"type": "null"},
                _obj(
                    {
                        "reference": string,
                        "version": _nullable("string"),
                        "identifier": string,
                        "updated_at": _nullable("string"),
                    }
                ),
            ]
        },
        "HistoryEntry": _obj(
            {
                "status": string,
                "practitioner": _nullable("string"),
                "rule": _nullable("string"),
                "step": _nullable("string"),
                "valid_from": _nullable("string"),
                "valid_to": _nullable("string"),
                "run_id": _nullable("integer"),
            }
        ),
        "Override": _obj(
            {
                "id": integer,
                "patient": reference,
                "practitioner": reference,
                "reason": string,
                "requested_by": {"type": "string", "enum": list(REQUESTERS)},
                "actor": string,
                "created_at": _nullable("string"),
                "removed_at": _nullable("string"),
                "removed_by": _nullable("string"),
                "applied_run": _nullable("integer"),
            }
        ),
        "ConfirmationEntry": _obj(
            {
                "practitioner": reference,
                "confirmed_by": {"type": "string", "enum": list(CONFIRMERS)},
                "note": string,
                "actor": string,
                "created_at": _nullable("string"),
            }
        ),
        "PatientStatus": _obj(
            {
                "id": integer,
                "patient": reference,
                "status": {"type": "string", "enum": list(STATUSES)},
                "reason": string,
                "actor": string,
                "created_at": _nullable("string"),
                "cleared_at": _nullable("string"),
                "cleared_by": _nullable("string"),
            }
        ),
        "AuditEntry": _obj(
            {
                "at": _nullable("string"),
                "actor": string,
                "action": string,
                "patient": _nullable("string"),
                "detail": {"type": "object"},
            }
        ),
        "PatientExplanation": _obj(
            {
                "patient": reference,
                "status": {"type": "string", "enum": ["assigned", "unassigned", "excluded"]},
                "practitioner": _nullable("string"),
                "rule": _nullable("string"),
                "step": _nullable("string"),
                "reason": _nullable("string"),
                "tie_broken": boolean,
                "sentinel_exam": _nullable("string"),
                "practitioner_role": _nullable("string"),
                "tier": _nullable("integer"),
                "charlson": _nullable("integer"),
                "hcc": _nullable("number"),
                "ccm_eligible": boolean,
                "weight": number,
                "last_visit": _nullable("string"),
                "confirmation": confirmation_state,
                "override": boolean,
                "outreach": {"type": "array", "items": string},
                "suggested": {"oneOf": [_ref("Suggestion"), {"type": "null"}]},
                "visits": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "Qualifying visits per clinician in the window",
                },
                "evidence": {
                    "type": "array",
                    "items": string,
                    "description": "The encounters that decided",
                },
                "risk": {
                    "type": ["object", "null"],
                    "description": "Risk components: charlson, "
                    "hcc, tier, ccm_eligible, charlson_categories, hccs, interactions, "
                    "ed_visits, inpatient_stays, chronic_conditions, tier_rule",
                },
                "written": _obj({"CareTeam": _ref("Written"), "CarePlan": _ref("Written")}),
                "history": {"type": "array", "items": _ref("HistoryEntry")},
                "active_override": {"oneOf": [_ref("Override"), {"type": "null"}]},
                "overrides": {"type": "array", "items": _ref("Override")},
                "confirmations": {"type": "array", "items": _ref("ConfirmationEntry")},
                "active_status": {"oneOf": [_ref("PatientStatus"), {"type": "null"}]},
                "statuses": {"type": "array", "items": _ref("PatientStatus")},
                "pending": {
                    "type": "boolean",
                    "description": "Queued for the next refresh (an override waiting, a "
                    "failed write)",
                },
                "audit": {"type": "array", "items": _ref("AuditEntry")},
                "run_id": _nullable("integer"),
                "updated_at": _nullable("string"),
            }
        ),
        "OverrideRequest": _obj(
            {
                "practitioner": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "An eligible clinician, bare id or reference",
                },
                "reason": {
                    "type": "string",
                    "maxLength": 500,
                    "pattern": r"\S",
                    "description": "Why (goes into the audit log)",
                },
                "requested_by": {"type": "string", "enum": list(REQUESTERS)},
            },
            closed=True,
        ),
        "OverrideResult": _obj({"override": _ref("Override"), "refresh": refresh}),
        "SuggestionPair": _obj(
            {
                "patient": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Patient/)?{FHIR_ID_PATTERN}$",
                },
                "practitioner": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "The suggested clinician, as the caller saw it",
                },
            },
            closed=True,
        ),
        "AssignSuggestedRequest": _obj(
            {
                "suggestions": {
                    "oneOf": [
                        {"type": "string", "enum": ["all"]},
                        {
                            "type": "array",
                            "items": _ref("SuggestionPair"),
                            "minItems": 1,
                            "maxItems": MAX_PAIRS,
                        },
                    ]
                }
            },
            closed=True,
        ),
        "AssignSuggestedResult": _obj(
            {
                "assigned": {
                    "type": "array",
                    "items": _obj(
                        {
                            "patient": reference,
                            "practitioner": reference,
                            "override": _ref("Override"),
                        }
                    ),
                },
                "refused": {
                    "type": "array",
                    "items": _obj(
                        {
                            "patient": reference,
                            "practitioner": _nullable("string"),
                            "problem": {
                                "type": "string",
                                "enum": sorted({*REFUSALS.values(), "conflict"}),
                            },
                            "detail": string,
                        }
                    ),
                },
                "refresh": {
                    "oneOf": [refresh, {"type": "null"}],
                    "description": "The refresh asked for; null when nothing was accepted",
                },
            }
        ),
        "RemovedOverride": _obj(
            {
                "removed": {"type": "boolean", "enum": [True]},
                "patient": reference,
                "refresh": refresh,
            }
        ),
        "StatusRequest": _obj(
            {
                "status": {"type": "string", "enum": list(STATUSES)},
                "reason": {
                    "type": "string",
                    "maxLength": 500,
                    "pattern": r"\S",
                    "description": "Why (goes into the audit log)",
                },
            },
            closed=True,
        ),
        "StatusResult": _obj({"status": _ref("PatientStatus"), "refresh": refresh}),
        "ClearedStatus": _obj(
            {
                "cleared": {"type": "boolean", "enum": [True]},
                "patient": reference,
                "refresh": refresh,
            }
        ),
        "ConfirmRequest": _obj(
            {
                "confirmed_by": {"type": "string", "enum": list(CONFIRMERS)},
                "practitioner": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": f"^(Practitioner/)?{FHIR_ID_PATTERN}$",
                    "description": "The clinician being confirmed; must be the current one",
                },
                "note": {"type": "string", "maxLength": 500},
            },
            ["confirmed_by"],
            closed=True,
        ),
        "Confirmation": _obj(
            {
                "id": integer,
                "patient": reference,
                "practitioner": reference,
                "confirmed_by": {"type": "string", "enum": list(CONFIRMERS)},
                "note": string,
                "actor": string,
                "created_at": _nullable("string"),
            }
        ),
        "ConfirmResult": _obj({"confirmation": _ref("Confirmation")}),
        "RunRequest": _obj({"kind": {"type": "string", "enum": RUN_KINDS}}, closed=True),
        "Run": _obj(
            {
                "id": integer,
                "kind": {"type": "string", "enum": RECORDED_KINDS},
                "trigger": string,
                "source": string,
                "as_of": string,
                "started_at": _nullable("string"),
                "finished_at": _nullable("string"),
                "status": {"type": "string", "enum": RUN_STATUSES},
                "counts": {
                    "type": "object",
                    "description": "What the run did; a held run's "
                    "figures are in `held` (`{name: {count, of, share, limit}}`), an "
                    "accepted one's acceptance in `accepted` (`{by, at}`)",
                },
                "error": _nullable("string"),
                "watermark_before": _nullable("string"),
                "watermark_after": _nullable("string"),
                "requests": integer,
                "seconds": _nullable("number"),
            }
        ),
        "RunPage": _paged("Run"),
        "AcceptResult": _obj(
            {
                "run": _ref("Run"),
                "next_run": _nullable(
                    "integer", description="The run started or queued to apply the change, or null"
                ),
                "detail": {"type": "string", "description": "What happens next, in words"},
            }
        ),
    }
