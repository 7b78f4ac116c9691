"""Recording and agents' outbound calls on a real FreeSWITCH: the stereo file FreeSWITCH writes,
a pause that is silence in it, and the freeze rule barring a number before the far end rings."""

from __future__ import annotations

import array
import os
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Callable

import gevent

from sqlalchemy import select

from fsguard.service.app import App
from fsguard.config import Settings
from fsguard.store.models import CallRecord
from fsguard.store.models.recordings import Recording
from fsguard_testing.freeswitch import CallPlacer, EventSocketClient, RealFreeSWITCH, write_tone

from test_realfs_calls import agent_ready, executed, hangup  # tests/realfs is on sys.path under pytest

CALLER = "12125550177"


def _windows(path: Path, seconds: float = 0.1) -> tuple[list[float], list[float], float]:
    """Per-window peak level of each channel of a stereo 16-bit WAV, and its length in seconds."""
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        samples = array.array("h", wav.readframes(wav.getnframes()))
    step = int(rate * seconds)
    left, right = samples[0::2], samples[1::2]
    peaks = lambda ch: [max((abs(s) for s in ch[i:i + step]), default=0) for i in range(0, len(ch), step)]  # noqa: E731
    return peaks(left), peaks(right), len(left) / rate


def _write_config(settings: Settings, path: Path) -> Path:
    """The few settings the CLI needs to reach the same database and FreeSWITCH."""
    path.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[esl]\ninbound = "{settings.esl.inbound}"\ninbound_password = "{settings.esl.inbound_password}"\n'
        f'[recording]\ndir = "{settings.recording.dir}"\n')
    return path


def fsguard_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fsguard", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_routed_call_is_recorded_in_stereo_and_a_pause_is_silence_in_the_file(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer, tmp_path: Path) -> None:
    realfs_settings.recording.consent = False
    app = start_fsguard(realfs_settings)
    agent_ready(fs_events)
    # what the caller "says": a 1 kHz tone, over and over, from the caller's side of the call
    tone = tmp_path / "caller-tone.wav"
    write_tone(tone, 1000, 2.0)
    a_leg, b_leg = placer.loopback(CALLER, app=f"&endless_playback({tone})")

    record = executed(fs_events, b_leg, "record_session")
    path = Path(record["Application-Data"])
    assert path.is_absolute() and str(path).startswith(realfs_settings.recording.dir)
    bridge = fs_events.wait_for("CHANNEL_BRIDGE", where={"Unique-ID": b_leg}, timeout=15)
    gevent.sleep(1.5)
    config = _write_config(realfs_settings, tmp_path / "fsguard.toml")
    pause_sent = time.monotonic()
    paused = fsguard_cli(config, "recordings", "pause", b_leg)
    pause_done = time.monotonic()
    assert paused.returncode == 0, paused.stderr
    gevent.sleep(1.5)
    resume_sent = time.monotonic()
    resumed = fsguard_cli(config, "recordings", "resume", b_leg)
    resume_done = time.monotonic()
    assert resumed.returncode == 0, resumed.stderr
    gevent.sleep(1.5)
    fs_events.api(f"uuid_kill {a_leg}")
    end = hangup(fs_events, b_leg)
    stop = fs_events.wait_for("RECORD_STOP", where={"Unique-ID": b_leg})
    assert stop.get("Record-File-Path") == str(path)

    left, right, length = _windows(path)
    # recording.start = "bridge" (the default): FreeSWITCH ran record_session when the agent was
    # bridged (execute_on_pre_bridge*), so the file is as long as the conversation by FreeSWITCH's
    # clock, not as long as the call was up since the route
    assert record.timestamp_us >= bridge.timestamp_us
    names = [name for name, _ in fs_events.applications(b_leg)]
    assert "record_session" not in names[:names.index("callcenter")]
    talk = (end.timestamp_us - record.timestamp_us) / 1e6
    assert abs(length - talk) < 0.5, (length, talk)
    assert int(end.var("billsec")) >= int(length) - 1
    # caller (left) and agent (right, echoing the caller) on separate channels
    assert max(left) > 3000 and max(right) > 3000
    # the masked interval: a run of silent windows on both channels, bounded by sound on each side
    silent = [i for i, (l, r) in enumerate(zip(left, right)) if l < 50 and r < 50]
    assert silent, "no masked interval in the recording"
    run_start, run_end = silent[0], silent[0]
    while run_end + 1 in silent:
        run_end += 1
    masked = (run_end - run_start + 1) * 0.1
    assert resume_sent - pause_done - 0.3 <= masked <= resume_done - pause_sent + 0.3
    assert max(left[run_end + 2:]) > 3000, "sound must come back after resume"
    assert bridge["Other-Leg-Unique-ID"]


def test_a_call_never_bridged_leaves_no_recording_file_and_no_row(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer) -> None:
    """recording.start = "bridge": queued with no agent logged in, the caller hangs up.
    FreeSWITCH never ran record_session (it runs at the bridge) and wrote nothing; fsguard drops
    the row it queued instead of keeping a recording whose file is missing."""
    realfs_settings.recording.consent = False
    app = start_fsguard(realfs_settings)
    a_leg, b_leg = placer.loopback(CALLER)
    executed(fs_events, b_leg, "callcenter")
    gevent.sleep(1.0)
    fs_events.api(f"uuid_kill {a_leg}")
    end = hangup(fs_events, b_leg)
    assert end.var("bridge_uepoch") == "0"
    armed = end.var("execute_on_pre_bridge_fsguard_recording")
    assert armed is not None and armed.startswith("record_session " + realfs_settings.recording.dir)
    assert "record_session" not in [name for name, _ in fs_events.applications(b_leg)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (app.held or app.deciding):
        gevent.sleep(0.1)
    assert app.writer.wait_idle(10)
    assert not Path(armed.split(" ", 1)[1]).exists()
    with app.db.begin() as session:
        assert session.scalars(select(Recording).where(Recording.call_uuid == b_leg)).first() is None
        call = session.get(CallRecord, b_leg)
        assert call is not None and call.hangup_cause is not None



def _wait_for_attempts(app: App, count: int, timeout: float = 10.0) -> None:
    from sqlalchemy import func, select

    from fsguard.store.models.outbound import OutboundAttempt

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.db.begin() as session:
            if session.scalar(select(func.count()).select_from(OutboundAttempt)) >= count:
                return
        gevent.sleep(0.1)
    raise AssertionError(f"fsguard did not record {count} outbound attempts within {timeout} s")


def test_an_agents_three_short_calls_freeze_the_number_and_the_fourth_is_barred_before_it_rings(
        start_fsguard: Callable[..., App], realfs_settings: Settings, fs_events: EventSocketClient,
        placer: CallPlacer) -> None:
    number = "13055550001"   # the lab's far end answers it and hangs up after 1.5 s
    realfs_settings.outbound.dial_target = "bridge loopback/{digits}/far_end"
    app = start_fsguard(realfs_settings)
    short = realfs_settings.outbound.short_call_seconds

    for attempt in range(3):
        a_leg, b_leg = placer.loopback("1001", number, context="default")
        bridge = executed(fs_events, b_leg, "bridge")
        assert bridge["Application-Data"] == f"loopback/{number}/far_end"
        end = hangup(fs_events, b_leg, timeout=30)
        # a short call by FreeSWITCH's own billsec
        assert 0 < int(end.var("billsec") or 0) < short
        # an agent redials after fsguard has written the attempt down (not within the same millisecond)
        _wait_for_attempts(app, attempt + 1)
    far_end_calls = len(fs_events.find("CHANNEL_CREATE", test=lambda e: e.get("Caller-Context") == "far_end"))

    a_leg, b_leg = placer.loopback("1001", number, context="default")
    end = hangup(fs_events, b_leg)
    assert not fs_events.find("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application": "bridge"})
    assert end.var("hangup_cause") not in (None, "NORMAL_CLEARING")
    assert len(fs_events.find("CHANNEL_CREATE", test=lambda e: e.get("Caller-Context") == "far_end")) == far_end_calls
    assert not fs_events.find("CHANNEL_ANSWER", where={"Unique-ID": b_leg})
