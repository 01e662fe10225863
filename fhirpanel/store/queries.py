"""Read-side queries for the API and dashboard: paged patient lists, practice totals and the
figures `/metrics` exposes.

Every list is a count plus one LIMIT/OFFSET select ordered on indexed columns with the patient id
as tie-breaker, so a page costs the same on 300 patients as on 100,000; nothing loads a whole
table into Python. Lists read the per-patient `detail` JSON only for the rows of the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import Session

from fhirpanel.store.models import Clinician, Lock, Override, PatientState, PendingPatient, Run
from fhirpanel.store.repository import REFRESH_LOCK, Store, run_dict

# Columns a list row needs (the per-patient `detail` JSON is read separately, for a page).
LIST_COLUMNS = (
    PatientState.patient,
    PatientState.status,
    PatientState.practitioner,
    PatientState.rule,
    PatientState.step,
    PatientState.reason,
    PatientState.tier,
    PatientState.charlson,
    PatientState.hcc,
    PatientState.ccm_eligible,
    PatientState.last_visit,
    PatientState.confirmation,
    PatientState.override,
    PatientState.outreach,
    PatientState.suggested,
    PatientState.suggestion_reason,
    PatientState.weight,  # placement's share of capacity (jobs/rows.stored_suggestions)
)
SORTS: dict[str, tuple[Any, ...]] = {
    "patient": (PatientState.patient,),
    "tier": (PatientState.tier, PatientState.patient),
    "last_visit": (PatientState.last_visit, PatientState.patient),
    "rule": (PatientState.rule, PatientState.patient),
    "confirmation": (PatientState.confirmation, PatientState.patient),
}
SORT_VALUES = tuple(v for key in SORTS for v in (key, "-" + key))
OUTREACH_KINDS = ("not-seen", "no-sentinel")  # reasons look like `not-seen-12m`
DRIVER_KEYS = (
    "charlson_categories",
    "hccs",
    "chronic_conditions",
    "ed_visits",
    "inpatient_stays",
    "tier_rule",
)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def ordering(sort: str) -> list[Any]:
    """`tier`, `-tier`, ...: the first column in the asked direction (empty values last), then
    the patient id ascending so pages never overlap."""
    descending = sort.startswith("-")
    columns = SORTS.get(sort.lstrip("-"), SORTS["patient"])
    first = columns[0].desc() if descending else columns[0].asc()
    if columns[0] is not PatientState.patient:
        first = first.nulls_last()
    return [first, *columns[1:]]


def _page(
    store: Store,
    conditions: Sequence[Any],
    sort: str,
    page: int,
    page_size: int,
    *,
    clamp: bool,
    detail: bool,
) -> Page:
    """`clamp`: a page past the end gives the last page (the dashboard); otherwise it is empty
    (the API, whose links say where the pages are). `detail`: add each row's risk drivers,
    read for the page's rows only so the sort never carries the JSON."""
    page_size = max(1, page_size)
    with store.session() as s:
        total = int(
            s.scalar(select(func.count()).select_from(PatientState).where(*conditions)) or 0
        )
        page = max(1, page)
        if clamp:
            page = min(page, max(1, -(-total // page_size)))
        rows: list[dict[str, Any]] = []
        if (page - 1) * page_size < total:
            result = s.execute(
                select(*LIST_COLUMNS)
                .where(*conditions)
                .order_by(*ordering(sort))
                .limit(page_size)
                .offset((page - 1) * page_size)
            )
            rows = [dict(r) for r in result.mappings()]
        details: dict[str, Any] = {}
        if detail and rows:
            details = {
                p: d
                for p, d in s.execute(
                    select(PatientState.patient, PatientState.detail).where(
                        PatientState.patient.in_([r["patient"] for r in rows])
                    )
                )
            }
    for row in rows:
        row["outreach"] = list(row.get("outreach") or [])
        if detail:
            risk = (details.get(row["patient"]) or {}).get("risk") or {}
            row["drivers"] = {k: risk[k] for k in DRIVER_KEYS if k in risk}
    return Page(rows, total, page, page_size)


def _in_panel(practitioner: str) -> list[Any]:
    """A panel's patients: served by ix_patients_practitioner_status (migration 0002)."""
    return [PatientState.practitioner == practitioner, PatientState.status == "assigned"]


def has_outreach() -> Any:
    # json_array_length exists in SQLite (JSON1) and PostgreSQL (json type).
    return func.json_array_length(PatientState.outreach) > 0


def panel_patients(
    store: Store,
    practitioner: str,
    *,
    tier: int | None = None,
    unconfirmed: bool | str = False,
    overdue: bool = False,
    sort: str = "patient",
    page: int = 1,
    page_size: int = 50,
    clamp: bool = False,
    detail: bool = False,
) -> Page:
    """The assigned patients of one clinician. `overdue`: flagged for outreach.
    `unconfirmed`: True, no current confirmation; `clinician` or `patient`, no current
    confirmation by that side (as of the last pass's as-of date)."""
    conditions = _in_panel(practitioner)
    if tier is not None:
        conditions.append(PatientState.tier == tier)
    if unconfirmed in ("clinician", "patient"):
        conditions.append(PatientState.confirmation.not_in((str(unconfirmed), "both")))
    elif unconfirmed:
        conditions.append(PatientState.confirmation == "proposed")
    if overdue:
        conditions.append(has_outreach())
    return _page(store, conditions, sort, page, page_size, clamp=clamp, detail=detail)


def unassigned_patients(
    store: Store,
    *,
    tier: int | None = None,
    sort: str = "-tier",
    page: int = 1,
    page_size: int = 50,
    clamp: bool = False,
) -> Page:
    """Active patients no clinician qualified for, with the suggested clinician."""
    conditions: list[Any] = [PatientState.status == "unassigned"]
    if tier is not None:
        conditions.append(PatientState.tier == tier)
    return _page(store, conditions, sort, page, page_size, clamp=clamp, detail=False)


def outreach_patients(
    store: Store,
    *,
    practitioner: str | None = None,
    reason: str | None = None,
    sort: str = "-tier",
    page: int = 1,
    page_size: int = 50,
    clamp: bool = False,
) -> Page:
    """Assigned patients flagged for outreach; `reason` is `not-seen` or `no-sentinel`."""
    if practitioner:
        conditions = [*_in_panel(practitioner), has_outreach()]
    else:
        conditions = [PatientState.status == "assigned", has_outreach()]
    if reason:
        # The JSON text holds `"not-seen-12m"`: match the quoted prefix.
        conditions.append(cast(PatientState.outreach, String).like(f'%"{reason}-%'))
    return _page(store, conditions, sort, page, page_size, clamp=clamp, detail=False)


def practice_totals(store: Store) -> dict[str, int]:
    """Patients by status, unconfirmed assignments, overrides in force, patients queued."""
    with store.session() as s:
        return _practice_totals(s)


def _practice_totals(s: Session) -> dict[str, int]:
    by_status = {
        str(k): int(v)
        for k, v in s.execute(
            select(PatientState.status, func.count()).group_by(PatientState.status)
        )
    }
    # The clinicians table keeps each panel's unconfirmed count: no patient scan needed.
    unconfirmed = s.scalar(select(func.coalesce(func.sum(Clinician.unconfirmed), 0)))
    overrides = s.scalar(
        select(func.count()).select_from(Override).where(Override.removed_at.is_(None))
    )
    pending = s.scalar(select(func.count()).select_from(PendingPatient))
    return {
        "patients": sum(by_status.values()),
        "assigned": by_status.get("assigned", 0),
        "unassigned": by_status.get("unassigned", 0),
        "excluded": by_status.get("excluded", 0),
        "unconfirmed": int(unconfirmed or 0),
        "overrides": int(overrides or 0),
        "pending": int(pending or 0),
    }


def is_pending(store: Store, patient: str) -> bool:
    with store.session() as s:
        return s.get(PendingPatient, patient) is not None


# ---------------------------------------------------------------- figures for /metrics


@dataclass
class StoreFigures:
    """What one Prometheus scrape reads from the store (a handful of grouped counts)."""

    runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, status) → runs
    last_runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind → finished run
    totals: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)  # assigned patients per tier
    clinicians: int = 0
    lock_held: bool = False


FINISHED = ("succeeded", "partial", "failed")


def store_figures(store: Store) -> StoreFigures:
    figures = StoreFigures()
    with store.session() as s:
        for kind, status, n in s.execute(
            select(Run.kind, Run.status, func.count()).group_by(Run.kind, Run.status)
        ):
            figures.runs[(str(kind), str(status))] = int(n)
        for kind in sorted({k for k, _ in figures.runs}):
            row = s.scalars(
                select(Run)
                .where(Run.kind == kind, Run.status.in_(FINISHED))
                .order_by(Run.id.desc())
                .limit(1)
            ).first()
            if row is not None:
                figures.last_runs[kind] = run_dict(row)
        figures.totals = _practice_totals(s)
        # Each panel keeps its tier mix: summing the clinicians avoids a patient scan.
        for tiers in s.scalars(select(Clinician.tiers)):
            figures.clinicians += 1
            for tier, n in (tiers or {}).items():
                figures.tiers[str(tier)] = figures.tiers.get(str(tier), 0) + int(n)
        figures.lock_held = s.get(Lock, REFRESH_LOCK) is not None
    return figures
