"""The `fhirpanel` command: run, generate, sandbox, demo.

Errors end the process with a one-line message and a stable exit code from `fhirpanel.errors`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import requests
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fhirpanel import __version__
from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError, ExitCode, FhirpanelError, SourceError
from fhirpanel.fhir.source import FhirSource, ServerSource, source_from_spec

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
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhirpanel", description="FHIR-native empanelment and risk-stratified care management")
    parser.add_argument("--version", action="version", version=f"fhirpanel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one full pass: read, attribute, score risk, size panels")
    run.add_argument("--source", required=True,
                     help="a FHIR base URL (http://...) or ndjson:DIRECTORY of Bulk Data files")
    run.add_argument("--as-of", type=_as_of, default=None,
                     help="the as-of date (YYYY-MM-DD); default today")
    run.add_argument("--config", help="a fhirpanel.toml settings file")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=True,
                      help="compute and report only (default)")
    mode.add_argument("--write", action="store_true",
                      help="write CareTeam/CarePlan back to the FHIR server")
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
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the sandbox server running after the run")
    demo.set_defaults(func=cmd_demo)
    return parser


def _as_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


# ---------------------------------------------------------------- run


def open_source(spec: str, settings: Settings) -> FhirSource:
    def client_factory(base_url: str) -> object:
        from fhirpanel.fhir.client import FhirClient

        return FhirClient(settings.with_fhir(base_url=base_url).fhir)

    return source_from_spec(spec, client_factory)


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
    from fhirpanel.report import build_report, render_summary, write_report
    from fhirpanel.run import run_full

    settings = Settings.load(args.config)
    as_of = args.as_of or date.today()
    source = open_source(args.source, settings)
    show = not args.quiet and console.is_terminal
    with reading_progress(console, show) as progress:
        outcome = run_full(settings, source, as_of, progress=progress)  # type: ignore[arg-type]
    writeback = None
    if isinstance(source, ServerSource):
        from fhirpanel.writeback import WritebackTables, write_back

        tables = WritebackTables.load(settings.writeback, settings.mappings_path,
                                      tiers=settings.risk.tiers)
        writeback = write_back(outcome, source.client, settings.writeback,
                               dry_run=not args.write, tables=tables)
    elif args.write:
        raise ConfigError("--write needs a FHIR server source (http://...), not NDJSON")
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
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    workdir = Path("var/demo")
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "sandbox.db"
    report = workdir / "report.json"
    console.print("[bold]Starting the local sandbox FHIR server[/bold] "
                  "(sekmet, 127.0.0.1, seeded with the committed 300-patient population)")
    with sandbox_process(db) as base:
        console.print(f"Sandbox FHIR base: {base}")
        run_args = ["run", "--source", base, "--as-of", DEMO_AS_OF, "--write",
                    "--report", str(report)]
        code = main(run_args)
        if code != ExitCode.OK:
            return code
        if args.keep_running:
            console.print("Sandbox still running; press Ctrl-C to stop it.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
