"""The demo's supervisor: child `fhirpanel` processes (the sandbox FHIR server, the worker, the
API) on 127.0.0.1, waited for until they answer, and stopped by their process id.

Inside `supervised()`, SIGTERM ends the parent as Ctrl-C does (a KeyboardInterrupt), and on the
way out every child is stopped, newest first: SIGTERM, then SIGKILL after its grace period. Each
child runs in a session of its own, so a Ctrl-C at the terminal reaches only the supervisor,
which then stops the children in order (the API and the worker before the server they read).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from fhirpanel.errors import SourceError
from fhirpanel.sandbox.server import LOOPBACK, free_port

Child = subprocess.Popen[bytes]


def stop(child: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM by pid, then SIGKILL after `grace` seconds."""
    if child.poll() is not None:
        return
    os.kill(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)


def answers(url: str) -> bool:
    """The URL answers 200 (a health check, a FHIR /metadata)."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Supervisor:
    """The children started so far, with the grace period each gets when stopped."""

    children: list[tuple[Child, float]] = field(default_factory=list)

    def start(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        grace: float = 30,
    ) -> Child:
        """`python -m fhirpanel ARGS`; output to `log_path` (stdout and stderr), or stdout
        dropped and stderr shared with the supervisor when there is none."""
        cmd = [sys.executable, "-m", "fhirpanel", *args]
        if log_path is None:
            child = subprocess.Popen(  # noqa: S603 - our own module
                cmd,
                env=env,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        else:
            with log_path.open("wb") as log_file:
                child = subprocess.Popen(  # noqa: S603 - our own module
                    cmd,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self.children.append((child, grace))
        return child

    def exited(self) -> Child | None:
        """A child that has exited, if any."""
        return next((c for c, _ in self.children if c.poll() is not None), None)

    def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float, poll: float = 0.5
    ) -> None:
        """Until `check()` holds; SourceError when a child exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not check():
            dead = self.exited()
            if dead is not None:
                raise SourceError(f"{what}: a demo process exited with code {dead.returncode}")
            if time.monotonic() > deadline:
                raise SourceError(f"{what} not ready in {timeout:.0f}s")
            time.sleep(poll)

    def watch(self, poll: float = 0.5) -> Child:
        """Block until a child exits (Ctrl-C and SIGTERM interrupt it); return that child."""
        while True:
            dead = self.exited()
            if dead is not None:
                return dead
            time.sleep(poll)

    def stop_all(self) -> None:
        """Every child, newest first, each by its pid."""
        while self.children:
            child, grace = self.children.pop()
            stop(child, grace)


@contextlib.contextmanager
def supervised() -> Iterator[Supervisor]:
    """A supervisor whose children are all stopped on the way out, however the block ends;
    SIGTERM inside the block raises KeyboardInterrupt, as Ctrl-C does."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    supervisor = Supervisor()
    try:
        yield supervisor
    finally:
        supervisor.stop_all()
        signal.signal(signal.SIGTERM, previous)


def start_sandbox(supervisor: Supervisor, db: Path, timeout: float = 60.0) -> str:
    """`fhirpanel sandbox` on a free loopback port with its store in `db`; returns its FHIR base
    once `/metadata` answers."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}/fhir"
    proc = supervisor.start(["sandbox", "--port", str(port), "--db", str(db)], grace=15)
    deadline = time.monotonic() + timeout
    while not answers(f"{base}/metadata"):
        if proc.poll() is not None:
            raise SourceError(f"sandbox server exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise SourceError(f"sandbox server did not answer on {base} in {timeout:.0f}s")
        time.sleep(0.2)
    return base
