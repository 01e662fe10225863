"""The validation runs (`fhirpanel validate`: statistics and the calibration plot) and the
monthly snapshots (`fhirpanel snapshot`: one canonical JSON per month).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "validation_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("as_of", sa.String(length=10), nullable=False),
        sa.Column("baseline", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("svg", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validation_runs")),
    )
    op.create_table(
        "monthly_snapshots",
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("as_of", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("panels", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_monthly_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("monthly_snapshots")
    op.drop_table("validation_runs")
