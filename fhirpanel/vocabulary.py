"""Names every layer shares: what kind of run a row records, the states a run goes through, and
the FHIR id pattern. One definition each, so the store, the jobs and the API cannot drift."""

from __future__ import annotations

import re
from enum import StrEnum


class RunKind(StrEnum):
    """What a recorded run did."""

    FULL = "full"  # read the whole population (`fhirpanel refresh`, nightly)
    INCREMENTAL = "incremental"  # changes since the watermark
    RUN = "run"  # `fhirpanel run --write`


# What `POST /api/runs` and the dashboard may start.
STARTABLE_KINDS: tuple[RunKind, ...] = (RunKind.FULL, RunKind.INCREMENTAL)


class RunStatus(StrEnum):
    """A run's state. `queued` and `running` are open; the rest are final."""

    QUEUED = "queued"  # asked for (API, dashboard), waiting for the worker
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # finished, with recorded items skipped or writes unconfirmed
    FAILED = "failed"
    HELD = "held"  # the brake stopped it: nothing written or stored
    ACCEPTED = "accepted"  # was held; a person read its figures and let the change through
    SKIPPED = "skipped"  # refused before it started (busy, no watermark, ...)
    CRASHED = "crashed"  # its holder died; marked by the next one to take the lease
    ABANDONED = "abandoned"  # interrupted, or left `running` by a process that is gone


OPEN_STATUSES: tuple[RunStatus, ...] = (RunStatus.QUEUED, RunStatus.RUNNING)
# A full pass that counts as "has run" (the demo, the incremental pass's precondition).
COMPLETED_STATUSES: tuple[RunStatus, ...] = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)

# FHIR R4 `id`: 1-64 of letters, digits, '-' and '.' (https://hl7.org/fhir/R4/datatypes.html#id).
FHIR_ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
FHIR_ID = re.compile(FHIR_ID_PATTERN)
