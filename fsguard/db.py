"""Engine and sessions for SQLite (one node, the default) and PostgreSQL (production, several nodes).

Sessions are short (``with db.begin() as session:``) and never held across a playback or a
digit wait: a call that waits for a caller must not hold a pooled connection.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fsguard.config import DatabaseSettings

__all__ = ["Database", "DatabaseError", "normalise_url"]

#: what a stage sees when the database is down or too slow; the pipeline fails open on it
DatabaseError = SQLAlchemyError


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (it cooperates with gevent by itself)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    """The engine and a session factory; one per process."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.url = make_url(normalise_url(settings.url))
        self.engine: Engine = self._make_engine()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def _make_engine(self) -> Engine:
        s = self.settings
        if self.is_sqlite:
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(self.url, pool_size=s.pool_size, max_overflow=0, pool_timeout=s.pool_timeout,
                                   connect_args={"check_same_thread": False, "timeout": s.statement_timeout})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute(f"PRAGMA busy_timeout={int(s.statement_timeout * 1000)}")
                cur.close()

            return engine
        connect_args: dict[str, Any] = {}
        if self.url.get_backend_name() == "postgresql":
            connect_args = {"connect_timeout": max(1, int(s.pool_timeout)),
                            "options": f"-c statement_timeout={int(s.statement_timeout * 1000)}"}
        # No pool_pre_ping: it is a round trip on every checkout, three or four per call. A
        # connection PostgreSQL dropped (a restart) fails the one statement that meets it, that
        # stage fails open, and SQLAlchemy then recycles every connection of the pool at once.
        return create_engine(self.url, pool_size=s.pool_size, max_overflow=s.pool_size // 2,
                             pool_timeout=s.pool_timeout, connect_args=connect_args)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction, committed on success, rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def autocommit(self) -> Iterator[Session]:
        """A session whose statements each commit on their own, for the hot path.

        A call's lookups and single-statement writes (an upsert, an INSERT ... RETURNING) need no
        transaction around them; on PostgreSQL BEGIN and COMMIT would be two more round trips
        for each of them, on the call's way to the queue. Anything that must be atomic across
        statements uses :meth:`begin`.
        """
        with self.engine.connect() as conn:
            with Session(bind=conn.execution_options(isolation_level="AUTOCOMMIT"),
                         expire_on_commit=False) as session:
                yield session

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def dispose(self) -> None:
        self.engine.dispose()
