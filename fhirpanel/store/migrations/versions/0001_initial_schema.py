"""The initial schema: runs, watermarks, locks, patients and their history, clinicians, context,
overrides, confirmations, audit, pending patients and the write-back ledger.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_patient"), ["patient"], unique=False)

    op.create_table(
        "clinicians",
        sa.Column("practitioner", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("pediatric", sa.Boolean(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("risk_adjusted_size", sa.Float(), nullable=False),
        sa.Column("hcc_adjusted_size", sa.Float(), nullable=True),
        sa.Column("capacity", sa.Float(), nullable=False),
        sa.Column("open_capacity", sa.Float(), nullable=False),
        sa.Column("tiers", sa.JSON(), nullable=False),
        sa.Column("unconfirmed", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("practitioner", name=op.f("pk_clinicians")),
    )
    op.create_table(
        "confirmations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("practitioner", sa.String(length=128), nullable=False),
        sa.Column("confirmed_by", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_confirmations")),
    )
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_confirmations_patient"), ["patient"], unique=False)

    op.create_table(
        "locks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_locks")),
    )
    op.create_table(
        "pending_patients",
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient", name=op.f("pk_pending_patients")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("as_of", sa.String(length=10), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("watermark_before", sa.String(length=40), nullable=True),
        sa.Column("watermark_after", sa.String(length=40), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)

    op.create_table(
        "assignment_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("practitioner", sa.String(length=128), nullable=True),
        sa.Column("rule", sa.String(length=32), nullable=True),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_assignment_history_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignment_history")),
    )
    with op.batch_alter_table("assignment_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_assignment_history_patient"), ["patient"], unique=False
        )

    op.create_table(
        "context",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_context_run_id_runs")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_context")),
    )
    op.create_table(
        "overrides",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("practitioner", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed_by", sa.String(length=128), nullable=True),
        sa.Column("applied_run", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["applied_run"], ["runs.id"], name=op.f("fk_overrides_applied_run_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_overrides")),
    )
    with op.batch_alter_table("overrides", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_overrides_patient"), ["patient"], unique=False)

    op.create_table(
        "patients",
        sa.Column("patient", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("practitioner", sa.String(length=128), nullable=True),
        sa.Column("rule", sa.String(length=32), nullable=True),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("tier", sa.Integer(), nullable=True),
        sa.Column("charlson", sa.Integer(), nullable=True),
        sa.Column("hcc", sa.Float(), nullable=True),
        sa.Column("ccm_eligible", sa.Boolean(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("last_visit", sa.String(length=10), nullable=True),
        sa.Column("confirmation", sa.String(length=16), nullable=False),
        sa.Column("override", sa.Boolean(), nullable=False),
        sa.Column("outreach", sa.JSON(), nullable=False),
        sa.Column("suggested", sa.String(length=128), nullable=True),
        sa.Column("suggestion_reason", sa.String(length=256), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_patients_run_id_runs")),
        sa.PrimaryKeyConstraint("patient", name=op.f("pk_patients")),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patients_practitioner"), ["practitioner"], unique=False
        )
        batch_op.create_index(
            "ix_patients_practitioner_tier", ["practitioner", "tier"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_patients_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_patients_tier"), ["tier"], unique=False)

    op.create_table(
        "watermarks",
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("value", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_watermarks_run_id_runs")),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_watermarks")),
    )
    op.create_table(
        "writeback_ledger",
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("identifier", sa.String(length=256), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.LargeBinary(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_writeback_ledger_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("rtype", "identifier", name=op.f("pk_writeback_ledger")),
    )


def downgrade() -> None:
    op.drop_table("writeback_ledger")
    op.drop_table("watermarks")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_tier"))
        batch_op.drop_index(batch_op.f("ix_patients_status"))
        batch_op.drop_index("ix_patients_practitioner_tier")
        batch_op.drop_index(batch_op.f("ix_patients_practitioner"))

    op.drop_table("patients")
    with op.batch_alter_table("overrides", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_overrides_patient"))

    op.drop_table("overrides")
    op.drop_table("context")
    with op.batch_alter_table("assignment_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assignment_history_patient"))

    op.drop_table("assignment_history")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_status"))

    op.drop_table("runs")
    op.drop_table("pending_patients")
    op.drop_table("locks")
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_confirmations_patient"))

    op.drop_table("confirmations")
    op.drop_table("clinicians")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_patient"))
        batch_op.drop_index(batch_op.f("ix_audit_at"))

    op.drop_table("audit")
