"""predictions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 13:45:00.000000

A ``predictions`` table: each experiment's final predicted labels on the test split
(compact numpy bytes, their dtype and count, and the sha256 of the true test labels),
from which a sweep's results compute the instability of a configuration across seeds.
Experiments recorded before have none: their configurations report instability over the
members that do (or none).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("experiment_id", sa.String(length=32), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.Column("labels", sa.LargeBinary(), nullable=False),
        sa.Column("dtype", sa.String(length=8), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("labels_checksum", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"]),
        sa.PrimaryKeyConstraint("experiment_id", "split"),
    )


def downgrade() -> None:
    op.drop_table("predictions")
