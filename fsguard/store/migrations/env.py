"""Alembic environment bound to fsguard's models and settings.

``fsguard db upgrade`` passes its own connection in ``config.attributes["connection"]``; the plain
``alembic`` command (run from a checkout) reads the database URL from fsguard's settings.
No ``fileConfig()``: fsguard's logging is configured by fsguard.
"""

from alembic import context

from fsguard.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    from fsguard.config import load_settings
    from fsguard.store.db import Database

    db = Database(load_settings().database)
    with db.engine.begin() as conn:
        run_with(conn)
    db.dispose()


def run_migrations_offline() -> None:
    from fsguard.config import load_settings
    from fsguard.store.db import normalise_url

    context.configure(url=normalise_url(load_settings().database.url), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
