"""HTTP access to a FHIR R4 server: auth, retries with backoff, paging, HTTP errors as exceptions.

Built on `requests` with a urllib3 `Retry` mounted on the session. `FhirClient.request` is the one
place an HTTP status becomes an exception (`error_for_response`). Messages and logs carry resource
ids and URLs (long id lists shortened to a count), never request bodies, resource content or
credentials.
"""

from __future__ import annotations

import base64
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import parse_qsl, quote, urljoin, urlsplit, urlunsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from fhirpanel.config import FhirSettings
from fhirpanel.errors import (
    AuthError,
    ConfigError,
    FhirHttpError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    SourceError,
    TransportError,
    UnsafeLinkError,
    VersionConflictError,
)
from fhirpanel.fhir.capability import ServerCapabilities, parse_capability_statement

log = logging.getLogger(__name__)

SearchParams = Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]]

FHIR_JSON = "application/fhir+json"
# Worth another try: throttled, or a gateway/server that is briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A POST is not idempotent: retry it only when the server surely did not act on it.
POST_RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_HAPI_CODE = re.compile(r"\bHAPI-\d{4}\b")
_MAX_MESSAGE = 400
_MAX_LISTED_VALUES = 5  # longer comma lists in a URL (patient=a,b,c,...) become a count
_SECRET_PARAMS = frozenset({"access_token", "token", "password", "client_secret", "code"})


# ---------------------------------------------------------------- stats


@dataclass
class RequestStats:
    """Counters for one client: HTTP requests sent (retries counted apart), bundle pages read,
    response bytes, search restarts after an expired page."""

    requests: int = 0
    retries: int = 0
    pages: int = 0
    bytes: int = 0
    restarts: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def count_response(self, method: str, size: int) -> None:
        self.requests += 1
        self.bytes += size
        self.by_method[method] = self.by_method.get(method, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "pages": self.pages,
            "bytes": self.bytes,
            "restarts": self.restarts,
            "by_method": dict(sorted(self.by_method.items())),
        }


# ---------------------------------------------------------------- auth


class AuthProvider(Protocol):
    """The seam for credentials (SMART Backend Services: fhir/smart.py): sets headers on each
    request."""

    def apply(self, request: requests.PreparedRequest) -> None: ...

    def invalidate(self) -> None:
        """Called once per request on a 401, or a 403 that says the token is invalid or
        expired (`token_refused`); the request is then retried once."""
        ...


class NoAuth:
    def apply(self, request: requests.PreparedRequest) -> None:
        return None

    def invalidate(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NoAuth()"


class BearerAuth:
    """A fixed bearer token, or one obtained from `fetch()` and fetched again after a 401."""

    def __init__(self, token: str | None = None, *, fetch: Callable[[], str] | None = None) -> None:
        if not token and fetch is None:
            raise ConfigError("bearer auth needs a token")
        self._token = token or None
        self._fetch = fetch

    def apply(self, request: requests.PreparedRequest) -> None:
        if self._token is None and self._fetch is not None:
            self._token = self._fetch()
        request.headers["Authorization"] = f"Bearer {self._token}"

    def invalidate(self) -> None:
        if self._fetch is not None:
            self._token = None

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


class BasicAuth:
    def __init__(self, username: str, password: str) -> None:
        if not username:
            raise ConfigError("basic auth needs a username")
        raw = f"{username}:{password}".encode()
        self._header = "Basic " + base64.b64encode(raw).decode("ascii")
        self.username = username

    def apply(self, request: requests.PreparedRequest) -> None:
        request.headers["Authorization"] = self._header

    def invalidate(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


def auth_from_settings(settings: FhirSettings) -> AuthProvider:
    if settings.auth == "bearer":
        return BearerAuth(secret_setting(settings.token, settings.token_file, "token"))
    if settings.auth == "basic":
        password = secret_setting(settings.password, settings.password_file, "password")
        return BasicAuth(settings.username, password)
    if settings.auth == "smart":
        from fhirpanel.fhir.smart import SmartBackendAuth  # PyJWT and cryptography, when used

        return SmartBackendAuth(settings)
    return NoAuth()


def secret_setting(value: str, file: str, name: str) -> str:
    """`fhir.<name>`, or the contents of `fhir.<name>_file` without its trailing newline (a
    mounted secret). The error names the setting and the file, never the secret."""
    if not file:
        return value
    if value:
        raise ConfigError(f"set fhir.{name} or fhir.{name}_file, not both")
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"fhir.{name}_file: cannot read {file}: {why}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"fhir.{name}_file: {file} is empty")
    return secret


class _RequestsAuth(requests.auth.AuthBase):
    def __init__(self, provider: AuthProvider) -> None:
        self.provider = provider

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.provider.apply(request)
        return request


# An explicit no-op, so requests does not fall back to ~/.netrc credentials either.
_NO_CREDENTIALS = _RequestsAuth(NoAuth())


# ---------------------------------------------------------------- retries


RetryListener = Callable[[str | None, str | None, int | None, Exception | None], None]


class BudgetedRetry(Retry):
    """urllib3 `Retry` with: exponential backoff from the first retry with jitter; POST retried on
    429/503 only (and on connect errors, which urllib3 retries for any method); an invalid
    Retry-After ignored rather than raised; and a time budget over all retries of a request,
    counted from its first failure, waits included."""

    budget_seconds: float | None = None
    first_failure_at: float | None = None
    listener: RetryListener | None = None
    _jitter = random.Random()  # noqa: S311 - spreads retries in time; not security

    def new(self, **kw: Any) -> Self:
        retry = super().new(**kw)
        retry.budget_seconds = self.budget_seconds
        retry.first_failure_at = self.first_failure_at
        retry.listener = self.listener
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() == "POST" and status_code in POST_RETRY_STATUSES:
            return True
        return super().is_retry(method, status_code, has_retry_after)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        now = time.monotonic()
        started = self.first_failure_at if self.first_failure_at is not None else now
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        retry.first_failure_at = started
        if self.budget_seconds is not None:
            wait = retry.planned_wait(response)
            if now - started + wait > self.budget_seconds:
                status = response.status if response is not None else None
                reason = error or ResponseError(
                    f"retry budget of {self.budget_seconds:g}s spent (last status {status})"
                )
                raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        if self.listener is not None:
            self.listener(method, url, response.status if response is not None else None, error)
        return retry

    def planned_wait(self, response: BaseHTTPResponse | None) -> float:
        """The longest this retry will sleep before trying again."""
        if response is not None and self.respect_retry_after_header:
            retry_after = self.get_retry_after(response)
            if retry_after:
                return retry_after
        return self._backoff_ceiling()

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def get_backoff_time(self) -> float:
        ceiling = self._backoff_ceiling()
        # Equal jitter: half the wait fixed, half random, so clients that failed together spread.
        return ceiling / 2 + self._jitter.random() * ceiling / 2

    def _backoff_ceiling(self) -> float:
        failures = 0
        for entry in reversed(self.history):
            if entry.redirect_location is not None:
                break
            failures += 1
        if failures == 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_factor * 2 ** (failures - 1)))


def build_retry(settings: FhirSettings, listener: RetryListener | None = None) -> BudgetedRetry:
    retry = BudgetedRetry(
        total=settings.max_retries,
        connect=None,
        read=None,
        status=None,
        other=0,
        allowed_methods=IDEMPOTENT_METHODS,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.backoff_max,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last error response comes back and is mapped like any other
        raise_on_redirect=False,
    )
    retry.budget_seconds = settings.retry_budget_seconds
    retry.listener = listener
    return retry


# ---------------------------------------------------------------- errors


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


def redact_url(url: str) -> str:
    """A URL fit for a message or log: no user info, secrets masked, long id lists counted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not parts.query:
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    pairs = []
    patients = parts.path.rstrip("/").endswith("/Patient")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _SECRET_PARAMS:
            value = "***"
        elif patients and name.split(":", 1)[0] == "identifier":
            # A patient's identifiers (MRNs: roster files) are patient data, unlike ids.
            value = f"<{value.count(',') + 1} identifiers>"
        elif value.count(",") >= _MAX_LISTED_VALUES:
            value = f"<{value.count(',') + 1} values>"
        pairs.append((name, value))
    query = "&".join(f"{name}={value}" for name, value in pairs)  # for reading, not for sending
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# ---------------------------------------------------------------- links

Origin = tuple[str, str, int]


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


def url_origin(url: str) -> Origin:
    """(scheme, host, port) of a URL, the default port filled in; ValueError for a bad port."""
    return _origin(url)


def _origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def parse_origins(value: str, setting: str = "fhir.trusted_link_origins") -> frozenset[Origin]:
    """`http://localhost:8080, https://b.example` as origins; anything else is a ConfigError."""
    origins: set[Origin] = set()
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            parts = urlsplit(item)
            origin = _origin(item)
        except ValueError:
            origin = None
        if (
            origin is None
            or parts.scheme.lower() not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            raise ConfigError(
                f"{setting}: {item!r} is not an origin (scheme://host[:port], no path)"
            )
        origins.add(origin)
    return frozenset(origins)


def _link_hint(origin: Origin | None) -> str:
    trust = (
        f"add {_origin_text(origin)} to fhir.trusted_link_origins "
        "(FHIRPANEL_FHIR_TRUSTED_LINK_ORIGINS) to follow it, or "
        if origin
        else ""
    )
    return (
        f"{trust}set fhir.rewrite_foreign_links = true (FHIRPANEL_FHIR_REWRITE_FOREIGN_LINKS)"
        " to send it to the base URL instead"
    )


def resolve_link(
    base_url: str,
    link: str,
    *,
    trusted: frozenset[Origin] = frozenset(),
    rewrite: bool = False,
    what: str = "paging link",
) -> str:
    """A link from the server (a paging `next` link, a Bulk status or file URL) resolved against
    the service base. On the base's origin (scheme, host and port) it is followed exactly as
    given (HAPI: `/baseR4?_getpages=` at the server root; sekmet: `Type?_offset=`), spelling the
    origin as the base does. On an origin in `trusted` it is followed as given. Otherwise, with
    `rewrite` (http and https links only), only its origin is replaced: the base's scheme, host
    and port with the link's own path and query, unchanged (HAPI behind a reverse proxy without
    `server_address`: `http://localhost:8080/fhir?_getpages=abc&_getpagesoffset=200` under base
    `https://ehr.example.org/fhir` goes to `https://ehr.example.org/fhir?_getpages=abc&...`).
    A proxy that also moves the path (`/ehr/fhir` in front of `/fhir`) is not undone: set the
    server's own address there. Without either setting: UnsafeLinkError, naming them."""
    link = link.strip()
    try:
        resolved = base_url + link if link.startswith("?") else urljoin(base_url + "/", link)
        base, target = urlsplit(base_url), urlsplit(resolved)
    except ValueError as exc:  # "Invalid IPv6 URL" and the like
        shown = " ".join(link.split())[:100]
        raise UnsafeLinkError(
            f"refusing a {what} that is not a valid URL ({exc}): {shown!r}"
        ) from None
    try:
        origin: Origin | None = _origin(resolved)
    except ValueError:  # a port that is not a number
        origin = None
    if origin is not None and origin == _origin(base_url):
        return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))
    web = origin is not None and origin[0] in ("http", "https") and bool(origin[1])
    if web and origin in trusted:
        netloc = target.netloc.rsplit("@", 1)[-1]
        return urlunsplit((target.scheme.lower(), netloc, target.path, target.query, ""))
    if web and rewrite:
        return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))
    raise UnsafeLinkError(
        f"refusing a {what} to {redact_url(resolved)}: not on {redact_url(base_url)}; "
        + _link_hint(origin if web else None)
    )


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url.strip():
                return url
    return None


# ---------------------------------------------------------------- search pages


@dataclass(frozen=True)
class SearchPage:
    """One searchset page, its shape checked: its entries (objects), `total` and `next` link."""

    entries: list[dict[str, Any]]
    total: int | None
    next: str | None


def _kind(value: Any) -> str:
    """What a JSON value is, for a message: `a string`, `a list`, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def checked_page(bundle: Any, where: str) -> SearchPage:
    """A search page as a `SearchPage`. Anything a searchset Bundle cannot be (not a Bundle;
    `entry` or `link` not a list; an entry, its `resource` or its `search` not an object; `total`
    not a whole number) is a SourceError naming `where`, never another exception: a page that is
    read wrongly must not be read as a short one. Entries without a resource are kept (and
    counted as no match)."""
    if not isinstance(bundle, Mapping):
        raise SourceError(f"{where}: the JSON is {_kind(bundle)}, not a Bundle")
    rtype = bundle.get("resourceType")
    if rtype != "Bundle":
        shown = repr(rtype)[:60] if isinstance(rtype, str) or rtype is None else _kind(rtype)
        raise SourceError(f"{where}: expected a Bundle, got {shown}")
    raw_entries = bundle.get("entry")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise SourceError(f"{where}: Bundle.entry is {_kind(raw_entries)}, not a list")
    entries: list[dict[str, Any]] = []
    for n, entry in enumerate(raw_entries):
        if not isinstance(entry, dict):
            raise SourceError(f"{where}: Bundle.entry[{n}] is {_kind(entry)}, not an object")
        for key in ("resource", "search"):
            value = entry.get(key)
            if value is not None and not isinstance(value, dict):
                raise SourceError(
                    f"{where}: Bundle.entry[{n}].{key} is {_kind(value)}, not an object"
                )
        entries.append(entry)
    total = bundle.get("total")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise SourceError(f"{where}: Bundle.total is {_kind(total)}, not a whole number")
    links = bundle.get("link")
    if links is not None and not isinstance(links, list):
        raise SourceError(f"{where}: Bundle.link is {_kind(links)}, not a list")
    for n, link in enumerate(links or ()):
        if not isinstance(link, dict):
            raise SourceError(f"{where}: Bundle.link[{n}] is {_kind(link)}, not an object")
    return SearchPage(entries, total, next_link(bundle))


def entry_mode(entry: Mapping[str, Any], resource_type: str) -> str | None:
    """`match`, `include` or `outcome` for a search entry; None when it holds no resource. An
    entry without `search.mode` is a match when it is of the searched type (else an include);
    an OperationOutcome is an outcome unless OperationOutcomes were searched."""
    resource = entry.get("resource")
    if not isinstance(resource, Mapping):
        return None
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, Mapping) else None
    rtype = resource.get("resourceType")
    if mode == "outcome" or (rtype == "OperationOutcome" and resource_type != "OperationOutcome"):
        return "outcome"
    if mode == "include":
        return "include"
    if mode == "match" or rtype == resource_type:
        return "match"
    return "include"


def count_only(params: Sequence[tuple[str, str]]) -> bool:
    """A search that asks for the total alone (`_summary=count`, `_count=0`): no pages to
    check against it."""
    return any(
        (name == "_summary" and value.strip() == "count")
        or (name == "_count" and value.strip() == "0")
        for name, value in params
    )


@dataclass
class SearchTally:
    """The distinct match entries a search's pages delivered, against the first `total` a page
    gave. Resources repeated across pages count once; `_include` entries and OperationOutcomes
    not at all. After a restart (an expired page) the keyed ones are kept, and entries without
    an id are counted again from zero, since the server sends them again."""

    resource_type: str
    total: int | None = None
    keys: set[str] = field(default_factory=set)
    keyless: int = 0

    @property
    def delivered(self) -> int:
        return len(self.keys) + self.keyless

    def restart(self) -> None:
        self.keyless = 0

    def add_page(self, page: SearchPage, number: int) -> None:
        """Count one page; a page without a match before `total` is reached, or more distinct
        matches than `total`, is a SourceError."""
        if self.total is None:
            self.total = page.total
        matches = [e for e in page.entries if entry_mode(e, self.resource_type) == "match"]
        before = self.delivered
        for entry in matches:
            key = _entry_key(entry)
            if key is None:
                self.keyless += 1
            else:
                self.keys.add(key)
        if self.total is None:
            return
        if not matches and before < self.total:
            raise self._short(f"page {number} came back empty")
        if self.delivered > self.total:
            raise self._short("more than the total: the result changed while it was read")

    def finish(self) -> None:
        """The `next` links have ended: the delivered matches must make up `total`."""
        if self.total is not None and self.delivered != self.total:
            why = (
                "a page came back short or the next links ended early"
                if self.delivered < self.total
                else "more than the total: the result changed while it was read"
            )
            raise self._short(why)

    def _short(self, why: str) -> SourceError:
        return SourceError(
            f"{self.resource_type} search: server said total {self.total} but its "
            f"pages held {self.delivered} ({why}); nothing from this search was "
            "used"
        )


def _param_list(params: SearchParams | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in params.items():
            if isinstance(value, str):
                pairs.append((name, value))
            else:
                pairs.extend((name, v) for v in value)
        return pairs
    return [(name, value) for name, value in params]


def _resource_key(resource: Mapping[str, Any]) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    return f"{rtype}/{rid}" if isinstance(rtype, str) and isinstance(rid, str) else None


def _if_match(version: str) -> str:
    """`3` -> `W/"3"`; a full ETag is passed through."""
    version = version.strip()
    return version if version.startswith(('W/"', '"')) else f'W/"{version}"'


# ---------------------------------------------------------------- client


class FhirClient:
    """A FHIR REST client for one server base. Not thread-safe: one per thread."""

    def __init__(
        self,
        settings: FhirSettings,
        *,
        session: requests.Session | None = None,
        auth: AuthProvider | None = None,
    ) -> None:
        if not settings.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"FHIR base URL must be http(s): {redact_url(settings.base_url)!r}")
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.stats = RequestStats()
        self.auth: AuthProvider = auth if auth is not None else auth_from_settings(settings)
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON, "User-Agent": settings.user_agent})
        self.trusted_origins = parse_origins(settings.trusted_link_origins)
        # Foreign origins whose links were rewritten onto the base (Bulk: files there too).
        self.rewritten_origins: set[Origin] = set()
        # Mounted on the base's origin (and trusted ones): adapters mounted later on a longer
        # prefix (tests) win.
        base = urlsplit(self.base_url)
        for prefix in [
            f"{base.scheme}://{base.netloc}/",
            *sorted(f"{_origin_text(o)}/" for o in self.trusted_origins),
        ]:
            self.session.mount(
                prefix, HTTPAdapter(max_retries=build_retry(settings, self._on_retry))
            )
        self._requests_auth = _RequestsAuth(self.auth)
        self._capabilities: ServerCapabilities | None = None

    # ------------------------------------------------------------ plumbing

    def _on_retry(
        self, method: str | None, url: str | None, status: int | None, error: Exception | None
    ) -> None:
        self.stats.retries += 1
        why = f"status {status}" if status else type(error).__name__ if error else "unknown"
        log.info("retrying %s %s after %s", method, redact_url(url or ""), why)

    def url_for(self, url_or_path: str) -> str:
        """A path under the base, or an absolute URL on the base's origin or a trusted one
        (`fhir.trusted_link_origins`); anything else is refused, never rewritten here."""
        if url_or_path.startswith(("http://", "https://")):
            try:
                origin: Origin | None = _origin(url_or_path)
            except ValueError:  # a port that is not a number
                origin = None
            if origin is None or not (
                origin == _origin(self.base_url) or origin in self.trusted_origins
            ):
                hint = (
                    f"; add {_origin_text(origin)} to fhir.trusted_link_origins "
                    "(FHIRPANEL_FHIR_TRUSTED_LINK_ORIGINS) to allow it"
                    if origin is not None and origin[0] in ("http", "https")
                    else ""
                )
                raise UnsafeLinkError(
                    f"refusing a request to {redact_url(url_or_path)}: "
                    f"not on {redact_url(self.base_url)}{hint}"
                )
            return url_or_path
        path = url_or_path.lstrip("/")
        return f"{self.base_url}/{path}" if path else self.base_url

    def trusts(self, url: str) -> bool:
        """True for an absolute URL on the base's origin or a trusted one."""
        try:
            origin = _origin(url)
        except ValueError:
            return False
        return origin == _origin(self.base_url) or origin in self.trusted_origins

    def link(self, link: str, what: str = "paging link") -> str:
        """A link the server gave, resolved per `resolve_link` with this client's settings
        (UnsafeLinkError when they do not allow it). A rewrite is logged once per origin."""
        resolved = resolve_link(
            self.base_url,
            link,
            trusted=self.trusted_origins,
            rewrite=self.settings.rewrite_foreign_links,
            what=what,
        )
        given = urljoin(self.base_url + "/", link.strip())
        if not self.trusts(given):  # resolve_link rewrote it onto the base
            origin = _origin(given)
            if origin not in self.rewritten_origins:
                log.warning(
                    "%s on %s rewritten onto %s (fhir.rewrite_foreign_links)",
                    what,
                    _origin_text(origin),
                    redact_url(self.base_url),
                )
            self.rewritten_origins.add(origin)
        return resolved

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: SearchParams | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authenticate: bool = True,
    ) -> requests.Response:
        """Send one request (urllib3 retries underneath) and return a 2xx response; any other
        status raises the FhirHttpError subclass for it. A body cut off mid-read is retried here
        for idempotent methods; a 401, or a 403 that blames the token (`token_refused`), once
        after `auth.invalidate()` (one renewal per request). With `stream`, a 2xx body
        is left unread for the caller to iterate and close (Bulk Data files);
        `authenticate=False` sends no credentials (files without `requiresAccessToken`)."""
        method = method.upper()
        url = self.url_for(url_or_path)
        send_headers = dict(headers or {})
        body = None
        if json is not None:
            body = orjson.dumps(json)
            send_headers.setdefault("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        query = _param_list(params) if params is not None else None
        started = time.monotonic()
        body_retries = 0
        reauthenticated = False
        auth = self._requests_auth if authenticate else _NO_CREDENTIALS
        while True:
            try:
                response = self.session.request(
                    method,
                    url,
                    params=query,
                    data=body,
                    headers=send_headers,
                    auth=auth,
                    allow_redirects=False,
                    stream=stream,
                    verify=self.settings.verify_tls,
                    timeout=(self.settings.connect_timeout, self.settings.read_timeout),
                )
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ConnectionError,
            ) as exc:
                if self._retry_broken_body(method, exc, body_retries, started):
                    body_retries += 1
                    continue
                raise self._transport_error(method, url, exc) from exc
            except requests.exceptions.RequestException as exc:
                raise self._transport_error(method, url, exc) from exc
            unread = stream and 200 <= response.status_code < 300
            self.stats.count_response(method, 0 if unread else len(response.content))
            if (
                authenticate
                and not reauthenticated
                and (
                    response.status_code == 401
                    or (
                        response.status_code == 403
                        and token_refused(
                            response.headers.get("WWW-Authenticate", ""), response.content
                        )
                    )
                )
            ):
                # One renewal per request, shared by 401 and a 403 that blames the token.
                reauthenticated = True
                self.auth.invalidate()
                log.info(
                    "%s %s: %d, credentials renewed, trying once more",
                    method,
                    redact_url(url),
                    response.status_code,
                )
                continue
            if not 200 <= response.status_code < 300:
                raise error_for_response(
                    response.status_code,
                    response.content,
                    response.headers.get("Content-Type", ""),
                    response.url or url,
                    response.reason or "",
                )
            return response

    def _retry_broken_body(self, method: str, exc: Exception, done: int, started: float) -> bool:
        """A connection lost while reading the body (after urllib3's part is over)."""
        if method not in IDEMPOTENT_METHODS or done >= self.settings.max_retries:
            return False
        cause = exc.args[0] if exc.args else None
        if isinstance(cause, MaxRetryError):  # urllib3 already retried and gave up
            return False
        wait = min(self.settings.backoff_max, self.settings.backoff_factor * 2**done)
        if time.monotonic() - started + wait > self.settings.retry_budget_seconds:
            return False
        self.stats.retries += 1
        log.info("retrying %s after a broken response (%s)", method, type(exc).__name__)
        time.sleep(wait)
        return True

    def _transport_error(self, method: str, url: str, exc: Exception) -> TransportError:
        cause: Any = exc.args[0] if exc.args else exc
        if isinstance(cause, MaxRetryError):
            cause = cause.reason
        detail = " ".join(str(cause).split())[:200] if cause is not None else ""
        return TransportError(f"{method} {redact_url(url)} failed ({type(exc).__name__}: {detail})")

    def _json(self, response: requests.Response) -> dict[str, Any]:
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            kind = response.headers.get("Content-Type", "no content type")
            raise SourceError(f"{redact_url(response.url)}: not JSON ({kind})") from exc
        if not isinstance(data, dict):
            raise SourceError(f"{redact_url(response.url)}: JSON is not an object")
        return data

    def _search_headers(self) -> dict[str, str]:
        # HAPI answers an identical search from a cache for about 60 s: a write-back's re-read
        # or an incremental poll must see the server as it is now.
        headers = {"Cache-Control": "no-cache"}
        if self.settings.strict_search:
            headers["Prefer"] = "handling=strict"
        return headers

    # ------------------------------------------------------------ reads

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        return self._json(self.request("GET", f"{resource_type}/{quote(resource_id, safe='')}"))

    def search_pages(
        self, resource_type: str, params: SearchParams | None = None
    ) -> Iterator[dict[str, Any]]:
        """Searchset Bundles, page by page, following `next` links per `link()`. Each page's
        shape is checked (`checked_page`; its `entry` list holds objects only). When a page gives
        `total`, the distinct match entries of all pages must make it up (`SearchTally`): an
        empty page before it is reached, a chain that ends short, or more than it is a
        SourceError; count-only searches (`_summary=count`, `_count=0`) are not checked. An
        expired page (410, HAPI's cached searches) restarts the search once from the first page;
        bundles after a restart leave out entries already yielded. Stops on a repeated next link;
        more than `max_pages` pages raise SourceError rather than silently truncate."""
        first_query = _param_list(params)
        if not any(name == "_count" for name, _ in first_query):
            first_query.append(("_count", str(self.settings.page_size)))
        check = not count_only(first_query)
        first_url = self.url_for(resource_type)
        url: str = first_url
        query: list[tuple[str, str]] | None = first_query
        visited: set[str] = set()
        yielded: set[str] = set()
        tally = SearchTally(resource_type)
        restarted = False
        pages = 0
        while True:
            if pages >= self.settings.max_pages:
                raise SourceError(
                    f"{resource_type} search: more than {self.settings.max_pages} "
                    "pages (fhir.max_pages); stopping rather than truncating"
                )
            first_page = query is not None
            headers = self._search_headers() if first_page else {}
            try:
                response = self.request("GET", url, params=query, headers=headers)
            except GoneError:
                if first_page or restarted:
                    raise
                restarted = True
                self.stats.restarts += 1
                log.warning(
                    "%s search: page expired (410); restarting from the first page", resource_type
                )
                url, query, visited = first_url, first_query, set()
                tally.restart()
                continue
            pages += 1
            where = f"{resource_type} search page {pages} ({redact_url(response.url or url)})"
            bundle = self._json(response)
            page = checked_page(bundle, where)
            self.stats.pages += 1
            if check:
                tally.add_page(page, pages)
            visited.add(response.url)
            if not first_page:
                visited.add(url)
            entries = page.entries
            if restarted:
                entries = [e for e in entries if _entry_key(e) not in yielded]
            yielded.update(k for k in map(_entry_key, entries) if k is not None)
            yield {**bundle, "entry": entries}
            if page.next is None:
                break
            following = self.link(page.next)
            if following in visited:
                log.warning(
                    "%s search: next link repeats a page already read; stopping", resource_type
                )
                break
            url, query = following, None
        if check:
            tally.finish()

    def search(
        self, resource_type: str, params: SearchParams | None = None
    ) -> Iterator[dict[str, Any]]:
        """Resources of `match` entries (or entries without a mode) and `include` entries;
        OperationOutcome entries are logged as warnings."""
        for bundle in self.search_pages(resource_type, params):
            for entry in bundle["entry"]:
                mode = entry_mode(entry, resource_type)
                if mode is None:
                    continue
                resource = entry["resource"]
                if mode == "outcome":
                    for line in outcome_messages(resource):
                        log.warning("%s search: server says: %s", resource_type, line[:300])
                    continue
                yield resource

    def search_by_patients(
        self,
        resource_type: str,
        patients: Sequence[str],
        params: SearchParams | None = None,
        param: str = "patient",
    ) -> Iterator[dict[str, Any]]:
        """One search per `patient_batch` patients: `patient=Patient/a,Patient/b,...` (or bare
        ids with `param="_id"`)."""
        unique = list(dict.fromkeys(p for p in patients if p))
        base = _param_list(params)
        size = max(1, self.settings.patient_batch)
        for start in range(0, len(unique), size):
            batch = unique[start : start + size]
            yield from self.search(resource_type, [*base, (param, ",".join(batch))])

    def search_since(
        self, resource_type: str, since: str, params: SearchParams | None = None
    ) -> Iterator[dict[str, Any]]:
        """Resources changed after `since` (a FHIR instant, any offset): `_lastUpdated=gt...`."""
        query = [*_param_list(params), ("_lastUpdated", f"gt{since}")]
        yield from self.search(resource_type, query)

    def capabilities(self) -> ServerCapabilities:
        if self._capabilities is None:
            self._capabilities = parse_capability_statement(
                self._json(self.request("GET", "metadata"))
            )
        return self._capabilities

    # ------------------------------------------------------------ writes

    def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
        """PUT Type/id; `if_match` is a version id or an ETag (stale: VersionConflictError)."""
        rtype, rid = _type_and_id(resource, need_id=True)
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = _if_match(if_match)
        response = self.request(
            "PUT", f"{rtype}/{quote(rid, safe='')}", json=resource, headers=headers
        )
        return self._written(response, rtype)

    def conditional_update(self, resource: Mapping[str, Any], query: str) -> dict[str, Any]:
        """PUT Type?query: updates the one match, creates when none (several: 412)."""
        rtype, _ = _type_and_id(resource, need_id=False)
        response = self.request(
            "PUT",
            f"{rtype}?{query.lstrip('?')}",
            json=resource,
            headers={"Prefer": "return=representation"},
        )
        return self._written(response, rtype)

    def create(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        rtype, _ = _type_and_id(resource, need_id=False)
        response = self.request(
            "POST", rtype, json=resource, headers={"Prefer": "return=representation"}
        )
        return self._written(response, rtype)

    def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle to the base; returns the response Bundle."""
        if bundle.get("resourceType") != "Bundle":
            raise ValueError("transaction() takes a Bundle")
        return self._json(self.request("POST", "", json=bundle))

    def _written(self, response: requests.Response, resource_type: str) -> dict[str, Any]:
        if response.content.strip():
            return self._json(response)
        # Prefer: return=minimal servers answer with headers only.
        written: dict[str, Any] = {"resourceType": resource_type}
        parts = urlsplit(response.headers.get("Location", "")).path.split("/")
        if resource_type in parts and parts.index(resource_type) + 1 < len(parts):
            written["id"] = parts[parts.index(resource_type) + 1]
        etag = response.headers.get("ETag", "")
        version = etag.removeprefix("W/").strip('"')
        if version:
            written["meta"] = {"versionId": version}
        return written

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry_key(entry: Mapping[str, Any]) -> str | None:
    resource = entry.get("resource")
    return _resource_key(resource) if isinstance(resource, Mapping) else None


def _type_and_id(resource: Mapping[str, Any], *, need_id: bool) -> tuple[str, str]:
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    if not isinstance(rtype, str) or not rtype:
        raise ValueError("resource has no resourceType")
    if need_id and (not isinstance(rid, str) or not rid):
        raise ValueError(f"{rtype} has no id to update")
    return rtype, rid if isinstance(rid, str) else ""
