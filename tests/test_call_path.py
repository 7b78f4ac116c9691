"""The call path end to end: the simulator plays FreeSWITCH over real TCP, on SQLite and PostgreSQL."""

from __future__ import annotations

import gc
import json
import socket

import pytest
from sqlalchemy import select

from fsguard.ops import cli
from fsguard.store import records
from fsguard.esl.channel import COMPLETION, EVENTS_NOT_READ, EVENTS_READ
from fsguard.esl.session import OutboundSession
from fsguard.store.models import CallRecord
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard_testing import transcripts as tx
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle, wait_for


def stored(db, uuid: str) -> CallRecord | None:
    return records.find_call(db, uuid)


def test_a_call_is_routed_to_the_default_target_and_recorded(fs, guard, db, cli_env, capsys):
    result = fs.call(Caller(ani="15551234567", dnis="5000"))
    assert result.outcome == "routed", result
    assert result.route == "transfer default XML queues"
    assert result.ok, result.violations
    commands = [c.splitlines()[0] for c in result.commands]
    subscribe = "event plain CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE DTMF"
    assert commands[:6] == ["connect", "resume", "myevents", "nixevent ALL", subscribe, "linger"]
    # what fsguard never reads, FreeSWITCH never sent
    assert not set(result.event_names) & set(EVENTS_NOT_READ + (COMPLETION,)), result.event_names
    settle(guard)
    call = stored(db, result.uuid)
    assert call is not None
    assert (call.ani, call.dnis, call.direction, call.outcome) == ("+15551234567", "5000", "inbound", "routed")
    assert call.action == "transfer default XML queues"
    assert call.hangup_cause == "NORMAL_CLEARING" and call.billsec is not None
    assert [v.stage for v in call.verdicts] == ["routing"]

    assert cli.main(["calls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    mine = next(c for c in listed if c["uuid"] == result.uuid)
    for key in ("uuid", "ani", "dnis", "direction", "started_at", "action", "hangup_cause", "billsec", "verdicts"):
        assert key in mine
    assert mine["verdicts"][0]["stage"] == "routing"


def test_freeswitch_sends_only_the_channel_events_fsguard_reads(fs, guard):
    """Each unread event is 2-5 KB that FreeSWITCH would serialise and fsguard would have to skip."""
    result = fs.call(Caller(ani="15551234567", dnis="5000"))
    assert result.outcome == "routed" and result.ok, result
    sent = set(result.event_names)
    assert sent and sent <= EVENTS_READ, sent - EVENTS_READ
    assert "CHANNEL_HANGUP_COMPLETE" in sent
    # nothing waited for an application: the variables and the route brought no completions back
    assert COMPLETION not in sent


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)


def test_calls_show_explains_each_stage(fs, guard, db, cli_env, capsys):
    result = fs.call(Caller(ani="+442079460000", dnis="5000"))
    settle(guard)
    assert cli.main(["calls", "show", result.uuid]) == 0
    out = capsys.readouterr().out
    assert "routing: route" in out and "default target" in out
    assert "FreeSWITCH was told: transfer default XML queues" in out


def test_caller_name_carrying_a_forged_number_does_not_change_the_ani(fs, guard, db, transcripts):
    """The SIP display name 'Eve%0ACaller-Caller-ID-Number%3A%2018005550199' (injection.txt)."""
    raw = tx.connect_reply(transcripts / "injection.txt")
    result = fs.call(Caller(channel_data_raw=raw))
    assert result.outcome == "routed", result
    settle(guard)
    with db.begin() as s:
        call = s.scalars(select(CallRecord).order_by(CallRecord.started_at.desc())).first()
    assert call.ani == "+15557654321"
    assert call.ani_raw == "15557654321"
    assert "18005550199" in call.caller_name and call.ani != "+18005550199"


def test_caller_name_with_raw_newlines_is_screened_on_the_true_number(fs, guard, db):
    result = fs.call(Caller(ani="15557654321", name="Eve\nCaller-Caller-ID-Number: 18005550199"))
    settle(guard)
    assert stored(db, result.uuid).ani == "+15557654321"


def test_over_capacity_calls_get_the_fail_open_route_not_a_bare_close(settings, start_guard):
    settings.esl.max_calls = 2
    guard = start_guard()
    fs = FakeFreeSWITCH(guard.address, time_scale=0.005)
    held = [fs.spawn(Caller(talk_time=200)) for _ in range(2)]
    wait_for(lambda: len(guard.app.held) == 2)
    refused = fs.call(Caller())
    assert refused.outcome == "routed" and refused.route == settings.policy.fail_open_route
    assert refused.ok, refused.violations
    assert guard.app.metrics.over_capacity.labels(reason="over_capacity")._value.get() == 1
    for g in held:
        assert g.get(timeout=10).outcome == "routed"


class Explodes(Stage):
    name = "explodes"

    def run(self, call):
        raise RuntimeError("a bug in a stage")


class AlwaysRejects(Stage):
    name = "rejects"

    def run(self, call):
        return Verdict.reject("test rejects everyone", "test.reject", action="hangup CALL_REJECTED")


class Greets(Stage):
    name = "greets"

    def run(self, call):
        call.export(fsguard_greeted="yes")
        call.pre_answer()
        call.play("ivr/ivr-welcome.wav")
        return Verdict.carry_on("greeted", "test.greeted")


@pytest.fixture
def test_stages(monkeypatch):
    monkeypatch.setitem(STAGES, "explodes", f"{__name__}:Explodes")
    monkeypatch.setitem(STAGES, "rejects", f"{__name__}:AlwaysRejects")
    monkeypatch.setitem(STAGES, "greets", f"{__name__}:Greets")


def test_completions_are_subscribed_only_while_a_stage_waits_for_an_application(fs_factory, settings, test_stages):
    settings.policy.stages = ["greets", "routing"]
    fs, guard = fs_factory()
    result = fs.call(Caller())
    assert result.outcome == "routed" and result.ok, result.violations
    heads = [c.splitlines()[0] + (" " + c.splitlines()[2] if c.startswith("sendmsg") else "") for c in result.commands]
    subscribe, unsubscribe = heads.index(f"event plain {COMPLETION}"), heads.index(f"nixevent {COMPLETION}")
    # the export goes before it, pre_answer right after it; the route comes after the unsubscription
    assert heads[subscribe - 1] == "sendmsg execute-app-name: export"
    assert heads[subscribe + 1] == "sendmsg execute-app-name: pre_answer"
    assert subscribe < heads.index("sendmsg execute-app-name: playback") < unsubscribe
    assert heads[-2:] == ["sendmsg execute-app-name: transfer", "exit"]
    # pre_answer's and playback's; the export's too when it ran after the subscription (queued
    # applications run on the channel's next tick, which may fall either side); none for the route
    assert result.event_names.count(COMPLETION) in (2, 3)


def test_a_stage_that_raises_fails_open(fs_factory, settings, db, test_stages):
    settings.policy.stages = ["explodes", "routing"]
    fs, guard = fs_factory()
    result = fs.call(Caller())
    assert result.outcome == "routed" and result.route == settings.policy.fail_open_route
    settle(guard)
    call = stored(db, result.uuid)
    assert call.outcome == "failed_open"
    assert call.verdicts[0].outcome == "error" and "RuntimeError" in call.verdicts[0].details["error"]


def test_fail_closed_hangs_up_with_the_configured_cause(fs_factory, settings, db, test_stages):
    settings.policy.stages = ["explodes", "routing"]
    settings.policy.on_error = "closed"
    fs, _guard = fs_factory()
    result = fs.call(Caller())
    assert result.outcome == "hungup" and result.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert not result.answered


def test_a_rejected_call_is_hung_up_unanswered(fs_factory, settings, db, test_stages):
    settings.policy.stages = ["rejects", "routing"]
    fs, guard = fs_factory()
    result = fs.call(Caller())
    assert result.outcome == "hungup" and result.hangup_cause == "CALL_REJECTED"
    assert not result.answered and not result.early_media and result.billsec == 0
    settle(guard)
    assert stored(db, result.uuid).outcome == "rejected"


@pytest.fixture
def fs_factory(start_guard):
    def make():
        guard = start_guard()
        return FakeFreeSWITCH(guard.address, time_scale=0.005), guard
    return make


def test_the_database_down_during_a_call_still_routes_it(fs_factory, settings, db, monkeypatch, test_stages,
                                                         caplog):
    settings.policy.stages = ["routing"]
    fs, guard = fs_factory()
    from sqlalchemy.exc import OperationalError

    writer = guard.app.writer
    real_write, failures = writer._write_batch, []

    def down_twice(batch):
        if len(failures) < 2:
            failures.append(len(batch))
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        real_write(batch)

    monkeypatch.setattr(writer, "_write_batch", down_twice)
    result = fs.call(Caller())
    assert result.outcome == "routed" and result.route == "transfer default XML queues"
    settle(guard)
    assert writer.wait_idle(10)
    assert guard.app.metrics.db_errors._value.get() >= 2 and len(failures) == 2
    stored_call = stored(db, result.uuid)
    assert stored_call is not None and stored_call.outcome == "routed" and stored_call.ended_at is not None


def test_a_stage_that_cannot_reach_the_database_fails_open(fs_factory, settings, monkeypatch):
    from sqlalchemy.exc import OperationalError

    class NeedsDB(Stage):
        name = "needsdb"

        def run(self, call):
            raise OperationalError("SELECT", {}, Exception("could not connect to server"))

    monkeypatch.setitem(STAGES, "needsdb", f"{__name__}:NeedsDB")
    globals()["NeedsDB"] = NeedsDB
    settings.policy.stages = ["needsdb", "routing"]
    fs, guard = fs_factory()
    result = fs.call(Caller())
    assert result.outcome == "routed" and result.route == settings.policy.fail_open_route
    settle(guard)
    assert guard.app.metrics.db_errors._value.get() >= 1


def test_a_peer_sending_garbage_is_dropped_and_the_next_call_is_served(fs, guard, db):
    with socket.create_connection(guard.address) as sock:
        sock.recv(65536)  # connect, resume, myevents, linger
        sock.sendall(b"\xff\xfe garbage that is not ESL\n\n" + b"X" * 100)
        sock.settimeout(3)
        while sock.recv(65536):
            pass
    settle(guard)
    result = fs.call(Caller())
    assert result.outcome == "routed" and result.ok


def test_a_peer_vanishing_mid_call_leaves_nothing_behind(fs, guard, db):
    before = len([o for o in gc.get_objects() if isinstance(o, OutboundSession)])
    for _ in range(3):
        with socket.create_connection(guard.address) as sock:
            sock.recv(100)
    settle(guard)
    result = fs.call(Caller(hangup_after=0.0))
    settle(guard)
    gc.collect()
    after = len([o for o in gc.get_objects() if isinstance(o, OutboundSession)])
    assert after <= before
    assert db.engine.pool.checkedout() == 0
    assert fs.call(Caller()).outcome == "routed"
    del result


def test_no_channel_is_stranded_whatever_the_path(fs_factory, settings, test_stages):
    """Routed, rejected, internal error: every channel ends with an instruction."""
    outcomes = []
    for stages in (["routing"], ["rejects"], ["explodes"]):
        settings.policy.stages = stages
        fs, _ = fs_factory()
        result = fs.call(Caller())
        outcomes.append(result.outcome)
        assert result.outcome not in ("stranded", "protocol_error"), result
    assert outcomes == ["routed", "hungup", "routed"]


def test_shutdown_gives_calls_being_decided_the_fail_open_route(settings, start_guard, monkeypatch):
    class Slow(Stage):
        name = "slow"

        def run(self, call):
            call.play("ivr/long_prompt.wav")
            return Verdict.carry_on()

    globals()["Slow"] = Slow
    monkeypatch.setitem(STAGES, "slow", f"{__name__}:Slow")
    settings.policy.stages = ["slow", "routing"]
    guard = start_guard()
    fs = FakeFreeSWITCH(guard.address, time_scale=0.01)
    caller = Caller(playback_durations={"ivr/long_prompt.wav": 500.0})
    pending = fs.spawn(caller)
    wait_for(lambda: len(guard.app.deciding) == 1)
    guard.server.stop(drain=0.2)
    result = pending.get(timeout=10)
    assert result.outcome in ("routed", "fallback"), result
    assert result.outcome != "stranded"
    refused = fs.call(Caller())
    assert refused.outcome == "refused"


def test_a_call_that_hangs_up_during_a_stage_is_recorded_as_abandoned(settings, start_guard, db, test_stages):
    settings.policy.stages = ["greets", "routing"]
    guard = start_guard()
    fs = FakeFreeSWITCH(guard.address, time_scale=0.005)
    result = fs.call(Caller(hangup_after=1.0, playback_durations={"ivr/ivr-welcome.wav": 30.0}))
    assert result.outcome == "caller_hangup"
    settle(guard)
    call = stored(db, result.uuid)
    assert call.outcome == "abandoned"
    assert call.verdicts[-1].outcome == "abandoned"
    assert call.hangup_cause is not None
