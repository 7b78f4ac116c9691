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

import pytest

from fsguard.rules import lists
from fsguard.service.app import App
from fsguard.config import Settings
from fsguard_testing.freeswitch import CallPlacer, Event, EventSocketClient, RealFreeSWITCH

from test_realfs_calls import SOFT, block, executed, hangup

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


def test_fsguard_stopped_with_sigterm_while_deciding_gives_the_call_its_fail_open_route(
        fsguard_process: Callable[..., subprocess.Popen[bytes]], realfs_settings: Settings,
        fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app_db = App(realfs_settings)
    block(app_db, "+" + SOFT, 2)
    app_db.db.dispose()
    proc = fsguard_process(drain_seconds=1.0)
    a_leg, b_leg = placer.loopback(SOFT)
    collect = executed(fs_events, b_leg, "play_and_get_digits")

    proc.send_signal(signal.SIGTERM)
    route = fs_events.wait_for("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application": "transfer"})
    # the drain gave the challenge its time, then fsguard routed the call itself (not the fallback)
    assert route["Application-Data"] == "default XML queues"
    assert seconds_between(collect, route) < 1.0 + 2.0
    assert proc.wait(10) == 0


def test_a_call_over_esl_max_calls_gets_the_fail_open_route_at_once(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer) -> None:
    realfs_settings.esl.max_calls = 1
    app = start_fsguard(realfs_settings)
    block(app, "+" + SOFT, 2)
    with app.db.begin() as session:
        lists.add(session, lists.make_spec("+13125550199", kind="block", level=9))
    first_a, first_b = placer.loopback(SOFT)
    executed(fs_events, first_b, "play_and_get_digits")  # fsguard is busy with this one

    a_leg, b_leg = placer.loopback("13125550199")
    socket_app = executed(fs_events, b_leg, "socket")
    route = executed(fs_events, b_leg, "transfer")
    assert route["Application-Data"] == realfs_settings.policy.fail_open_route.split(" ", 1)[1]
    assert seconds_between(socket_app, route) < 1.0


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
    with app.db.begin() as session:
        from fsguard.store.models import CallRecord
        assert session.get(CallRecord, b_leg).node == "second"
