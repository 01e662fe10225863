"""API load check: prints figures, asserts nothing.

A SQLite store holding a generated population (default 100,000 patients; filled once by a full
refresh from NDJSON without write-back and cached under bench/data/), the app served on
127.0.0.1 (by default gunicorn, as `fhirpanel serve` runs it; or werkzeug's threaded server),
and a bounded closed-loop load from loopback: C clients (threads, one `requests.Session` each),
each sending N requests to one endpoint at a time. For each endpoint: p50, p90, p99 and max latency
and requests per second. Target: p99 under 100 ms for `GET /api/panels` and
`GET /api/panels/<biggest panel>?page=1`.

The dashboard's own pages (the overview and the biggest panel's first page) are measured the
same way, each client signed in as a browser is: the sign-in form's CSRF token from
`GET /login`, then the token posted to `/login`, which sets the session cookie.

    .venv/bin/python bench/api.py [--patients 100000] [--clients 4] [--requests 200]
                                  [--server gunicorn|werkzeug] [--workers 2] [--refill]
                                  [--analyze]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import AS_OF, DATA, population_dir  # noqa: E402
from fhirpanel.config import Settings  # noqa: E402
from fhirpanel.sandbox.server import free_port  # noqa: E402
from fhirpanel.store import Store  # noqa: E402

TOKEN = "bench-read-token-0123456789"  # noqa: S105 - a throwaway token on loopback
# What `fhirpanel serve` runs (gunicorn, settings from the environment).
SERVE = (
    "from fhirpanel.api.serve import serve; from fhirpanel.config import Settings; "
    "serve(Settings.load())"
)
START_TIMEOUT = 60.0  # seconds for the server to answer /healthz
REQUEST_TIMEOUT = 30.0
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def filled_store(patients: int, seed: int, refill: bool) -> Path:
    """bench/data/api-store-<N>-s<seed>.db, filled once (a full refresh, no write-back)."""
    from fhirpanel.jobs.refresh import full_refresh

    db = DATA / f"api-store-{patients}-s{seed}.db"
    if db.is_file() and not refill:
        store = Store(f"sqlite:///{db}")  # upgrades the schema (new indexes) if needed
        try:
            if store.last_run() is not None:
                return db
        finally:
            store.close()
    source = population_dir(patients, seed)
    partial = db.with_suffix(".filling")
    for path in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        path.unlink(missing_ok=True)
    print(f"filling {db.name} from {source} (one full refresh) ...", flush=True)
    started = time.perf_counter()
    store = Store(f"sqlite:///{partial}")
    try:
        result = full_refresh(
            Settings.load(env={}), store, source=f"ndjson:{source}", as_of=AS_OF, write=False
        )
    finally:
        store.close()
    if result.status != "succeeded":
        raise SystemExit(f"filling the store failed: {result.error}")
    partial.replace(db)
    print(
        f"  filled in {time.perf_counter() - started:.0f} s: {result.counts.get('assigned')} "
        "assigned",
        flush=True,
    )
    return db


def analyzed_copy(db: Path) -> Path:
    """A copy of the store with `sqlite_stat1` filled: without statistics SQLite's planner
    picks the low-selectivity `status` index for a panel's patients."""
    import shutil
    import sqlite3

    copy = db.with_name(db.stem + "-analyzed.db")
    shutil.copyfile(db, copy)
    with sqlite3.connect(copy) as connection:
        started = time.perf_counter()
        connection.execute("ANALYZE")
        print(f"ANALYZE took {1000 * (time.perf_counter() - started):.0f} ms", flush=True)
    return copy


@contextmanager
def gunicorn_server(db: Path, workers: int) -> Iterator[str]:
    port = free_port()
    env = dict(
        os.environ,
        FHIRPANEL_DATABASE_URL=f"sqlite:///{db}",
        FHIRPANEL_API_READ_TOKENS=f"bench={TOKEN}",
        FHIRPANEL_API_ADMIN_TOKENS="",
        FHIRPANEL_API_WORKERS=str(workers),
        FHIRPANEL_API_HOST="127.0.0.1",
        FHIRPANEL_API_PORT=str(port),
        FHIRPANEL_LOG_LEVEL="WARNING",
    )
    log_path = db.with_name("api-serve.log")  # gunicorn's error log, for a failed start
    with log_path.open("w") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own code
            [sys.executable, "-c", SERVE],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process, log_path)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextmanager
def werkzeug_server(db: Path) -> Iterator[str]:
    import dataclasses

    from werkzeug.serving import make_server

    from fhirpanel.api.app import create_app

    base_settings = Settings.load(env={})
    settings = dataclasses.replace(
        base_settings,
        database_url=f"sqlite:///{db}",
        api=dataclasses.replace(base_settings.api, read_tokens=f"bench={TOKEN}"),
    )
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="bench-api", daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        wait_ready(base, None)
        yield base
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def wait_ready(
    base: str, process: subprocess.Popen[str] | None, log_path: Path | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            err = log_path.read_text()[-2000:] if log_path else ""
            raise SystemExit(f"the server exited with {process.returncode}:\n{err}")
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer {base}/healthz within {START_TIMEOUT:.0f} s")


@dataclass
class Figures:
    label: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        if not ms:
            return f"  {self.label:<44} no successful request ({self.errors} errors)"
        q = statistics.quantiles(ms, n=100, method="inclusive")
        rate = len(ms) / self.seconds if self.seconds else 0.0
        return (
            f"  {self.label:<44} p50 {q[49]:6.1f} ms  p90 {q[89]:6.1f} ms  "
            f"p99 {q[98]:6.1f} ms  max {ms[-1]:6.1f} ms  {rate:6.0f} req/s  "
            f"n={len(ms)} errors={self.errors}"
        )


def session_for(base: str, *, dashboard: bool) -> requests.Session:
    session = requests.Session()
    if dashboard:
        # As a browser signs in: the form (and its CSRF token), then the token posted.
        form = session.get(f"{base}/login", timeout=REQUEST_TIMEOUT)
        found = CSRF_FIELD.search(form.text)
        if form.status_code != 200 or found is None:
            raise SystemExit(f"dashboard sign-in form: HTTP {form.status_code}, no CSRF token")
        response = session.post(
            f"{base}/login",
            timeout=REQUEST_TIMEOUT,
            allow_redirects=False,
            data={"token": TOKEN, "csrf_token": found.group(1)},
        )
        if response.status_code != 303:
            raise SystemExit(f"dashboard sign-in failed: HTTP {response.status_code}")
    else:
        session.headers["Authorization"] = f"Bearer {TOKEN}"
    return session


def load(
    base: str,
    path: str,
    label: str,
    clients: int,
    per_client: int,
    *,
    dashboard: bool = False,
    warmup: int = 10,
) -> Figures:
    figures = Figures(label)
    lock = threading.Lock()
    sessions = [session_for(base, dashboard=dashboard) for _ in range(clients)]
    for _ in range(warmup):  # caches, connections, the first query plans
        sessions[0].get(base + path, timeout=REQUEST_TIMEOUT)

    def client(session: requests.Session) -> None:
        mine: list[float] = []
        errors = 0
        for _ in range(per_client):
            started = time.perf_counter()
            try:
                response = session.get(base + path, timeout=REQUEST_TIMEOUT)
                response.content  # noqa: B018 - read the whole body inside the timing
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - started
            if ok:
                mine.append(elapsed)
            else:
                errors += 1
        with lock:
            figures.latencies.extend(mine)
            figures.errors += errors

    threads = [
        threading.Thread(target=client, args=(s,), name=f"bench-client-{i}")
        for i, s in enumerate(sessions)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT * per_client)
    figures.seconds = time.perf_counter() - started
    for s in sessions:
        s.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per client and endpoint")
    parser.add_argument("--server", choices=("gunicorn", "werkzeug"), default="gunicorn")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--refill", action="store_true", help="rebuild the cached store")
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="serve a copy of the store with SQLite planner statistics (ANALYZE), to compare",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    db = filled_store(args.patients, args.seed, args.refill)
    if args.analyze:
        db = analyzed_copy(db)
    store = Store(f"sqlite:///{db}")
    try:
        top = max(store.clinicians(), key=lambda c: c["size"])
        clinicians = len(store.clinicians())
    finally:
        store.close()
    top_id = top["practitioner"].split("/", 1)[1]
    print(
        f"store: {db.name}, {args.patients:,} patients, {clinicians} clinicians; biggest "
        f"panel {top['practitioner']} with {top['size']:,} patients"
    )
    server = gunicorn_server(db, args.workers) if args.server == "gunicorn" else werkzeug_server(db)
    with server as base:
        print(
            f"server: {args.server}"
            f"{f' ({args.workers} workers)' if args.server == 'gunicorn' else ''} at {base}; "
            f"load: {args.clients} clients x {args.requests} requests per endpoint, "
            f"{os.cpu_count()} CPUs shared by server and clients"
        )
        runs = [
            ("/api/panels", "GET /api/panels", False),
            (f"/api/panels/{top_id}?page=1", f"GET /api/panels/{top_id}?page=1", False),
            (
                f"/api/panels/{top_id}?page=1&sort=-tier&unconfirmed=true",
                "  ... &sort=-tier&unconfirmed=true",
                False,
            ),
            ("/", "dashboard GET /", True),
            (f"/panels/{top_id}", f"dashboard GET /panels/{top_id}", True),
        ]
        for path, label, dashboard in runs:
            print(
                load(base, path, label, args.clients, args.requests, dashboard=dashboard).line(),
                flush=True,
            )


if __name__ == "__main__":
    main()
