"""A real HAPI FHIR JPA server (R4, in-memory H2) on loopback, for the interop suite.

The server is the small launcher in tests/interop/hapi/ (a Maven project; see its README), built
into one runnable jar, tests/interop/hapi/target/fhirpanel-hapi.jar, the first time it is needed
and again whenever pom.xml or src/ change (a stamp beside the jar records the sources' digest).
The build tries Maven offline first (`mvn -q -B -o package`, quick when the local repository
already holds everything) and goes online (`mvn -B -ntp package`) only when that fails.

Maven's local repository is `FHIRPANEL_M2_REPO` if set, else Maven's own default
`~/.m2/repository`. Not a project path such as var/m2: CI runs in a fresh clone in another
folder, so a project-relative cache would be empty, and downloaded again (~300 MB), on every CI
run, while ~/.m2 is shared by the session, by CI on the same machine and by `mvn` run by hand.
`make hapi-jar` (run by .ci/run) fills it once per machine.

    with HapiServer() as server:
        FhirClient(FhirSettings(base_url=server.base_url))...

`hapi_available()` says why the server cannot run here, if it cannot. Run it by hand with
`python -m tests.interop.hapi_server [--port 8080]` (stops on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.interop.processes import metadata_ok, stop_process

HAPI_VERSION = "8.8.0"  # pinned in tests/interop/hapi/pom.xml
HAPI_DIR = Path(__file__).resolve().parent / "hapi"
HAPI_TARGET = HAPI_DIR / "target"
HAPI_JAR = HAPI_TARGET / "fhirpanel-hapi.jar"
HAPI_STAMP = HAPI_TARGET / ".fhirpanel-sources.sha256"  # digest of the sources the jar came from
HAPI_MIN_JAVA = 17
# Under the 2 GB budget with room to spare: a 1 GiB heap, the serial collector (no
# parallel GC threads on 2 cores) and the C1 compiler only (starts and loads faster here).
JVM_OPTIONS: tuple[str, ...] = ("-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
BUILD_TIMEOUT = 1200.0  # a first online build downloads ~300 MB
STARTUP_TIMEOUT = 180.0  # the budget is 90 s; a loaded 2-core machine gets some slack
_READY = re.compile(r"^HAPI-READY (http://\S+).*$", re.MULTILINE)


def m2_repository() -> Path:
    """The Maven local repository the build uses (see the module docstring)."""
    configured = os.environ.get("FHIRPANEL_M2_REPO", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".m2" / "repository"


def _java_major(java: str) -> int | None:
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def sources_digest() -> str:
    """sha256 over the launcher's sources (pom.xml and src/), names and contents."""
    digest = hashlib.sha256()
    files = [HAPI_DIR / "pom.xml", *sorted(p for p in (HAPI_DIR / "src").rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(HAPI_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def jar_is_current() -> bool:
    try:
        return HAPI_JAR.is_file() and HAPI_STAMP.read_text().strip() == sources_digest()
    except OSError:
        return False


def hapi_available() -> str | None:
    """Why the HAPI server cannot run on this machine, or None when it can (it may still have to
    be built: `build_jar()` does that, online the first time)."""
    java = shutil.which("java")
    if java is None:
        return f"java is not on PATH (the HAPI FHIR server needs Java >= {HAPI_MIN_JAVA})"
    major = _java_major(java)
    if major is None:
        return f"{java} -version did not answer"
    if major < HAPI_MIN_JAVA:
        return f"Java {major} is too old: HAPI FHIR {HAPI_VERSION} needs >= {HAPI_MIN_JAVA}"
    if not (HAPI_DIR / "pom.xml").is_file():
        return f"{HAPI_DIR / 'pom.xml'} is missing"
    if not jar_is_current() and shutil.which("mvn") is None:
        return f"mvn is not on PATH and {HAPI_JAR} is not built from the current sources"
    return None


def build_jar(timeout: float = BUILD_TIMEOUT) -> Path:
    """Build tests/interop/hapi/target/fhirpanel-hapi.jar unless it is current. Offline first,
    online when the local repository lacks something. Serialised with a file lock, so parallel
    sessions build once. Maven's output goes to target/build.log."""
    HAPI_TARGET.mkdir(exist_ok=True)
    with open(HAPI_TARGET / ".build.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if jar_is_current():
            return HAPI_JAR
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("mvn is not on PATH: cannot build the HAPI FHIR server")
        digest = sources_digest()
        repo = f"-Dmaven.repo.local={m2_repository()}"
        log_path = HAPI_TARGET / "build.log"
        deadline = time.monotonic() + timeout
        attempts = ([mvn, "-q", "-B", "-o", repo, "package"], [mvn, "-B", "-ntp", repo, "package"])
        with open(log_path, "wb") as log:
            for command in attempts:
                log.write(f"$ {' '.join(command)}\n".encode())
                log.flush()
                remaining = deadline - time.monotonic()
                try:
                    done = subprocess.run(
                        command,
                        cwd=HAPI_DIR,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        timeout=max(remaining, 1.0),
                        check=False,
                    )
                except subprocess.TimeoutExpired as exc:
                    raise RuntimeError(
                        f"building the HAPI server took more than {timeout:g}s; see {log_path}"
                    ) from exc
                if done.returncode == 0 and HAPI_JAR.is_file():
                    HAPI_STAMP.write_text(digest + "\n")
                    return HAPI_JAR
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(
            f"building the HAPI server failed (offline, then online); {log_path}:\n{tail}"
        )


class HapiServer:
    """One HAPI FHIR JPA server JVM on 127.0.0.1 (a free port unless `port` is given), storing
    into an in-memory H2 database that lives as long as the process.

    `default_page_size`, `max_page_size` (0: no cap), `search_reuse_ms` (identical searches within
    this window reuse a cached result; 0 turns that off) and `search_expire_ms` (after this a
    cached search and its `_getpages` links are gone: 410) default to hapi-fhir-jpaserver-starter's
    values (20, none, 60000, 3600000). `subscriptions` is "resthook" or "none".
    `job_maintenance_ms` (2000; HAPI's own pass is once a minute) is how often Batch2 jobs such as
    `$export` advance. `startup_seconds`, `rss_kb()` and `peak_rss_kb()` measure the process."""

    def __init__(
        self,
        *,
        port: int = 0,
        startup_timeout: float = STARTUP_TIMEOUT,
        jvm_options: tuple[str, ...] = JVM_OPTIONS,
        default_page_size: int | None = None,
        max_page_size: int | None = None,
        search_reuse_ms: int | None = None,
        search_expire_ms: int | None = None,
        subscriptions: str | None = None,
        job_maintenance_ms: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.jvm_options = jvm_options
        self.options: dict[str, int | str | None] = {
            "default-page-size": default_page_size,
            "max-page-size": max_page_size,
            "search-reuse-ms": search_reuse_ms,
            "search-expire-ms": search_expire_ms,
            "subscriptions": subscriptions,
            "job-maintenance-ms": job_maintenance_ms,
        }
        self.log_path = log_path
        self.startup_seconds: float | None = None
        self.ready_line = ""
        self._base_url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the HAPI server is not running: call start() first")
        return self._base_url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        command = [
            shutil.which("java") or "java",
            *self.jvm_options,
            "-jar",
            str(HAPI_JAR),
            "--port",
            str(self.port),
        ]
        for name, value in self.options.items():
            if value is not None:
                command += [f"--{name}", str(value)]
        return command

    def start(self) -> Self:
        """Build the jar if needed, start the JVM and wait (bounded by startup_timeout, the
        build not counted) for its ready line and a 200 from /metadata."""
        if self._process is not None:
            return self
        reason = hapi_available()
        if reason is not None:
            raise RuntimeError(f"cannot start the HAPI server: {reason}")
        build_jar()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="hapi-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self._log = open(self.log_path, "wb")  # closed in stop()
        began = time.monotonic()
        self._process = subprocess.Popen(
            self.command(),
            cwd=HAPI_DIR,
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
        assert self._process is not None and self.log_path is not None
        deadline = began + self.startup_timeout
        base: str | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the HAPI server exited ({self._process.returncode}) "
                    f"before it was ready:\n{self.log_tail()}"
                )
            if base is None:
                match = _READY.search(self.log_path.read_text(errors="replace"))
                if match:
                    base = match.group(1)
                    self.ready_line = match.group(0)
            if base is not None and metadata_ok(base, 10):
                return base
            time.sleep(0.2)
        raise RuntimeError(
            f"the HAPI server was not ready within {self.startup_timeout:g}s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def _status_kb(self, field: str) -> int | None:
        if self._process is None or self._process.poll() is not None:
            return None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) if match else None

    def rss_kb(self) -> int | None:
        """The JVM's resident memory now, in KiB (Linux /proc)."""
        return self._status_kb("VmRSS")

    def peak_rss_kb(self) -> int | None:
        """The JVM's peak resident memory so far, in KiB (Linux /proc)."""
        return self._status_kb("VmHWM")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the JVM (by its pid; its shutdown hook stops Jetty and Spring) and wait for
        it; SIGKILL if it does not go in time."""
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


def main(argv: list[str] | None = None) -> int:
    """Build if needed, start, print the base URL, run until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.hapi_server",
        description="HAPI FHIR JPA server (R4, in-memory H2) on 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--build-only", action="store_true", help="build the jar, then exit")
    args = parser.parse_args(argv)
    reason = hapi_available()
    if reason is not None:
        print(f"cannot run HAPI: {reason}", file=sys.stderr)
        return 2
    if args.build_only:
        began = time.monotonic()
        print(f"{build_jar()} ({time.monotonic() - began:.1f} s)")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with HapiServer(port=args.port, startup_timeout=600.0) as server:
        print(
            f"HAPI FHIR {HAPI_VERSION} at {server.base_url} "
            f"(started in {server.startup_seconds:.1f} s, log {server.log_path}); Ctrl-C stops",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while server._process is not None and server._process.poll() is None:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
