"""The validation runs and the monthly snapshots (migration 0009): written by `fhirpanel
validate` and `fhirpanel snapshot`, read by `/api/validation`, `/api/snapshots` and the
dashboard's Validation page. Plain dicts out, as the other stores shape them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fhirpanel.store.engine import StoreEngine, iso, now_utc
from fhirpanel.store.models import MonthlySnapshot, ValidationRun


def save_validation(store: StoreEngine, result: dict[str, Any], svg: str) -> int:
    """Keep one validation's statistics and plot; returns its id."""
    with store.session() as s:
        row = ValidationRun(
            created_at=now_utc(),
            as_of=str(result["as_of"]),
            baseline=str(result["baseline"]),
            source=str(result.get("source", ""))[:512],
            patients=int(result["patients"]),
            result=result,
            svg=svg,
        )
        s.add(row)
        s.flush()
        return int(row.id)


def latest_validation(store: StoreEngine) -> dict[str, Any] | None:
    """The newest validation (`id`, `created_at`, `result`, `svg`), or None."""
    with store.session() as s:
        row = s.scalars(select(ValidationRun).order_by(ValidationRun.id.desc()).limit(1)).first()
        if row is None:
            return None
        return {
            "id": row.id,
            "created_at": iso(row.created_at),
            "result": row.result,
            "svg": row.svg,
        }


def save_snapshot(
    store: StoreEngine,
    *,
    month: str,
    as_of: str,
    source: str,
    digest: str,
    content: str,
    patients: int,
    panels: int,
) -> None:
    """Store (or replace) the month's snapshot."""
    with store.session() as s:
        row = s.get(MonthlySnapshot, month)
        if row is None:
            row = MonthlySnapshot(month=month)
            s.add(row)
        row.as_of, row.source, row.digest = as_of, source[:512], digest
        row.content, row.patients, row.panels = content, patients, panels
        row.created_at = now_utc()


def _summary(row: MonthlySnapshot) -> dict[str, Any]:
    return {
        "month": row.month,
        "as_of": row.as_of,
        "source": row.source,
        "digest": row.digest,
        "patients": row.patients,
        "panels": row.panels,
        "created_at": iso(row.created_at),
    }


def get_snapshot(store: StoreEngine, month: str) -> dict[str, Any] | None:
    """The month's snapshot: its summary and `content` (the canonical JSON text); None."""
    with store.session() as s:
        row = s.get(MonthlySnapshot, month)
        return None if row is None else {**_summary(row), "content": row.content}


def list_snapshots(store: StoreEngine) -> list[dict[str, Any]]:
    """Every stored month's summary, newest month first."""
    with store.session() as s:
        rows = s.scalars(select(MonthlySnapshot).order_by(MonthlySnapshot.month.desc()))
        return [_summary(r) for r in rows]
