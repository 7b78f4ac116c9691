"""Keyword review of recorded calls, with speech the suite makes itself.

espeak-ng speaks the sentences, sox brings them to telephone rate (8 kHz), and the test puts them
in the channels of a stereo WAV the way FreeSWITCH's RECORD_STEREO does: the recorded channel's
own party on the left, the other party on the right (docs/review.rst). Calls go through the real
socket (the simulator plays FreeSWITCH and writes that WAV where record_session was told to), the
recogniser is the real pocketsphinx, in its own process, and the CLI is fsguard's entry point. Every
database test runs on SQLite and PostgreSQL. A machine without espeak-ng or sox FAILS these tests:
``make install`` installs them.
"""

from __future__ import annotations

import array
import json
import shutil
import subprocess
import wave
from datetime import timedelta
from pathlib import Path
from typing import Any

import gevent
import pytest
from sqlalchemy import func, select

from fsguard.ops import cli
from fsguard.rules import recordings, review, spotting
from fsguard.ops.commands.review import review_worker
from fsguard.store.models import OutboundFreeze, utcnow
from fsguard.store.models.recordings import Recording, RecordingMask
from fsguard.store.models.review import ReviewHit, ReviewResult
from fsguard.rules.recordings import recording_path
from fsguard_testing.fakeswitch import Caller, Channel, FakeFreeSWITCH, SimResult
from fsguard_testing.waiting import settle, wait_for

RATE = 8000
#: the voice the recogniser hears best of espeak-ng's US English ones at telephone rate (docs/review.rst)
VOICE = "en-us+f1"
NUMBER = "+15557654321"
CALLER = "+15551230001"

NOT_INTERESTED = "I am not interested, please stop calling me"
AGENT_PITCH = "Hello, this is Anna from the energy company, how are you today"
UNRELATED = "The weather is lovely today and the garden looks green"
FRAUD = "This is fraud, I am calling the police"


# ------------------------------------------------------------------ speech


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``speech(text)``: 16-bit samples at 8 kHz of espeak-ng saying ``text`` (cached per run)."""
    for tool, package in (("espeak-ng", "espeak-ng"), ("sox", "sox")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run 'make install' (it installs the Debian package {package})")
    cache: dict[str, array.array] = {}
    work = tmp_path_factory.mktemp("speech")

    def say(text: str) -> array.array:
        if text not in cache:
            raw, low = work / f"{len(cache)}.wav", work / f"{len(cache)}-8k.wav"
            subprocess.run(["espeak-ng", "-v", VOICE, "-s", "150", "-w", str(raw), text], check=True)
            subprocess.run(["sox", "-q", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(low)], check=True)
            with wave.open(str(low)) as w:
                cache[text] = array.array("h", w.readframes(w.getnframes()))
        return cache[text]

    return say


def stereo_wav(path: str | Path, left: list[tuple[float, array.array]], right: list[tuple[float, array.array]],
               seconds: float = 8.0) -> None:
    """A stereo 8 kHz WAV: each (second, samples) placed in its channel, silence elsewhere."""
    n = int(RATE * seconds)
    channels = []
    for parts in (left, right):
        track = array.array("h", bytes(2 * n))
        for at, samples in parts:
            start = int(at * RATE)
            piece = samples[: max(0, n - start)]
            track[start:start + len(piece)] = piece
        channels.append(track)
    frames = array.array("h", bytes(4 * n))
    frames[0::2], frames[1::2] = channels
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames.tobytes())


# ------------------------------------------------------------- calls

#: what the simulated FreeSWITCH records, by the caller variable ``test_audio``
AUDIO: dict[str, tuple[list[tuple[float, array.array]], list[tuple[float, array.array]]]] = {}


class SpeakingChannel(Channel):
    """A simulated channel whose record_session writes a stereo WAV of the test's speech."""

    def _app_record_session(self, run: Any):  # type: ignore[no-untyped-def]
        yield from super()._app_record_session(run)
        left, right = AUDIO[self.caller.variables["test_audio"]]
        stereo_wav(run.arg.strip(), left, right)


class SpeakingFreeSWITCH(FakeFreeSWITCH):
    channel_class = SpeakingChannel


@pytest.fixture
def review_settings(settings: Any) -> Any:
    settings.policy.stages = ["recording", "outbound", "routing"]
    settings.recording.consent = False
    settings.recording.purpose = "analytics"
    settings.validate()
    return settings


@pytest.fixture
def node(review_settings: Any, start_guard: Any) -> Any:
    return start_node(start_guard)


def start_node(start_guard: Any) -> Any:
    """A running fsguard with a speaking FreeSWITCH; ``node(audio, caller)`` makes a recorded call."""
    guard = start_guard()
    fs = SpeakingFreeSWITCH(guard.address, time_scale=0.005)

    def call(name: str, caller: Caller) -> str:
        caller.variables["test_audio"] = name
        result = fs.call(caller)
        settle(guard)
        wait_for(lambda: _recording(guard.app.db, result.uuid) is not None
                 and _recording(guard.app.db, result.uuid).status == "complete")
        return result.uuid

    call.guard = guard  # type: ignore[attr-defined]
    return call


def agent_dials(number: str = NUMBER) -> Caller:
    """An agent dialling out; the called person answers and they talk for 10 s."""
    return Caller(ani="1001", name="Agent Smith", dnis=number, context="agents",
                  variables={"fsguard_direction": "outbound"}, answered_by_far_end=True, talk_time=10.0,
                  ring_time=1.0)


def customer_calls(number: str = CALLER) -> Caller:
    return Caller(ani=number, dnis="5000", talk_time=10.0)


def _recording(db: Any, uuid: str) -> Recording | None:
    with db.begin() as s:
        return s.scalars(select(Recording).where(Recording.call_uuid == uuid)).first()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, review_settings: Any) -> None:
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    monkeypatch.setenv("FSGUARD_DATABASE_URL", review_settings.database.url)
    monkeypatch.setenv("FSGUARD_RECORDING_DIR", review_settings.recording.dir)
    monkeypatch.setenv("FSGUARD_NODE_ID", "review-node")


def fsguard(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> Any:
    capsys.readouterr()
    assert cli.main(list(argv)) == status
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in argv else out


def hits_of(db: Any, uuid: str | None = None) -> list[ReviewHit]:
    with db.begin() as s:
        q = select(ReviewHit).order_by(ReviewHit.id)
        return list(s.scalars(q.where(ReviewHit.call_uuid == uuid) if uuid else q))


# ------------------------------------------------------------------ tests


def test_called_party_saying_not_interested_freezes_the_number_with_phrase_second_and_recording(
        node, speech, db, cli_env, capsys):
    # the agent (left: the recorded channel is the agent's leg) pitches at 0.5 s; the called
    # person (right) answers at 2 s: "I am not interested, please stop calling me"
    AUDIO["opt-out"] = ([(0.5, speech(AGENT_PITCH))], [(2.0, speech(NOT_INTERESTED))])
    uuid = node("opt-out", agent_dials())

    run = fsguard(capsys, "review", "run", "--json")
    assert [r["call_uuid"] for r in run] == [uuid]
    heard = {h["phrase"]: h for h in run[0]["hits"]}
    assert set(heard) == {"not interested", "stop calling"}
    assert 2.0 <= heard["not interested"]["second"] <= 3.2     # "I am not interested" begins at 2 s
    assert heard["stop calling"]["second"] > heard["not interested"]["second"]
    assert all(h["action"] == "freeze" for h in heard.values())

    frozen = fsguard(capsys, "outbound", "frozen", "--json")
    assert [(f["number"], f["source"]) for f in frozen] == [(NUMBER, "review")]
    reason = frozen[0]["reason"]
    assert "'not interested' at 2." in reason and uuid in reason and _recording(db, uuid).path in reason
    assert {h.freeze_id for h in hits_of(db, uuid)} == {frozen[0]["id"]}   # one freeze, both hits point to it

    shown = fsguard(capsys, "calls", "show", uuid, "--json")
    assert shown["review"]["channel"] == 1 and shown["review"]["state"] == "done"
    assert [h["phrase"] for h in shown["review"]["hits"]] == ["not interested", "stop calling"]
    text = fsguard(capsys, "recordings", "show", uuid)
    assert "heard 'not interested' at 2." in text and "freeze #" in text and "right channel" in text

    # lifting it is the existing unfreeze
    out = fsguard(capsys, "outbound", "unfreeze", NUMBER, "--reason", "asked to be called back")
    assert "unfrozen +15557654321" in out
    assert fsguard(capsys, "outbound", "frozen", "--json") == []


def test_the_agent_saying_the_phrase_does_not_count_and_unrelated_speech_or_silence_gives_no_hit(
        node, speech, db, cli_env, capsys):
    AUDIO["agent-says-it"] = ([(0.5, speech(NOT_INTERESTED))], [(4.0, speech(UNRELATED))])
    AUDIO["unrelated"] = ([(0.5, speech(AGENT_PITCH))], [(2.0, speech(UNRELATED))])
    AUDIO["silence"] = ([], [])
    order = ["agent-says-it", "unrelated", "silence"]
    uuids = [node(name, agent_dials(f"+1555765432{i}")) for i, name in enumerate(order)]

    run = fsguard(capsys, "review", "run", "--json")
    assert [r["call_uuid"] for r in run] == uuids          # oldest first
    assert [(r["state"], r["hits"]) for r in run] == [("done", [])] * len(order)
    assert run[0]["seconds"] == pytest.approx(8.0, abs=0.3)   # the whole customer channel was listened to
    assert hits_of(db) == []
    assert fsguard(capsys, "outbound", "frozen", "--json") == []


def test_a_masked_interval_is_not_listened_to(node, speech, db, review_settings, cli_env, capsys):
    AUDIO["masked"] = ([], [(2.0, speech(NOT_INTERESTED))])
    AUDIO["control"] = ([], [(2.0, speech(NOT_INTERESTED))])
    masked, control = node("masked", agent_dials("+15557650001")), node("control", agent_dials("+15557650002"))
    with db.begin() as s:   # card data was read out from 1.5 s to 6.5 s: FreeSWITCH was told to mask
        rec = s.scalars(select(Recording).where(Recording.call_uuid == masked)).one()
        s.add(RecordingMask(recording_id=rec.id, started_at=rec.started_at + timedelta(seconds=1.5),
                            ended_at=rec.started_at + timedelta(seconds=6.5), requested_by="agent-7"))

    run = {r["call_uuid"]: r for r in fsguard(capsys, "review", "run", "--json")}
    assert run[masked]["hits"] == [] and run[masked]["seconds"] < 4.0
    assert {h["phrase"] for h in run[control]["hits"]} == {"not interested", "stop calling"}
    frozen = fsguard(capsys, "outbound", "frozen", "--json")
    assert [f["number"] for f in frozen] == ["+15557650002"]


def test_inbound_fraud_report_is_flagged_not_frozen_and_an_operator_marks_it(node, speech, db, cli_env, capsys):
    # inbound: the recorded channel is the caller's, so the caller is on the left
    AUDIO["fraud"] = ([(1.0, speech(FRAUD))], [(0.2, speech(AGENT_PITCH))])
    uuid = node("fraud", customer_calls())

    run = fsguard(capsys, "review", "run", "--json")
    assert [(h["phrase"], h["action"]) for h in run[0]["hits"]] == [("this is fraud", "flag")]
    assert fsguard(capsys, "outbound", "frozen", "--json") == []

    listed = fsguard(capsys, "review", "list", "--json")
    assert [(h["call_uuid"], h["phrase"]) for h in listed] == [(uuid, "this is fraud")]
    out = fsguard(capsys, "review", "mark", str(listed[0]["id"]), "--reason", "listened: a real complaint",
                  "--by", "supervisor-3")
    assert "marked reviewed by supervisor-3" in out
    assert fsguard(capsys, "review", "list", "--json") == []
    marked = fsguard(capsys, "review", "list", "--all", "--json")
    assert [(h["reviewed_by"], h["review_reason"]) for h in marked] == [("supervisor-3", "listened: a real complaint")]
    (hit,) = hits_of(db, uuid)
    assert (hit.reviewed_by, hit.review_reason) == ("supervisor-3", "listened: a real complaint")
    assert hit.reviewed_at is not None and (utcnow() - hit.reviewed_at).total_seconds() < 60
    trail = fsguard(capsys, "audit", "--json")
    marks = [e for e in (trail["entries"] if isinstance(trail, dict) else trail) if e["action"] == "review.mark"]
    assert [(e["actor"], e["subject"], e["reason"], e["via"]) for e in marks] == [
        ("supervisor-3", uuid, "listened: a real complaint", "cli")]
    capsys.readouterr()
    assert cli.main(["review", "mark", str(hit.id), "--reason", "again"]) == 1
    assert "was marked reviewed by supervisor-3" in capsys.readouterr().err


def test_only_recordings_whose_purpose_allows_analytics_are_reviewed(start_guard, speech, db, review_settings,
                                                                    cli_env, capsys, monkeypatch):
    AUDIO["evidence"] = ([], [(1.0, speech(NOT_INTERESTED))])
    review_settings.recording.purpose = "evidence"
    uuid = start_node(start_guard)("evidence", agent_dials())
    assert _recording(db, uuid).purpose == "evidence"
    assert review.backlog(db, review_settings) == 0
    assert fsguard(capsys, "review", "run", "--json") == []
    monkeypatch.setenv("FSGUARD_REVIEW_PURPOSES", "evidence")   # the operator maps evidence to analytics too
    run = fsguard(capsys, "review", "run", "--json")
    assert [r["call_uuid"] for r in run] == [uuid]


def test_purge_and_erasure_delete_what_was_heard_with_the_recording(node, speech, db, cli_env, capsys):
    AUDIO["erase"] = ([], [(1.0, speech(NOT_INTERESTED))])
    AUDIO["purge"] = ([], [(1.0, speech(NOT_INTERESTED))])
    erased = node("erase", agent_dials(NUMBER))
    purged = node("purge", agent_dials("+15557650003"))
    fsguard(capsys, "review", "run", "--json")
    assert {h.call_uuid for h in hits_of(db)} == {erased, purged}

    fsguard(capsys, "erase", NUMBER)
    assert {h.call_uuid for h in hits_of(db)} == {purged}
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(ReviewResult).where(ReviewResult.call_uuid == erased)) == 0
        s.execute(Recording.__table__.update().where(Recording.call_uuid == purged)
                  .values(retain_until=utcnow() - timedelta(days=1)))
    fsguard(capsys, "recordings", "purge")
    assert hits_of(db) == []
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(ReviewResult)) == 0


def test_a_worker_that_dies_mid_review_neither_skips_nor_repeats_a_recording(node, speech, db, review_settings):
    for i in range(3):
        AUDIO[f"r{i}"] = ([], [(1.0, speech(NOT_INTERESTED))])
    uuids = [node(f"r{i}", agent_dials(f"+1555765001{i}")) for i in range(3)]

    first = review.run_pending(db, review_settings, node="node-a", limit=1)
    assert [o.call_uuid for o in first] == uuids[:1]
    # node-b claims the next recording, then dies before its result is committed
    dead = review.claim_next(db, review_settings, "node-b")
    assert dead is not None and dead.call_uuid == uuids[1]
    # a restarted worker does not take a live claim: it goes on with the third ...
    after_restart = review.run_pending(db, review_settings, node="node-a")
    assert [o.call_uuid for o in after_restart] == uuids[2:]
    # ... and takes the dead worker's over once the claim is older than claim_timeout
    review_settings.review.claim_timeout = "1s"
    gevent.sleep(1.2)
    taken_over = review.run_pending(db, review_settings, node="node-a")
    assert [o.call_uuid for o in taken_over] == [uuids[1]]
    # the dead worker's late result is refused: its claim is no longer on the row
    late = review.review_one(db, review_settings, review.Policy.from_settings(review_settings), dead, node="node-b")
    assert late.state == "dropped"
    assert review.run_pending(db, review_settings, node="node-a") == []

    with db.begin() as s:
        results = s.execute(select(ReviewResult.call_uuid, ReviewResult.state)).all()
    assert sorted(results) == sorted((u, "done") for u in uuids)
    per_call = [sorted(h.phrase for h in hits_of(db, u)) for u in uuids]
    assert per_call == [["not interested", "stop calling"]] * 3     # every recording heard once, none twice
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(OutboundFreeze).where(OutboundFreeze.source == "review")) == 3


def test_serve_reviews_in_the_background_while_calls_are_taken(node, speech, db, review_settings):
    review_settings.review.enabled = True
    review_settings.review.interval = "0.2s"
    guard = node.guard
    metrics = guard.app.metrics
    review_worker(guard.app, guard.server)
    AUDIO["bg"] = ([], [(1.0, speech(NOT_INTERESTED))])
    uuid = node("bg", agent_dials())
    wait_for(lambda: len(hits_of(db, uuid)) == 2, timeout=60)
    # calls keep being decided while the recogniser runs in its own process
    AUDIO["bg2"] = ([], [(1.0, speech(UNRELATED))])
    second = node("bg2", agent_dials("+15557650009"))
    wait_for(lambda: review.call_review(db, second) is not None
             and review.call_review(db, second)["state"] == "done", timeout=60)
    wait_for(lambda: metrics.review_backlog._value.get() == 0, timeout=10)
    assert metrics.reviews.labels(state="done", direction="outbound")._value.get() == 2
    assert metrics.review_hits.labels(phrase="not interested", action="freeze")._value.get() == 1


def test_a_phrase_the_recogniser_cannot_hear_is_one_clear_line(cli_env, capsys, monkeypatch, review_settings):
    monkeypatch.setenv("FSGUARD_REVIEW_PHRASES", json.dumps([{"phrase": "stop zzyzxq", "outbound": "freeze"}]))
    capsys.readouterr()
    assert cli.main(["review", "run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zzyzxq not in the recogniser's dictionary" in err[0]
    monkeypatch.setenv("FSGUARD_REVIEW_PHRASES", json.dumps([{"phrase": "stop calling", "outbound": "delete"}]))
    assert cli.main(["review", "run"]) == 2
    assert "review.phrases[0].outbound: expected one of freeze, flag, ignore" in capsys.readouterr().err


def test_spotting_hears_the_phrase_in_the_right_channel_only(speech, tmp_path):
    path = tmp_path / "two.wav"
    stereo_wav(path, [(0.5, speech(NOT_INTERESTED))], [(3.0, speech(UNRELATED))])
    phrases = [{"phrase": "not interested", "threshold": 1e-10}, {"phrase": "stop calling", "threshold": 1e-10}]
    left = spotting.spot(str(path), 0, phrases)
    right = spotting.spot(str(path), 1, phrases)
    assert {h["phrase"] for h in left["hits"]} == {"not interested", "stop calling"}
    assert right["hits"] == []
    with pytest.raises(spotting.SpottingError, match="no channel 2"):
        spotting.spot(str(path), 2, phrases)


def test_the_review_tables_come_with_their_migration(db):
    from sqlalchemy import inspect

    from fsguard.store import migrate

    migrate.check(db)          # the models and migration 0008 agree
    migrate.downgrade(db, "0007")
    assert not {"review_results", "review_hits"} & set(inspect(db.engine).get_table_names())
    migrate.upgrade(db)
    assert {"review_results", "review_hits"} <= set(inspect(db.engine).get_table_names())
    migrate.check(db)


def test_a_recording_that_cannot_be_listened_to_fails_loudly_and_is_tried_again_later(db, review_settings, cli_env,
                                                                                     capsys):
    started = utcnow() - timedelta(minutes=5)
    uuid = "5a13e0f2-0000-4000-8000-000000000001"
    path = recording_path(Path(review_settings.recording.dir), uuid, started)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"RIFF not really a wave file")
    recordings.open_recording(
        db, call_uuid=uuid, path=path, node="n", direction="outbound", number=NUMBER, mode="all", rule="default",
        purpose="analytics", consent=True, stereo=True, started_by="policy", status="complete", started_at=started,
        ended_at=started + timedelta(minutes=1), retain_until=started + timedelta(days=365), legal_hold=False,
        hold_reason="", held_at=None, size_bytes=27, duration=60.0, sha256="0" * 64, error="")
    capsys.readouterr()
    assert cli.main(["review", "run", "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert result["state"] == "failed" and "not a PCM WAV file" in result["note"]
    assert fsguard(capsys, "review", "run", "--json") == []          # not again at once ...
    assert review.backlog(db, review_settings) == 1                  # ... but still waiting
    with db.begin() as s:
        s.execute(ReviewResult.__table__.update().values(finished_at=utcnow() - timedelta(hours=1)))
    capsys.readouterr()
    assert cli.main(["review", "run", "--json"]) == 1                # tried again after claim_timeout
    with db.begin() as s:
        assert s.scalar(select(ReviewResult.attempts)) == 2


def test_fsguard_review_run_killed_mid_review_then_run_again_reviews_each_recording_once(node, speech, db,
                                                                                        review_settings, tmp_path):
    """The real process: ``python -m fsguard review run`` is SIGKILLed (with its recogniser) while it
    holds a claim; the next run, once the claim is stale, finishes the job without a repeat."""
    import os
    import signal
    import sys
    import time

    for i in range(3):
        AUDIO[f"k{i}"] = ([], [(1.0, speech(NOT_INTERESTED))])
    uuids = [node(f"k{i}", agent_dials(f"+1555765002{i}")) for i in range(3)]
    env = {**os.environ, "FSGUARD_DATABASE_URL": review_settings.database.url,
           "FSGUARD_RECORDING_DIR": review_settings.recording.dir, "FSGUARD_NODE_ID": "killed-node",
           "FSGUARD_REVIEW_CLAIM_TIMEOUT": "1s"}
    env.pop("FSGUARD_CONFIG", None)
    argv = [sys.executable, "-m", "fsguard", "review", "run", "--json"]

    def claimed() -> list[str]:
        with db.begin() as s:
            return list(s.scalars(select(ReviewResult.call_uuid).where(ReviewResult.state == "claimed")))

    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not claimed() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)      # the worker and its recogniser, mid-review
    proc.wait()
    held = claimed()
    assert len(held) == 1, "the worker was killed while it held a claim"
    time.sleep(1.2)                          # the claim is now older than claim_timeout

    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rerun = [r["call_uuid"] for r in json.loads(done.stdout)]
    assert held[0] in rerun and len(set(rerun)) == len(rerun)
    with db.begin() as s:
        results = sorted(s.execute(select(ReviewResult.call_uuid, ReviewResult.state)).all())
    assert results == sorted((u, "done") for u in uuids)
    assert [sorted(h.phrase for h in hits_of(db, u)) for u in uuids] == [["not interested", "stop calling"]] * 3
    again = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout) == []
