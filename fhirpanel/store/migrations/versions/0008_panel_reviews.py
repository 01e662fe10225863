"""Panel reviews (fhirpanel issue 17 item 6): who reviewed a clinician's panel, when, and how
many of its patients were confirmed, moved and removed since the review before.

Revision ID: 0008
Revises: 0007 (the lead rechains it onto 0007 when both are merged)
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "panel_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practitioner", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("moved", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_panel_reviews")),
    )
    with op.batch_alter_table("panel_reviews", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_panel_reviews_practitioner"), ["practitioner"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("panel_reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_panel_reviews_practitioner"))
    op.drop_table("panel_reviews")
