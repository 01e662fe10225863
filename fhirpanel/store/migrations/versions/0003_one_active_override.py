"""At most one override in force per patient: a partial unique index on overrides(patient)
where removed_at is null. Two overrides saved at once (PostgreSQL lets both transactions
through the read-then-insert) now conflict, and the store retries the later one on top.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keep the newest override in force per patient, should a race have left two.
    op.execute(
        sa.text(
            "UPDATE overrides SET removed_at = created_at, removed_by = 'migration 0003' "
            "WHERE removed_at IS NULL AND id NOT IN ("
            "SELECT max(id) FROM overrides WHERE removed_at IS NULL GROUP BY patient)"
        )
    )
    with op.batch_alter_table("overrides", schema=None) as batch_op:
        batch_op.create_index(
            "uq_overrides_active_patient",
            ["patient"],
            unique=True,
            sqlite_where=sa.text("removed_at IS NULL"),
            postgresql_where=sa.text("removed_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("overrides", schema=None) as batch_op:
        batch_op.drop_index("uq_overrides_active_patient")
