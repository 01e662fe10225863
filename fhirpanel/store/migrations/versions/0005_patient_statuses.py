"""Statuses a person records for a patient (moved away, transferred care, dismissed,
deceased), with who set and cleared them; at most one in force per patient (a partial unique
index, as for overrides).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_statuses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_statuses")),
    )
    with op.batch_alter_table("patient_statuses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patient_statuses_patient"), ["patient"], unique=False)
        batch_op.create_index(
            "uq_patient_statuses_active_patient",
            ["patient"],
            unique=True,
            sqlite_where=sa.text("cleared_at IS NULL"),
            postgresql_where=sa.text("cleared_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("patient_statuses", schema=None) as batch_op:
        batch_op.drop_index("uq_patient_statuses_active_patient")
        batch_op.drop_index(batch_op.f("ix_patient_statuses_patient"))
    op.drop_table("patient_statuses")
