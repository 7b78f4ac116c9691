"""Engine and sessions for SQLite (one node, the default) and PostgreSQL (production, several nodes).

Sessions are short (``with db.begin() as session:``) and never held across a playback or a
digit wait: a call that waits for a caller must not hold a pooled connection.

SQLite runs in fsguard's one thread, so two things that SQLite does in C must not happen there:

* **waiting for a lock.** SQLite's busy timeout sleeps in C: while another process held the
  database (``BEGIN EXCLUSIVE``, a backup, ``fsguard lists import``), every call froze with it.
  Here SQLite's own busy timeout is 0 and a statement that finds the database busy is retried
  from Python, sleeping with ``gevent.sleep`` between tries (1 ms, doubling to 50 ms) for up to
  ``database.statement_timeout``: the other calls go on, and the waiting call fails open.
* **touching files that refuse writes.** In WAL mode every connection maps the ``-shm`` file and
  writes to it even to read; if that file becomes immutable or read-only (``chattr +i``, a
  read-only remount) the next write to the mapping is a SIGBUS that kills the process, and a
  connection opened then is read-only for good. Here every statement, and every new connection,
  first checks that the database files can be written (``os.access``: two system calls); while
  they cannot, nothing touches SQLite, statements fail at once (calls fail open, the call writer
  keeps its rows and retries), :meth:`Database.ping` says not ready, and once the files can be
  written again everything works again by itself - the connections never went read-only.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import gevent
import gevent.event
import structlog
from sqlalchemy import Connection, Engine, TextClause, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fsguard.config import DatabaseSettings

__all__ = ["Database", "DatabaseError", "normalise_url"]

log = structlog.get_logger("fsguard.store.db")

#: what a stage sees when the database is down or too slow; the pipeline fails open on it
DatabaseError = SQLAlchemyError

#: SQLite result codes (sqlite3 exceptions carry them as ``sqlite_errorcode``)
SQLITE_BUSY, SQLITE_BUSY_RECOVERY = 5, 261
#: PostgreSQL's "cannot execute INSERT in a read-only transaction"
READ_ONLY_SQL_TRANSACTION = "25006"


def files_writable(path: str) -> bool:
    """Whether SQLite can write the database file and its WAL and shared-memory files.

    ``os.access`` sees what SQLite would meet: mode bits, the immutable flag (even for root), a
    read-only mount. A file that does not exist yet is SQLite's to create."""
    for name in (path, path + "-wal", path + "-shm"):
        if not os.access(name, os.W_OK) and os.path.exists(name):
            return False
    return True


def _refuse(path: str) -> sqlite3.OperationalError:
    return sqlite3.OperationalError(f"attempt to write a readonly database: {path} (or its -wal/-shm) "
                                    "cannot be written; nothing was done")


#: statements that only set a flag of the connection and touch no file: let through whatever the
#: files' state (SQLAlchemy resets the isolation level with one when a connection is returned)
_FLAG_PRAGMAS = ("PRAGMA read_uncommitted", "PRAGMA busy_timeout", "PRAGMA foreign_keys", "PRAGMA synchronous",
                 "PRAGMA wal_autocheckpoint", "PRAGMA journal_size_limit")


class GreenCursor(sqlite3.Cursor):
    """A cursor whose statements wait for a busy database cooperatively and never touch
    files that refuse writes (see the module docstring)."""

    connection: GreenConnection

    def execute(self, sql: str, parameters: Any = (), /) -> GreenCursor:  # type: ignore[override]
        if sql.startswith(_FLAG_PRAGMAS):
            return super().execute(sql, parameters)  # type: ignore[no-any-return]
        return self.connection._retry(super().execute, sql, parameters)  # type: ignore[no-any-return]

    def executemany(self, sql: str, seq: Any, /) -> GreenCursor:  # type: ignore[override]
        return self.connection._retry(super().executemany, sql, seq)  # type: ignore[no-any-return]


class GreenConnection(sqlite3.Connection):
    """``sqlite3.connect(..., factory=GreenConnection)``: connections of the engine's pool."""

    #: seconds a statement waits for a busy database (database.statement_timeout)
    busy_wait = 2.0

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        self.path = str(database)
        self.checks = self.path not in ("", ":memory:") and not self.path.startswith("file:")
        if self.checks and not files_writable(self.path):
            raise _refuse(self.path)   # a connection opened now would be read-only for good
        super().__init__(database, *args, **kwargs)

    def cursor(self, factory: Any = GreenCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def commit(self) -> None:
        self._retry(super().commit)

    def _retry(self, run: Any, *args: Any) -> Any:
        deadline: float | None = None
        delay = 0.001
        while True:
            if self.checks and not files_writable(self.path):
                raise _refuse(self.path)
            try:
                return run(*args)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in (SQLITE_BUSY, SQLITE_BUSY_RECOVERY):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.busy_wait
                if now >= deadline:
                    raise
                gevent.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.05)


@lru_cache(maxsize=64)
def _driver_form(stmt: TextClause, dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
    """A text statement as its driver takes it: the SQL in the driver's parameter style, and the
    order of the parameters when that style is positional (compiled once per statement)."""
    compiled = stmt.compile(dialect=dialect)
    return compiled.string, tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None


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
        self.checkpointer: gevent.Greenlet | None = None
        #: SQLite: the engine's connection kept for :meth:`statement`, with the engine it came from
        self._statements: tuple[Engine, Any] | None = None
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
            factory = type("GreenConnection", (GreenConnection,), {"busy_wait": s.statement_timeout})
            # SQLite's own busy timeout is 0: GreenConnection waits for a busy database off the hub
            engine = create_engine(self.url, pool_size=s.pool_size, max_overflow=0, pool_timeout=s.pool_timeout,
                                   connect_args={"check_same_thread": False, "timeout": 0, "factory": factory})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                if self.checkpointer is not None:
                    cur.execute("PRAGMA wal_autocheckpoint=0")   # the checkpointer's thread does it
                # a log restarted after a burst is cut back to this size, not kept at its largest
                cur.execute("PRAGMA journal_size_limit=67108864")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=0")
                cur.close()

            return engine
        connect_args: dict[str, Any] = {}
        if self.url.get_backend_name() == "postgresql":
            connect_args = {"connect_timeout": max(1, int(s.pool_timeout)),
                            "options": f"-c statement_timeout={int(s.statement_timeout * 1000)}"}
        # No pool_pre_ping: it is a round trip on every checkout, three or four per call. A
        # connection PostgreSQL dropped (a restart) fails the one statement that meets it, that
        # stage fails open, and SQLAlchemy then recycles every connection of the pool at once.
        engine = create_engine(self.url, pool_size=s.pool_size, max_overflow=s.pool_size // 2,
                               pool_timeout=s.pool_timeout, connect_args=connect_args)

        @event.listens_for(engine, "handle_error")
        def _read_only(context: Any) -> None:
            # A session that started read-only (default_transaction_read_only, a standby promoted
            # since) stays so: such connections are recycled like dropped ones, and the pool's
            # next connections see the database as it is now.
            if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_SQL_TRANSACTION:
                context.is_disconnect = True

        return engine

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction, committed on success, rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose statements each commit on their own.

        No BEGIN and COMMIT around each statement (two more round trips on PostgreSQL). The
        calls' own single statements take the shorter way still, :meth:`statement`; anything
        that must be atomic across statements uses :meth:`begin`.
        """
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def statement(self, stmt: TextClause, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement in a transaction of its own and return its rows: the calls' hot path.

        The flood counter's upsert runs on every call. Through a SQLAlchemy connection it cost
        250 us on SQLite, 200 of them SQLAlchemy's own (the connection and result objects, the
        isolation level set for autocommit and reset by a PRAGMA at check-in); on the pooled
        DB-API connection, in autocommit, it costs 45 (on SQLite, one connection kept for it:
        :meth:`_sqlite_statement`). The busy waits and the refusal of files that cannot be
        written (GreenConnection) are the same; errors are SQLAlchemy's, as from
        :meth:`autocommit`, and a connection PostgreSQL dropped recycles the pool as there.
        """
        sql, names = _driver_form(stmt, self.engine.dialect)
        values: Any = tuple(params[n] for n in names) if names is not None else params
        if self.is_sqlite:
            return self._sqlite_statement(sql, values)
        raw = self.engine.raw_connection()
        driver = raw.driver_connection
        cursor = None
        try:
            # autocommit: the statement commits itself (one round trip, not BEGIN and COMMIT too)
            driver.autocommit = True
            cursor = raw.cursor()
            cursor.execute(sql, values)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        except self.engine.dialect.loaded_dbapi.Error as exc:
            dialect = self.engine.dialect
            gone = (dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
                    or getattr(exc, "sqlstate", None) == READ_ONLY_SQL_TRANSACTION)
            if gone:
                # as SQLAlchemy does on a disconnect: every older connection of the pool is
                # recycled at its next check-out, this one at once
                self.engine.pool._invalidate(raw, exc)
            raise DBAPIError.instance(sql, values, exc, dialect.loaded_dbapi.Error,
                                      connection_invalidated=gone, dialect=dialect) from exc
        finally:
            try:
                if cursor is not None:
                    cursor.close()
                if raw.is_valid:
                    driver.autocommit = False   # as the pool's other users expect it
            except Exception as exc:  # noqa: BLE001 - a broken connection: the pool must not hand it out
                raw.invalidate(exc)
            raw.close()

    def _sqlite_statement(self, sql: str, values: Any) -> list[tuple[Any, ...]]:
        """:meth:`statement` on SQLite: on one connection of the engine's, kept out of its pool.

        SQLite runs in the process, so a statement runs whole on the one thread every call
        shares: the calls never need two such connections at once, and checking one out of the
        pool and back cost 130 us of CPU per statement through the switch, as much as the
        statement. It is a GreenConnection like the pool's (busy waits off the hub, refusal of
        files that cannot be written), in autocommit; another engine (a test pointing the
        database elsewhere) gets a connection of its own."""
        held = self._statements
        if held is None or held[0] is not self.engine:
            self._close_statements()
            raw = self.engine.raw_connection()
            raw.detach()   # its own from now on: the pool neither counts nor resets it
            raw.dbapi_connection.isolation_level = None
            held = self._statements = (self.engine, raw)
        driver = held[1].dbapi_connection
        cursor = driver.cursor()
        try:
            cursor.execute(sql, values)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        except sqlite3.Error as exc:
            dialect = self.engine.dialect
            gone = dialect.is_disconnect(exc, driver, cursor)
            if gone:
                self._close_statements()
            raise DBAPIError.instance(sql, values, exc, sqlite3.Error, connection_invalidated=gone,
                                      dialect=dialect) from exc
        finally:
            cursor.close()

    def _close_statements(self) -> None:
        held, self._statements = self._statements, None
        if held is not None:
            try:
                held[1].close()
            except Exception as exc:  # noqa: BLE001 - a connection that cannot even close is gone anyway
                log.warning("db.close_failed", error=str(exc))

    def start_checkpointer(self, interval: float = 1.0) -> None:
        """SQLite only: move WAL checkpoints off the calls' way.

        By default the commit that fills the write-ahead log past 1,000 pages copies it back into
        the database file and syncs it, inside that commit: a few milliseconds in which the one
        thread serving every call does nothing else (at 100 calls a second, the 1 % slowest
        decisions). In a server the connections stop checkpointing; a greenlet asks for a
        passive checkpoint every ``interval`` seconds on a connection of its own, run in a
        thread (SQLite releases the GIL), while the calls go on writing.
        """
        if not self.is_sqlite or self.checkpointer is not None or not self.url.database \
                or self.url.database == ":memory:":
            return
        self._stop_checkpoints = gevent.event.Event()
        self.checkpointer = gevent.spawn(self._checkpoint_loop, self.url.database, interval, self._stop_checkpoints)
        self._close_statements()
        self.engine.dispose()   # pooled connections reconnect without their own checkpoints

    def stop_checkpointer(self) -> None:
        """Stop after the checkpoint under way, if any (never killed mid-way: its thread would
        go on using a connection the greenlet closed)."""
        if self.checkpointer is not None:
            self._stop_checkpoints.set()
            self.checkpointer.join(timeout=10)
            self.checkpointer = None
            self._close_statements()
            self.engine.dispose()   # the last connection to close checkpoints what is left

    @staticmethod
    def _checkpoint_loop(path: str, interval: float, stop: gevent.event.Event) -> None:
        hub = gevent.get_hub()
        conn: sqlite3.Connection | None = None
        refused = False
        while not stop.wait(interval):
            if not files_writable(path):
                # a checkpoint writes the -shm mapping: on a file that refuses writes that is a
                # SIGBUS. Wait (and keep the connection: closing it would checkpoint too).
                if not refused:
                    log.warning("db.checkpoint_paused", reason="the database files cannot be written")
                refused = True
                continue
            if refused:
                log.info("db.checkpoint_resumed")
                refused = False
            try:
                if conn is None:
                    conn = sqlite3.connect(path, check_same_thread=False, timeout=0)
                # the bulk (copying the pages, syncing the file) in a thread, off the calls' way
                hub.threadpool.apply(conn.execute, ("PRAGMA wal_checkpoint(PASSIVE)",))
                # then, on the hub, the few frames the calls wrote meanwhile: nothing can be written
                # during this one, so it finishes the log, and the next write starts the log
                # afresh. Without it the checkpoint never catches up with a steady load and the
                # log grows without bound (2 GB in six minutes at 300 calls a second).
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("db.checkpoint_failed", error=str(exc))
                if conn is not None and files_writable(path):
                    conn.close()   # opened read-only, or broken: a fresh one next time
                    conn = None
        # only here, never in a finally: a greenlet killed while its thread checkpoints must not
        # close the connection under that thread (the garbage collector closes it later)
        if conn is not None and files_writable(path):
            conn.close()

    def writable(self) -> bool:
        """Whether SQLite's files accept writes (PostgreSQL: see :meth:`ping`)."""
        database = self.url.database or ""
        if not self.is_sqlite or database in ("", ":memory:"):
            return True
        return files_writable(database)

    def ping(self) -> bool:
        """Ready for calls: the database answers and accepts writes (SQLite: its files can be
        written; PostgreSQL: the session is not read-only, as on a standby or with
        ``default_transaction_read_only``)."""
        if not self.writable():
            return False
        try:
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    conn.execute(text("SELECT 1"))
                    return True
                if conn.execute(text("SELECT current_setting('transaction_read_only')")).scalar() == "off":
                    return True
                conn.invalidate()   # a read-only session: the next one sees whether that changed
                return False
        except SQLAlchemyError:
            return False

    def dispose(self) -> None:
        self._close_statements()
        self.engine.dispose()
