"""Writing calls and verdicts down, and reading them back for operators.

Two writes per call on the hot path: the decision (call row and its verdicts, one transaction)
right after FreeSWITCH has its instruction, and the end (hang-up cause, billsec) at hang-up.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert, select, update

from fsguard.call import Call
from fsguard.db import Database
from fsguard.models import CallRecord, StageVerdict
from fsguard.pipeline import CallEnd, Decision


def record_decision(db: Database, call: Call, decision: Decision, node: str, started_at: datetime) -> None:
    decided_at = started_at + timedelta(milliseconds=decision.decision_ms or 0)
    row = {"uuid": call.uuid, "node": node, "direction": call.direction, "ani_raw": call.presented_number,
           "ani": call.ani, "caller_name": call.caller_name, "dnis": call.dnis, "context": call.context,
           "started_at": started_at, "decided_at": decided_at, "decision_ms": decision.decision_ms,
           "action": decision.action, "outcome": decision.outcome, "risk": call.risk, "verified": call.verified,
           "inputs": call.describe(), "answered": False, "erased": False}
    verdicts = [{"call_uuid": call.uuid, "seq": i, "stage": v.stage, "outcome": v.outcome.value, "code": v.code,
                 "reason": v.reason, "enforced": v.enforced, "details": _jsonable(v.details),
                 "elapsed_ms": v.elapsed_ms} for i, v in enumerate(decision.verdicts)]
    with db.begin() as session:
        session.execute(insert(CallRecord), [row])
        if verdicts:
            session.execute(insert(StageVerdict), verdicts)


def record_end(db: Database, uuid: str, end: CallEnd) -> None:
    with db.begin() as session:
        session.execute(update(CallRecord).where(CallRecord.uuid == uuid).values(
            ended_at=datetime.now(timezone.utc), hangup_cause=end.hangup_cause, duration=end.duration,
            billsec=end.billsec, answered=end.answered))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


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
            call = session.scalars(select(CallRecord).where(CallRecord.uuid.startswith(uuid)).limit(2)).first()
        return call
