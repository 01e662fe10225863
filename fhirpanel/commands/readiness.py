"""`fhirpanel readiness`: the practice's readiness measures and each panel's review state, from
the state store (the same figures as `GET /api/readiness`; docs/methods.md s.3.8)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from fhirpanel.commands.common import load_settings
from fhirpanel.errors import ExitCode


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "readiness",
        help="share of patients assigned and confirmed, and each panel's last review",
    )
    cmd.add_argument("--config", help="a fhirpanel.toml settings file")
    cmd.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.set_defaults(func=cmd_readiness)


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.1f}%"


def cmd_readiness(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from fhirpanel.service.practice import PracticeService, readiness_dict
    from fhirpanel.service.review import ReviewService
    from fhirpanel.store import Store
    from fhirpanel.tables import Tables

    settings = load_settings(args.config, database=args.database)
    tables = Tables.load(settings)
    store = Store(settings.database)
    try:
        # Reads only: the review service is there for the shape, never asked for a refresh.
        review = ReviewService.over(store, lambda kind, by: None, "cli")
        service = PracticeService(
            store, review, settings, tables.method.capacities.placement, tables.teams
        )
        measures, rows = service.readiness()
        report = readiness_dict(measures, rows, service.review_months)
    finally:
        store.close()
    if args.json:
        console.print_json(data=report)
        return ExitCode.OK
    console.print(
        f"Active patients assigned: {_pct(report['share_assigned'])} "
        f"({report['assigned']:,} of {report['active_patients']:,})"
    )
    console.print(
        f"Confirmed by clinician: {_pct(report['share_confirmed_by_clinician'])}; "
        f"by patient: {_pct(report['share_confirmed_by_patient'])} (of assigned patients)"
    )
    console.print(
        f"Panels due for review: {report['panels_due']} of {report['panels']} "
        f"({report['panels_overdue']} overdue, {report['panels_never_reviewed']} never reviewed; "
        f"every {report['panel_review_months']} months)"
    )
    table = Table(title="Panel reviews")
    for column in ("clinician", "patients", "last reviewed", "due", "state"):
        table.add_column(column)
    for r in report["reviews"]:
        table.add_row(
            r["practitioner"],
            str(r["size"]),
            r["last_reviewed"] or "never",
            r["due_on"] or "now",
            r["state"],
        )
    console.print(table)
    return ExitCode.OK
