"""The `fhirpanel` command: builds the parser from the subcommand modules (`fhirpanel.commands`),
sets up logging, dispatches, and turns errors into one line on stderr and a stable exit code
(`fhirpanel.errors.ExitCode`), mapped here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console

from fhirpanel import __version__
from fhirpanel.config import Settings
from fhirpanel.errors import ConfigError, ExitCode, FhirpanelError, one_line
from fhirpanel.vocabulary import RunStatus

log = logging.getLogger("fhirpanel")

# The long-running processes: fhirpanel logs at INFO there unless log_level says otherwise
# (Settings.log_level_for); every other command shows warnings only.
SERVICES = frozenset({"worker", "serve"})
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    # A log file or a pipe gets a wide table rather than rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 140)
    try:
        return int(args.func(args, console))
    except FhirpanelError as exc:
        log.debug("%s", type(exc).__name__, exc_info=True)
        error_line(one_line(exc))
        return exit_code_for(exc)
    except KeyboardInterrupt as exc:
        return exit_code_for(exc)
    except Exception as exc:  # a bug: one line here, the traceback at DEBUG
        log.debug("unexpected error", exc_info=True)
        error_line(
            f"unexpected {type(exc).__name__}: {one_line(exc)} (set "
            "FHIRPANEL_LOG_LEVEL=DEBUG for the traceback, and please report it)"
        )
        return exit_code_for(exc)


def error_line(message: str) -> None:
    """One line on stderr, never wrapped whatever the terminal's width."""
    stream = sys.stderr
    label = "\x1b[31merror:\x1b[0m" if stream.isatty() else "error:"
    stream.write(f"{label} {message}\n")
    stream.flush()


def exit_code_for(exc: BaseException) -> int:
    """The process's exit code for an exception that ended a command: fhirpanel's own errors
    carry theirs (ConfigError 2, SourceError 10, ..., ChangeHeld 16, the store's StoreError 17),
    Ctrl-C is 130, anything else is a bug (1)."""
    if isinstance(exc, FhirpanelError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return ExitCode.FAILURE


def exit_code_for_run(status: str, exception: BaseException | None = None) -> int:
    """The exit code for a pass that ended with a recorded `status` (`fhirpanel run`,
    `fhirpanel refresh`); a failed or abandoned one's comes from the exception that ended it."""
    if status == RunStatus.SKIPPED:
        return ExitCode.BUSY
    if status == RunStatus.HELD:
        return ExitCode.HELD
    if status in (RunStatus.FAILED, RunStatus.ABANDONED):
        return ExitCode.FAILURE if exception is None else exit_code_for(exception)
    if status == RunStatus.PARTIAL:
        return ExitCode.WRITEBACK
    return ExitCode.OK


def configure_logging(args: argparse.Namespace) -> None:
    """Logging from `log_level` (FHIRPANEL_LOG_LEVEL or the settings file): when set, for
    fhirpanel and its libraries alike; when empty, the libraries at WARNING and fhirpanel at the
    process's own default (Settings.log_level_for)."""
    try:
        settings = Settings.load(getattr(args, "config", None))
    except ConfigError:
        settings = Settings()  # the command says what is wrong when it loads them itself
    logging.basicConfig(
        level=settings.log_level or logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.setLevel(settings.log_level_for(service=args.command in SERVICES))


def build_parser() -> argparse.ArgumentParser:
    from fhirpanel.commands import (
        check_server,
        demo,
        readiness,
        refresh,
        run,
        sandbox,
        serve,
        smart,
        snapshot,
        validate,
        worker,
    )

    parser = argparse.ArgumentParser(
        prog="fhirpanel", description="FHIR-native empanelment and risk-stratified care management"
    )
    parser.add_argument("--version", action="version", version=f"fhirpanel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order `fhirpanel --help` lists them.
    for module in (run, sandbox, demo, refresh, readiness, worker, check_server, serve, smart):
        module.register(sub)
    for module in (validate, snapshot):  # the method tested on the practice's history
        module.register(sub)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
