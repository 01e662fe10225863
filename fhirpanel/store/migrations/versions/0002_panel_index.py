"""An index for a panel's patients: (practitioner, status, patient).

Without table statistics SQLite answered `practitioner = ? AND status = 'assigned'` through the
status index (most rows); this index serves the panel pages and their counts directly.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(
            "ix_patients_practitioner_status", ["practitioner", "status", "patient"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index("ix_patients_practitioner_status")
