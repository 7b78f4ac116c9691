"""Run the alembic migrations from fsguard itself (``fsguard db upgrade``), from a checkout or
from an installed package (the scripts are installed under ``<prefix>/share/fsguard/alembic``)."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from fsguard.db import Database


def script_location() -> Path:
    """The migration scripts: the checkout's ``alembic/`` or the installed copy."""
    candidates = [Path(__file__).resolve().parent.parent / "alembic",
                  Path(sys.prefix) / "share" / "fsguard" / "alembic"]
    for path in candidates:
        if (path / "env.py").exists():
            return path
    raise FileNotFoundError("fsguard's migration scripts are not installed (looked in "
                            + ", ".join(str(p) for p in candidates) + ")")


def _config(connection: object | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    with db.engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def downgrade(db: Database, revision: str = "-1") -> None:
    with db.engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def check(db: Database) -> None:
    """Raise if the models and the migrations disagree (alembic check)."""
    with db.engine.connect() as conn:
        command.check(_config(conn))
