"""Deciding from memory: the policy snapshot (fsguard.rules.snapshot) and its change counter.

A decision reads lists, customers and freezes from memory and makes one database statement at
most (the cluster-wide flood counter); a change made anywhere reaches every node within a poll.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import gevent
import pytest
from sqlalchemy import select

from fsguard.config import DatabaseSettings, PolicySettings
from fsguard.ops import cli
from fsguard.ops.web.readiness import policy_check
from fsguard.rules import changes, customers, lists
from fsguard.rules import freeze as outbound
from fsguard.rules.snapshot import STALE_SECONDS, PolicySnapshot
from fsguard.store.db import Database
from fsguard.store.models.recordings import Recording
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.statements import driver_statements
from fsguard_testing.waiting import settle, wait_for

CALLER = "+12125550147"
BLOCKED = "+12125550199"
VIP = "+14155550123"
TOLL_FREE = "+18005550100"
DIALLED = "+15557654321"


def put(db: Database, number: str, kind: str, level: int | None = None) -> None:
    with db.begin() as session:
        lists.add(session, lists.make_spec(number, kind=kind, level=level))


def recording_of(db: Database, uuid: str) -> tuple[str, str] | None:
    """The recording's purpose and status (its end written once the call's writer has committed)."""
    with db.begin() as session:
        row = session.execute(select(Recording.purpose, Recording.status).where(Recording.call_uuid == uuid)).first()
    return None if row is None else (row.purpose, row.status)


def put_customer(db: Database, number: str, **fields: Any) -> None:
    with db.begin() as session:
        customers.save(session, [number], customers.normalise_customer(fields))


class Statements:
    """The statements run by the greenlet that is inside ``Pipeline.decide``, as they reach the
    database driver (whichever path they take there)."""

    def __init__(self, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.deciding: set[Any] = set()
        decide = app.pipeline.decide

        def counted(call: Any) -> Any:
            me = gevent.getcurrent()
            self.deciding.add(me)
            try:
                return decide(call)
            finally:
                self.deciding.discard(me)

        monkeypatch.setattr(app.pipeline, "decide", counted)
        # who is deciding is known only while the statement runs
        self._watching = driver_statements(lambda _sql: gevent.getcurrent() in self.deciding)
        self._watched = self._watching.__enter__()

    def take(self) -> list[str]:
        return self._watched.take()

    def close(self) -> None:
        self._watching.__exit__(None, None, None)


@pytest.fixture
def guard(settings, start_guard, db):
    # the default chain with the default recording policy: every call recorded, after the notice
    settings.policy.stages = PolicySettings().stages
    # from the route, so that the simulator's queued call (never bridged) keeps its recording row
    settings.recording.start = "route"
    settings.routing.rules = [{"name": "vip", "vip": True, "target": "callcenter vip@default"}]
    settings.validate()
    return start_guard()


@pytest.fixture
def statements(guard, monkeypatch) -> Iterator[Statements]:
    counter = Statements(guard.app, monkeypatch)
    yield counter
    counter.close()


def test_a_decision_makes_one_statement_the_flood_counter_and_reads_the_rest_from_memory(guard, db, statements):
    put(db, BLOCKED, "block", 9)
    put_customer(db, VIP, name="Ada", vip=True)
    fs = FakeFreeSWITCH(guard.address, time_scale=0.005)

    routed = fs.call(Caller(ani=CALLER, dnis=TOLL_FREE))
    settle(guard)
    assert routed.route == "transfer default XML queues"
    (only,) = statements.take()
    assert only.startswith("INSERT INTO call_counters") and "RETURNING" in only
    # recorded all the same: the recording's row came after the decision, with the call's rows
    assert "record_session" in [app for app, _ in routed.apps]
    assert recording_of(db, routed.uuid) == ("evidence", "missing")   # the simulator writes no audio

    known = fs.call(Caller(ani=VIP, dnis=TOLL_FREE))   # the customer comes from memory too
    settle(guard)
    assert known.route == "callcenter vip@default"
    assert [s.split()[2] for s in statements.take()] == ["call_counters"]

    refused = fs.call(Caller(ani=BLOCKED, dnis=TOLL_FREE))
    settle(guard)
    assert refused.hangup_cause == "CALL_REJECTED" and refused.route is None
    assert [s.split()[2] for s in statements.take()] == ["call_counters"]


def test_an_agents_call_to_a_frozen_number_is_stopped_without_a_statement(guard, db, statements):
    with db.begin() as session:
        outbound.freeze(session, DIALLED, reason="asked not to be called", seconds=3600, by="ops")
    fs = FakeFreeSWITCH(guard.address, time_scale=0.005)
    result = fs.call(Caller(ani="1000", dnis="5557654321", context="default"))
    settle(guard)
    assert result.hangup_cause == "OUTGOING_CALL_BARRED"
    assert statements.take() == []


def other_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, writes are not told to this process's snapshots: as if another node made them."""
    monkeypatch.setattr(changes, "_followers", {})


def test_a_change_made_on_another_node_reaches_this_one_within_a_poll(settings, start_guard, db, monkeypatch):
    """Two nodes: two Apps, each with its own Database (pool) on the same database."""
    other = Database(settings.database)
    try:
        node = start_guard(database=other)
        policy = node.app.policy
        assert policy.match_call(CALLER, None, TOLL_FREE).entry is None
        other_process(monkeypatch)

        put(db, CALLER, "block", 7)
        put_customer(db, VIP, name="Ada", vip=True)
        with db.begin() as session:
            outbound.freeze(session, DIALLED, reason="complaint", seconds=3600, by="ops")
        wait_for(lambda: policy.freeze_on(DIALLED) is not None, 3.0, "the changes did not reach the other node")
        assert policy.match_call(CALLER, None, TOLL_FREE).entry.level == 7
        assert policy.customer(VIP).vip and policy.freeze_on(DIALLED).reason == "complaint"

        with db.begin() as session:
            lists.remove(session, CALLER, False)
            customers.remove_number(session, VIP)
            outbound.unfreeze(session, DIALLED, by="ops")
        wait_for(lambda: policy.freeze_on(DIALLED) is None, 3.0, "the removals did not reach the other node")
        assert policy.match_call(CALLER, None, TOLL_FREE).entry is None
        assert policy.customer(VIP) is None
    finally:
        other.dispose()


def test_an_import_reloads_the_list_whole_on_every_node(settings, db, monkeypatch):
    policy = PolicySnapshot(db)
    policy.load()
    other_process(monkeypatch)
    specs = [lists.make_spec(f"+1212555{i:04d}", kind="block", level=3) for i in range(3000)]
    specs.append(lists.make_spec("+1900*", kind="block", level=8))
    with db.begin() as session:
        lists.import_entries(session, specs)
    assert policy.refresh()
    assert sum(len(v) for v in policy.entries.values()) == 3001
    assert policy.match_call("+12125552999", None, TOLL_FREE).entry.level == 3
    assert policy.match_call("+19005550100", None, TOLL_FREE).entry.pattern == "+1900*"


def test_a_write_in_this_process_is_seen_at_once(db):
    policy = PolicySnapshot(db)
    policy.load()
    put(db, CALLER, "allow")
    assert policy.match_call(CALLER, None, TOLL_FREE).allowed


def test_a_refresh_that_fails_keeps_the_last_snapshot_and_readiness_says_when_it_is_stale(db, monkeypatch):
    failures: list[int] = []
    policy = PolicySnapshot(db, on_refresh_failed=lambda: failures.append(1))
    put(db, BLOCKED, "block", 9)
    policy.load()
    assert policy_check(policy) == "ok"
    unreachable = Database(DatabaseSettings(url="postgresql://fsguard@127.0.0.1:1/none", pool_timeout=1))
    monkeypatch.setattr(policy, "engine", unreachable.engine)
    assert not policy.refresh()
    assert failures == [1] and policy.refresh_failures == 1
    assert policy.match_call(BLOCKED, None, TOLL_FREE).entry.level == 9   # still deciding on what it had
    policy.checked_at = time.monotonic() - STALE_SECONDS - 1
    assert policy_check(policy).startswith("stale: last known current")


def test_a_policy_never_loaded_fails_the_call_the_way_a_database_error_does(settings, start_guard, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def down(snapshot: PolicySnapshot) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(PolicySnapshot, "load", down)
    settings.policy.stages = ["screening"]
    guard = start_guard(settings)
    result = FakeFreeSWITCH(guard.address, time_scale=0.005).call(Caller(ani=CALLER, dnis=TOLL_FREE))
    settle(guard)
    assert result.route == settings.policy.fail_open_route   # policy.on_error = open
    assert guard.app.metrics.db_errors._value.get() >= 1


def test_serve_stops_with_one_line_when_the_policy_cannot_be_loaded(settings, db, monkeypatch, capsys):
    from sqlalchemy.exc import OperationalError

    def down(snapshot: PolicySnapshot) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(PolicySnapshot, "load", down)
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    code = cli.main(["serve", "--listen", "127.0.0.1:0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].endswith("cannot load the policy (lists, customers, freezes): "
                            "(builtins.Exception) connection refused")


def test_on_postgresql_a_change_is_announced_to_the_other_nodes_at_its_commit(emptied_postgresql, monkeypatch):
    """With a poll too slow to matter, the change still arrives: LISTEN/NOTIFY carried it."""
    if emptied_postgresql is None:
        pytest.skip("PostgreSQL unavailable")
    writer, reader = (Database(DatabaseSettings(url=emptied_postgresql)) for _ in range(2))
    policy = PolicySnapshot(reader, poll_seconds=3600)
    try:
        policy.start()
        other_process(monkeypatch)
        put(writer, CALLER, "block", 8)
        wait_for(lambda: policy.match_call(CALLER, None, TOLL_FREE).entry is not None, 5.0,
                 "the announced change did not arrive")
    finally:
        policy.stop()
        writer.dispose()
        reader.dispose()
