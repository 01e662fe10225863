"""`fhirpanel smart-jwks`: the JWKS holding the public half of the configured SMART Backend
Services key (`fhir.smart_*`), the document to register with the EHR."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from fhirpanel.config import Settings
from fhirpanel.errors import ExitCode


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "smart-jwks",
        help="print the public key (JWKS) to register for SMART Backend Services",
        description="print the JWKS (public key) to register with the EHR for SMART Backend "
        "Services, from the fhir.smart_* settings",
    )
    cmd.add_argument("--config", help="a fhirpanel.toml settings file")
    cmd.set_defaults(func=cmd_smart_jwks)


def cmd_smart_jwks(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.fhir.smart import jwks_for_settings

    document = jwks_for_settings(Settings.load(args.config).fhir)
    # Straight to the file: rich would wrap or colour it, and it is meant to be piped.
    console.file.write(json.dumps(document, indent=2) + "\n")
    return ExitCode.OK
