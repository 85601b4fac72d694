"""users and owners

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:45:00.000000

A ``users`` table (a name, the sha256 of the user's token, an admin flag). Sweeps are
deduplicated per owner: the unique ``sweep_hash`` becomes unique ``(owner, sweep_hash)``,
so the same grid submitted by two users is two sweeps sharing their experiments. Owners
are indexed (the per-user queue limit counts by owner). Rows recorded before keep their
owner, "anonymous", which only an admin may cancel once users exist.

Downgrading fails if two owners hold the same sweep (the old unique index forbids it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# 0001 left the unique constraint on sweeps.sweep_hash unnamed: PostgreSQL named it
# sweeps_sweep_hash_key; SQLite keeps no name, so batch mode gets one from this convention.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_name() -> str:
    postgresql = op.get_context().dialect.name == "postgresql"
    return "sweeps_sweep_hash_key" if postgresql else "uq_sweeps_sweep_hash"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("sweeps", naming_convention=_SQLITE_NAMES) as batch_op:
        batch_op.drop_constraint(_old_unique_name(), type_="unique")
        batch_op.create_unique_constraint("uq_sweeps_owner_sweep_hash", ["owner", "sweep_hash"])
        batch_op.create_index(batch_op.f("ix_sweeps_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_sweep_hash"), ["sweep_hash"], unique=False)
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiments_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiments_owner"))
    with op.batch_alter_table("sweeps", naming_convention=_SQLITE_NAMES) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeps_sweep_hash"))
        batch_op.drop_index(batch_op.f("ix_sweeps_owner"))
        batch_op.drop_constraint("uq_sweeps_owner_sweep_hash", type_="unique")
        batch_op.create_unique_constraint(_old_unique_name(), ["sweep_hash"])
    op.drop_table("users")
