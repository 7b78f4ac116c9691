"""Outbound risk control end to end: agents dial out through fsguard (the simulator plays FreeSWITCH
over real TCP, bridging to a far end it is told how to behave), on SQLite and PostgreSQL.

The simulator's ``bridge`` models the far end from the Caller: ``answered_by_far_end`` (False: the
bridge fails with ``far_end_cause``, e.g. USER_BUSY), ``talk_time`` (channel seconds of
conversation once it answers) and ``ring_time``; CHANNEL_HANGUP_COMPLETE carries bridge_uepoch /
end_uepoch like FreeSWITCH's. Nothing had to be added to it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import gevent
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fsguard.ops import cli
from fsguard.rules import freeze
from fsguard.rules.snapshot import PolicySnapshot
from fsguard.store import records
from fsguard.service.app import App
from fsguard.config import ConfigError, OutboundSettings, Settings, load_settings
from fsguard.store.db import Database
from fsguard.store.models import OutboundAttempt, OutboundFreeze, utcnow
from fsguard.call.results import CallEnd
from fsguard.ops.replay import ReplayCall
from fsguard.stages.outbound import OutboundStage, far_end
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle, wait_for

NUMBER = "+15557654321"
OTHER = "+15557650000"
DIAL = "bridge sofia/gateway/carrier/{}"
ANNOUNCEMENT = OutboundSettings().announcement


# ------------------------------------------------------------------ helpers


def agent(dnis: str = NUMBER, **kw) -> Caller:
    """An agent at extension 1001 dialling out; by default the far end answers and talks 5 s."""
    fields = {"ani": "1001", "name": "Agent Smith", "dnis": dnis, "context": "agents",
              "variables": {"fsguard_direction": "outbound"}, "answered_by_far_end": True, "talk_time": 5.0,
              "ring_time": 1.0}
    fields.update(kw)
    return Caller(**fields)


def short(dnis: str = NUMBER) -> Caller:
    return agent(dnis, talk_time=4.0)


def conversation(dnis: str = NUMBER) -> Caller:
    return agent(dnis, talk_time=20.0)


def busy(dnis: str = NUMBER) -> Caller:
    return agent(dnis, answered_by_far_end=False, far_end_cause="USER_BUSY")


def no_answer(dnis: str = NUMBER) -> Caller:
    return agent(dnis, answered_by_far_end=False, far_end_cause="NO_ANSWER", ring_time=30.0)


class Node:
    """One fsguard node with a FreeSWITCH in front of it."""

    def __init__(self, guard) -> None:
        self.guard = guard
        self.fs = FakeFreeSWITCH(guard.address, time_scale=0.005)

    def call(self, caller: Caller):
        result = self.fs.call(caller)
        settle(self.guard)
        return result


@pytest.fixture
def outbound_settings(settings: Settings) -> Settings:
    settings.policy.stages = ["outbound", "routing"]
    return settings


@pytest.fixture
def node(outbound_settings, start_guard) -> Node:
    return Node(start_guard())


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)


def attempts_of(db, number: str = NUMBER) -> list[OutboundAttempt]:
    with db.begin() as s:
        return list(s.scalars(select(OutboundAttempt).where(OutboundAttempt.number == number)
                              .order_by(OutboundAttempt.id)))


def freezes_of(db, number: str = NUMBER) -> list[OutboundFreeze]:
    with db.begin() as s:
        return list(s.scalars(select(OutboundFreeze).where(OutboundFreeze.number == number)
                              .order_by(OutboundFreeze.id)))


def outbound_verdict(db, uuid: str):
    (verdict,) = [v for v in records.find_call(db, uuid).verdicts if v.stage == "outbound"]
    return verdict


def dialled(result, number: str = NUMBER) -> bool:
    return result.route == DIAL.format(number) and ("bridge", f"sofia/gateway/carrier/{number}") in result.apps


def prevented(result) -> bool:
    return (result.route is None and result.outcome == "hungup" and result.hangup_cause == "OUTGOING_CALL_BARRED"
            and not any(app == "bridge" for app, _ in result.apps))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------- the freeze rule, end to end


def test_the_fourth_short_call_is_not_dialled_and_other_numbers_still_are(node, db, cli_env, capsys):
    for i in range(3):
        result = node.call(short())
        assert dialled(result), result
        assert result.ok, result.violations
        assert result.answered and 3.5 <= result.billsec <= 4.5
    rows = attempts_of(db)
    assert [(a.outcome, a.strike, a.agent) for a in rows] == [("short", True, "1001")] * 3
    assert all(a.talk_seconds is not None and 3.5 <= a.talk_seconds <= 4.5 for a in rows)
    (frozen,) = freezes_of(db)
    assert frozen.source == "auto" and frozen.created_by == "test-node"
    assert frozen.reason.startswith("3 rejected or short calls within 1d: short (4 s)")
    assert timedelta(days=6, hours=23) < frozen.until - utcnow() <= timedelta(days=7)
    assert rows[-1].freeze_id == frozen.id
    assert node.guard.app.metrics.auto_blocks.labels(reason="outbound.freeze")._value.get() == 1

    fourth = node.call(short())
    assert prevented(fourth), fourth
    assert fourth.ok, fourth.violations
    assert fourth.heard == [ANNOUNCEMENT]
    assert fourth.early_media and not fourth.answered and fourth.billsec == 0
    last = attempts_of(db)[-1]
    assert (last.outcome, last.strike, last.freeze_id) == ("prevented", False, frozen.id)
    call = records.find_call(db, fourth.uuid)
    (verdict,) = [v for v in call.verdicts if v.stage == "outbound"]
    assert (verdict.outcome, verdict.code) == ("reject", "outbound.frozen")
    assert verdict.details["freeze_id"] == frozen.id and "frozen until" in verdict.reason
    assert call.action == "hangup OUTGOING_CALL_BARRED" and call.outcome == "rejected"
    assert call.inputs["outbound_freeze"]["id"] == frozen.id  # stored for replay

    other = node.call(short(OTHER))
    assert dialled(other, OTHER), other
    assert len(freezes_of(db)) == 1  # still exactly one freeze, none on the other number

    code, out, _ = run_cli(capsys, "outbound", "frozen", "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["number"] == NUMBER and listed["source"] == "auto" and listed["id"] == frozen.id
    code, out, _ = run_cli(capsys, "outbound", "attempts", "555-765-4321")
    assert code == 0
    assert f"{NUMBER}: FROZEN until" in out
    assert out.count("short") >= 3 and "prevented" in out


def test_rejections_count_like_short_calls_and_unanswered_calls_do_not(node, db):
    for caller in (busy(), short(), agent(answered_by_far_end=False, far_end_cause="CALL_REJECTED")):
        assert dialled(node.call(caller))
    assert [a.outcome for a in attempts_of(db)] == ["rejected", "short", "rejected"]
    assert attempts_of(db)[0].hangup_cause == "USER_BUSY"
    assert len(freezes_of(db)) == 1
    assert prevented(node.call(conversation()))

    for _ in range(4):
        assert dialled(node.call(no_answer(OTHER)), OTHER)
    gone = agent(OTHER, answered_by_far_end=False, far_end_cause="UNALLOCATED_NUMBER")
    assert dialled(node.call(gone), OTHER)
    assert [a.outcome for a in attempts_of(db, OTHER)] == ["no_answer"] * 4 + ["failed"]
    assert not any(a.strike for a in attempts_of(db, OTHER))
    assert freezes_of(db, OTHER) == []


def test_conversations_over_15_seconds_do_not_count(node, db):
    for _ in range(5):
        result = node.call(conversation())
        assert dialled(result) and result.billsec >= 19
    rows = attempts_of(db)
    assert [(a.outcome, a.strike) for a in rows] == [("conversation", False)] * 5
    assert all(a.talk_seconds >= 19 for a in rows)
    assert freezes_of(db) == []
    # two short calls and conversations in between: still under the threshold
    node.call(short())
    node.call(conversation())
    node.call(short())
    assert freezes_of(db) == []
    assert dialled(node.call(conversation()))


def test_an_unfreeze_restores_dialling_and_clears_the_strikes(node, db, cli_env, capsys):
    for _ in range(3):
        node.call(short())
    assert prevented(node.call(short()))

    code, out, _ = run_cli(capsys, "outbound", "unfreeze", NUMBER, "--reason", "customer asked for a call back")
    assert code == 0 and "unfrozen +15557654321" in out
    (frozen,) = freezes_of(db)
    assert frozen.lifted_at is not None and frozen.lift_reason == "customer asked for a call back"

    assert dialled(node.call(short()))  # dialled again...
    assert dialled(node.call(short()))  # ...and the strikes before the unfreeze no longer count
    assert len(freezes_of(db)) == 1
    code, out, _ = run_cli(capsys, "outbound", "attempts", NUMBER, "--json")
    data = json.loads(out)
    assert data["frozen"] is None and data["strikes"] == 2 and data["threshold"] == 3
    assert [a["outcome"] for a in data["attempts"]][:3] == ["short", "short", "prevented"]
    assert data["freezes"][0]["lift_reason"] == "customer asked for a call back"

    code, _, err = run_cli(capsys, "outbound", "unfreeze", OTHER)
    assert code == 1 and "+15557650000 is not frozen" in err


def test_an_operator_freeze_stops_dialling_for_the_days_given(node, db, cli_env, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "outbound", "freeze", "(555) 765-4321", "--reason",
                           "said not interested (transcript reviewed)", "--days", "30")
    assert code == 0 and f"frozen {NUMBER} until" in out
    (frozen,) = freezes_of(db)
    assert frozen.source == "operator" and frozen.reason == "said not interested (transcript reviewed)"
    assert timedelta(days=29, hours=23) < frozen.until - utcnow() <= timedelta(days=30)

    result = node.call(conversation())
    assert prevented(result) and result.heard == [ANNOUNCEMENT]
    verdict = outbound_verdict(db, result.uuid)
    assert "said not interested" in verdict.reason and verdict.details["source"] == "operator"

    later = utcnow() + timedelta(days=30, minutes=1)
    monkeypatch.setattr(freeze, "utcnow", lambda: later)
    assert dialled(node.call(conversation()))


def test_an_automatic_freeze_expires(node, db, monkeypatch):
    for _ in range(3):
        node.call(busy())
    assert prevented(node.call(busy()))
    (frozen,) = freezes_of(db)

    monkeypatch.setattr(freeze, "utcnow", lambda: frozen.until - timedelta(minutes=1))
    assert prevented(node.call(conversation()))
    monkeypatch.setattr(freeze, "utcnow", lambda: frozen.until + timedelta(seconds=1))
    assert dialled(node.call(busy()))
    last = attempts_of(db)[-1]
    assert (last.outcome, last.strike) == ("rejected", True)
    # the strikes that caused the expired freeze do not count again: one strike so far
    with db.begin() as s:
        assert freeze.strikes(s, NUMBER, OutboundSettings(), now=frozen.until + timedelta(seconds=2)) == 1


def test_outcomes_are_read_the_same_from_json_events(outbound_settings, start_guard, db):
    outbound_settings.esl.event_format = "json"
    node = Node(start_guard())
    for caller in (short(), conversation(), busy()):
        assert dialled(node.call(caller))
    rows = attempts_of(db)
    assert [a.outcome for a in rows] == ["short", "conversation", "rejected"]
    assert 3.5 <= rows[0].talk_seconds <= 4.5 and rows[1].talk_seconds >= 19 and rows[2].talk_seconds is None


def test_the_rule_is_configurable(outbound_settings, start_guard, db):
    rules = outbound_settings.outbound
    rules.threshold, rules.window, rules.short_call, rules.freeze_for = 2, "1h", "30s", "2h"
    rules.rejected_causes = ["USER_BUSY"]
    rules.announcement = ""
    rules.dial_target = "bridge sofia/gateway/trunk/{national}"
    rules.frozen_cause = "CALL_REJECTED"
    node = Node(start_guard())
    first = node.call(agent(talk_time=20.0))  # short under a 30 s rule
    assert first.route == "bridge sofia/gateway/trunk/5557654321"
    node.call(agent(answered_by_far_end=False, far_end_cause="CALL_REJECTED"))  # not a rejection here
    assert [a.outcome for a in attempts_of(db)] == ["short", "no_answer"]
    node.call(busy())
    (frozen,) = freezes_of(db)
    assert timedelta(hours=1, minutes=59) < frozen.until - utcnow() <= timedelta(hours=2)
    assert "within 1h" in frozen.reason
    result = node.call(short())
    assert result.hangup_cause == "CALL_REJECTED" and result.heard == [] and not result.early_media


# ------------------------------------------------------------- several nodes


def test_two_nodes_finishing_the_third_and_fourth_call_at_once_freeze_exactly_once(outbound_settings, start_guard,
                                                                                   db):
    second_db = Database(outbound_settings.database)  # the other node has its own pool, same database
    try:
        a = Node(start_guard())
        b = Node(start_guard(database=second_db))
        a.call(short())
        b.call(short())
        together = [a.fs.spawn(short()), b.fs.spawn(short()), a.fs.spawn(short())]
        results = [g.get(timeout=20) for g in together]
        settle(a.guard)
        settle(b.guard)
        assert all(dialled(r) for r in results)  # all were dialled before any freeze existed
        assert len(freezes_of(db)) == 1
        rows = attempts_of(db)
        assert len(rows) == 5 and sum(a.strike for a in rows) == 3
        assert [r.freeze_id is not None for r in rows].count(True) == 3  # the one that froze + 2 after it
        assert {r.node for r in rows} == {"test-node"}
        assert prevented(b.call(short())) and prevented(a.call(conversation()))
    finally:
        second_db.dispose()


def test_concurrent_attempts_are_counted_one_after_the_other(db):
    """Eight short calls to one number end at once (one connection each): exactly one freeze, exactly
    the first three counted, the rest see the freeze. Without the row lock PostgreSQL would let
    every transaction count only what had committed before it started."""
    rules = OutboundSettings()

    def finish() -> freeze.AttemptResult:
        with db.begin() as s:
            return freeze.record_attempt(s, NUMBER, outcome="short", rules=rules, talk_seconds=3.0)

    results = [g.get(timeout=20) for g in [gevent.spawn(finish) for _ in range(8)]]
    assert sum(r.froze is not None for r in results) == 1
    assert sorted(r.strikes for r in results if r.strike) == [1, 2, 3]
    assert sum(r.frozen_by is not None for r in results) == 5
    assert len(freezes_of(db)) == 1


def test_the_number_row_lock_holds_back_a_second_writer(db, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers by itself (a waiting writer would block the hub)")
    rules = OutboundSettings()
    order: list[str] = []

    def holder() -> None:
        with db.begin() as s:
            freeze._lock(s, NUMBER, utcnow())
            order.append("locked")
            gevent.sleep(0.3)
            order.append("commit")

    def writer() -> None:
        with db.begin() as s:
            freeze.record_attempt(s, NUMBER, outcome="rejected", rules=rules)
            order.append("recorded")

    first = gevent.spawn(holder)
    wait_for(lambda: order == ["locked"])
    second = gevent.spawn(writer)
    gevent.joinall([first, second], raise_error=True, timeout=10)
    assert order == ["locked", "commit", "recorded"]


# ------------------------------------------------------------ the call path


def test_inbound_calls_are_not_touched(node, db):
    result = node.call(Caller(ani="15551234567", dnis="5000"))
    assert result.route == "transfer default XML queues"
    call = records.find_call(db, result.uuid)
    assert [v.stage for v in call.verdicts] == ["routing"]
    with db.begin() as s:
        assert s.scalars(select(OutboundAttempt)).first() is None


def test_a_call_from_an_outbound_context_is_outbound(outbound_settings, start_guard, db):
    outbound_settings.node.outbound_contexts = ["agents"]
    node = Node(start_guard())
    result = node.call(agent("5557654321", variables={}))
    assert dialled(result)
    assert attempts_of(db)[0].outcome == "short"


def test_shadow_mode_dials_a_frozen_number_and_says_it_would_not_have(outbound_settings, start_guard, db):
    outbound_settings.policy.enforce_stages = {"outbound": False}
    node = Node(start_guard())
    with db.begin() as s:
        freeze.freeze(s, NUMBER, reason="test", seconds=3600)
    result = node.call(short())
    assert dialled(result) and result.heard == []
    verdict = outbound_verdict(db, result.uuid)
    assert verdict.outcome == "route" and not verdict.enforced and verdict.reason.startswith("would not dial")
    last = attempts_of(db)[-1]
    assert (last.outcome, last.strike, last.freeze_id is not None) == ("short", False, True)


def test_the_announcement_can_be_played_answered(outbound_settings, start_guard, db):
    outbound_settings.outbound.announce_answered = True
    node = Node(start_guard())
    with db.begin() as s:
        freeze.freeze(s, NUMBER, reason="test", seconds=3600)
    result = node.call(short())
    assert prevented(result) and result.answered and result.heard == [ANNOUNCEMENT]


def test_an_agent_hanging_up_during_the_announcement_is_still_logged_as_prevented(node, db):
    with db.begin() as s:
        freeze.freeze(s, NUMBER, reason="test", seconds=3600)
    result = node.fs.call(agent(hangup_after=0.1), playback_durations={ANNOUNCEMENT: 5.0})
    settle(node.guard)
    assert result.outcome == "caller_hangup" and result.route is None
    assert attempts_of(db)[-1].outcome == "prevented"


def test_the_database_down_at_call_time_dials_the_agent_anyway(outbound_settings, start_guard, db, monkeypatch):
    def down(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(PolicySnapshot, "load", down)   # the freezes could never be read
    node = Node(start_guard())
    result = node.call(conversation())
    assert dialled(result)  # failing open for an agent's call means dialling, not the inbound queue
    verdict = outbound_verdict(db, result.uuid)
    assert verdict.code == "outbound.unchecked" and "database unavailable" in verdict.reason
    assert node.guard.app.metrics.db_errors._value.get() >= 1


def test_the_database_down_with_on_error_closed_hangs_up(outbound_settings, start_guard, monkeypatch):
    outbound_settings.policy.on_error = "closed"

    def down(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(PolicySnapshot, "load", down)
    node = Node(start_guard())
    result = node.call(conversation())
    assert result.route is None and result.hangup_cause == "NORMAL_TEMPORARY_FAILURE"


def test_numbers_fsguard_cannot_read(node, db):
    garbage = node.call(agent("sip:evil@example.com"))
    assert garbage.hangup_cause == "INVALID_NUMBER_FORMAT" and garbage.route is None
    internal = node.call(agent("1001"))
    assert internal.route == "bridge sofia/gateway/carrier/1001"
    with db.begin() as s:
        assert s.scalars(select(OutboundAttempt)).first() is None


# ------------------------------------------------------------ units


@pytest.mark.parametrize("answered,talk,cause,expected", [
    (True, 14.999, "NORMAL_CLEARING", "short"),
    (True, 15.0, "NORMAL_CLEARING", "conversation"),
    (True, 0.0, "NORMAL_CLEARING", "short"),
    (False, None, "USER_BUSY", "rejected"),
    (False, None, "CALL_REJECTED", "rejected"),
    (False, None, "NO_ANSWER", "no_answer"),
    (False, None, "ORIGINATOR_CANCEL", "no_answer"),
    (False, None, "NO_ROUTE_DESTINATION", "failed"),
    (False, None, "GATEWAY_DOWN", "failed"),
    (False, None, None, "no_answer"),
])
def test_classify(answered, talk, cause, expected):
    assert freeze.classify(answered=answered, talk_seconds=talk, cause=cause, rules=OutboundSettings()) == expected


def _end(event, cause="NORMAL_CLEARING", answered=True):
    return CallEnd.from_event(event, hangup_cause=cause, answered=answered)


def test_far_end_reads_the_bridge_not_the_agent_leg():
    # the agent's leg was answered by the dialplan before the socket; the far end never answered
    event = {"variable_bridge_uepoch": "0", "variable_end_uepoch": "1700000030000000",
             "variable_originate_disposition": "NO_ANSWER", "variable_billsec": "30", "variable_duration": "30"}
    assert far_end(_end(event)) == (False, None, "NO_ANSWER")
    event = {"variable_bridge_uepoch": "1700000010000000", "variable_end_uepoch": "1700000024500000",
             "variable_billsec": "30"}
    assert far_end(_end(event)) == (True, 14.5, "NORMAL_CLEARING")
    # no final event (no linger): the leg's own flags
    assert far_end(CallEnd("NORMAL_CLEARING", 9, 8, True)) == (True, 8.0, "NORMAL_CLEARING")


def test_window_and_strike_reset_with_a_shifted_now(db):
    rules = OutboundSettings()
    t0 = utcnow()
    with db.begin() as s:
        freeze.record_attempt(s, NUMBER, outcome="short", rules=rules, now=t0)
        freeze.record_attempt(s, NUMBER, outcome="rejected", rules=rules, now=t0 + timedelta(hours=3))
    with db.begin() as s:  # 25 h after the first: it fell out of the 1-day window
        result = freeze.record_attempt(s, NUMBER, outcome="short", rules=rules, now=t0 + timedelta(hours=25))
    assert (result.strikes, result.froze) == (2, None)
    with db.begin() as s:
        result = freeze.record_attempt(s, NUMBER, outcome="short", rules=rules, now=t0 + timedelta(hours=26))
    assert result.strikes == 3 and result.froze is not None
    until = result.froze.until
    assert until == t0 + timedelta(hours=26, days=7)
    with db.begin() as s:
        assert freeze.active_freeze(s, NUMBER, now=until - timedelta(seconds=1)) is not None
        assert freeze.active_freeze(s, NUMBER, now=until) is None
        assert [f.number for f in freeze.frozen(s, now=until - timedelta(seconds=1))] == [NUMBER]
        assert freeze.frozen(s, now=until) == []


def test_a_new_operator_freeze_replaces_the_one_in_force(db):
    with db.begin() as s:
        first, _ = freeze.freeze(s, NUMBER, reason="auto", seconds=86400, source="auto", by="node-1")
    with db.begin() as s:
        second, replaced = freeze.freeze(s, NUMBER, reason="reviewed", seconds=3 * 86400, by="alice")
    assert [f.id for f in replaced] == [first.id]
    with db.begin() as s:
        assert freeze.active_freeze(s, NUMBER).id == second.id
        assert [f.lift_reason for f in freeze.freezes(s, NUMBER)] == [None, "superseded by a new freeze"]


def test_erasure_deletes_history_but_keeps_a_freeze_in_force(db):
    rules = OutboundSettings()
    t0 = utcnow() - timedelta(days=30)
    with db.begin() as s:
        for i in range(3):
            freeze.record_attempt(s, NUMBER, outcome="short", rules=rules, now=t0 + timedelta(minutes=i))
        freeze.freeze(s, NUMBER, reason="not interested", seconds=86400)
        freeze.record_attempt(s, OTHER, outcome="short", rules=rules)
    with db.begin() as s:
        lines = freeze.erase(s, NUMBER)
    assert "deleted 3 outbound call attempt(s)" in lines[0] and "deleted 1 past freeze(s)" in lines[1]
    assert "KEPT the freeze in force" in lines[2]
    assert attempts_of(db) == [] and len(freezes_of(db)) == 1 and len(attempts_of(db, OTHER)) == 1
    with db.begin() as s:
        freeze.unfreeze(s, NUMBER)
    with db.begin() as s:
        lines = freeze.erase(s, NUMBER)
    assert "deleted 1 past freeze(s)" in lines[1] and len(lines) == 2
    assert freezes_of(db) == []


def test_fsguard_erase_runs_the_outbound_eraser(db, settings):
    from fsguard.rules import erasure

    assert ("outbound", freeze.erase) in erasure.AREAS
    number = "+14155552671"  # erasure reads numbers strictly (valid numbers only)
    with db.begin() as s:
        freeze.record_attempt(s, number, outcome="conversation", rules=OutboundSettings(), talk_seconds=60.0)
        freeze.freeze(s, number, reason="not interested", seconds=3600)
    report = erasure.erase(db, number, settings=settings)
    assert report.ok, report.text()
    (area,) = [a for a in report.areas if a.area == "outbound"]
    assert "deleted 1 outbound call attempt(s)" in area.lines[0] and "KEPT the freeze" in area.lines[2]
    assert attempts_of(db, number) == [] and len(freezes_of(db, number)) == 1


def test_replay_reuses_the_stored_freeze_and_does_not_touch_the_database():
    settings = Settings()  # app.db is None below: any query would fail
    app = App.__new__(App)
    app.settings, app.db, app.metrics = settings, None, None
    stage = OutboundStage(app)
    now = utcnow()
    frozen = {"id": 7, "number": NUMBER, "created_at": now.isoformat(), "until": (now + timedelta(days=1)).isoformat(),
              "source": "auto", "reason": "3 rejected or short calls", "created_by": "node-1"}

    def replayed(stored):
        record = {"uuid": "r1", "dnis": NUMBER, "ani_raw": "1001",
                  "inputs": {"dnis": NUMBER, "presented": "1001", "direction": "outbound", "outbound_freeze": stored}}
        return ReplayCall(record, settings)

    verdict = stage.run(replayed(frozen))
    assert verdict.outcome.value == "reject" and verdict.details["freeze_id"] == 7
    verdict = stage.run(replayed(None))
    assert verdict.outcome.value == "route" and str(verdict.action) == DIAL.format(NUMBER)


# ------------------------------------------------------------ settings and CLI


def test_settings_defaults_env_and_validation(tmp_path):
    s = load_settings(env={})
    o = s.outbound
    assert (o.threshold, o.window_seconds, o.short_call_seconds, o.freeze_seconds) == (3, 86400, 15, 7 * 86400)
    assert o.rejected_causes == ["USER_BUSY", "CALL_REJECTED"]
    s = load_settings(env={"FSGUARD_OUTBOUND_THRESHOLD": "5", "FSGUARD_OUTBOUND_REJECTED_CAUSES": "user_busy",
                           "FSGUARD_OUTBOUND_FREEZE_FOR": "30d"})
    assert (s.outbound.threshold, s.outbound.rejected_causes, s.outbound.freeze_seconds) == (5, ["USER_BUSY"],
                                                                                            30 * 86400)
    bad = {
        "FSGUARD_OUTBOUND_THRESHOLD": ("0", "outbound.threshold"),
        "FSGUARD_OUTBOUND_WINDOW": ("a day", "outbound.window"),
        "FSGUARD_OUTBOUND_DIAL_TARGET": ("bridge sofia/gateway/x/{phone}", "outbound.dial_target"),
        "FSGUARD_OUTBOUND_FROZEN_CAUSE": ("no such cause!", "outbound.frozen_cause"),
    }
    for var, (value, key) in bad.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_settings(env={var: value})
    config = tmp_path / "fsguard.toml"
    config.write_text('[outbound]\nthreshold = 4\nwindow = "12h"\ndial_target = "playback x"\n')
    with pytest.raises(ConfigError, match="outbound.dial_target"):
        load_settings(config, env={})


def test_cli_errors_are_one_clear_line(node, cli_env, capsys):
    code, _, err = run_cli(capsys, "outbound", "freeze", "not-a-number", "--reason", "x")
    assert code == 1 and "'not-a-number' is not a valid telephone number" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "outbound", "freeze", NUMBER, "--reason", "x", "--days", "0")
    assert code == 1 and "--days must be more than 0" in err
    code, _, err = run_cli(capsys, "outbound", "freeze", NUMBER, "--reason", "   ")
    assert code == 1 and "--reason cannot be empty" in err
    code, out, _ = run_cli(capsys, "outbound", "frozen")
    assert code == 0 and "no number is frozen" in out
    code, out, _ = run_cli(capsys, "outbound", "attempts", NUMBER)
    assert code == 0 and "not frozen; 0 of 3 strikes" in out and "no attempts recorded" in out
    code, out, _ = run_cli(capsys, "outbound", "freeze", NUMBER, "--reason", "reviewed")
    code, out, _ = run_cli(capsys, "outbound", "frozen")
    assert code == 0 and NUMBER in out and "operator" in out and "reviewed" in out
