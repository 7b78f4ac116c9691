"""Writing down that the policy changed, so that every node's snapshot follows (fsguard.rules.snapshot).

Every function that changes list entries, customers or outbound freezes calls :func:`changed`
with the keys it touched. Just before the transaction commits, the keys are written to
``policy_changes`` under a new ``policy_version`` (bumped once per transaction, last: the version
row's lock is held only from there to the commit), in the same transaction as the change itself:
a change cannot be committed without the nodes learning about it. After the commit the snapshots
of this process that read the same database (through any engine) refresh at once; the other
processes within a poll, or on PostgreSQL as soon as the commit's NOTIFY reaches them.

The flood rule's automatic blocks are written by the call writer, after the decision: the writer
runs :data:`BUMP` and :data:`CHANGE` in its batch's transaction (see :func:`declare`).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Protocol

import structlog
from sqlalchemy import Engine, delete, event, insert, text
from sqlalchemy.orm import Session

from fsguard.store.models.policy import PolicyChange

log = structlog.get_logger("fsguard.rules.changes")

__all__ = ["KINDS", "EVERY", "RETAINED", "changed", "bump", "declare", "follow", "read_version"]

#: what changed: list entries (key: the stored number or prefix), customers (key: one of their
#: numbers), outbound freezes (key: the number)
KINDS = ("list", "customer", "freeze")
#: the key meaning "every key of this kind": the snapshot reloads that kind whole
EVERY = "*"
#: more keys than this in one transaction (an import) are written down as EVERY
MAX_KEYS = 1000
#: versions of changes kept; a node further behind than this reloads everything
RETAINED = 10000

_PENDING = "fsguard.policy_changes"
_COMMITTED = "fsguard.policy_committed"

#: the version bump: an upsert, so that a table emptied (tests truncate) starts again at 1
BUMP = text("INSERT INTO policy_version (id, version) VALUES (1, 1)"
            " ON CONFLICT (id) DO UPDATE SET version = policy_version.version + 1")
#: a changed key under the version the same transaction bumped to
CHANGE = text("INSERT INTO policy_changes (version, kind, key) SELECT version, :kind, :key FROM policy_version"
              " WHERE id = 1")
_VERSION = text("SELECT version FROM policy_version WHERE id = 1")
#: PostgreSQL: the channel a committed change is announced on (the nodes LISTEN: near-instant)
CHANNEL = "fsguard_policy"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :version)")


class Follower(Protocol):
    def changed_here(self) -> None: ...


class Declares(Protocol):
    """The call writer (fsguard.store.writer.Writer), as far as a change needs it."""

    def declare(self, name: str, build: Callable[[], Any]) -> None: ...


#: database URL -> the snapshots of this process reading that database (told after a local commit)
_followers: dict[str, weakref.WeakSet[Any]] = {}


def changed(session: Session, kind: str, keys: Iterable[str] | None) -> None:
    """Note that this session's transaction changes ``keys`` of ``kind`` (None: every key).
    Written down with the version bump just before the transaction commits."""
    if kind not in KINDS:
        raise ValueError(f"unknown policy kind {kind!r}")
    pending: dict[str, set[str]] = session.info.setdefault(_PENDING, {})
    bucket = pending.setdefault(kind, set())
    if keys is None or EVERY in bucket:
        bucket.clear()
        bucket.add(EVERY)
    else:
        bucket.update(k for k in keys if k)
        if len(bucket) > MAX_KEYS:   # an import: the nodes reload this kind whole
            bucket.clear()
            bucket.add(EVERY)


def bump(conn: Any) -> int:
    """Bump the version (taking its row lock until the commit) and return the new version."""
    conn.execute(BUMP)
    return int(conn.execute(_VERSION).scalar_one())


def read_version(conn: Any) -> int:
    """The version committed so far (0 before the first change)."""
    return int(conn.execute(_VERSION).scalar() or 0)


def declare(writer: Declares) -> None:
    """The writer's row kinds that record a change made after a decision (an automatic block):
    submit one ``policy_bump`` and one ``policy_change`` per key with the rows that change it."""
    writer.declare("policy_bump", lambda: BUMP)
    writer.declare("policy_change", lambda: CHANGE)


def follow(engine: Engine, follower: Follower) -> None:
    """Tell ``follower`` (a snapshot) at once when a transaction of this process changed the
    policy in the database ``engine`` connects to."""
    _followers.setdefault(_database_of(engine), weakref.WeakSet()).add(follower)


def _database_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


@event.listens_for(Session, "before_commit")
def _write_down(session: Session) -> None:
    pending: dict[str, set[str]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    rows = []
    for kind, keys in pending.items():
        if not keys:
            continue
        rows.extend({"kind": kind, "key": key[:64]} for key in sorted(keys))
    if not rows:
        return
    conn = session.connection()
    version = bump(conn)
    conn.execute(insert(PolicyChange), [{"version": version, **row} for row in rows])
    conn.execute(delete(PolicyChange).where(PolicyChange.version <= version - RETAINED))
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"version": str(version)})   # delivered by PostgreSQL at the commit
    session.info[_COMMITTED] = _database_of(_engine_of(session))


@event.listens_for(Session, "after_commit")
def _tell(session: Session) -> None:
    database = session.info.pop(_COMMITTED, None)
    if database is None:
        return
    for follower in list(_followers.get(database, ())):
        try:
            follower.changed_here()
        except Exception as exc:  # noqa: BLE001 - the change is committed: the poll will bring it
            log.error("policy.local_refresh_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_COMMITTED, None)
