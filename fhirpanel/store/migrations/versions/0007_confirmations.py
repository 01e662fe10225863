"""Two confirmations that expire, and proposed moves (issue 17, items 1 and 2).

- `confirmations`: how it was given (`method`), the day (`confirmed_on`), and its end
  (`ended_at`, `ended_by`, `ended_reason`). Older rows get `confirmed_on` from `created_at`
  and no method, so they stay valid and expire like the rest.
- `patients`: the day of the current clinician's newest confirmation by each side
  (`clinician_confirmed`, `patient_confirmed`), filled here from the confirmations that held.
- `proposed_moves`: moves a current confirmation held back, open until decided or superseded;
  at most one open per patient (a partial unique index).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CONFIRMATION_COLUMNS = (
    ("method", sa.String(length=16)),
    ("confirmed_on", sa.String(length=10)),
    ("ended_at", sa.DateTime(timezone=True)),
    ("ended_by", sa.String(length=128)),
    ("ended_reason", sa.String(length=64)),
)
PATIENT_COLUMNS = (
    ("clinician_confirmed", sa.String(length=10)),
    ("patient_confirmed", sa.String(length=10)),
)


def _day(value: Any) -> str | None:
    """A stored `created_at` (a datetime, or SQLite's text) as YYYY-MM-DD."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    return str(value)[:10] if value else None


def upgrade() -> None:
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        for name, type_ in CONFIRMATION_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("patients", schema=None) as batch_op:
        for name, type_ in PATIENT_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    op.create_table(
        "proposed_moves",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("from_practitioner", sa.String(length=128), nullable=False),
        sa.Column("to_practitioner", sa.String(length=128), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("window_months", sa.Integer(), nullable=True),
        sa.Column("visits", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("held_by", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("seen_run", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_proposed_moves_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proposed_moves")),
    )
    with op.batch_alter_table("proposed_moves", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_proposed_moves_patient"), ["patient"], unique=False)
        batch_op.create_index(batch_op.f("ix_proposed_moves_status"), ["status"], unique=False)
        batch_op.create_index(
            "uq_proposed_moves_open_patient",
            ["patient"],
            unique=True,
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )
    _backfill()


def _backfill() -> None:
    """Older confirmations: the day from `created_at`; and each patient's newest confirmation
    by each side that held for the current clinician (`patients.confirmation` named it)."""
    bind = op.get_bind()
    confirmations = sa.table(
        "confirmations",
        sa.column("id", sa.Integer()),
        sa.column("patient", sa.String()),
        sa.column("practitioner", sa.String()),
        sa.column("confirmed_by", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("confirmed_on", sa.String()),
    )
    patients = sa.table(
        "patients",
        sa.column("patient", sa.String()),
        sa.column("practitioner", sa.String()),
        sa.column("confirmation", sa.String()),
        sa.column("clinician_confirmed", sa.String()),
        sa.column("patient_confirmed", sa.String()),
    )
    rows = bind.execute(
        sa.select(
            confirmations.c.id,
            confirmations.c.patient,
            confirmations.c.practitioner,
            confirmations.c.confirmed_by,
            confirmations.c.created_at,
        ).order_by(confirmations.c.id)
    ).all()
    newest: dict[tuple[str, str, str], str] = {}
    for id_, patient, practitioner, by, created in rows:
        day = _day(created)
        bind.execute(
            sa.update(confirmations).where(confirmations.c.id == id_).values(confirmed_on=day)
        )
        if day:
            newest[(patient, practitioner, by)] = day
    current = bind.execute(
        sa.select(patients.c.patient, patients.c.practitioner, patients.c.confirmation).where(
            patients.c.confirmation.in_(("clinician", "patient"))
        )
    ).all()
    for patient, practitioner, summary in current:
        day = newest.get((patient, practitioner, summary))
        if day is None:
            continue
        column = "clinician_confirmed" if summary == "clinician" else "patient_confirmed"
        bind.execute(sa.update(patients).where(patients.c.patient == patient).values({column: day}))


def downgrade() -> None:
    with op.batch_alter_table("proposed_moves", schema=None) as batch_op:
        batch_op.drop_index("uq_proposed_moves_open_patient")
        batch_op.drop_index(batch_op.f("ix_proposed_moves_status"))
        batch_op.drop_index(batch_op.f("ix_proposed_moves_patient"))
    op.drop_table("proposed_moves")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        for name, _ in reversed(PATIENT_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        for name, _ in reversed(CONFIRMATION_COLUMNS):
            batch_op.drop_column(name)
