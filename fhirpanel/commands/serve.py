"""`fhirpanel serve`: the API and dashboard under gunicorn (fhirpanel.api.serve)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console

from fhirpanel.commands.common import load_settings
from fhirpanel.errors import ExitCode


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser("serve", help="serve the API and dashboard with gunicorn")
    cmd.add_argument("--config", help="a fhirpanel.toml settings file")
    cmd.add_argument("--host", default=None, help="default: api.host (127.0.0.1)")
    cmd.add_argument("--port", type=int, default=None, help="default: api.port (8000)")
    cmd.add_argument(
        "--database", default=None, help="the store's SQLAlchemy URL (default: settings)"
    )
    cmd.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.api.serve import serve

    settings = load_settings(args.config, database=args.database)
    api_changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if api_changes:
        settings = dataclasses.replace(
            settings, api=dataclasses.replace(settings.api, **api_changes)
        )
    serve(settings)
    return ExitCode.OK
