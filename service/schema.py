"""Schema versions of the job store: upgrade, downgrade, and the start-up check.

Alembic is the only way the schema changes; the API and the workers refuse to start on
a database that is not at the newest revision and say which command to run.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[1]
UPGRADE_COMMAND = "regbench db upgrade"


class SchemaOutdatedError(RuntimeError):
    """The job store is not at the newest migration."""


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = url
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None, "migrations/versions holds no migration"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def assert_schema_current(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "has no regbench schema" if current is None else f"is at revision {current}"
        raise SchemaOutdatedError(
            f"the job store {engine.url.render_as_string(hide_password=True)} {state}, "
            f"the code needs {head}: run `{UPGRADE_COMMAND}` (same REGBENCH_* settings)"
        )
