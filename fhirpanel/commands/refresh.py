"""`fhirpanel refresh` (one refresh pass into the state store) and `fhirpanel runs` (the recent
runs with their counts)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from fhirpanel.cli import error_line, exit_code_for_run
from fhirpanel.commands.common import ROSTER_HELP, as_of, load_settings
from fhirpanel.errors import ExitCode
from fhirpanel.vocabulary import RunStatus


def register(subparsers: Any) -> None:
    ref = subparsers.add_parser(
        "refresh", help="one refresh pass into the state store: incremental (default) or --full"
    )
    ref.add_argument(
        "--full", action="store_true", help="the whole pipeline, reconciled with the server"
    )
    ref.add_argument(
        "--source", default=None, help="default: scheduler.source or fhir.base_url from settings"
    )
    ref.add_argument("--roster", help=ROSTER_HELP)
    ref.add_argument("--as-of", type=as_of, default=None)
    ref.add_argument("--config", help="a fhirpanel.toml settings file")
    ref.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    ref.add_argument(
        "--no-write",
        action="store_true",
        help="compute and store only; write nothing back to the FHIR server",
    )
    ref.add_argument(
        "--accept-change",
        action="store_true",
        help="let through a pass that would change more than [safety] allows "
        "(read the held run's figures first: fhirpanel runs)",
    )
    ref.add_argument("--json", action="store_true", help="print the result as JSON")
    ref.set_defaults(func=cmd_refresh)

    runs = subparsers.add_parser("runs", help="recent refresh runs with their counts")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--config", help="a fhirpanel.toml settings file")
    runs.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    runs.set_defaults(func=cmd_runs)


def cmd_refresh(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
    from fhirpanel.store import Store

    settings = load_settings(
        args.config, database=args.database, source=args.source, roster=args.roster
    )
    store = Store(settings.database)
    refresh = full_refresh if args.full else incremental_refresh
    result = refresh(
        settings,
        store,
        trigger="cli",
        as_of=args.as_of,
        write=False if args.no_write else None,
        accept_change=args.accept_change,
    )
    if args.json:
        run = store.run(result.run_id) if result.run_id else None
        console.print_json(data=run or {"status": result.status, "error": result.error})
    else:
        console.print(
            f"{result.kind} refresh (run {result.run_id}): [bold]{result.status}"
            f"[/bold] in {result.seconds:.1f}s, {result.requests} FHIR requests",
            soft_wrap=True,
        )
        for key, value in result.counts.items():
            console.print(f"  {key}: {value}", highlight=False, soft_wrap=True)
        if result.watermark_after != result.watermark_before:
            console.print(
                f"  watermark: {result.watermark_before} -> {result.watermark_after}",
                soft_wrap=True,
            )
    store.close()
    if result.error and result.status != RunStatus.SUCCEEDED:
        error_line(result.error)
    return exit_code_for_run(result.status, result.exception)


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from fhirpanel.store import Store

    settings = load_settings(args.config, database=args.database)
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
    for column in (
        "run",
        "kind",
        "trigger",
        "started (UTC)",
        "seconds",
        "status",
        "patients",
        "written",
        "requests",
        "note",
    ):
        table.add_column(column)
    for run in runs:
        counts = run["counts"] or {}
        patients = counts.get("patients", counts.get("patients_stored", ""))
        table.add_row(
            str(run["id"]),
            run["kind"],
            run["trigger"],
            (run["started_at"] or "")[:19].replace("T", " "),
            "" if run["seconds"] is None else f"{run['seconds']:.1f}",
            run["status"],
            str(patients),
            str(counts.get("written", "")),
            str(run["requests"] or ""),
            (run["error"] or "")[:60],
        )
    console.print(table)
    return ExitCode.OK
