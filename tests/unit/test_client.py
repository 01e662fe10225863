"""FhirClient without a network: error mapping on real HAPI OperationOutcomes, paging rules, auth,
retry policy. HTTP goes to an in-process requests transport adapter mounted on the session."""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.response import HTTPResponse

from fhirpanel.config import FhirSettings
from fhirpanel.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    FhirHttpError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    SourceError,
    UnsafeLinkError,
    VersionConflictError,
)
from fhirpanel.fhir.client import (
    BasicAuth,
    BearerAuth,
    FhirClient,
    NoAuth,
    auth_from_settings,
    build_retry,
    error_for_response,
    outcome_messages,
    parse_origins,
    redact_url,
    resolve_link,
)

HAPI_DIR = Path(__file__).resolve().parents[2] / "sandbox_fixtures" / "hapi"
BASE = "http://fhir.test/baseR4"

Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((HAPI_DIR / name).read_bytes())
    return data


class FakeTransport(requests.adapters.BaseAdapter):
    """Answers each request with `handler(request)`: (status, body[, headers]); a dict or list
    body is sent as JSON, bytes as they are. Keeps every request it saw."""

    def __init__(self, handler: Callable[[requests.PreparedRequest], Answer]) -> None:
        super().__init__()
        self.handler = handler
        self.seen: list[requests.PreparedRequest] = []

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.seen.append(request)
        answer = self.handler(request)
        status, body = answer[0], answer[1]
        headers = answer[2] if len(answer) == 3 else {}
        response = requests.Response()
        response.status_code = status
        response.reason = {200: "OK", 201: "Created", 502: "Bad Gateway"}.get(status, "")
        if isinstance(body, dict | list):
            body = orjson.dumps(body)
            headers = {"Content-Type": "application/fhir+json", **headers}
        response._content = body or b""
        response.headers = CaseInsensitiveDict(headers)
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        return None

    def queries(self) -> list[list[tuple[str, str]]]:
        return [parse_qsl(urlsplit(r.url or "").query) for r in self.seen]


def fake_client(
    handler: Callable[[requests.PreparedRequest], Answer], *, base: str = BASE, **settings: Any
) -> tuple[FhirClient, FakeTransport]:
    transport = FakeTransport(handler)
    session = requests.Session()
    session.mount("http://", transport)
    session.mount("https://", transport)
    client = FhirClient(FhirSettings(base_url=base, **settings), session=session)
    parts = urlsplit(client.base_url)
    # Replace the client's retrying adapter (mounted on the origin) with the fake.
    session.mount(f"{parts.scheme}://{parts.netloc}/", transport)
    return client, transport


def bundle(entries: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": f"{BASE}/Patient"}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in entries],
    }


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequestError),
        (422, InvalidRequestError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (409, VersionConflictError),
        (412, VersionConflictError),
        (410, GoneError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (405, FhirHttpError),
        (418, FhirHttpError),
        (429, FhirHttpError),
    ],
)
def test_every_status_maps_to_its_error_and_keeps_the_outcome(status: int, expected: type) -> None:
    body = (HAPI_DIR / "operationoutcome-1.json").read_bytes()
    error = error_for_response(status, body, "application/fhir+json", f"{BASE}/Practitioner")
    assert type(error) is expected
    assert error.status == status
    assert error.outcome == recorded("operationoutcome-1.json")
    assert error.hapi_code == "HAPI-0524"
    assert str(error).startswith(f"HTTP {status} from {BASE}/Practitioner: HAPI-0524: Unknown")


@pytest.mark.parametrize(
    ("name", "status", "expected", "code", "words"),
    [
        (
            "operationoutcome-1.json",
            400,
            InvalidRequestError,
            "HAPI-0524",
            'Unknown search parameter "organization"',
        ),
        ("operationoutcome-2.json", 400, InvalidRequestError, "HAPI-0450", "HAPI-1821"),
        ("operationoutcome-3.json", 400, InvalidRequestError, "HAPI-0450", "HAPI-1861"),
        (
            "operationoutcome-4.json",
            412,
            VersionConflictError,
            "HAPI-2840",
            "duplicating existing resource: Patient/131943013",
        ),
        ("operationoutcome-5.json", 400, InvalidRequestError, "HAPI-0450", "HAPI-1814"),
        ("operationoutcome-6.json", 404, NotFoundError, "HAPI-2001", "Patient/1000 is not known"),
        ("operationoutcome-7.json", 404, NotFoundError, None, "does-not-exist-openclinic"),
    ],
)
def test_recorded_hapi_outcomes(
    name: str, status: int, expected: type, code: str | None, words: str
) -> None:
    error = error_for_response(
        status, (HAPI_DIR / name).read_bytes(), "application/fhir+json", f"{BASE}/Patient"
    )
    assert type(error) is expected
    assert error.hapi_code == code
    assert words in str(error)
    assert error.outcome is not None and error.outcome["resourceType"] == "OperationOutcome"
    assert "\n" not in str(error)  # HAPI-1861 diagnostics carry a newline


def test_chained_hapi_codes_keep_the_first_and_show_all() -> None:
    error = error_for_response(400, (HAPI_DIR / "operationoutcome-3.json").read_bytes())
    assert error.hapi_code == "HAPI-0450"
    assert "HAPI-0450" in str(error) and "HAPI-1861" in str(error)


def test_a_long_message_is_cut_but_keeps_every_hapi_code() -> None:
    diagnostics = "HAPI-0450: " + "x" * 900 + " HAPI-1821: the real cause"
    body = orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}],
        }
    )
    error = error_for_response(400, body)
    assert error.hapi_code == "HAPI-0450"
    assert len(str(error)) < 600
    assert "HAPI-1821" in str(error)


def test_details_text_is_used_when_there_are_no_diagnostics() -> None:
    body = orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "warning",
                    "code": "informational",
                    "details": {"text": "just a note"},
                },
                {"severity": "error", "code": "conflict", "details": {"text": "version mismatch"}},
            ],
        }
    )
    error = error_for_response(409, body)
    assert isinstance(error, VersionConflictError)
    assert str(error).endswith("version mismatch")  # errors first, the warning left out


def test_a_non_json_error_body_gives_a_clear_message() -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    error = error_for_response(502, html, "text/html", f"{BASE}/Patient", "Bad Gateway")
    assert isinstance(error, ServerError)
    assert error.outcome is None and error.hapi_code is None
    expected = f"Bad Gateway (text/html, {len(html)} bytes, no OperationOutcome): 502 Bad Gateway"
    assert str(error).endswith(f"{expected} nginx")
    empty = error_for_response(503, b"", "", "", "Service Unavailable")
    assert str(empty) == (
        "HTTP 503 from server: Service Unavailable (no content type, 0 bytes, no OperationOutcome)"
    )
    oauth = error_for_response(401, b'{"error": "invalid_token"}', "application/json")
    assert isinstance(oauth, AuthError) and oauth.exit_code == ExitCode.AUTH
    assert str(oauth).endswith(": invalid_token")


def test_hapi_unknown_token_403_says_how_to_fix_it() -> None:
    body = orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "diagnostics": "HAPI-1979: token refused",
                }
            ],
        }
    )
    error = error_for_response(403, body)
    assert isinstance(error, AuthError)
    assert "auth = 'none'" in str(error)


def test_long_patient_lists_and_secrets_are_redacted_from_urls() -> None:
    ids = ",".join(f"Patient/p{i}" for i in range(120))
    url = f"https://user:pw@fhir.test/r4/Encounter?patient={ids}&access_token=abc&_count=50"
    assert redact_url(url) == (
        "https://fhir.test/r4/Encounter?patient=<120 values>&access_token=***&_count=50"
    )
    assert redact_url(f"{BASE}/Encounter?patient=Patient/a,Patient/b") == (
        f"{BASE}/Encounter?patient=Patient/a,Patient/b"
    )


def test_patient_identifiers_never_reach_a_message() -> None:
    """A roster's identifiers (MRNs) are patient data: counted, never shown; other types'
    identifiers (fhirpanel's own) stay readable."""
    url = f"{BASE}/Patient?identifier=urn:oid:1.2|M1,urn:oid:1.2|M2&_count=50"
    assert redact_url(url) == f"{BASE}/Patient?identifier=<2 identifiers>&_count=50"
    mine = f"{BASE}/CareTeam?identifier=urn:fhirpanel:id|careteam.p1"
    assert redact_url(mine) == mine


def test_errors_never_carry_the_request_body() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        return 422, recorded("operationoutcome-2.json")

    client, _ = fake_client(handler)
    secret = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Zyxwvut"}],
        "birthDate": "1931-02-03",
    }
    with pytest.raises(InvalidRequestError) as caught:
        client.update(secret)
    assert "Zyxwvut" not in str(caught.value) and "1931" not in str(caught.value)
    assert caught.value.url == f"{BASE}/Patient/p1"


def test_a_bundle_search_error_keeps_a_short_url() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        return 400, recorded("operationoutcome-1.json")

    client, _ = fake_client(handler)
    with pytest.raises(InvalidRequestError) as caught:
        list(client.search_by_patients("Encounter", [f"Patient/p{i}" for i in range(50)]))
    assert "patient=<50 values>" in caught.value.url
    assert "p49" not in str(caught.value)


# ---------------------------------------------------------------- links


@pytest.mark.parametrize(
    ("base", "link", "expected"),
    [
        (
            "http://127.0.0.1:8080/baseR4",
            "/baseR4?_getpages=abc&_getpagesoffset=2&_count=2",
            "http://127.0.0.1:8080/baseR4?_getpages=abc&_getpagesoffset=2&_count=2",
        ),
        (
            "http://127.0.0.1:8080/baseR4",
            "http://127.0.0.1:8080/baseR4?_getpages=abc&_getpagesoffset=2&_bundletype=searchset",
            "http://127.0.0.1:8080/baseR4?_getpages=abc&_getpagesoffset=2&_bundletype=searchset",
        ),
        (
            "http://127.0.0.1:8080/baseR4",
            "?_getpages=abc",
            "http://127.0.0.1:8080/baseR4?_getpages=abc",
        ),
        (
            "http://127.0.0.1:8080/fhir",
            "Patient?_count=40&_offset=40",
            "http://127.0.0.1:8080/fhir/Patient?_count=40&_offset=40",
        ),
        (
            "https://fhir.test/r4",
            "https://FHIR.test:443/r4/Patient?page=2#frag",
            "https://fhir.test/r4/Patient?page=2",
        ),
    ],
)
def test_next_links_resolve_against_the_base(base: str, link: str, expected: str) -> None:
    assert resolve_link(base, link) == expected


@pytest.mark.parametrize(
    "link",
    [
        "https://hapi.fhir.org/baseR4?_getpages=abc",  # another host
        "http://127.0.0.1:9999/baseR4?_getpages=abc",  # another port
        "https://127.0.0.1:8080/baseR4?_getpages=abc",  # another scheme
        "//evil.test/baseR4?_getpages=abc",  # scheme-relative
        "http://localhost:8080/baseR4?_getpages=abc",  # HAPI behind a proxy naming itself
        "http://127.0.0.1:notaport/baseR4",
    ],
)
def test_next_links_elsewhere_are_refused(link: str) -> None:
    with pytest.raises(UnsafeLinkError):
        resolve_link("http://127.0.0.1:8080/baseR4", link)


def test_search_refuses_to_follow_a_link_to_another_host() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        return 200, bundle([patient("a")], "https://evil.test/baseR4?_getpages=x")

    client, transport = fake_client(handler)
    got: list[dict[str, Any]] = []
    with pytest.raises(UnsafeLinkError, match=r"evil\.test"):
        got.extend(client.search("Patient"))
    assert [r["id"] for r in got] == ["a"]
    assert len(transport.seen) == 1


def test_request_refuses_absolute_urls_on_another_host() -> None:
    client, transport = fake_client(lambda r: (200, {}))
    with pytest.raises(UnsafeLinkError):
        client.request("GET", "https://evil.test/baseR4/Patient")
    assert transport.seen == []


# ---------------------------------------------------------------- paging


def paged(pages: dict[str, Answer]) -> Callable[[requests.PreparedRequest], Answer]:
    """Serve pages by their `page` query value (the first page has none)."""

    def handler(request: requests.PreparedRequest) -> Answer:
        query = dict(parse_qsl(urlsplit(request.url or "").query))
        return pages[query.get("page", "1")]

    return handler


def test_search_follows_next_links_and_sends_the_search_headers() -> None:
    client, transport = fake_client(
        paged(
            {
                "1": (200, bundle([patient("a"), patient("b")], f"{BASE}/Patient?page=2")),
                "2": (200, bundle([patient("c")], "Patient?page=3")),
                "3": (200, bundle([patient("d")])),
            }
        ),
        page_size=2,
    )
    assert [r["id"] for r in client.search("Patient", {"gender": "female"})] == list("abcd")
    first, second, _ = transport.seen
    assert transport.queries()[0] == [("gender", "female"), ("_count", "2")]
    assert first.headers["Prefer"] == "handling=strict"
    assert "Prefer" not in second.headers  # paging links are the server's own
    assert first.headers["Accept"] == "application/fhir+json"
    assert first.headers["User-Agent"].startswith("fhirpanel/")
    assert client.stats.pages == 3 and client.stats.requests == 3
    assert client.stats.by_method == {"GET": 3}


def test_no_strict_header_when_switched_off_and_count_is_not_overridden() -> None:
    client, transport = fake_client(lambda r: (200, bundle([])), strict_search=False)
    list(client.search("Patient", [("_count", "7"), ("date", "ge2020"), ("date", "lt2021")]))
    assert "Prefer" not in transport.seen[0].headers
    assert transport.queries()[0] == [("_count", "7"), ("date", "ge2020"), ("date", "lt2021")]


def test_mapping_params_with_several_values_repeat_the_parameter() -> None:
    client, transport = fake_client(lambda r: (200, bundle([])))
    params = {"date": ["ge2020-01-01", "lt2021-01-01"], "status": "finished"}
    list(client.search("Encounter", params))
    assert transport.queries()[0] == [
        ("date", "ge2020-01-01"),
        ("date", "lt2021-01-01"),
        ("status", "finished"),
        ("_count", "200"),
    ]


def test_a_repeated_next_link_stops_paging() -> None:
    client, transport = fake_client(
        paged(
            {
                "1": (200, bundle([patient("a")], f"{BASE}/Patient?page=2")),
                "2": (200, bundle([patient("b")], f"{BASE}/Patient?page=2")),
            }
        )
    )
    assert [r["id"] for r in client.search("Patient")] == ["a", "b"]
    assert len(transport.seen) == 2


def test_paging_is_bounded_by_max_pages() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        query = dict(parse_qsl(urlsplit(request.url or "").query))
        n = int(query.get("page", "1"))
        return 200, bundle([patient(f"p{n}")], f"{BASE}/Patient?page={n + 1}")

    client, transport = fake_client(handler, max_pages=5)
    got: list[dict[str, Any]] = []
    with pytest.raises(SourceError, match="more than 5 pages"):
        got.extend(client.search("Patient"))
    assert len(got) == 5 and len(transport.seen) == 5


def gone() -> Answer:
    return 410, {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": "Search ID[abc] does not exist and may have expired.",
            }
        ],
    }


def test_an_expired_page_restarts_the_search_once_without_repeats() -> None:
    calls = {"2": 0}

    def handler(request: requests.PreparedRequest) -> Answer:
        page = dict(parse_qsl(urlsplit(request.url or "").query)).get("page", "1")
        if page == "1":
            return 200, bundle([patient("a"), patient("b")], f"{BASE}/Patient?page=2")
        if page == "2":
            calls["2"] += 1
            if calls["2"] == 1:
                return gone()
            return 200, bundle([patient("b"), patient("c")], f"{BASE}/Patient?page=3")
        return 200, bundle([patient("d")])

    client, transport = fake_client(handler)
    bundles = list(client.search_pages("Patient"))
    ids = [e["resource"]["id"] for b in bundles for e in b["entry"]]
    assert ids == ["a", "b", "c", "d"]  # a, b from before the restart are not repeated
    assert client.stats.restarts == 1
    assert len(transport.seen) == 5  # 1, 2 (410), 1 again, 2, 3
    assert transport.seen[2].headers["Prefer"] == "handling=strict"


def test_a_second_expired_page_raises() -> None:
    client, _ = fake_client(
        paged(
            {
                "1": (200, bundle([patient("a")], f"{BASE}/Patient?page=2")),
                "2": gone(),
            }
        )
    )
    got: list[dict[str, Any]] = []
    with pytest.raises(GoneError) as caught:
        got.extend(client.search("Patient"))
    assert [r["id"] for r in got] == ["a"]
    assert client.stats.restarts == 1
    assert "may have expired" in str(caught.value)


def test_a_410_on_the_first_page_is_not_restarted() -> None:
    client, transport = fake_client(lambda r: gone())
    with pytest.raises(GoneError):
        list(client.search("Patient"))
    assert len(transport.seen) == 1


def test_search_yields_match_and_include_and_logs_outcomes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Encounter", "id": "e1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Encounter", "id": "e2"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}},
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "processing",
                            "diagnostics": "_count capped at 500",
                        }
                    ],
                },
                "search": {"mode": "outcome"},
            },
            {"fullUrl": "urn:uuid:no-resource"},
        ],
    }
    client, _ = fake_client(lambda r: (200, page))
    with caplog.at_level(logging.WARNING, logger="fhirpanel.fhir.client"):
        got = [(r["resourceType"], r["id"]) for r in client.search("Encounter")]
    assert got == [("Encounter", "e1"), ("Encounter", "e2"), ("Patient", "p1")]
    assert "_count capped at 500" in caplog.text


def test_a_page_that_is_not_a_bundle_is_refused() -> None:
    client, _ = fake_client(lambda r: (200, patient("x")))
    with pytest.raises(SourceError, match="expected a Bundle"):
        list(client.search("Patient"))
    client2, _ = fake_client(lambda r: (200, b"<html/>", {"Content-Type": "text/html"}))
    with pytest.raises(SourceError, match="not JSON"):
        list(client2.search("Patient"))


def test_search_by_patients_batches_the_ids() -> None:
    client, transport = fake_client(lambda r: (200, bundle([])), patient_batch=50)
    refs = [f"Patient/p{i}" for i in range(120)] + ["Patient/p0"]  # a repeat is sent once
    assert list(client.search_by_patients("Encounter", refs, {"status": "finished"})) == []
    sent = [dict(q)["patient"].split(",") for q in transport.queries()]
    assert [len(batch) for batch in sent] == [50, 50, 20]
    assert [ref for batch in sent for ref in batch] == [f"Patient/p{i}" for i in range(120)]
    assert all(dict(q)["status"] == "finished" for q in transport.queries())
    assert client.stats.requests == 3
    assert list(client.search_by_patients("Encounter", [])) == []
    assert client.stats.requests == 3  # nothing to ask: no request


def test_search_since_encodes_the_offset() -> None:
    client, transport = fake_client(lambda r: (200, bundle([])))
    list(client.search_since("Encounter", "2026-11-22T10:00:00.123+01:00", {"status": "finished"}))
    assert ("_lastUpdated", "gt2026-11-22T10:00:00.123+01:00") in transport.queries()[0]
    assert "%2B01%3A00" in (transport.seen[0].url or "")


# ---------------------------------------------------------------- reads and writes


def test_read_quotes_the_id_and_maps_404() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        if (request.url or "").endswith("/Patient/1000"):
            return 404, recorded("operationoutcome-6.json")
        return 200, patient("a.b-1")

    client, transport = fake_client(handler)
    assert client.read("Patient", "a.b-1")["id"] == "a.b-1"
    with pytest.raises(NotFoundError) as caught:
        client.read("Patient", "1000")
    assert caught.value.hapi_code == "HAPI-2001"
    assert transport.seen[0].url == f"{BASE}/Patient/a.b-1"


def test_update_sends_if_match_and_returns_the_stored_resource() -> None:
    client, transport = fake_client(lambda r: (200, recorded("update-response-patient-1.json")))
    stored = client.update({"resourceType": "Patient", "id": "131944444"}, if_match="1")
    assert stored["meta"]["versionId"] == "2"
    sent = transport.seen[0]
    assert sent.method == "PUT" and sent.url == f"{BASE}/Patient/131944444"
    assert sent.headers["If-Match"] == 'W/"1"'
    assert sent.headers["Content-Type"].startswith("application/fhir+json")
    assert orjson.loads(sent.body or b"") == {"resourceType": "Patient", "id": "131944444"}
    client.update({"resourceType": "Patient", "id": "131944444"}, if_match='W/"2"')
    assert transport.seen[1].headers["If-Match"] == 'W/"2"'


def test_writes_with_an_empty_answer_come_back_from_the_headers() -> None:
    headers = {"Location": f"{BASE}/Patient/77/_history/3", "ETag": 'W/"3"'}
    client, transport = fake_client(lambda r: (201, b"", headers))
    written = client.conditional_update({"resourceType": "Patient"}, "identifier=sys|v1")
    assert written == {"resourceType": "Patient", "id": "77", "meta": {"versionId": "3"}}
    assert dict(parse_qsl(urlsplit(transport.seen[0].url or "").query)) == {"identifier": "sys|v1"}
    assert client.create({"resourceType": "Patient"})["id"] == "77"
    assert transport.seen[1].method == "POST" and transport.seen[1].url == f"{BASE}/Patient"


def test_writes_need_a_type_and_update_an_id() -> None:
    client, transport = fake_client(lambda r: (200, {}))
    with pytest.raises(ValueError, match="no id"):
        client.update({"resourceType": "Patient"})
    with pytest.raises(ValueError, match="resourceType"):
        client.create({"id": "x"})
    assert transport.seen == []


def test_transaction_posts_the_bundle_to_the_base() -> None:
    client, transport = fake_client(lambda r: (200, recorded("transaction-response-2.json")))
    response = client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 4
    assert transport.seen[0].method == "POST" and transport.seen[0].url == BASE


def test_capabilities_are_read_once() -> None:
    client, transport = fake_client(lambda r: (200, recorded("capabilitystatement-stu3-1.json")))
    assert client.capabilities().release == "STU3"
    assert client.capabilities() is client.capabilities()
    assert len(transport.seen) == 1 and transport.seen[0].url == f"{BASE}/metadata"


def test_base_url_must_be_http() -> None:
    with pytest.raises(ConfigError):
        FhirClient(FhirSettings(base_url="ndjson:/tmp/x"))
    with FhirClient(FhirSettings(base_url=BASE + "/")) as client:
        assert client.base_url == BASE


# ---------------------------------------------------------------- auth


def prepared() -> requests.PreparedRequest:
    return requests.Request("GET", f"{BASE}/Patient").prepare()


def test_auth_providers_set_their_headers() -> None:
    request = prepared()
    BearerAuth("tok-123").apply(request)
    assert request.headers["Authorization"] == "Bearer tok-123"
    request = prepared()
    BasicAuth("alice", "s3cret:x").apply(request)
    expected = base64.b64encode(b"alice:s3cret:x").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    request = prepared()
    NoAuth().apply(request)
    assert "Authorization" not in request.headers


def test_auth_reprs_and_settings_hide_secrets() -> None:
    assert "tok-123" not in repr(BearerAuth("tok-123"))
    assert "s3cret" not in repr(BasicAuth("alice", "s3cret"))
    settings = FhirSettings(base_url=BASE, auth="bearer", token="tok-123")
    assert "tok-123" not in repr(settings)
    assert isinstance(auth_from_settings(settings), BearerAuth)
    assert isinstance(
        auth_from_settings(FhirSettings(auth="basic", username="u", password="p")), BasicAuth
    )
    assert isinstance(auth_from_settings(FhirSettings()), NoAuth)
    with pytest.raises(ConfigError):
        auth_from_settings(FhirSettings(auth="bearer"))
    with pytest.raises(ConfigError):
        auth_from_settings(FhirSettings(auth="basic"))


def test_a_401_invalidates_the_token_and_retries_once() -> None:
    issued = iter(["old", "new", "newer"])

    def handler(request: requests.PreparedRequest) -> Answer:
        if request.headers.get("Authorization") == "Bearer new":
            return 200, patient("a")
        return 401, {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "expired"}],
        }

    transport = FakeTransport(handler)
    session = requests.Session()
    session.mount("http://", transport)
    auth = BearerAuth(fetch=lambda: next(issued))
    client = FhirClient(FhirSettings(base_url=BASE), session=session, auth=auth)
    session.mount("http://fhir.test/", transport)
    assert client.read("Patient", "a")["id"] == "a"
    assert [r.headers["Authorization"] for r in transport.seen] == ["Bearer old", "Bearer new"]
    # A 401 again after the renewal is an AuthError: one renewal per request, not a loop.
    auth.invalidate()
    transport.seen.clear()
    issued = iter(["bad1", "bad2", "bad3"])
    auth._fetch = lambda: next(issued)
    with pytest.raises(AuthError) as caught:
        client.read("Patient", "a")
    assert len(transport.seen) == 2
    assert "bad" not in str(caught.value)


def test_the_token_never_reaches_an_error_message() -> None:
    client, _ = fake_client(
        lambda r: (403, recorded("operationoutcome-1.json")), auth="bearer", token="tok-secret-42"
    )
    with pytest.raises(AuthError) as caught:
        client.read("Patient", "a")
    assert "tok-secret-42" not in str(caught.value)


# ---------------------------------------------------------------- retry policy


def retry_for(**settings: Any) -> Any:
    return build_retry(FhirSettings(base_url=BASE, **settings))


def answer(status: int, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(body=b"", headers=headers or {}, status=status, preload_content=False)


def test_which_answers_are_retried() -> None:
    retry = retry_for()
    for status in (429, 502, 503, 504):
        assert retry.is_retry("GET", status) and retry.is_retry("PUT", status)
    for status in (400, 401, 403, 404, 409, 410, 412, 422, 500, 501):
        assert not retry.is_retry("GET", status)
    # POST is not idempotent: only when the server surely did not act on it.
    assert retry.is_retry("POST", 429) and retry.is_retry("POST", 503)
    assert not retry.is_retry("POST", 502) and not retry.is_retry("POST", 504)
    assert retry.total == 5 and retry.raise_on_status is False


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    retry = retry_for(backoff_factor=0.5, backoff_max=3.0, retry_budget_seconds=1000)
    waits = []
    for _ in range(5):
        retry = retry.increment("GET", "/Patient", response=answer(503))
        waits.append(retry.get_backoff_time())
    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    with pytest.raises(MaxRetryError):  # max_retries = 5
        retry.increment("GET", "/Patient", response=answer(503))


def test_retry_after_seconds_and_dates_are_honoured_and_bad_ones_ignored() -> None:
    retry = retry_for(backoff_factor=0.01, retry_budget_seconds=100)
    assert retry.planned_wait(answer(429, {"Retry-After": "7"})) == 7
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry.planned_wait(answer(503, {"Retry-After": when})) <= 30
    assert retry.get_retry_after(answer(503, {"Retry-After": "soon-ish"})) is None


def test_the_retry_budget_stops_a_long_retry_after() -> None:
    retry = retry_for(retry_budget_seconds=5)
    started = time.monotonic()
    with pytest.raises(MaxRetryError, match="budget"):
        retry.increment("GET", "/Patient", response=answer(503, {"Retry-After": "60"}))
    assert time.monotonic() - started < 1
    assert retry.increment("GET", "/Patient", response=answer(503, {"Retry-After": "2"}))


def test_retries_are_counted() -> None:
    client = FhirClient(FhirSettings(base_url=BASE))
    adapter = client.session.get_adapter(BASE)
    retry = adapter.max_retries  # type: ignore[attr-defined]
    retry.increment("GET", "/Patient", response=answer(503)).increment(
        "GET", "/Patient", response=answer(429)
    )
    assert client.stats.retries == 2


def test_a_post_is_retried_after_connect_errors_but_not_read_errors() -> None:
    retry = retry_for()
    refused = NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    assert retry.increment("POST", "/fhir", error=refused).total == 4
    for lost in (
        ReadTimeoutError(None, "/fhir", "read timed out"),  # type: ignore[arg-type]
        ProtocolError("Connection aborted."),
    ):
        with pytest.raises(type(lost)):
            retry.increment("POST", "/fhir", error=lost)
        assert retry.increment("GET", "/fhir", error=lost).total == 4


# ---------------------------------------------------------------- completeness against `total`


def counted(
    entries: list[dict[str, Any]], total: int | None, next_url: str | None = None, **extra: Any
) -> dict[str, Any]:
    page = bundle(entries, next_url)
    if total is not None:
        page["total"] = total
    page["entry"].extend(extra.get("more_entries", ()))
    return page


def test_a_total_made_up_by_the_pages_passes() -> None:
    client, _ = fake_client(
        paged(
            {
                "1": (200, counted([patient("a"), patient("b")], 4, f"{BASE}/Patient?page=2")),
                "2": (
                    200,
                    counted([patient("c"), patient("d")], None),
                ),  # total on the first page only
            }
        )
    )
    assert [r["id"] for r in client.search("Patient")] == list("abcd")


def test_an_empty_page_before_the_total_is_a_failed_read() -> None:
    client, transport = fake_client(
        paged(
            {
                "1": (200, counted([patient("a"), patient("b")], 300, f"{BASE}/Patient?page=2")),
                "2": (200, counted([], 300)),  # no next link either: the scenario
            }
        )
    )
    got: list[str] = []
    with pytest.raises(SourceError) as caught:
        got.extend(r["id"] for r in client.search("Patient"))
    assert str(caught.value) == (
        "Patient search: server said total 300 but its pages held 2 "
        "(page 2 came back empty); nothing from this search was used"
    )
    assert caught.value.exit_code == ExitCode.SOURCE
    assert got == ["a", "b"] and len(transport.seen) == 2


def test_an_empty_first_page_with_a_total_yields_nothing() -> None:
    client, _ = fake_client(lambda r: (200, counted([], 300)))
    got: list[dict[str, Any]] = []
    with pytest.raises(SourceError, match="total 300 but its pages held 0"):
        got.extend(client.search("Encounter"))
    assert got == []


def test_a_next_chain_that_ends_before_the_total_is_a_failed_read() -> None:
    client, _ = fake_client(
        paged(
            {
                "1": (200, counted([patient("a"), patient("b")], 5, f"{BASE}/Patient?page=2")),
                "2": (200, counted([patient("c")], 5)),  # short, and no next link
            }
        )
    )
    with pytest.raises(
        SourceError,
        match=r"total 5 but its pages held 3 \(a page came back "
        r"short or the next links ended early\)",
    ):
        list(client.search("Patient"))


def test_a_repeated_next_link_before_the_total_is_a_failed_read() -> None:
    client, _ = fake_client(
        paged(
            {
                "1": (200, counted([patient("a")], 3, f"{BASE}/Patient?page=2")),
                "2": (200, counted([patient("b")], 3, f"{BASE}/Patient?page=2")),
            }
        )
    )
    with pytest.raises(SourceError, match="total 3 but its pages held 2"):
        list(client.search("Patient"))


def test_more_distinct_matches_than_the_total_is_a_failed_read() -> None:
    client, _ = fake_client(lambda r: (200, counted([patient("a"), patient("b")], 1)))
    with pytest.raises(SourceError, match=r"total 1 but its pages held 2 \(more than the total"):
        list(client.search("Patient"))


def test_includes_outcomes_and_repeated_resources_do_not_count_toward_the_total() -> None:
    include = {
        "resource": {"resourceType": "Practitioner", "id": "d1"},
        "search": {"mode": "include"},
    }
    same_type_include = {"resource": patient("linked"), "search": {"mode": "include"}}
    no_mode_other_type = {"resource": {"resourceType": "Organization", "id": "o1"}}
    warning = {
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "informational", "diagnostics": "fine"}],
        }
    }
    client, _ = fake_client(
        paged(
            {
                "1": (
                    200,
                    counted(
                        [patient("a"), patient("b")],
                        3,
                        f"{BASE}/Patient?page=2",
                        more_entries=[include, same_type_include, warning],
                    ),
                ),
                # `b` again (an offset shifted by a concurrent write), plus `c`: 3 distinct matches.
                "2": (
                    200,
                    counted(
                        [patient("b"), patient("c")], 3, more_entries=[include, no_mode_other_type]
                    ),
                ),
            }
        )
    )
    got = [(r["resourceType"], r["id"]) for r in client.search("Patient")]
    assert ("Patient", "c") in got and ("Practitioner", "d1") in got
    assert ("Organization", "o1") in got  # yielded as before, counted as an include


def test_count_only_searches_are_not_checked() -> None:
    client, transport = fake_client(lambda r: (200, counted([], 42)))
    for params in ([("_summary", "count")], [("_count", "0")]):
        pages = list(client.search_pages("CareTeam", params))
        assert [p["total"] for p in pages] == [42] and pages[0]["entry"] == []
    assert len(transport.seen) == 2


def test_without_a_total_nothing_is_checked() -> None:
    client, _ = fake_client(
        paged(
            {
                "1": (200, counted([patient("a")], None, f"{BASE}/Patient?page=2")),
                "2": (200, counted([], None)),
            }
        )
    )
    assert [r["id"] for r in client.search("Patient")] == ["a"]


def test_a_restart_after_an_expired_page_counts_each_resource_once() -> None:
    calls = {"2": 0}

    def handler(request: requests.PreparedRequest) -> Answer:
        page = dict(parse_qsl(urlsplit(request.url or "").query)).get("page", "1")
        if page == "1":
            return 200, counted([patient("a"), patient("b")], 4, f"{BASE}/Patient?page=2")
        if page == "2":
            calls["2"] += 1
            return gone() if calls["2"] == 1 else (200, counted([patient("c"), patient("d")], 4))
        raise AssertionError(page)

    client, _ = fake_client(handler)
    assert [r["id"] for r in client.search("Patient")] == list("abcd")
    assert client.stats.restarts == 1


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ({"resourceType": "Bundle", "entry": "abc"}, "Bundle.entry is a string, not a list"),
        ({"resourceType": "Bundle", "entry": ["a", "b"]}, r"Bundle.entry\[0\] is a string"),
        (
            {"resourceType": "Bundle", "entry": [{"resource": 7}]},
            r"Bundle.entry\[0\].resource is a number, not an object",
        ),
        ({"resourceType": "Bundle", "entry": [], "link": "next"}, "Bundle.link is a string"),
        (
            {"resourceType": "Bundle", "entry": [], "total": "300"},
            "Bundle.total is a string, not a whole number",
        ),
        ({"resourceType": "Bundle", "total": -1}, "Bundle.total is a number, not a whole number"),
    ],
)
def test_a_wrongly_shaped_page_is_a_one_line_source_error(
    page: dict[str, Any], message: str
) -> None:
    client, _ = fake_client(lambda r: (200, page))
    with pytest.raises(SourceError, match=message) as caught:
        list(client.search("Patient"))
    assert str(caught.value).startswith(f"Patient search page 1 ({BASE}/Patient?_count=200): ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "body", [b"[1, 2]", b"42", b'"Bundle"', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000]
)
def test_a_page_that_is_not_a_json_object_is_a_source_error(body: bytes) -> None:
    client, _ = fake_client(lambda r: (200, body, {"Content-Type": "application/fhir+json"}))
    with pytest.raises(SourceError, match=r"not JSON|JSON is not an object"):
        list(client.search("Patient"))


def test_outcomes_with_wrong_shapes_give_no_lines_rather_than_errors() -> None:
    assert outcome_messages({"issue": 5}) == []
    assert outcome_messages({"issue": [{"details": {"coding": 3}, "code": "x"}]}) == ["x"]
    assert str(error_for_response(500, b'{"resourceType": "OperationOutcome", "issue": 1}'))


# ---------------------------------------------------------------- foreign-origin links


PROXIED = "https://ehr.example.org/fhir"
HAPI_LINK = "http://localhost:8080/fhir?_getpages=abc&_getpagesoffset=200&_count=200"


def test_a_foreign_link_says_which_settings_allow_it() -> None:
    with pytest.raises(UnsafeLinkError) as caught:
        resolve_link(PROXIED, HAPI_LINK)
    assert str(caught.value) == (
        "refusing a paging link to http://localhost:8080/fhir?_getpages=abc&_getpagesoffset=200"
        "&_count=200: not on https://ehr.example.org/fhir; add http://localhost:8080 to "
        "fhir.trusted_link_origins (FHIRPANEL_FHIR_TRUSTED_LINK_ORIGINS) to follow it, or set "
        "fhir.rewrite_foreign_links = true (FHIRPANEL_FHIR_REWRITE_FOREIGN_LINKS) to send it to "
        "the base URL instead"
    )


@pytest.mark.parametrize(
    ("base", "link", "expected"),
    [
        # HAPI behind a proxy without server_address: only the origin changes.
        (
            PROXIED,
            HAPI_LINK,
            "https://ehr.example.org/fhir?_getpages=abc&_getpagesoffset=200&_count=200",
        ),
        (
            PROXIED,
            "http://10.0.0.5:8080/fhir/Patient?_offset=200",
            "https://ehr.example.org/fhir/Patient?_offset=200",
        ),
        (
            PROXIED,
            "http://backend/files/Patient.ndjson",
            "https://ehr.example.org/files/Patient.ndjson",
        ),
        # The path is never remapped, even when it lies outside the base's path.
        (
            "https://ehr.example.org/ehr/fhir",
            HAPI_LINK,
            "https://ehr.example.org/fhir?_getpages=abc&_getpagesoffset=200&_count=200",
        ),
        (
            "https://ehr.example.org:8443/fhir",
            "https://u:p@backend/fhir?x=1#frag",
            "https://ehr.example.org:8443/fhir?x=1",
        ),
    ],
)
def test_foreign_links_are_rewritten_onto_the_base_when_asked(
    base: str, link: str, expected: str
) -> None:
    assert resolve_link(base, link, rewrite=True) == expected
    with pytest.raises(UnsafeLinkError):  # the setting is what allows it
        resolve_link(base, link)


def test_rewriting_never_applies_to_other_schemes() -> None:
    with pytest.raises(UnsafeLinkError):
        resolve_link(PROXIED, "ftp://localhost/fhir?x=1", rewrite=True)


def test_trusted_origins_are_followed_as_given_and_others_still_refused() -> None:
    trusted = parse_origins("http://localhost:8080, https://mirror.example.org")
    assert resolve_link(PROXIED, HAPI_LINK, trusted=trusted) == HAPI_LINK
    with pytest.raises(UnsafeLinkError, match="localhost:9090"):
        resolve_link(PROXIED, "http://localhost:9090/fhir?_getpages=x", trusted=trusted)


@pytest.mark.parametrize(
    "value",
    ["localhost:8080", "http://h/fhir", "ftp://h", "http://", "http://u:p@h", "http://h:port"],
)
def test_trusted_origins_must_be_origins(value: str) -> None:
    with pytest.raises(ConfigError, match=r"fhir\.trusted_link_origins"):
        FhirClient(FhirSettings(base_url=PROXIED, trusted_link_origins=value))


def test_the_client_rewrites_a_proxied_hapi_next_link() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        if "_getpages" in (request.url or ""):
            return 200, counted([patient("b")], 2)
        return 200, counted([patient("a")], 2, HAPI_LINK)

    client, transport = fake_client(handler, base=PROXIED, rewrite_foreign_links=True)
    assert [r["id"] for r in client.search("Patient")] == ["a", "b"]
    assert transport.seen[1].url == (
        "https://ehr.example.org/fhir?_getpages=abc&_getpagesoffset=200&_count=200"
    )
    refused, _ = fake_client(handler, base=PROXIED)
    with pytest.raises(UnsafeLinkError, match=r"fhir\.rewrite_foreign_links"):
        list(refused.search("Patient"))


def test_the_client_follows_a_trusted_origin_with_its_credentials() -> None:
    def handler(request: requests.PreparedRequest) -> Answer:
        if "_getpages" in (request.url or ""):
            return 200, counted([patient("b")], 2)
        return 200, counted([patient("a")], 2, HAPI_LINK)

    client, transport = fake_client(
        handler,
        base=PROXIED,
        auth="bearer",
        token="t-1",
        trusted_link_origins="http://localhost:8080",
    )
    session = client.session
    session.mount("http://localhost:8080/", transport)  # over the client's retrying adapter
    assert [r["id"] for r in client.search("Patient")] == ["a", "b"]
    assert transport.seen[1].url == HAPI_LINK
    assert transport.seen[1].headers["Authorization"] == "Bearer t-1"
    assert client.url_for(HAPI_LINK) == HAPI_LINK
    with pytest.raises(UnsafeLinkError, match=r"add http://elsewhere\.test to fhir\.trusted_link"):
        client.url_for("http://elsewhere.test/fhir")


# ---------------------------------------------------------------- 403 that blames the token


@pytest.mark.parametrize(
    ("headers", "body", "renews"),
    [
        (
            {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"'},
            b"",
            True,
        ),
        (
            {},
            orjson.dumps(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "security",
                            "diagnostics": "Access token expired",
                        }
                    ],
                }
            ),
            True,
        ),
        ({}, b'{"error": "invalid_token"}', True),
        ({}, b"The token is not valid", True),
        (
            {},
            orjson.dumps(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "forbidden",
                            "diagnostics": "Scope system/Patient.read does not allow writes",
                        }
                    ],
                }
            ),
            False,
        ),
        ({"WWW-Authenticate": 'Bearer error="insufficient_scope"'}, b"", False),
    ],
)
def test_a_403_that_blames_the_token_renews_it_once(
    headers: dict[str, str], body: bytes, renews: bool
) -> None:
    issued = iter(["old", "new", "newer"])

    def handler(request: requests.PreparedRequest) -> Answer:
        if request.headers.get("Authorization") == "Bearer new":
            return 200, patient("a")
        return 403, body, {"Content-Type": "application/json", **headers}

    transport = FakeTransport(handler)
    session = requests.Session()
    session.mount("http://", transport)
    client = FhirClient(
        FhirSettings(base_url=BASE), session=session, auth=BearerAuth(fetch=lambda: next(issued))
    )
    session.mount("http://fhir.test/", transport)
    if renews:
        assert client.read("Patient", "a")["id"] == "a"
        assert [r.headers["Authorization"] for r in transport.seen] == ["Bearer old", "Bearer new"]
    else:
        with pytest.raises(AuthError):
            client.read("Patient", "a")
        assert len(transport.seen) == 1  # other 403s fail at once


def test_401_and_403_share_one_renewal_per_request() -> None:
    answers = iter([(401, b""), (403, b'{"error": "invalid_token"}')])
    client, transport = fake_client(lambda r: next(answers), auth="bearer", token="t")
    with pytest.raises(AuthError) as caught:
        client.read("Patient", "a")
    assert caught.value.status == 403 and len(transport.seen) == 2
