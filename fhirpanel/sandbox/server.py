"""The local sandbox FHIR server: `sekmet-fhir` (a real FHIR R4 server) on a free 127.0.0.1 port.

Used by the tests (in-process, in a thread, in-memory SQLite) and by `fhirpanel sandbox` and the
demo (a subprocess with a file store). The simulator is off: nothing answers our writes but the
server itself.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from fhirpanel.sandbox.strict import StrictEhr, StrictRules, StrictStats

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# sekmet's stock search-parameter table has no CareTeam or RiskAssessment entries; write-back
# searches both by identifier and subject, so we add the standard R4 parameters we use before the
# server starts (paths per the R4 SearchParameter definitions).
EXTRA_SEARCH_PARAMS: dict[str, tuple[tuple[str, str, str, str | None], ...]] = {
    "CareTeam": (
        ("identifier", "token", "identifier", None),
        ("status", "token", "status", None),
        ("subject", "reference", "subject", None),
        ("patient", "reference", "subject", "Patient"),
        ("participant", "reference", "participant.member", None),
        ("category", "token", "category", None),
        ("date", "date", "period", None),
    ),
    "RiskAssessment": (
        ("identifier", "token", "identifier", None),
        ("status", "token", "status", None),
        ("subject", "reference", "subject", None),
        ("patient", "reference", "subject", "Patient"),
        ("method", "token", "method", None),
        ("date", "date", "occurrenceDateTime", None),
    ),
}


def add_search_parameters() -> None:
    """Register EXTRA_SEARCH_PARAMS in sekmet's table (idempotent)."""
    from sekmet.fhir.search_params import PARAMS, SearchParam

    for rtype, params in EXTRA_SEARCH_PARAMS.items():
        table = PARAMS.setdefault(rtype, {})
        for name, kind, path, target in params:
            table.setdefault(name, SearchParam(name, kind, (path,), target))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def sekmet_settings(port: int, db_path: str, data_dir: str) -> Any:
    from sekmet.config import Settings, SimulatorSettings

    return Settings(
        base_url=f"http://{LOOPBACK}:{port}/fhir",
        host=LOOPBACK,
        port=port,
        data_dir=data_dir,
        db_path=db_path,
        simulator=SimulatorSettings(enabled=False),
        log_inbound=False,  # the traffic log would hold every page we read
    )


class SandboxServer:
    """A sekmet server in a background thread. `with SandboxServer() as s: s.base_url`.

    Behind the EHR-like front of strict.py: with `strict` (True, or `StrictRules`) population
    searches are refused as Epic and Oracle Health refuse them; either way every search is
    counted in `stats`. `rules` may be changed while the server runs."""

    def __init__(
        self,
        db_path: str = ":memory:",
        port: int | None = None,
        strict: bool | StrictRules = False,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fhirpanel-sandbox-")
        self.db_path = db_path
        self.port = port or free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}/fhir"
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.ctx: Any = None
        self.rules = strict if isinstance(strict, StrictRules) else StrictRules(enabled=strict)
        self.stats = StrictStats()

    def start(self, timeout: float = 30.0) -> str:
        import uvicorn
        from sekmet.main import create_app

        add_search_parameters()
        settings = sekmet_settings(self.port, self.db_path, self._tmp.name)
        app = create_app(settings)
        self.ctx = app.state.ctx
        logging.getLogger("sekmet").setLevel(logging.WARNING)
        config = uvicorn.Config(
            StrictEhr(app, self.rules, self.stats),
            host=LOOPBACK,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sandbox-fhir", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox FHIR server did not start on port {self.port}")
            time.sleep(0.02)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.ctx is not None:
            with contextlib.suppress(Exception):
                self.ctx.store.conn.close()
        self._tmp.cleanup()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def load(self, resources: Iterable[dict[str, Any]]) -> int:
        """Store resources with their own ids, straight into the server's store (a seed, not
        client traffic: no per-resource validation, one database transaction)."""
        return load_into_store(self.ctx.store, resources)

    def load_ndjson_dir(self, directory: Path) -> int:
        return self.load(iter_ndjson_dir(directory))

    def add_group(self, group_id: str, patients: Iterable[str]) -> dict[str, Any]:
        """Store a Group of these patients (`Patient/id` or bare ids): a roster."""
        group = roster_group(group_id, patients)
        self.load([group])
        return group

    def patient_ids(self) -> list[str]:
        """Every Patient id the store holds, sorted (a seed's roster)."""
        rows = self.ctx.store.query("SELECT id FROM resources WHERE type='Patient' AND deleted=0")
        return sorted(str(r[0]) for r in rows)


ROSTER_GROUP_ID = "sandbox-roster"


def roster_group(group_id: str, patients: Iterable[str]) -> dict[str, Any]:
    """An R4 Group (person, actual) whose members are the given patients."""
    members = [
        {"entity": {"reference": p if p.startswith("Patient/") else f"Patient/{p}"}}
        for p in patients
    ]
    return {
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": True,
        "name": "fhirpanel roster",
        "quantity": len(members),
        "member": members,
    }


def load_into_store(store: Any, resources: Iterable[dict[str, Any]]) -> int:
    n = 0
    with store.transaction():
        for res in resources:
            store.update(res, origin="internal")
            n += 1
    return n


def iter_ndjson_dir(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(Path(directory).glob("*.ndjson")):
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


def serve_forever(
    port: int, db_path: str, seed_dir: Path | None = None, *, strict: bool = False
) -> None:
    """Run the sandbox in the foreground (the `fhirpanel sandbox` process) until SIGTERM/SIGINT.
    With `strict`, behind the EHR-like front (strict.py), and a seed gets a roster Group of
    every patient (`Group/sandbox-roster`)."""
    import uvicorn
    from sekmet.main import create_app

    add_search_parameters()
    data_dir = str(Path(db_path).parent) if db_path != ":memory:" else tempfile.mkdtemp()
    app = create_app(sekmet_settings(port, db_path, data_dir))
    logging.getLogger("sekmet").setLevel(logging.WARNING)
    store = app.state.ctx.store
    if seed_dir is not None:
        store.reset()
        n = load_into_store(store, iter_ndjson_dir(seed_dir))
        log.info("sandbox seeded with %d resources from %s", n, seed_dir)
        if strict:
            rows = store.query("SELECT id FROM resources WHERE type='Patient' AND deleted=0")
            load_into_store(store, [roster_group(ROSTER_GROUP_ID, sorted(r[0] for r in rows))])
    front = StrictEhr(app, StrictRules(enabled=strict))
    uvicorn.run(
        front, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="off"
    )
