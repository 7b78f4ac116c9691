"""Letting go of a routed call's socket on a real FreeSWITCH 1.10.12 (esl.follow_ends = "inbound").

fsguard closes the call's outbound socket right after the route and learns the end from its
node's inbound Event Socket (service/ends.py). What the call does afterwards is read from
FreeSWITCH's own events: the channel goes on to the agent (answered, bridged) after the socket
is gone, and the end row and the stages' after_call effects are what a held socket gives.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

import gevent
import pytest
from sqlalchemy import select

from fsguard.config import Settings
from fsguard.esl.session import OutboundSession
from fsguard.service.app import App
from fsguard.service.ends import EndWatcher
from fsguard.store.models import CallRecord
from fsguard.store.models.outbound import OutboundAttempt
from fsguard.store.models.recordings import Recording
from fsguard_testing.freeswitch import CallPlacer, EventSocketClient

from test_realfs_calls import agent_ready, executed, hangup  # tests/realfs is on sys.path under pytest

CALLER = "12125550141"


def _sessions(app: App, monkeypatch: pytest.MonkeyPatch) -> list[OutboundSession]:
    """Every outbound session the app opens, to see when fsguard let go of each."""
    opened: list[OutboundSession] = []
    original = App.session_for

    def session_for(self: App, sock: Any) -> OutboundSession:
        session = original(self, sock)
        opened.append(session)
        return session

    monkeypatch.setattr(App, "session_for", session_for)
    return opened


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def _ended(app: App, uuid: str) -> CallRecord:
    def row() -> CallRecord | None:
        with app.db.begin() as session:
            found = session.get(CallRecord, uuid)
            if found is not None and found.ended_at is not None:
                session.expunge(found)
                return found
        return None

    return _wait(row, f"the end row of {uuid}")


def _connected(app: App) -> None:
    _wait(lambda: app.ends.connected, "the end watcher connected")


@pytest.mark.parametrize("follow_ends", ["inbound", "socket"])
def test_routed_call_goes_on_to_the_agent_and_its_end_row_is_freeswitchs_either_way(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch, follow_ends: str) -> None:
    realfs_settings.esl.follow_ends = follow_ends
    realfs_settings.recording.consent = False
    app = start_fsguard(realfs_settings)
    opened = _sessions(app, monkeypatch)
    if follow_ends == "inbound":
        _connected(app)
    agent_ready(fs_events)
    a_leg, b_leg = placer.loopback(CALLER)

    executed(fs_events, b_leg, "transfer")
    session = _wait(lambda: next((s for s in opened if s.uuid == b_leg), None), "fsguard's session")
    if follow_ends == "inbound":
        # the socket is gone while the call is still ringing the agent ...
        _wait(lambda: session.closed, "the socket let go of")
        assert not fs_events.find("CHANNEL_BRIDGE", where={"Unique-ID": b_leg})
        assert not fs_events.find("CHANNEL_HANGUP", where={"Unique-ID": b_leg})
        assert b_leg in app.ends.waiting
    # ... and FreeSWITCH goes on: the agent answers, the caller is bridged to the agent
    bridge = fs_events.wait_for("CHANNEL_BRIDGE", where={"Unique-ID": b_leg}, timeout=15)
    fs_events.wait_for("CHANNEL_ANSWER", where={"Unique-ID": bridge["Other-Leg-Unique-ID"]})
    gevent.sleep(1.2)
    assert not fs_events.find("CHANNEL_HANGUP", where={"Unique-ID": b_leg})
    assert session.closed == (follow_ends == "inbound")
    fs_events.api(f"uuid_kill {a_leg}")
    end = hangup(fs_events, b_leg)

    row = _ended(app, b_leg)
    assert row.hangup_cause == end.var("hangup_cause") == "NORMAL_CLEARING"
    assert row.billsec == int(end.var("billsec") or -1) >= 1
    assert row.duration == int(end.var("duration") or -1)
    assert row.answered is True
    # the recording stage's after_call finalized the file FreeSWITCH closed at the hang-up
    with app.db.begin() as db:
        recording = db.scalars(select(Recording).where(Recording.call_uuid == b_leg)).one()
        assert recording.status == "complete" and recording.size_bytes and recording.sha256
    assert end.var("fsguard_node") == ("realfs" if follow_ends == "inbound" else None)
    assert end.var("socket_resume") == ("false" if follow_ends == "inbound" else "true")


def test_an_agents_short_call_is_counted_after_letting_go_of_its_bridge(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch) -> None:
    number = "13055550171"
    realfs_settings.outbound.dial_target = "bridge loopback/{digits}/far_end"
    app = start_fsguard(realfs_settings)
    opened = _sessions(app, monkeypatch)
    _connected(app)

    a_leg, b_leg = placer.loopback("1001", number, context="default")
    executed(fs_events, b_leg, "bridge")
    session = _wait(lambda: next((s for s in opened if s.uuid == b_leg), None), "fsguard's session")
    _wait(lambda: session.closed, "the socket let go of")
    assert not fs_events.find("CHANNEL_HANGUP", where={"Unique-ID": b_leg})
    end = hangup(fs_events, b_leg, timeout=30)
    # the far end answered and hung up after about 4 s: the bridge was never broken, no fallback ran
    assert end.var("hangup_cause") == "NORMAL_CLEARING" and 0 < int(end.var("billsec") or 0)
    assert [app for app, _ in fs_events.applications(b_leg)].count("bridge") == 1

    def attempt() -> OutboundAttempt | None:
        with app.db.begin() as db:
            return db.scalars(select(OutboundAttempt).where(OutboundAttempt.call_uuid == b_leg)).first()

    found = _wait(attempt, "the outbound attempt")
    assert found.outcome == "short" and found.hangup_cause == "NORMAL_CLEARING"
    bridged, ended = int(end.var("bridge_uepoch") or 0), int(end.var("end_uepoch") or 0)
    assert found.talk_seconds == pytest.approx((ended - bridged) / 1e6, abs=0.002)


def test_with_the_inbound_event_socket_down_the_routed_call_is_held_as_before(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    closed = socket.socket()   # bound and never listening: refused, and no other process can take the port
    closed.bind(("127.0.0.1", 0))
    request.addfinalizer(closed.close)
    realfs_settings.esl.inbound = f"127.0.0.1:{closed.getsockname()[1]}"
    realfs_settings.recording.consent = False
    app = start_fsguard(realfs_settings)
    opened = _sessions(app, monkeypatch)
    agent_ready(fs_events)
    a_leg, b_leg = placer.loopback(CALLER)

    fs_events.wait_for("CHANNEL_BRIDGE", where={"Unique-ID": b_leg}, timeout=15)
    session = next(s for s in opened if s.uuid == b_leg)
    gevent.sleep(0.5)
    assert not app.ends.connected and not session.closed and app.held
    fs_events.api(f"uuid_kill {a_leg}")
    end = hangup(fs_events, b_leg)

    row = _ended(app, b_leg)
    assert row.hangup_cause == end.var("hangup_cause") and row.billsec == int(end.var("billsec") or -1)
    _wait(lambda: session.closed, "the socket closed once the call ended")


def test_an_end_that_reaches_the_watcher_before_the_call_waits_for_it_is_not_lost(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch) -> None:
    realfs_settings.recording.consent = False
    app = start_fsguard(realfs_settings)
    _connected(app)
    original = EndWatcher.register

    def register_late(self: EndWatcher, uuid: str) -> Any:
        # the caller hangs up, and the watcher reads the end, before the call starts waiting
        fs_events.api(f"uuid_kill {uuid} ORIGINATOR_CANCEL")
        _wait(lambda: uuid in self.recent, "the end kept by the watcher")
        return original(self, uuid)

    monkeypatch.setattr(EndWatcher, "register", register_late)
    a_leg, b_leg = placer.loopback(CALLER)
    end = hangup(fs_events, b_leg)

    row = _ended(app, b_leg)
    assert row.hangup_cause == end.var("hangup_cause") == "ORIGINATOR_CANCEL"
    assert row.billsec == int(end.var("billsec") or -1)
    assert b_leg not in app.ends.recent and b_leg not in app.ends.waiting
