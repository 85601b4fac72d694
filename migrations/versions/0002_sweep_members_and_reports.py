"""sweep members and reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 16:06:57.336019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweep_experiments",
        sa.Column("sweep_id", sa.String(length=32), nullable=False),
        sa.Column("experiment_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("configuration", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"]),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"]),
        sa.PrimaryKeyConstraint("sweep_id", "experiment_id"),
    )
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sweep_experiments_experiment_id"), ["experiment_id"], unique=False
        )
    # Server defaults so that sweeps recorded before this revision get valid values.
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("size", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("report_status", sa.String(length=20), nullable=False, server_default="none")
        )
        batch_op.add_column(sa.Column("report_run_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("report_error", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("report_started_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("report_started_at")
        batch_op.drop_column("report_error")
        batch_op.drop_column("report_run_id")
        batch_op.drop_column("report_status")
        batch_op.drop_column("size")
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweep_experiments_experiment_id"))
    op.drop_table("sweep_experiments")
