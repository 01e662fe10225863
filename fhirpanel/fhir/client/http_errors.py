"""The one place an HTTP error answer becomes an exception: its class by status, its message from
the OperationOutcome (or the body's kind), the HAPI code kept, and a 403 that blames the token
told apart from one that denies the permission."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from fhirpanel.errors import (
    AuthError,
    FhirHttpError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    VersionConflictError,
)
from fhirpanel.fhir.client.links import redact_url

_HAPI_CODE = re.compile(r"\bHAPI-\d{4}\b")
_MAX_MESSAGE = 400


def error_for_response(
    status: int, body: bytes, content_type: str = "", url: str = "", reason: str = ""
) -> FhirHttpError:
    """The exception for an HTTP error answer, keeping its OperationOutcome and HAPI code."""
    outcome = _operation_outcome(body)
    texts = outcome_messages(outcome) if outcome is not None else []
    if texts:
        message = "; ".join(texts)
    elif outcome is not None:
        message = f"{reason or 'error'} (OperationOutcome without a message)"
    else:
        message = _non_fhir_body_message(body, content_type, reason)
    codes = list(dict.fromkeys(_HAPI_CODE.findall(" ".join(texts))))
    message = _shorten(message, codes)
    error_class = _error_class(status)
    if status == 403 and codes and codes[0] == "HAPI-1979":
        message += " (HAPI refuses bearer tokens it does not know: set fhir.auth = 'none')"
    return error_class(
        status, message, url=redact_url(url), outcome=outcome, hapi_code=codes[0] if codes else None
    )


# A 403 that blames the token rather than the permission: RFC 6750 `invalid_token` (in
# WWW-Authenticate or an OAuth error body), or an OperationOutcome / text saying it expired or is
# not valid.
_TOKEN_REFUSED = re.compile(
    r"invalid[_ ]token|\bexpired\b"
    r"|\btoken\b[^.;\n]{0,40}?\b(?:not valid|invalid|revoked)\b"
    r"|\b(?:invalid|revoked)\s+(?:access\s+|bearer\s+|auth\w*\s+)?token\b",
    re.IGNORECASE,
)


def token_refused(www_authenticate: str, body: bytes) -> bool:
    """True when a 403 says the access token is invalid or expired (worth one renewal), not
    that the client lacks the permission."""
    text = f"{www_authenticate} {body[:4096].decode('utf-8', 'replace')}"
    return bool(_TOKEN_REFUSED.search(text))


def _error_class(status: int) -> type[FhirHttpError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status in (409, 412):
        return VersionConflictError
    if status == 410:
        return GoneError
    if status in (400, 422):
        return InvalidRequestError
    if status >= 500:
        return ServerError
    return FhirHttpError


def outcome_messages(outcome: Mapping[str, Any]) -> list[str]:
    """One line per issue (errors first: warnings only when there is no error), from
    `diagnostics`, else `details.text`, else a coding display, else the issue code."""
    raw_issues = outcome.get("issue")
    issues = (
        [i for i in raw_issues if isinstance(i, Mapping)] if isinstance(raw_issues, list) else []
    )
    errors = [i for i in issues if i.get("severity") in ("fatal", "error")]
    lines = []
    for issue in errors or issues:
        raw_details = issue.get("details")
        details: Mapping[str, Any] = raw_details if isinstance(raw_details, Mapping) else {}
        raw_codings = details.get("coding")
        codings = (
            [c for c in raw_codings if isinstance(c, Mapping)]
            if isinstance(raw_codings, list)
            else []
        )
        text = (
            issue.get("diagnostics")
            or details.get("text")
            or next((c.get("display") for c in codings if c.get("display")), None)
            or issue.get("code")
        )
        if isinstance(text, str) and text.strip():
            lines.append(" ".join(text.split()))
    return lines


def _operation_outcome(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data
    return None


def _non_fhir_body_message(body: bytes, content_type: str, reason: str) -> str:
    kind = content_type.split(";")[0].strip() or "no content type"
    head = f"{reason or 'error'} ({kind}, {len(body)} bytes, no OperationOutcome)"
    if not body:
        return head
    if kind.endswith("json"):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return head
        error = data.get("error") if isinstance(data, dict) else None
        return f"{head}: {error}" if isinstance(error, str) else head
    if kind.startswith("text/"):
        text = re.sub(r"<[^>]*>", " ", body[:2000].decode("utf-8", "replace"))
        text = " ".join(text.split())[:120]
        return f"{head}: {text}" if text else head
    return head


def _shorten(message: str, codes: Sequence[str]) -> str:
    if len(message) <= _MAX_MESSAGE:
        return message
    short = message[: _MAX_MESSAGE - 3].rstrip() + "..."
    lost = [c for c in codes if c not in short]
    return f"{short} [also {', '.join(lost)}]" if lost else short
