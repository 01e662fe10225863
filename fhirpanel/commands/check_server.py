"""`fhirpanel check-server URL`: what a FHIR server declares that fhirpanel uses, judged
(fhirpanel.checkserver); the exit code says whether fhirpanel can work with it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from fhirpanel.config import Settings


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "check-server", help="show what a FHIR server supports that fhirpanel uses"
    )
    cmd.add_argument("url", help="the FHIR base URL, e.g. https://ehr.example.org/fhir/R4")
    cmd.add_argument("--config", help="a fhirpanel.toml settings file")
    cmd.add_argument(
        "--read-only",
        action="store_true",
        help="judge reading only (no CareTeam/CarePlan write-back)",
    )
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.set_defaults(func=cmd_check_server)


def cmd_check_server(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.checkserver import check_server, render

    settings = Settings.load(args.config)
    check = check_server(args.url, settings, read_only=args.read_only)
    if args.json:
        # Straight to the file: rich would wrap long lines.
        console.file.write(json.dumps(check.as_dict(), indent=2) + "\n")
    else:
        render(check, console)
    return check.exit_code
