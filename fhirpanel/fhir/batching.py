"""Searches over many values at once: patients (`patient=a,b,c`, `Patient?_id=a,b,c`) and
referenced clinicians (`Practitioner?_id=a,b,c`), the way EHRs that refuse population searches
allow them (docs/profiles.md).

Values are packed into comma lists that keep each search URL within `fhir.max_url_length` and
`fhir.patient_batch` values; a bounded number of batches (`fhir.roster_concurrency`) are in flight,
each on its own `FhirClient` (a client is not thread-safe) sharing one credential provider; the
results come out in batch order. What a server refuses teaches the rest of the read: a comma list
refused with 400 makes every later batch one value long; a 414 (URI too long) shrinks the URL
limit; a 429 that outlasts the client's own retries pauses every batch and tries again. Each batch
is a complete search of its own: `FhirClient.search` checks its `total` and its pages.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode

from fhirpanel.domain.records import Issue
from fhirpanel.errors import (
    AuthError,
    FhirHttpError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
)
from fhirpanel.fhir.client import FhirClient, RequestStats

log = logging.getLogger(__name__)

Item = dict[str, Any] | Issue
Task = Callable[[FhirClient], list[Item]]

COMMA = len(quote_plus(","))  # a comma goes on the wire as %2C
THROTTLE_TRIES = 3  # a batch still answered 429 after the client's retries: paused and sent again
URI_TOO_LONG = frozenset({414, 431})
REFUSED_LIST = frozenset({400, 422})  # what a server answers to a multi-value list it cannot take


@dataclass
class BatchPolicy:
    """How values are packed, learned during a read and kept for the rest of it."""

    max_values: int = 50  # fhir.patient_batch
    max_url: int = 4000  # fhir.max_url_length
    multi_value: bool = True  # False once the server refused a comma list
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def per_batch(self) -> int:
        return max(1, self.max_values) if self.multi_value else 1

    def refuse_lists(self, rtype: str, param: str) -> None:
        with self._lock:
            if self.multi_value:
                self.multi_value = False
                log.warning(
                    "%s?%s=a,b,...: the server refused a comma list; one value per request "
                    "for the rest of the read",
                    rtype,
                    param,
                )

    def shrink_url(self, length: int) -> None:
        """A URL of `length` was refused as too long: stay well under it from now on."""
        with self._lock:
            limit = max(256, length * 3 // 4)
            if limit < self.max_url:
                log.warning(
                    "search URLs of %d characters refused as too long; now %d", length, limit
                )
                self.max_url = limit


def url_length(base_url: str, resource_type: str, params: Sequence[tuple[str, str]]) -> int:
    """The length of `base/Type?query` as `requests` encodes it (`urlencode`, `quote_plus`)."""
    query = urlencode(list(params))
    return len(base_url.rstrip("/")) + 1 + len(resource_type) + (1 + len(query) if query else 0)


def pack(
    values: Iterable[str],
    fixed: int,
    policy: BatchPolicy,
) -> Iterator[list[str]]:
    """Values in batches of at most `policy.per_batch` whose URL (`fixed`: its length with the
    list empty) stays within `policy.max_url`; a value too long on its own goes alone. The
    policy is read as each batch is formed, so what a refusal taught applies to the next."""
    batch: list[str] = []
    length = fixed
    for value in values:
        add = len(quote_plus(value)) + (COMMA if batch else 0)
        if batch and (len(batch) >= policy.per_batch or length + add > policy.max_url):
            yield batch
            batch, length = [], fixed
            add = len(quote_plus(value))
        batch.append(value)
        length += add
    if batch:
        yield batch


class _Gate:
    """Shared by the batches of a read: a throttled one holds them all back for a while."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self) -> None:
        delay = self._until - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class BatchReader:
    """Batched searches on one server, `concurrency` requests in flight. The first client is the
    caller's (its stats receive every request sent); the others are opened as needed with the
    same settings and credential provider, and closed by `close()`."""

    def __init__(
        self,
        client: FhirClient,
        *,
        concurrency: int | None = None,
        policy: BatchPolicy | None = None,
    ) -> None:
        settings = client.settings
        self.client = client
        self.concurrency = max(1, concurrency or settings.roster_concurrency)
        self.policy = policy or BatchPolicy(
            max_values=settings.patient_batch, max_url=settings.max_url_length
        )
        self._extra: list[FhirClient] = []
        self._idle: queue.SimpleQueue[FhirClient] = queue.SimpleQueue()
        self._idle.put(client)
        self._gate = _Gate()
        self._lock = threading.Lock()
        self.id_search = True  # False once the server refused `_id` searches of a type

    # ------------------------------------------------------------ running tasks

    def run(self, tasks: Iterable[Task]) -> Iterator[Item]:
        """Each task's items, in task order, with at most `concurrency` tasks running. Tasks are
        taken from `tasks` as room frees up (so a generator may form them from what earlier
        ones taught). The first failure stops the rest and is raised."""
        if self.concurrency == 1:
            try:
                for task in tasks:
                    yield from self._with_client(task)
            finally:
                self._merge_stats()
            return
        pending: deque[Future[list[Item]]] = deque()
        executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fhirpanel-batch")
        source = iter(tasks)
        try:
            for task in source:
                pending.append(executor.submit(self._with_client, task))
                if len(pending) >= self.concurrency * 2:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)
            self._merge_stats()

    def _with_client(self, task: Task) -> list[Item]:
        client = self._take_client()
        try:
            for attempt in range(THROTTLE_TRIES + 1):
                self._gate.wait()
                try:
                    return task(client)
                except FhirHttpError as exc:
                    if exc.status != 429 or attempt == THROTTLE_TRIES:
                        raise
                    pause = client.settings.backoff_max
                    log.warning("throttled (429) after retries; pausing every batch %gs", pause)
                    self._gate.hold(pause)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._idle.put(client)

    def _take_client(self) -> FhirClient:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._extra) + 1 < self.concurrency:
                extra = FhirClient(self.client.settings, auth=self.client.auth)
                self._extra.append(extra)
                return extra
        return self._idle.get()

    def _merge_stats(self) -> None:
        """Requests the extra clients sent count on the caller's client."""
        with self._lock:
            for extra in self._extra:
                _add_stats(self.client.stats, extra.stats)
                extra.stats = RequestStats()

    def close(self) -> None:
        """Close the extra clients (between reads: none is in use). The reader stays usable."""
        self._merge_stats()
        with self._lock:
            for extra in self._extra:
                extra.close()
            self._extra.clear()
            while True:
                try:
                    self._idle.get_nowait()
                except queue.Empty:
                    break
            self._idle.put(self.client)

    # ------------------------------------------------------------ searches

    def search(
        self,
        resource_type: str,
        param: str,
        values: Iterable[str],
        params: Sequence[tuple[str, str]] = (),
    ) -> Iterator[dict[str, Any]]:
        """`Type?{params}&{param}=v1,v2,...` for every value, in batches; the resources found
        (each resource once, even if two batches return it)."""
        unique = list(dict.fromkeys(v for v in values if v))
        if not unique:
            return
        base = [*params, ("_count", str(self.client.settings.page_size))]
        fixed = url_length(self.client.base_url, resource_type, [*base, (param, "")])
        seen: set[str] = set()

        def tasks() -> Iterator[Task]:
            for batch in pack(unique, fixed, self.policy):
                yield self._search_task(resource_type, param, batch, base)

        for item in self.run(tasks()):
            if isinstance(item, dict):
                key = f"{item.get('resourceType')}/{item.get('id')}"
                if key in seen:
                    continue
                seen.add(key)
                yield item

    def _search_task(
        self, rtype: str, param: str, batch: list[str], base: list[tuple[str, str]]
    ) -> Task:
        def task(client: FhirClient) -> list[Item]:
            return list(self._search_batch(client, rtype, param, batch, base))

        return task

    def _search_batch(
        self,
        client: FhirClient,
        rtype: str,
        param: str,
        batch: list[str],
        base: list[tuple[str, str]],
    ) -> Iterator[dict[str, Any]]:
        query = [*base, (param, ",".join(batch))]
        try:
            yield from list(client.search(rtype, query))
            return
        except FhirHttpError as exc:
            if exc.status in URI_TOO_LONG and len(batch) > 1:
                self.policy.shrink_url(url_length(client.base_url, rtype, query))
            elif exc.status in REFUSED_LIST and len(batch) > 1:
                # One value alone: accepted means the list was the problem, else the search is.
                first = list(client.search(rtype, [*base, (param, batch[0])]))
                self.policy.refuse_lists(rtype, param)
                yield from first
                for value in batch[1:]:
                    yield from list(client.search(rtype, [*base, (param, value)]))
                return
            else:
                raise
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            yield from self._search_batch(client, rtype, param, part, base)

    def read_ids(self, resource_type: str, ids: Iterable[str]) -> Iterator[Item]:
        """Resources by id: `Type?_id=a,b,c` in batches, then a read of each id the searches did
        not return. One that cannot be read (404, 410, 403) is an `Issue`, not a failure; a
        server that refuses `_id` searches is read one id at a time."""
        wanted = list(dict.fromkeys(i for i in ids if i))
        found: set[str] = set()
        if self.id_search and wanted:
            try:
                for resource in self.search(resource_type, "_id", wanted):
                    rid = resource.get("id")
                    if resource.get("resourceType") == resource_type and isinstance(rid, str):
                        found.add(rid)
                    yield resource
            except (AuthError, InvalidRequestError) as exc:
                if found:
                    raise
                self.id_search = False
                log.warning(
                    "%s?_id= refused (HTTP %d): reading each %s by id",
                    resource_type,
                    exc.status,
                    resource_type,
                )
        missing = [i for i in wanted if i not in found]
        yield from self.run(self._read_task(resource_type, rid) for rid in missing)

    def _read_task(self, rtype: str, rid: str) -> Task:
        def task(client: FhirClient) -> list[Item]:
            try:
                return [client.read(rtype, rid)]
            except (NotFoundError, GoneError, AuthError) as exc:
                return [
                    Issue(
                        f"{rtype}/{rid}",
                        f"referenced but could not be read (HTTP {exc.status})",
                        "recorded",
                    )
                ]

        return task

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _add_stats(into: RequestStats, other: RequestStats) -> None:
    into.requests += other.requests
    into.retries += other.retries
    into.pages += other.pages
    into.bytes += other.bytes
    into.restarts += other.restarts
    for method, count in other.by_method.items():
        into.by_method[method] = into.by_method.get(method, 0) + count
