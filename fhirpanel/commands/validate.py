"""`fhirpanel validate`: the risk method tested on the practice's own history (docs/methods.md
s.8.1). Scores every patient as of 12 months before `--as-of` and compares with their emergency
visits and inpatient stays of the following 12 months: a table here, the JSON and the
calibration plot (SVG, beside the JSON) with `--output`, and the result kept in the store for
the dashboard's Validation page and `/api/validation`."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fhirpanel.commands.common import DEMO_AS_OF, DEMO_FIXTURES, as_of, load_settings
from fhirpanel.errors import ExitCode

SOURCE_HELP = (
    "a FHIR base URL (http://...), ndjson:DIRECTORY or bulk:BASE, as for `fhirpanel run` "
    "(default: the committed demo population, as of its date)"
)


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "validate",
        help="test the risk metrics on the practice's history: scored a year back, "
        "against the next year's ED visits and inpatient stays",
    )
    cmd.add_argument("--source", default=None, help=SOURCE_HELP)
    cmd.add_argument(
        "--as-of",
        type=as_of,
        default=None,
        help="the end of the outcome year (YYYY-MM-DD); patients are scored 12 months earlier "
        "(default: today, or the demo population's date without --source)",
    )
    cmd.add_argument("--config", help="a fhirpanel.toml settings file")
    cmd.add_argument("--database", help="the store to keep the result in (default: settings)")
    cmd.add_argument(
        "--output", type=Path, help="write the JSON here, and the plot beside it (.svg)"
    )
    cmd.add_argument("--no-store", action="store_true", help="do not keep the result in the store")
    cmd.set_defaults(func=cmd_validate)


def default_source(spec: str | None, day: date | None) -> tuple[str, date]:
    """`--source` and `--as-of` with their defaults: the demo population on its own date."""
    if spec is None:
        return f"ndjson:{DEMO_FIXTURES}", day or date.fromisoformat(DEMO_AS_OF)
    return spec, day or date.today()


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.service.validation import run_validation, store_validation

    settings = load_settings(args.config, database=args.database)
    spec, day = default_source(args.source, args.as_of)
    validation = run_validation(settings, spec, day)
    data = validation.as_dict()
    render_table(data, console)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        plot = args.output.with_suffix(".svg")
        plot.write_text(validation.svg)
        console.print(f"Validation written to {args.output} and {plot}")
    if not args.no_store:
        stored = store_validation(settings, validation)
        console.print(f"Kept in the store as validation {stored}")
    return ExitCode.OK


def render_table(data: dict[str, Any], console: Console) -> None:
    capture = data["tier_capture"]
    console.print(
        f"Scored as of {data['baseline']}; outcome: any ED visit or inpatient stay in the "
        f"12 months to {data['as_of']}. {data['patients']:,} patients, "
        f"{data['with_outcome']:,} with the outcome ({_pct(data['outcome_rate'])}); "
        f"{data['ed_visits']:,} ED visits, {data['inpatient_stays']:,} inpatient stays."
    )
    table = Table(title="c-statistic and observed rate by decile (1 = lowest scores)")
    table.add_column("Metric")
    table.add_column("Patients", justify="right")
    table.add_column("c-statistic", justify="right")
    for decile in range(1, 11):
        table.add_column(f"D{decile}", justify="right")
    for metric in data["metrics"]:
        rates = {d["decile"]: d["observed_rate"] for d in metric["deciles"]}
        c = metric["c_statistic"]
        table.add_row(
            metric["label"],
            f"{metric['patients']:,}",
            "n/a" if c is None else f"{c:.3f}",
            *(_pct(rates.get(d)) for d in range(1, 11)),
        )
    console.print(table)
    console.print(
        f"Tiers 3-4: {_pct(capture['patient_share'])} of patients "
        f"({capture['high_tier_patients']:,}), {_pct(capture['event_share'])} of next-year "
        f"ED visits and inpatient stays ({capture['high_tier_events']:,} of {capture['events']:,})"
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"
