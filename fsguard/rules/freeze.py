"""Outbound risk control: stop agents re-dialling people who do not want the call.

Every outbound attempt is written down with its outcome once the call is over; ``threshold``
rejected-or-short attempts to one number within ``window`` freeze the number for ``freeze_for``.
A frozen number is not dialled. Operators freeze and unfreeze numbers by hand too.

All functions take an open session (the caller owns the transaction) and an optional ``now`` so
that expiry and windows can be tested without waiting. Numbers are E.164.

Counting across nodes: :func:`record_attempt` first upserts the number's ``outbound_numbers`` row.
On PostgreSQL that takes the row lock until the transaction ends, so two nodes finishing the 3rd
and 4th short call to one number at the same moment run one after the other: the first counts 3
and freezes, the second sees the freeze and neither counts nor freezes again. SQLite serialises
writers by itself (the upsert is the transaction's first statement, so it takes the write lock
before reading anything).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fsguard.rules import changes, numbers
from fsguard.config import OutboundSettings
from fsguard.store.models import utcnow
from fsguard.store.models.outbound import OutboundAttempt, OutboundFreeze, OutboundNumber

#: outcomes of an attempt; the first four are the issue's, "failed" means the network could not
#: reach the number (no person said no), "prevented" means fsguard did not dial (frozen)
OUTCOMES = ("no_answer", "rejected", "short", "conversation", "failed", "prevented")
#: the outcomes the freeze rule counts
STRIKES = ("rejected", "short")

#: unanswered causes that say the network, not the called person, failed the call
FAILED_CAUSES = frozenset({
    "UNALLOCATED_NUMBER", "NO_ROUTE_TRANSIT_NET", "NO_ROUTE_DESTINATION", "CHANNEL_UNACCEPTABLE",
    "NUMBER_CHANGED", "EXCHANGE_ROUTING_ERROR", "DESTINATION_OUT_OF_ORDER", "INVALID_NUMBER_FORMAT",
    "FACILITY_REJECTED", "NORMAL_CIRCUIT_CONGESTION", "NETWORK_OUT_OF_ORDER", "NORMAL_TEMPORARY_FAILURE",
    "SWITCH_CONGESTION", "REQUESTED_CHAN_UNAVAIL", "OUTGOING_CALL_BARRED", "INCOMING_CALL_BARRED",
    "BEARERCAPABILITY_NOTAUTH", "BEARERCAPABILITY_NOTAVAIL", "SERVICE_UNAVAILABLE", "INCOMPATIBLE_DESTINATION",
    "INVALID_MSG_UNSPECIFIED", "MANDATORY_IE_MISSING", "PROTOCOL_ERROR", "INTERWORKING", "GATEWAY_DOWN",
    "CRASH", "SYSTEM_SHUTDOWN", "MEDIA_TIMEOUT", "USER_NOT_REGISTERED", "SUBSCRIBER_ABSENT",
})


# ------------------------------------------------------------------ numbers


def dialled_number(raw: str, region: str = "US") -> str | None:
    """The E.164 number an agent dialled, or None when it is not a telephone number.

    Accepts numbers phonenumbers calls *possible* but not *valid* (unassigned ranges such as
    +1 555 still reach carriers, and a freeze must key them the same way every time).
    """
    parsed = numbers.parse(raw, region)
    if parsed.e164 is None:
        return None
    if parsed.valid:
        return parsed.e164
    try:
        possible = phonenumbers.is_possible_number(phonenumbers.parse(parsed.e164))
    except phonenumbers.NumberParseException:
        return None
    return parsed.e164 if possible else None


def dial_parts(e164: str) -> tuple[str, str, str]:
    """(number, digits, national) for the ``outbound.dial_target`` template."""
    try:
        national = str(phonenumbers.parse(e164).national_number)
    except phonenumbers.NumberParseException:
        national = e164.lstrip("+")
    return e164, e164.lstrip("+"), national


def human_duration(seconds: float) -> str:
    """``86400`` -> ``1d``, ``90`` -> ``90s``: how durations read in reasons and tables."""
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ------------------------------------------------------------------ freezes


@dataclass(frozen=True)
class Freeze:
    """A freeze as the stage, the CLI and the call record see it (detached from the session)."""

    id: int
    number: str
    created_at: datetime
    until: datetime
    source: str
    reason: str
    created_by: str
    lifted_at: datetime | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None

    @classmethod
    def of(cls, row: OutboundFreeze) -> Freeze:
        return cls(row.id, row.number, row.created_at, row.until, row.source, row.reason, row.created_by,
                   row.lifted_at, row.lifted_by, row.lift_reason)

    def active(self, now: datetime | None = None) -> bool:
        return self.lifted_at is None and self.until > (now or utcnow())

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}


def active_freeze(session: Session, number: str, now: datetime | None = None) -> Freeze | None:
    """The freeze in force on ``number``, if any: the call-time check, one indexed query."""
    now = now or utcnow()
    row = session.scalars(
        select(OutboundFreeze)
        .where(OutboundFreeze.number == number, OutboundFreeze.until > now, OutboundFreeze.lifted_at.is_(None))
        .order_by(OutboundFreeze.until.desc())
        .limit(1)
    ).first()
    return Freeze.of(row) if row is not None else None


def frozen(session: Session, now: datetime | None = None) -> list[Freeze]:
    """Every number frozen now, the soonest to thaw first."""
    now = now or utcnow()
    rows = session.scalars(select(OutboundFreeze)
                           .where(OutboundFreeze.until > now, OutboundFreeze.lifted_at.is_(None))
                           .order_by(OutboundFreeze.until, OutboundFreeze.number))
    return [Freeze.of(r) for r in rows]


def freezes(session: Session, number: str, limit: int = 20) -> list[Freeze]:
    """A number's freezes, newest first, lifted and expired ones included (its history)."""
    rows = session.scalars(select(OutboundFreeze).where(OutboundFreeze.number == number)
                           .order_by(OutboundFreeze.created_at.desc(), OutboundFreeze.id.desc()).limit(limit))
    return [Freeze.of(r) for r in rows]


def _lock(session: Session, number: str, now: datetime) -> datetime | None:
    """Take the number's row lock (creating the row if needed); returns its ``strikes_since``.

    Must be the first statement of the transaction so that SQLite takes its write lock before
    anything is read, and PostgreSQL serialises every writer of this number behind it.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(OutboundNumber).values(number=number, strikes_since=None, updated_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=[OutboundNumber.number],
                                      set_={"updated_at": stmt.excluded.updated_at})
    return session.execute(stmt.returning(OutboundNumber.strikes_since)).scalar_one()


def _reset_strikes(session: Session, number: str, now: datetime) -> None:
    session.execute(update(OutboundNumber).where(OutboundNumber.number == number)
                    .values(strikes_since=now, updated_at=now))


def freeze(session: Session, number: str, *, reason: str, seconds: float, source: str = "operator", by: str = "",
           now: datetime | None = None) -> tuple[Freeze, list[Freeze]]:
    """Freeze ``number`` for ``seconds`` from now; returns the freeze and the freezes it replaced.

    A freeze in force is replaced (lifted as "superseded"), so the latest decision is the one that
    holds; strikes counted so far are cleared (after the freeze the number starts afresh).
    """
    now = now or utcnow()
    _lock(session, number, now)
    replaced = _lift(session, number, by=by, reason="superseded by a new freeze", now=now)
    row = OutboundFreeze(number=number, created_at=now, until=now + timedelta(seconds=seconds), source=source,
                         reason=reason, created_by=by)
    session.add(row)
    session.flush()
    _reset_strikes(session, number, now)
    changes.changed(session, "freeze", [number])
    return Freeze.of(row), replaced


def unfreeze(session: Session, number: str, *, by: str = "", reason: str = "", now: datetime | None = None) -> list[Freeze]:
    """Lift the freeze on ``number``; returns what was lifted (empty: it was not frozen).

    Strikes before the unfreeze no longer count: an operator who lifts a freeze means "try again".
    """
    now = now or utcnow()
    _lock(session, number, now)
    lifted = _lift(session, number, by=by, reason=reason or "unfrozen by an operator", now=now)
    if lifted:
        _reset_strikes(session, number, now)
    return lifted


def _lift(session: Session, number: str, *, by: str, reason: str, now: datetime) -> list[Freeze]:
    rows = list(session.scalars(select(OutboundFreeze).where(
        OutboundFreeze.number == number, OutboundFreeze.until > now, OutboundFreeze.lifted_at.is_(None))))
    for row in rows:
        row.lifted_at, row.lifted_by, row.lift_reason = now, by, reason
    session.flush()
    if rows:
        changes.changed(session, "freeze", [number])
    return [Freeze.of(r) for r in rows]


# ----------------------------------------------------------------- attempts


def classify(*, answered: bool, talk_seconds: float | None, cause: str | None, rules: OutboundSettings) -> str:
    """The outcome of a dialled attempt from its hang-up.

    Answered: "short" under ``rules.short_call`` of conversation, else "conversation".
    Not answered: "rejected" for the causes that mean the person refused (busy, declined),
    "failed" when the network could not reach the number, "no_answer" otherwise.
    """
    if answered:
        return "short" if (talk_seconds or 0.0) < rules.short_call_seconds else "conversation"
    cause = (cause or "").upper()
    if cause in rules.rejected_causes:
        return "rejected"
    if cause in FAILED_CAUSES:
        return "failed"
    return "no_answer"


@dataclass
class AttemptResult:
    """What recording an attempt did: its outcome, whether it counted, and any freeze it set off."""

    id: int
    outcome: str
    strike: bool
    #: strikes in the window after this attempt (0 when it did not count)
    strikes: int
    #: the freeze this attempt set off, if any
    froze: Freeze | None = None
    #: the freeze that was already in force when the attempt ended (it then does not count)
    frozen_by: Freeze | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "strike": self.strike, "strikes": self.strikes,
                "froze": self.froze.as_dict() if self.froze else None,
                "frozen_by": self.frozen_by.id if self.frozen_by else None}


def record_attempt(session: Session, number: str, *, outcome: str, rules: OutboundSettings, call_uuid: str | None = None,
                   node: str = "", agent: str = "", hangup_cause: str | None = None,
                   talk_seconds: float | None = None, now: datetime | None = None) -> AttemptResult:
    """Write down a dialled attempt and apply the freeze rule, in the caller's transaction.

    The number's row is locked first (see the module docstring), so the count below sees every
    attempt committed before and none can slip in until this transaction ends.
    """
    if outcome not in OUTCOMES or outcome == "prevented":
        raise ValueError(f"not an outcome of a dialled attempt: {outcome!r}")
    given = now
    strikes_since = _lock(session, number, now or utcnow())
    # The lock may have waited for another node: time the attempt once it holds the lock, so that
    # attempts are counted in the order they are written.
    now = given or utcnow()
    in_force = active_freeze(session, number, now)
    strike = outcome in STRIKES and in_force is None
    row = OutboundAttempt(number=number, at=now, call_uuid=call_uuid, node=node[:128], agent=agent[:128],
                          outcome=outcome, hangup_cause=hangup_cause, talk_seconds=talk_seconds, strike=strike,
                          freeze_id=in_force.id if in_force else None)
    session.add(row)
    session.flush()
    result = AttemptResult(row.id, outcome, strike, 0, frozen_by=in_force)
    if not strike:
        return result
    since = now - timedelta(seconds=rules.window_seconds)
    if strikes_since is not None and strikes_since > since:
        since = strikes_since
    counted = list(session.execute(
        select(OutboundAttempt.outcome, OutboundAttempt.hangup_cause, OutboundAttempt.talk_seconds)
        .where(OutboundAttempt.number == number, OutboundAttempt.strike.is_(True), OutboundAttempt.at > since)
        .order_by(OutboundAttempt.at, OutboundAttempt.id)))
    result.strikes = len(counted)
    if result.strikes >= rules.threshold:
        said = ", ".join(_strike_words(*row) for row in counted)
        reason = (f"{result.strikes} rejected or short calls within {human_duration(rules.window_seconds)}: {said}")
        result.froze, _ = freeze(session, number, reason=reason, seconds=rules.freeze_seconds, source="auto",
                                 by=node, now=now)
        row.freeze_id = result.froze.id
        session.flush()
    return result


def _strike_words(outcome: str, cause: str | None, talk: float | None) -> str:
    if outcome == "short":
        return "short" if talk is None else f"short ({talk:.0f} s)"
    return f"rejected ({cause})" if cause else "rejected"


def record_prevented(session: Session, number: str, freeze_id: int | None, *, call_uuid: str | None = None,
                     node: str = "", agent: str = "", now: datetime | None = None) -> int:
    """Write down an attempt fsguard did not dial because the number was frozen."""
    row = OutboundAttempt(number=number, at=now or utcnow(), call_uuid=call_uuid, node=node[:128], agent=agent[:128],
                          outcome="prevented", strike=False, freeze_id=freeze_id)
    session.add(row)
    session.flush()
    return row.id


def strikes(session: Session, number: str, rules: OutboundSettings, now: datetime | None = None) -> int:
    """Strikes the freeze rule would count for ``number`` now (for operators)."""
    now = now or utcnow()
    since = now - timedelta(seconds=rules.window_seconds)
    reset = session.scalar(select(OutboundNumber.strikes_since).where(OutboundNumber.number == number))
    if reset is not None and reset > since:
        since = reset
    return session.scalar(select(func.count()).select_from(OutboundAttempt).where(
        OutboundAttempt.number == number, OutboundAttempt.strike.is_(True), OutboundAttempt.at > since,
        OutboundAttempt.at <= now)) or 0


def attempts(session: Session, number: str, limit: int = 50) -> list[OutboundAttempt]:
    """A number's attempts, newest first."""
    return list(session.scalars(select(OutboundAttempt).where(OutboundAttempt.number == number)
                                .order_by(OutboundAttempt.at.desc(), OutboundAttempt.id.desc()).limit(limit)))


def attempt_as_dict(row: OutboundAttempt) -> dict[str, Any]:
    return {"id": row.id, "number": row.number, "at": row.at.isoformat(), "outcome": row.outcome,
            "talk_seconds": row.talk_seconds, "hangup_cause": row.hangup_cause, "strike": row.strike,
            "agent": row.agent, "node": row.node, "call_uuid": row.call_uuid, "freeze_id": row.freeze_id}


# ------------------------------------------------------------------ erasure


def erase(session: Session, number: str) -> list[str]:
    """Erase the outbound data held on ``number`` (``fsguard erase``); returns what was done.

    Attempts and past freezes are deleted. A freeze in force is KEPT: it is what stops agents
    calling the person who asked to be left alone; an operator who really wants it gone runs
    ``fsguard outbound unfreeze`` first.
    """
    now = utcnow()
    lines: list[str] = []
    gone = _delete(session, delete(OutboundAttempt).where(OutboundAttempt.number == number))
    lines.append(f"deleted {gone} outbound call attempt(s) to {number}")
    keep = active_freeze(session, number, now)
    stmt = delete(OutboundFreeze).where(OutboundFreeze.number == number)
    if keep is not None:
        stmt = stmt.where(OutboundFreeze.id != keep.id)
    gone = _delete(session, stmt)
    lines.append(f"deleted {gone} past freeze(s) of {number}")
    if keep is not None:
        lines.append(f"KEPT the freeze in force until {keep.until:%Y-%m-%d %H:%M} UTC (it stops agents "
                     f"dialling {number}); run 'fsguard outbound unfreeze {number}' first to erase it too")
    else:
        session.execute(delete(OutboundNumber).where(OutboundNumber.number == number))
    return lines


def _delete(session: Session, stmt: Any) -> int:
    """Run a DELETE and say how many rows it removed."""
    return int(getattr(session.execute(stmt), "rowcount", 0) or 0)
