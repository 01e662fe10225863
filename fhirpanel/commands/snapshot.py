"""`fhirpanel snapshot --month YYYY-MM`: panels, sizes and tiers frozen as of the month's last
day (docs/methods.md s.8.2), written as canonical JSON and kept in the store, one per month.

Only a closed month (its last day before today) is frozen: an open month's data is still
coming, unless `--allow-open` says a provisional snapshot is wanted (it is then neither kept
in the store nor final). The snapshot uses only data dated on or before the month's last day,
so a rerun of a closed month on the same data gives the same bytes, and data dated later does
not change it. A rerun whose result differs from the stored one (data dated within the month
arrived late, or the method changed) is refused with how it differs, unless `--replace`.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from fhirpanel.commands.common import load_settings
from fhirpanel.commands.validate import SOURCE_HELP
from fhirpanel.errors import ConfigError, ExitCode


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "snapshot", help="freeze a closed month's panels, sizes and tiers (canonical JSON)"
    )
    cmd.add_argument("--month", required=True, help="the month, YYYY-MM")
    cmd.add_argument("--source", default=None, help=SOURCE_HELP.replace(", as of its date", ""))
    cmd.add_argument("--config", help="a fhirpanel.toml settings file")
    cmd.add_argument("--database", help="the store to keep the snapshot in (default: settings)")
    cmd.add_argument(
        "--output", type=Path, default=None, help="the JSON file (default: snapshots/YYYY-MM.json)"
    )
    cmd.add_argument(
        "--replace",
        action="store_true",
        help="replace a stored snapshot of the month that differs from this one",
    )
    cmd.add_argument(
        "--allow-open",
        action="store_true",
        help="freeze a month that has not ended yet (provisional: written, not stored)",
    )
    cmd.set_defaults(func=cmd_snapshot)


def cmd_snapshot(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.commands.common import DEMO_FIXTURES
    from fhirpanel.domain.snapshot import is_closed, month_end, parse_month
    from fhirpanel.service.validation import read_snapshot, store_snapshot

    year, month = parse_month(args.month)
    label = f"{year:04d}-{month:02d}"
    closed = is_closed(year, month, date.today())
    if not closed and not args.allow_open:
        raise ConfigError(
            f"{label} has not ended yet (its last day is {month_end(year, month)}): "
            "a snapshot freezes a closed month; --allow-open makes a provisional one"
        )
    settings = load_settings(args.config, database=args.database)
    spec = args.source or f"ndjson:{DEMO_FIXTURES}"
    snapshot, described = read_snapshot(settings, spec, label, month_end(year, month))
    output: Path = args.output or Path("snapshots") / f"{label}.json"
    state = "provisional, not stored" if not closed else ""
    if closed:
        # Checked before the file is written: a refused rerun leaves the old file alone.
        state = store_snapshot(settings, snapshot, described, args.replace)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(snapshot.data)
    counts = snapshot.content["counts"]
    console.print(
        f"Snapshot of {label} (as of {snapshot.as_of}): {len(snapshot.content['panels'])} "
        f"panels, {counts.get('assigned', 0):,} assigned, {counts.get('unassigned', 0):,} "
        f"unassigned; written to {output} (sha256 {snapshot.digest[:12]}; {state})"
    )
    return ExitCode.OK
