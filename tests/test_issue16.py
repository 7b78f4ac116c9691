"""Issue 16: what broke when fsguard was attacked and its database taken away.

Each test here failed before its fix. Faults go through the real socket with the simulator playing
FreeSWITCH, on SQLite and PostgreSQL; the SQLite lock and read-only cases use a second process and
an immutable file in a temporary directory.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any, Callable

import gevent
import pytest
from sqlalchemy import select

from fsguard import records
from fsguard.models import CallRecord
from fsguard.models.recordings import Recording
from fsguard.pipeline import STAGES, Stage, Verdict
from fsguard.testing.simulator import Caller, FakeFreeSWITCH

TS = 0.002


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    with gevent.Timeout(timeout, AssertionError(f"{what} not reached in {timeout} s")):
        while not predicate():
            gevent.sleep(0.01)


def settle(guard: Any) -> None:
    wait_for(lambda: not guard.app.deciding and not guard.app.held and guard.server.active == 0,
             what="fsguard letting go of every call")
    assert guard.app.writer.wait_idle(10), "the writer did not catch up"


# ================================================================ 4. a failure at instruction time


def test_a_uuid_ending_in_a_newline_is_not_a_uuid_and_the_call_is_routed_and_recorded(settings, start_guard, db):
    """``Unique-ID: ...%0A`` decodes to a uuid with a trailing newline, which ``$`` accepted: the
    recording path carried the newline into ``record_session`` and the route was never sent."""
    settings.policy.stages = ["recording", "routing"]
    settings.recording.mode = "all"
    settings.recording.consent = False
    guard = start_guard()
    uuid = str(uuidlib.uuid4()) + "\n"
    result = FakeFreeSWITCH(guard.address, time_scale=TS).call(Caller(ani="+12125550100", uuid=uuid))
    assert result.outcome == "routed" and result.route == "transfer default XML queues", (result.outcome,
                                                                                          result.commands[-3:])
    assert "record_session" not in [app for app, _ in result.apps]
    settle(guard)
    stored = records.find_call(db, uuid)
    assert stored is not None and stored.outcome == "routed"
    assert "recording.bad_uuid" in [v.code for v in stored.verdicts]
    with db.begin() as session:
        assert session.scalars(select(Recording).where(Recording.status == "recording")).all() == []


class BadExport(Stage):
    """Exports a value FreeSWITCH cannot be sent (a line break): the failure comes at flush time,
    after every stage has run, when the route goes out."""

    name = "badexport"

    def run(self, call):
        call.export(fsguard_note="line one\nline two")
        return Verdict.carry_on("exported a note", "probe.exported")


def test_an_instruction_that_cannot_be_sent_still_gives_the_call_its_fail_open_route(settings, start_guard, db,
                                                                                     monkeypatch, caplog):
    monkeypatch.setitem(STAGES, "badexport", f"{__name__}:BadExport")
    settings.policy.stages = ["badexport", "routing"]
    guard = start_guard()
    result = FakeFreeSWITCH(guard.address, time_scale=TS).call(Caller(ani="+12125550100"))
    assert result.outcome == "routed" and result.route == settings.policy.fail_open_route, (
        result.outcome, [c.split("\n")[0] for c in result.commands])
    assert result.ok, result.violations
    settle(guard)
    stored = records.find_call(db, result.uuid)
    assert stored is not None and stored.outcome == "failed_open"
    assert stored.action == settings.policy.fail_open_route
    assert [v.code for v in stored.verdicts][-1] == "error.internal"
    assert not [r for r in caplog.records if "call.failed" in str(r.msg)]


@pytest.mark.parametrize("check", [
    pytest.param(lambda: __import__("fsguard.recordings", fromlist=["x"]).UUID_RE.match(
        "0b3c8a8e-0000-4000-8000-000000000001\n"), id="recording-uuid"),
    pytest.param(lambda: __import__("fsguard.inbound", fromlist=["x"])._UUID.match(
        "0b3c8a8e-0000-4000-8000-000000000001\n"), id="api-uuid"),
    pytest.param(lambda: __import__("fsguard.routing_table", fromlist=["x"]).NAME_RE.match("support\n"),
                 id="queue-name"),
    pytest.param(lambda: __import__("fsguard.stages.outbound", fromlist=["x"])._PLAIN_DIGITS.match("5551234\n"),
                 id="dialled-digits"),
    pytest.param(lambda: __import__("fsguard.lists", fromlist=["x"])._CAUSE.match("CALL_REJECTED\n"),
                 id="hangup-cause"),
])
def test_no_validating_pattern_accepts_a_trailing_newline(check):
    """``$`` matches before a final newline; every validating pattern ends in ``\\Z`` instead."""
    assert check() is None
