"""``fsguard erase NUMBER`` end to end: real calls through the simulator leave recordings and call
records; erasure removes what it must, anonymises what statistics need, keeps what is under legal
hold, and says so. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import func, select

from fsguard.ops import cli
from fsguard.rules import erasure, recordings
from fsguard.store.models import CallRecord
from fsguard.store.models.recordings import Recording
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard_testing.fakeswitch import Caller
from test_recording import RecordingFreeSWITCH, settle

ALICE = "+15551230001"


class MentionsTheCaller(Stage):
    """A stage that writes the caller's number into its verdict and the call's inputs, as
    screening does ("+1555... called 12 times in an hour")."""

    name = "mentions"

    def run(self, call: Any) -> Verdict:
        call.facts.setdefault("inputs", {})["crm"] = {"lookup": f"no customer for {call.ani}", "name": call.caller_name}
        return Verdict.carry_on(f"{call.ani} called 1 time in the last hour", "test.mentions",
                                number=call.ani, seen_as=call.presented_number)


@pytest.fixture
def calls(settings: Any, start_guard: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, db: Any) -> Any:
    """fsguard with recording, a stage that names the caller, and routing; returns a call function."""
    monkeypatch.setitem(STAGES, "mentions", f"{__name__}:MentionsTheCaller")
    settings.policy.stages = ["mentions", "recording", "routing"]
    settings.recording.consent = False
    guard = start_guard()
    fs = RecordingFreeSWITCH(guard.address, time_scale=0.005)

    def call(**fields: Any) -> str:
        result = fs.call(Caller(**fields))
        assert result.outcome == "routed", result
        settle(guard)
        return result.uuid

    return call


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("FSGUARD_RECORDING_DIR", settings.recording.dir)


def call_row(db: Any, uuid: str) -> CallRecord:
    with db.begin() as s:
        call = s.get(CallRecord, uuid)
        assert call is not None
        return call


def recording(db: Any, uuid: str) -> Recording | None:
    with db.begin() as s:
        return s.scalars(select(Recording).where(Recording.call_uuid == uuid)).first()


def test_erase_removes_recordings_anonymises_calls_and_keeps_what_is_held(calls, db, cli_env, capsys):
    first = calls(ani="15551230001", name="Alice Example")
    second = calls(ani="+1 (555) 123-0001", name="Alice Example")     # same person, another form
    held = calls(ani="15551230001", name="Alice Example")
    dialled = calls(ani="1001", dnis="15551230001", context="default")  # an agent called her
    bob = calls(ani="15551239999", name="Bob Other")
    recordings.hold(db, held, "complaint 2026-17")
    files = {u: Path(recording(db, u).path) for u in (first, second, held, dialled, bob)}
    with db.begin() as s:
        total = s.scalar(select(func.count()).select_from(CallRecord))

    capsys.readouterr()
    assert cli.main(["erase", "(555) 123-0001"]) == 0
    out = capsys.readouterr().out
    assert f"Erasure of {ALICE}:" in out
    assert "deleted 3 recording(s)" in out
    assert f"kept recording of call {held}" in out and "under legal hold" in out and "complaint 2026-17" in out
    assert "anonymised 3 call record(s)" in out and "kept 1 call record(s) unchanged" in out

    for u in (first, second, dialled):
        assert recording(db, u) is None and not files[u].exists()
        c = call_row(db, u)
        assert c.erased and c.outcome == "routed" and c.hangup_cause and c.started_at  # statistics stay
        text = json.dumps({"inputs": c.inputs, "dnis": c.dnis, "ani": c.ani, "raw": c.ani_raw,
                           "verdicts": [(v.reason, v.details) for v in c.verdicts]})
        assert "5551230001" not in text and "Alice" not in text
    for u in (first, second):
        c = call_row(db, u)
        assert c.ani is None and c.ani_raw == "" and c.caller_name == ""
        assert "[erased] called 1 time in the last hour" in [v.reason for v in c.verdicts]
    agent_call = call_row(db, dialled)
    assert agent_call.dnis == "" and agent_call.ani == "+11001"  # the agent's side is not hers to erase

    kept = call_row(db, held)
    assert not kept.erased and kept.ani == ALICE and kept.caller_name == "Alice Example"
    assert recording(db, held).legal_hold and files[held].exists()

    other = call_row(db, bob)
    assert not other.erased and other.ani == "+15551239999" and recording(db, bob) and files[bob].exists()
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(CallRecord)) == total  # nothing lost from statistics

    # a second request finds nothing more to do but what is held
    assert cli.main(["erase", ALICE]) == 0
    again = capsys.readouterr().out
    assert "anonymised" not in again and "deleted 1" not in again
    assert f"kept recording of call {held}" in again and "kept 1 call record(s) unchanged" in again


def test_a_dry_run_changes_nothing(calls, db, cli_env, capsys):
    uuid = calls(ani="15551230001", name="Alice Example")
    path = Path(recording(db, uuid).path)
    capsys.readouterr()
    assert cli.main(["erase", ALICE, "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["ok"] and report["number"] == ALICE
    areas = {a["area"]: a["lines"] for a in report["areas"]}
    assert areas["recordings"] == ["would delete 1 recording(s) (audio files and their records, masks included)"]
    assert path.exists() and recording(db, uuid) is not None
    c = call_row(db, uuid)
    assert not c.erased and c.ani == ALICE and c.caller_name == "Alice Example"


def test_every_area_runs_and_a_failing_one_is_reported_without_undoing_the_others(
        calls, db, cli_env, capsys, monkeypatch):
    uuid = calls(ani="15551230001")
    seen: list[str] = []

    def customers(session: Any, number: str) -> list[str]:
        seen.append(number)
        return ["deleted 1 customer record"]

    def broken(session: Any, number: str) -> list[str]:
        raise RuntimeError("CRM table locked")

    monkeypatch.setattr(erasure, "AREAS", [("routing", customers), ("outbound", broken)])
    capsys.readouterr()
    assert cli.main(["erase", ALICE]) == 1
    out = capsys.readouterr().out
    assert seen == [ALICE]
    assert "routing:\n    deleted 1 customer record" in out
    assert "outbound:\n    FAILED: RuntimeError: CRM table locked" in out
    assert "run the same 'fsguard erase' again" in out
    assert call_row(db, uuid).erased and recording(db, uuid) is None  # the other areas' work stands


def test_a_recording_file_that_cannot_be_deleted_keeps_its_record_and_fails_loudly(calls, db, cli_env, capsys):
    uuid = calls(ani="15551230001")
    path = Path(recording(db, uuid).path)
    path.unlink()
    path.mkdir()  # not a recording file any more: erasure must not delete a directory tree
    capsys.readouterr()
    assert cli.main(["erase", ALICE]) == 1
    out = capsys.readouterr().out
    assert "FAILED: could not delete" in out and "not a regular file" in out
    assert recording(db, uuid) is not None and path.is_dir()


def test_erase_refuses_what_is_not_a_number(db, cli_env, capsys):
    assert cli.main(["erase", "anonymous"]) == 1
    assert "'anonymous' is not a number" in capsys.readouterr().err   # the rule every command uses (numbers.to_e164)


def test_scrub_and_number_forms():
    forms = erasure.number_forms("+442079460000")
    assert forms[0] == "011442079460000" and "02079460000" in forms and "2079460000" in forms
    doc = {"ani": "+442079460000", "note": "call from 02079460000 at 9", "n": [1, "442079460000"], "caller_name": ""}
    assert erasure.scrub(doc, forms) == {"ani": "[erased]", "note": "call from [erased] at 9", "n": [1, "[erased]"],
                                         "caller_name": ""}
