"""The state store's tables (SQLAlchemy 2 declarative). Every change goes through an Alembic
migration in `fhirpanel/store/migrations/versions/`; `tests/integration/test_store.py` checks the
migrations and these models agree.

Times are stored as UTC. Patient and clinician columns hold `Type/id` references only: no names,
birth dates or other PHI are kept here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names: Alembic migrations (and SQLite batch mode) need them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

REF = 128  # a `Type/id` reference (FHIR ids are at most 64 characters)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    """One refresh (full or incremental), a `run --write`, or a refused attempt (status
    `skipped`)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # a vocabulary.RunKind
    trigger: Mapped[str] = mapped_column(String(16))  # cli | schedule | subscription | api
    source: Mapped[str] = mapped_column(String(512))
    as_of: Mapped[str] = mapped_column(String(10))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # a vocabulary.RunStatus: queued (for the worker) | running | succeeded | partial | failed |
    # held | accepted | skipped | crashed | abandoned
    status: Mapped[str] = mapped_column(String(16), index=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    watermark_before: Mapped[str | None] = mapped_column(String(40), nullable=True)
    watermark_after: Mapped[str | None] = mapped_column(String(40), nullable=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class Watermark(Base):
    """Per source: the newest server `meta.lastUpdated` processed and committed."""

    __tablename__ = "watermarks"

    source: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[str] = mapped_column(String(40))  # a FHIR instant as the server wrote it
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lock(Base):
    """A named lease: one refresh at a time across workers, the CLI and the API."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PatientState(Base):
    """The current assignment and risk of one patient, as the last run left it."""

    __tablename__ = "patients"

    patient: Mapped[str] = mapped_column(String(REF), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # assigned | unassigned | excluded
    practitioner: Mapped[str | None] = mapped_column(String(REF), nullable=True, index=True)
    rule: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    tier: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    charlson: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hcc: Mapped[float | None] = mapped_column(Float, nullable=True)
    ccm_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    weight: Mapped[float] = mapped_column(Float, default=1.0)  # age/sex weight (panel sizing)
    last_visit: Mapped[str | None] = mapped_column(String(10), nullable=True)
    # proposed | clinician | patient | both: the confirmations of the current clinician that
    # held on the last pass's as-of date (or were made since)
    confirmation: Mapped[str] = mapped_column(String(16), default="proposed")
    # The day (YYYY-MM-DD) of the newest confirmation of the current clinician by each side,
    # expired or not; cleared when the patient moves (migration 0007).
    clinician_confirmed: Mapped[str | None] = mapped_column(String(10), nullable=True)
    patient_confirmed: Mapped[str | None] = mapped_column(String(10), nullable=True)
    override: Mapped[bool] = mapped_column(Boolean, default=False)  # a manual assignment holds
    outreach: Mapped[list[str]] = mapped_column(JSON, default=list)  # reasons, empty if none
    suggested: Mapped[str | None] = mapped_column(String(REF), nullable=True)  # for unassigned
    suggestion_reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the report entry
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_patients_practitioner_tier", "practitioner", "tier"),
        # A panel's patients (practitioner, status) in id order: the API's panel pages.
        Index("ix_patients_practitioner_status", "practitioner", "status", "patient"),
    )


class AssignmentHistory(Base):
    """Who a patient was assigned to, from when to when, by which rule."""

    __tablename__ = "assignment_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient: Mapped[str] = mapped_column(String(REF), index=True)
    status: Mapped[str] = mapped_column(String(16))
    practitioner: Mapped[str | None] = mapped_column(String(REF), nullable=True)
    rule: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)


class Clinician(Base):
    """A clinician's panel as of the last run: size from the patients table, capacity and
    eligibility from the last full run."""

    __tablename__ = "clinicians"

    practitioner: Mapped[str] = mapped_column(String(REF), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)  # a clinician, not PHI
    eligible: Mapped[bool] = mapped_column(Boolean, default=True)
    pediatric: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(Integer, default=0)
    risk_adjusted_size: Mapped[float] = mapped_column(Float, default=0.0)
    hcc_adjusted_size: Mapped[float | None] = mapped_column(Float, nullable=True)
    capacity: Mapped[float] = mapped_column(Float, default=0.0)
    open_capacity: Mapped[float] = mapped_column(Float, default=0.0)
    tiers: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    unconfirmed: Mapped[int] = mapped_column(Integer, default=0)
    # Observed capacity and the panel against its peers (migration 0006), as the last full run
    # found them; an incremental pass leaves them alone.
    supply: Mapped[float | None] = mapped_column(Float, nullable=True)  # visits a year
    demand: Mapped[float | None] = mapped_column(Float, nullable=True)  # visits/patient/year
    expected_visits: Mapped[float | None] = mapped_column(Float, nullable=True)
    blended_size: Mapped[float | None] = mapped_column(Float, nullable=True)
    capacity_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    capacity_basis: Mapped[str | None] = mapped_column(String(256), nullable=True)
    relative: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Context(Base):
    """Population-level values an incremental pass reuses from the last full run (age/sex
    weights, the mean HCC score, the as-of date, the run report's summary)."""

    __tablename__ = "context"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)


class Override(Base):
    """A manual assignment asked for by a clinician, the patient or the family. Active while
    `removed_at` is empty; it outranks every pipeline step."""

    __tablename__ = "overrides"
    __table_args__ = (
        # At most one override in force per patient (migration 0003).
        Index(
            "uq_overrides_active_patient",
            "patient",
            unique=True,
            sqlite_where=text("removed_at IS NULL"),
            postgresql_where=text("removed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient: Mapped[str] = mapped_column(String(REF), index=True)
    practitioner: Mapped[str] = mapped_column(String(REF))
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(16))  # clinician | patient | family | staff
    actor: Mapped[str] = mapped_column(String(128))  # who entered it (a token's name)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    removed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    applied_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)


class PatientStatus(Base):
    """A status a person recorded for a patient (moved away, transferred care, dismissed,
    deceased): the patient leaves every panel while it is in force (`cleared_at` empty)."""

    __tablename__ = "patient_statuses"
    __table_args__ = (
        # At most one status in force per patient, as for overrides (migration 0005).
        Index(
            "uq_patient_statuses_active_patient",
            "patient",
            unique=True,
            sqlite_where=text("cleared_at IS NULL"),
            postgresql_where=text("cleared_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient: Mapped[str] = mapped_column(String(REF), index=True)
    status: Mapped[str] = mapped_column(String(32))  # a key of domain PERSON_STATUSES
    reason: Mapped[str] = mapped_column(Text, default="")  # why, in the person's words
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cleared_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Confirmation(Base):
    """An assignment confirmed with the clinician or with the patient (or family). It holds
    while the patient stays with the confirmed clinician, until it expires (`review.
    confirmation_months` after `confirmed_on`) or is ended (an accepted proposed move)."""

    __tablename__ = "confirmations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient: Mapped[str] = mapped_column(String(REF), index=True)
    practitioner: Mapped[str] = mapped_column(String(REF))
    confirmed_by: Mapped[str] = mapped_column(String(16))  # clinician | patient
    note: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Migration 0007: how (visit | portal | phone | letter | in-person; empty on older rows),
    # the day it was given (YYYY-MM-DD; may be before it was entered), and its end.
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    confirmed_on: Mapped[str | None] = mapped_column(String(10), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ended_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ProposedMove(Base):
    """A move the rules would make that a current confirmation held back (migration 0007):
    open until a person accepts it (an override to `to_practitioner`) or dismisses it, or a
    later pass no longer proposes it (superseded)."""

    __tablename__ = "proposed_moves"
    __table_args__ = (
        # At most one open move per patient.
        Index(
            "uq_proposed_moves_open_patient",
            "patient",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient: Mapped[str] = mapped_column(String(REF), index=True)
    from_practitioner: Mapped[str] = mapped_column(String(REF))
    to_practitioner: Mapped[str] = mapped_column(String(REF))
    rule: Mapped[str] = mapped_column(String(32))  # the rule that would have moved them
    step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    window_months: Mapped[int | None] = mapped_column(Integer, nullable=True)
    visits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)  # clinician -> visits
    evidence: Mapped[list[str]] = mapped_column(JSON, default=list)  # Encounter ids
    held_by: Mapped[str] = mapped_column(String(32))  # clinician, patient or clinician,patient
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | accepted | dismissed |
    #                                                               superseded
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)  # raised by
    seen_run: Mapped[int | None] = mapped_column(Integer, nullable=True)  # last proposed by
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


class AuditEntry(Base):
    """Every change a person made through the API or CLI."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    patient: Mapped[str | None] = mapped_column(String(REF), nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PendingPatient(Base):
    """A patient the next incremental pass must redo: an override or confirmation waiting to
    take effect, or a write that failed."""

    __tablename__ = "pending_patients"

    patient: Mapped[str] = mapped_column(String(REF), primary_key=True)
    reason: Mapped[str] = mapped_column(String(256))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    """The write-back ledger: what fhirpanel last wrote (or found unchanged) for each resource
    it manages, so an incremental pass can decide "unchanged" without reading it again."""

    __tablename__ = "writeback_ledger"

    rtype: Mapped[str] = mapped_column(String(32), primary_key=True)
    identifier: Mapped[str] = mapped_column(String(256), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    resource: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed JSON
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DashboardSession(Base):
    """A dashboard sign-in (migration 0004). The browser's signed cookie carries only the
    session id; this row says whose it is and whether it still holds, so signing out (or an
    expiry) ends it for every copy of the cookie and every gunicorn worker. The id is stored
    as its SHA-256: the table alone signs nobody in."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the id
    actor: Mapped[str] = mapped_column(String(128))  # the token's name
    token_fp: Mapped[str] = mapped_column(String(64))  # HMAC of the token it was made with
    via: Mapped[str] = mapped_column(String(16))  # token | link
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class LoginCode(Base):
    """A single-use sign-in link (`/login/once/<code>`, migration 0004): the code's SHA-256,
    whose account it signs in, until when, and when it was used (once)."""

    __tablename__ = "login_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PanelReview(Base):
    """A review of one clinician's panel (migration 0008): who, when, and what was done to its
    patients since the review before (`since`; None for the first): confirmations recorded,
    patients moved on or off by an override, patients removed by a status."""

    __tablename__ = "panel_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    practitioner: Mapped[str] = mapped_column(String(REF), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    patients: Mapped[int] = mapped_column(Integer, default=0)  # on the panel when reviewed
    confirmed: Mapped[int] = mapped_column(Integer, default=0)
    moved: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str] = mapped_column(Text, default="")


class ValidationRun(Base):
    """One `fhirpanel validate` (migration 0009): its statistics as JSON (docs/methods.md
    s.8.1) and the calibration plot's SVG, for the dashboard's Validation page and
    `/api/validation`. Aggregates only: no patient ids."""

    __tablename__ = "validation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    as_of: Mapped[str] = mapped_column(String(10))
    baseline: Mapped[str] = mapped_column(String(10))
    source: Mapped[str] = mapped_column(String(512))
    patients: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    svg: Mapped[str] = mapped_column(Text)


class MonthlySnapshot(Base):
    """A month's frozen panels, sizes and tiers (`fhirpanel snapshot`, migration 0009), one row
    per month: the canonical JSON exactly as written to the file, and its SHA-256."""

    __tablename__ = "monthly_snapshots"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    as_of: Mapped[str] = mapped_column(String(10))  # the month's last day
    source: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(64))
    patients: Mapped[int] = mapped_column(Integer)
    panels: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
