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
        """Called once on a 401; the request is then retried once."""
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
                reason = error or ResponseError(f"retry budget of {self.budget_seconds:g}s spent"
                                                f" (last status {status})")
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
    return error_class(status, message, url=redact_url(url), outcome=outcome,
                       hapi_code=codes[0] if codes else None)


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
    issues = [i for i in outcome.get("issue") or () if isinstance(i, Mapping)]
    errors = [i for i in issues if i.get("severity") in ("fatal", "error")]
    lines = []
    for issue in errors or issues:
        raw_details = issue.get("details")
        details: Mapping[str, Any] = raw_details if isinstance(raw_details, Mapping) else {}
        codings = [c for c in details.get("coding") or () if isinstance(c, Mapping)]
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
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _SECRET_PARAMS:
            value = "***"
        elif value.count(",") >= _MAX_LISTED_VALUES:
            value = f"<{value.count(',') + 1} values>"
        pairs.append((name, value))
    query = "&".join(f"{name}={value}" for name, value in pairs)  # for reading, not for sending
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# ---------------------------------------------------------------- links


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


def resolve_link(base_url: str, link: str) -> str:
    """A paging link resolved against the service base, refused unless it points at the same
    scheme, host and port. Follows the link exactly as given otherwise (HAPI: `/baseR4?_getpages=`
    at the server root; sekmet: `Type?_offset=`), spelling the origin as the base does."""
    link = link.strip()
    resolved = base_url + link if link.startswith("?") else urljoin(base_url + "/", link)
    try:
        same_origin = _origin(resolved) == _origin(base_url)
    except ValueError:  # a port that is not a number
        same_origin = False
    if not same_origin:
        raise UnsafeLinkError(
            f"refusing a paging link to {redact_url(resolved)}: not on {redact_url(base_url)}"
        )
    base, target = urlsplit(base_url), urlsplit(resolved)
    return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))


def next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url.strip():
                return url
    return None


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
        # Mounted on the base's origin: adapters mounted later on a longer prefix (tests) win.
        base = urlsplit(self.base_url)
        self.session.mount(
            f"{base.scheme}://{base.netloc}/",
            HTTPAdapter(max_retries=build_retry(settings, self._on_retry)),
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
        if url_or_path.startswith(("http://", "https://")):
            try:
                same_origin = _origin(url_or_path) == _origin(self.base_url)
            except ValueError:  # a port that is not a number
                same_origin = False
            if not same_origin:
                raise UnsafeLinkError(f"refusing a request to {redact_url(url_or_path)}: "
                                      f"not on {redact_url(self.base_url)}")
            return url_or_path
        path = url_or_path.lstrip("/")
        return f"{self.base_url}/{path}" if path else self.base_url

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
        for idempotent methods, a 401 once after `auth.invalidate()`. With `stream`, a 2xx body
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
                    method, url, params=query, data=body, headers=send_headers,
                    auth=auth, allow_redirects=False, stream=stream,
                    verify=self.settings.verify_tls,
                    timeout=(self.settings.connect_timeout, self.settings.read_timeout),
                )
            except (requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ConnectionError) as exc:
                if self._retry_broken_body(method, exc, body_retries, started):
                    body_retries += 1
                    continue
                raise self._transport_error(method, url, exc) from exc
            except requests.exceptions.RequestException as exc:
                raise self._transport_error(method, url, exc) from exc
            unread = stream and 200 <= response.status_code < 300
            self.stats.count_response(method, 0 if unread else len(response.content))
            if response.status_code == 401 and authenticate and not reauthenticated:
                reauthenticated = True
                self.auth.invalidate()
                log.info("%s %s: 401, credentials renewed, trying once more", method,
                         redact_url(url))
                continue
            if not 200 <= response.status_code < 300:
                raise error_for_response(
                    response.status_code, response.content,
                    response.headers.get("Content-Type", ""), response.url or url,
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
        return TransportError(
            f"{method} {redact_url(url)} failed ({type(exc).__name__}: {detail})"
        )

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
        """Searchset Bundles, page by page, following `next` links exactly as given. An expired
        page (410, HAPI's cached searches) restarts the search once from the first page; bundles
        after a restart leave out entries already yielded. Stops on a repeated next link; more
        than `max_pages` pages raise SourceError rather than silently truncate."""
        first_query = _param_list(params)
        if not any(name == "_count" for name, _ in first_query):
            first_query.append(("_count", str(self.settings.page_size)))
        first_url = self.url_for(resource_type)
        url: str = first_url
        query: list[tuple[str, str]] | None = first_query
        visited: set[str] = set()
        yielded: set[str] = set()
        restarted = False
        pages = 0
        while True:
            if pages >= self.settings.max_pages:
                raise SourceError(f"{resource_type} search: more than {self.settings.max_pages} "
                                  "pages (fhir.max_pages); stopping rather than truncating")
            first_page = query is not None
            headers = self._search_headers() if first_page else {}
            try:
                response = self.request("GET", url, params=query, headers=headers)
            except GoneError:
                if first_page or restarted:
                    raise
                restarted = True
                self.stats.restarts += 1
                log.warning("%s search: page expired (410); restarting from the first page",
                            resource_type)
                url, query, visited = first_url, first_query, set()
                continue
            bundle = self._json(response)
            if bundle.get("resourceType") != "Bundle":
                raise SourceError(f"{redact_url(response.url)}: expected a Bundle, got "
                                  f"{bundle.get('resourceType')!r}")
            pages += 1
            self.stats.pages += 1
            visited.add(response.url)
            if not first_page:
                visited.add(url)
            entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
            if restarted:
                entries = [e for e in entries if _entry_key(e) not in yielded]
                bundle = {**bundle, "entry": entries}
            yielded.update(k for k in map(_entry_key, entries) if k is not None)
            yield bundle
            link = next_link(bundle)
            if link is None:
                return
            following = resolve_link(self.base_url, link)
            if following in visited:
                log.warning("%s search: next link repeats a page already read; stopping",
                            resource_type)
                return
            url, query = following, None

    def search(
        self, resource_type: str, params: SearchParams | None = None
    ) -> Iterator[dict[str, Any]]:
        """Resources of `match` entries (or entries without a mode) and `include` entries;
        OperationOutcome entries are logged as warnings."""
        for bundle in self.search_pages(resource_type, params):
            for entry in bundle.get("entry") or ():
                resource = entry.get("resource")
                if not isinstance(resource, dict):
                    continue
                search = entry.get("search")
                mode = search.get("mode") if isinstance(search, Mapping) else None
                if mode == "outcome" or (resource.get("resourceType") == "OperationOutcome"
                                         and resource_type != "OperationOutcome"):
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
            batch = unique[start:start + size]
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
        response = self.request("PUT", f"{rtype}/{quote(rid, safe='')}", json=resource,
                                headers=headers)
        return self._written(response, rtype)

    def conditional_update(self, resource: Mapping[str, Any], query: str) -> dict[str, Any]:
        """PUT Type?query: updates the one match, creates when none (several: 412)."""
        rtype, _ = _type_and_id(resource, need_id=False)
        response = self.request("PUT", f"{rtype}?{query.lstrip('?')}", json=resource,
                                headers={"Prefer": "return=representation"})
        return self._written(response, rtype)

    def create(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        rtype, _ = _type_and_id(resource, need_id=False)
        response = self.request("POST", rtype, json=resource,
                                headers={"Prefer": "return=representation"})
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
