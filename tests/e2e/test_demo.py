"""`make demo` as a user runs it: the sandbox, the main job, then the worker and the API on
127.0.0.1 with a printed single-use sign-in link and token; SIGTERM stops everything it
started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

READY_WITHIN = 240.0  # seconds: a bound on start-up, not a speed target


def test_demo_serves_the_api_and_dashboard_and_stops_cleanly(tmp_path: Path) -> None:
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhirpanel", "demo"],
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "160"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = ""
    try:
        deadline = time.monotonic() + READY_WITHIN
        text = ""
        while "Admin token:" not in text:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"demo did not come up (exit {proc.poll()}):\n{text[-3000:]}")
            time.sleep(1)
            text = out_path.read_text(errors="replace")
        token = re.search(r"Admin token: (\S+)", text).group(1)  # type: ignore[union-attr]
        login = re.search(
            r"Dashboard:\s+((http://127\.0\.0\.1:\d+)/login/once/[A-Za-z0-9_-]+)\s", text
        )
        assert login, text
        link, base = login.group(1), login.group(2)
        assert token not in link  # the token never goes into an address

        panels = requests.get(
            f"{base}/api/panels", timeout=10, headers={"Authorization": f"Bearer {token}"}
        )
        assert panels.status_code == 200
        assert sum(p["size"] for p in panels.json()["panels"]) == 248
        assert requests.get(f"{base}/api/panels", timeout=10).status_code == 401
        assert requests.get(f"{base}/readyz", timeout=10).json()["status"] == "ready"
        with requests.Session() as browser:
            # The printed link signs the browser in and lands on the dashboard.
            page = browser.get(link, timeout=10)
            assert page.status_code == 200, page.status_code
            assert page.url == f"{base}/" and [r.status_code for r in page.history] == [303]
            assert "Practice overview" in page.text and "Signed in as" in page.text
            assert browser.get(f"{base}/runs", timeout=10, allow_redirects=False).status_code == 200
        with requests.Session() as other:
            # A second use is refused, and signs nobody in.
            again = other.get(link, timeout=10)
            assert again.status_code == 410 and "has been used" in again.text
            assert other.get(f"{base}/", timeout=10, allow_redirects=False).status_code == 302
        assert (tmp_path / "var" / "demo" / "report.json").is_file()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail("the demo did not stop within 90 s of SIGTERM")
    assert code == 0, out_path.read_text(errors="replace")[-3000:]
    assert "Stopping the API, the worker and the sandbox" in out_path.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=5)
