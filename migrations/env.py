"""Alembic environment: the URL comes from regbench's settings (or ``-x url=...``)."""

from __future__ import annotations

from alembic import context

from service.db import make_engine
from service.settings import Settings
from service.tables import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    override = context.get_x_argument(as_dictionary=True).get("url")
    return override or config.attributes.get("url") or Settings().job_store_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    with engine.connect() as connection:
        # render_as_batch: SQLite alters tables by copying them
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
