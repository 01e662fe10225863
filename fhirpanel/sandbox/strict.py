"""An EHR-like front for the sandbox (`fhirpanel sandbox --strict-ehr`): population searches are
refused the way Epic and Oracle Health refuse them (docs/profiles.md), and every search is counted.

An ASGI middleware in front of sekmet. With `StrictRules.enabled`, a search must name what it is
about, else it gets 403 with an OperationOutcome (`forbidden`): Patient needs `_id`, `identifier`
(with a value), `_has:Group:member:_id`, or `family` with `birthdate` (Epic's minimum); Practitioner
and Organization need `_id`; PractitionerRole `_id` or `practitioner`; clinical types `patient`,
`subject` or `_id`; the types fhirpanel writes may also be searched by `identifier` or `target`.
Type and system `_history` and system or Patient-level `$export` are refused too (`not-supported`);
Group reads and Group `$export` are served. Without `enabled` nothing is refused, only counted;
`only` limits the refusals to some types (a server that lists patients but not clinicians).

Test knobs, all off by default: `multi_value = False` answers 400 to a comma list in a read
type's `_id`, `patient`, `subject`, `identifier` or `practitioner` (a server without multi-value
search); `throttle_at` answers 429 with `Retry-After` to those request numbers; a positive
`group_member_limit` cuts Group reads to that many members and sets `quantity` (a server that
pages large Groups). The counts are on `StrictStats` and at `GET {base}/$stats` (loopback only).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_TYPES = frozenset(
    {"Patient", "Encounter", "Condition", "Practitioner", "PractitionerRole", "Organization"}
)
WRITE_TYPES = frozenset({"CareTeam", "CarePlan", "RiskAssessment", "Provenance"})
LIST_PARAMS = frozenset({"_id", "patient", "subject", "identifier", "practitioner"})
# Result and paging parameters: they narrow nothing.
CONTROL = frozenset(
    {
        "_count",
        "_offset",
        "_sort",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_total",
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
    }
)
REFUSAL = "population search is not allowed"


@dataclass
class StrictRules:
    """What the front refuses; mutable, so a test can change it between reads."""

    enabled: bool = False
    only: frozenset[str] | None = None  # refuse population searches of these types only
    multi_value: bool = True
    throttle_at: frozenset[int] = frozenset()
    retry_after: int = 1
    group_member_limit: int = 0


@dataclass
class StrictStats:
    """Counts since the server started (or `reset()`). `population_searches` counts searches
    that named nothing they are about, refused or not."""

    requests: int = 0
    searches: int = 0
    population_searches: int = 0
    refused: int = 0
    list_refused: int = 0
    throttled: int = 0
    searches_by_type: dict[str, int] = field(default_factory=dict)
    population_by_type: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "searches": self.searches,
                "population_searches": self.population_searches,
                "refused": self.refused,
                "list_refused": self.list_refused,
                "throttled": self.throttled,
                "searches_by_type": dict(sorted(self.searches_by_type.items())),
                "population_by_type": dict(sorted(self.population_by_type.items())),
            }

    def reset(self) -> None:
        with self._lock:
            self.requests = self.searches = self.population_searches = 0
            self.refused = self.list_refused = self.throttled = 0
            self.searches_by_type = {}
            self.population_by_type = {}

    def count(self, name: str, rtype: str | None = None) -> int:
        """Add one to the counter `name` (and to its per-type table); returns the new value."""
        with self._lock:
            value: int = getattr(self, name) + 1
            setattr(self, name, value)
            by = {
                "searches": self.searches_by_type,
                "population_searches": self.population_by_type,
            }.get(name)
            if by is not None and rtype:
                by[rtype] = by.get(rtype, 0) + 1
            return value


def scoped(rtype: str, params: Sequence[tuple[str, str]]) -> bool:
    """True when a search of `rtype` names what it is about (the module's rules)."""
    names: set[str] = set()
    for name, value in params:
        base = name if name.startswith("_has:") else name.split(":", 1)[0]
        if base in CONTROL or not value.strip():
            continue
        if base == "identifier" and rtype in READ_TYPES and not value.partition("|")[2].strip():
            continue  # `identifier=system|` lists every patient carrying that system
        names.add(base)
    if rtype == "Patient":
        return (
            bool(names & {"_id", "identifier", "_has:Group:member:_id"})
            or {
                "family",
                "birthdate",
            }
            <= names
        )
    if rtype in ("Practitioner", "Organization"):
        return "_id" in names
    if rtype == "PractitionerRole":
        return bool(names & {"_id", "practitioner"})
    if rtype == "Group":
        return bool(names & {"_id", "identifier"})
    if rtype in WRITE_TYPES:
        return bool(names & {"patient", "subject", "_id", "identifier", "target"})
    return bool(names & {"patient", "subject", "_id"})


def _hint(rtype: str) -> str:
    if rtype == "Patient":
        return "add _id= or identifier= (or family= and birthdate=)"
    if rtype in ("Practitioner", "Organization"):
        return "add _id="
    if rtype == "PractitionerRole":
        return "add _id= or practitioner="
    return "add patient="


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


class StrictEhr:
    """The ASGI front (see the module docstring)."""

    def __init__(
        self,
        app: App,
        rules: StrictRules | None = None,
        stats: StrictStats | None = None,
        prefix: str = "/fhir",
    ) -> None:
        self.app = app
        self.rules = rules or StrictRules()
        self.stats = stats or StrictStats()
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope.get("type") != "http" or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        segs = [s for s in path[len(self.prefix) :].split("/") if s]
        method = str(scope.get("method", "GET")).upper()
        if segs == ["$stats"] and method == "GET":
            await _send_json(send, 200, self.stats.as_dict())
            return
        if segs and segs[0] in ("bulk-status", "bulk-files"):
            await self.app(scope, receive, send)
            return
        number = self.stats.count("requests")
        rules = self.rules
        if number in rules.throttle_at:
            self.stats.count("throttled")
            await _send_json(
                send,
                429,
                _outcome("throttled", "too many requests: try again later"),
                {"Retry-After": str(rules.retry_after)},
            )
            return
        params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if method == "POST" and len(segs) == 2 and segs[1] == "_search":
            body = await _read_body(receive)
            params += parse_qsl(body.decode("latin-1"), keep_blank_values=True)
            receive = _replay(body)
        refusal = self._judge(method, segs, params)
        if refusal is not None:
            status, outcome = refusal
            await _send_json(send, status, outcome)
            return
        if (
            rules.group_member_limit > 0
            and method == "GET"
            and len(segs) == 2
            and segs[0] == "Group"
            and not segs[1].startswith(("$", "_"))
        ):
            await self.app(scope, receive, _cut_group(send, rules.group_member_limit))
            return
        await self.app(scope, receive, send)

    def _judge(
        self, method: str, segs: list[str], params: list[tuple[str, str]]
    ) -> tuple[int, dict[str, Any]] | None:
        """(status, OperationOutcome) for a refused request; None lets it through."""
        rules = self.rules
        n = len(segs)
        if n and segs[-1] == "$export" and (n == 1 or (n == 2 and segs[0] == "Patient")):
            self.stats.count("population_searches", "$export")
            if rules.enabled:
                self.stats.count("refused")
                return 403, _outcome("not-supported", "only Group/[id]/$export is allowed")
            return None
        if (n == 1 and segs[0] == "_history") or (n == 2 and segs[1] == "_history"):
            self.stats.count("population_searches", "_history")
            if rules.enabled:
                self.stats.count("refused")
                return 403, _outcome("not-supported", "type and system history are not allowed")
            return None
        is_search = (method in ("GET", "HEAD") and n == 1 and segs[0][:1].isupper()) or (
            method == "POST" and n == 2 and segs[1] == "_search"
        )
        compartment = method in ("GET", "HEAD") and n == 3 and segs[2][:1].isupper()
        if compartment:
            self.stats.count("searches", segs[2])
            return None
        if not is_search:
            return None
        rtype = segs[0]
        self.stats.count("searches", rtype)
        if not scoped(rtype, params):
            self.stats.count("population_searches", rtype)
            if rules.enabled and (rules.only is None or rtype in rules.only):
                self.stats.count("refused")
                return 403, _outcome("forbidden", f"{REFUSAL}: {_hint(rtype)}")
        if not rules.multi_value and rtype in READ_TYPES:
            listed = [n for n, v in params if n.split(":", 1)[0] in LIST_PARAMS and "," in v]
            if listed:
                self.stats.count("list_refused")
                return 400, _outcome(
                    "not-supported", f"multiple values are not supported for {listed[0]}"
                )
        return None


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    content = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/fhir+json; charset=utf-8"),
        (b"content-length", str(len(content)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _cut_group(send: Send, limit: int) -> Send:
    """A `send` that cuts a Group's `member` list to `limit` and sets `quantity` to the whole."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        assert start is not None  # noqa: S101 - ASGI sends the start first
        if start["status"] == 200:
            body = _cut(body, limit)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _cut(body: bytes, limit: int) -> bytes:
    try:
        group = json.loads(body)
    except ValueError:
        return body
    members = group.get("member") if isinstance(group, dict) else None
    if not isinstance(members, list) or len(members) <= limit:
        return body
    group.setdefault("quantity", len(members))
    group["member"] = members[:limit]
    return json.dumps(group).encode()
