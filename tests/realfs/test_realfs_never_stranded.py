"""Never strand a call, proven on a real FreeSWITCH: fsguard down, killed, stopped, over capacity,
or one node of two gone. Each call must reach the dialplan's fallback or fsguard's fail-open route
at once, by FreeSWITCH's own clock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import gevent
import pytest

from fsguard.rules import lists
from fsguard.service.app import App
from fsguard.config import Settings
from fsguard_testing.freeswitch import CallPlacer, Event, EventSocketClient, RealFreeSWITCH

from test_realfs_calls import SOFT, agent_ready, block, executed, hangup
from test_realfs_ends import _sessions, _wait

FALLBACK = "fallback XML queues"


def seconds_between(first: Event, then: Event) -> float:
    return (then.timestamp_us - first.timestamp_us) / 1e6


def _config(settings: Settings, path: Path, **esl: object) -> Path:
    lines = [f'[database]\nurl = "{settings.database.url}"',
             f'[recording]\ndir = "{settings.recording.dir}"\nconsent = false',
             "[http]\nenabled = false",
             "[esl]\n" + "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}"
                                   for k, v in {"listen": settings.esl.listen, **esl}.items())]
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


@pytest.fixture
def fsguard_process(realfs_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``fsguard serve`` as its own process (what systemd runs), listening on node 0."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**esl: object) -> subprocess.Popen[bytes]:
        config = _config(realfs_settings, tmp_path / "fsguard.toml", **esl)
        proc = subprocess.Popen([sys.executable, "-m", "fsguard", "-c", str(config), "serve"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
        started.append(proc)
        host, port = realfs_settings.esl.listen.rsplit(":", 1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                return proc
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        raise TimeoutError("fsguard serve did not listen within 20 s")

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_with_fsguard_not_listening_the_call_takes_the_dialplans_fallback_at_once(
        fs_events: EventSocketClient, placer: CallPlacer) -> None:
    a_leg, b_leg = placer.loopback("12125550140")

    socket_app = executed(fs_events, b_leg, "socket")
    fallback = executed(fs_events, b_leg, "transfer")
    assert fallback["Application-Data"] == FALLBACK
    assert seconds_between(socket_app, fallback) < 1.0
    executed(fs_events, b_leg, "callcenter")


def test_fsguard_killed_during_a_challenge_hands_the_call_to_the_fallback_at_once(
        fsguard_process: Callable[..., subprocess.Popen[bytes]], realfs_settings: Settings,
        fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app_db = App(realfs_settings)
    block(app_db, "+" + SOFT, 2)
    app_db.db.dispose()
    proc = fsguard_process()
    a_leg, b_leg = placer.loopback(SOFT)
    collect = executed(fs_events, b_leg, "play_and_get_digits")

    proc.send_signal(signal.SIGKILL)
    fallback = fs_events.wait_for("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application-Data": FALLBACK})
    assert seconds_between(collect, fallback) < 2.0
    assert not fs_events.find("CHANNEL_HANGUP", where={"Unique-ID": b_leg})


def _bridged_to_the_agent(fs_events: EventSocketClient, b_leg: str) -> None:
    """The call reached the queue's callcenter and the agent's phone answered it."""
    executed(fs_events, b_leg, "callcenter")
    bridge = fs_events.wait_for("CHANNEL_BRIDGE", where={"Unique-ID": b_leg}, timeout=15)
    agent_answer = fs_events.wait_for("CHANNEL_ANSWER", where={"Unique-ID": bridge["Other-Leg-Unique-ID"]})
    assert agent_answer["Channel-Name"].startswith("sofia/lab/agent-1000@")


def _still_up_without_fallback(fs_events: EventSocketClient, b_leg: str) -> None:
    """Nothing reset the channel under its route: not hung up, no fallback dialled."""
    gevent.sleep(1.2)
    assert not fs_events.find("CHANNEL_HANGUP", where={"Unique-ID": b_leg})
    assert not fs_events.find("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application-Data": FALLBACK})


def test_fsguard_stopped_with_sigterm_while_deciding_gives_the_call_its_fail_open_route(
        fsguard_process: Callable[..., subprocess.Popen[bytes]], realfs_settings: Settings,
        fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app_db = App(realfs_settings)
    block(app_db, "+" + SOFT, 2)
    app_db.db.dispose()
    proc = fsguard_process(drain_seconds=1.0)
    agent_ready(fs_events)
    a_leg, b_leg = placer.loopback(SOFT)
    collect = executed(fs_events, b_leg, "play_and_get_digits")

    proc.send_signal(signal.SIGTERM)
    route = fs_events.wait_for("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application": "transfer"})
    # the drain gave the challenge its time, then fsguard routed the call itself (not the fallback)
    assert route["Application-Data"] == "default XML queues"
    assert seconds_between(collect, route) < 1.0 + 2.0
    # ... and the socket fsguard closed on its way out did not reset the call under that route
    _bridged_to_the_agent(fs_events, b_leg)
    assert proc.wait(10) == 0
    _still_up_without_fallback(fs_events, b_leg)
    fs_events.api(f"uuid_kill {a_leg}")
    assert hangup(fs_events, b_leg).var("socket_resume") == "false"


def _busy_with_one_call(start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
                        placer: CallPlacer, **esl: object) -> App:
    """fsguard with ``esl.max_calls = 1``, busy challenging a soft-blocked caller."""
    realfs_settings.esl.max_calls = 1
    for name, value in esl.items():
        setattr(realfs_settings.esl, name, value)
    app = start_fsguard(realfs_settings)
    block(app, "+" + SOFT, 2)
    _, first_b = placer.loopback(SOFT)
    executed(fs_events, first_b, "play_and_get_digits")
    return app


def test_a_call_over_esl_max_calls_gets_the_fail_open_route_at_once_and_an_agent_answers(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _busy_with_one_call(start_fsguard, realfs_settings, fs_events, placer)
    opened = _sessions(app, monkeypatch)
    with app.db.begin() as session:
        lists.add(session, lists.make_spec("+13125550199", kind="block", level=9))
    agent_ready(fs_events)

    a_leg, b_leg = placer.loopback("13125550199")
    socket_app = executed(fs_events, b_leg, "socket")
    route = executed(fs_events, b_leg, "transfer")
    assert route["Application-Data"] == realfs_settings.policy.fail_open_route.split(" ", 1)[1]
    assert seconds_between(socket_app, route) < 1.0
    refused = _wait(lambda: next((s for s in opened if s.uuid == b_leg), None), "fsguard's session")
    _bridged_to_the_agent(fs_events, b_leg)
    _wait(lambda: refused.closed, "the refused call's socket let go of")
    _still_up_without_fallback(fs_events, b_leg)
    fs_events.api(f"uuid_kill {a_leg}")
    assert hangup(fs_events, b_leg).var("socket_resume") == "false"


def test_an_agents_outbound_call_over_esl_max_calls_is_dialled_and_its_bridge_is_not_broken(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch) -> None:
    number = "13055550181"
    realfs_settings.outbound.dial_target = "bridge loopback/{digits}/far_end"
    app = _busy_with_one_call(start_fsguard, realfs_settings, fs_events, placer)
    opened = _sessions(app, monkeypatch)

    a_leg, b_leg = placer.loopback("1001", number, context="default")
    bridge = executed(fs_events, b_leg, "bridge")
    assert bridge["Application-Data"] == f"loopback/{number}/far_end"
    refused = _wait(lambda: next((s for s in opened if s.uuid == b_leg), None), "fsguard's session")
    _wait(lambda: refused.closed, "the refused call's socket let go of")
    end = hangup(fs_events, b_leg, timeout=30)
    # the far end answered and hung up after about 4 s: the bridge was never broken, nothing redialled
    assert end.var("hangup_cause") == "NORMAL_CLEARING" and 0 < int(end.var("billsec") or 0)
    assert [name for name, _ in fs_events.applications(b_leg)].count("bridge") == 1
    assert end.var("socket_resume") == "false"


def test_a_refused_call_whose_socket_fsguard_sent_resume_on_is_held_until_it_ends(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, monkeypatch: pytest.MonkeyPatch) -> None:
    # follow_ends = "socket": fsguard sends ``resume``, which nothing on the channel undoes
    app = _busy_with_one_call(start_fsguard, realfs_settings, fs_events, placer, follow_ends="socket")
    opened = _sessions(app, monkeypatch)
    agent_ready(fs_events)

    a_leg, b_leg = placer.loopback("12125550142")
    refused = _wait(lambda: next((s for s in opened if s.uuid == b_leg), None), "fsguard's session")
    _bridged_to_the_agent(fs_events, b_leg)
    _still_up_without_fallback(fs_events, b_leg)
    assert refused.resume_sent and not refused.closed
    fs_events.api(f"uuid_kill {a_leg}")
    hangup(fs_events, b_leg)
    _wait(lambda: refused.closed, "the socket closed once the call ended")


def test_with_two_nodes_in_the_socket_target_the_second_takes_the_call_when_the_first_is_down(
        start_fsguard: Callable[..., App], realfs_settings: Settings, freeswitch: RealFreeSWITCH,
        fs_events: EventSocketClient, placer: CallPlacer) -> None:
    assert len(freeswitch.ports.targets) == 2
    realfs_settings.esl.listen = f"127.0.0.1:{freeswitch.ports.targets[1]}"
    realfs_settings.node.id = "second"
    app = start_fsguard(realfs_settings)
    block(app, "+13125550198", 9)

    a_leg, b_leg = placer.loopback("13125550198")
    end = hangup(fs_events, b_leg)
    assert end.var("hangup_cause") == "CALL_REJECTED"
    assert not fs_events.find("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application-Data": FALLBACK})
    assert app.writer.wait_idle(5)   # the row goes with the writer's next batch
    with app.db.begin() as session:
        from fsguard.store.models import CallRecord
        assert session.get(CallRecord, b_leg).node == "second"
