"""The call's typed values: what an action comes back with, how a call ended, the instruction
FreeSWITCH is given, FreeSWITCH's clock, the input port, and the challenge requests screening hands
to verification."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fsguard.call.clock import ChannelClock
from fsguard.call.inputs import LiveInputs, ReplayedInputs
from fsguard.call.instructions import Hangup, Instruction, Route
from fsguard.call.results import CallEnd, Collected, Played
from fsguard.call.verdict import ChallengeRequest, Verdict
from fsguard.config import Settings
from fsguard.rules.stirshaken import StirResult
from fsguard.stages.screening import Signal, _request
from fsguard.stages.verification import VerificationStage

# ------------------------------------------------------------------ results


def test_a_played_sound_says_so_and_one_not_played_says_why():
    assert Played.from_completion({"Application-Response": "FILE PLAYED"}) == Played(True)
    assert Played.from_completion({"Application-Response": "FILE NOT FOUND"}) == Played(False, "FILE NOT FOUND")
    assert Played.from_completion({}) == Played(False, "no result")


def test_no_keys_is_an_empty_collection():
    assert Collected().digits == ""


def test_the_end_of_a_bridged_call_has_its_bridge_times_and_talk():
    end = CallEnd.from_event({"variable_billsec": "30", "variable_duration": "33",
                              "variable_bridge_uepoch": "1700000010000000",
                              "variable_end_uepoch": "1700000024500000"},
                             hangup_cause="NORMAL_CLEARING", answered=True)
    assert (end.hangup_cause, end.duration, end.billsec, end.answered) == ("NORMAL_CLEARING", 33, 30, True)
    assert (end.bridged, end.bridged_at, end.ended_at) == (True, 1700000010.0, 1700000024.5)
    assert end.talk_seconds == 14.5


def test_a_leg_never_bridged_has_no_talk_and_says_why_the_bridge_failed():
    end = CallEnd.from_event({"variable_bridge_uepoch": "0", "variable_originate_disposition": "user_busy",
                              "variable_billsec": "12"}, hangup_cause="NORMAL_CLEARING", answered=False)
    assert (end.bridged, end.bridged_at, end.disposition, end.talk_seconds) == (False, None, "USER_BUSY", None)
    assert end.answered   # billed seconds mean the leg was answered, whatever the session saw


def test_without_the_final_event_only_the_legs_own_flags_are_known():
    end = CallEnd.from_event({}, hangup_cause="NO_ANSWER", answered=False)
    assert (end.duration, end.billsec, end.answered, end.bridged, end.talk_seconds) == (None, None, False, None, None)
    assert CallEnd("NORMAL_CLEARING", 9, 8, True).talk_seconds == 8.0


# ------------------------------------------------------------------ instructions


@pytest.mark.parametrize("text, value", [
    ("transfer default XML queues", Route("transfer", "default XML queues")),
    ("hangup CALL_REJECTED", Hangup("CALL_REJECTED")),
    ("callcenter support@default", Route("callcenter", "support@default")),
])
def test_an_instruction_is_read_once_and_written_back_the_same(text, value):
    assert Instruction.parse(text) == value and str(value) == text


def test_a_hangup_knows_its_cause_and_a_verdict_holds_an_instruction():
    assert Hangup().cause == "NORMAL_CLEARING" and Hangup().hangs_up and not Route("bridge", "x").hangs_up
    verdict = Verdict.reject("blocked", "blocklist.hard")
    assert verdict.action == Hangup("CALL_REJECTED") and verdict.as_dict()["action"] == "hangup CALL_REJECTED"
    assert Verdict.route("transfer 9999 XML announcements").action == Route("transfer", "9999 XML announcements")


# ------------------------------------------------------------------ FreeSWITCH's clock


class _Session:
    def __init__(self):
        self.seen = []
        self.on_event = self.seen.append


def test_the_clock_measures_from_the_answer_by_freeswitchs_timestamps():
    session = _Session()
    clock = ChannelClock(session, lambda: None)
    assert clock.since_answer() == 0.0
    answered = 1_700_000_000_000_000
    session.on_event({"Event-Date-Timestamp": str(answered + 2_500_000), "Caller-Channel-Answered-Time": str(answered)})
    assert clock.since_answer() == 2.5
    assert len(session.seen) == 1     # the handler that was there still gets every event


# ------------------------------------------------------------------ the input port


def test_a_live_call_records_what_the_port_returned():
    inputs = LiveInputs(lambda: datetime(2026, 1, 5, 20, 0, tzinfo=timezone.utc))
    assert inputs.fact("screening.flood", lambda: {"*": (3, 9)}, encode=lambda c: {k: list(v) for k, v in c.items()}) \
        == {"*": (3, 9)}
    assert inputs.fact("recording_queue", lambda: "", keep_empty=False) == ""
    assert inputs.fact("verified", lambda: True, record=False) is True
    assert inputs.effect(lambda: 41, replayed=None) == 41
    inputs.now("routed_at")
    assert inputs.recorded == {"screening": {"flood": {"*": [3, 9]}}, "routed_at": "2026-01-05T20:00:00+00:00"}


def test_a_replayed_call_is_given_back_what_was_recorded_and_asks_nothing_again():
    started = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    inputs = ReplayedInputs({"screening": {"flood": {"*": [3, 9]}}, "verified": False}, started_at=started)

    def never():
        raise AssertionError("asked again")

    assert inputs.fact("screening.flood", never, decode=lambda s: {k: tuple(v) for k, v in s.items()}) == {"*": (3, 9)}
    assert inputs.fact("verified", never, record=False) is False
    assert inputs.fact("crm_customer", never, offline=None) is None
    assert inputs.fact("outbound_freeze", lambda: None) is None     # not in the record: today's table
    assert inputs.effect(never, replayed=None) is None               # a write is not done again
    assert inputs.now("routed_at") == started


# ------------------------------------------------------------------ challenge requests


def test_screening_hands_verification_typed_requests_and_verification_filters_them():
    stir = StirResult("failed", None, "invalid_signature", "identity", "bad signature")
    soft = _request(Signal("blocklist.soft", "blocked at level 2", "challenge", level=2), stir, 40)
    flood = _request(Signal("flood.hour", "31 calls", "challenge", level=3), stir, 40)
    signed = _request(Signal(stir.code, "STIR/SHAKEN", "challenge"), stir, 40)
    assert soft == ChallengeRequest("soft_block", "soft block level 2", level=2)
    assert flood == ChallengeRequest("soft_block", "blocked automatically (flood.hour) at level 3", level=3)
    assert signed.trigger == "stir" and set(signed.stir) == {"failed", "invalid_signature"}
    assert _request(Signal("risk", "adding up", "challenge"), stir, 40) == ChallengeRequest("risk", "screening risk 40")

    settings = Settings()
    settings.verification.min_block_level = 3
    settings.verification.stir_outcomes = ["A"]
    app = type("App", (), {"settings": settings, "db": None, "metrics": None})()
    stage = VerificationStage(app)
    assert [stage._takes(r) for r in (soft, flood, signed)] == [False, True, False]
    settings.verification.stir_outcomes = ["invalid_signature"]
    assert stage._takes(signed)
