"""Recording policy end to end: the simulator plays FreeSWITCH over real TCP (and a fake inbound
Event Socket takes uuid_record commands), on SQLite and PostgreSQL.

The simulator notes ``record_session`` but writes no audio; ``RecordingChannel`` below extends it
to do what FreeSWITCH does there: create the WAV file at the path it was given (stereo when
RECORD_STEREO is true). It also lets a test keep a routed call up until it says "hang up", so
that commands about a live call (pause, resume, start, stop) can be tested without racing a timer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid as uuidlib
import wave
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import gevent
import pytest
from sqlalchemy import select

from fsguard.ops import cli
from fsguard.rules import recordings
from fsguard.store import records
from fsguard.config import ConfigError, load_settings
from fsguard.store.models import CallRecord, StageVerdict
from fsguard.store.models.recordings import Recording, RecordingMask
from fsguard.rules.recordings import add_period, recording_path
from fsguard.stages.recording import in_sample
from fsguard_testing.fakeswitch import Caller, Channel, FakeFreeSWITCH, SimResult
from fsguard_testing.inbound import FakeInboundESL

AUDIO_SECONDS = 0.5
#: uuids of held calls the test wants hung up now
HANG_UP: set[str] = set()


def write_wav(path: str, *, stereo: bool = True, seconds: float = AUDIO_SECONDS) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = int(8000 * seconds)
    sample = bytes(range(256)) * (frames * (4 if stereo else 2) // 256 + 1)
    with wave.open(path, "wb") as w:
        w.setnchannels(2 if stereo else 1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(sample[: frames * (4 if stereo else 2)])


class RecordingChannel(Channel):
    """A simulated channel that writes the recording file as FreeSWITCH would."""

    def _app_record_session(self, run: Any):  # type: ignore[no-untyped-def]
        yield from super()._app_record_session(run)
        if self.caller.variables.get("test_write_audio", "true") == "true":
            write_wav(run.arg.strip(), stereo=str(self.vars.get("RECORD_STEREO")) == "true")

    def _app_playback(self, run: Any):  # type: ignore[no-untyped-def]
        if "/missing/" in run.arg:  # FreeSWITCH: switch_ivr_play_file() -> SWITCH_STATUS_NOTFOUND
            self._setvar("current_application_response", "FILE NOT FOUND")
            return
        yield from super()._app_playback(run)

    def _after_transfer(self) -> None:
        super()._after_transfer()
        if self.caller.variables.get("test_stay") == "true":
            self._after(0.5, self._until_told)

    def _until_told(self) -> None:
        if self.hung_up:
            return
        if self.uuid in HANG_UP:
            HANG_UP.discard(self.uuid)
            self._talk_over("caller")
        else:
            self._after(0.5, self._until_told)


class RecordingFreeSWITCH(FakeFreeSWITCH):
    channel_class = RecordingChannel


def held_caller(**fields: Any) -> Caller:
    """A caller whose routed call lasts until the test puts its uuid in HANG_UP."""
    return Caller(talk_time=1e6, variables={"test_stay": "true"}, **fields)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    with gevent.Timeout(timeout, AssertionError("condition not reached")):
        while True:
            value = predicate()
            if value:
                return value
            gevent.sleep(0.01)


def settle(guard: Any) -> None:
    wait_for(lambda: not guard.app.deciding and not guard.app.held and guard.server.active == 0)


def recording_of(db: Any, uuid: str) -> Recording | None:
    with db.begin() as s:
        return s.scalars(select(Recording).where(Recording.call_uuid == uuid)).first()


def verdict_of(db: Any, uuid: str) -> StageVerdict:
    with db.begin() as s:
        return s.scalars(select(StageVerdict).where(StageVerdict.call_uuid == uuid,
                                                    StageVerdict.stage == "recording")).one()


def names(result: SimResult) -> list[str]:
    return [app for app, _ in result.apps]


@pytest.fixture
def inbound(settings: Any) -> Any:
    fake = FakeInboundESL().start()
    settings.esl.inbound = fake.address
    yield fake
    fake.stop()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("FSGUARD_RECORDING_DIR", settings.recording.dir)
    monkeypatch.setenv("FSGUARD_ESL_INBOUND", settings.esl.inbound)
    monkeypatch.setenv("FSGUARD_ESL_COMMAND_TIMEOUT", "1")
    monkeypatch.setenv("FSGUARD_NODE_ID", "cli-node")


@pytest.fixture
def run(settings: Any, start_guard: Callable[..., Any]) -> Callable[..., tuple[Any, RecordingFreeSWITCH]]:
    """Start fsguard with recording before routing and the given [recording] settings."""

    def start(**recording: Any) -> tuple[Any, RecordingFreeSWITCH]:
        settings.policy.stages = ["recording", "routing"]
        settings.recording.consent_prompt = "ivr/consent.wav"
        # the simulator's queue is a queue with no agent (as the lab's captures): these tests record
        # from the route, and the ones about recording.start = "bridge" say so
        settings.recording.start = "route"
        for key, value in recording.items():
            setattr(settings.recording, key, value)
        settings.validate()
        guard = start_guard()
        return guard, RecordingFreeSWITCH(guard.address, time_scale=0.005, max_call_time=100_000)

    return start


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------ modes


def setting(result, name: str, value: str) -> int:
    """The index of the first application that set ``name`` to ``value`` (set, export or multiset)."""
    for i, (app, arg) in enumerate(result.apps):
        if app in ("set", "export") and arg == f"{name}={value}":
            return i
        if app == "multiset":
            delimiter, items = (arg[2], arg[3:]) if arg.startswith("^^") else (" ", arg)
            if f"{name}={value}" in items.split(delimiter):
                return i
    raise AssertionError(f"{name}={value} was never set: {result.apps}")


def test_all_calls_hear_the_consent_then_the_whole_call_is_recorded_in_stereo(run, db, settings):
    guard, fs = run(mode="all")
    result = fs.call(Caller(ani="15551234567", dnis="5000"))
    assert result.outcome == "routed" and result.ok, result.violations
    settle(guard)

    apps = names(result)
    # consent first, on an answered call; then recording; then the route (nothing routed unrecorded)
    assert apps.index("answer") < apps.index("playback") < apps.index("record_session") < apps.index("transfer")
    assert ("playback", "ivr/consent.wav") in result.apps
    # RECORD_STEREO is set (folded with the other variables into one multiset) before record_session
    assert result.variables["RECORD_STEREO"] == "true"
    assert apps.index("record_session") > setting(result, "RECORD_STEREO", "true")
    assert result.heard[0] == "ivr/consent.wav"
    assert result.exported.get("fsguard_recording") == "on"

    rec = recording_of(db, result.uuid)
    assert rec is not None
    day = rec.started_at.astimezone(timezone.utc)
    assert rec.path == str(Path(settings.recording.dir) / f"{day:%Y/%m/%d}" / f"{result.uuid}.wav")
    assert result.recordings == [rec.path]
    data = Path(rec.path).read_bytes()
    assert (rec.status, rec.mode, rec.purpose, rec.rule) == ("complete", "all", "evidence", "default")
    assert rec.sha256 == hashlib.sha256(data).hexdigest() and rec.size_bytes == len(data)
    assert rec.duration == pytest.approx(AUDIO_SECONDS)
    assert rec.consent is True and rec.stereo is True and rec.legal_hold is False
    assert rec.number == "+15551234567" and rec.node == "test-node" and rec.ended_at is not None
    assert rec.retain_until == add_period(rec.started_at, "5y")
    with wave.open(rec.path) as w:
        assert w.getnchannels() == 2  # caller and agent on separate channels

    verdict = verdict_of(db, result.uuid)
    assert (verdict.outcome, verdict.code) == ("continue", "recording.all")
    assert verdict.details["consent"] is True and verdict.details["path"] == rec.path
    assert "recorded for evidence until" in verdict.reason


def test_consent_in_early_media_costs_nothing_before_the_queue_answers(run, db):
    guard, fs = run(mode="all", consent_media="early")
    result = fs.call(Caller())
    settle(guard)
    apps = names(result)
    assert "answer" not in apps  # the queue answers, after routing
    assert result.early_media and result.answered
    assert apps.index("playback") < apps.index("record_session") < apps.index("transfer")
    assert verdict_of(db, result.uuid).details["consent_media"] == "early"
    assert recording_of(db, result.uuid).status == "complete"


def test_a_rule_without_consent_records_at_once(run, db):
    guard, fs = run(rules=[{"name": "no notice", "dnis": "5000", "mode": "all", "consent": False,
                            "purpose": "analytics"}])
    result = fs.call(Caller(dnis="5000"))
    settle(guard)
    assert "playback" not in names(result) and "answer" not in names(result)
    assert names(result).index("record_session") < names(result).index("transfer")
    rec = recording_of(db, result.uuid)
    assert (rec.consent, rec.purpose, rec.rule) == (False, "analytics", "no notice")
    assert rec.retain_until == add_period(rec.started_at, "1y")


def test_off_means_no_answer_no_notice_no_recording(run, db, settings):
    guard, fs = run(mode="off")
    result = fs.call(Caller())
    settle(guard)
    assert not {"answer", "playback", "record_session"} & set(names(result))
    assert result.exported.get("fsguard_recording") == "off"
    assert recording_of(db, result.uuid) is None
    assert verdict_of(db, result.uuid).code == "recording.off"
    assert not Path(settings.recording.dir).exists()


def test_sample_records_a_share_of_calls_decided_by_the_uuid(run, db):
    uuids = [str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"call-{i}")) for i in range(2000)]
    chosen = [u for u in uuids if in_sample(u, 25)]
    assert 0.22 < len(chosen) / len(uuids) < 0.28
    assert [u for u in uuids if in_sample(u, 25)] == chosen  # the same uuids, every time, on every node
    assert not any(in_sample(u, 0) for u in uuids) and all(in_sample(u, 100) for u in uuids)

    inside = chosen[0]
    outside = next(u for u in uuids if not in_sample(u, 25))
    guard, fs = run(mode="sample", sample_percent=25)
    recorded = fs.call(Caller(uuid=inside))
    skipped = fs.call(Caller(uuid=outside))
    settle(guard)
    assert "record_session" in names(recorded) and recording_of(db, inside).mode == "sample"
    assert not {"record_session", "playback"} & set(names(skipped)) and recording_of(db, outside) is None
    v = verdict_of(db, outside)
    assert v.code == "recording.sample_skipped" and v.details["sample_percent"] == 25
    assert "outside the 25% sample" in v.reason


def test_rules_by_dialled_number_queue_and_direction_first_match_wins(run, db):
    guard, fs = run(mode="all", rules=[
        {"name": "doctors line", "dnis": ["+18005550100"], "mode": "off"},
        {"name": "toll free", "dnis": "1800*", "mode": "all", "purpose": "evidence", "consent": False},
        {"name": "sales queue", "queue": "sales", "mode": "all", "purpose": "training", "consent": False},
        {"name": "agents dialling out", "direction": "outbound", "mode": "all", "purpose": "analytics"},
    ])
    doctors = fs.call(Caller(dnis="18005550100"))          # matched as E.164 too
    toll_free = fs.call(Caller(dnis="18005550199"))
    sales = fs.call(Caller(dnis="5000", variables={"fsguard_queue": "sales"}))
    other = fs.call(Caller(dnis="5000"))
    out = fs.call(Caller(ani="1001", dnis="15557654321", context="default"))
    settle(guard)
    assert verdict_of(db, doctors.uuid).details["rule"] == "doctors line"
    assert recording_of(db, doctors.uuid) is None
    assert recording_of(db, toll_free.uuid).rule == "toll free"
    rec = recording_of(db, sales.uuid)
    assert (rec.rule, rec.purpose) == ("sales queue", "training")
    assert rec.retain_until == add_period(rec.started_at, "6mo")
    with db.begin() as s:
        assert s.get(CallRecord, sales.uuid).inputs["recording_queue"] == "sales"  # for replay
    assert recording_of(db, other.uuid).rule == "default"
    rec = recording_of(db, out.uuid)
    assert (rec.rule, rec.direction, rec.purpose, rec.number) == ("agents dialling out", "outbound", "analytics",
                                                                  "+15557654321")
    # the notice is for the called party: played on their leg when they answer, not to the agent
    assert "playback" not in names(out) and "answer" not in names(out)
    assert ("export", "nolocal:execute_on_answer=playback ivr/consent.wav") in out.apps
    assert out.exported.get("execute_on_answer") == "playback ivr/consent.wav"  # for the called leg
    assert "execute_on_answer" not in out.variables  # not on the agent's own leg


def test_on_demand_plays_the_notice_and_waits_for_start_and_stop(run, db, inbound, cli_env, capsys, settings):
    guard, fs = run(mode="on_demand", purpose="training")

    def start_writes_the_file(command: str) -> str | None:
        parts = command.split()
        if parts[:1] == ["uuid_record"] and parts[2] == "start" and parts[1] in inbound.channels:
            write_wav(parts[3])
        return None

    inbound.api_handler = start_writes_the_file
    caller = held_caller()
    inbound.add_channel(caller.uuid)
    call = fs.spawn(caller)
    wait_for(lambda: _call_row(db, caller.uuid))
    assert recording_of(db, caller.uuid) is None  # nothing recorded until asked

    assert cli.main(["recordings", "start", caller.uuid, "--by", "agent-7"]) == 0
    rec = recording_of(db, caller.uuid)
    assert (rec.mode, rec.started_by, rec.purpose, rec.consent, rec.status) == (
        "on_demand", "agent-7", "training", True, "recording")
    assert inbound.api_commands[-1] == f"uuid_record {caller.uuid} start {rec.path}"
    assert rec.path.startswith(settings.recording.dir) and rec.path.endswith(f"/{caller.uuid}.wav")
    assert cli.main(["recordings", "start", caller.uuid]) == 1  # one recording per call
    assert "already being recorded" in capsys.readouterr().err

    assert cli.main(["recordings", "stop", caller.uuid]) == 0
    assert inbound.api_commands[-1] == f"uuid_record {caller.uuid} stop {rec.path}"
    rec = recording_of(db, caller.uuid)
    assert rec.status == "complete" and rec.sha256 == hashlib.sha256(Path(rec.path).read_bytes()).hexdigest()

    HANG_UP.add(caller.uuid)
    result = call.get(timeout=10)
    settle(guard)
    apps = names(result)
    assert apps.index("answer") < apps.index("playback") < apps.index("transfer")
    assert "record_session" not in apps and result.variables["RECORD_STEREO"] == "true"
    assert result.exported.get("fsguard_recording") == "on_demand"
    assert recording_of(db, caller.uuid).status == "complete"


def test_start_and_stop_are_refused_where_the_policy_decides(run, db, inbound, cli_env, capsys):
    guard, fs = run(mode="all")
    recorded = held_caller()
    inbound.add_channel(recorded.uuid)
    call = fs.spawn(recorded)
    wait_for(lambda: _call_row(db, recorded.uuid))
    capsys.readouterr()
    assert cli.main(["recordings", "stop", recorded.uuid]) == 1
    assert "recorded by policy (all" in capsys.readouterr().err
    assert cli.main(["recordings", "start", recorded.uuid]) == 1
    assert "already being recorded" in capsys.readouterr().err
    assert cli.main(["recordings", "start", str(uuidlib.uuid4())]) == 1
    assert "no call" in capsys.readouterr().err
    assert not [c for c in inbound.api_commands if " start " in c or " stop " in c]
    HANG_UP.add(recorded.uuid)
    call.get(timeout=10)
    settle(guard)


# ---------------------------------------------------------------- consent


def test_a_notice_that_cannot_be_played_means_the_call_is_not_recorded(run, db):
    guard, fs = run(mode="all", consent_prompt="/usr/share/missing/notice.wav")
    result = fs.call(Caller())
    settle(guard)
    assert result.outcome == "routed"  # the call goes on, unrecorded
    assert "record_session" not in names(result)
    assert recording_of(db, result.uuid) is None
    v = verdict_of(db, result.uuid)
    assert v.code == "recording.consent_failed" and "FILE NOT FOUND" in v.reason and v.details["consent"] is False


def test_a_caller_who_hangs_up_during_the_notice_is_not_recorded(run, db):
    guard, fs = run(mode="all")
    result = fs.call(Caller(hangup_after=1.0, playback_durations={"ivr/consent.wav": 5.0}))
    settle(guard)
    assert result.outcome == "caller_hangup"
    assert "record_session" not in names(result)
    assert recording_of(db, result.uuid) is None
    with db.begin() as s:
        assert s.get(CallRecord, result.uuid).outcome == "abandoned"


# ------------------------------------------------------------------- paths


def test_the_path_is_the_date_and_the_uuid_whatever_the_caller_sends(run, db, settings):
    guard, fs = run(mode="all")
    hostile = Caller(ani="../../../etc/passwd", name="x/../../y\r\nContent-Length: 0",
                     variables={"fsguard_queue": "../../tmp", "sip_h_X-Path": "/etc/shadow"})
    result = fs.call(hostile)
    settle(guard)
    rec = recording_of(db, result.uuid)
    root = Path(settings.recording.dir)
    assert re.fullmatch(re.escape(str(root)) + r"/\d{4}/\d{2}/\d{2}/" + re.escape(result.uuid) + r"\.wav", rec.path)
    assert [p for p in root.rglob("*") if p.is_file()] == [Path(rec.path)]


def test_a_channel_uuid_that_is_not_a_uuid_is_never_made_into_a_path(run, db, settings):
    guard, fs = run(mode="all")
    result = fs.call(Caller(uuid="../../etc/cron.d/x"))
    settle(guard)
    assert result.outcome == "routed" and "record_session" not in names(result)
    assert "playback" not in names(result)  # nothing to announce: no recording will be made
    assert not Path(settings.recording.dir).exists()
    with pytest.raises(ValueError):
        recording_path(Path("/r"), "1c6f5e2a-1111-4222-8333-444455556666/../x", datetime.now(timezone.utc))
    assert recording_path(Path("/r"), "1c6f5e2a-1111-4222-8333-444455556666",
                          datetime(2026, 1, 2, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) == \
        "/r/2026/01/03/1c6f5e2a-1111-4222-8333-444455556666.wav"  # UTC date


def test_a_file_freeswitch_did_not_write_is_reported_at_the_end_of_the_call(run, db, caplog):
    guard, fs = run(mode="all", start="route")
    result = fs.call(Caller(variables={"test_write_audio": "false"}))
    settle(guard)
    rec = recording_of(db, result.uuid)
    assert rec.status == "missing" and rec.sha256 is None and "did not write it" in rec.error
    # a problem gets a warning of its own, and the call's line says it too
    assert [e["status"] for e in logged(caplog, "recording.problem", result.uuid)] == ["missing"]
    assert [e["recording"] for e in logged(caplog, "call", result.uuid)] == ["missing"]


def test_from_the_bridge_freeswitch_starts_the_recording_when_the_caller_is_bridged(run, db, settings, caplog):
    """recording.start = "bridge": no record_session with the route; the route's variables arm
    ``execute_on_pre_bridge_fsguard_recording``, which FreeSWITCH runs when the bridge starts."""
    settings.routing.rules = [{"name": "own agent", "dnis": "5000", "target": "bridge user/1001"}]
    guard, fs = run(mode="all", start="bridge")
    result = fs.call(Caller(dnis="5000", talk_time=300))
    settle(guard)
    apps = names(result)
    armed = setting(result, "execute_on_pre_bridge_fsguard_recording", f"record_session {result.recordings[0]}")
    assert armed < apps.index("bridge") < apps.index("record_session")
    rec = recording_of(db, result.uuid)
    assert rec.status == "complete" and rec.stereo
    assert verdict_of(db, result.uuid).details["start"] == "bridge"
    # one line per call: the recording's end is in it (its path, size and hash are in its row)
    assert [e["recording"] for e in logged(caplog, "call", result.uuid)] == ["complete"]
    assert [e for e in caplog.records if isinstance(e.msg, dict) and e.msg.get("event", "").startswith("recording.")
            ] == []


def test_from_the_bridge_a_call_that_only_waited_in_the_queue_keeps_no_recording(run, db, caplog):
    """Never bridged (FreeSWITCH's bridge_uepoch is 0 at the end): no file, and that is no fault;
    the row queued at the decision goes instead of staying as a "missing" recording."""
    guard, fs = run(mode="all", start="bridge")
    result = fs.call(Caller())
    settle(guard)
    assert "record_session" not in names(result)
    assert result.variables["execute_on_pre_bridge_fsguard_recording"].startswith("record_session ")
    assert recording_of(db, result.uuid) is None
    assert [e["recording"] for e in logged(caplog, "call", result.uuid)] == ["discarded (never bridged)"]


def logged(caplog: pytest.LogCaptureFixture, event: str, uuid: str) -> list[dict[str, Any]]:
    """fsguard's log lines named ``event`` about the call ``uuid``, as structlog handed them over."""
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event
            and uuid in (r.msg.get("uuid"), r.msg.get("call"))]


def test_a_rule_may_start_the_file_with_the_route(run, db):
    guard, fs = run(mode="all", start="bridge",
                    rules=[{"name": "ivr", "dnis": "5000", "mode": "all", "start": "route"}])
    result = fs.call(Caller(dnis="5000"))
    settle(guard)
    assert "record_session" in names(result) and "execute_on_pre_bridge_fsguard_recording" not in result.variables
    assert recording_of(db, result.uuid).status == "complete"


# ------------------------------------------------------------ pause/resume


def test_pause_and_resume_mask_the_recording_through_the_inbound_socket(run, db, inbound, cli_env, capsys):
    guard, fs = run(mode="all")
    caller = held_caller()
    call = fs.spawn(caller)
    rec = wait_for(lambda: recording_of(db, caller.uuid))
    inbound.start_recording(caller.uuid, rec.path)

    assert cli.main(["recordings", "pause", caller.uuid, "--by", "agent-7"]) == 0
    assert inbound.api_commands == [f"uuid_record {caller.uuid} mask {rec.path}"]
    assert inbound.channels[caller.uuid].recordings[rec.path] is True
    assert cli.main(["recordings", "pause", caller.uuid]) == 1
    assert "already paused" in capsys.readouterr().err
    assert cli.main(["recordings", "resume", caller.uuid]) == 0
    assert inbound.api_commands[-1] == f"uuid_record {caller.uuid} unmask {rec.path}"
    assert inbound.channels[caller.uuid].recordings[rec.path] is False
    assert inbound.commands[0] == "auth ClueCon"
    assert cli.main(["recordings", "pause", caller.uuid]) == 0  # card data again; left masked at hang-up

    HANG_UP.add(caller.uuid)
    call.get(timeout=10)
    settle(guard)
    shown = cli_json(capsys, "recordings", "show", caller.uuid, "--json")
    assert shown["status"] == "complete" and len(shown["masks"]) == 2
    first, second = shown["masks"]
    assert first["requested_by"] == "agent-7" and 0 <= first["from_second"] <= first["to_second"]
    assert second["end"] is not None and second["end"] <= shown["ended_at"]  # closed when the call ended
    assert cli.main(["recordings", "show", caller.uuid]) == 0
    assert "masked (silence recorded)" in capsys.readouterr().out


def test_pause_with_freeswitch_unreachable_says_so_and_stores_no_mask(run, db, inbound, cli_env, capsys,
                                                                        monkeypatch):
    guard, fs = run(mode="all")
    caller = held_caller()
    call = fs.spawn(caller)
    rec = wait_for(lambda: recording_of(db, caller.uuid))

    monkeypatch.setenv("FSGUARD_ESL_INBOUND", "127.0.0.1:1")
    assert cli.main(["recordings", "pause", caller.uuid]) == 1
    err = capsys.readouterr().err
    assert "inbound event socket at 127.0.0.1:1" in err and "unreachable" in err and "Traceback" not in err

    monkeypatch.setenv("FSGUARD_ESL_INBOUND", inbound.address)
    assert cli.main(["recordings", "pause", caller.uuid]) == 1  # FreeSWITCH does not know this recording
    assert "Cannot locate session" in capsys.readouterr().err
    with db.begin() as s:
        assert s.scalars(select(RecordingMask).where(RecordingMask.recording_id == rec.id)).all() == []

    silent = FakeInboundESL(behaviour="mute_api").start()
    monkeypatch.setenv("FSGUARD_ESL_INBOUND", silent.address)
    monkeypatch.setenv("FSGUARD_ESL_COMMAND_TIMEOUT", "0.3")
    assert cli.main(["recordings", "resume", caller.uuid]) == 1
    assert "is not paused" in capsys.readouterr().err
    inbound.start_recording(caller.uuid, rec.path)
    assert cli.main(["recordings", "pause", caller.uuid]) == 1
    assert "did not answer" in capsys.readouterr().err
    silent.stop()
    HANG_UP.add(caller.uuid)
    call.get(timeout=10)
    settle(guard)


def queued(writer: Any, root: Path, uuid: str, now: datetime) -> str:
    """Queue a policy recording's row as the stage does; its path."""
    path = recording_path(root, uuid, now)
    recordings.queue_recording(
        writer, call_uuid=uuid, path=path, node="n", direction="inbound", number="+15551230000", mode="all",
        rule="default", purpose="evidence", consent=True, stereo=True, started_by="policy", status="recording",
        started_at=now, retain_until=now + timedelta(days=30), legal_hold=False, hold_reason="", error="")
    return path


def test_a_pause_asked_before_the_call_writer_commits_the_recording_waits_for_its_row(db, settings, inbound,
                                                                                     monkeypatch):
    """A recording made by policy is written by the call writer moments after the decision: a pause
    asked in between finds the row once it is committed, instead of saying there is none."""
    uuid = str(uuidlib.uuid4())
    now = datetime.now(timezone.utc)
    path = recording_path(Path(settings.recording.dir), uuid, now)
    inbound.start_recording(uuid, path)
    misses: list[str] = []
    find = recordings._find

    def looked(s: Any, wanted: str, **kw: Any) -> Recording:
        try:
            return find(s, wanted, **kw)
        except recordings.NotFound:
            misses.append(wanted)
            raise

    monkeypatch.setattr(recordings, "_find", looked)
    pausing = gevent.spawn(recordings.pause, db, settings, uuid, by="agent-7")
    wait_for(lambda: misses)   # asked, and not there yet
    writer = records.make_writer(db)
    queued(writer, Path(settings.recording.dir), uuid, now)
    paused = pausing.get(timeout=5)
    writer.close()
    assert [m["requested_by"] for m in paused["masks"]] == ["agent-7"]
    assert inbound.api_commands == [f"uuid_record {uuid} mask {path}"]


def test_a_pause_for_a_recording_never_written_says_it_is_not_written(db, cli_env, capsys, monkeypatch):
    monkeypatch.setattr(recordings, "WRITTEN_WAIT_SECONDS", 0.05)
    uuid = str(uuidlib.uuid4())
    assert cli.main(["recordings", "pause", uuid]) == 1
    err = capsys.readouterr().err
    assert f"no recording for call {uuid}: none was written within 0.05 s" in err and "try again" in err


def test_a_recordings_closing_rows_find_it_by_its_calls_uuid_through_the_call_writer(db, settings):
    root, now = Path(settings.recording.dir), datetime.now(timezone.utc)
    writer = records.make_writer(db)
    kept, masked, discarded = (str(uuidlib.uuid4()) for _ in range(3))
    kept_path, masked_path, discarded_path = (queued(writer, root, u, now) for u in (kept, masked, discarded))
    write_wav(kept_path)
    write_wav(masked_path)
    # closed in the very batch that opens it: the row is inserted before its end is written
    recordings.finalize_queued(writer, kept, kept_path)
    recordings.finalize_queued(writer, discarded, discarded_path, abandoned=True)   # no file: hung up at once
    assert writer.wait_idle(5)
    with db.begin() as s:
        rec = s.scalars(select(Recording).where(Recording.call_uuid == masked)).one()
        s.add(RecordingMask(recording_id=rec.id, started_at=now, requested_by="agent-7"))
    recordings.finalize_queued(writer, masked, masked_path)
    writer.close()

    assert recording_of(db, discarded) is None
    assert recording_of(db, kept).status == "complete" and recording_of(db, kept).sha256
    rec = recording_of(db, masked)
    assert rec.status == "complete" and [m.ended_at for m in rec.masks] == [rec.ended_at]


# ------------------------------------------------------- retention & purge


def _call_row(db: Any, uuid: str) -> CallRecord | None:
    with db.begin() as s:
        return s.get(CallRecord, uuid)


def make_recording(db: Any, root: Path, *, purpose: str = "evidence", started: datetime, until: datetime,
                   held: str = "", file: str = "wav", number: str = "+15551230000") -> Recording:
    uuid = str(uuidlib.uuid4())
    path = recording_path(root, uuid, started)
    if file == "wav":
        write_wav(path)
    elif file == "directory":  # something that is not a recording file sits where the file should be
        os.makedirs(os.path.join(path, "x"))
    recordings.open_recording(
        db, call_uuid=uuid, path=path, node="n", direction="inbound", number=number, mode="all", rule="default",
        purpose=purpose, consent=True, stereo=True, started_by="policy", status="complete", started_at=started,
        ended_at=started + timedelta(minutes=3), retain_until=until, legal_hold=bool(held), hold_reason=held,
        held_at=started if held else None, size_bytes=1, duration=1.0, sha256="0" * 64, error="")
    return recording_of(db, uuid)


def test_purge_deletes_what_is_past_retention_except_legal_holds(db, settings, cli_env, capsys):
    root = Path(settings.recording.dir)
    now = datetime.now(timezone.utc)
    long_ago = now - timedelta(days=400)
    expired = make_recording(db, root, purpose="training", started=long_ago, until=long_ago + timedelta(days=183))
    current = make_recording(db, root, started=long_ago, until=now + timedelta(days=1500))
    held = make_recording(db, root, purpose="training", started=long_ago, until=long_ago + timedelta(days=183),
                          held="case 2026-114")

    report = cli_json(capsys, "recordings", "purge", "--dry-run", "--json")
    assert [d["uuid"] for d in report["deleted"]] == [expired.call_uuid] and report["dry_run"]
    assert Path(expired.path).exists() and recording_of(db, expired.call_uuid) is not None

    capsys.readouterr()
    assert cli.main(["recordings", "purge"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {expired.call_uuid}" in out and "file deleted" in out
    assert f"kept {held.call_uuid}" in out and "legal hold - case 2026-114" in out
    assert not Path(expired.path).exists() and recording_of(db, expired.call_uuid) is None
    assert Path(current.path).exists() and recording_of(db, current.call_uuid) is not None
    assert Path(held.path).exists() and recording_of(db, held.call_uuid).legal_hold

    # release the hold: its retention is over, so the next purge deletes it
    assert cli.main(["recordings", "release", held.call_uuid]) == 0
    assert cli.main(["recordings", "purge"]) == 0
    assert recording_of(db, held.call_uuid) is None and not Path(held.path).exists()
    assert recording_of(db, current.call_uuid) is not None


def test_purge_with_a_missing_or_unreadable_file_says_so_and_loses_nothing_else(db, settings, cli_env, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(recordings, "PURGE_BATCH", 1)  # page by page, past the one that fails
    root = Path(settings.recording.dir)
    long_ago = datetime.now(timezone.utc) - timedelta(days=400)
    until = long_ago + timedelta(days=30)
    gone = make_recording(db, root, started=long_ago, until=until, file="none")
    strange = make_recording(db, root, started=long_ago, until=until, file="directory")
    fine = make_recording(db, root, started=long_ago, until=until)
    keep = make_recording(db, root, started=long_ago, until=until + timedelta(days=10_000))

    capsys.readouterr()
    assert cli.main(["recordings", "purge"]) == 1
    out = capsys.readouterr().out
    assert f"deleted {gone.call_uuid}" in out and "file was already missing" in out
    assert f"FAILED {strange.call_uuid}" in out and "not a regular file" in out and "next purge tries again" in out
    assert recording_of(db, gone.call_uuid) is None
    left = recording_of(db, strange.call_uuid)
    assert left is not None and "purge failed" in left.error and Path(strange.path).is_dir()
    assert recording_of(db, fine.call_uuid) is None and not Path(fine.path).exists()
    assert recording_of(db, keep.call_uuid) is not None and Path(keep.path).exists()


def test_purge_touches_nothing_when_the_recordings_storage_is_not_there(db, settings, cli_env, capsys,
                                                                        monkeypatch, tmp_path):
    root = Path(settings.recording.dir)
    long_ago = datetime.now(timezone.utc) - timedelta(days=400)
    expired = make_recording(db, root, started=long_ago, until=long_ago + timedelta(days=1))
    monkeypatch.setenv("FSGUARD_RECORDING_DIR", str(tmp_path / "unmounted"))
    assert cli.main(["recordings", "purge"]) == 1
    assert "is not a directory (is the storage mounted?): nothing purged" in capsys.readouterr().err
    assert recording_of(db, expired.call_uuid) is not None


def test_purge_never_deletes_outside_the_recordings_directory(db, settings, tmp_path):
    outside = tmp_path / "elsewhere.wav"
    write_wav(str(outside))
    long_ago = datetime.now(timezone.utc) - timedelta(days=400)
    rec = make_recording(db, Path(settings.recording.dir), started=long_ago, until=long_ago + timedelta(days=1))
    with db.begin() as s:
        s.get(Recording, rec.id).path = str(outside)
    report = recordings.purge(db, settings)
    assert outside.exists() and "outside recording.dir" in report.failed[0]["error"]


def test_serve_purges_periodically(run, db, settings):
    from fsguard.ops.commands.recordings import periodic_purge

    long_ago = datetime.now(timezone.utc) - timedelta(days=400)
    expired = make_recording(db, Path(settings.recording.dir), started=long_ago, until=long_ago + timedelta(days=1))
    guard, _ = run(purge_interval="0.05")
    periodic_purge(guard.app, guard.server)
    wait_for(lambda: recording_of(db, expired.call_uuid) is None)
    assert not Path(expired.path).exists()


def test_retention_periods_are_calendar_periods():
    start = datetime(2025, 8, 31, 12, 0, tzinfo=timezone.utc)
    assert add_period(start, "6mo") == datetime(2026, 2, 28, 12, 0, tzinfo=timezone.utc)
    assert add_period(datetime(2024, 2, 29, tzinfo=timezone.utc), "5y") == datetime(2029, 2, 28, tzinfo=timezone.utc)
    assert add_period(start, "1y") == datetime(2026, 8, 31, 12, 0, tzinfo=timezone.utc)
    assert add_period(start, "90d") == start + timedelta(days=90)
    assert add_period(start, "48h") == start + timedelta(hours=48)


def test_hold_needs_a_reason_and_release_needs_a_hold(db, settings, cli_env, capsys):
    now = datetime.now(timezone.utc)
    rec = make_recording(db, Path(settings.recording.dir), started=now, until=now + timedelta(days=30))
    assert cli.main(["recordings", "hold", rec.call_uuid[:8], "--reason", "  "]) == 1
    assert "needs a reason" in capsys.readouterr().err
    assert cli.main(["recordings", "release", rec.call_uuid]) == 1
    assert "not under legal hold" in capsys.readouterr().err
    assert cli.main(["recordings", "hold", rec.call_uuid[:8], "--reason", "complaint 77"]) == 0
    shown = cli_json(capsys, "recordings", "show", rec.call_uuid, "--json")
    assert shown["legal_hold"] and shown["hold_reason"] == "complaint 77" and shown["held_at"]
    listed = cli_json(capsys, "recordings", "list", "--held", "--json")
    assert [r["uuid"] for r in listed] == [rec.call_uuid]
    assert cli.main(["recordings", "show", str(uuidlib.uuid4())]) == 1
    assert "no recording for call" in capsys.readouterr().err


def test_list_filters_and_verify_detects_a_changed_file(run, db, cli_env, capsys):
    guard, fs = run(mode="all")
    a = fs.call(Caller(ani="15551234567"))
    b = fs.call(Caller(ani="+442079460000"))
    settle(guard)
    listed = cli_json(capsys, "recordings", "list", "--number", "(555) 123-4567", "--json")
    assert [r["uuid"] for r in listed] == [a.uuid]
    assert {"uuid", "path", "purpose", "retain_until", "legal_hold", "sha256", "masks"} <= set(listed[0])
    assert cli.main(["recordings", "list"]) == 0
    table = capsys.readouterr().out
    assert a.uuid in table and b.uuid in table and "keep until" in table

    assert cli.main(["recordings", "verify"]) == 0
    assert "2 of 2 recording(s) intact" in capsys.readouterr().out
    with open(recording_of(db, b.uuid).path, "r+b") as f:
        f.seek(100)
        f.write(b"tampered")
    assert cli.main(["recordings", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"BAD {b.uuid}" in out and "SHA-256 differs" in out


# ------------------------------------------------------------ configuration


def test_recording_settings_are_checked_with_the_key_named(tmp_path):
    def load(text: str) -> Any:
        path = tmp_path / "fsguard.toml"
        path.write_text(text)
        return load_settings(path, env={})

    s = load('[recording]\ndir = "/var/lib/fsguard/recordings"\n[recording.retention]\ncomplaints = "2y"\n'
             '[[recording.rules]]\nname = "complaints"\ndnis = ["+18005550100"]\nmode = "all"\n'
             'purpose = "complaints"\n')
    assert s.recording.retention == {"evidence": "5y", "training": "6mo", "analytics": "1y", "complaints": "2y"}
    for text, key in [
        ('[recording]\ndir = "/var/rec ordings"\n', "recording.dir"),
        ('[recording]\nmode = "sometimes"\n', "recording.mode"),
        ('[recording.retention]\ntraining = "6m"\n', "recording.retention.training"),
        ('[[recording.rules]]\nmode = "all"\npurpose = "gossip"\n', "recording.rules[0].purpose"),
        ('[[recording.rules]]\ndnis = "5000"\n', "recording.rules[0].mode"),
        ('[[recording.rules]]\nmode = "sample"\nsample_percent = 120\n', "recording.rules[0].sample_percent"),
        ('[[recording.rules]]\nmode = "all"\nqueues = "sales"\n', "recording.rules[0].queues"),
        ('[recording]\nconsent_media = "maybe"\n', "recording.consent_media"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(key)):
            load(text)
    env = load_settings(env={"FSGUARD_RECORDING_RULES": '[{"dnis": "5000", "mode": "off"}]'})
    assert env.recording.rules == [{"dnis": "5000", "mode": "off"}]


# ------------------------------------------------------------------ replay


def test_replay_decides_again_from_the_stored_call_without_prompting_or_recording(run, db, settings):
    from fsguard.ops import replay

    guard, fs = run(mode="all")
    sales = fs.call(Caller(variables={"fsguard_queue": "sales"}))
    other = fs.call(Caller())
    settle(guard)
    with db.begin() as s:
        before = s.scalars(select(Recording.call_uuid)).all()

    changed = load_settings(env={})
    changed.database.url = settings.database.url
    changed.policy.stages = ["recording", "routing"]
    changed.recording.dir = settings.recording.dir
    changed.recording.rules = [{"name": "no sales recording", "queue": "sales", "mode": "off"}]
    changed.validate()
    report = replay.replay(db, changed).as_dict()
    assert report["calls"] == 2 and report["changed"] == 0  # both are still routed the same way
    diffs = [d for d in report["differences"] if d["stage"] == "recording"]
    assert [(d["was"], d["now"], d["calls"], d["examples"]) for d in diffs] == [
        ("continue recording.all", "continue recording.off", 1, [sales.uuid])]
    with db.begin() as s:
        assert s.scalars(select(Recording.call_uuid)).all() == before  # nothing written
    assert other.uuid in before
