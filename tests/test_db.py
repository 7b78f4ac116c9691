"""The database layer's own promises: SQLite checkpoints kept off the calls' way."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import gevent
from sqlalchemy import text

from fsguard.config import DatabaseSettings
from fsguard.store.db import Database


def test_a_serving_sqlite_database_checkpoints_in_the_background_not_in_a_calls_commit(
        sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "fsguard.db"
    path.write_bytes(sqlite_template.read_bytes())
    db = Database(DatabaseSettings(url=f"sqlite:///{path}"))
    try:
        db.start_checkpointer(interval=0.05)
        with db.autocommit() as session:
            # no connection serving a call checkpoints on its own any more
            assert session.execute(text("PRAGMA wal_autocheckpoint")).scalar_one() == 0
            for i in range(200):
                session.execute(text("INSERT INTO call_counters (number, dnis, bucket, calls, short_calls) "
                                     "VALUES (:n, '*', 1, 1, 0)"), {"n": f"+1212555{i:04d}"})
        gevent.sleep(0.3)
        # the rows are in the database file itself, not only in its write-ahead log: a copy of the
        # file alone (no -wal beside it) has them
        alone = tmp_path / "alone.db"
        alone.write_bytes(path.read_bytes())
        probe = sqlite3.connect(alone)
        assert probe.execute("SELECT count(*) FROM call_counters").fetchone()[0] == 200
        probe.close()
        db.stop_checkpointer()
        with db.autocommit() as session:   # stopped: SQLite's own checkpoints again
            assert session.execute(text("PRAGMA wal_autocheckpoint")).scalar_one() == 1000
    finally:
        db.stop_checkpointer()
        db.dispose()


def test_the_write_ahead_log_stays_small_under_a_steady_stream_of_writes(sqlite_template: Path,
                                                                       tmp_path: Path) -> None:
    """A checkpoint that never catches up with the writers never lets SQLite start the log afresh:
    at 300 calls a second the log reached 2 GB in six minutes. The checkpointer finishes each
    checkpoint on the hub, where nothing else writes meanwhile."""
    path = tmp_path / "fsguard.db"
    path.write_bytes(sqlite_template.read_bytes())
    db = Database(DatabaseSettings(url=f"sqlite:///{path}"))
    insert = text("INSERT INTO call_counters (number, dnis, bucket, calls, short_calls) VALUES (:n, '*', :b, 1, 0)")
    try:
        db.start_checkpointer(interval=0.02)
        written = 0
        with db.autocommit() as session:
            for i in range(4000):
                session.execute(insert, {"n": f"+1212555{i % 10000:04d}", "b": i})
                written += 1
                if i % 20 == 0:
                    gevent.sleep(0.001)   # the calls' greenlets yield like this between statements
        page = 4096
        wal = Path(f"{path}-wal").stat().st_size
        # every insert wrote at least one page to the log (three, measured): without restarts it
        # would hold them all, 12,800 pages. With them it holds the most written between two
        # restarts, mostly before the first checkpoint: 770 to 1,050 pages here, the more the
        # busier the machine (a checkpoint's sync takes longer), so the bound is half a page a commit
        assert wal < written * page / 2, f"write-ahead log of {wal} bytes for {written} commits"
    finally:
        db.stop_checkpointer()
        db.dispose()


def test_rows_handed_over_within_the_gather_interval_share_one_commit(db: Database) -> None:
    """database.write_gather_seconds: at most one commit per interval, so calls that hand rows
    over within it share one transaction (a commit costs the same for one call's rows as for a
    dozen); without it each call handing over on its own gets a commit of its own."""
    import uuid as uuidlib

    from fsguard.store import records

    def hand_over(writer: Any) -> None:
        for _ in range(5):   # five calls ending 10 ms apart
            writer.submit("recording_discard", {"_key": str(uuidlib.uuid4())})
            gevent.sleep(0.01)
        assert writer.wait_idle(5)

    gathering = records.make_writer(db, gather_seconds=0.2)
    hand_over(gathering)
    gathering.close()
    # the first row after a quiet spell at once, the four that came within the interval together
    assert (gathering.batches, gathering.rows_written) == (2, 5)

    eager = records.make_writer(db)
    hand_over(eager)
    eager.close()
    assert eager.batches == 5 and eager.rows_written == 5


def test_a_gathering_batch_is_written_as_soon_as_it_holds_enough_rows(db: Database) -> None:
    """A commit runs on the thread every call shares: the gathering ends at ``gather_rows`` rows,
    not only at the interval's end, so that a busy second's rows do not make one long commit
    that holds every call up."""
    import uuid as uuidlib

    from fsguard.store import records

    writer = records.make_writer(db, gather_seconds=1.0)
    writer.gather_rows = 4
    writer.submit("recording_discard", {"_key": str(uuidlib.uuid4())})   # after a quiet spell: at once
    assert writer.wait_idle(5)
    started = time.monotonic()
    tickets = [writer.submit("recording_discard", {"_key": str(uuidlib.uuid4())}) for _ in range(4)]
    assert tickets[-1].wait(5)
    assert time.monotonic() - started < 0.5, "the batch waited for the interval's end"
    three_more = [writer.submit("recording_discard", {"_key": str(uuidlib.uuid4())}) for _ in range(3)]
    gevent.sleep(0.3)
    assert not three_more[-1].done.is_set()   # fewer rows: they wait for the interval
    assert three_more[-1].wait(5)
    writer.close()
    assert (writer.batches, writer.rows_written) == (3, 8)


def test_a_statement_on_the_calls_path_commits_on_its_own_and_fails_as_a_database_error(db: Database) -> None:
    """Database.statement (the flood counter's path) bypasses SQLAlchemy's connection objects:
    its rows are committed without a transaction around them, its failures are the
    DatabaseError the stages fail open on, and no connection is left checked out of the pool
    (SQLite keeps one of its own for these statements, reopened after the engine's dispose)."""
    from fsguard.store.db import DatabaseError

    upsert = text("INSERT INTO call_counters (number, dnis, bucket, calls, short_calls) VALUES (:n, '*', :b, 1, 0)"
                  " ON CONFLICT (number, dnis, bucket) DO UPDATE SET calls = call_counters.calls + 1 RETURNING calls")
    assert db.statement(upsert, {"n": "+12125550147", "b": 300}) == [(1,)]
    assert db.statement(upsert, {"b": 300, "n": "+12125550147"}) == [(2,)]   # named, whatever the driver's style
    with db.begin() as session:   # committed: another connection sees it
        assert session.execute(text("SELECT calls FROM call_counters")).scalar_one() == 2
    try:
        db.statement(text("INSERT INTO no_such_table (x) VALUES (:x)"), {"x": 1})
    except DatabaseError as exc:
        assert "no_such_table" in str(exc)
    else:
        raise AssertionError("a failed statement raised nothing")
    assert db.engine.pool.checkedout() == 0
    assert db.statement(upsert, {"n": "+12125550147", "b": 300}) == [(3,)]   # the pool's connection is sound
    db.dispose()
    assert db.statement(upsert, {"n": "+12125550147", "b": 300}) == [(4,)]
    assert db.engine.pool.checkedout() == 0
