"""What every part of the OpenAPI document shares: media types, run kinds and statuses, the small
schema builders, and the parameters and error responses several paths use."""

from __future__ import annotations

from typing import Any

from fhirpanel.config import ApiSettings
from fhirpanel.store.queries import SORT_VALUES
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


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(type_: str, **more: Any) -> dict[str, Any]:
    return {"type": [type_, "null"], **more}


def obj(
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


def all_or_list(item: str, limit: int) -> dict[str, Any]:
    """A bulk body member: the string "all", or 1 to `limit` `item`s."""
    return {
        "oneOf": [
            {"type": "string", "enum": ["all"]},
            {"type": "array", "items": ref(item), "minItems": 1, "maxItems": limit},
        ]
    }


def json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def problem_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def paged(item: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A page of `item`s with its paging fields and links."""
    properties: dict[str, Any] = {
        "items": {"type": "array", "items": ref(item)},
        "total": {"type": "integer", "minimum": 0},
        "page": {"type": "integer", "minimum": 1},
        "page_size": {"type": "integer", "minimum": 1},
        "pages": {"type": "integer", "minimum": 1},
        "next": nullable("string", description="The next page's URL, null on the last page"),
        "prev": nullable("string", description="The previous page's URL, null on the first"),
        **(extra or {}),
    }
    return obj(properties)


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _parameter(name, "query", False, schema, description)


def path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _parameter(name, "path", True, schema, description)


def _parameter(
    name: str, where: str, required: bool, schema: dict[str, Any], description: str
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": schema,
        "description": description,
    }


def request_body(schema: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": ref(schema)}},
    }


def paging(api: ApiSettings) -> list[dict[str, Any]]:
    """`page` and `page_size`, bounded by the API settings."""
    return [
        query_param(
            "page",
            {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
            "Page number, from 1. A page past the end is empty.",
        ),
        query_param(
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


TIER = query_param(
    "tier", {"type": "integer", "minimum": 0, "maximum": 9}, "Only patients in this risk tier"
)


def sort(default: str) -> dict[str, Any]:
    return query_param(
        "sort",
        {"type": "string", "enum": list(SORT_VALUES), "default": default},
        "Sort key; a leading `-` sorts descending. Ties go by patient id.",
    )


PATIENT_ID = path_param(
    "patient",
    {"type": "string", "pattern": f"^(Patient/)?{FHIR_ID_PATTERN}$"},
    "The patient's id, bare (`pat-1`) or as a reference (`Patient/pat-1`)",
)
READ_ERRORS = {"401": problem_ref("Unauthorized"), "503": problem_ref("Unavailable")}
ADMIN_ERRORS = {
    **READ_ERRORS,
    "403": problem_ref("Forbidden"),
    "413": problem_ref("TooLarge"),
    "415": problem_ref("UnsupportedMediaType"),
    "400": problem_ref("BadRequest"),
    "422": problem_ref("Unprocessable"),
}
ADMIN_NOTE = "Needs an admin token."
RUN_ID = path_param(
    "run_id", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, "The run's id"
)
