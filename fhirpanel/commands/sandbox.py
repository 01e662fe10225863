"""`fhirpanel generate` (a deterministic synthetic population) and `fhirpanel sandbox` (the local
FHIR server on 127.0.0.1, seeded with a population)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from fhirpanel.commands.common import DEMO_AS_OF, DEMO_FIXTURES, as_of
from fhirpanel.errors import ConfigError, ExitCode


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser("generate", help="write a deterministic synthetic population")
    gen.add_argument("--patients", type=int, required=True)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--as-of", type=as_of, default=None)
    gen.add_argument("--malformed-rate", type=float, default=0.01)
    gen.add_argument(
        "--utilisation",
        choices=("mild", "risk", "independent"),
        default="mild",
        help="how emergency visits and inpatient stays follow risk: a little (mild, the "
        "default), steeply (risk) or not at all (independent); for `fhirpanel validate`",
    )
    gen.set_defaults(func=cmd_generate)

    box = subparsers.add_parser("sandbox", help="start the local sandbox FHIR server on 127.0.0.1")
    box.add_argument("--port", type=int, default=0, help="default: a free port")
    box.add_argument(
        "--db",
        default="var/sandbox/sandbox.db",
        help="SQLite file for the server's store (':memory:' for none)",
    )
    box.add_argument(
        "--patients",
        type=int,
        default=None,
        help="seed with a generated population of N patients "
        "(default: the committed 300-patient population)",
    )
    box.add_argument("--seed", type=int, default=42)
    box.add_argument(
        "--from-ndjson", type=Path, default=None, help="seed from this NDJSON directory instead"
    )
    box.add_argument(
        "--strict-ehr",
        action="store_true",
        help="refuse population searches the way Epic and Oracle Health do (403), count every "
        "search at {base}/$stats, and add a roster Group of every seeded patient",
    )
    box.set_defaults(func=cmd_sandbox)


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.sandbox.generate import write_population

    if args.patients < 1:
        raise ConfigError("--patients must be at least 1")
    day = args.as_of or date.fromisoformat(DEMO_AS_OF)
    started = time.perf_counter()
    counts = write_population(
        args.out,
        args.patients,
        args.seed,
        day,
        malformed_rate=args.malformed_rate,
        utilisation=args.utilisation,
    )
    elapsed = time.perf_counter() - started
    listing = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    console.print(
        f"Wrote {listing} to {args.out} in {elapsed:.1f}s (seed {args.seed}, "
        f"as of {day.isoformat()})"
    )
    return ExitCode.OK


def cmd_sandbox(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.sandbox.server import LOOPBACK, ROSTER_GROUP_ID, free_port, serve_forever

    port = args.port or free_port()
    seed_dir: Path | None = args.from_ndjson
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if seed_dir is None and args.patients:
        from fhirpanel.sandbox.generate import write_population

        tmp = tempfile.TemporaryDirectory(prefix="fhirpanel-pop-")
        seed_dir = Path(tmp.name)
        write_population(seed_dir, args.patients, args.seed, date.fromisoformat(DEMO_AS_OF))
    elif seed_dir is None:
        seed_dir = DEMO_FIXTURES
    if args.db != ":memory:":
        Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    # The line the demo (and people) read to find the server: plain, whatever the terminal.
    sys.stdout.write(f"sandbox FHIR base: http://{LOOPBACK}:{port}/fhir\n")
    if args.strict_ehr:
        sys.stdout.write(
            f"strict EHR: population searches refused; roster Group/{ROSTER_GROUP_ID}; "
            f"counts at http://{LOOPBACK}:{port}/fhir/$stats\n"
        )
    sys.stdout.flush()
    try:
        serve_forever(port, args.db, seed_dir, strict=args.strict_ehr)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return ExitCode.OK
