"""The policy in process: calls are decided from memory, not from the database.

A decision used to ask the database for the caller's list entries, the customer owning the
number and (outbound) the freeze on the dialled number: three round trips more per call on
PostgreSQL, on the call's way to the queue. This snapshot holds all three in dictionaries, so the
only statement a decision still makes is the cluster-wide flood counter (an atomic
increment-and-read: it cannot be kept in one node's memory).

* **loaded** when the server starts (``serve`` fails with one line if it cannot be), or on first
  use by an App that never started a server (a replay, a test);
* **kept current** by a greenlet that reads ``policy_version`` once a second (one tiny SELECT, never
  on a call's way) and, when it moved, reloads only the keys written down in ``policy_changes``
  since (fsguard.rules.changes; a whole kind after an import). A change committed in this
  process through the same database is applied at once, after its commit;
* **bounded**: list entries are indexed by the stored number or prefix (a caller has at most 15
  prefixes to look up), as small slotted records sharing their repeated values. 100,000 entries
  take about 60 MB and load in about a second (docs/performance.rst);
* **never strands a call**: a refresh that fails keeps the last snapshot, logs
  ``policy.refresh_failed`` and counts ``fsguard_policy_refresh_failures``; ``/readyz`` says not
  ready once the snapshot is older than :data:`STALE_SECONDS`. A snapshot that could never be
  loaded raises :class:`PolicyUnavailable` (a database error), so the call takes the
  ``policy.on_error`` path like any database failure.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, NamedTuple

import gevent
import gevent.event
import gevent.lock
import structlog
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from fsguard.rules import changes, lists
from fsguard.rules.customers import CustomerInfo
from fsguard.rules.freeze import Freeze
from fsguard.store.db import Database
from fsguard.store.models.base import utcnow
from fsguard.store.models.customers import Customer, CustomerNumber
from fsguard.store.models.lists import ANY_DNIS, ListEntry
from fsguard.store.models.outbound import OutboundFreeze
from fsguard.store.writer import Writer

__all__ = ["Entry", "PolicySnapshot", "PolicyUnavailable", "POLL_SECONDS", "STALE_SECONDS"]

log = structlog.get_logger("fsguard.rules.snapshot")

#: how often a node reads policy_version
POLL_SECONDS = 1.0
#: a snapshot not confirmed current for this long makes /readyz say not ready
STALE_SECONDS = 10.0
#: keys reloaded per statement
_CHUNK = 500


class PolicyUnavailable(SQLAlchemyError):
    """The policy could not be loaded from the database (a database error: calls fail open or closed)."""


class Entry(NamedTuple):
    """A list entry held in memory: the columns of ListEntry, detached and small (a tuple)."""

    id: int | None
    number: str
    is_prefix: bool
    dnis: str
    kind: str
    level: int
    action: str | None
    reason: str
    source: str
    code: str
    added_by: str
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None

    @property
    def pattern(self) -> str:
        return f"{self.number}*" if self.is_prefix else self.number

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


_ENTRY_COLUMNS = [ListEntry.__table__.c[name] for name in Entry._fields]
_CUSTOMER_COLUMNS = (CustomerNumber.number, Customer.id, Customer.account_id, Customer.name, Customer.vip,
                     Customer.queue, Customer.agent, Customer.region)
_VERSION = text("SELECT version FROM policy_version WHERE id = 1")
_CHANGES = text("SELECT kind, key FROM policy_changes WHERE version > :after AND version <= :upto")


def _entry(r: Any, share: Callable[[Any, Any], Any]) -> Entry:
    """An Entry from a row of _ENTRY_COLUMNS; the text that repeats (a dialled number, a reason
    an import gave every row) is held once."""
    return Entry(r[0], r[1], r[2], share(r[3], r[3]), share(r[4], r[4]), r[5], share(r[6], r[6]), share(r[7], r[7]),
                 share(r[8], r[8]), share(r[9], r[9]), share(r[10], r[10]), r[11], r[12], r[13])


def _customer(row: Any) -> CustomerInfo:
    """As fsguard.rules.customers.find gives it: the number the caller called from only."""
    return CustomerInfo(id=row.id, account_id=row.account_id, name=row.name, vip=row.vip, queue=row.queue,
                        agent=row.agent, region=row.region, source="local", numbers=(row.number,))


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start:start + _CHUNK]


class PolicySnapshot:
    """List entries, customers and outbound freezes of one database, in memory (one per App)."""

    def __init__(self, db: Database, *, writer: Writer | None = None, poll_seconds: float = POLL_SECONDS,
                 on_refresh_failed: Callable[[], None] | None = None) -> None:
        self.db = db
        #: what the snapshot reads through. PostgreSQL: a one-connection engine of its own, so that a
        #: session it opened while the database refused writes (a standby, default_transaction_read_only)
        #: never lands in the calls' pool; SQLite: the calls' engine (its connections are not like that)
        self.engine: Engine = db.engine if db.is_sqlite else _engine_of_its_own(db)
        #: the call writer the flood rule's blocks are written by (none in a replay: it writes nothing)
        self.writer = writer
        if writer is not None:
            dialect = db.engine.dialect.name
            writer.declare("list_auto_block", lambda: lists.auto_block_statement(dialect))
            changes.declare(writer)
        self.poll_seconds = poll_seconds
        self.on_refresh_failed = on_refresh_failed
        #: stored number or prefix -> the entries stored under it (every dialled number, each kind)
        self.entries: dict[str, tuple[Entry, ...]] = {}
        #: number -> the customer it belongs to
        self.customers: dict[str, CustomerInfo] = {}
        #: number -> the freeze in force on it that lasts longest
        self.freezes: dict[str, Freeze] = {}
        #: the policy_version this snapshot holds; None until loaded
        self.version: int | None = None
        #: time.monotonic() of the last time the snapshot was known current
        self.checked_at: float | None = None
        self.refresh_failures = 0
        self._lock = gevent.lock.RLock()
        self._stop = gevent.event.Event()
        self._poller: gevent.Greenlet | None = None
        self.stopped = False
        changes.follow(db.engine, self)

    # ------------------------------------------------------------------ life

    @property
    def loaded(self) -> bool:
        return self.version is not None

    def start(self) -> None:
        """Follow changes from now on, loading first if not loaded yet (``serve`` has loaded: it
        stops with one line when it cannot; a failure here is logged and retried every poll)."""
        if not self.loaded:
            self.refresh()
        if self._poller is None or self._poller.dead:
            self.stopped = False
            self._stop.clear()
            self._poller = gevent.spawn(self._follow)

    def stop(self) -> None:
        self.stopped = True
        self._stop.set()
        if self._poller is not None:
            self._poller.kill(block=True, timeout=1)
            self._poller = None
        if self.engine is not self.db.engine:
            self.engine.dispose()

    def ensure(self) -> None:
        """Loaded, or raise PolicyUnavailable. Only an App that never started a server (a replay,
        a test) loads here, on its first call; ``serve`` loads before taking calls."""
        if self.loaded:
            return
        try:
            self.load()
        except SQLAlchemyError as exc:
            raise PolicyUnavailable(f"the policy (lists, customers, freezes) could not be loaded: "
                                    f"{str(exc).splitlines()[0]}") from exc

    def age(self) -> float | None:
        """Seconds since the snapshot was last known current (None: never loaded)."""
        return None if self.checked_at is None else time.monotonic() - self.checked_at

    def stale(self, bound: float = STALE_SECONDS) -> bool:
        age = self.age()
        return age is None or age > bound

    def _follow(self) -> None:
        """Refresh every poll; on PostgreSQL also as soon as a change is announced (LISTEN)."""
        listener: Any = None
        try:
            while not self._stop.is_set():
                if listener is None and self.db.url.get_backend_name() == "postgresql":
                    listener = self._listen()
                if listener is None:
                    self._stop.wait(self.poll_seconds)
                else:
                    try:
                        for _ in listener.notifies(timeout=self.poll_seconds, stop_after=1):
                            pass
                    except Exception as exc:  # noqa: BLE001 - the poll goes on without it
                        log.warning("policy.listen_lost", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
                        listener.close()
                        listener = None
                        self._stop.wait(self.poll_seconds)
                if not self._stop.is_set():
                    self.refresh()
        finally:
            if listener is not None:
                listener.close()

    def _listen(self) -> Any:
        """A connection of its own (outside the pool) that LISTENs for announced changes; None
        if it cannot be opened (the poll alone keeps the snapshot current)."""
        import psycopg

        url = self.db.url.set(drivername="postgresql")
        try:
            conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                   connect_timeout=max(1, int(self.db.settings.pool_timeout)))
            conn.execute(f"LISTEN {changes.CHANNEL}")
            return conn
        except psycopg.Error as exc:
            log.warning("policy.listen_failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
            return None

    def changed_here(self) -> None:
        """A transaction of this process changed the policy (fsguard.rules.changes): apply it now."""
        if self.loaded and not self.stopped:
            self.refresh()

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Everything, afresh (at start, after an import, or a node too far behind). The version
        is read first: a change committed while loading is applied again by the next refresh."""
        started = time.perf_counter()
        with self._lock, self.engine.connect() as conn:
            version = changes.read_version(conn)
            entries = self._load_entries(conn)
            customers = self._load_customers(conn)
            freezes = self._load_freezes(conn)
            self.entries, self.customers, self.freezes = entries, customers, freezes
            self.version, self.checked_at = version, time.monotonic()
        log.info("policy.loaded", version=version, list_entries=sum(len(v) for v in entries.values()),
                 customer_numbers=len(customers), freezes=len(freezes),
                 seconds=round(time.perf_counter() - started, 3))

    def _load_entries(self, conn: Any, keys: list[str] | None = None) -> dict[str, tuple[Entry, ...]]:
        now = utcnow()
        share = {}.setdefault
        found: dict[str, list[Entry]] = {}
        t = ListEntry.__table__
        active = (t.c.expires_at.is_(None)) | (t.c.expires_at > now)
        statements = ([select(*_ENTRY_COLUMNS).where(active)] if keys is None else
                      [select(*_ENTRY_COLUMNS).where(active, t.c.number.in_(chunk)) for chunk in _chunks(keys)])
        for stmt in statements:
            for part in conn.execute(stmt).partitions(1000):
                for row in part:
                    found.setdefault(row.number, []).append(_entry(row, share))
                gevent.sleep(0)   # a large list loads without holding up the calls
        return {number: tuple(rows) for number, rows in found.items()}

    def _load_customers(self, conn: Any, keys: list[str] | None = None) -> dict[str, CustomerInfo]:
        base = select(*_CUSTOMER_COLUMNS).join(Customer, CustomerNumber.customer_id == Customer.id)
        statements = ([base] if keys is None else
                      [base.where(CustomerNumber.number.in_(chunk)) for chunk in _chunks(keys)])
        return {row.number: _customer(row) for stmt in statements for row in conn.execute(stmt)}

    def _load_freezes(self, conn: Any, keys: list[str] | None = None) -> dict[str, Freeze]:
        f = OutboundFreeze
        base = select(f.id, f.number, f.created_at, f.until, f.source, f.reason, f.created_by, f.lifted_at,
                      f.lifted_by, f.lift_reason).where(f.lifted_at.is_(None), f.until > utcnow())
        statements = [base] if keys is None else [base.where(f.number.in_(chunk)) for chunk in _chunks(keys)]
        found: dict[str, Freeze] = {}
        for stmt in statements:
            for row in conn.execute(stmt):
                freeze = Freeze(*row)
                if freeze.number not in found or found[freeze.number].until < freeze.until:
                    found[freeze.number] = freeze
        return found

    # ------------------------------------------------------------------ following changes

    def refresh(self) -> bool:
        """Apply what changed since this snapshot's version. False (the last snapshot kept, the
        failure logged and counted) if the database could not be read."""
        try:
            self._refresh()
            return True
        except SQLAlchemyError as exc:
            self.refresh_failures += 1
            if self.on_refresh_failed is not None:
                self.on_refresh_failed()
            log.error("policy.refresh_failed", error=str(exc).splitlines()[0], version=self.version,
                      age_seconds=round(self.age() or 0, 1))
            return False

    def _refresh(self) -> None:
        with self._lock:
            if self.version is None:
                self.load()
                return
            with self.engine.connect() as conn:
                seen = int(conn.execute(_VERSION).scalar() or 0)
                if seen == self.version:
                    self.checked_at = time.monotonic()
                    return
                if seen < self.version or seen - self.version >= changes.RETAINED:
                    conn.close()
                    self.load()   # a database restored to an earlier state, or changes purged meanwhile
                    return
                keys: dict[str, set[str]] = {}
                for kind, key in conn.execute(_CHANGES, {"after": self.version, "upto": seen}):
                    keys.setdefault(kind, set()).add(key)
                # read everything first, then change the dictionaries without yielding: a call never
                # sees half a refresh
                entries = self._reloaded(keys.get("list"), lambda k: self._load_entries(conn, k))
                customers = self._reloaded(keys.get("customer"), lambda k: self._load_customers(conn, k))
                freezes = self._reloaded(keys.get("freeze"), lambda k: self._load_freezes(conn, k))
            self.entries = _merged(self.entries, entries)
            self.customers = _merged(self.customers, customers)
            self.freezes = _merged(self.freezes, freezes)
            log.debug("policy.refreshed", version=seen, after=self.version,
                      changed={k: len(v) for k, v in keys.items()})
            self.version, self.checked_at = seen, time.monotonic()

    @staticmethod
    def _reloaded(keys: set[str] | None, load: Callable[[list[str] | None], dict[str, Any]]
                  ) -> tuple[set[str] | None, dict[str, Any]] | None:
        """(keys reloaded (None: all), their rows) for one kind, or None when it did not change."""
        if not keys:
            return None
        if changes.EVERY in keys:
            return None, load(None)
        return keys, load(sorted(keys))

    # ------------------------------------------------------------------ lookups (the call path)

    def _candidates(self, numbers_: Iterable[str | None], dnis: str, now: datetime) -> list[Entry]:
        """Like fsguard.rules.lists' list query: the active entries under a prefix of the numbers."""
        scopes = (ANY_DNIS,) if dnis == ANY_DNIS else (ANY_DNIS, dnis)
        found: dict[tuple[str, str, bool], Entry] = {}
        entries = self.entries
        for number in numbers_:
            if not number:
                continue
            for prefix in lists.prefixes(number):
                for entry in entries.get(prefix, ()):
                    if entry.dnis in scopes and entry.active(now):
                        found[(entry.number, entry.dnis, entry.is_prefix)] = entry
        return list(found.values())

    def match_call(self, ani: str | None, presented: str | None, dnis: str, *, also: str | None = None,
                   now: datetime | None = None) -> lists.Match:
        """fsguard.rules.lists.match_call, from memory."""
        self.ensure()
        rows = self._candidates((ani, presented, also), dnis, now or utcnow())
        return lists.match_entries(rows, ani, presented, also)  # type: ignore[arg-type]

    def customer(self, number: str) -> CustomerInfo | None:
        """fsguard.rules.customers.find, from memory."""
        self.ensure()
        return self.customers.get(number)

    def freeze_on(self, number: str, now: datetime | None = None) -> Freeze | None:
        """fsguard.rules.freeze.active_freeze, from memory."""
        self.ensure()
        freeze = self.freezes.get(number)
        return freeze if freeze is not None and freeze.active(now) else None

    # ------------------------------------------------------------------ the flood rule's blocks

    def auto_block(self, number_e164: str, *, level: int, reason: str, code: str,
                   ttl_seconds: float, dnis: str | None = None, added_by: str = "",
                   now: datetime | None = None) -> bool:
        """fsguard.rules.lists.auto_block decided from memory and written after the decision by
        the call writer (with its version bump, in the writer's transaction); applied to this
        snapshot at once, so that this node's next call sees the block. False: nothing to write
        (an allow or DNO entry applies, or a block at least as strong)."""
        self.ensure()
        now = now or utcnow()
        key = ANY_DNIS if dnis in (None, ANY_DNIS) else lists.dnis_key(dnis)
        written = lists.auto_block_reason(self._candidates([number_e164], key, now),  # type: ignore[arg-type]
                                          number_e164, key, level, reason)
        if written is None:
            return False
        row = lists.auto_block_row(number_e164, key, level=level, reason=written, code=code,
                                   ttl_seconds=ttl_seconds, now=now, added_by=added_by)
        writer = self.writer
        if writer is None:
            raise RuntimeError("this snapshot has no call writer to write blocks with")
        writer.submit("list_auto_block", row)
        writer.submit("policy_bump", {})
        writer.submit("policy_change", {"kind": "list", "key": number_e164})
        block = Entry(None, number_e164, False, key, "block", level, None, row["reason"], "auto", row["code"],
                      row["added_by"], now, now, now + timedelta(seconds=ttl_seconds))
        others = tuple(e for e in self.entries.get(number_e164, ()) if (e.dnis, e.is_prefix) != (key, False))
        self.entries[number_e164] = (*others, block)
        return True


def _engine_of_its_own(db: Database) -> Engine:
    s = db.settings
    return create_engine(db.url, pool_size=1, max_overflow=0, pool_timeout=s.pool_timeout,
                         connect_args={"connect_timeout": max(1, int(s.pool_timeout)),
                                       "options": f"-c statement_timeout={int(s.statement_timeout * 1000)}"})


def _merged(current: dict[str, Any], reloaded: tuple[set[str] | None, dict[str, Any]] | None) -> dict[str, Any]:
    """``current`` with the reloaded keys replaced (a key reloaded without rows is gone)."""
    if reloaded is None:
        return current
    keys, rows = reloaded
    if keys is None:
        return rows
    for key in keys:
        if key in rows:
            current[key] = rows[key]
        else:
            current.pop(key, None)
    return current

