"""`FhirClient`: REST access to one FHIR R4 server base. `request` sends (retries underneath,
one credential renewal, a broken body retried) and turns a non-2xx status into an exception;
reads, paged searches and writes are built on it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote, urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError

from fhirpanel.config import FhirSettings
from fhirpanel.errors import (
    ConfigError,
    GoneError,
    SourceError,
    TransportError,
    UnsafeLinkError,
)
from fhirpanel.fhir.capability import ServerCapabilities, parse_capability_statement
from fhirpanel.fhir.client.auth import (
    NO_CREDENTIALS,
    AuthProvider,
    RequestsAuth,
    auth_from_settings,
)
from fhirpanel.fhir.client.http_errors import error_for_response, outcome_messages, token_refused
from fhirpanel.fhir.client.links import (
    Origin,
    origin_text,
    parse_origins,
    redact_url,
    resolve_link,
    url_origin,
)
from fhirpanel.fhir.client.paging import (
    SearchParams,
    SearchTally,
    checked_page,
    count_only,
    entry_key,
    entry_mode,
    param_list,
)
from fhirpanel.fhir.client.retries import IDEMPOTENT_METHODS, build_retry

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


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


def _if_match(version: str) -> str:
    """`3` -> `W/"3"`; a full ETag is passed through."""
    version = version.strip()
    return version if version.startswith(('W/"', '"')) else f'W/"{version}"'


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
            *sorted(f"{origin_text(o)}/" for o in self.trusted_origins),
        ]:
            self.session.mount(
                prefix, HTTPAdapter(max_retries=build_retry(settings, self._on_retry))
            )
        self._requests_auth = RequestsAuth(self.auth)
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
                origin: Origin | None = url_origin(url_or_path)
            except ValueError:  # a port that is not a number
                origin = None
            if origin is None or not (
                origin == url_origin(self.base_url) or origin in self.trusted_origins
            ):
                hint = (
                    f"; add {origin_text(origin)} to fhir.trusted_link_origins "
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
            origin = url_origin(url)
        except ValueError:
            return False
        return origin == url_origin(self.base_url) or origin in self.trusted_origins

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
            origin = url_origin(given)
            if origin not in self.rewritten_origins:
                log.warning(
                    "%s on %s rewritten onto %s (fhir.rewrite_foreign_links)",
                    what,
                    origin_text(origin),
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
        query = param_list(params) if params is not None else None
        started = time.monotonic()
        body_retries = 0
        reauthenticated = False
        auth = self._requests_auth if authenticate else NO_CREDENTIALS
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
        first_query = param_list(params)
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
                entries = [e for e in entries if entry_key(e) not in yielded]
            yielded.update(k for k in map(entry_key, entries) if k is not None)
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
        base = param_list(params)
        size = max(1, self.settings.patient_batch)
        for start in range(0, len(unique), size):
            batch = unique[start : start + size]
            yield from self.search(resource_type, [*base, (param, ",".join(batch))])

    def search_since(
        self, resource_type: str, since: str, params: SearchParams | None = None
    ) -> Iterator[dict[str, Any]]:
        """Resources changed after `since` (a FHIR instant, any offset): `_lastUpdated=gt...`."""
        query = [*param_list(params), ("_lastUpdated", f"gt{since}")]
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


def _type_and_id(resource: Mapping[str, Any], *, need_id: bool) -> tuple[str, str]:
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    if not isinstance(rtype, str) or not rtype:
        raise ValueError("resource has no resourceType")
    if need_id and (not isinstance(rid, str) or not rid):
        raise ValueError(f"{rtype} has no id to update")
    return rtype, rid if isinstance(rid, str) else ""
