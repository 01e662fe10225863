"""The `fhirpanel` command: run, generate, sandbox, demo.

Errors end the process with a one-line message and a stable exit code from `fhirpanel.errors`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fhirpanel import __version__
from fhirpanel.config import Settings
from fhirpanel.errors import (
    ConfigError,
    ExitCode,
    FhirpanelError,
    SourceError,
    one_line,
)
from fhirpanel.fhir.source import ServerSource
from fhirpanel.run import open_source

log = logging.getLogger("fhirpanel")
ROOT = Path(__file__).resolve().parent.parent
DEMO_FIXTURES = ROOT / "sandbox_fixtures" / "population"
DEMO_AS_OF = "2026-11-22"  # the committed population was generated for this date


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FHIRPANEL_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A log file or a pipe gets a wide table rather than rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 140)
    try:
        return int(args.func(args, console))
    except FhirpanelError as exc:
        log.debug("%s", type(exc).__name__, exc_info=True)
        error_line(one_line(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line here, the traceback at DEBUG
        log.debug("unexpected error", exc_info=True)
        error_line(f"unexpected {type(exc).__name__}: {one_line(exc)} (set "
                   "FHIRPANEL_LOG_LEVEL=DEBUG for the traceback, and please report it)")
        return ExitCode.FAILURE


def error_line(message: str) -> None:
    """One line on stderr, never wrapped whatever the terminal's width."""
    stream = sys.stderr
    label = "\x1b[31merror:\x1b[0m" if stream.isatty() else "error:"
    stream.write(f"{label} {message}\n")
    stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhirpanel", description="FHIR-native empanelment and risk-stratified care management")
    parser.add_argument("--version", action="version", version=f"fhirpanel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one full pass: read, attribute, score risk, size panels")
    run.add_argument("--source", required=True,
                     help="a FHIR base URL (http://...), ndjson:DIRECTORY of Bulk Data files, "
                          "or bulk:BASE[/Group/ID] for a Bulk Data $export")
    run.add_argument("--as-of", type=_as_of, default=None,
                     help="the as-of date (YYYY-MM-DD); default today")
    run.add_argument("--config", help="a fhirpanel.toml settings file")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=True,
                      help="compute and report only (default)")
    mode.add_argument("--write", action="store_true",
                      help="write CareTeam/CarePlan back to the FHIR server")
    run.add_argument("--accept-change", action="store_true",
                     help="with --write: let through a pass that would change more than "
                          "[safety] allows (read the held run's figures first)")
    run.add_argument("--database", help="with --write: the store whose lock keeps one writer "
                                        "at a time (default: settings)")
    run.add_argument("--report", type=Path, help="write the JSON report to this file")
    run.add_argument("--quiet", action="store_true", help="no progress or summary on the terminal")
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="write a deterministic synthetic population")
    gen.add_argument("--patients", type=int, required=True)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--as-of", type=_as_of, default=None)
    gen.add_argument("--malformed-rate", type=float, default=0.01)
    gen.set_defaults(func=cmd_generate)

    box = sub.add_parser("sandbox", help="start the local sandbox FHIR server on 127.0.0.1")
    box.add_argument("--port", type=int, default=0, help="default: a free port")
    box.add_argument("--db", default="var/sandbox/sandbox.db",
                     help="SQLite file for the server's store (':memory:' for none)")
    box.add_argument("--patients", type=int, default=None,
                     help="seed with a generated population of N patients "
                          "(default: the committed 300-patient population)")
    box.add_argument("--seed", type=int, default=42)
    box.add_argument("--from-ndjson", type=Path, default=None,
                     help="seed from this NDJSON directory instead")
    box.set_defaults(func=cmd_sandbox)

    demo = sub.add_parser("demo", help="the main job on the embedded default: a local sandbox "
                                       "seeded with the committed population, one full run")
    demo.add_argument("--no-serve", action="store_true",
                      help="stop after the run (default: then serve the worker, the API and "
                           "the dashboard until Ctrl-C)")
    demo.set_defaults(func=cmd_demo)

    ref = sub.add_parser("refresh", help="one refresh pass into the state store: incremental "
                                         "(default) or --full")
    ref.add_argument("--full", action="store_true",
                     help="the whole pipeline, reconciled with the server")
    ref.add_argument("--source", default=None,
                     help="default: scheduler.source or fhir.base_url from settings")
    ref.add_argument("--as-of", type=_as_of, default=None)
    ref.add_argument("--config", help="a fhirpanel.toml settings file")
    ref.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    ref.add_argument("--no-write", action="store_true",
                     help="compute and store only; write nothing back to the FHIR server")
    ref.add_argument("--accept-change", action="store_true",
                     help="let through a pass that would change more than [safety] allows "
                          "(read the held run's figures first: fhirpanel runs)")
    ref.add_argument("--json", action="store_true", help="print the result as JSON")
    ref.set_defaults(func=cmd_refresh)

    runs = sub.add_parser("runs", help="recent refresh runs with their counts")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--config", help="a fhirpanel.toml settings file")
    runs.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    runs.set_defaults(func=cmd_runs)

    work = sub.add_parser("worker", help="the scheduler process: incremental refresh every few "
                                         "minutes, a nightly full refresh, Subscriptions")
    work.add_argument("--source", default=None,
                      help="default: scheduler.source or fhir.base_url from settings")
    work.add_argument("--config", help="a fhirpanel.toml settings file")
    work.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    work.set_defaults(func=cmd_worker)

    from fhirpanel import checkserver

    checkserver.register(sub)
    from fhirpanel.api import serve

    serve.register(sub)
    return parser


def _as_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


# ---------------------------------------------------------------- run


@contextlib.contextmanager
def reading_progress(console: Console, enabled: bool) -> Iterator[object]:
    if not enabled:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("reading {task.description}"),
                  TextColumn("{task.completed:>9,} resources"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def update(rtype: str, count: int) -> None:
            if rtype not in tasks:
                tasks[rtype] = bar.add_task(rtype, total=None)
            bar.update(tasks[rtype], completed=count)  # type: ignore[arg-type]

        yield update


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    settings = Settings.load(args.config)
    if args.database:
        settings = dataclasses.replace(settings, database_url=args.database)
    as_of = args.as_of or date.today()
    if not args.write:
        return _run_pass(args, console, settings, as_of, lease=None)
    if args.source.startswith("ndjson:"):
        raise ConfigError("--write needs a FHIR server source (http://... or bulk:...), "
                          "not NDJSON")
    from fhirpanel.jobs.refresh import leased_run
    from fhirpanel.store import Store

    # One writer at a time: the same lease as `fhirpanel refresh` and the worker.
    store = Store(settings.database)
    try:
        with leased_run(settings, store, "run", "cli", args.source, as_of) as lease:
            return _run_pass(args, console, settings, as_of, lease=lease)
    finally:
        store.close()


def _run_pass(args: argparse.Namespace, console: Console, settings: Settings, as_of: date,
              lease: Any) -> int:
    from fhirpanel.fhir.bulk import BulkSource
    from fhirpanel.report import build_report, render_summary, write_report
    from fhirpanel.run import run_full

    started = time.perf_counter()
    source = open_source(args.source, settings)
    show = not args.quiet and console.is_terminal
    with reading_progress(console, show) as progress:
        outcome = run_full(settings, source, as_of, progress=progress)  # type: ignore[arg-type]
    if isinstance(source, BulkSource):
        source.close()  # the downloaded NDJSON is read; the client stays for write-back
    writeback = None
    if isinstance(source, ServerSource | BulkSource):
        from fhirpanel.writeback import WriteBackInterrupted, WritebackTables, write_back

        tables = WritebackTables.load(settings.writeback, settings.mappings_path,
                                      tiers=settings.risk.tiers)
        guard = _write_guard(args, settings, lease) if lease is not None else None
        extra: dict[str, Any] = {}
        if lease is not None and guard is not None:
            from fhirpanel.jobs.refresh import unconfirmed_writes

            extra = {"guard": guard["guard"],
                     "unconfirmed": unconfirmed_writes(lease.store, args.source)}
        try:
            writeback = write_back(outcome, source.client, settings.writeback,
                                   dry_run=not args.write, tables=tables, **extra)
        except WriteBackInterrupted as exc:
            if lease is not None:
                _remember_unconfirmed(lease, args.source, exc.summary)
            raise
        if lease is not None:
            _remember_unconfirmed(lease, args.source, writeback)
        if lease is not None and guard is not None and guard["accepted"][0]:
            from fhirpanel.jobs.refresh import consume_acceptance

            consume_acceptance(lease.store, args.source, lease.run_id)
    elif args.write:
        raise ConfigError("--write needs a FHIR server source (http://... or bulk:...), "
                          "not NDJSON")
    if lease is not None and writeback is not None:
        failed = writeback.counts.total("failed")
        lease.finish("partial" if failed else "succeeded",
                     counts={"written": writeback.written, "writeback": writeback.counts.as_dict(),
                             "writeback_failed": failed, "issues": len(outcome.population.issues)},
                     seconds=round(time.perf_counter() - started, 3))
    report = build_report(outcome)
    if writeback is not None:
        report["writeback"] = writeback.as_report()
    if args.report:
        write_report(report, args.report)
    if not args.quiet:
        render_summary(report, outcome.source, console)
        for line in writeback.lines() if writeback else []:
            console.print(line)
        if args.report:
            console.print(f"Report written to {args.report}")
    if writeback is not None and writeback.counts.total("failed"):
        return ExitCode.WRITEBACK
    return ExitCode.OK


# ---------------------------------------------------------------- refresh, runs, worker


def _store_settings(args: argparse.Namespace) -> Settings:
    settings = Settings.load(args.config)
    changes: dict[str, Any] = {}
    if getattr(args, "database", None):
        changes["database_url"] = args.database
    if getattr(args, "source", None):
        changes["scheduler"] = dataclasses.replace(settings.scheduler, source=args.source)
    return dataclasses.replace(settings, **changes) if changes else settings


def _remember_unconfirmed(lease: Any, source: str, summary: Any) -> None:
    """Writes sent without an answer: a later run that finds them landed writes their
    Provenance (the same record the refresh jobs keep for this source)."""
    from fhirpanel.jobs.refresh import save_unconfirmed

    with lease.store.session() as s:
        save_unconfirmed(lease.store, s, source, summary, lease.run_id)


def _write_guard(args: argparse.Namespace, settings: Settings, lease: Any) -> dict[str, Any]:
    """`write_back(guard=...)` for `run --write`: the brake on ended PCP participations and
    changed assignments, checked after the CareTeams are planned and before anything is sent."""
    from fhirpanel.jobs.refresh import check_write_brake

    accepted = [False]

    def guard(ended: tuple[int, int], changed: tuple[int, int]) -> None:
        from fhirpanel.jobs import brake

        change = brake.figures(settings.safety, ended=ended, changed=changed)
        accepted[0] = check_write_brake(settings, lease.store, args.source, change,
                                        what="run --write", accept_all=args.accept_change)

    return {"guard": guard, "accepted": accepted}


def cmd_refresh(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
    from fhirpanel.store import Store

    settings = _store_settings(args)
    store = Store(settings.database)
    refresh = full_refresh if args.full else incremental_refresh
    result = refresh(settings, store, trigger="cli", as_of=args.as_of,
                     write=False if args.no_write else None,
                     accept_change=args.accept_change)
    if args.json:
        run = store.run(result.run_id) if result.run_id else None
        console.print_json(data=run or {"status": result.status, "error": result.error})
    else:
        console.print(f"{result.kind} refresh (run {result.run_id}): [bold]{result.status}"
                      f"[/bold] in {result.seconds:.1f}s, {result.requests} FHIR requests",
                      soft_wrap=True)
        for key, value in result.counts.items():
            console.print(f"  {key}: {value}", highlight=False, soft_wrap=True)
        if result.watermark_after != result.watermark_before:
            console.print(f"  watermark: {result.watermark_before} -> {result.watermark_after}",
                          soft_wrap=True)
    store.close()
    if result.error and result.status != "succeeded":
        error_line(result.error)
    if result.status == "skipped":
        return ExitCode.BUSY
    if result.status == "held":
        return ExitCode.HELD
    if result.status in ("failed", "abandoned"):
        exc = result.exception
        return exc.exit_code if isinstance(exc, FhirpanelError) else ExitCode.FAILURE
    if result.status == "partial":
        return ExitCode.WRITEBACK
    return ExitCode.OK


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from fhirpanel.store import Store

    settings = _store_settings(args)
    store = Store(settings.database)
    runs = store.runs(limit=max(1, min(args.limit, 1000)))
    store.close()
    if args.json:
        console.print_json(data=runs)
        return ExitCode.OK
    if not runs:
        console.print("No runs yet. Start one with `fhirpanel refresh --full`.")
        return ExitCode.OK
    table = Table(title="Recent runs")
    for column in ("run", "kind", "trigger", "started (UTC)", "seconds", "status", "patients",
                   "written", "requests", "note"):
        table.add_column(column)
    for run in runs:
        counts = run["counts"] or {}
        patients = counts.get("patients", counts.get("patients_stored", ""))
        table.add_row(str(run["id"]), run["kind"], run["trigger"],
                      (run["started_at"] or "")[:19].replace("T", " "),
                      "" if run["seconds"] is None else f"{run['seconds']:.1f}",
                      run["status"], str(patients), str(counts.get("written", "")),
                      str(run["requests"] or ""), (run["error"] or "")[:60])
    console.print(table)
    return ExitCode.OK


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.jobs.worker import run_worker

    settings = _store_settings(args)
    if not (settings.scheduler.source or settings.fhir.base_url):
        raise ConfigError("the worker needs a source: --source, scheduler.source or "
                          "fhir.base_url (FHIRPANEL_FHIR_BASE_URL)")
    logging.getLogger("fhirpanel").setLevel(settings.log_level)
    return run_worker(settings)


# ---------------------------------------------------------------- generate


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.sandbox.generate import write_population

    if args.patients < 1:
        raise ConfigError("--patients must be at least 1")
    as_of = args.as_of or date.fromisoformat(DEMO_AS_OF)
    started = time.perf_counter()
    counts = write_population(args.out, args.patients, args.seed, as_of,
                              malformed_rate=args.malformed_rate)
    elapsed = time.perf_counter() - started
    listing = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    console.print(f"Wrote {listing} to {args.out} in {elapsed:.1f}s (seed {args.seed}, "
                  f"as of {as_of.isoformat()})")
    return ExitCode.OK


# ---------------------------------------------------------------- sandbox


def cmd_sandbox(args: argparse.Namespace, console: Console) -> int:
    import tempfile

    from fhirpanel.sandbox.server import LOOPBACK, free_port, serve_forever

    port = args.port or free_port()
    seed_dir: Path | None = args.from_ndjson
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if seed_dir is None and args.patients:
        from fhirpanel.sandbox.generate import write_population

        tmp = tempfile.TemporaryDirectory(prefix="fhirpanel-pop-")
        seed_dir = Path(tmp.name)
        write_population(seed_dir, args.patients, args.seed, date.fromisoformat(DEMO_AS_OF))
    elif seed_dir is None:
        seed_dir = DEMO_FIXTURES
    if args.db != ":memory:":
        Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    # The line the demo (and people) read to find the server:
    print(f"sandbox FHIR base: http://{LOOPBACK}:{port}/fhir", flush=True)
    try:
        serve_forever(port, args.db, seed_dir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return ExitCode.OK


@contextlib.contextmanager
def sandbox_process(db: Path, timeout: float = 60.0) -> Iterator[str]:
    """`fhirpanel sandbox` as a child process on a free port; stopped by its pid on exit."""
    from fhirpanel.sandbox.server import LOOPBACK, free_port

    port = free_port()
    base = f"http://{LOOPBACK}:{port}/fhir"
    cmd = [sys.executable, "-m", "fhirpanel", "sandbox", "--port", str(port), "--db", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)  # noqa: S603 - our own module
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SourceError(f"sandbox server exited with code {proc.returncode}")
            try:
                if requests.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SourceError(f"sandbox server did not answer on {base} in {timeout:.0f}s")
            time.sleep(0.2)
        yield base
    finally:
        _stop(proc, grace=15)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    workdir = Path("var/demo")
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "sandbox.db"
    report = workdir / "report.json"
    console.print("[bold]Starting the local sandbox FHIR server[/bold] "
                  "(sekmet, 127.0.0.1, seeded with the committed 300-patient population)")
    with sandbox_process(db) as base:
        console.print(f"Sandbox FHIR base: {base}")
        # The demo's own store holds the write lock (serve_demo starts it afresh after).
        run_args = ["run", "--source", base, "--as-of", DEMO_AS_OF, "--write",
                    "--report", str(report),
                    "--database", f"sqlite:///{(workdir / 'fhirpanel.db').resolve()}"]
        code = main(run_args)
        if code != ExitCode.OK or args.no_serve:
            return code
        return serve_demo(base, workdir, console)
    return ExitCode.OK


def serve_demo(base: str, workdir: Path, console: Console) -> int:
    """The worker and the API on 127.0.0.1 over a fresh demo store, until Ctrl-C or SIGTERM;
    both are stopped by their process ids."""
    import secrets

    from fhirpanel.sandbox.server import LOOPBACK, free_port

    state = workdir / "fhirpanel.db"
    for stale in workdir.glob("fhirpanel.db*"):  # each demo starts from an empty store
        stale.unlink()
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {**os.environ,
           "FHIRPANEL_FHIR_BASE_URL": base,
           "FHIRPANEL_DATABASE_URL": f"sqlite:///{state.resolve()}",
           "FHIRPANEL_SCHEDULER_AS_OF": DEMO_AS_OF,
           "FHIRPANEL_SCHEDULER_INCREMENTAL_MINUTES": "1",
           "FHIRPANEL_API_ADMIN_TOKENS": f"demo={token}",
           "FHIRPANEL_API_HOST": LOOPBACK,
           "FHIRPANEL_API_PORT": str(port),
           "FHIRPANEL_API_WORKERS": "2"}
    children: list[subprocess.Popen[bytes]] = []

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        console.print("[bold]Starting the worker[/bold] (first full refresh into the store, "
                      "then an incremental pass every minute and on every new Encounter)")
        children.append(_spawn(["worker"], env, workdir / "worker.log"))
        _wait_until(lambda: _store_ready(state), children, "the worker's first refresh", 120)
        console.print("[bold]Starting the API and dashboard[/bold]")
        children.append(_spawn(["serve"], env, workdir / "api.log"))
        url = f"http://{LOOPBACK}:{port}"
        _wait_until(lambda: _answers(f"{url}/healthz"), children, "the API", 60)
        # A single-use sign-in link (valid for an hour) made in the demo's store: the token
        # itself never goes into an address.
        from fhirpanel.store import Store
        from fhirpanel.store.sessions import issue_login_link

        store = Store(f"sqlite:///{state.resolve()}")
        try:
            link = issue_login_link(store, "demo", ttl_seconds=3600)
        finally:
            store.close()
        console.print()
        console.print(f"Dashboard:  [bold]{url}{link}[/bold]", soft_wrap=True)
        console.print("            (a sign-in link: it works once, within the hour; after "
                      "that, sign in with the admin token)")
        console.print(f"API:        {url}/api/panels   (Authorization: Bearer {token})")
        console.print(f"OpenAPI:    {url}/openapi.json")
        console.print(f"Admin token: {token}")
        console.print(f"Logs in {workdir}/worker.log and {workdir}/api.log. "
                      "Press Ctrl-C to stop everything.")
        sys.stdout.flush()
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        failed = [c for c in children if c.poll() is not None]
        console.print(f"[red]a demo process stopped unexpectedly (exit "
                      f"{failed[0].returncode}); see the logs in {workdir}[/red]")
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        console.print("Stopping the API, the worker and the sandbox.")
        return ExitCode.OK
    finally:
        for child in reversed(children):
            _stop(child)
        signal.signal(signal.SIGTERM, previous)


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "fhirpanel", *args], env=env, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(child: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM by pid, then SIGKILL after `grace` seconds."""
    if child.poll() is not None:
        return
    os.kill(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)


def _wait_until(check: Any, children: list[subprocess.Popen[bytes]], what: str,
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [c for c in children if c.poll() is not None]
        if dead:
            raise SourceError(f"{what}: a demo process exited with code {dead[0].returncode}")
        if time.monotonic() > deadline:
            raise SourceError(f"{what} not ready in {timeout:.0f}s")
        time.sleep(0.5)


def _store_ready(path: Path) -> bool:
    if not path.is_file():
        return False
    from fhirpanel.store import Store

    store = Store(f"sqlite:///{path.resolve()}", upgrade=False)
    try:
        return store.last_run(kind="full", statuses=("succeeded", "partial")) is not None
    except Exception:  # the worker is still creating the schema
        return False
    finally:
        store.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
