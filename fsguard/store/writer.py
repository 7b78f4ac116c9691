"""The call writer: what calls leave behind is written by one greenlet, in group commits.

A call's greenlet hands its rows over (the decision once FreeSWITCH has its instruction, the end
at hang-up, the recording's closing facts) and goes on; the writer takes whatever has piled up
since its last commit and writes it in one transaction, one statement per kind of row (an
``executemany``). At ten calls a second that is a commit per row, as before; at three hundred
it is one commit for dozens of calls, which is what lets the database keep up with the switch.

Nothing is dropped quietly:

* the database unreachable (connection refused, server restarting): the batch is kept and
  retried with backoff for ``database.write_retry_seconds``; a row still unwritten after that is
  logged whole (``db.write_abandoned``, with its values) so that an operator can replay it;
* one bad row (a constraint): the batch is retried row by row so the others are written, and the
  bad one is logged (``db.write_failed``);
* shutdown: :meth:`Writer.close` writes what is queued before the process exits.

A call's greenlet waits (bounded) for its last rows to be committed before it closes the socket,
so a call that FreeSWITCH sees ended is a call an operator can look up.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent
import gevent.event
import structlog
from sqlalchemy import Table, bindparam, delete, insert, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from fsguard.store.db import Database

log = structlog.get_logger("fsguard.store.writer")


def _insert(table: Table) -> Callable[[], Any]:
    return lambda: insert(table)


def _update(table: Table, key: str) -> Callable[[], Any]:
    """``UPDATE table SET <the row's other keys> WHERE key = :_key``."""
    return lambda: update(table).where(table.c[key] == bindparam("_key"))


def _delete(table: Table, key: str) -> Callable[[], Any]:
    return lambda: delete(table).where(table.c[key] == bindparam("_key"))


@dataclass
class Ticket:
    """A row handed to the writer; ``wait`` returns True once it is committed."""

    kind: str
    row: dict[str, Any]
    queued_at: float = field(default_factory=time.monotonic)
    done: gevent.event.Event = field(default_factory=gevent.event.Event)
    ok: bool = False

    def wait(self, timeout: float | None = None) -> bool:
        self.done.wait(timeout)
        return self.ok


class Writer:
    """Group-commit writer for the rows calls leave behind. One per App."""

    def __init__(self, db: Database, *, retry_seconds: float = 30.0, max_batch: int = 500,
                 on_error: Callable[[], None] | None = None, gather_seconds: float = 0.0,
                 gather_rows: int = 64) -> None:
        self.db = db
        self.retry_seconds = retry_seconds
        #: how long rows gather after the writer wakes (database.write_gather_seconds): a commit
        #: costs the same for one call's rows as for a dozen calls'
        self.gather_seconds = gather_seconds
        self._last_commit = -1e9
        #: rows that end the gathering at once: a commit runs on the one thread every call shares
        #: and holds each of them up while it writes, so a batch stays small enough not to show in
        #: the decisions' latency (at 100 cps, 0.2 s of rows took fsguard's p99 from 10 to 18 ms
        #: as the simulated switch measures it); 64 rows are eight calls' decisions and ends
        self.gather_rows = gather_rows
        self.max_batch = max_batch
        self.on_error = on_error
        #: kind of row -> the statement run with ``executemany`` over a batch's rows of that kind.
        #: Kinds run in the order they were declared in (a call's row before its verdicts, both
        #: before the update at its end): rows of one call queued in order are written in order.
        self.statements: dict[str, Callable[[], Any]] = {}
        self._compiled: dict[str, Any] = {}
        self.queue: deque[Ticket] = deque()
        self._wake = gevent.event.Event()
        self._enough = gevent.event.Event()
        self._idle = gevent.event.Event()
        self._idle.set()
        self._greenlet: gevent.Greenlet | None = None
        self.closed = False
        #: counters for the metrics and the benchmark
        self.batches = 0
        self.rows_written = 0
        #: rows given up on (each logged whole as db.write_abandoned); fsguard_writer_abandoned
        self.abandoned = 0

    def declare(self, name: str, build: Callable[[], Any]) -> None:
        self.statements[name] = build

    def declare_insert(self, name: str, table: Table) -> None:
        self.declare(name, _insert(table))

    def declare_update(self, name: str, table: Table, key: str) -> None:
        self.declare(name, _update(table, key))

    def declare_delete(self, name: str, table: Table, key: str) -> None:
        self.declare(name, _delete(table, key))

    # ------------------------------------------------------------------ queueing

    def submit(self, kind: str, row: dict[str, Any]) -> Ticket:
        """Queue a row of a declared kind; returns at once."""
        if kind not in self.statements:
            raise KeyError(f"undeclared row kind {kind!r}")
        ticket = Ticket(kind, row)
        if self.closed:
            # after close (the very end of a shutdown): written on the spot, not queued
            self._one_by_one([ticket])
            return ticket
        self.queue.append(ticket)
        self._idle.clear()
        self._wake.set()
        if len(self.queue) >= self.gather_rows:
            self._enough.set()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        return ticket

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written (or given up on)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout`` seconds), then stop the writer greenlet."""
        if not self.wait_idle(timeout):
            log.error("db.writer_close_timeout", pending=len(self.queue))
            self._abandon(list(self.queue), "shutdown before the database took them")
            self.queue.clear()
        self.closed = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
            self._greenlet = None

    # ------------------------------------------------------------------ writing

    def _run(self) -> None:
        while True:
            if not self.queue:
                self._idle.set()
                self._wake.clear()
                self._wake.wait()
            # group commit: at most one commit per gather interval. A row after a quiet spell is
            # written at once; rows that come while commits are frequent wait for the interval to
            # end, or for gather_rows of them, and share the next one (a commit costs the same for
            # one call's rows as for many)
            wait = self._last_commit + self.gather_seconds - time.monotonic()
            if wait > 0 and len(self.queue) < self.gather_rows:
                self._enough.clear()
                self._enough.wait(wait)   # the interval's end, or enough rows for a batch
            else:
                # one turn of the loop: calls that are ready to hand rows over do so first
                gevent.idle()
            batch = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
            self._last_commit = time.monotonic()
            self._write_with_retry(batch)

    def _write_with_retry(self, batch: list[Ticket]) -> None:
        delay = 0.2
        while batch:
            try:
                self._write_batch(batch)
                return
            except DBAPIError as exc:
                if not _unreachable(exc):
                    self._one_by_one(batch)
                    return
                error = str(exc).splitlines()[0]
            except SQLAlchemyError as exc:   # the pool timing out, a closed engine...
                error = str(exc).splitlines()[0]
            if self.on_error:
                self.on_error()
            now = time.monotonic()
            expired = [t for t in batch if now - t.queued_at >= self.retry_seconds]
            if expired:
                self._abandon(expired, error)
                batch = [t for t in batch if now - t.queued_at < self.retry_seconds]
            log.warning("db.write_retry", rows=len(batch), error=error, retry_in=round(delay, 2))
            gevent.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _statement(self, kind: str) -> Any:
        stmt = self._compiled.get(kind)
        if stmt is None:
            stmt = self._compiled[kind] = self.statements[kind]()
        return stmt

    def _write_batch(self, batch: list[Ticket]) -> None:
        by_kind: dict[str, list[Ticket]] = {}
        for ticket in batch:
            by_kind.setdefault(ticket.kind, []).append(ticket)
        with self.db.engine.begin() as conn:
            for kind in self.statements:   # declaration order: a call's row before its verdicts
                tickets = by_kind.get(kind)
                if tickets:
                    conn.execute(self._statement(kind), [t.row for t in tickets])
        self.batches += 1
        self.rows_written += len(batch)
        for ticket in batch:
            ticket.ok = True
            ticket.done.set()

    def _one_by_one(self, batch: list[Ticket]) -> None:
        """A batch a row of which the database refuses: write the others, log the refused."""
        for ticket in batch:
            try:
                self._write_batch([ticket])
            except SQLAlchemyError as exc:
                if self.on_error:
                    self.on_error()
                log.error("db.write_failed", kind=ticket.kind, error=str(exc).splitlines()[0],
                          row=_printable(ticket.row))
                ticket.done.set()

    def _abandon(self, tickets: list[Ticket], error: str) -> None:
        self.abandoned += len(tickets)
        for ticket in tickets:
            log.error("db.write_abandoned", kind=ticket.kind, error=error, row=_printable(ticket.row),
                      waited_s=round(time.monotonic() - ticket.queued_at, 1))
            ticket.done.set()


def _unreachable(exc: DBAPIError) -> bool:
    """The database could not be reached (retry later), as opposed to refusing this data."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, OperationalError):
        text = str(exc.orig).lower()
        # SQLite's "database is locked" (another writer holds it past busy_timeout) is worth a retry;
        # its "no such table" (an unmigrated database) is not
        return "no such table" not in text and "no such column" not in text
    return False


def _printable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}
