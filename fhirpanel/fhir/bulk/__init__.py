"""Bulk Data `$export` (FHIR Bulk Data Access IG v2): kick-off, status polling, NDJSON download.

`BulkExport.run()` leaves a folder of complete NDJSON files or nothing at all; `BulkSource` runs
one export lazily, on its first read, and serves the files through `NdjsonSource`. Every request
goes through `FhirClient.request`, so retries, timeouts, auth and HTTP-error mapping apply.

One module per job: `manifest` (pure: the `bulk:` spec, the manifest, error files,
`Retry-After`), `export` (one export: kick-off, polls, downloads) and `source` (`BulkSource`).
Callers import from here.
"""

from fhirpanel.fhir.bulk.export import (
    CHUNK_BYTES,
    DEFAULT_DOWNLOAD_DIR,
    DOWNLOAD_ATTEMPTS,
    MAX_POLLS,
    MIN_POLL_SECONDS,
    STALE_EXPORT_SECONDS,
    BulkExport,
    ExportResult,
    ExportStats,
    sweep_stale,
)
from fhirpanel.fhir.bulk.manifest import (
    EXPORT_TYPES,
    MAX_ERROR_ISSUES,
    NDJSON,
    TRANSIENT_CODES,
    BulkTarget,
    ExportManifest,
    ManifestFile,
    check_group_id,
    check_since,
    download_names,
    error_file_issues,
    error_file_name,
    is_transient,
    parse_bulk_spec,
    parse_manifest,
    retry_after_seconds,
)
from fhirpanel.fhir.bulk.source import NON_COMPARTMENT_TYPES, BulkSource

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_DOWNLOAD_DIR",
    "DOWNLOAD_ATTEMPTS",
    "EXPORT_TYPES",
    "MAX_ERROR_ISSUES",
    "MAX_POLLS",
    "MIN_POLL_SECONDS",
    "NDJSON",
    "NON_COMPARTMENT_TYPES",
    "STALE_EXPORT_SECONDS",
    "TRANSIENT_CODES",
    "BulkExport",
    "BulkSource",
    "BulkTarget",
    "ExportManifest",
    "ExportResult",
    "ExportStats",
    "ManifestFile",
    "check_group_id",
    "check_since",
    "download_names",
    "error_file_issues",
    "error_file_name",
    "is_transient",
    "parse_bulk_spec",
    "parse_manifest",
    "retry_after_seconds",
    "sweep_stale",
]
