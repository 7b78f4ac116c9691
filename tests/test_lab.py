"""The local lab (fsguard/ops/lab.py, ``fsguard lab``, ``make lab``) and ``fsguard simulate``.

The lab's scripted morning is run end to end, on SQLite and PostgreSQL: fsguard in-process on an
ephemeral port, the simulator playing FreeSWITCH through real TCP, the demo policy read from TOML.
Every call must be decided as the policy says (the lab checks each against its Expect and these
tests assert that), and the state the morning leaves behind (automatic blocks, the freeze, the
recordings) must be what the decisions imply.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fsguard.ops import cli, lab
from fsguard.rules import freeze, lists
from fsguard.config import DatabaseSettings
from fsguard.store.db import Database
from fsguard.store.models.recordings import Recording
from fsguard_testing.fakeswitch import Caller


def calls_of(report: lab.LabReport, scenario: str) -> list[lab.LabCall]:
    found = [c for c in report.calls if c.scenario.name == scenario]
    assert found, f"no scenario {scenario!r}"
    return found


def codes(call: lab.LabCall) -> list[str]:
    assert call.record is not None
    return [v["code"] for v in call.record["verdicts"]]


def unanswered_refusal(call: lab.LabCall, cause: str = "CALL_REJECTED") -> None:
    r = call.result
    assert r.outcome == "hungup" and r.hangup_by == "target" and r.hangup_cause == cause, r
    assert not r.answered and r.billsec == 0


def hung_up_unbilled(call: lab.LabCall, guard: float) -> None:
    r = call.result
    assert r.outcome == "hungup" and r.hangup_cause == "CALL_REJECTED"
    assert r.answered and r.early_media and 0 < r.billsec < guard, f"billed {r.billsec:.2f} s"


def test_the_morning(db_url: str, tmp_path: Path) -> None:
    """One run of the lab per database (it takes a few seconds); each part below checks one story."""
    morning = lab.run(tmp_path / "lab", database_url=db_url)
    every_call_is_decided_as_the_policy_says(morning)
    the_scenarios_one_by_one(morning)
    a_flood_is_blocked_then_escalated_to_a_hard_block(morning, db_url)
    agents_redialling_freeze_the_number(morning, db_url)
    the_table_tells_each_caller_what_happened_and_why(morning)


def every_call_is_decided_as_the_policy_says(morning: lab.LabReport) -> None:
    failures = {f"{c.n}. {c.scenario.name} {c.step}: {c.expect.says}": c.problems for c in morning.failures}
    assert morning.ok, json.dumps(failures, indent=2)
    assert len(morning.calls) == sum(len(s.steps) for s in lab.morning())
    assert all(not c.result.violations for c in morning.calls)
    # every call was written down, and its record says what FreeSWITCH was told
    for call in morning.calls:
        assert call.record is not None and call.record["uuid"] == call.result.uuid
        assert call.record["ended_at"] is not None, f"call {call.n}: end not written"
        if call.result.outcome == "routed":
            assert call.record["action"] == call.result.route
        else:
            assert call.record["action"] == f"hangup {call.result.hangup_cause}"


def the_scenarios_one_by_one(morning: lab.LabReport) -> None:
    guard = morning.guard_interval
    (ordinary,) = calls_of(morning, "ordinary caller")
    assert ordinary.result.route == "transfer default XML queues"

    (customer,) = calls_of(morning, "ordinary customer")
    assert customer.result.exported.get("fsguard_customer_id") == "A-1002"
    assert customer.result.exported.get("fsguard_vip") == "false"

    (vip,) = calls_of(morning, "VIP")
    assert vip.result.route == "callcenter vip@default"
    assert vip.result.exported.get("fsguard_vip") == "true"
    assert vip.result.variables.get("cc_base_score") == "600"

    (passes,) = calls_of(morning, "soft-blocked, verifies")
    assert passes.result.route == "transfer default XML queues"
    assert codes(passes)[:2] == ["blocklist.soft", "verification.passed"]
    assert passes.record and passes.record["verified"] is True

    (fails,) = calls_of(morning, "soft-blocked, fails")
    hung_up_unbilled(fails, guard)
    assert codes(fails) == ["blocklist.soft", "verification.failed"]

    (withheld,) = calls_of(morning, "withheld number")
    assert withheld.record and withheld.record["ani"] == lab.WITHHELD
    assert withheld.result.route == "transfer default XML queues"
    assert not any(lab.WITHHELD.lstrip("+") in h for h in withheld.result.heard)

    (nobody,) = calls_of(morning, "no number at all")
    assert nobody.record and nobody.record["ani"] is None
    assert codes(nobody)[:2] == ["anonymous", "verification.passed"]

    (spoofed,) = calls_of(morning, "spoofed DNO")
    unanswered_refusal(spoofed)
    assert codes(spoofed) == ["dno.spoofed"]

    (stir,) = calls_of(morning, "STIR/SHAKEN failed")
    assert stir.result.route == "callcenter fraud@default"
    assert stir.record and stir.record["risk"] >= 50 and stir.record["verified"] is True


def a_flood_is_blocked_then_escalated_to_a_hard_block(morning: lab.LabReport, db_url: str) -> None:
    guard = morning.guard_interval
    flood = calls_of(morning, "flood")
    assert [c.result.outcome for c in flood] == ["routed"] * 5 + ["hungup"] * 4
    sixth, seventh, eighth, ninth = flood[5:]
    assert codes(sixth)[0] == "flood.hour"
    for call in (sixth, seventh, eighth):
        hung_up_unbilled(call, guard)
    verdict = [v for v in eighth.record["verdicts"] if v["stage"] == "verification"][0]  # type: ignore[index]
    assert verdict["details"].get("escalated") is True
    unanswered_refusal(ninth)
    assert codes(ninth) == ["blocklist.hard"]
    db = Database(DatabaseSettings(url=db_url))
    try:
        with db.begin() as s:
            entry = lists.lookup(s, lab.FLOODER, lab.OUR_LINE)
            assert entry is not None and entry.kind == "block" and entry.level == 6 and entry.source == "auto"
    finally:
        db.dispose()


def agents_redialling_freeze_the_number(morning: lab.LabReport, db_url: str) -> None:
    agents = calls_of(morning, "agents re-dialling")
    target = f"bridge sofia/gateway/carrier/{lab.REDIALLED}"
    assert [c.result.route for c in agents[:3]] == [target] * 3
    unanswered_refusal(agents[3], "OUTGOING_CALL_BARRED")
    assert not any(app == "bridge" for app, _ in agents[3].result.apps)
    db = Database(DatabaseSettings(url=db_url))
    try:
        with db.begin() as s:
            frozen = freeze.active_freeze(s, lab.REDIALLED)
            assert frozen is not None and frozen.source == "auto"
            # every call recorded and bridged to someone (an agent, a called party that answered)
            # has its complete file; one never bridged has none (recording.start = "bridge")
            statuses = Counter(r.status for r in s.scalars(select(Recording)))
    finally:
        db.dispose()
    recorded = [c for c in morning.calls if "recording.all" in codes(c)]
    bridged = [c for c in recorded if c.result.variables.get("bridge_uepoch", "0") != "0"]
    assert bridged and len(bridged) < len(recorded)   # the barred re-dial never reached anyone
    assert statuses == {"complete": len(bridged)}


def the_table_tells_each_caller_what_happened_and_why(morning: lab.LabReport) -> None:
    text = lab.table(morning, width=140)
    for scenario in lab.morning():
        assert scenario.name in text
    assert "do-not-originate" in text                       # the spoofed caller's reason, from the record
    assert "rule 'vip'" in text                             # the routing verdict's reason
    assert "not billed" in text
    assert "NOT AS EXPECTED" not in text
    assert text.rstrip().endswith(f"{len(morning.calls)} of {len(morning.calls)} calls decided as the policy says")


def test_a_call_decided_otherwise_than_expected_fails_the_lab(db_url: str, tmp_path: Path) -> None:
    wrong = lab.Scenario("VIP, wrongly expected", lab.VIP, "the lab must notice", [
        lab.Step(Caller(ani=lab.VIP.lstrip("+"), dnis=lab.DIALLED, talk_time=2.0, variables=dict(lab.ATTESTED)),
                 lab.Expect("the default queue", "routed", route="transfer default XML queues", codes=("default",)))])
    report = lab.run(tmp_path / "lab", database_url=db_url, scenarios=[wrong])
    assert not report.ok
    (call,) = report.failures
    assert any("callcenter vip@default" in p for p in call.problems)
    assert any("default" in p and "verdict code" in p for p in call.problems)
    assert "NOT AS EXPECTED" in lab.table(report)


def test_the_demo_policy_is_valid_toml_that_fsguard_reads(tmp_path: Path) -> None:
    settings = lab.demo_settings(tmp_path)
    assert settings.policy.stages == ["screening", "verification", "recording", "outbound", "routing"]
    assert settings.database.url == f"sqlite:///{tmp_path.resolve().as_posix()}/fsguard.db"
    reread = cli.load_settings(tmp_path / "fsguard.toml", env={})
    assert reread.screening.flood_hour == 5 and reread.outbound.threshold == 3
    assert reread.esl.listen == "127.0.0.1:8084"    # what `fsguard -c DIR/fsguard.toml serve` would use


def test_the_environment_cannot_point_the_lab_at_another_database(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FSGUARD_DATABASE_URL", "postgresql://production.example/calls")
    assert lab.demo_settings(tmp_path).database.url.startswith("sqlite:///")


# ------------------------------------------------------------------ the command


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fsguard_lab_keep_json(tmp_path: Path, capsys: Any) -> None:
    keep = tmp_path / "kept"
    code, out, err = run_cli(capsys, "lab", "--keep", str(keep), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["kept"], err
    assert len(data["calls"]) == sum(len(s.steps) for s in lab.morning())
    assert all(c["as_expected"] and c["record"]["uuid"] == c["simulator"]["uuid"] for c in data["calls"])
    assert (keep / "fsguard.toml").exists() and (keep / "fsguard.db").exists()
    assert (keep / "fsguard.log").stat().st_size > 0
    # the kept lab is an ordinary fsguard configuration: the call commands work on it
    uuid = data["calls"][0]["record"]["uuid"]
    code, out, err = run_cli(capsys, "-c", str(keep / "fsguard.toml"), "calls", "show", uuid)
    assert code == 0 and uuid in out and "routing: route" in out, err
    # a second run into the same directory would mix two mornings: refused in one line
    code, out, err = run_cli(capsys, "lab", "--keep", str(keep))
    assert code == 1 and "fsguard.db exists" in err and "Traceback" not in err


def test_fsguard_lab_table_and_cleanup(capsys: Any, monkeypatch: Any, tmp_path: Path) -> None:
    made: list[Path] = []
    real = lab.throwaway_directory

    def tracked() -> Path:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(lab, "throwaway_directory", tracked)
    short = [s for s in lab.morning() if s.name in ("ordinary caller", "VIP", "spoofed DNO")]
    monkeypatch.setattr(lab, "morning", lambda: short)
    code, out, err = run_cli(capsys, "lab", "--explain")
    assert code == 0, out + err
    assert "3 of 3 calls decided as the policy says" in out
    assert "Outcome: rejected" in out          # --explain: the calls show story of each call
    assert made and not made[0].exists()      # the throwaway directory is gone


def test_fsguard_lab_bad_time_scale(capsys: Any) -> None:
    code, _, err = run_cli(capsys, "lab", "--time-scale", "0")
    assert code == 1 and "--time-scale" in err


# ------------------------------------------------------------------ fsguard simulate


@pytest.fixture
def line(settings: Any, start_guard: Any) -> str:
    settings.policy.stages = ["screening", "verification", "outbound", "routing"]
    settings.screening.nuisance_calls = 0
    guard = start_guard(settings)
    return f"{guard.address[0]}:{guard.address[1]}"


def simulate(capsys: Any, target: str, *argv: str) -> tuple[int, Any]:
    code, out, err = run_cli(capsys, "simulate", "--target", target, "--time-scale", "0.02", *argv, "--json")
    assert "Traceback" not in err, err
    return code, json.loads(out) if out.strip() else None


def test_simulate_call(line: str, capsys: Any, db: Database) -> None:
    code, data = simulate(capsys, line, "call", "--ani", "12125550199", "--dnis", "18005550100")
    assert code == 0 and data["outcome"] == "routed" and data["route"] == "transfer default XML queues"

    with db.begin() as s:
        lists.add(s, lists.make_spec("+12125550198", kind="block", level=3))
    code, data = simulate(capsys, line, "call", "--ani", "12125550198", "--digits", "auto")
    assert data["outcome"] == "routed" and data["early_media"]          # heard the code, keyed it
    code, data = simulate(capsys, line, "call", "--ani", "12125550198", "--digits", "none")
    assert data["outcome"] == "hungup" and data["hangup_cause"] == "CALL_REJECTED"

    code, data = simulate(capsys, line, "call", "--ani", "12125550197", "--privacy")
    assert data["outcome"] == "routed"

    code, data = simulate(capsys, line, "call", "--ani", "1001", "--dnis", "13055550100", "--outbound")
    assert data["route"] == "bridge sofia/gateway/carrier/+13055550100"


def test_simulate_call_errors(capsys: Any, line: str) -> None:
    code, _, err = run_cli(capsys, "simulate", "--target", line, "call", "--digits", "12x")
    assert code == 1 and "--digits" in err
    code, _, err = run_cli(capsys, "simulate", "--target", "127.0.0.1:1", "call")
    assert code == 1 and "is 'fsguard serve' running?" in err


def test_simulate_traffic(line: str, capsys: Any) -> None:
    code, data = simulate(capsys, line, "traffic", "--rate", "40", "--duration", "1", "--talk", "1")
    assert code == 0, data
    assert data["calls"] == 40 and data["failed_to_run"] == 0 and data["violations"] == 0
    assert sum(data["outcomes"].values()) == 40 and "stranded" not in data["outcomes"]
    assert data["decision_ms"]["p50"] is not None
