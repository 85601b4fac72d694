"""experiment stack key

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 07:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Experiments recorded before this revision have none: they train on their own.
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stack_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_experiments_stack_key"), ["stack_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiments_stack_key"))
        batch_op.drop_column("stack_key")
