"""`fhirpanel demo`: the main job on the embedded default. A local sandbox FHIR server seeded with
the committed population, one full `fhirpanel run --write` against it, then (unless --no-serve)
the worker and the API over a fresh demo store until Ctrl-C or SIGTERM. Every process it starts
listens on 127.0.0.1 only and is stopped by its pid (fhirpanel.supervisor)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from fhirpanel.commands.common import DEMO_AS_OF
from fhirpanel.errors import ExitCode
from fhirpanel.sandbox.server import LOOPBACK, free_port
from fhirpanel.supervisor import Supervisor, answers, start_sandbox, supervised
from fhirpanel.vocabulary import COMPLETED_STATUSES, RunKind


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the main job on the embedded default: a local "
        "sandbox seeded with the committed population, "
        "one full run",
    )
    demo.add_argument(
        "--no-serve",
        action="store_true",
        help="stop after the run (default: then serve the worker, the API and "
        "the dashboard until Ctrl-C)",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from fhirpanel.cli import main

    workdir = Path("var/demo")
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "sandbox.db"
    report = workdir / "report.json"
    console.print(
        "[bold]Starting the local sandbox FHIR server[/bold] "
        "(sekmet, 127.0.0.1, seeded with the committed 300-patient population)"
    )
    with supervised() as supervisor:
        base = start_sandbox(supervisor, db)
        console.print(f"Sandbox FHIR base: {base}")
        # The demo's own store holds the write lock (serve_demo starts it afresh after).
        run_args = [
            "run",
            "--source",
            base,
            "--as-of",
            DEMO_AS_OF,
            "--write",
            "--report",
            str(report),
            "--database",
            f"sqlite:///{(workdir / 'fhirpanel.db').resolve()}",
        ]
        code = main(run_args)
        if code != ExitCode.OK or args.no_serve:
            return code
        return serve_demo(supervisor, base, workdir, console)


def serve_demo(supervisor: Supervisor, base: str, workdir: Path, console: Console) -> int:
    """The worker and the API on 127.0.0.1 over a fresh demo store, until Ctrl-C or SIGTERM
    (the supervisor stops them by their process ids)."""
    state = workdir / "fhirpanel.db"
    for stale in workdir.glob("fhirpanel.db*"):  # each demo starts from an empty store
        stale.unlink()
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        "FHIRPANEL_FHIR_BASE_URL": base,
        "FHIRPANEL_DATABASE_URL": f"sqlite:///{state.resolve()}",
        "FHIRPANEL_SCHEDULER_AS_OF": DEMO_AS_OF,
        "FHIRPANEL_SCHEDULER_INCREMENTAL_MINUTES": "1",
        "FHIRPANEL_API_ADMIN_TOKENS": f"demo={token}",
        "FHIRPANEL_API_HOST": LOOPBACK,
        "FHIRPANEL_API_PORT": str(port),
        "FHIRPANEL_API_WORKERS": "2",
    }
    try:
        console.print(
            "[bold]Starting the worker[/bold] (first full refresh into the store, "
            "then an incremental pass every minute and on every new Encounter)"
        )
        supervisor.start(["worker"], env=env, log_path=workdir / "worker.log")
        supervisor.wait_until(lambda: _store_ready(state), "the worker's first refresh", 120)
        console.print("[bold]Starting the API and dashboard[/bold]")
        supervisor.start(["serve"], env=env, log_path=workdir / "api.log")
        url = f"http://{LOOPBACK}:{port}"
        supervisor.wait_until(lambda: answers(f"{url}/healthz"), "the API", 60)
        link = _login_link(state)
        console.print()
        console.print(f"Dashboard:  [bold]{url}{link}[/bold]", soft_wrap=True)
        console.print(
            "            (a sign-in link: it works once, within the hour; after "
            "that, sign in with the admin token)"
        )
        console.print(f"API:        {url}/api/panels   (Authorization: Bearer {token})")
        console.print(f"OpenAPI:    {url}/openapi.json")
        console.print(f"Admin token: {token}")
        console.print(
            f"Logs in {workdir}/worker.log and {workdir}/api.log. Press Ctrl-C to stop everything."
        )
        sys.stdout.flush()
        failed = supervisor.watch()
        console.print(
            f"[red]a demo process stopped unexpectedly (exit "
            f"{failed.returncode}); see the logs in {workdir}[/red]"
        )
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        console.print("Stopping the API, the worker and the sandbox.")
        return ExitCode.OK


def _login_link(state: Path) -> str:
    """A single-use sign-in link (valid for an hour) made in the demo's store: the token itself
    never goes into an address."""
    from fhirpanel.store import Store
    from fhirpanel.store.sessions import issue_login_link

    store = Store(f"sqlite:///{state.resolve()}")
    try:
        return issue_login_link(store, "demo", ttl_seconds=3600)
    finally:
        store.close()


def _store_ready(path: Path) -> bool:
    """The worker's first full refresh is recorded as completed in the demo's store."""
    if not path.is_file():
        return False
    from fhirpanel.store import Store

    store = Store(f"sqlite:///{path.resolve()}", upgrade=False)
    try:
        return store.last_run(kind=RunKind.FULL, statuses=COMPLETED_STATUSES) is not None
    except Exception:  # the worker is still creating the schema
        return False
    finally:
        store.close()
