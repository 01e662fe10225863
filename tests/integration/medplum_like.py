"""A FHIR server that writes the way Medplum's FHIR router does, for write-back tests: a loopback
proxy in front of the sandbox FHIR server (tests/conftest.py), built on `FaultProxy`.

What it copies from @medplum/fhir-router (packages/fhir-router/src/batch.ts, read for this):

- A `transaction` Bundle is run as a batch unless the project turns transactions on (`atomic`):
  each entry is sent to the sandbox on its own, and the answer is HTTP 200 with a Bundle of type
  `transaction-response` whose entries carry their own `response.status` ("201", or "412" with
  an OperationOutcome in `response.outcome`). Medplum writes the bare number; `status_text=True`
  writes "201 Created" as most servers do.
- Size limits, checked before anything is written: more than 50 update (PUT) entries is refused
  ("Transaction contains more update operations than allowed"); more than 8 entries when one is
  conditional (POST with ifNoneExist, PUT or DELETE with a search URL) is refused ("Transaction
  requires strict isolation but has too many entries"). Both HTTP 400 with Medplum's
  `badRequest()` OperationOutcome: issue code `invalid`, the reason in `details.text`. (Older
  routers check them for every `transaction`; the current one only when transactions are on;
  here they always apply, `max_updates=None` / `max_strict_entries=None` turn them off.)
- A success entry's `response.location` is `Type/id` (no version) with the resource in the
  entry, as Medplum's `buildBundleResponse()` answers.
- `atomic`: all or nothing (the sandbox runs the Bundle as one transaction); a stale If-Match
  fails the whole Bundle with 412 and Medplum's `preconditionFailed` outcome ("Precondition
  Failed"), which names no entry.

`software=("medplum", "5.2.13")` answers /metadata with Medplum's software name (Medplum's server
names itself "medplum", packages/server/src/fhir/metadata.ts). For tests on top of that:
`max_entries` (a server that caps any transaction, `too-costly`),
`strip_element_ids` (a server that keeps no element ids inside resources), per-transaction entry
faults (`script_transaction`: entry k answers 412, 500..., or answers without a status; the whole
answer as a searchset or one entry short), faults on the next write requests only
(`script_writes`: e.g. RESET_MID_BODY, a write whose answer is lost after it landed), and a
one-shot hook run just before the next transaction is processed (`before_transaction`).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import orjson

from tests.integration.faults import (
    PASS,
    RESET,
    RESET_MID_BODY,
    Arrival,
    Fault,
    FaultProxy,
    Stall,
    Status,
    _fault_name,
    outcome,
    read_body,
    reset,
    send,
)

PRECONDITION_FAILED = orjson.dumps(
    {  # @medplum/core outcomes.ts preconditionFailed
        "resourceType": "OperationOutcome",
        "id": "precondition-failed",
        "issue": [
            {"severity": "error", "code": "processing", "details": {"text": "Precondition Failed"}}
        ],
    }
)
MAX_UPDATES = 50  # packages/fhir-router/src/batch.ts: maxUpdates
MAX_STRICT_ENTRIES = 8  # packages/fhir-router/src/batch.ts: maxSerializableTransactionEntries
TOO_MANY_UPDATES = "Transaction contains more update operations than allowed"
TOO_MANY_STRICT = "Transaction requires strict isolation but has too many entries"
NO_STATUS = "no-status"  # entry fault: forward the entry, answer it without response.status
SEARCHSET = "searchset"  # answer fault: the right entries in a Bundle of type searchset
SHORT = "short"  # answer fault: the last entry left out


def bad_request(text: str, code: str = "invalid") -> bytes:
    """Medplum's badRequest() OperationOutcome."""
    return orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
        }
    )


def strip_ids(value: Any, top: bool = True) -> Any:
    """A resource without any `id` inside it (its own id kept)."""
    if isinstance(value, dict):
        return {k: strip_ids(v, False) for k, v in value.items() if top or k != "id"}
    if isinstance(value, list):
        return [strip_ids(v, False) for v in value]
    return value


@dataclass
class TransactionScript:
    """Faults for one transaction: entry index -> a status to answer instead of writing it (or
    NO_STATUS), and a fault of the whole answer (SEARCHSET, SHORT)."""

    entries: Mapping[int, int | str] = field(default_factory=dict)
    answer: str | None = None


@dataclass(frozen=True)
class TransactionSeen:
    entries: int
    updates: int
    conditional: bool  # any entry conditional (Medplum: strict isolation)
    status: int  # the HTTP status answered
    conditional_entries: int = 0  # how many entries are conditional

    @property
    def mixed(self) -> bool:
        """Conditional entries and others in one Bundle."""
        return 0 < self.conditional_entries < self.entries


class MedplumLike(FaultProxy):
    def __init__(
        self,
        upstream: str,
        *,
        atomic: bool = False,
        max_updates: int | None = MAX_UPDATES,
        max_strict_entries: int | None = MAX_STRICT_ENTRIES,
        max_entries: int | None = None,
        strip_element_ids: bool = False,
        status_text: bool = False,
        software: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(upstream)
        self.atomic = atomic
        self.max_updates = max_updates
        self.max_strict_entries = max_strict_entries
        self.max_entries = max_entries
        self.strip_element_ids = strip_element_ids
        self.status_text = status_text
        self.software = software  # (name, version) for /metadata; None: the sandbox's
        self.base_path = urlsplit(self.upstream).path.rstrip("/")
        self.transactions: list[TransactionSeen] = []
        self.before_transaction: Callable[[dict[str, Any]], None] | None = None
        self._scripts: deque[TransactionScript] = deque()
        self._write_faults: deque[Fault] = deque()
        self._mlock = threading.Lock()

    # ------------------------------------------------------------ scripting

    def script_transaction(self, *scripts: TransactionScript) -> None:
        """Faults for the next transactions, one script each, in order."""
        with self._mlock:
            self._scripts.extend(scripts)

    def script_writes(self, *faults: Fault) -> None:
        """Faults for the next write requests (POST, PUT, DELETE), reads pass untouched."""
        with self._mlock:
            self._write_faults.extend(faults)

    def reset_counts(self) -> None:
        with self._mlock:
            self.transactions = []
        self.script()  # clears the arrivals (and FaultProxy's own script)

    def writes(self) -> list[Arrival]:
        """Write requests received (a transaction counts once)."""
        return self.arrivals_for(lambda a: a.method in ("POST", "PUT", "DELETE", "PATCH"))

    # ------------------------------------------------------------ serving

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        write = handler.command in ("POST", "PUT", "DELETE", "PATCH")
        with self._mlock:
            fault: Fault = PASS
            if write and self._write_faults:
                fault = self._write_faults.popleft()
        with self._lock:
            if fault == PASS and self._faults:
                fault = self._faults.popleft()
            self.arrivals.append(
                Arrival(handler.command, handler.path, time.monotonic(), _fault_name(fault))
            )
        if isinstance(fault, Status):
            send(handler, fault.code, outcome(f"injected {fault.code}"), fault.headers)
            return
        if isinstance(fault, Stall):
            time.sleep(fault.seconds)
            reset(handler)
            return
        if fault == RESET:
            reset(handler)
            return
        status, headers, data = self._route(handler, body)
        if fault == RESET_MID_BODY:
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            time.sleep(0.05)
            reset(handler)
            return
        passed = {k: v for k, v in headers if k.lower() != "content-type"}
        content_type = next(
            (v for k, v in headers if k.lower() == "content-type"), "application/fhir+json"
        )
        send(handler, status, data, passed, content_type=content_type)

    def _route(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        path = urlsplit(handler.path).path.rstrip("/")
        if handler.command == "POST" and path == self.base_path:
            status, data = self._bundle(body)
            return status, [("Content-Type", "application/fhir+json")], data
        if handler.command in ("POST", "PUT") and body and self.strip_element_ids:
            body = orjson.dumps(strip_ids(orjson.loads(body)))
        headers = {
            k: v
            for k, v in handler.headers.items()
            if k.lower() not in ("host", "connection", "content-length")
        }
        status, kept, data = self._upstream(handler.command, handler.path, headers, body or None)
        if (
            self.software is not None
            and handler.command == "GET"
            and path == f"{self.base_path}/metadata"
            and status == 200
        ):
            statement = orjson.loads(data)
            name, version = self.software
            statement["software"] = {"name": name, "version": version}
            data = orjson.dumps(statement)
        return status, kept, data

    def _upstream(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
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
        return status, [(k, v.replace(self.upstream, self.base_url)) for k, v in kept], data

    # ------------------------------------------------------------ Bundles

    def _bundle(self, body: bytes) -> tuple[int, bytes]:
        try:
            bundle = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, bad_request("Invalid JSON")
        kind = bundle.get("type") if isinstance(bundle, dict) else None
        if kind not in ("batch", "transaction"):
            return 400, bad_request(f"Unrecognized bundle type: {kind}")
        entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
        if not entries:
            return 400, bad_request("Missing bundle entries")
        updates = sum(1 for e in entries if _method(e) == "PUT")
        strict = sum(1 for e in entries if _conditional(e))
        refusal = self._refusal(kind, entries, updates, strict > 0)
        if refusal is not None:
            self._seen(len(entries), updates, strict, 400)
            return 400, refusal
        with self._mlock:
            script = self._scripts.popleft() if self._scripts else TransactionScript()
            hook, self.before_transaction = self.before_transaction, None
        if hook is not None:
            hook(bundle)
        if kind == "transaction" and self.atomic:
            return self._atomic(bundle, entries, updates, strict, script)
        results = [self._entry(n, entry, script) for n, entry in enumerate(entries)]
        if script.answer == SHORT:
            results = results[:-1]
        answer_type = SEARCHSET if script.answer == SEARCHSET else f"{kind}-response"
        self._seen(len(entries), updates, strict, 200)
        return 200, orjson.dumps({"resourceType": "Bundle", "type": answer_type, "entry": results})

    def _refusal(
        self, kind: str, entries: list[dict[str, Any]], updates: int, conditional: bool
    ) -> bytes | None:
        if self.max_entries is not None and len(entries) > self.max_entries:
            return bad_request(
                f"Bundle has {len(entries)} entries, more than the {self.max_entries} allowed",
                code="too-costly",
            )
        if kind != "transaction":
            return None
        if self.max_updates is not None and updates > self.max_updates:
            return bad_request(TOO_MANY_UPDATES)
        if (
            conditional
            and self.max_strict_entries is not None
            and len(entries) > self.max_strict_entries
        ):
            return bad_request(TOO_MANY_STRICT)
        return None

    def _seen(self, entries: int, updates: int, strict: int, status: int) -> None:
        with self._mlock:
            self.transactions.append(TransactionSeen(entries, updates, strict > 0, status, strict))

    def _atomic(
        self,
        bundle: dict[str, Any],
        entries: list[dict[str, Any]],
        updates: int,
        strict: int,
        script: TransactionScript,
    ) -> tuple[int, bytes]:
        """Transactions turned on: all or nothing. A scripted entry failure fails the whole
        Bundle (nothing written); otherwise the sandbox runs it as one transaction."""
        failing = [s for s in script.entries.values() if isinstance(s, int) and s >= 300]
        if failing:
            self._seen(len(entries), updates, strict, failing[0])
            return failing[0], (
                PRECONDITION_FAILED
                if failing[0] == 412
                else outcome(f"entry failed with {failing[0]}", code="conflict")
            )
        if self.strip_element_ids:
            bundle = {
                **bundle,
                "entry": [
                    {**e, "resource": strip_ids(e["resource"])}
                    if isinstance(e.get("resource"), dict)
                    else e
                    for e in entries
                ],
            }
        status, _, data = self._upstream(
            "POST",
            self.base_path or "/",
            {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
            orjson.dumps(bundle),
        )
        self._seen(len(entries), updates, strict, status)
        if status == 412:  # Medplum names no entry: preconditionFailed for the whole Bundle
            return status, PRECONDITION_FAILED
        return status, data

    def _entry(
        self, index: int, entry: dict[str, Any], script: TransactionScript
    ) -> dict[str, Any]:
        """One entry run on its own, answered as Medplum's buildBundleResponse() does."""
        fault = script.entries.get(index)
        if isinstance(fault, int):
            return {
                "response": {
                    "status": self._status(fault),
                    "outcome": orjson.loads(
                        outcome(
                            f"injected {fault}",
                            code="conflict" if fault in (409, 412) else "exception",
                        )
                    ),
                }
            }
        request = entry.get("request") or {}
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        headers = {"Accept": "application/fhir+json", "Prefer": "return=representation"}
        if request.get("ifMatch"):
            headers["If-Match"] = str(request["ifMatch"])
        if request.get("ifNoneExist"):
            headers["If-None-Exist"] = str(request["ifNoneExist"])
        body = None
        resource = entry.get("resource")
        if isinstance(resource, dict) and method in ("POST", "PUT"):
            headers["Content-Type"] = "application/fhir+json"
            body = orjson.dumps(strip_ids(resource) if self.strip_element_ids else resource)
        status, _, data = self._upstream(
            method, f"{self.base_path}/{url.lstrip('/')}", headers, body
        )
        answered = orjson.loads(data) if data.strip() else None
        response: dict[str, Any] = {"status": self._status(status)}
        result: dict[str, Any] = {"response": response}
        if 200 <= status < 300 and isinstance(answered, dict):
            if answered.get("id") and answered.get("resourceType"):
                response["location"] = f"{answered['resourceType']}/{answered['id']}"
            response["outcome"] = orjson.loads(outcome("All OK", code="informational"))
            result["resource"] = answered
        elif isinstance(answered, dict):
            response["outcome"] = answered
        if fault == NO_STATUS:
            response.pop("status")
        return result

    def _status(self, code: int) -> str:
        if not self.status_text:
            return str(code)
        try:
            return f"{code} {HTTPStatus(code).phrase}"
        except ValueError:
            return str(code)


def _method(entry: Mapping[str, Any]) -> str:
    request = entry.get("request")
    return str(request.get("method", "")).upper() if isinstance(request, Mapping) else ""


def _conditional(entry: Mapping[str, Any]) -> bool:
    """Entries Medplum runs under serializable isolation: a conditional create, update or
    delete."""
    request = entry.get("request")
    if not isinstance(request, Mapping):
        return False
    method, url = _method(entry), str(request.get("url", ""))
    if method == "POST":
        return bool(request.get("ifNoneExist"))
    return method in ("PUT", "DELETE") and "?" in url
