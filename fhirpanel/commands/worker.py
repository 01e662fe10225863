"""`fhirpanel worker`: the scheduler process (incremental refreshes every few minutes, a nightly
full refresh, Subscriptions) until stopped."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from fhirpanel.commands.common import load_settings
from fhirpanel.errors import ConfigError


def register(subparsers: Any) -> None:
    work = subparsers.add_parser(
        "worker",
        help="the scheduler process: incremental refresh "
        "every few minutes, a nightly full refresh, "
        "Subscriptions",
    )
    work.add_argument(
        "--source", default=None, help="default: scheduler.source or fhir.base_url from settings"
    )
    work.add_argument("--config", help="a fhirpanel.toml settings file")
    work.add_argument("--database", help="the store's SQLAlchemy URL (default: settings)")
    work.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.jobs.worker import run_worker

    settings = load_settings(args.config, database=args.database, source=args.source)
    if not (settings.scheduler.source or settings.fhir.base_url):
        raise ConfigError(
            "the worker needs a source: --source, scheduler.source or "
            "fhir.base_url (FHIRPANEL_FHIR_BASE_URL)"
        )
    return run_worker(settings)
