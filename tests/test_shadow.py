"""Shadow mode end to end: a stage that is not enforced decides and records what it would have
done ("would reject: ..."), and the call is routed as if it had passed."""

from __future__ import annotations

import gevent
import pytest
from prometheus_client import generate_latest

from fsguard.ops import cli
from fsguard.store import records
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH


class FloodRejects(Stage):
    """Rejects everyone, like a flood rule would: the stage a new rule is rolled out as."""

    name = "floodtest"

    def run(self, call):
        return Verdict.reject("flood 31/day (limit 30)", "flood.day", action="hangup CALL_REJECTED",
                              calls_today=31, limit=30)


class Suspicious(Stage):
    """Asks for a challenge; with no verification stage and unverified_action=reject, that rejects."""

    name = "suspicious"

    def run(self, call):
        return Verdict.challenge("no STIR/SHAKEN attestation", "stir.none", attestation=None)


@pytest.fixture(autouse=True)
def test_stages(monkeypatch):
    monkeypatch.setitem(STAGES, "floodtest", f"{__name__}:FloodRejects")
    monkeypatch.setitem(STAGES, "suspicious", f"{__name__}:Suspicious")


@pytest.fixture
def run_call(start_guard, db):
    def run(caller: Caller | None = None):
        guard = start_guard()
        fs = FakeFreeSWITCH(guard.address, time_scale=0.005)
        result = fs.call(caller or Caller())
        with gevent.Timeout(5):
            while guard.app.deciding or guard.app.held or guard.server.active:
                gevent.sleep(0.01)
        return result, records.find_call(db, result.uuid), guard
    return run


def test_enforced_rule_rejects(settings, run_call):
    settings.policy.stages = ["floodtest", "routing"]
    result, call, _ = run_call()
    assert result.outcome == "hungup" and result.hangup_cause == "CALL_REJECTED"
    assert call.outcome == "rejected" and call.verdicts[0].enforced is True


def test_shadow_mode_records_the_would_be_rejection_and_routes_the_call(settings, run_call, cli_env, capsys):
    settings.policy.stages = ["floodtest", "routing"]
    settings.policy.enforce = False
    result, call, guard = run_call()

    assert result.outcome == "routed" and result.route == "transfer default XML queues"
    assert not result.violations
    assert call.outcome == "routed" and call.action == "transfer default XML queues"
    shadow, routing = call.verdicts
    assert (shadow.stage, shadow.outcome, shadow.code, shadow.enforced) == ("floodtest", "reject", "flood.day", False)
    assert shadow.reason == "would reject: flood 31/day (limit 30)"
    assert shadow.details == {"calls_today": 31, "limit": 30}
    assert (routing.stage, routing.outcome, routing.enforced) == ("routing", "route", True)

    text = generate_latest(guard.app.metrics.registry).decode()
    assert 'fsguard_verdicts_total{enforced="false",outcome="reject",stage="floodtest"} 1.0' in text
    assert 'fsguard_rule_verdicts_total{code="flood.day",enforced="false",outcome="reject",stage="floodtest"} 1.0' in text

    assert cli.main(["calls", "show", result.uuid]) == 0
    out = capsys.readouterr().out
    assert "floodtest: reject flood.day [shadow mode: not enforced]" in out
    assert "would reject: flood 31/day (limit 30)" in out
    assert "calls_today: 31" in out
    assert "FreeSWITCH was told: transfer default XML queues" in out


def test_shadow_mode_for_one_stage_only(settings, run_call):
    settings.policy.stages = ["suspicious", "floodtest", "routing"]
    settings.policy.unverified_action = "reject"
    settings.policy.enforce_stages = {"floodtest": False}
    result, call, _ = run_call()
    # the suspicious stage is enforced: its challenge, with no verification stage, rejects
    assert result.outcome == "hungup" and result.hangup_cause == "CALL_REJECTED"
    assert [(v.stage, v.outcome, v.enforced) for v in call.verdicts] == [
        ("suspicious", "challenge", True), ("pipeline", "reject", True)]


def test_a_shadowed_challenge_does_not_challenge(settings, run_call):
    settings.policy.stages = ["suspicious", "routing"]
    settings.policy.unverified_action = "reject"
    settings.policy.enforce_stages = {"suspicious": False}
    result, call, _ = run_call()
    assert result.outcome == "routed" and not result.early_media and not result.heard
    assert [(v.stage, v.outcome, v.enforced, v.reason) for v in call.verdicts][0] == (
        "suspicious", "challenge", False, "would challenge: no STIR/SHAKEN attestation")
    assert call.outcome == "routed"


def test_a_stage_enforced_while_the_rest_is_in_shadow(settings, run_call):
    settings.policy.stages = ["suspicious", "floodtest", "routing"]
    settings.policy.enforce = False
    settings.policy.enforce_stages = {"floodtest": True}
    result, call, _ = run_call()
    assert result.outcome == "hungup" and result.hangup_cause == "CALL_REJECTED"
    assert [(v.stage, v.enforced) for v in call.verdicts] == [("suspicious", False), ("floodtest", True)]
    assert call.verdicts[0].reason.startswith("would challenge: ")


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)


# ------------------------------------------------------- the real screening stage


def block(db, number: str, level: int, reason: str) -> None:
    from fsguard.rules import lists

    with db.begin() as session:
        lists.add(session, lists.make_spec(number, kind="block", level=level, reason=reason, source="test"))


def test_screening_in_shadow_mode_would_reject_a_hard_blocked_caller(settings, run_call, db):
    pytest.importorskip("fsguard.stages.screening")
    block(db, "+12025550143", 8, "abusive caller")
    settings.policy.stages = ["screening", "routing"]
    settings.policy.enforce_stages = {"screening": False}
    result, call, guard = run_call(Caller(ani="12025550143"))
    # routed as if it had passed: not to the fraud queue its risk points would have chosen
    assert result.outcome == "routed" and result.route == "transfer default XML queues"
    assert not result.early_media
    screening = call.verdicts[0]
    assert screening.details["risk_not_applied"] > 0 and call.risk == 0
    assert (screening.stage, screening.outcome, screening.code, screening.enforced) == (
        "screening", "reject", "blocklist.hard", False)
    assert screening.reason.startswith("would reject: blocked at level 8 (hard)")
    assert "abusive caller" in screening.reason
    assert call.outcome == "routed"

    settings.policy.enforce_stages = {}
    enforced, call, _ = run_call(Caller(ani="12025550143"))
    assert enforced.outcome == "hungup" and not enforced.answered
    assert call.verdicts[0].enforced is True and call.outcome == "rejected"


def test_screening_flood_rule_in_shadow_mode_records_but_routes(settings, run_call, db):
    pytest.importorskip("fsguard.stages.screening")
    settings.policy.stages = ["screening", "routing"]
    settings.policy.enforce = False
    settings.screening.flood_hour = 2
    outcomes = []
    for _ in range(3):
        result, call, _ = run_call(Caller(ani="12025550177"))
        first = call.verdicts[0]
        outcomes.append((result.outcome, result.route, first.outcome, first.enforced, first.code))
    assert [o[:2] for o in outcomes] == [("routed", "transfer default XML queues")] * 3
    assert outcomes[2][2:] == ("challenge", False, "flood.hour")      # level 3: soft, must verify
    assert call.verdicts[0].reason.startswith("would challenge: 3 calls in the last hour (more than 2)")


def test_screening_in_shadow_mode_blocks_nobody_for_later(settings, run_call, db):
    pytest.importorskip("fsguard.stages.screening")
    from fsguard.rules import lists

    settings.policy.stages = ["screening", "routing"]
    settings.policy.enforce_stages = {"screening": False}
    settings.screening.flood_hour = 1
    for _ in range(2):
        run_call(Caller(ani="12025550178"))
    with db.begin() as session:
        assert lists.lookup(session, "+12025550178", "*") is None
