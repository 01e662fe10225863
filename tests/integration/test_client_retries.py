"""Retries through a fault-injecting proxy on 127.0.0.1 in front of the real sandbox server.

Backoff is tiny here (backoff_factor 0.01 s) so the suite stays fast; only the Retry-After test
waits a real second, and measures it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fhirpanel.config import FhirSettings
from fhirpanel.errors import InvalidRequestError, ServerError, TransportError
from fhirpanel.fhir.client import FhirClient
from fhirpanel.sandbox.server import SandboxServer, free_port
from tests.integration.faults import RESET, RESET_MID_BODY, FaultProxy, Stall, Status

FAST: dict[str, Any] = {
    "max_retries": 3,
    "backoff_factor": 0.01,
    "backoff_max": 0.1,
    "retry_budget_seconds": 10.0,
    "connect_timeout": 2.0,
    "read_timeout": 5.0,
}


@pytest.fixture
def proxy(sandbox: SandboxServer) -> Iterator[FaultProxy]:
    sandbox.load({"resourceType": "Patient", "id": f"p{i:03d}", "active": True} for i in range(60))
    with FaultProxy(sandbox.base_url) as fault_proxy:
        yield fault_proxy


def client_for(proxy: FaultProxy, **changes: Any) -> FhirClient:
    return FhirClient(FhirSettings(base_url=proxy.base_url, **{**FAST, **changes}))


def test_a_503_then_success(proxy: FaultProxy) -> None:
    proxy.script(Status(503))
    with client_for(proxy) as client:
        assert client.read("Patient", "p001")["id"] == "p001"
        assert [a.fault for a in proxy.arrivals] == ["503", "pass"]
        assert client.stats.retries == 1 and client.stats.requests == 1


def test_429_with_retry_after_is_honoured(proxy: FaultProxy) -> None:
    proxy.script(Status(429, {"Retry-After": "1"}))
    with client_for(proxy) as client:
        started = time.monotonic()
        assert len(list(client.search("Patient"))) == 60
        elapsed = time.monotonic() - started
    first, second = proxy.arrivals
    assert first.fault == "429" and second.fault == "pass"
    assert second.at - first.at >= 0.95  # the server's 1 s, not our 0.01 s backoff
    assert elapsed < 3


def test_a_reset_before_answering_then_success(proxy: FaultProxy) -> None:
    proxy.script(RESET)
    with client_for(proxy) as client:
        assert len(list(client.search("Patient"))) == 60
        assert [a.fault for a in proxy.arrivals] == ["reset", "pass"]
        assert client.stats.retries == 1


def test_a_reset_in_the_middle_of_the_body_then_success(proxy: FaultProxy) -> None:
    proxy.script(RESET_MID_BODY)
    with client_for(proxy) as client:
        got = list(client.search("Patient"))
        assert sorted(r["id"] for r in got) == [f"p{i:03d}" for i in range(60)]
        assert [a.fault for a in proxy.arrivals] == ["reset-mid-body", "pass"]
        assert client.stats.retries == 1 and client.stats.pages == 1


def test_a_reset_mid_body_on_every_try_ends_in_a_transport_error(proxy: FaultProxy) -> None:
    proxy.script(default=RESET_MID_BODY)
    with client_for(proxy) as client, pytest.raises(TransportError) as caught:
        client.read("Patient", "p001")
    assert len(proxy.arrivals) == 4  # the first try and max_retries more
    assert "p001" in str(caught.value) and "ChunkedEncodingError" in str(caught.value)


def test_503_forever_gives_server_error_after_max_retries(proxy: FaultProxy) -> None:
    proxy.script(default=Status(503))
    started = time.monotonic()
    with client_for(proxy) as client, pytest.raises(ServerError) as caught:
        list(client.search("Patient"))
    assert time.monotonic() - started < 2
    assert len(proxy.arrivals) == 4 and client.stats.retries == 3
    assert caught.value.status == 503
    assert caught.value.outcome is not None and "injected 503" in str(caught.value)


def test_a_retry_after_beyond_the_budget_is_not_waited_for(proxy: FaultProxy) -> None:
    proxy.script(default=Status(503, {"Retry-After": "120"}))
    started = time.monotonic()
    with client_for(proxy, retry_budget_seconds=3.0) as client, pytest.raises(ServerError):
        client.read("Patient", "p001")
    assert time.monotonic() - started < 2
    assert len(proxy.arrivals) == 1


def test_400_is_not_retried(proxy: FaultProxy) -> None:
    with client_for(proxy) as client, pytest.raises(InvalidRequestError):
        list(client.search("Patient", {"no-such-param": "x"}))
    assert len(proxy.arrivals) == 1  # the real sandbox's 400, passed through once


def test_paging_links_work_through_the_proxy(proxy: FaultProxy) -> None:
    proxy.script(Status(502), RESET)  # both on the first page
    with client_for(proxy, page_size=25) as client:
        assert len({r["id"] for r in client.search("Patient")}) == 60
        assert client.stats.pages == 3 and client.stats.retries == 2
    assert all(a.path.startswith("/fhir/Patient") for a in proxy.arrivals)


def test_a_transaction_is_retried_on_503_but_not_after_a_lost_answer(proxy: FaultProxy) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "tx1", "active": True},
                "request": {"method": "PUT", "url": "Patient/tx1"},
            }
        ],
    }
    proxy.script(Status(503))
    with client_for(proxy) as client:
        assert client.transaction(bundle)["type"] == "transaction-response"
        assert [(a.method, a.fault) for a in proxy.arrivals] == [("POST", "503"), ("POST", "pass")]
        # The request was sent and the connection dropped: the server may have acted on it.
        proxy.script(RESET)
        with pytest.raises(TransportError):
            client.transaction(bundle)
        assert [(a.method, a.fault) for a in proxy.arrivals] == [("POST", "reset")]


def test_read_timeouts_retry_a_get_but_not_a_post(proxy: FaultProxy) -> None:
    with client_for(proxy, read_timeout=0.3) as client:
        proxy.script(Stall(0.6))
        assert client.read("Patient", "p001")["id"] == "p001"
        assert [a.fault for a in proxy.arrivals] == ["stall 0.6s", "pass"]
        proxy.script(Stall(0.6))
        with pytest.raises(TransportError, match="ReadTimeout"):
            client.create({"resourceType": "Patient", "active": True})
        assert len(proxy.arrivals) == 1


def test_nobody_listening_is_a_transport_error() -> None:
    port = free_port()
    settings = FhirSettings(base_url=f"http://127.0.0.1:{port}/fhir", **FAST)
    started = time.monotonic()
    with FhirClient(settings) as client, pytest.raises(TransportError) as caught:
        client.read("Patient", "p001")
    assert time.monotonic() - started < 2
    assert client.stats.retries == 3 and client.stats.requests == 0
    assert f"127.0.0.1:{port}/fhir/Patient/p001" in str(caught.value)
