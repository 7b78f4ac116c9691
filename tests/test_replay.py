"""``fsguard replay``: stored calls decided again under a changed policy, differences counted per
stage and rule, nothing written. Histories are made through the real socket by the simulator, or
seeded in bulk; on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import random
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import gevent
import pytest
from sqlalchemy import func, insert, select, update

from fsguard.ops import cli, replay
from fsguard.config import Settings
from fsguard.store.models import CallRecord, StageVerdict
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard.call.inputs import ReplayedInputs
from fsguard.ops.replay import ProgressBar, ReplayCall, ReplaySession
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH


# ----------------------------------------------------------- test stages


class OddRejects(Stage):
    """The "new rule": rejects callers whose number ends in an odd digit."""

    name = "oddrejects"

    def run(self, call):
        if call.ani and int(call.ani[-1]) % 2:
            return Verdict.reject(f"{call.ani} ends in an odd digit", "test.odd", last_digit=call.ani[-1])
        return Verdict.carry_on()


class FloodRejects(Stage):
    name = "floodtest"

    def run(self, call):
        return Verdict.reject("flood 31/day (limit 30)", "flood.day")


class Verstat(Stage):
    """Gets the channel fact it decides on through the input port (recorded live, given back in replay)."""

    name = "verstat"

    def run(self, call):
        verstat = call.inputs.fact("sip_verstat", lambda: call.var("sip_verstat"))
        if self.settings.policy.unverified_action == "reject" and verstat == "TN-Validation-Failed":
            return Verdict.reject("STIR/SHAKEN verification failed", "stir.failed", verstat=verstat)
        return Verdict.carry_on(f"verstat {verstat or 'none'}", "stir.seen")


class Writer(Stage):
    """Writes to the database during the decision, and reads its own write back."""

    name = "writer"

    def run(self, call):
        ghost = f"ghost-{call.uuid}"
        with self.db.begin() as s:
            s.add(CallRecord(uuid=ghost, node="replay", direction="inbound", ani_raw="", ani=None,
                             started_at=datetime.now(timezone.utc), outcome="ghost", inputs={}))
        with self.db.begin() as s:
            seen = s.get(CallRecord, ghost) is not None
            live = s.scalar(select(func.count()).select_from(CallRecord).where(CallRecord.outcome != "ghost"))
        return Verdict.carry_on("wrote", "wrote", saw_own_write=seen, live_calls=live)


class Breaks(Stage):
    """Writes, then fails inside its transaction."""

    name = "breaks"

    def run(self, call):
        with self.db.begin() as s:
            s.add(CallRecord(uuid=f"broken-{call.uuid}", node="replay", direction="inbound", ani_raw="", ani=None,
                             started_at=datetime.now(timezone.utc), outcome="ghost", inputs={}))
            s.flush()
            raise RuntimeError("a bug after a write")


class Prompt(Stage):
    name = "prompt"

    def run(self, call):
        call.pre_answer()
        call.play("ivr/welcome.wav")
        return Verdict.carry_on()


@pytest.fixture(autouse=True)
def test_stages(monkeypatch):
    for cls in (OddRejects, FloodRejects, Verstat, Writer, Breaks, Prompt):
        monkeypatch.setitem(STAGES, cls.name, f"{__name__}:{cls.__name__}")


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)


def write_config(path: Path, **policy: object) -> Path:
    lines = ["[policy]"]
    for key, value in policy.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def live_calls(start_guard, callers: list[Caller]) -> list[str]:
    guard = start_guard()
    fs = FakeFreeSWITCH(guard.address, time_scale=0.005)
    uuids = [fs.call(c).uuid for c in callers]
    with gevent.Timeout(5):
        while guard.app.deciding or guard.app.held or guard.server.active:
            gevent.sleep(0.01)
    guard.server.stop(drain=0.1)
    return uuids


def seed_history(db, n: int, *, reject_every: int = 20, days: float = 7.0, seed: int = 7) -> list[str]:
    """n stored calls over the last ``days``: every ``reject_every``-th rejected by the old policy's
    "rejects" stage (code test.reject), the others routed. Returns the rejected calls' uuids."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    step = timedelta(days=days) / n
    calls, verdicts, rejected = [], [], []
    for i in range(n):
        uuid = str(uuidlib.UUID(int=rng.getrandbits(128)))
        number = f"+1202555{rng.randrange(10000):04d}"
        rejects = i % reject_every == 0
        calls.append({"uuid": uuid, "node": f"node-{i % 3}", "direction": "inbound", "ani_raw": number[1:],
                      "ani": number, "caller_name": "", "dnis": "5000", "context": "public",
                      "started_at": now - timedelta(days=days) + step * i, "decision_ms": 0.5,
                      "action": "hangup CALL_REJECTED" if rejects else "transfer default XML queues",
                      "outcome": "rejected" if rejects else "routed", "risk": 0,
                      "inputs": {"ani": number, "presented": number[1:], "network": number[1:], "caller_name": "",
                                 "dnis": "5000", "direction": "inbound", "context": "public", "privacy": False,
                                 "anonymous": False, "ani_valid": True},
                      "answered": not rejects, "erased": False})
        if rejects:
            rejected.append(uuid)
            verdicts.append({"call_uuid": uuid, "seq": 0, "stage": "rejects", "outcome": "reject",
                             "code": "test.reject", "reason": "old rule", "enforced": True, "details": {},
                             "elapsed_ms": 0.1})
        else:
            verdicts.append({"call_uuid": uuid, "seq": 0, "stage": "routing", "outcome": "route", "code": "default",
                             "reason": "default target", "enforced": True, "details": {}, "elapsed_ms": 0.1})
    with db.begin() as s:
        for start in range(0, n, 2000):
            s.execute(insert(CallRecord), calls[start:start + 2000])
        for start in range(0, len(verdicts), 2000):
            s.execute(insert(StageVerdict), verdicts[start:start + 2000])
    return rejected


# ------------------------------------------------------------------ tests


def test_a_new_rule_is_counted_per_stage_and_rule_with_examples(settings, start_guard, db, cli_env, tmp_path,
                                                                  capsys):
    settings.policy.stages = ["routing"]
    callers = [Caller(ani=f"1202555010{d}") for d in range(6)]
    uuids = live_calls(start_guard, callers)
    odd = {u for u, c in zip(uuids, callers) if int(c.ani[-1]) % 2}
    new = write_config(tmp_path / "new.toml", stages=["oddrejects", "routing"])

    assert cli.main(["replay", "--since", "1h", "--config", str(new), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calls"] == 6 and report["changed"] == 3
    assert report["stages"] == ["oddrejects", "routing"]
    assert report["policy"] == str(new)
    (final,) = report["final"]
    assert (final["was"], final["now"], final["calls"]) == ("routed", "rejected", 3)
    assert set(final["examples"]) == odd
    diffs = {(d["stage"], d["rule"], d["was"], d["now"]): d for d in report["differences"]}
    assert set(diffs) == {("oddrejects", "test.odd", "not run", "reject test.odd"),
                          ("routing", "default", "route default", "not run")}
    assert all(d["calls"] == 3 and set(d["examples"]) == odd for d in diffs.values())
    assert report["stages_compared"]["oddrejects"] == {"compared": 6, "changed": 3}

    assert cli.main(["replay", "--since", "1h", "--config", str(new)]) == 0
    text = capsys.readouterr().out
    assert "Replayed 6 calls" in text and "Calls decided differently: 3 (50.0%)" in text
    assert "routed -> rejected: 3" in text
    assert "oddrejects  test.odd  not run" in text


def test_replaying_the_same_policy_finds_no_difference(settings, start_guard, db, tmp_path, capsys):
    settings.policy.stages = ["oddrejects", "routing"]
    live_calls(start_guard, [Caller(ani=f"1202555010{d}") for d in range(4)])
    current = write_config(tmp_path / "fsguard.toml", stages=["oddrejects", "routing"])
    current.write_text(current.read_text() + f'[database]\nurl = "{settings.database.url}"\n')
    # no --config for replay: the running configuration's policy is replayed
    assert cli.main(["--config", str(current), "replay", "--since", "1h", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["calls"], report["changed"], report["differences"], report["final"]) == (4, 0, [], [])


def test_counts_on_a_seeded_history(settings, db):
    rejected = seed_history(db, 1200, reject_every=20)
    settings.policy.stages = ["routing"]          # the old "rejects" rule is gone
    report = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(days=8))
    assert report.calls == 1200 and report.changed == len(rejected) == 60
    diffs = {(d.stage, d.rule, d.was, d.now): d for d in report.differences.values()}
    gone = diffs[("rejects", "test.reject", "reject test.reject", "not run")]
    assert gone.calls == 60 and len(gone.examples) == 3 and set(gone.examples) <= set(rejected)
    assert diffs[("routing", "default", "not run", "route default")].calls == 60
    final = {(d.was, d.now): d.calls for d in report.final.values()}
    assert final == {("rejected", "routed"): 60}

    # a window and a limit read only part of the history (oldest first)
    half = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(days=3.5))
    assert 595 <= half.calls <= 605
    first = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(days=8), limit=100)
    assert first.calls == 100 and first.changed == 5

    # erased calls are skipped (their numbers are gone)
    with db.begin() as s:
        s.execute(update(CallRecord).where(CallRecord.uuid.in_(rejected[:10])).values(erased=True, ani=None))
    again = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(days=8), limit=600)
    assert (again.calls + again.erased, again.erased, again.changed) == (600, 10, 20)


def test_replay_writes_nothing_but_each_call_sees_its_own_writes(settings, db):
    seed_history(db, 50)
    settings.policy.stages = ["writer", "routing"]
    report = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(days=8))
    assert report.calls == 50
    diff = report.differences[("writer", "wrote", "not run", "continue wrote")]
    assert diff.calls == 50
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(CallRecord).where(CallRecord.outcome == "ghost")) == 0
        assert s.scalar(select(func.count()).select_from(CallRecord)) == 50


def test_stage_writes_are_rolled_back_per_call_and_seen_within_it(settings, db):
    """Inside one replayed call a stage reads what it wrote; the next call does not see it."""
    seed_history(db, 3)
    settings.policy.stages = ["writer", "routing"]
    replay_db = replay.ReplayDatabase(db.settings)
    try:
        app = replay.ReplayApp(settings, replay_db)
        seen = []
        for record in [{"uuid": f"u{i}", "inputs": {}, "ani": None} for i in range(3)]:
            call = ReplayCall(record, settings)
            decision = app.pipeline.decide(call)
            replay_db.undo()
            seen.append(decision.verdicts[0].details)
    finally:
        replay_db.dispose()
    assert all(d["saw_own_write"] for d in seen)
    assert [d["live_calls"] for d in seen] == [3, 3, 3]     # never the ghosts of earlier calls


def test_a_stage_that_fails_is_counted_with_its_error_and_leaves_nothing(settings, db):
    seed_history(db, 20, reject_every=1000)
    settings.policy.stages = ["breaks", "writer", "routing"]
    report = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(days=8))
    assert report.calls == 20
    diff = report.differences[("breaks", "error.internal", "not run", "error error.internal")]
    assert diff.calls == 20 and diff.note == "RuntimeError: a bug after a write"
    final = {(d.was, d.now): d.calls for d in report.final.values()}
    assert final == {("routed", "failed_open"): 19, ("rejected", "failed_open"): 1}     # the first was rejected
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(CallRecord).where(CallRecord.outcome == "ghost")) == 0


def test_a_shadow_rollout_replayed_with_the_rule_enforced(settings, start_guard, db, cli_env, tmp_path, capsys):
    settings.policy.stages = ["floodtest", "routing"]
    settings.policy.enforce_stages = {"floodtest": False}
    uuids = live_calls(start_guard, [Caller(), Caller()])
    new = write_config(tmp_path / "enforce.toml", stages=["floodtest", "routing"])
    assert cli.main(["replay", "--since", "1h", "--config", str(new), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    diffs = {(d["stage"], d["was"], d["now"]): d["calls"] for d in report["differences"]}
    assert diffs == {("floodtest", "would reject flood.day", "reject flood.day"): 2,
                     ("routing", "route default", "not run"): 2}
    assert [(f["was"], f["now"], f["calls"]) for f in report["final"]] == [("routed", "rejected", 2)]
    assert set(report["final"][0]["examples"]) == set(uuids)


def test_channel_facts_a_stage_stored_come_back_in_replay(settings, start_guard, db):
    settings.policy.stages = ["verstat", "routing"]
    callers = [Caller(variables={"sip_verstat": v}) for v in
               ("TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation")]
    uuids = live_calls(start_guard, callers)
    with db.begin() as s:
        stored = s.get(CallRecord, uuids[1]).inputs
    assert stored["sip_verstat"] == "TN-Validation-Failed"

    settings.policy.unverified_action = "reject"           # the verstat stage's "new rule"
    report = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(hours=1))
    assert report.calls == 3 and report.changed == 1
    (diff,) = [d for d in report.differences.values() if d.stage == "verstat"]
    assert (diff.was, diff.now, diff.examples) == ("continue stir.seen", "reject stir.failed", [uuids[1]])


def test_a_caller_who_hung_up_is_compared_up_to_that_stage(settings, start_guard, db):
    settings.policy.stages = ["prompt", "routing"]
    callers = [Caller(ani="12025550101", hangup_after=1.0, playback_durations={"ivr/welcome.wav": 30.0}),
               Caller(ani="12025550102", hangup_after=1.0, playback_durations={"ivr/welcome.wav": 30.0})]
    odd, even = live_calls(start_guard, callers)
    with db.begin() as s:
        assert s.get(CallRecord, odd).outcome == "abandoned"

    settings.policy.stages = ["oddrejects", "prompt", "routing"]
    report = replay.replay(db, settings, since=datetime.now(timezone.utc) - timedelta(hours=1))
    assert report.calls == 2 and report.abandoned == 2
    # the odd caller is now rejected before the prompt: that is a difference
    final = {(d.was, d.now): d.examples for d in report.final.values()}
    assert final == {("abandoned", "rejected"): [odd]}
    # the even caller reaches the prompt again, where they hung up: nothing after it is compared
    assert report.changed == 1
    assert all(even not in d.examples for d in report.differences.values())


def test_replay_call_is_rebuilt_from_the_record_and_does_nothing():
    settings = Settings()
    record = {"uuid": "abc-123456", "ani": "+442079460000", "ani_raw": "02079460000", "verified": True,
              "started_at": datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc),
              "inputs": {"ani": "+442079460000", "presented": "anonymous", "network": "+442079460000",
                         "caller_name": "Eve", "dnis": "5000", "direction": "inbound", "context": "public",
                         "privacy": True, "anonymous": False, "ani_valid": True,
                         "sip_verstat": "TN-Validation-Passed", "sip_h_Identity": "eyJ..."}}
    call = ReplayCall(record, settings)
    assert isinstance(call.session, ReplaySession) and isinstance(call.inputs, ReplayedInputs)
    assert (call.uuid, call.ani, call.presented_number, call.caller_name) == (
        "abc-123456", "+442079460000", "anonymous", "Eve")
    assert (call.dnis, call.direction, call.context, call.privacy) == ("5000", "inbound", "public", True)
    # the stages' facts come back through the port, not as forged channel variables
    assert call.variables == {} and call.channel == {}
    assert call.inputs.fact("sip_verstat", lambda: "asked again") == "TN-Validation-Passed"
    assert call.inputs.fact("verified", lambda: "asked again", record=False) is True
    assert call.inputs.fact("crm_customer", lambda: "asked again", offline=None) is None
    assert call.inputs.now() == record["started_at"]      # business hours are read when the call was taken
    assert call.describe()["sip_verstat"] == "TN-Validation-Passed"
    call.pre_answer()
    call.answer()
    assert call.play("ivr/welcome.wav").ok
    assert call.collect(max_digits=2).digits == ""
    call.export(fsguard_risk="3")
    call.route("transfer 5000 XML default")
    assert str(call.final_action) == "transfer 5000 XML default"


def test_cli_errors_are_one_clear_line(settings, db, cli_env, tmp_path, capsys):
    assert cli.main(["replay", "--since", "1h"]) == 1
    assert "no stored calls in that period" in capsys.readouterr().err
    assert cli.main(["replay", "--since", "yesterday"]) == 1
    assert "--since: expected a duration" in capsys.readouterr().err
    assert cli.main(["replay", "--since", "1d", "--until", "2d"]) == 1
    assert "--until must be after --since" in capsys.readouterr().err
    seed_history(db, 5)
    bad = write_config(tmp_path / "bad.toml", stages=["nosuchstage"])
    assert cli.main(["replay", "--since", "8d", "--config", str(bad)]) == 1
    assert "unknown stage 'nosuchstage'" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[policy]\non_error = 'maybe'\n")
    assert cli.main(["replay", "--config", str(broken)]) == 2
    assert "policy.on_error" in capsys.readouterr().err


def test_progress_bar():
    out = io.StringIO()
    bar = ProgressBar(1000, stream=out)
    bar(1000)
    assert "100%" in out.getvalue() and "1,000/1,000 calls" in out.getvalue()
    bar.close()
