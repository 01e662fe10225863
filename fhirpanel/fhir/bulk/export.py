"""One Bulk Data `$export` run (FHIR Bulk Data Access IG v2): kick-off, status polling, NDJSON
download into a folder that holds every file complete or nothing at all. Every request goes
through `FhirClient.request`, so retries, timeouts, auth and HTTP-error mapping apply."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import requests

from fhirpanel.config import BulkSettings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import (
    AuthError,
    ConfigError,
    FhirHttpError,
    GoneError,
    NotFoundError,
    SourceError,
)
from fhirpanel.fhir.bulk.manifest import (
    EXPORT_TYPES,
    NDJSON,
    TYPE_NAME,
    ExportManifest,
    ManifestFile,
    check_group_id,
    check_since,
    download_names,
    error_file_issues,
    error_file_name,
    is_transient,
    parse_manifest,
    retry_after_seconds,
)
from fhirpanel.fhir.client import FHIR_JSON, FhirClient, NoAuth, redact_url, url_origin

log = logging.getLogger(__name__)

DEFAULT_DOWNLOAD_DIR = "var/bulk"
MAX_POLLS = 10_000  # with max_wait_seconds, the bound on the status loop
MIN_POLL_SECONDS = 0.1  # never poll faster, whatever Retry-After says
STALE_EXPORT_SECONDS = 24 * 3600  # leftover download folders older than this are removed
DOWNLOAD_ATTEMPTS = 3  # per file, when the connection breaks mid-body (HTTP errors: the client)
CHUNK_BYTES = 1 << 20


@dataclass
class ExportStats:
    polls: int = 0
    export_seconds: float = 0.0  # kick-off to manifest
    download_seconds: float = 0.0
    files: int = 0
    bytes: int = 0
    lines: int = 0


@dataclass
class ExportResult:
    directory: Path
    manifest: ExportManifest
    counts: dict[str, int]  # lines downloaded per resource type
    issues: list[Issue] = field(default_factory=list)  # from the manifest's error files
    warnings: list[str] = field(default_factory=list)
    stats: ExportStats = field(default_factory=ExportStats)


class _BrokenDownload(Exception):
    """The connection broke while a file body streamed in: worth starting the file again."""


class BulkExport:
    """One `$export`: kick-off, status polls, downloads. `run()` returns a folder holding every
    file complete, or raises and leaves nothing behind; the status URL is sent a DELETE either
    way (cancel, or the IG's signal that the files may go)."""

    def __init__(
        self,
        client: FhirClient,
        settings: BulkSettings | None = None,
        *,
        group_id: str | None = None,
        since: str | None = None,
        types: Sequence[str] = EXPORT_TYPES,
        max_polls: int = MAX_POLLS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings or BulkSettings()
        group = self.settings.group_id if group_id is None else group_id
        self.group_id = check_group_id(group) if group else ""
        since = self.settings.since if since is None else since
        self.since = check_since(since) if since else ""
        for rtype in types:
            if not TYPE_NAME.match(rtype):
                raise ConfigError(f"not a resource type: {rtype!r}")
        self.types = tuple(types)
        self.max_polls = max_polls
        self.stats = ExportStats()
        self._sleep, self._clock, self._wall_clock = sleep, clock, wall_clock
        self._file_clients: dict[str, FhirClient] = {}

    def describe(self) -> str:
        group = f"/Group/{self.group_id}" if self.group_id else ""
        return f"bulk:{redact_url(self.client.base_url)}{group}"

    @property
    def kickoff_path(self) -> str:
        if self.group_id:
            return f"Group/{quote(self.group_id, safe='')}/$export"
        return "$export"

    def run(self) -> ExportResult:
        self.stats = ExportStats()
        started = self._clock()
        status_url = self.kick_off()
        try:
            manifest = self.wait_for_manifest(status_url)
            self.stats.export_seconds = self._clock() - started
            return self.download(manifest)
        finally:
            self._delete(status_url)
            for other in self._file_clients.values():
                other.close()
            self._file_clients.clear()

    # ------------------------------------------------------------ kick-off

    def kick_off(self) -> str:
        """The status URL of a new export job."""
        params = [("_type", ",".join(self.types)), ("_outputFormat", NDJSON)]
        if self.since:
            params.append(("_since", self.since))
        what = f"Group/{self.group_id}" if self.group_id else "system-level"
        try:
            response = self.client.request(
                "GET",
                self.kickoff_path,
                params=params,
                headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
            )
        except AuthError:
            raise
        except NotFoundError as exc:
            missing = f"Group/{self.group_id} not found" if self.group_id else "no $export"
            raise SourceError(f"Bulk export kick-off ({what}): {missing}: {exc}") from exc
        except FhirHttpError as exc:
            raise SourceError(f"Bulk export kick-off ({what}) refused: {exc}") from exc
        if response.status_code != 202:
            raise SourceError(
                f"Bulk export kick-off ({what}) answered HTTP "
                f"{response.status_code}, not 202 Accepted: the server does not run "
                "$export asynchronously"
            )
        location = response.headers.get("Content-Location", "").strip()
        if not location:
            raise SourceError(f"Bulk export kick-off ({what}): 202 without Content-Location")
        status_url = self.client.link(location, "Bulk status URL")
        log.info("bulk export (%s) started; status at %s", what, redact_url(status_url))
        return status_url

    # ------------------------------------------------------------ status

    def wait_for_manifest(self, status_url: str) -> ExportManifest:
        """Poll until the manifest (200), honouring Retry-After; bounded by
        `max_wait_seconds` and `max_polls`. A failed export is a SourceError with the server's
        message."""
        started = self._clock()
        limit = self.settings.max_wait_seconds
        progress = ""
        while True:
            self.stats.polls += 1
            wait: float | None
            try:
                response = self.client.request(
                    "GET", status_url, headers={"Accept": "application/json"}
                )
            except AuthError:
                raise
            except FhirHttpError as exc:
                if not is_transient(exc):
                    raise SourceError(f"Bulk export failed: {exc}") from exc
                log.info("bulk export status: transient error %d; polling again", exc.status)
                wait = None
            else:
                if response.status_code == 200:
                    return parse_manifest(_json_body(response))
                if response.status_code != 202:
                    raise SourceError(
                        f"Bulk export status answered HTTP "
                        f"{response.status_code}, expected 202 or 200"
                    )
                progress = " ".join(response.headers.get("X-Progress", "").split())[:100]
                log.info("bulk export in progress: %s", progress or "(no X-Progress)")
                wait = retry_after_seconds(response.headers.get("Retry-After"), self._wall_clock())
            if self.stats.polls >= self.max_polls:
                raise SourceError(
                    f"Bulk export not finished after {self.stats.polls} status "
                    f"polls (last progress: {progress or 'none'}); cancelled"
                )
            wait = max(MIN_POLL_SECONDS, self.settings.poll_interval if wait is None else wait)
            if self.settings.max_retry_after > 0:  # an operator's cap on the server's Retry-After
                wait = min(wait, max(MIN_POLL_SECONDS, self.settings.max_retry_after))
            elapsed = self._clock() - started
            if elapsed + wait > limit:
                raise SourceError(
                    f"Bulk export not finished within {limit:g}s (bulk.max_wait_seconds; "
                    f"next poll in {wait:g}s, last progress: {progress or 'none'}); cancelled"
                )
            self._sleep(wait)

    def _delete(self, status_url: str) -> None:
        """Best effort: cancels a running export, or lets the server drop finished files."""
        try:
            self.client.request("DELETE", status_url)
        except SourceError as exc:
            log.info("bulk export: DELETE of the status URL not accepted (%s)", exc)

    # ------------------------------------------------------------ downloads

    def download(self, manifest: ExportManifest) -> ExportResult:
        """Every output file of a requested type, streamed to `*.part` files in a fresh folder
        and renamed once all are complete; on any failure the folder is removed."""
        root = Path(self.settings.download_dir or DEFAULT_DOWNLOAD_DIR)
        try:
            root.mkdir(parents=True, exist_ok=True)
            sweep_stale(
                root, older_than=max(STALE_EXPORT_SECONDS, 2 * self.settings.max_wait_seconds)
            )
            partial = Path(tempfile.mkdtemp(prefix="export-", suffix=".partial", dir=root))
        except OSError as exc:
            raise SourceError(f"cannot create a download folder under {root}: {exc}") from exc
        started = self._clock()
        deadline = started + self.settings.max_wait_seconds
        try:
            wanted = [f for f in manifest.output if f.type in self.types]
            warnings = [
                f"export file of unrequested type {f.type} ignored"
                for f in manifest.output
                if f.type not in self.types
            ]
            counts: dict[str, int] = {}
            done: list[tuple[Path, str]] = []
            for file, name in zip(wanted, download_names(wanted), strict=True):
                part = partial / f"{name}.part"
                lines = self._fetch(file, part, manifest.requires_access_token, deadline)
                done.append((part, name))
                counts[file.type] = counts.get(file.type, 0) + lines
                if file.count is not None and file.count != lines:
                    short = "short" if lines < file.count else "more than listed"
                    raise SourceError(
                        f"Bulk export {file.type} file {name} ({redact_url(file.url)}): the "
                        f"manifest says {file.count} resources but {lines} lines were "
                        f"downloaded ({short}); nothing was imported"
                    )
            issues = self._error_issues(manifest, partial, deadline, warnings)
            for part, name in done:
                part.rename(partial / name)
            directory = partial.with_name(partial.name.removesuffix(".partial"))
            partial.rename(directory)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self.stats.download_seconds = self._clock() - started
        self.stats.files = len(done)
        self.stats.lines = sum(counts.values())
        for warning in warnings:
            log.warning("bulk export: %s", warning)
        log.info(
            "bulk export: %d files, %d lines, %.1f MB in %.1fs (export %.1fs, %d polls)",
            self.stats.files,
            self.stats.lines,
            self.stats.bytes / 1e6,
            self.stats.download_seconds,
            self.stats.export_seconds,
            self.stats.polls,
        )
        return ExportResult(directory, manifest, counts, issues, warnings, self.stats)

    def _error_issues(
        self, manifest: ExportManifest, folder: Path, deadline: float, warnings: list[str]
    ) -> list[Issue]:
        """The error files' OperationOutcomes as issues (content stays out of the logs)."""
        issues: list[Issue] = []
        for n, file in enumerate(manifest.error, start=1):
            name = error_file_name(n)
            path = folder / name
            try:
                self._fetch(file, path, manifest.requires_access_token, deadline)
                with path.open("rb") as handle:
                    issues.extend(error_file_issues(handle.readlines(), name))
            except (SourceError, OSError) as exc:
                warnings.append(f"export error file {n} could not be read: {exc}")
            finally:
                path.unlink(missing_ok=True)
        if issues:
            log.warning(
                "bulk export: the server reported %d errors (see the report's issues)", len(issues)
            )
        return issues

    def _fetch(self, file: ManifestFile, target: Path, with_token: bool, deadline: float) -> int:
        """Stream one file to `target`; returns its count of lines that are not blank."""
        client, url = self._client_for(file.url, with_token)
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return self._stream(client, url, file, target, with_token, deadline)
            except _BrokenDownload as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise SourceError(
                        f"Bulk export {file.type} file {redact_url(file.url)}: "
                        f"connection broke {attempt} times ({exc})"
                    ) from exc
                log.info(
                    "bulk export: %s file broke off (%s); downloading it again", file.type, exc
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream(
        self,
        client: FhirClient,
        url: str,
        file: ManifestFile,
        target: Path,
        with_token: bool,
        deadline: float,
    ) -> int:
        where = f"Bulk export {file.type} file {redact_url(file.url)}"
        try:
            response = client.request(
                "GET", url, headers={"Accept": NDJSON}, stream=True, authenticate=with_token
            )
        except (NotFoundError, GoneError) as exc:
            raise SourceError(
                f"{where} is gone (HTTP {exc.status}): the export expired or was "
                "removed; run the export again"
            ) from exc
        except AuthError:
            raise
        except FhirHttpError as exc:
            raise SourceError(f"{where} could not be downloaded: {exc}") from exc
        lines = size = 0
        filled = False  # the line being read so far holds more than whitespace
        try:
            with response, target.open("wb") as out:
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    if not chunk:
                        continue
                    out.write(chunk)
                    size += len(chunk)
                    *ended, rest = chunk.split(b"\n")
                    for piece in ended:
                        lines += 1 if filled or piece.strip() else 0
                        filled = False
                    filled = filled or bool(rest.strip())
                    if self._clock() > deadline:
                        raise SourceError(
                            f"{where}: downloads took longer than "
                            f"{self.settings.max_wait_seconds:g}s "
                            "(bulk.max_wait_seconds)"
                        )
        except requests.exceptions.RequestException as exc:  # before OSError: it is one
            raise _BrokenDownload(type(exc).__name__) from exc
        except OSError as exc:
            raise SourceError(f"cannot write {target}: {exc}") from exc
        if filled:  # a last line without a newline
            lines += 1
        client.stats.bytes += size
        self.stats.bytes += size
        return lines

    def _client_for(self, url: str, with_token: bool) -> tuple[FhirClient, str]:
        """The client and URL for one file. On the server's origin or a trusted one
        (`fhir.trusted_link_origins`): the FHIR client. Elsewhere, with
        `fhir.rewrite_foreign_links`, a file that needs our token, or one on an origin whose
        links were already rewritten (the export's status URL: the same server behind a proxy),
        goes to the base's origin (`FhirClient.link`). Other files (pre-signed storage URLs) get
        a client without credentials, and are refused when they need a token."""
        if self.client.trusts(url):
            return self.client, url
        rewrite = self.client.settings.rewrite_foreign_links
        try:
            rewritten = url_origin(url) in self.client.rewritten_origins
        except ValueError:
            rewritten = False
        if rewrite and (with_token or rewritten):
            return self.client, self.client.link(url, "Bulk file URL")
        if with_token:
            raise SourceError(
                f"Bulk export file {redact_url(url)} needs our access token but is "
                f"not on the FHIR server {redact_url(self.client.base_url)}: "
                "refused; add its origin to fhir.trusted_link_origins or set "
                "fhir.rewrite_foreign_links = true if it is that server"
            )
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        if origin not in self._file_clients:
            settings = dataclasses.replace(self.client.settings, base_url=origin)
            self._file_clients[origin] = FhirClient(settings, auth=NoAuth())
        return self._file_clients[origin], url


def _json_body(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise SourceError(
            f"Bulk export status {redact_url(response.url)}: 200 without a JSON manifest"
        ) from exc


def sweep_stale(root: Path, older_than: float) -> None:
    """Export folders a killed process left behind (patient data at rest): removed once no
    export could still be using them."""
    limit = time.time() - older_than
    for folder in root.glob("export-*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed a stale bulk download folder %s", folder.name)
        except OSError:
            continue
