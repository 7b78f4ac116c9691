"""Run the alembic migrations from fsguard itself (``fsguard db upgrade``).

The scripts ship inside the package (``fsguard/store/migrations``: env.py, script.py.mako, versions/)
and are found with :mod:`importlib.resources`, so a checkout, an editable install, a wheel in a
virtualenv and ``pip install --user`` all migrate the same way (an earlier layout installed them
under ``sys.prefix``, which ``--user`` installs do not use).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from fsguard.store.db import Database

__all__ = ["CommandError", "check", "current", "downgrade", "head", "script_location", "upgrade"]


def script_location() -> Path:
    """The directory of the migration scripts inside the installed package."""
    location = resources.files("fsguard.store") / "migrations"
    path = Path(str(location))
    if not (path / "env.py").is_file():
        # a zipped install would need extracting first; fsguard is never installed that way
        raise FileNotFoundError(f"fsguard's migration scripts are missing from {path}")
    return path


def _config(connection: object | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate to ``revision``; an unknown revision raises CommandError before anything runs."""
    _known(revision)
    with db.engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def downgrade(db: Database, revision: str = "-1") -> None:
    """Step back to ``revision`` (``-1``: one migration; ``base``: an empty database)."""
    _known(revision)
    with db.engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def _known(revision: str) -> None:
    """Refuse a revision the scripts do not have (alembic's own errors for these are tracebacks
    from deep inside, or KeyErrors)."""
    if revision in ("head", "heads", "base") or revision.lstrip("+-").isdigit() and revision[:1] in "+-":
        return
    scripts = ScriptDirectory.from_config(_config())
    try:
        found = scripts.get_revision(revision)
    except Exception:   # noqa: BLE001 - alembic raises several kinds for an unknown or ambiguous id
        found = None
    if found is None:
        known = ", ".join(s.revision for s in reversed(list(scripts.walk_revisions())))
        raise CommandError(f"no migration {revision!r} (known: base, {known}, head)")


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def pending(db: Database) -> list[str]:
    """The migrations ``upgrade`` to head would run, oldest first."""
    scripts = ScriptDirectory.from_config(_config())
    now = current(db)
    return [s.revision for s in reversed(list(scripts.iterate_revisions("head", now or "base")))]


def check(db: Database) -> None:
    """Raise if the models and the migrations disagree (alembic check)."""
    with db.engine.connect() as conn:
        command.check(_config(conn))
