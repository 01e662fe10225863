"""What the parts of one write-back pass share: the server, settings and summary it works
with, the writes whose answer is still owed (`summary.unconfirmed`), failures and issues.

A pass (`writer._Session`) is built from mixins on this base: `sending.Sender` (one write at a
time), `transactions.TransactionSender` (writes in transactions) and
`provenance.ProvenanceWriter`. The reads and decisions only the pass makes are declared here
for them and defined in `writer`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from fhirpanel.config import WritebackSettings
from fhirpanel.domain.records import Issue
from fhirpanel.fhir.capability import ServerCapabilities
from fhirpanel.fhir.client import FhirClient
from fhirpanel.tables import WritebackTables
from fhirpanel.writeback.plan import PlannedWrite
from fhirpanel.writeback.summary import Key, WriteSummary

# One logger for the whole write-back, under the name it had as one module (log lines name it).
log = logging.getLogger("fhirpanel.writeback.writer")


class PassState:
    """The state of a pass, set by `writer._Session.__init__`, and the bookkeeping on it."""

    client: FhirClient
    cfg: WritebackSettings
    caps: ServerCapabilities
    tables: WritebackTables
    dry_run: bool
    now: datetime  # the Provenance time
    carried: frozenset[Key]  # an earlier run's unconfirmed writes
    summary: WriteSummary

    # ------------------------------------------------------------ what the pass provides

    def _read_existing(self, rtype: str, values: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        raise NotImplementedError  # writer._Session

    def _prepare(self, item: PlannedWrite, found: Sequence[dict[str, Any]]) -> bool:
        raise NotImplementedError  # writer._Session

    def _recover_provenance(self, items: Sequence[PlannedWrite]) -> None:
        raise NotImplementedError  # provenance.ProvenanceWriter

    # ------------------------------------------------------------ confirmation bookkeeping

    def _mark(self, items: Iterable[PlannedWrite]) -> None:
        """About to send: unconfirmed until the server answers."""
        self.summary.unconfirmed.update((i.rtype, i.identifier) for i in items)

    def _unmark(self, items: Iterable[PlannedWrite]) -> None:
        """The server answered (or the item needs nothing more): no longer unconfirmed."""
        self.summary.unconfirmed.difference_update((i.rtype, i.identifier) for i in items)

    # ------------------------------------------------------------ issues

    def _fail(self, item: PlannedWrite, problem: str) -> None:
        item.action = "failed"
        item.outcome = "failed"
        self.summary.failed_subjects.add(item.subject)
        self._issue(item, problem[:300], "skipped")

    def _issue(self, item: PlannedWrite, problem: str, action: str) -> None:
        log.warning("%s (%s): %s", item.label, item.subject, problem[:300])
        self.summary.issues.append(Issue(resource=item.label, problem=problem, action=action))
