"""The state store: `Store` is one object over one database, made of a store per aggregate, each
in its own module and all sharing the engine and sessions of `engine.StoreEngine`:

- `engine`   the connection, sessions, the Alembic upgrade, `ping`, `describe`, `close`
- `lease`    the refresh lock (`locks`)
- `runs`     runs and the run queue (`runs`), watermarks and context values
- `review`   overrides, patient statuses, confirmations, the pending-patient queue, the audit trail
- `moves`    confirmed assignments for a pass, proposed moves and decisions on them
- `results`  a pass's patients, their history and the panels; saved from plain rows
- `ledger`   the write-back ledger

The names below are re-exported so `from fhirpanel.store.repository import ...` keeps working;
new code may import them from their own modules.
"""

from __future__ import annotations

from fhirpanel.domain.confirmations import CONFIRMERS, METHODS
from fhirpanel.store.engine import CHUNK, MIGRATIONS, StoreEngine, StoreError, now_utc
from fhirpanel.store.lease import REFRESH_LOCK, LeaseStore, lock_holder_id
from fhirpanel.store.ledger import LedgerStore, StoreLedger
from fhirpanel.store.moves import MoveStore
from fhirpanel.store.results import (
    ClinicianRow,
    PatientRow,
    ResultRows,
    ResultStore,
    clinician_dict,
    patient_dict,
    recompute_clinicians,
)
from fhirpanel.store.review import (
    REQUESTERS,
    STATUSES,
    AssignmentChanged,
    ReviewStore,
    override_dict,
    queue_patient,
)
from fhirpanel.store.runs import WORKER_HEARTBEAT, NotHeld, RunStore, run_dict


class Store(LedgerStore, ResultStore, ReviewStore, MoveStore, RunStore):
    """The state store (SQLite by default, PostgreSQL by URL); the schema is brought to the
    newest migration when it opens. `RunStore` brings the lease (`LeaseStore`) with it."""


__all__ = [
    "CHUNK",
    "CONFIRMERS",
    "METHODS",
    "MIGRATIONS",
    "REFRESH_LOCK",
    "REQUESTERS",
    "STATUSES",
    "WORKER_HEARTBEAT",
    "AssignmentChanged",
    "ClinicianRow",
    "LeaseStore",
    "LedgerStore",
    "NotHeld",
    "PatientRow",
    "ResultRows",
    "ResultStore",
    "ReviewStore",
    "RunStore",
    "Store",
    "StoreEngine",
    "StoreError",
    "StoreLedger",
    "clinician_dict",
    "lock_holder_id",
    "now_utc",
    "override_dict",
    "patient_dict",
    "queue_patient",
    "recompute_clinicians",
    "run_dict",
]
