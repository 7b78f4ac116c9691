"""The call counters: how often a number has called, for the flood and nuisance rules.

The counters (table ``call_counters``) count calls per number in five-minute buckets. A call
adds itself and reads its totals in ONE statement (an upsert whose RETURNING clause also sums
the earlier buckets), so two fsguard nodes sharing a PostgreSQL database see consecutive counts
for concurrent calls of the same number and block at exactly the same call.

"In the last hour" is the current five-minute bucket and the eleven before it (a window of
55 to 60 minutes); "in the last day" is the current bucket and the 287 before it. Short calls
(call-and-hang-up, the nuisance rule) are counted in the same rows, under every dialled number.

What a count leads to (an automatic block) is the screening stage's; the block itself is a list
entry (fsguard.rules.lists.auto_block).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from sqlalchemy import Connection, case, delete, func, select, text
from sqlalchemy.orm import Session

from fsguard.store.db import Database
from fsguard.store.models.base import utcnow
from fsguard.store.models.lists import CallCounter

__all__ = ["BUCKET_SECONDS", "HOUR", "DAY", "Counts", "count_call", "count_short_call", "recent_counts", "purge",
           "erase"]

#: counters are kept in buckets of this many seconds
BUCKET_SECONDS = 300
HOUR = 3600
DAY = 86400


@dataclass(frozen=True)
class Counts:
    """Calls from one number (this call included) in the last hour and the last day."""

    hour: int
    day: int


def bucket_of(ts: float) -> int:
    return int(ts // BUCKET_SECONDS) * BUCKET_SECONDS


def _window_start(bucket: int, seconds: float) -> int:
    """The first bucket of a window of ``seconds`` that ends with ``bucket``."""
    return bucket - (max(1, int(seconds // BUCKET_SECONDS)) - 1) * BUCKET_SECONDS


# Written as SQL because the RETURNING clause's subqueries must name the upserted row as
# ``call_counters.<column>`` (SQLite resolves nothing else there); the same text runs on PostgreSQL.
_EARLIER = ("(SELECT coalesce(sum(p.{col}), 0) FROM call_counters AS p WHERE p.number = call_counters.number"
            " AND p.dnis = call_counters.dnis AND p.bucket >= :{start} AND p.bucket < :bucket)")

_COUNT_CALL = ("INSERT INTO call_counters (number, dnis, bucket, calls, short_calls) VALUES {values}"
               " ON CONFLICT (number, dnis, bucket) DO UPDATE SET calls = call_counters.calls + 1"
               " RETURNING dnis, calls, " + _EARLIER.format(col="calls", start="hour_start")
               + ", " + _EARLIER.format(col="calls", start="day_start"))

_COUNT_SHORT = text("INSERT INTO call_counters (number, dnis, bucket, calls, short_calls)"
                " VALUES (:number, '*', :bucket, 0, 1)"
                " ON CONFLICT (number, dnis, bucket) DO UPDATE SET short_calls = call_counters.short_calls + 1"
                " RETURNING short_calls, " + _EARLIER.format(col="short_calls", start="window_start"))

#: where a count runs: the database itself (the calls' path: one statement, committed on its own,
#: Database.statement) or a session or connection the caller holds (tests, the CLI)
Target = Database | Session | Connection


def _rows(target: Target, stmt: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    if isinstance(target, Database):
        return target.statement(stmt, params)
    return [tuple(row) for row in target.execute(stmt, params)]


def count_call(target: Target, number: str, dnis_keys: Sequence[str], *, now: float) -> dict[str, Counts]:
    """Count a call from ``number`` under each key (``*`` for all dialled numbers, or a dialled
    number with thresholds of its own) and return the totals. ONE statement: the upsert increments
    the current bucket and its RETURNING clause adds the earlier buckets of the hour and the day.
    Concurrent calls of one number (on any node) get consecutive counts: the row lock orders them
    (the earlier buckets are not written any more, so reading them needs no lock).
    """
    bucket = bucket_of(now)
    keys = sorted(set(dnis_keys))   # always the same order: two rows are locked without deadlock
    params: dict[str, Any] = {"number": number, "bucket": bucket, "hour_start": _window_start(bucket, HOUR),
                              "day_start": _window_start(bucket, DAY)}
    for i, key in enumerate(keys):
        params[f"dnis{i}"] = key
    rows = _rows(target, _count_call_statement(len(keys)), params)
    return {d: Counts(hour=int(calls) + int(hour), day=int(calls) + int(day)) for d, calls, hour, day in rows}


@lru_cache(maxsize=8)
def _count_call_statement(keys: int) -> Any:
    """The count upsert for one or more dialled-number keys, built once per number of keys."""
    values = ", ".join(f"(:number, :dnis{i}, :bucket, 1, 0)" for i in range(keys))
    return text(_COUNT_CALL.format(values=values))


def count_short_call(target: Target, number: str, *, window_seconds: float, now: float) -> int:
    """Record a call from ``number`` that ended within seconds; returns the short calls in the window."""
    bucket = bucket_of(now)
    (short, earlier), = _rows(target, _COUNT_SHORT, {
        "number": number, "bucket": bucket, "window_start": _window_start(bucket, window_seconds)})
    return int(short) + int(earlier)


def recent_counts(session: Session, number: str, *, now: float) -> dict[str, dict[str, int]]:
    """Read-only: calls and short calls from a number per dialled-number key, last hour and day."""
    bucket = bucket_of(now)
    hour_start, day_start = _window_start(bucket, HOUR), _window_start(bucket, DAY)
    c = CallCounter
    stmt = (select(c.dnis,
                   func.sum(case((c.bucket >= hour_start, c.calls), else_=0)),
                   func.sum(c.calls), func.sum(c.short_calls))
            .where(c.number == number, c.bucket >= day_start).group_by(c.dnis))
    return {d: {"hour": int(h or 0), "day": int(dd or 0), "short_day": int(sh or 0)}
            for d, h, dd, sh in session.execute(stmt)}


def purge(session: Session, *, keep_seconds: float, now: datetime | None = None) -> int:
    """Drop the buckets older than ``keep_seconds`` (no window reaches back that far); returns
    the rows deleted."""
    now = now or utcnow()
    oldest = bucket_of(now.timestamp() - keep_seconds)
    return session.execute(delete(CallCounter).where(CallCounter.bucket < oldest)).rowcount or 0


def erase(session: Session, number: str) -> int:
    """Forget the call counts kept for a number (erasure requests); returns the rows deleted."""
    return session.execute(delete(CallCounter).where(CallCounter.number == number)).rowcount or 0
