"""Real FHIR servers on loopback for the interop suite.

`MedplumServer`: Medplum's FHIR router (@medplum/fhir-router, MemoryRepository) behind the small
node:http server in tests/interop/medplum/ (see its README). The npm packages are installed with
`npm ci` into tests/interop/medplum/node_modules the first time, and again whenever
package-lock.json changes (a stamp file in node_modules records the lock it was installed from).
`medplum_available()` says why it cannot run here, if it cannot.

    with MedplumServer(atomic_transactions=True) as server:
        FhirClient(FhirSettings(base_url=server.base_url))...
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tests.interop.processes import metadata_ok, stop_process

# ------------------------------------------------------------------------------------- Medplum

MEDPLUM_DIR = Path(__file__).resolve().parent / "medplum"
MEDPLUM_LOCK = MEDPLUM_DIR / "package-lock.json"
MEDPLUM_MODULES = MEDPLUM_DIR / "node_modules"
MEDPLUM_STAMP = MEDPLUM_MODULES / ".fhirpanel-installed"  # the sha256 of the lock installed
MEDPLUM_MIN_NODE = 20  # @medplum/* 5.x declare node >= 22.18 but run on 20 (server.mjs: WebSocket)
NPM_CI_TIMEOUT = 240.0  # under pytest-timeout's 300 s, so a slow registry fails with our message
_READY = re.compile(r"^READY (http://\S+).*$", re.MULTILINE)


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


def _lock_digest() -> str:
    return hashlib.sha256(MEDPLUM_LOCK.read_bytes()).hexdigest()


def medplum_installed() -> bool:
    """node_modules holds what the committed package-lock.json names."""
    try:
        return MEDPLUM_STAMP.read_text().strip() == _lock_digest()
    except OSError:
        return False


def medplum_available() -> str | None:
    """Why the Medplum server cannot run on this machine, or None when it can."""
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH (the Medplum server needs Node.js >= 20)"
    major = _node_major(node)
    if major is None:
        return f"{node} --version did not answer"
    if major < MEDPLUM_MIN_NODE:
        return f"Node.js {major} is too old: the Medplum server needs >= {MEDPLUM_MIN_NODE}"
    if not MEDPLUM_LOCK.is_file():
        return f"{MEDPLUM_LOCK} is missing"
    if not medplum_installed() and shutil.which("npm") is None:
        return f"npm is not on PATH and {MEDPLUM_MODULES} is not installed"
    return None


def install_medplum(timeout: float = NPM_CI_TIMEOUT) -> None:
    """`npm ci` into tests/interop/medplum/node_modules unless it already holds the current
    package-lock.json. Serialised with a file lock, so parallel sessions install once."""
    with open(MEDPLUM_DIR / ".install.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if medplum_installed():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not on PATH: cannot install the Medplum server")
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=MEDPLUM_DIR,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"npm ci in {MEDPLUM_DIR} took more than {timeout:g}s") from exc
        if done.returncode != 0:
            raise RuntimeError(
                f"npm ci in {MEDPLUM_DIR} failed ({done.returncode}):\n{done.stderr[-2000:]}"
            )
        MEDPLUM_STAMP.write_text(_lock_digest() + "\n")


class MedplumServer:
    """One Medplum FHIR router server process on 127.0.0.1 (a free port unless `port` is given).

    `atomic_transactions=False` is Medplum's production default: a `transaction` Bundle runs as a
    batch (HTTP 200, a status per entry). True turns Medplum's transaction feature on (atomic,
    with its size limits). `startup_seconds` and `rss_kb()` measure the process."""

    def __init__(
        self,
        *,
        atomic_transactions: bool = False,
        port: int = 0,
        startup_timeout: float = 60.0,
        log_requests: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.atomic_transactions = atomic_transactions
        self.port = port
        self.startup_timeout = startup_timeout
        self.log_requests = log_requests
        self.log_path = log_path
        self.startup_seconds: float | None = None
        self.ready_line = ""
        self._base_url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the Medplum server is not running: call start() first")
        return self._base_url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        if self._process is not None:
            return self
        reason = medplum_available()
        if reason is not None:
            raise RuntimeError(f"cannot start the Medplum server: {reason}")
        install_medplum()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="medplum-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self._log = open(self.log_path, "wb")  # closed in stop()
        command = [shutil.which("node") or "node", "server.mjs", "--port", str(self.port)]
        if self.atomic_transactions:
            command.append("--atomic-transactions")
        if self.log_requests:
            command.append("--log-requests")
        began = time.monotonic()
        self._process = subprocess.Popen(
            command,
            cwd=MEDPLUM_DIR,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._base_url = self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> str:
        """The base URL from the READY line, once /metadata answers; bounded by
        startup_timeout."""
        assert self._process is not None and self.log_path is not None
        deadline = began + self.startup_timeout
        base: str | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the Medplum server exited ({self._process.returncode}) "
                    f"before it was ready:\n{self.log_tail()}"
                )
            if base is None:
                match = _READY.search(self.log_path.read_text(errors="replace"))
                if match:
                    base = match.group(1)
                    self.ready_line = match.group(0)
            if base is not None and metadata_ok(base, 5):
                return base
            time.sleep(0.05)
        raise RuntimeError(
            f"the Medplum server was not ready within {self.startup_timeout:g}s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def rss_kb(self) -> int | None:
        """The server process's resident memory (ps), in KiB."""
        if self._process is None or self._process.poll() is not None:
            return None
        try:
            out = subprocess.run(
                ["ps", "-o", "rss=", "-p", str(self._process.pid)],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return int(out.strip()) if out.strip().isdigit() else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server (by its pid) and wait for it; SIGKILL if it does not go."""
        process, self._process = self._process, None
        stop_process(process, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._base_url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------ loading data


def post_json(url: str, body: Any, timeout: float = 120.0) -> tuple[int, Any]:
    """POST FHIR JSON; (status, parsed body) for any status."""
    request = urllib.request.Request(  # noqa: S310 - loopback test servers only
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def bundle_files(population_dir: Path) -> list[Path]:
    return sorted((population_dir / "bundles").glob("transaction-*.json"))


def iter_as_batches(bundle: dict[str, Any], size: int) -> Iterator[dict[str, Any]]:
    """The entries of a transaction Bundle as `batch` Bundles of at most `size` entries."""
    entries = bundle.get("entry") or []
    for start in range(0, len(entries), size):
        yield {"resourceType": "Bundle", "type": "batch", "entry": entries[start : start + size]}


def load_bundles(base_url: str, population_dir: Path, batch_size: int = 500) -> dict[str, int]:
    """POST the committed transaction bundles, in file order, as `batch` Bundles (any server
    takes a batch; Medplum's atomic transactions refuse more than 50 updates). Returns the count
    of entry statuses; raises when one is not 2xx."""
    statuses: dict[str, int] = {}
    for path in bundle_files(population_dir):
        bundle = json.loads(path.read_text())
        for batch in iter_as_batches(bundle, batch_size):
            status, answer = post_json(base_url, batch)
            if status != 200:
                raise RuntimeError(f"{path.name}: HTTP {status}: {json.dumps(answer)[:500]}")
            for n, entry in enumerate(answer.get("entry") or []):
                code = str((entry.get("response") or {}).get("status", "none")).split()[0]
                statuses[code] = statuses.get(code, 0) + 1
                if not code.startswith("2"):
                    raise RuntimeError(f"{path.name} entry {n}: {json.dumps(entry)[:500]}")
    return statuses
