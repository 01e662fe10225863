"""URLs from and about a FHIR server: redacted for messages and logs, origins (scheme, host, port),
the trusted-origin setting, and links the server gives (paging, Bulk status and files) resolved
against the base or refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit, urlunsplit

from fhirpanel.errors import ConfigError, UnsafeLinkError

_MAX_LISTED_VALUES = 5  # longer comma lists in a URL (patient=a,b,c,...) become a count
_SECRET_PARAMS = frozenset({"access_token", "token", "password", "client_secret", "code"})


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


Origin = tuple[str, str, int]


def url_origin(url: str) -> Origin:
    """(scheme, host, port) of a URL, the default port filled in; ValueError for a bad port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


def origin_text(origin: Origin) -> str:
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
            origin = url_origin(item)
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
        f"add {origin_text(origin)} to fhir.trusted_link_origins "
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
        origin: Origin | None = url_origin(resolved)
    except ValueError:  # a port that is not a number
        origin = None
    if origin is not None and origin == url_origin(base_url):
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
