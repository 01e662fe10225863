"""What several commands share: the as-of argument, settings with the command line's overrides,
and the committed demo population."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from fhirpanel.config import Settings

# A subcommand: the parsed arguments and the terminal in, the exit code out.
Command = Callable[[argparse.Namespace, Console], int]

ROOT = Path(__file__).resolve().parents[2]
DEMO_FIXTURES = ROOT / "sandbox_fixtures" / "population"
DEMO_AS_OF = "2026-11-22"  # the committed population was generated for this date


def as_of(text: str) -> date:
    """`--as-of`: a YYYY-MM-DD date, or a usage error naming the text."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def load_settings(
    config: str | None,
    *,
    database: str | None = None,
    source: str | None = None,
    roster: str | None = None,
) -> Settings:
    """The settings (`--config`, else FHIRPANEL_CONFIG, and the environment) with `--database`,
    `--roster` (fhir.roster) and, for the refresh commands, `--source` (scheduler.source) laid
    over them."""
    settings = Settings.load(config)
    changes: dict[str, Any] = {}
    if database:
        changes["database_url"] = database
    if source:
        changes["scheduler"] = dataclasses.replace(settings.scheduler, source=source)
    if roster:
        changes["fhir"] = dataclasses.replace(settings.fhir, roster=roster)
    return dataclasses.replace(settings, **changes) if changes else settings


ROSTER_HELP = (
    "read by roster: Group/ID, or a CSV file of patient ids or system|value identifiers "
    "(fhir.roster); for servers that refuse population searches"
)
