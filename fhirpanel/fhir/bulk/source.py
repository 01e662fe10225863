"""`BulkSource`: a `FhirSource` over one Bulk Data export, run lazily on the first read and served
from the downloaded NDJSON through `NdjsonSource`."""

from __future__ import annotations

import logging
import shutil
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from fhirpanel.domain.records import Issue
from fhirpanel.errors import SourceError
from fhirpanel.fhir.bulk.export import BulkExport, ExportResult
from fhirpanel.fhir.source import (
    PATIENTS_FIRST,
    REQUIRED_TYPES,
    Item,
    NdjsonSource,
    ServerSource,
)

log = logging.getLogger(__name__)

# Outside the Patient compartment: a Group-level export need not contain them (IG, "Group level
# export"), so when its manifest has none they are read from the server: by paged search, or by
# the references to them where that is refused or the read mode is roster (referenced.py).
NON_COMPARTMENT_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization"})


class BulkSource:
    """A `FhirSource` over one Bulk Data export, run on the first read (once) and then served
    from the downloaded NDJSON. `close()` removes the files unless `keep_files` (also at exit).
    The references in what it serves are noted, so clinicians a Group export leaves out can be
    read by reference (`_from_server`)."""

    read_order = PATIENTS_FIRST

    def __init__(self, export: BulkExport, *, keep_files: bool | None = None) -> None:
        self.export = export
        self.client = export.client
        self.keep_files = export.settings.keep_files if keep_files is None else keep_files
        self.result: ExportResult | None = None
        self._files: NdjsonSource | None = None
        self._server = ServerSource(export.client)
        self._failure: SourceError | None = None
        self._pending: list[Issue] = []
        self._cleanup: weakref.finalize[Any, Any] | None = None
        self._closed = False

    def describe(self) -> str:
        return self.export.describe()

    @property
    def transaction_time(self) -> str:
        """The manifest's transactionTime: the `_since` of the next incremental export."""
        return self.result.manifest.transaction_time if self.result else ""

    def read(self, resource_type: str) -> Iterator[Item]:
        files = self._ensure()
        yield from self._take_issues()
        if self._from_server(resource_type):
            yield from self._server.read(resource_type)
        else:
            yield from self._server.references.noting(files.read(resource_type))

    def read_for_patients(self, resource_type: str, patients: Sequence[str]) -> Iterator[Item]:
        files = self._ensure()
        yield from self._take_issues()
        if self._from_server(resource_type):
            yield from self._server.read_for_patients(resource_type, patients)
        else:
            found = files.read_for_patients(resource_type, patients)
            yield from self._server.references.noting(found)

    def _ensure(self) -> NdjsonSource:
        if self._closed:
            raise SourceError(f"{self.describe()}: source already closed")
        if self._failure is not None:
            raise self._failure
        if self._files is None:
            try:
                result = self.export.run()
            except SourceError as exc:
                self._failure = exc
                raise
            self.result = result
            self._pending = list(result.issues)
            # A full export must hold Patient and Encounter files (of the types it asked for);
            # an incremental one (`_since`) need not: nothing of a type may have changed.
            required = (
                () if self.export.since else [t for t in REQUIRED_TYPES if t in self.export.types]
            )
            self._files = NdjsonSource(result.directory, require=required)
            if not self.keep_files:
                self._cleanup = weakref.finalize(
                    self, shutil.rmtree, result.directory, ignore_errors=True
                )
        return self._files

    def _take_issues(self) -> list[Issue]:
        """Export-level issues (error files) come out once, with the first read."""
        pending, self._pending = self._pending, []
        return pending

    def _from_server(self, resource_type: str) -> bool:
        if not self.export.group_id or resource_type not in NON_COMPARTMENT_TYPES:
            return False
        if self.result is None or resource_type in self.result.counts:
            return False
        how = (
            "by reference"
            if self.client.settings.read_mode == "roster"
            else "by paged search (by reference if that is refused)"
        )
        log.info("Group export has no %s: reading it from the server %s", resource_type, how)
        return True

    def close(self) -> None:
        self._closed = True
        self._server.close()
        if self._cleanup is not None:
            self._cleanup()
        elif self.result is not None:
            log.info("bulk files kept in %s (bulk.keep_files)", self.result.directory)

    def __enter__(self) -> BulkSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
