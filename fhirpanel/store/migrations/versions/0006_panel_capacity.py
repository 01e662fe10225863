"""A panel's observed capacity as the last full run found it: supply (visits a year), demand
(visits per patient a year), the expected visits, the blended size, how capacity was found
(`capacity_method`, `capacity_basis`) and the panel against its peers (`relative`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (
    ("supply", sa.Float()),
    ("demand", sa.Float()),
    ("expected_visits", sa.Float()),
    ("blended_size", sa.Float()),
    ("capacity_method", sa.String(length=16)),
    ("capacity_basis", sa.String(length=256)),
    ("relative", sa.JSON()),
)


def upgrade() -> None:
    with op.batch_alter_table("clinicians", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clinicians", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
