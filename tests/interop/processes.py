"""What the interop servers' launchers share: stopping a child by its pid, asking for /metadata."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.error
import urllib.request


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM by pid and wait; SIGKILL if it does not go in time."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def metadata_ok(base: str, timeout: float) -> bool:
    """The server answers its CapabilityStatement."""
    try:
        with urllib.request.urlopen(base + "/metadata", timeout=timeout) as response:  # noqa: S310
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
