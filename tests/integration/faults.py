"""Loopback HTTP helpers for client tests: a small server base and a fault-injecting proxy.

`FaultProxy` sits on 127.0.0.1 in front of the sandbox FHIR server and answers each request per a
script of faults (a status, a reset before answering, a reset halfway through the body, a stall,
a `Rewrite` of the JSON body the server sent), passing everything else through. `on_path` fires
a fault on the requests whose path and query hold given fragments, whatever the script says. It
records when each request arrived so tests can count attempts and measure waits.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

import orjson

LOOPBACK = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LoopbackServer:
    """A ThreadingHTTPServer on a free 127.0.0.1 port in a thread; `handle(handler)` answers."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _dispatch(self) -> None:
                owner.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = _dispatch

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

            def finish(self) -> None:
                # A fault may have reset the socket already.
                with contextlib.suppress(OSError):
                    super().finish()

        self._httpd = _Server((LOOPBACK, 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"{type(self).__name__}-{self.port}",
        )

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_type: str = "application/fhir+json; charset=utf-8",
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if body:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if body:
        handler.wfile.write(body)


def reset(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), answering nothing more."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.wfile.flush()
    sock = handler.connection
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def outcome(diagnostics: str, code: str = "transient") -> bytes:
    return orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
        }
    )


# ---------------------------------------------------------------- faults


@dataclass(frozen=True)
class Status:
    """Answer with this status (an OperationOutcome body) instead of forwarding."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)


RESET = "reset"  # close the socket without answering
RESET_MID_BODY = "reset-mid-body"  # forward, send headers and half the body, then reset
PASS = "pass"


@dataclass(frozen=True)
class Stall:
    """Say nothing for `seconds`, then reset (a read timeout on the client side)."""

    seconds: float


@dataclass(frozen=True)
class Rewrite:
    """Forward, then answer with the server's JSON body changed by `change` (the parsed body in,
    any JSON value out); a body that is not JSON passes unchanged. `name` is what arrivals
    record."""

    name: str
    change: Callable[[Any], Any]


def _without_next(links: Any) -> Any:
    if not isinstance(links, list):
        return links
    return [
        link for link in links if not (isinstance(link, dict) and link.get("relation") == "next")
    ]


# A searchset page that lost its entries and its next link, keeping `total` (issue 12).
EMPTY_PAGE = Rewrite(
    "empty-page", lambda b: {**b, "entry": [], "link": _without_next(b.get("link"))}
)
# A page whose next link is gone: the chain ends early.
DROP_NEXT = Rewrite("drop-next", lambda b: {**b, "link": _without_next(b.get("link"))})
# Bundles that are not searchsets a client can read.
ENTRY_STRING = Rewrite("entry-string", lambda b: {**b, "entry": "entries"})
ENTRY_STRINGS = Rewrite("entry-strings", lambda b: {**b, "entry": ["a", "b"]})


def next_link_on(origin: str) -> Rewrite:
    """The page's `next` link moved onto another origin (a proxied HAPI naming itself)."""

    def change(bundle: Any) -> Any:
        links = bundle.get("link") if isinstance(bundle, dict) else None
        if not isinstance(links, list):
            return bundle
        moved = []
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next":
                parts = urlsplit(str(link.get("url", "")))
                url = origin + parts.path + (f"?{parts.query}" if parts.query else "")
                link = {**link, "url": url}
            moved.append(link)
        return {**bundle, "link": moved}

    return Rewrite(f"next-on {origin}", change)


Fault = Status | Stall | Rewrite | str


@dataclass(frozen=True)
class Arrival:
    method: str
    path: str
    at: float  # time.monotonic()
    fault: str


class FaultProxy(LoopbackServer):
    """Forwards to `upstream` (a FHIR base URL on loopback), rewriting the upstream base in bodies
    so paging links point at the proxy, after applying the next scripted fault. `default` is used
    when the script is empty."""

    def __init__(self, upstream: str, faults: Iterable[Fault] = (), default: Fault = PASS) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        parts = urlsplit(self.upstream)
        self._upstream_host = parts.hostname or LOOPBACK
        self._upstream_port = parts.port or 80
        self.base_url = self.origin + parts.path
        self._faults: deque[Fault] = deque(faults)
        self.default = default
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._path_faults: list[list[Any]] = []  # [fragments, fault, times left, method]

    def on_path(self, *fragments: str, fault: Fault, times: int = 1, method: str = "GET") -> None:
        """`fault` for the next `times` requests whose path and query hold every fragment,
        before (and without using) the script."""
        with self._lock:
            self._path_faults.append([fragments, fault, times, method])

    def script(self, *faults: Fault, default: Fault = PASS) -> None:
        with self._lock:
            self._faults = deque(faults)
            self.default = default
            self.arrivals = []

    def arrivals_for(self, predicate: Callable[[Arrival], bool] = lambda a: True) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if predicate(a)]

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        with self._lock:
            fault = self._path_fault(handler)
            if fault is None:
                fault = self._faults.popleft() if self._faults else self.default
            self.arrivals.append(
                Arrival(handler.command, handler.path, time.monotonic(), _fault_name(fault))
            )
        if isinstance(fault, Status):
            send(handler, fault.code, outcome(f"injected {fault.code}"), fault.headers)
        elif isinstance(fault, Stall):
            time.sleep(fault.seconds)
            reset(handler)
        elif fault == RESET:
            reset(handler)
        else:
            status, headers, data = self._forward(handler, body)
            if isinstance(fault, Rewrite):
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    pass
                else:
                    data = orjson.dumps(fault.change(parsed))
            if fault == RESET_MID_BODY:
                handler.send_response(status)
                for name, value in headers:
                    handler.send_header(name, value)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data[: len(data) // 2])
                handler.wfile.flush()
                time.sleep(0.05)  # let the client start reading the body
                reset(handler)
            else:
                passed = {k: v for k, v in headers if k.lower() != "content-type"}
                content_type = next(
                    (v for k, v in headers if k.lower() == "content-type"), "application/fhir+json"
                )
                send(handler, status, data, passed, content_type=content_type)

    def _path_fault(self, handler: BaseHTTPRequestHandler) -> Fault | None:
        for rule in self._path_faults:
            fragments, fault, times, method = rule
            if (
                times > 0
                and handler.command == method
                and all(f in handler.path for f in fragments)
            ):
                rule[2] = times - 1
                return fault
        return None

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=30)
        try:
            headers = {
                k: v
                for k, v in handler.headers.items()
                if k.lower() not in ("host", "connection", "content-length")
            }
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            kept = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower()
                not in ("content-length", "transfer-encoding", "connection", "date", "server")
            ]
            status = response.status
        finally:
            conn.close()
        data = data.replace(self.upstream.encode(), self.base_url.encode())
        kept = [(k, v.replace(self.upstream, self.base_url)) for k, v in kept]
        return status, kept, data


def _fault_name(fault: Fault) -> str:
    if isinstance(fault, Status):
        return str(fault.code)
    if isinstance(fault, Stall):
        return f"stall {fault.seconds:g}s"
    if isinstance(fault, Rewrite):
        return fault.name
    return fault


class ConnectionCut:
    """The HTTP layer loses the server after N write batches: the next write, and every request
    after it, fails with a connection error before it is sent, as when the server or the network
    goes away mid-write (reads before that write pass). A write batch ends with its Provenance
    (one per batch, `writeback.provenance`), so "after N batches" is "after N Provenance creates
    were answered". Installed by the `cut_connection` fixture on `requests`' HTTPAdapter, so it
    reaches the clients a refresh builds for itself; nothing in fhirpanel carries a test hook."""

    def __init__(self) -> None:
        self.after: int | None = None
        self.batches = 0
        self.cut = False
        self.refused: list[str] = []

    def arm(self, after_batches: int) -> None:
        self.after, self.batches, self.cut, self.refused = after_batches, 0, False, []

    def disarm(self) -> None:
        self.after, self.cut = None, False

    def send(
        self, real: Callable[..., Any], adapter: Any, request: Any, *args: Any, **kwargs: Any
    ) -> Any:
        import requests

        if (
            self.after is not None
            and self.batches >= self.after
            and request.method in ("POST", "PUT", "PATCH", "DELETE")
        ):
            self.cut = True
        if self.cut:
            self.refused.append(f"{request.method} {request.url}")
            raise requests.ConnectionError("connection to the FHIR server lost (test cut)")
        response = real(adapter, request, *args, **kwargs)
        if (
            request.method == "POST"
            and urlsplit(request.url).path.rstrip("/").endswith("/Provenance")
            and 200 <= response.status_code < 300
        ):
            self.batches += 1
        return response
