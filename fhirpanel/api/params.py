"""Reading requests strictly: query parameters (a wrong value is a 400 naming the parameter),
JSON bodies (malformed JSON, or JSON nested deeper than `MAX_JSON_DEPTH`, is a 400; a missing,
unknown or wrong member is a 422 naming it; the size is bounded by the app, 413) and resource
ids in paths (either `pat-1` or `Patient/pat-1`; anything else is a 404)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import request

from fhirpanel.api.problems import Problem, invalid, not_found
from fhirpanel.service.references import reference

INTEGER = re.compile(r"-?[0-9]{1,12}")  # plain ASCII digits: no `1_000`, no spaces
# The API's bodies are flat objects; 64 levels is far more than any needs and far less than
# the parser's recursion limit (a body nested 5,000 deep used to end in a RecursionError, 500).
MAX_JSON_DEPTH = 64
# A JSON string (with its escapes; an unterminated one runs to the end) or a bracket: strings
# are skipped whole, brackets counted. Possessive, and every string start matches: linear time.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[\]{}]', re.S)
# Patterns are used with fullmatch: `$` would let a trailing newline through.


def path_reference(rtype: str, raw: str) -> str:
    """A resource id in the path (`reference`: the one check, shared with the dashboard)."""
    ref = reference(rtype, raw)
    if ref is None:
        raise not_found(f"{raw!r} is not a {rtype} id")
    return ref


# ---------------------------------------------------------------- query parameters


def int_param(name: str, default: int | None, *, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not INTEGER.fullmatch(raw):
        raise invalid(name, f"must be a whole number, not {raw!r}", status=400, where="query")
    value = int(raw)
    if not low <= value <= high:
        raise invalid(name, f"must be between {low} and {high}", status=400, where="query")
    return value


def bool_param(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw in ("true", "false"):
        return raw == "true"
    raise invalid(name, "must be true or false", status=400, where="query")


def choice_param(name: str, choices: Sequence[str], default: str | None) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise invalid(name, f"must be one of {', '.join(choices)}", status=400, where="query")
    return raw


def reference_param(name: str, rtype: str) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    ref = reference(rtype, raw)
    if ref is None:
        raise invalid(name, f"must be a {rtype} id", status=400, where="query")
    return ref


# ---------------------------------------------------------------- JSON bodies


@dataclass(frozen=True)
class Member:
    """One string member of a request body."""

    name: str
    required: bool = True
    choices: tuple[str, ...] = ()
    max_length: int = 500
    allow_empty: bool = False
    free_text: bool = False  # runs of whitespace (newlines too) become one space


def json_object() -> dict[str, Any]:
    """The body as a JSON object: media type (415), nesting and malformed JSON (400), not an
    object (422). Its members are the caller's to check; `json_body` checks declared ones."""
    if not request.is_json:
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the body as JSON with Content-Type: application/json",
            kind="unsupported-media-type",
        )
    raw = request.get_data(cache=True)
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise Problem(
            400,
            "JSON nested too deeply",
            f"the body nests arrays or objects {depth} levels deep; at most "
            f"{MAX_JSON_DEPTH} are accepted",
            kind="json-too-deep",
        )
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(
            400, "Malformed JSON", f"the body is not valid JSON: {exc}", kind="malformed-json"
        ) from None
    except RecursionError:  # a guard: the depth check above comes first
        raise Problem(
            400, "JSON nested too deeply", "the body nests too deeply", kind="json-too-deep"
        ) from None
    if not isinstance(body, dict):
        raise invalid("(body)", "must be a JSON object")
    return body


def json_body(members: Sequence[Member]) -> dict[str, str]:
    """The body as a dict of the declared members, all strings (free text has its whitespace
    collapsed, nothing else is altered); absent optional members are left out."""
    body = json_object()
    known = {m.name for m in members}
    for name in body:
        if name not in known:
            raise invalid(name, f"unknown member; expected {', '.join(sorted(known))}")
    out: dict[str, str] = {}
    for member in members:
        if member.name not in body:
            if member.required:
                raise invalid(member.name, "is required")
            continue
        value = body[member.name]
        if not isinstance(value, str):
            raise invalid(member.name, "must be a string")
        if len(value) > member.max_length:
            raise invalid(member.name, f"must be at most {member.max_length} characters")
        if member.free_text:
            value = " ".join(value.split())
        if not value and not member.allow_empty:
            raise invalid(member.name, "must not be empty")
        if member.choices and value not in member.choices:
            raise invalid(member.name, f"must be one of {', '.join(member.choices)}")
        out[member.name] = value
    return out


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count),
    without parsing it: one pass of a compiled pattern, so a hostile body costs no recursion.
    Unbalanced text gets an approximate answer; the parser refuses it afterwards."""
    depth = deepest = 0
    for token in _JSON_TOKEN.findall(raw):
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def pairs_or_all(
    value: Any, field: str, members: tuple[str, str], limit: int, noun: str
) -> list[tuple[str, str]] | None:
    """A bulk body member: `"all"` (None), or a list of 1 to `limit` objects with exactly the
    two string `members` (at most 200 characters each), as pairs in the order given."""
    first, second = members
    if value == "all":
        return None
    if not isinstance(value, list):
        raise invalid(field, f'must be "all" or a list of {{{first}, {second}}}')
    if not 1 <= len(value) <= limit:
        raise invalid(field, f"must list 1 to {limit} {noun}")
    pairs = []
    for n, item in enumerate(value):
        where = f"{field}[{n}]"
        if not isinstance(item, dict):
            raise invalid(where, f"must be an object with {first} and {second}")
        for name in item:
            if name not in members:
                raise invalid(f"{where}.{name}", f"unknown member; expected {first}, {second}")
        for name in members:
            if not isinstance(item.get(name), str):
                raise invalid(f"{where}.{name}", "is required, a string")
            if len(item[name]) > 200:
                raise invalid(f"{where}.{name}", "must be at most 200 characters")
        pairs.append((item[first], item[second]))
    return pairs
