"""The pure parts of a Bulk Data `$export` (FHIR Bulk Data Access IG v2): the `bulk:` source spec,
the completion manifest and the error files checked, download names, `Retry-After` and which
polling errors are transient. No I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from fhirpanel.domain.records import Issue
from fhirpanel.errors import ConfigError, FhirHttpError, SourceError
from fhirpanel.fhir.client import outcome_messages, redact_url
from fhirpanel.fhir.parse import RESOURCE_TYPES
from fhirpanel.vocabulary import FHIR_ID_PATTERN

# What a run reads: every type fhir/parse.py turns into a record.
EXPORT_TYPES = RESOURCE_TYPES
NDJSON = "application/fhir+ndjson"
MAX_ERROR_ISSUES = 1000  # OperationOutcome lines taken from error files; the rest are counted
# IG: a polling failure that is not the export's failure carries a transient issue code.
TRANSIENT_CODES = frozenset({"transient", "throttled", "timeout", "lock-error"})

TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_FHIR_ID = re.compile(rf"^{FHIR_ID_PATTERN}$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$")
_GROUP_URL = re.compile(r"^(?P<base>.+?)/Group/(?P<id>[^/]+)$")


@dataclass(frozen=True)
class BulkTarget:
    """What a `bulk:` spec names: the FHIR base and, for a Group-level export, the Group id."""

    base_url: str
    group_id: str = ""


def parse_bulk_spec(spec: str) -> BulkTarget:
    """`bulk:BASE` or `bulk:BASE/Group/ID` (a trailing `/$export` is allowed)."""
    if not spec.startswith("bulk:"):
        raise ConfigError(f"not a bulk source: {spec!r}")
    url = spec.removeprefix("bulk:").strip().rstrip("/").removesuffix("/$export").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"bulk source needs an http(s) FHIR base URL: {redact_url(url)!r}")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(
            "bulk source URL takes no query: set _since with bulk.since (FHIRPANEL_BULK_SINCE)"
        )
    match = _GROUP_URL.match(url)
    if match is None:
        return BulkTarget(url)
    group_id = unquote(match.group("id"))
    check_group_id(group_id)
    return BulkTarget(match.group("base"), group_id)


def check_group_id(group_id: str) -> str:
    if not _FHIR_ID.match(group_id):
        raise ConfigError(f"not a FHIR id for a Group: {group_id!r}")
    return group_id


def check_since(since: str) -> str:
    """`_since` must be a FHIR instant (with seconds and a zone)."""
    if not _INSTANT.match(since):
        raise ConfigError(f"bulk since {since!r} is not a FHIR instant (e.g. 2026-11-01T00:00:00Z)")
    return since


@dataclass(frozen=True)
class ManifestFile:
    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True)
class ExportManifest:
    transaction_time: str
    request: str
    requires_access_token: bool
    output: tuple[ManifestFile, ...]
    error: tuple[ManifestFile, ...]


def parse_manifest(data: Any) -> ExportManifest:
    """The completion manifest; anything malformed is a SourceError (no partial import)."""
    if not isinstance(data, Mapping):
        raise SourceError("Bulk export manifest is not a JSON object")
    requires = data.get("requiresAccessToken", False)
    if not isinstance(requires, bool):
        raise SourceError("Bulk export manifest: requiresAccessToken is not true or false")
    transaction_time = data.get("transactionTime", "")
    request = data.get("request", "")
    return ExportManifest(
        transaction_time=transaction_time if isinstance(transaction_time, str) else "",
        request=request if isinstance(request, str) else "",
        requires_access_token=requires,
        output=_manifest_files(data.get("output"), "output"),
        error=_manifest_files(data.get("error"), "error"),
    )


def _manifest_files(raw: Any, key: str) -> tuple[ManifestFile, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SourceError(f"Bulk export manifest: {key} is not a list")
    files = []
    for n, item in enumerate(raw):
        where = f"Bulk export manifest: {key}[{n}]"
        if not isinstance(item, Mapping):
            raise SourceError(f"{where} is not an object")
        rtype, url, count = item.get("type"), item.get("url"), item.get("count")
        if not isinstance(rtype, str) or not TYPE_NAME.match(rtype):
            raise SourceError(f"{where}: no valid resource type")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SourceError(f"{where}: no http(s) url")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            count = None  # optional and advisory: a bad one is ignored
        files.append(ManifestFile(rtype, url, count))
    return tuple(files)


def download_names(files: Sequence[ManifestFile]) -> list[str]:
    """`Patient.0001.ndjson`, `Patient.0002.ndjson`, ...: numbered per type in manifest order, so
    `NdjsonSource` recognises the type and reads the files in that order."""
    seen: dict[str, int] = {}
    names = []
    for file in files:
        seen[file.type] = seen.get(file.type, 0) + 1
        names.append(f"{file.type}.{seen[file.type]:04d}.ndjson")
    return names


def error_file_name(n: int) -> str:
    """Lower case: never taken for a resource file by `NdjsonSource`."""
    return f"error.{n:04d}.ndjson"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from `now` (epoch seconds): delta-seconds or an HTTP-date."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def is_transient(error: FhirHttpError) -> bool:
    """A polling error the IG says to retry: every issue carries a transient code."""
    issues = (error.outcome or {}).get("issue") or []
    codes = {i.get("code") for i in issues if isinstance(i, Mapping)}
    return bool(codes) and codes <= TRANSIENT_CODES


def error_file_issues(
    lines: Sequence[bytes], name: str, limit: int = MAX_ERROR_ISSUES
) -> list[Issue]:
    """One Issue per OperationOutcome issue line in an export's error file."""
    issues: list[Issue] = []
    skipped = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"OperationOutcome/? ({name}:{lineno})"
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
            messages = ["unreadable error line"]
        else:
            messages = outcome_messages(data) or ["OperationOutcome without a message"]
        for message in messages:
            if len(issues) >= limit:
                skipped += 1
                continue
            issues.append(Issue(where, f"export error: {message[:300]}", "recorded"))
    if skipped:
        issues.append(
            Issue(
                f"OperationOutcome/? ({name})",
                f"export error: {skipped} more error lines not listed",
                "recorded",
            )
        )
    return issues
