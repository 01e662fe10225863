"""A HAPI-style paging server on 127.0.0.1 replaying recorded HAPI resources.

HAPI keeps a search's results server-side and pages them through the server root:
`{root}/baseR4?_getpages=<search id>&_getpagesoffset=N&_count=C&_bundletype=searchset`, usually
without `Bundle.total`; an expired search answers 410 on its next page. The entries served here are
the recorded searchset resources (sandbox_fixtures/hapi); the bundles around them follow the shape
of the recorded pages (id = search id, self and next links, `search.mode`, no total).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from fhirpanel.config import FhirSettings
from fhirpanel.errors import GoneError, UnsafeLinkError
from fhirpanel.fhir.client import FhirClient
from tests.integration.faults import LoopbackServer, outcome, send

HAPI_DIR = Path(__file__).resolve().parents[2] / "sandbox_fixtures" / "hapi"
RECORDED = (
    "searchset-encounter-4.json",
    "searchset-encounter-1.json",
    "searchset-encounter-3.json",
    "searchset-encounter-2.json",
)


def recorded_encounters() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for name in RECORDED:
        page = orjson.loads((HAPI_DIR / name).read_bytes())
        entries.extend(e["resource"] for e in page["entry"])
    return entries  # 11 + 2 + 2 + 1 = 16, ids numeric and UUID-like, offsets -04:00 to +00:00


class HapiReplayServer(LoopbackServer):
    """`GET /baseR4/Encounter?_count=C` opens a search; pages come from `/baseR4?_getpages=`.

    `expire_at_offset`: the page at that offset answers 410 for the first `expirations` searches
    that reach it. `link_host` is the host the server names in its links (a HAPI behind a proxy
    may name another one). `relative_offsets`: pages whose next link is written root-relative."""

    def __init__(
        self,
        resources: list[dict[str, Any]],
        *,
        expire_at_offset: int | None = None,
        expirations: int = 1,
        link_host: str | None = None,
        relative_offsets: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__()
        self.resources = resources
        self.expire_at_offset = expire_at_offset
        self.expirations_left = expirations
        self.link_host = link_host
        self.relative_offsets = relative_offsets
        self.searches: dict[str, int] = {}  # search id -> count of the search
        self.log: list[tuple[str, int]] = []  # (path, status)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.origin}/baseR4"

    def _root(self) -> str:
        return f"http://{self.link_host}:{self.port}" if self.link_host else self.origin

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = dict(parse_qsl(parts.query))
        with self._lock:
            status, body = self._answer(parts.path, query)
            self.log.append((handler.path, status))
        send(handler, status, orjson.dumps(body) if isinstance(body, dict) else body)

    def _answer(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any] | bytes]:
        if path == "/baseR4/Encounter":
            search_id = str(uuid.uuid4())
            count = int(query.get("_count", "20"))
            self.searches[search_id] = count
            return 200, self._page(search_id, 0, count)
        if path == "/baseR4" and "_getpages" in query:
            search_id = query["_getpages"]
            offset = int(query.get("_getpagesoffset", "0"))
            count = int(query.get("_count", self.searches.get(search_id, 20)))
            expired = search_id not in self.searches or (
                offset == self.expire_at_offset and self.expirations_left > 0
            )
            if expired:
                self.expirations_left -= 1
                self.searches.pop(search_id, None)
                # The text HAPI's paging provider uses for an unknown or expired search id.
                return 410, outcome(
                    f"Search ID[{search_id}] does not exist and may have expired.", "processing"
                )
            return 200, self._page(search_id, offset, count)
        return 404, outcome(f"unknown path {path}", "not-found")

    def _page(self, search_id: str, offset: int, count: int) -> dict[str, Any]:
        chunk = self.resources[offset : offset + count]
        links = [{"relation": "self", "url": f"{self.base_url}/Encounter?_count={count}"}]
        following = offset + count
        if following < len(self.resources):
            path = (
                f"/baseR4?_getpages={search_id}&_getpagesoffset={following}&_count={count}"
                "&_pretty=true&_bundletype=searchset"
            )
            url = path if following in self.relative_offsets else self._root() + path
            links.append({"relation": "next", "url": url})
        return {
            "resourceType": "Bundle",
            "id": search_id,
            "meta": {"lastUpdated": "2026-11-22T09:00:00.000-05:00"},
            "type": "searchset",
            "link": links,  # no "total", as hapi.fhir.org often answers
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/Encounter/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in chunk
            ],
        }


@pytest.fixture
def encounters() -> list[dict[str, Any]]:
    return recorded_encounters()


def serve(resources: list[dict[str, Any]], **options: Any) -> HapiReplayServer:
    return HapiReplayServer(resources, **options)


def client_for(server: HapiReplayServer, page_size: int = 5) -> FhirClient:
    return FhirClient(
        FhirSettings(
            base_url=server.base_url, page_size=page_size, max_retries=1, backoff_factor=0.01
        )
    )


def ids(resources: Iterator[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]


def test_the_client_pages_through_hapi_getpages_links(encounters: list[dict[str, Any]]) -> None:
    with (
        serve(encounters, relative_offsets=frozenset({10})) as server,
        client_for(server) as client,
    ):
        got = ids(client.search("Encounter"))
        assert got == [r["id"] for r in encounters] and len(got) == 16
        assert client.stats.pages == 4 and client.stats.restarts == 0
        paths = [path for path, _ in server.log]
        assert paths[0] == "/baseR4/Encounter?_count=5"
        assert all(p.startswith("/baseR4?_getpages=") for p in paths[1:])
        assert [dict(parse_qsl(urlsplit(p).query))["_getpagesoffset"] for p in paths[1:]] == [
            "5",
            "10",
            "15",
        ]


def test_an_expired_search_restarts_once_and_yields_each_resource_once(
    encounters: list[dict[str, Any]],
) -> None:
    with serve(encounters, expire_at_offset=10) as server, client_for(server) as client:
        got = ids(client.search("Encounter"))
        assert sorted(got) == sorted(r["id"] for r in encounters) and len(got) == 16
        assert client.stats.restarts == 1
        statuses = [status for _, status in server.log]
        assert statuses == [200, 200, 410, 200, 200, 200, 200]
        assert [p for p, _ in server.log].count("/baseR4/Encounter?_count=5") == 2


def test_a_second_expiry_gives_up(encounters: list[dict[str, Any]]) -> None:
    with (
        serve(encounters, expire_at_offset=10, expirations=2) as server,
        client_for(server) as client,
    ):
        got: list[str] = []
        with pytest.raises(GoneError) as caught:
            got.extend(r["id"] for r in client.search("Encounter"))
        assert got == [r["id"] for r in encounters[:10]]
        assert "may have expired" in str(caught.value)


def test_a_next_link_naming_another_host_is_refused(encounters: list[dict[str, Any]]) -> None:
    with serve(encounters, link_host="localhost") as server, client_for(server) as client:
        got: list[str] = []
        with pytest.raises(UnsafeLinkError, match="localhost"):
            got.extend(r["id"] for r in client.search("Encounter"))
        assert len(got) == 5 and len(server.log) == 1
