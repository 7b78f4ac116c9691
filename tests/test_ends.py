"""The end-of-call watcher (fsguard/service/ends.py) on the simulator and its fake inbound Event
Socket: a routed call's socket is let go of after the route, its end comes over the node's one
inbound connection, and the end row is the same as when the socket is held."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from fsguard.config import Settings
from fsguard.service.ends import EndMissed, EndWatcher
from fsguard.store import records
from fsguard_testing.inbound_events import InboundEvents
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle, wait_for

#: what the reference dialplan sets before ``socket`` (conf/freeswitch/dialplan/public_fsguard.xml)
DIALPLAN = {"socket_resume": "true"}


@pytest.fixture
def inbound() -> Iterator[InboundEvents]:
    hub = InboundEvents().start()
    yield hub
    hub.stop()


@pytest.fixture
def following(settings: Settings, inbound: InboundEvents) -> Settings:
    settings.esl.follow_ends = "inbound"
    settings.esl.inbound = inbound.address
    return settings


def _simulator(guard: Any, inbound: InboundEvents) -> FakeFreeSWITCH:
    sim = FakeFreeSWITCH(guard.address, time_scale=0.005)
    sim.inbound_events = inbound
    return sim


def _commands(result: Any) -> list[str]:
    return [c.splitlines()[0] for c in result.commands]


def test_routed_call_is_let_go_of_after_the_route_and_its_end_comes_from_the_inbound_socket(
        start_guard: Callable[..., Any], following: Settings, inbound: InboundEvents, db: Any) -> None:
    guard = start_guard(following)
    wait_for(lambda: guard.app.ends.connected, what="the end watcher connected")
    sim = _simulator(guard, inbound)

    result = sim.call(Caller(variables=DIALPLAN, talk_time=60.0))

    assert result.outcome == "routed" and result.ok, result.violations
    commands = _commands(result)
    # no resume (the dialplan's socket_resume does it); once the route is queued the listener
    # turns it off (and names the node) at once, and the socket is closed, without exit, before
    # the call ends
    assert "resume" not in commands and "exit" not in commands
    assert commands[-1] == f"api uuid_setvar_multi {result.uuid} fsguard_node=test-node;socket_resume=false"
    assert commands.index(commands[-1]) > commands.index("sendmsg")
    assert result.variables["socket_resume"] == "false" and result.variables["fsguard_node"] == "test-node"
    assert not result.late_commands
    assert inbound.commands[1:3] == ["filter variable_fsguard_node test-node", "event json CHANNEL_HANGUP_COMPLETE"]
    settle(guard)
    row = records.find_call(db, result.uuid)
    assert row is not None and row.hangup_cause == result.hangup_cause == "NORMAL_CLEARING"
    assert row.billsec == int(result.billsec) and row.answered is result.answered


def test_the_end_row_is_the_same_whether_the_socket_is_held_or_let_go_of(
        start_guard: Callable[..., Any], following: Settings, inbound: InboundEvents, db: Any) -> None:
    for mode in ("socket", "inbound"):
        following.esl.follow_ends = mode
        guard = start_guard(following)
        if mode == "inbound":
            wait_for(lambda: guard.app.ends.connected, what="the end watcher connected")
        result = _simulator(guard, inbound).call(Caller(variables=DIALPLAN, talk_time=3.0))
        assert result.ok, result.violations
        settle(guard)
        row = records.find_call(db, result.uuid)
        assert row is not None
        # what FreeSWITCH's CHANNEL_HANGUP_COMPLETE said, either way
        assert (row.hangup_cause, row.billsec, row.answered) == (result.hangup_cause, int(result.billsec), True)
        assert row.duration is not None and row.duration >= row.billsec
        guard.server.stop(drain=0.5)


def test_a_dialplan_without_socket_resume_gets_resume_and_the_call_is_held(
        start_guard: Callable[..., Any], following: Settings, inbound: InboundEvents, db: Any) -> None:
    guard = start_guard(following)
    wait_for(lambda: guard.app.ends.connected, what="the end watcher connected")

    result = _simulator(guard, inbound).call(Caller(talk_time=1.0))

    assert result.ok, result.violations
    commands = _commands(result)
    assert commands.index("resume") > commands.index("linger")   # after the connect reply said so
    assert not any("uuid_setvar_multi" in c for c in commands) and "fsguard_node" not in result.variables
    settle(guard)
    row = records.find_call(db, result.uuid)
    assert row is not None and row.hangup_cause == "NORMAL_CLEARING"


def test_with_the_inbound_socket_down_the_call_is_held_and_its_end_row_written(
        start_guard: Callable[..., Any], following: Settings, inbound: InboundEvents, db: Any) -> None:
    inbound.stop()
    guard = start_guard(following)
    gevent.sleep(0.1)
    assert not guard.app.ends.connected

    result = _simulator(guard, inbound).call(Caller(variables=DIALPLAN, talk_time=1.0))

    assert result.ok, result.violations
    # held: exit only once the call is over (socket_resume=false went with the route all the same)
    assert _commands(result)[-1] == "exit" and "exit" not in result.commands[:-1]
    settle(guard)
    row = records.find_call(db, result.uuid)
    assert row is not None and row.hangup_cause == "NORMAL_CLEARING" and row.billsec == int(result.billsec)


# ===================================================================== the watcher on its own


def _end(uuid: str, node: str = "n1", cause: str = "NORMAL_CLEARING") -> list[tuple[str, str]]:
    return [("Event-Name", "CHANNEL_HANGUP_COMPLETE"), ("Unique-ID", uuid), ("Hangup-Cause", cause),
            ("variable_fsguard_node", node), ("variable_billsec", "7")]


@pytest.fixture
def watcher(settings: Settings, inbound: InboundEvents) -> Iterator[EndWatcher]:
    settings.esl.inbound = inbound.address
    w = EndWatcher(settings.esl, "n1", keep_max=3)
    w.start()
    wait_for(lambda: w.connected, what="the end watcher connected")
    yield w
    w.stop()


def test_an_end_that_arrives_before_its_call_waits_is_handed_over_at_once(
        watcher: EndWatcher, inbound: InboundEvents) -> None:
    inbound.publish(_end("early"))
    wait_for(lambda: "early" in watcher.recent, what="the early end kept")

    result = watcher.register("early")

    assert result.ready() and result.get()["variable_billsec"] == "7"
    assert "early" not in watcher.recent and "early" not in watcher.waiting


def test_only_this_nodes_ends_reach_the_watcher_and_unclaimed_ends_are_bounded(
        watcher: EndWatcher, inbound: InboundEvents) -> None:
    waiting = watcher.register("mine")
    inbound.publish(_end("other", node="n2"))
    inbound.publish(_end("mine"))
    assert waiting.get(timeout=2)["Unique-ID"] == "mine"
    assert watcher.ends_received == 1   # FreeSWITCH's filter kept n2's end away

    for n in range(5):
        inbound.publish(_end(f"unclaimed-{n}"))
    wait_for(lambda: watcher.ends_received == 6, what="the unclaimed ends read")
    assert list(watcher.recent) == ["unclaimed-2", "unclaimed-3", "unclaimed-4"]


def test_after_a_reconnection_a_call_that_ended_meanwhile_is_told_its_end_was_missed(
        watcher: EndWatcher, inbound: InboundEvents) -> None:
    gone, alive = watcher.register("gone"), watcher.register("alive")
    inbound.stop_serving()
    inbound.ended.add("gone")   # it ended while nobody listened

    wait_for(lambda: watcher.connections == 2 and watcher.connected, timeout=5, what="reconnected")
    with pytest.raises(EndMissed):
        gone.get(timeout=2)
    assert not alive.ready()
    inbound.publish(_end("alive"))
    assert alive.get(timeout=2)["Hangup-Cause"] == "NORMAL_CLEARING"


@pytest.mark.parametrize("dialplan, let_go_at_once", [(DIALPLAN, True), ({}, False)])
def test_a_refused_calls_socket_is_closed_only_once_closing_cannot_reset_its_route(
        start_guard: Callable[..., Any], following: Settings, inbound: InboundEvents,
        dialplan: dict[str, str], let_go_at_once: bool) -> None:
    following.esl.max_calls = 1
    guard = start_guard(following)
    wait_for(lambda: guard.app.ends.connected, what="the end watcher connected")
    sim = _simulator(guard, inbound)
    busy = sim.spawn(Caller(variables=DIALPLAN, talk_time=400))
    wait_for(lambda: len(guard.app.held) == 1, what="fsguard busy with one call")

    refused = sim.call(Caller(variables=dialplan, talk_time=100))

    assert refused.outcome == "routed" and refused.ok, refused.violations
    commands = _commands(refused)
    assert guard.app.metrics.over_capacity.labels(reason="over_capacity")._value.get() == 1
    if let_go_at_once:
        # socket_resume=false went with the route, and again by the listener once it was queued:
        # the socket was then closed, without exit
        assert refused.variables["socket_resume"] == "false"
        assert commands[-1] == f"api uuid_setvar_multi {refused.uuid} socket_resume=false"
        assert "exit" not in commands
        assert not refused.late_commands
    else:
        # fsguard sent resume, which nothing undoes: the socket stays until the call is over
        assert "resume" in commands and not any("uuid_setvar_multi" in c for c in commands)
        assert [c.splitlines()[0] for c in refused.late_commands] == ["exit"]
    guard.server.stop(drain=0.2)
    busy.kill()
