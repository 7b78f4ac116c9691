"""What one call leaves in the database: its row and verdicts as decided, then its end.

The call layer's values (Call, Decision, CallEnd) become plain rows here, so the store knows
nothing of calls; the store's group-commit writer (fsguard/store/records.py) writes them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fsguard.call.call import Call
from fsguard.call.pipeline import Decision
from fsguard.call.results import CallEnd
from fsguard.store import records
from fsguard.store.writer import Ticket, Writer


def decision_rows(call: Call, decision: Decision, node: str, started_at: datetime
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The call's row and its verdicts' rows, as decided."""
    decided_at = started_at + timedelta(milliseconds=decision.decision_ms or 0)
    row = {"uuid": call.uuid, "node": node, "direction": call.direction, "ani_raw": call.presented_number,
           "ani": call.ani, "caller_name": call.caller_name, "dnis": call.dnis, "context": call.context,
           "started_at": started_at, "decided_at": decided_at, "decision_ms": decision.decision_ms,
           "action": decision.action, "outcome": decision.outcome, "risk": call.risk, "verified": call.verified,
           "inputs": call.describe(), "answered": False, "erased": False,
           "ended_at": None, "hangup_cause": None, "duration": None, "billsec": None}
    verdicts = [{"call_uuid": call.uuid, "seq": i, "stage": v.stage, "outcome": v.outcome.value, "code": v.code,
                 "reason": v.reason, "enforced": v.enforced, "details": _jsonable(v.details),
                 "elapsed_ms": v.elapsed_ms} for i, v in enumerate(decision.verdicts)]
    return row, verdicts


def record_decision(writer: Writer, call: Call, decision: Decision, node: str, started_at: datetime) -> Ticket:
    row, verdicts = decision_rows(call, decision, node, started_at)
    return records.record_call(writer, row, verdicts)


def record_end(writer: Writer, uuid: str, end: CallEnd) -> Ticket:
    return records.record_end(writer, uuid, hangup_cause=end.hangup_cause, duration=end.duration,
                              billsec=end.billsec, answered=end.answered)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
