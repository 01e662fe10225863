"""Held runs as the API and the dashboard show them: the brake's figures in words, which held
runs still wait for an operator, and letting a held run's change through
(`fhirpanel.jobs.refresh.accept_held_run`: the run is marked `accepted`, audited under the
account's name, and the next pass is started or queued; it goes ahead when it changes no more
than the figures the operator read).

A held run stops waiting when it is accepted, or when a later run of the same source and kind
(a full refresh also for a held incremental pass) succeeded or was accepted: the source was
fixed, or a newer change was let through, so the change it held was never made. Such a run is
*superseded*: it leaves the banner and `fhirpanel_runs_held`, and it cannot be accepted any
more (an acceptance is a standing permission for the next pass on that source: a stale one
would let an unreviewed change through).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from fhirpanel.config import Settings
from fhirpanel.errors import FhirpanelError
from fhirpanel.jobs import brake
from fhirpanel.jobs.refresh import accept_held_run
from fhirpanel.store import Store
from fhirpanel.store.models import Run
from fhirpanel.store.repository import NotHeld
from fhirpanel.vocabulary import RunKind, RunStatus

log = logging.getLogger(__name__)

# Runs whose acceptance starts the next pass here.
REFRESH_KINDS = (RunKind.FULL, RunKind.INCREMENTAL)
# A later run in these: the held one is moot.
SUPERSEDING = (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.ACCEPTED)


class Superseded(Exception):
    """Accepting a held run that a later run made moot."""


@dataclass(frozen=True)
class Figure:
    name: str  # removed_patients | ended_participations | changed_assignments
    text: str  # "would remove 100 of 300 stored patients (33.3%, limit 5%)"
    over: bool  # above its limit: why the run was held


@dataclass(frozen=True)
class Accepted:
    run: dict[str, Any]
    next_run: int | None
    detail: str  # what happens next, in words


def figures(run: Mapping[str, Any], min_count: int) -> list[Figure]:
    """A held (or accepted) run's figures in words, in a fixed order; malformed ones are
    left out."""
    raw = (run.get("counts") or {}).get("held")
    out: list[Figure] = []
    if not isinstance(raw, Mapping):
        return out
    for name in brake.LABELS:
        item = raw.get(name)
        if not isinstance(item, Mapping):
            continue
        try:
            change = brake.Change(name, int(item["count"]), int(item["of"]), float(item["limit"]))
        except (KeyError, TypeError, ValueError):
            continue
        out.append(Figure(name, "would " + change.describe(), change.exceeds(min_count)))
    return out


def superseded(store: Store, runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """For each of these held runs that a later run superseded: that later run (id, kind,
    status)."""
    out: dict[int, dict[str, Any]] = {}
    with store.session() as s:
        for run in runs:
            kinds = list(REFRESH_KINDS) if run["kind"] == RunKind.INCREMENTAL else [run["kind"]]
            row = s.execute(
                select(Run.id, Run.kind, Run.status)
                .where(
                    Run.id > run["id"],
                    Run.source == run["source"],
                    Run.kind.in_(kinds),
                    Run.status.in_(SUPERSEDING),
                )
                .order_by(Run.id)
                .limit(1)
            ).first()
            if row is not None:
                out[int(run["id"])] = {"id": row.id, "kind": row.kind, "status": row.status}
    return out


def awaiting(store: Store) -> list[dict[str, Any]]:
    """Held runs that still wait for an operator (not accepted, not superseded), newest
    first."""
    runs = store.held_runs()
    later = superseded(store, runs)
    return [r for r in runs if r["id"] not in later]


def superseded_reason(run: Mapping[str, Any], later: Mapping[str, Any]) -> str:
    return (
        f"run {run['id']} was superseded by run {later['id']} ({later['kind']}, "
        f"{later['status']}): the change it held was never made, and there is nothing "
        "to accept"
    )


def not_held_reason(run: Mapping[str, Any]) -> str:
    """Why a run cannot be accepted, for a 409 or a flash message."""
    accepted = (run.get("counts") or {}).get("accepted")
    if run.get("status") == RunStatus.ACCEPTED and isinstance(accepted, Mapping):
        return (
            f"run {run['id']} was already accepted by {accepted.get('by', '?')} at "
            f"{accepted.get('at', '?')}"
        )
    return (
        f"run {run['id']} is not held (it is {run.get('status')}): only a held run can be accepted"
    )


def accept(settings: Settings, store: Store, run_id: int, actor: str) -> Accepted:
    """Accept a held run. NotHeld when it is not held (unknown, or accepted meanwhile),
    Superseded when a later run made it moot. Once the acceptance is stored it stands: a next
    pass that cannot start is reported in `detail`, and the following pass uses it."""
    found = store.run(run_id)
    if found is not None and found.get("status") == RunStatus.HELD:
        later = superseded(store, [found]).get(run_id)
        if later is not None:
            raise Superseded(superseded_reason(found, later))
    try:
        run, next_run = accept_held_run(settings, store, run_id, actor)
    except NotHeld:
        raise
    except Exception as exc:
        stored = store.run(run_id)
        if stored is None or stored.get("status") != RunStatus.ACCEPTED:
            raise
        log.warning(
            "held run %d accepted by %s; the next pass could not start: %s",
            run_id,
            actor,
            type(exc).__name__,
        )
        why = str(exc) if isinstance(exc, FhirpanelError) else "see the log"
        return Accepted(
            stored,
            None,
            f"the next refresh could not start ({why}); the next "
            "pass on this source uses the acceptance",
        )
    log.info("%s accepted held run %d; next run %s", actor, run_id, next_run)
    return Accepted(run, next_run, _next_detail(store, run, next_run))


def _next_detail(store: Store, run: Mapping[str, Any], next_run: int | None) -> str:
    if next_run is not None:
        started = store.run(next_run)
        if started is not None and started.get("status") == RunStatus.QUEUED:
            return f"run {next_run} is queued for the worker to apply the change"
        return f"run {next_run} has started to apply the change"
    if run.get("kind") in REFRESH_KINDS:
        return (
            "a refresh is running or queued; the next pass on this source goes ahead if "
            "it changes no more than this"
        )
    return "run `fhirpanel run --write` again: it goes ahead if it changes no more than this"
