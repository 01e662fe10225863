"""Contract: genuine HAPI responses (sandbox_fixtures/hapi, see its README) go through the client's
paging and error handling. Pages are fed by a requests transport adapter on the session, so the
client's own code (params, link resolution, entry modes) runs unchanged; nothing leaves the
process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import requests
from requests.structures import CaseInsensitiveDict

from fhirpanel.config import FhirSettings
from fhirpanel.errors import InvalidRequestError, NotFoundError, VersionConflictError
from fhirpanel.fhir.client import FhirClient, next_link

HAPI_DIR = Path(__file__).resolve().parents[2] / "sandbox_fixtures" / "hapi"
SEARCHSETS = sorted(p.name for p in HAPI_DIR.glob("searchset-*.json"))
EMPTY = "searchset-empty-1.json"


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((HAPI_DIR / name).read_bytes())
    return data


class RecordedServer(requests.adapters.BaseAdapter):
    """Answers from recorded bodies: `route(url)` names the file (and status) for each URL."""

    def __init__(self, route: Callable[[str], tuple[int, str]], spliced: bool = False) -> None:
        super().__init__()
        self.route = route
        self.urls: list[str] = []
        # Pages recorded from different searches, chained: their `total`s describe other
        # searches, which the client's completeness check would rightly refuse.
        self.spliced = spliced

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        url = request.url or ""
        self.urls.append(url)
        status, name = self.route(url)
        response = requests.Response()
        response.status_code = status
        body = (HAPI_DIR / name).read_bytes()  # the recorded bytes, untouched...
        if self.spliced and name.startswith("searchset-"):  # ...unless chained from elsewhere
            body = orjson.dumps({k: v for k, v in orjson.loads(body).items() if k != "total"})
        response._content = body
        response.headers = CaseInsensitiveDict({"Content-Type": "application/fhir+json"})
        response.url = url
        response.request = request
        return response

    def close(self) -> None:
        return None


def hapi_client(
    base: str, route: Callable[[str], tuple[int, str]], spliced: bool = False, **settings: Any
) -> tuple[FhirClient, RecordedServer]:
    server = RecordedServer(route, spliced)
    session = requests.Session()
    session.mount("http://", server)
    session.mount("https://", server)
    client = FhirClient(FhirSettings(base_url=base, **settings), session=session)
    parts = urlsplit(client.base_url)
    session.mount(f"{parts.scheme}://{parts.netloc}/", server)  # over the retrying adapter
    return client, server


def self_link(bundle: dict[str, Any]) -> str:
    return str(next(link["url"] for link in bundle["link"] if link["relation"] == "self"))


def base_and_type(bundle: dict[str, Any]) -> tuple[str, str]:
    """`https://hapi.fhir.org/baseR4/Patient?_count=2` -> (`https://hapi.fhir.org/baseR4`,
    `Patient`)."""
    path = self_link(bundle).split("?", 1)[0]
    base, resource_type = path.rsplit("/", 1)
    return base, resource_type


def matches(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle.get("entry", ())
        if e.get("search", {}).get("mode", "match") in ("match", "include")
    ]


@pytest.mark.parametrize("name", SEARCHSETS)
def test_every_recorded_searchset_pages_through_search(name: str) -> None:
    page = recorded(name)
    base, resource_type = base_and_type(page)
    link = next_link(page)

    def route(url: str) -> tuple[int, str]:
        return (200, EMPTY) if link is not None and url == link else (200, name)

    client, server = hapi_client(base, route, spliced=link is not None, page_size=2)
    got = [(r["resourceType"], r["id"]) for r in client.search(resource_type)]
    assert got == matches(page)
    assert all(rtype == resource_type for rtype, _ in got)
    if link is None:
        assert len(server.urls) == 1
    else:  # the recorded next link is followed exactly as HAPI gave it
        assert server.urls[1] == link
        assert len(server.urls) == 2 and client.stats.pages == 2
    first = dict(parse_qsl(urlsplit(server.urls[0]).query))
    assert first == {"_count": "2"}


def test_the_recorded_hapi_searchsets_are_what_the_contract_needs() -> None:
    """The fixtures cover what the tests above claim: HAPI's root-level _getpages links, missing
    totals, and lastUpdated with local offsets."""
    pages = {name: recorded(name) for name in SEARCHSETS}
    getpages = [n for n, p in pages.items() if "_getpages=" in (next_link(p) or "")]
    assert len(getpages) >= 4
    for name in getpages:
        base, _ = base_and_type(pages[name])
        assert (next_link(pages[name]) or "").startswith(base + "?_getpages=")
    assert [n for n, p in pages.items() if "total" not in p]
    offsets = {
        e["resource"]["meta"]["lastUpdated"][-6:]
        for p in pages.values()
        for e in p.get("entry", ())
    }
    assert {"-04:00", "-05:00", "+00:00"} <= offsets


def test_the_empty_searchset_without_entry_yields_nothing() -> None:
    page = recorded(EMPTY)
    assert "entry" not in page and page["total"] == 0
    base, resource_type = base_and_type(page)
    client, server = hapi_client(base, lambda url: (200, EMPTY))
    assert list(client.search(resource_type)) == []
    assert len(server.urls) == 1 and client.stats.pages == 1


def test_two_recorded_hapi_pages_chain_through_getpages() -> None:
    first, second = recorded("searchset-patient-1.json"), recorded("searchset-patient-2.json")

    def route(url: str) -> tuple[int, str]:
        if url == next_link(first):
            return 200, "searchset-patient-2.json"
        if url == next_link(second):
            return 200, EMPTY
        return 200, "searchset-patient-1.json"

    client, server = hapi_client("https://hapi.fhir.org/baseR4", route, spliced=True)
    ids = [r["id"] for r in client.search("Patient")]
    assert ids == ["8728293", "8728374", "90270587"]
    assert len(server.urls) == 3 and client.stats.pages == 3


def test_local_offsets_in_last_updated_pass_through_untouched() -> None:
    name = "searchset-encounter-3.json"
    base, resource_type = base_and_type(recorded(name))
    client, server = hapi_client(
        base, lambda url: (200, name if "_getpages" not in url else EMPTY), spliced=True
    )
    stamps = [r["meta"]["lastUpdated"] for r in client.search(resource_type)]
    assert stamps == ["2021-02-17T23:49:44.000-05:00", "2021-02-17T23:49:44.000-05:00"]
    # A watermark taken from them goes back to HAPI with its offset intact.
    before = len(server.urls)
    list(client.search_since(resource_type, stamps[0]))
    sent = dict(parse_qsl(urlsplit(server.urls[before]).query))
    assert sent["_lastUpdated"] == "gt2021-02-17T23:49:44.000-05:00"
    before = len(server.urls)
    list(client.search_since(resource_type, "2023-03-21T10:40:19.805+00:00"))
    assert "_lastUpdated=gt2023-03-21T10%3A40%3A19.805%2B00%3A00" in server.urls[before]


def test_hapi_400_for_an_unknown_search_parameter() -> None:
    client, _ = hapi_client(
        "https://hapi.fhir.org/baseR4", lambda url: (400, "operationoutcome-1.json")
    )
    with pytest.raises(InvalidRequestError) as caught:
        list(client.search("Practitioner", {"organization": "Organization/1"}))
    assert caught.value.hapi_code == "HAPI-0524"
    assert caught.value.outcome == recorded("operationoutcome-1.json")


def test_hapi_404_and_duplicate_create() -> None:
    client, _ = hapi_client(
        "http://localhost:18080/fhir", lambda url: (404, "operationoutcome-6.json")
    )
    with pytest.raises(NotFoundError, match="HAPI-2001: Resource Patient/1000 is not known"):
        client.read("Patient", "1000")
    client, _ = hapi_client(
        "https://hapi.fhir.org/baseR4", lambda url: (412, "operationoutcome-4.json")
    )
    with pytest.raises(VersionConflictError) as caught:
        client.conditional_update({"resourceType": "Patient"}, "identifier=sys|1")
    assert caught.value.hapi_code == "HAPI-2840"


def test_hapi_write_answers() -> None:
    client, server = hapi_client(
        "https://hapi.fhir.org/baseR4", lambda url: (200, "update-response-patient-1.json")
    )
    stored = client.update({"resourceType": "Patient", "id": "131944444"})
    assert stored["meta"]["versionId"] == "2"
    assert server.urls == ["https://hapi.fhir.org/baseR4/Patient/131944444"]
    client, server = hapi_client(
        "https://hapi.fhir.org/baseR4", lambda url: (200, "transaction-response-1.json")
    )
    answer = client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert answer["type"] == "transaction-response"
    codes = {
        e["response"]["outcome"]["issue"][0]["details"]["coding"][0]["code"]
        for e in answer["entry"]
    }
    assert codes == {"SUCCESSFUL_UPDATE_NO_CONDITIONAL_MATCH"}
    assert server.urls == ["https://hapi.fhir.org/baseR4"]
