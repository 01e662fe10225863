"""`fhirpanel run`: one full pass (fhirpanel.service.passes), its summary on the terminal and
its JSON report."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fhirpanel.cli import exit_code_for_run
from fhirpanel.commands.common import ROSTER_HELP, as_of, load_settings
from fhirpanel.ingest import Progress as ReadProgress


def register(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run", help="one full pass: read, attribute, score risk, size panels"
    )
    run.add_argument(
        "--source",
        required=True,
        help="a FHIR base URL (http://...), ndjson:DIRECTORY of Bulk Data files, "
        "or bulk:BASE[/Group/ID] for a Bulk Data $export",
    )
    run.add_argument(
        "--as-of", type=as_of, default=None, help="the as-of date (YYYY-MM-DD); default today"
    )
    run.add_argument("--config", help="a fhirpanel.toml settings file")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", default=True, help="compute and report only (default)"
    )
    mode.add_argument(
        "--write", action="store_true", help="write CareTeam/CarePlan back to the FHIR server"
    )
    run.add_argument(
        "--accept-change",
        action="store_true",
        help="with --write: let through a pass that would change more than "
        "[safety] allows (read the held run's figures first)",
    )
    run.add_argument(
        "--database",
        help="with --write: the store whose lock keeps one writer at a time (default: settings)",
    )
    run.add_argument("--roster", help=ROSTER_HELP)
    run.add_argument("--report", type=Path, help="write the JSON report to this file")
    run.add_argument("--quiet", action="store_true", help="no progress or summary on the terminal")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.report import render_summary, write_report
    from fhirpanel.service.passes import PassOptions, run_pass

    settings = load_settings(args.config, database=args.database, roster=args.roster)
    show = not args.quiet and console.is_terminal

    def reading() -> contextlib.AbstractContextManager[ReadProgress | None]:
        return reading_progress(console, show)

    result = run_pass(
        settings,
        args.source,
        args.as_of or date.today(),
        PassOptions(write=args.write, accept_change=args.accept_change),
        reading,
    )
    if args.report:
        write_report(result.report, args.report)
    if not args.quiet:
        render_summary(result.report, result.outcome.source, console)
        for line in result.writeback.lines() if result.writeback else []:
            console.print(line)
        if args.report:
            console.print(f"Report written to {args.report}")
    return exit_code_for_run(result.status)


@contextlib.contextmanager
def reading_progress(console: Console, enabled: bool) -> Iterator[ReadProgress | None]:
    """A spinner per resource type while the source is read, gone when reading ends."""
    if not enabled:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("reading {task.description}"),
        TextColumn("{task.completed:>9,} resources"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(rtype: str, count: int) -> None:
            if rtype not in tasks:
                tasks[rtype] = bar.add_task(rtype, total=None)
            bar.update(tasks[rtype], completed=count)

        yield update
