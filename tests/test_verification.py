"""Verification end to end: the simulator plays FreeSWITCH over real TCP, on SQLite and PostgreSQL.

The simulated caller knows the code only from what fsguard plays to it: with ``digits="auto"``
it keys the digits it heard (digit files, or ``say ... iterated``), never anything fsguard told
it otherwise. This file extends the simulator (the brief allows it, inside the test file) with
callers the stock one does not have:

* ``digits="wrong"`` keys the heard code with every digit changed (a wrong code that can never be
  the right one by chance, unlike a fixed "99" against a random code);
* ``digits="tail"`` keys the heard code without its first digit;
* ``type_along=N`` keys the first N digits of the code while it is being read out in early media
  (FreeSWITCH's ``playback`` takes such keys out of the channel's queue and reports them as DTMF
  events: they are lost to a later digit collection, and only the events tell fsguard).

Every failing case asserts the billed time (answer to hang-up, by the simulated channel's clock)
is below the carrier's guard interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import gevent
import pytest
from sqlalchemy import select

from fsguard.rules import lists
from fsguard.store import records
from fsguard.ops.cli import main as fsguard_main
from fsguard.config import ConfigError, Settings, VerificationSettings
from fsguard.store.db import Database
from fsguard.store.models.challenges import Challenge
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard.stages.verification import announcement, judge_early, new_code
from fsguard_testing.fakeswitch import Caller, Channel, FakeFreeSWITCH, SimResult
from fsguard_testing.fakeswitch.caller import DIGIT_FILE
from fsguard_testing.fakeswitch.core import split_args

CALLER = "+12125550147"
TOLL_FREE = "+18005550100"
#: real seconds per channel second: fsguard's own round trips (a millisecond or two) must stay
#: small on the channel's clock, as they are in life
TS = 0.02
GUARD = 5.0
#: the announcement with the simulator's default 0.2 s per file: intro (2), digits (2), pause, digits (2)
ANNOUNCEMENT_SECONDS = 0.2 * 2 + 0.4 + 0.7 + 0.4


# ================================================================== the simulator, extended


@dataclass
class Typist(Caller):
    #: keys this many digits of the code while it is read out, before the answer
    type_along: int = 0


class _Channel(Channel):
    def _caller_keys(self) -> str:
        digits = self.caller.digits
        if digits == "wrong":
            return "".join(str((int(d) + 1) % 10) for d in self.heard_code)
        if digits == "tail":
            return self.heard_code[1:]
        return super()._caller_keys()

    def _play(self, items: list[str]) -> Iterator[float]:
        along = getattr(self.caller, "type_along", 0)
        typed = 0
        for i, delay in enumerate(super()._play(items)):
            yield delay
            m = DIGIT_FILE.search(items[i])
            if m and typed < along and self.answered_t is None and not self.hung_up:
                self._dtmf(m.group(1))   # keyed as the digit was read: playback swallows it, the event tells
                typed += 1


class ChallengeFreeSWITCH(FakeFreeSWITCH):
    channel_class = _Channel


class ChallengeEveryone(Stage):
    """Asks for a challenge on every call (another stage's challenge: trigger "other")."""

    name = "test_challenge"

    def run(self, call: Any) -> Verdict:
        return Verdict.challenge("test: every caller must verify", "test.challenge")


class Risky(Stage):
    """Adds 60 risk points, asks for nothing."""

    name = "test_risky"

    def run(self, call: Any) -> Verdict:
        call.add_risk(60, "test.risky")
        return Verdict.carry_on("risky", "test.risky")


# ================================================================== the line


@dataclass
class Line:
    guard: Any
    fs: ChallengeFreeSWITCH
    db: Database
    settings: Settings

    def settle(self) -> None:
        app, server = self.guard.app, self.guard.server
        with gevent.Timeout(5, AssertionError("fsguard did not let go of its calls")):
            while app.deciding or app.held or server.active:
                gevent.sleep(0.005)

    def call(self, ani: str = CALLER, **kwargs: Any) -> SimResult:
        result = self.fs.call(Typist(ani=ani, dnis=TOLL_FREE, **kwargs))
        self.settle()
        assert not result.violations, result.violations
        return result

    def record(self, result: SimResult) -> Any:
        call = records.find_call(self.db, result.uuid)
        assert call is not None, "the call was not recorded"
        return call

    def verdict(self, result: SimResult, stage: str = "verification") -> Any:
        found = [v for v in self.record(result).verdicts if v.stage == stage]
        assert found, f"no {stage} verdict"
        return found[0]

    def challenge(self, result: SimResult) -> Challenge:
        with self.db.begin() as session:
            row = session.scalars(select(Challenge).where(Challenge.call_uuid == result.uuid)).one()
            session.expunge(row)
            return row


@pytest.fixture
def start_line(settings: Settings, start_guard: Callable[..., Any], db: Database,
               monkeypatch: pytest.MonkeyPatch) -> Callable[..., Line]:
    monkeypatch.setitem(STAGES, "test_challenge", f"{__name__}:ChallengeEveryone")
    monkeypatch.setitem(STAGES, "test_risky", f"{__name__}:Risky")
    settings.policy.stages = ["test_challenge", "verification", "routing"]
    settings.screening.nuisance_calls = 0

    def start(stages: list[str] | None = None, playback_durations: dict[str, float] | None = None,
              **verification: Any) -> Line:
        if stages is not None:
            settings.policy.stages = stages
        for key, value in verification.items():
            setattr(settings.verification, key, value)
        settings.validate()
        guard = start_guard(settings)
        fs = ChallengeFreeSWITCH(guard.address, time_scale=TS, playback_durations=playback_durations)
        return Line(guard, fs, db, settings)
    return start


@pytest.fixture
def line(start_line: Callable[..., Line]) -> Line:
    return start_line()


def digit_files(result: SimResult) -> str:
    """The code as the caller heard it from digit files (the first run of them)."""
    heard = [DIGIT_FILE.search(h) for h in result.heard]
    run = ""
    for m in heard:
        if m:
            run += m.group(1)
        elif run:
            break
    return run


def unbilled(result: SimResult) -> None:
    """Answered to collect the digits, hung up by fsguard inside the guard interval."""
    assert result.outcome == "hungup", result
    assert result.hangup_by == "target"
    assert result.hangup_cause == "CALL_REJECTED"
    assert result.answered and result.early_media
    assert 0 < result.billsec < GUARD, f"billed {result.billsec:.2f} s, guard interval {GUARD} s"


def collects(result: SimResult) -> list[list[str]]:
    return [split_args(arg) for app, arg in result.apps if app == "play_and_get_digits"]


# ================================================================== the right code


def test_the_right_code_continues_the_chain_as_verified(line):
    result = line.call(digits="auto")
    assert result.outcome == "routed" and result.route == "transfer default XML queues"
    # early media first: pre_answer, the code announced, then the answer and the digit collection
    apps = [a for a, _ in result.apps]
    assert apps[:4] == ["pre_answer", "playback", "answer", "play_and_get_digits"]
    code = digit_files(result)
    assert len(code) == 2 and result.dtmf == code
    assert result.heard[:2] == ["ivr/ivr-please_enter_the.wav", "ivr/ivr-number.wav"]
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("verified", "verification.passed")
    assert v.details["code_played"] == code and v.details["attempts"] == 1 and v.details["answered"] is True
    assert v.details["triggers"] == ["test: every caller must verify"]
    call = line.record(result)
    assert call.verified is True and call.outcome == "routed"
    assert result.exported.get("fsguard_verified") == "true"     # routing tells the agent
    row = line.challenge(result)
    assert (row.outcome, row.code, row.number, row.attempts, row.entered) == ("passed", code, CALLER, 1, [code])


def test_the_code_reaches_the_caller_only_as_sound(line):
    result = line.call(digits="auto")
    code = line.challenge(result).code
    # not as a variable on the channel, nor in what play_and_get_digits is told to match
    for app, arg in result.apps:
        if app in ("set", "export", "multiset"):
            assert code not in arg.partition("=")[2], (app, arg)
    for args in collects(result):
        assert args[8] == "\\d+" and args[5] == "tone_stream://%(250,0,800)"   # the code is no regex
    assert result.exported.get("fsguard_verified") == "true"


def test_the_code_can_be_spoken_with_say(start_line):
    line = start_line(code_voice="say")
    result = line.call(digits="auto")
    assert result.outcome == "routed"
    code = line.challenge(result).code
    assert f"say:en number iterated {code}" in result.heard
    assert [a for a, _ in result.apps][:5] == ["pre_answer", "playback", "say", "playback", "say"]
    assert line.verdict(result).code == "verification.passed"


# ================================================================== failing callers


def test_a_wrong_code_is_hung_up_before_the_call_is_billed(line):
    result = line.call(digits="wrong")
    unbilled(result)
    row = line.challenge(result)
    assert row.outcome == "wrong" and all(e and e != row.code for e in row.entered)
    assert row.attempts == len(collects(result)) >= 1
    v = line.verdict(result)
    assert (v.outcome, v.code, v.details["outcome"]) == ("reject", "verification.failed", "wrong")
    assert "inside the 5 s unbilled guard interval" in v.reason
    call = line.record(result)
    assert call.outcome == "rejected" and call.action == "hangup CALL_REJECTED" and call.verified is False
    assert call.billsec is not None and call.billsec < GUARD


def test_no_code_is_hung_up_before_the_call_is_billed(line):
    result = line.call(digits=None)
    unbilled(result)
    row = line.challenge(result)
    assert (row.outcome, row.attempts, row.entered) == ("no_input", 1, [""])
    # one try with (nearly) the whole first-digit timeout: no room was left for a second
    assert len(collects(result)) == 1 and 1000 <= int(collects(result)[0][3]) <= 2000
    assert line.verdict(result).details["outcome"] == "no_input"


@pytest.mark.parametrize("guard_interval", [4.0, 8.0])
def test_the_window_follows_the_guard_interval(start_line, guard_interval):
    line = start_line(guard_interval=guard_interval)
    for digits in (None, "wrong"):
        result = line.call(digits=digits)
        assert result.outcome == "hungup" and result.answered
        assert result.billsec < guard_interval, (digits, result.billsec)
        for args in collects(result):
            assert int(args[2]) == 1   # one try per collection: fsguard sizes each one to what is left


def test_a_retry_is_offered_while_it_fits_in_the_window(start_line):
    line = start_line(guard_interval=6.0, attempts=2)
    result = line.call(digits="wrong")
    assert result.outcome == "hungup" and result.billsec < 6.0
    # the caller keyed a wrong code fast: the second try fitted in the 5 s window
    assert line.challenge(result).attempts == 2 == len(collects(result))
    first, second = collects(result)
    assert first[5] == "tone_stream://%(250,0,800)"
    assert second[5] == "file_string://tone_stream://%(150,100,480,620)!tone_stream://%(250,0,800)"
    assert float(second[3]) <= float(first[3])   # cut to what was left


def test_no_retry_is_offered_when_it_would_not_fit(start_line):
    line = start_line(first_digit_timeout=2.5, min_first_digit=1.5)
    result = line.call(digits="wrong")
    unbilled(result)
    assert line.challenge(result).attempts == 1


# ================================================================== hanging up, early keys


def test_a_caller_hanging_up_during_the_announcement_is_recorded_as_abandoned(line):
    result = line.call(digits="auto", hangup_after=1.0)
    assert result.outcome == "caller_hangup" and not result.answered and result.billsec == 0
    assert "answer" not in [a for a, _ in result.apps]
    row = line.challenge(result)
    assert (row.outcome, row.answered) == ("abandoned", False)
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("abandoned", "abandoned")
    assert line.record(result).outcome == "abandoned"


def test_a_caller_hanging_up_while_keying_is_recorded_as_abandoned(line):
    result = line.call(digits=None, hangup_after=ANNOUNCEMENT_SECONDS + 2.0)
    assert result.outcome == "caller_hangup" and result.answered
    assert result.billsec < GUARD
    row = line.challenge(result)
    assert (row.outcome, row.answered) == ("abandoned", True)


def test_keys_pressed_while_the_code_is_read_out_count(line):
    """A caller who keys along with the announcement passes before the call is even answered."""
    result = line.call(digits=None, type_along=2)
    assert result.outcome == "routed"
    assert "answer" not in [a for a, _ in result.apps]   # fsguard never answered (the queue will)
    row = line.challenge(result)
    assert (row.outcome, row.early, row.answered, row.entered) == ("passed", True, False, [row.code])
    assert line.record(result).verified is True


def test_a_code_started_during_the_announcement_is_finished_after_the_answer(line):
    result = line.call(digits="tail", type_along=1)
    assert result.outcome == "routed" and result.answered
    row = line.challenge(result)
    assert (row.outcome, row.early) == ("passed", True)
    assert row.entered == [row.code[1:]]
    # the collection asked for the rest of the code (or the whole code again)
    assert collects(result)[0][:2] == ["1", "2"]


def test_keys_pressed_during_the_entry_prompt_interrupt_it(start_line):
    first, second = "ivr/ivr-use_telephone_keypad.wav", "ivr/ivr-followed_by_pound.wav"
    prompt = f"file_string://{first}!{second}"
    durations = {first: 0.6, second: 0.8}
    line = start_line(entry_prompt=prompt, sound_seconds=durations, playback_durations=durations,
                      first_digit_timeout=1.5)
    patient = line.call(digits=None)
    assert patient.heard.count(second) >= 1   # a caller who keys nothing hears the whole prompt
    unbilled(patient)
    result = line.call(digits="auto", digit_delay=0.3)
    assert result.outcome == "routed"
    assert first in result.heard and second not in result.heard   # keyed during the first part: cut short
    assert line.challenge(result).outcome == "passed"


def test_wrong_keys_during_the_announcement_use_up_a_try(start_line):
    line = start_line(attempts=1)
    result = line.call(digits="wrong", type_along=0)
    unbilled(result)
    assert line.challenge(result).attempts == 1


# ================================================================== escalation, single use


def test_repeated_failures_block_the_number_hard(start_line, db):
    """Three failed challenges in the window: a hard block (source auto); the next call is refused
    by screening before the answer."""
    line = start_line(stages=["screening", "verification", "routing"])
    with db.begin() as session:
        lists.add(session, lists.make_spec(CALLER, kind="block", level=3, reason="complaints"))
    codes = []
    for digits in ("wrong", None, "wrong"):
        result = line.call(digits=digits)
        unbilled(result)
        row = line.challenge(result)
        codes.append(row.code)
        assert line.verdict(result).details["triggers"] == ["soft block level 3"]
    assert row.escalated is True
    assert "3 failed challenges within 24h" in line.verdict(result).reason
    with db.begin() as session:
        entry = lists.lookup(session, CALLER, TOLL_FREE)
        assert (entry.kind, entry.level, entry.source, entry.code) == ("block", 6, "auto", "verification.failed")
        assert "failed 3 verification challenges" in entry.reason
    assert line.guard.app.metrics.auto_blocks.labels(reason="verification.failed")._value.get() == 1
    # single use: no challenge drew the code of the number's previous one
    assert all(a != b for a, b in zip(codes, codes[1:])), codes

    result = line.call(digits="auto")
    assert result.outcome == "hungup" and not result.answered and not result.early_media
    assert line.verdict(result, "screening").code == "blocklist.hard"


def test_a_passed_challenge_does_not_count_towards_escalation(start_line, db):
    line = start_line(escalate_after=2)
    line.call(digits="wrong")
    line.call(digits="auto")
    result = line.call(digits=None)
    assert line.challenge(result).escalated is True   # 2 failures (the pass in between does not count)
    with db.begin() as session:
        assert lists.lookup(session, CALLER, None).source == "auto"


def test_an_allowed_number_is_never_escalated(start_line, db):
    line = start_line(escalate_after=1)
    with db.begin() as session:
        lists.add(session, lists.make_spec(CALLER, kind="allow", reason="our CEO"))
    result = line.call(digits=None)   # test_challenge still asks, whatever the lists say
    unbilled(result)
    assert line.challenge(result).escalated is False
    with db.begin() as session:
        assert lists.lookup(session, CALLER, None).kind == "allow"


def test_codes_are_random_and_never_the_previous_one():
    assert len({new_code(2) for _ in range(400)}) > 60
    assert all(new_code(1, "7") != "7" for _ in range(200))
    assert all(c.isdigit() and len(c) == 4 for c in (new_code(4) for _ in range(50)))


# ================================================================== who is challenged


def test_soft_blocks_below_the_minimum_level_are_not_challenged(start_line, db):
    line = start_line(stages=["screening", "verification", "routing"], min_block_level=4)
    with db.begin() as session:
        lists.add(session, lists.make_spec(CALLER, kind="block", level=3))
    result = line.call(digits="auto")
    assert result.outcome == "routed" and not result.early_media   # policy.unverified_action = route
    assert not [v for v in line.record(result).verdicts if v.stage == "verification"]


def test_a_trigger_switched_off_hands_the_call_to_unverified_action(start_line):
    line = start_line(triggers=["soft_block", "anonymous"])
    line.settings.policy.unverified_action = "reject"
    line.guard.app.reload(line.settings)
    result = line.call(digits="auto")
    assert result.outcome == "hungup" and not result.early_media and not result.answered
    assert line.verdict(result, "pipeline").code == "unverified"


def test_risk_above_the_threshold_is_challenged(start_line):
    line = start_line(stages=["test_risky", "verification", "routing"], risk_threshold=50)
    result = line.call(digits="auto")
    assert result.outcome == "routed" and result.early_media
    v = line.verdict(result)
    assert v.code == "verification.passed"
    assert v.details["triggers"] == ["risk 60 reached verification.risk_threshold 50"]


def test_shadow_mode_prompts_nobody(start_line):
    line = start_line()
    line.settings.policy.enforce_stages = {"verification": False}
    line.guard.app.reload(line.settings)
    result = line.call(digits=None)
    assert result.outcome == "routed" and not result.early_media
    assert not {"pre_answer", "answer", "playback"} & {a for a, _ in result.apps}
    v = line.verdict(result)
    assert (v.outcome, v.enforced, v.code) == ("challenge", False, "verification.shadow")
    assert v.reason.startswith("would challenge: ")


def test_replay_reuses_the_stored_outcome(start_line):
    from fsguard.call.verdict import ChallengeRequest
    from fsguard.ops.replay import ReplayCall

    line = start_line()
    stage = next(s for s in line.guard.app.pipeline.stages if s.name == "verification")
    record = {"uuid": "r1", "ani": CALLER, "dnis": TOLL_FREE, "inputs": {"ani": CALLER, "direction": "inbound"}}
    outcomes = {}
    for stored in (True, False, None):
        call = ReplayCall({**record, "verified": stored}, line.settings)
        call.challenges.append(ChallengeRequest.other("test: every caller must verify"))
        verdict = stage.run(call)
        outcomes[stored] = (verdict.outcome.value, verdict.code)
    assert outcomes == {True: ("verified", "verification.passed"), False: ("reject", "verification.failed"),
                        None: ("continue", "verification.not_replayed")}


# ================================================================== pieces


@pytest.mark.parametrize("keyed, judged", [
    ("", ("none", "")), ("42", ("right", "42")), ("4242", ("right", "42")), ("9942", ("right", "42")),
    ("4", ("partial", "4")), ("424", ("partial", "4")), ("24", ("partial", "4")), ("43", ("wrong", "43")),
    ("7", ("wrong", "7")),
])
def test_keys_during_the_announcement_are_judged(keyed, judged):
    assert judge_early("42", keyed) == judged


def test_the_default_announcement_uses_stock_sounds():
    cfg = VerificationSettings()
    assert announcement(cfg, "42") == [("playback", "file_string://ivr/ivr-please_enter_the.wav!ivr/ivr-number.wav"
                                        "!digits/4.wav!digits/2.wav!silence_stream://700!digits/4.wav!digits/2.wav")]
    cfg.code_voice, cfg.code_repeats = "say", 1
    assert announcement(cfg, "42") == [("playback", "file_string://ivr/ivr-please_enter_the.wav!ivr/ivr-number.wav"),
                                       ("say", "42")]


@pytest.mark.parametrize("change, message", [
    ({"entry_prompt": "ivr/ivr-please_enter_the.wav"}, "must know how long"),
    ({"guard_interval": 2.0}, "do not fit in the window"),
    ({"guard_margin": 0.1}, "guard_margin at least 0.5"),
    ({"code_voice": "tts"}, "expected digits or say"),
    ({"triggers": ["soft_block", "weather"]}, "unknown trigger(s) weather"),
    ({"escalate_outcomes": ["passed"]}, "unknown outcome(s) passed"),
    ({"escalate_window": "soon"}, "verification.escalate_window"),
    ({"intro": "ivr/a.wav ivr/b.wav"}, "without spaces"),
    ({"digit_sound": "digits/4.wav"}, "must contain {digit}"),
])
def test_bad_settings_are_refused_with_the_key(change, message):
    cfg = VerificationSettings(**change)
    with pytest.raises(ConfigError, match="verification") as exc:
        cfg.validate()
    assert message in str(exc.value)


def test_a_file_prompt_with_its_length_is_accepted():
    cfg = VerificationSettings(retry_prompt="ivr/ivr-that_was_an_invalid_entry.wav",
                               sound_seconds={"ivr/ivr-that_was_an_invalid_entry.wav": 1.6})
    cfg.validate()


# ================================================================== the command line


def test_the_challenges_command_lists_and_the_eraser_deletes(start_line, db, settings, tmp_path, capsys):
    line = start_line()
    line.call(digits="wrong")
    line.call(digits="auto")
    config = tmp_path / "fsguard.toml"
    config.write_text(f'[database]\nurl = "{settings.database.url}"\n[node]\nid = "cli"\n')
    assert fsguard_main(["-c", str(config), "challenges", "+1 212 555 0147"]) == 0
    out = capsys.readouterr().out
    assert "1 failed challenge(s) in the last 24h" in out and "wrong" in out and "passed" in out
    assert fsguard_main(["-c", str(config), "challenges", "--failed", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [r["outcome"] for r in rows] == ["wrong"]
    assert fsguard_main(["-c", str(config), "challenges", "not a number"]) == 1
    assert "not a number" in capsys.readouterr().err

    from fsguard.rules import erasure

    report = erasure.erase(db, CALLER, settings=settings)
    assert report.ok
    assert any("deleted 2 verification challenge(s)" in line for a in report.areas for line in a.lines)
    with db.begin() as session:
        assert session.scalars(select(Challenge)).first() is None


def test_settings_come_from_toml_and_environment(tmp_path):
    from fsguard.config import load_settings

    path = tmp_path / "fsguard.toml"
    path.write_text('[verification]\nguard_interval = 6\ncode_length = 3\ntriggers = ["soft_block"]\n'
                    'sound_seconds = {"ivr/ivr-that_was_an_invalid_entry.wav" = 1.6}\n'
                    'retry_prompt = "ivr/ivr-that_was_an_invalid_entry.wav"\n')
    s = load_settings(path, env={"FSGUARD_VERIFICATION_ESCALATE_AFTER": "5"})
    assert (s.verification.window, s.verification.code_length, s.verification.triggers) == (5.0, 3, ["soft_block"])
    assert s.verification.escalate_after == 5
    assert dataclasses.asdict(s.verification)["sound_seconds"] == {"ivr/ivr-that_was_an_invalid_entry.wav": 1.6}
