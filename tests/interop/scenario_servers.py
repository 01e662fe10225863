"""The servers the scenario suite (tests/interop/test_scenarios.py) runs against, and what each
one's CapabilityStatement says it cannot do.

Each entry of `SERVERS` is a name and a factory: `launch()` gives a started, empty server
process; `Handle` then loads the committed population (sandbox_fixtures/population/bundles) and
can bring it back to exactly that population after a test wrote to it (`reset()`): a cheap
server is restarted, HAPI is emptied with `$expunge` (a JVM start costs 20-60 s) and reloaded.
Adding a server is one entry here.

    sandbox         the embedded sekmet sandbox (fhirpanel.sandbox.server.SandboxServer)
    medplum         Medplum's FHIR router, transactions run as batches (Medplum's default)
    medplum_atomic  Medplum's FHIR router, transactions atomic with Medplum's size limits
    hapi            HAPI FHIR JPA server 8.x, in-memory H2 (tests/interop/hapi_server.py)
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from fhirpanel.fhir.capability import ServerCapabilities, parse_capability_statement
from tests.interop.servers import (
    MedplumServer,
    bundle_files,
    iter_as_batches,
    medplum_available,
    post_json,
)

ROOT = Path(__file__).resolve().parents[2]
POPULATION = ROOT / "sandbox_fixtures" / "population"
LOG_DIR = ROOT / "tests" / "output" / "interop"


class Process(Protocol):
    @property
    def base_url(self) -> str: ...

    def stop(self) -> None: ...


def _statement(base_url: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http(s) on loopback
        base_url + "/metadata",
        headers={"Accept": "application/fhir+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return dict(json.loads(response.read()))


def get_json(url: str, timeout: float = 60.0) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http(s) on loopback
        url,
        headers={
            "Accept": "application/fhir+json",
            "Cache-Control": "no-cache",
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return dict(json.loads(response.read()))


# --------------------------------------------------------------------------- loading


def load_population(base_url: str, as_transactions: bool) -> dict[str, int]:
    """POST the committed bundles in file order: each as the transaction it is (HAPI checks
    references on write, and two patients in one bundle link to each other, which only a
    transaction resolves) or as `batch` Bundles of at most 500 entries. Raises unless every
    entry is 2xx; returns the count of entry statuses."""
    statuses: dict[str, int] = {}
    for path in bundle_files(POPULATION):
        bundle = json.loads(path.read_text())
        parts = [bundle] if as_transactions else list(iter_as_batches(bundle, 500))
        for part in parts:
            status, answer = post_json(base_url, part, timeout=600)
            if status != 200:
                raise RuntimeError(f"{path.name}: HTTP {status}: {json.dumps(answer)[:600]}")
            for n, entry in enumerate(answer.get("entry") or []):
                code = str((entry.get("response") or {}).get("status", "none")).split()[0]
                statuses[code] = statuses.get(code, 0) + 1
                if not code.startswith("2"):
                    raise RuntimeError(f"{path.name} entry {n}: {json.dumps(entry)[:600]}")
    return statuses


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class ServerEntry:
    name: str
    describe: str
    available: Callable[[], str | None]  # why it cannot run here, or None
    launch: Callable[[Path], Process]  # a started, empty server (log file given)
    as_transactions: bool = False  # load the bundles as transactions (else batches)
    wipe: Callable[[str], None] | None = None  # empty a running server (else: restart it)
    software: Callable[[Process], str] = lambda p: ""


def _sandbox_launch(log: Path) -> Process:
    from fhirpanel.sandbox.server import SandboxServer

    server = SandboxServer()
    server.start()
    return server


def _medplum_launch(atomic: bool) -> Callable[[Path], Process]:
    def launch(log: Path) -> Process:
        return MedplumServer(atomic_transactions=atomic, log_path=log).start()

    return launch


def _hapi_available() -> str | None:
    try:
        from tests.interop.hapi_server import hapi_available
    except ImportError as exc:  # the launcher is not there yet
        return f"tests/interop/hapi_server.py cannot be imported: {exc}"
    return hapi_available()


def _hapi_launch(log: Path) -> Process:
    from tests.interop.hapi_server import HapiServer

    return HapiServer(log_path=log).start()


def _hapi_wipe(base_url: str) -> None:
    """`$expunge` everything (the launcher enables expunge): the server is empty again."""
    status, answer = post_json(
        base_url + "/$expunge",
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "expungeEverything", "valueBoolean": True}],
        },
        timeout=300,
    )
    if status != 200:
        raise RuntimeError(f"$expunge: HTTP {status}: {json.dumps(answer)[:500]}")


def _sekmet_version(_: Process) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"sekmet-fhir {version('sekmet-fhir')}"
    except PackageNotFoundError:
        return "sekmet-fhir"


SERVERS: tuple[ServerEntry, ...] = (
    ServerEntry(
        "sandbox",
        "fhirpanel's embedded sandbox (sekmet-fhir, in memory)",
        lambda: None,
        _sandbox_launch,
        software=_sekmet_version,
    ),
    ServerEntry(
        "medplum",
        "Medplum FHIR router 5.2.13, MemoryRepository; transactions run "
        "as batches (Medplum's default)",
        medplum_available,
        _medplum_launch(False),
    ),
    ServerEntry(
        "medplum_atomic",
        "Medplum FHIR router 5.2.13, MemoryRepository; atomic "
        "transactions (<= 50 updates, <= 8 conditional entries)",
        medplum_available,
        _medplum_launch(True),
    ),
    ServerEntry(
        "hapi",
        "HAPI FHIR JPA server 8.8.0, R4, in-memory H2",
        _hapi_available,
        _hapi_launch,
        as_transactions=True,
        wipe=_hapi_wipe,
    ),
)
SERVER_NAMES = tuple(entry.name for entry in SERVERS)


def entry(name: str) -> ServerEntry:
    return next(e for e in SERVERS if e.name == name)


# --------------------------------------------------------------------------- a running server


@dataclass
class Handle:
    """One server for the session, loaded with the committed population. `dirty` is set by a
    test that writes; `clean()` brings the population back (and nothing else) before the next
    test uses it."""

    entry: ServerEntry
    process: Process | None = None
    startup_seconds: float = 0.0
    load_seconds: float = 0.0
    load_statuses: dict[str, int] = field(default_factory=dict)
    dirty: bool = True
    statement: dict[str, Any] = field(default_factory=dict)
    caps: ServerCapabilities | None = None
    restarts: int = 0
    cache: dict[str, Any] = field(default_factory=dict)  # what tests computed from this load

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def base_url(self) -> str:
        assert self.process is not None
        return self.process.base_url.rstrip("/")

    def _start(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        self.process = self.entry.launch(LOG_DIR / f"{self.name}.log")
        self.startup_seconds = round(time.monotonic() - began, 2)
        self.statement = _statement(self.base_url)
        self.caps = parse_capability_statement(self.statement)

    def start(self) -> Handle:
        """Started (not necessarily loaded): its CapabilityStatement is known."""
        if self.process is None:
            self._start()
            self.dirty = True
        return self

    def clean(self) -> Handle:
        """The committed population and nothing else on the server."""
        if not self.dirty:
            return self
        if self.process is None:
            self._start()
        elif self.restarts == 0 and not self.load_statuses:
            pass  # started by start(), never loaded
        elif self.entry.wipe is not None:
            self.entry.wipe(self.base_url)
        else:
            self.process.stop()
            self.process = None
            self._start()
            self.restarts += 1
        self.cache.clear()
        began = time.monotonic()
        self.load_statuses = load_population(self.base_url, self.entry.as_transactions)
        self.load_seconds = round(time.monotonic() - began, 2)
        self.dirty = False
        return self

    def rss_mib(self) -> float | None:
        rss = getattr(self.process, "rss_kb", None)
        if rss is None:  # the sandbox runs in this process: not measured apart
            return None
        kb = rss()
        return round(kb / 1024, 1) if kb else None

    def software(self) -> str:
        soft = self.statement.get("software") or {}
        named = " ".join(str(soft.get(k, "")) for k in ("name", "version")).strip()
        if named or self.process is None:
            return named
        return self.entry.software(self.process)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.stop()
            self.process = None

    # ------------------------------------------------------------ capabilities

    def _resource_entry(self, rtype: str) -> dict[str, Any] | None:
        for rest in self.statement.get("rest") or ():
            for res in rest.get("resource") or ():
                if res.get("type") == rtype:
                    return dict(res)
        return None

    def lacks_rest_hook(self) -> str | None:
        """Why the worker's rest-hook Subscription cannot work here, quoted from the
        CapabilityStatement, or None when it declares Subscription create."""
        assert self.caps is not None
        if self.caps.subscriptions_rest_hook:
            return None
        res = self._resource_entry("Subscription")
        if res is None:
            return "CapabilityStatement lists no Subscription resource"
        codes = [i.get("code") for i in res.get("interaction") or ()]
        doc = res.get("documentation")
        return f"CapabilityStatement: Subscription interactions {codes} (no create)" + (
            f"; documentation: {doc!r}" if doc else ""
        )

    def lacks_export(self) -> str | None:
        """Why Bulk Data `$export` is not available, from the CapabilityStatement."""
        assert self.caps is not None
        if self.caps.export.any:
            return None
        ops = sorted(
            {
                str(op.get("name"))
                for rest in self.statement.get("rest") or ()
                for op in rest.get("operation") or ()
            }
        )
        return f"CapabilityStatement declares no $export operation (system operations: {ops})"


def next_page_fragment(base_url: str) -> str:
    """What this server's `next` links carry that the first request did not (`_getpages=`,
    `_offset=`, ...): the FaultProxy path fragment for a page after the first."""
    bundle = get_json(f"{base_url}/Encounter?_count=5")
    link = next((x["url"] for x in bundle.get("link") or () if x.get("relation") == "next"), None)
    if link is None:
        raise RuntimeError(f"{base_url}: a search of 5 Encounters gave no next link")
    keys = [
        k
        for k, _ in parse_qsl(urlsplit(link).query, keep_blank_values=True)
        if k not in ("_count",)
    ]
    return f"{keys[0]}=" if keys else urlsplit(link).path.rsplit("/", 1)[-1]


@contextlib.contextmanager
def session_handles() -> Iterator[dict[str, Handle]]:
    """Handles made on first use; every one stopped (by its own process) at the end."""
    handles: dict[str, Handle] = {}
    try:
        yield handles
    finally:
        for handle in handles.values():
            handle.stop()
