"""Writing calls and verdicts down, and reading them back for operators.

Two moments per call, both handed to the group-commit writer (fsguard/store/writer.py): the decision
(call row and its verdicts, and a recorded call's recording row, queued by the recording stage)
right after FreeSWITCH has its instruction, and the end (hang-up cause, billsec, the recording's
closing facts) at hang-up.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, select, update

from fsguard.store.db import Database
from fsguard.store.models import CallRecord, Recording, RecordingMask, StageVerdict
from fsguard.store.writer import Ticket, Writer


def make_writer(db: Database, *, retry_seconds: float = 30.0, on_error: Any = None,
                gather_seconds: float = 0.0) -> Writer:
    """The writer with every kind of row a call leaves behind, in the order they must be written.

    A recording's rows are keyed by its call's uuid (unique), never by its id: the row is queued
    at the decision and its id is the database's to give at the commit."""
    writer = Writer(db, retry_seconds=retry_seconds, on_error=on_error, gather_seconds=gather_seconds)
    rec, mask = Recording.__table__, RecordingMask.__table__
    writer.declare_insert("recording_open", rec)  # type: ignore[arg-type]
    writer.declare_insert("call", CallRecord.__table__)  # type: ignore[arg-type]
    writer.declare_insert("verdict", StageVerdict.__table__)  # type: ignore[arg-type]
    writer.declare_update("call_end", CallRecord.__table__, "uuid")  # type: ignore[arg-type]
    # a recording stopped by an operator (``fsguard recordings stop``) already has its end
    writer.declare("recording_end", lambda: update(rec).where(rec.c.call_uuid == bindparam("_key"),
                                                               rec.c.ended_at.is_(None)))
    of_call = select(rec.c.id).where(rec.c.call_uuid == bindparam("_key")).scalar_subquery()
    writer.declare("mask_end", lambda: update(mask).where(mask.c.recording_id == of_call, mask.c.ended_at.is_(None)))
    writer.declare_delete("recording_discard", rec, "call_uuid")  # type: ignore[arg-type]
    return writer


def record_call(writer: Writer, row: dict[str, Any], verdicts: list[dict[str, Any]]) -> Ticket:
    """Queue a decided call's row and its verdicts' rows (fsguard/service/calls.py builds them)."""
    ticket = writer.submit("call", row)
    for verdict in verdicts:
        ticket = writer.submit("verdict", verdict)
    return ticket


def record_end(writer: Writer, uuid: str, *, hangup_cause: str | None, duration: int | None, billsec: int | None,
               answered: bool) -> Ticket:
    """Queue the end of a call (its row's hang-up cause, duration and billsec)."""
    return writer.submit("call_end", {"_key": uuid, "ended_at": datetime.now(timezone.utc),
                                      "hangup_cause": hangup_cause, "duration": duration,
                                      "billsec": billsec, "answered": answered})


def call_as_dict(call: CallRecord) -> dict[str, Any]:
    """The stable JSON shape of a call for ``fsguard calls --json`` and the admin API."""
    return {
        "uuid": call.uuid, "node": call.node, "ani": call.ani, "ani_raw": call.ani_raw,
        "caller_name": call.caller_name, "dnis": call.dnis, "direction": call.direction,
        "started_at": call.started_at.isoformat() if call.started_at else None,
        "decision_ms": round(call.decision_ms, 3) if call.decision_ms is not None else None,
        "action": call.action, "outcome": call.outcome, "risk": call.risk, "verified": call.verified,
        "hangup_cause": call.hangup_cause, "billsec": call.billsec, "duration": call.duration,
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "inputs": call.inputs,
        "verdicts": [{"stage": v.stage, "outcome": v.outcome, "code": v.code, "reason": v.reason,
                      "enforced": v.enforced, "details": v.details, "elapsed_ms": round(v.elapsed_ms, 3)}
                     for v in call.verdicts],
    }


def recent_calls(db: Database, limit: int = 20) -> list[CallRecord]:
    with db.begin() as session:
        return list(session.scalars(select(CallRecord).order_by(CallRecord.started_at.desc()).limit(limit)))


def find_call(db: Database, uuid: str) -> CallRecord | None:
    with db.begin() as session:
        call = session.get(CallRecord, uuid)
        if call is None and len(uuid) >= 6:
            # a prefix shared by several calls finds none of them (the CLI lists the candidates)
            found = list(session.scalars(select(CallRecord).where(CallRecord.uuid.startswith(uuid)).limit(2)))
            call = found[0] if len(found) == 1 else None
        return call
