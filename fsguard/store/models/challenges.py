"""Verification challenges: one row per IVR challenge a caller was put through.

The rows serve two purposes:

* escalation at call time: the failed challenges of a number in the last
  ``verification.escalate_window`` are counted on the (number, started_at) index when a challenge
  fails, so a number that keeps failing is blocked hard (source ``auto``) whatever node took its
  calls;
* the history an operator reads (``fsguard challenges NUMBER``): when a number was challenged,
  why, what it keyed and how it ended.

The code is kept: it is worthless once its challenge is over (each challenge draws a new one, and
never the code the number's previous challenge used, which is why it is stored), and it lets an
operator see that a caller keyed "24" for "42".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fsguard.store.models.base import Base, JSONDoc, UTCDateTime, utcnow

#: how a challenge ended
OUTCOMES = ("passed", "wrong", "no_input", "abandoned")


class Challenge(Base):
    """One challenge: the code played to a caller, what the caller keyed, and how it ended."""

    __tablename__ = "challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_uuid: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(128), default="")
    #: the caller in E.164 (the network number); None for a caller without a usable number
    number: Mapped[str | None] = mapped_column(String(32))
    dnis: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: why the caller was challenged (trigger names and the reasons the stages gave)
    triggers: Mapped[list[Any]] = mapped_column(JSONDoc, default=list)
    #: the code played in early media
    code: Mapped[str] = mapped_column(String(16))
    #: what the caller keyed, try by try ("" for a try with no key)
    entered: Mapped[list[Any]] = mapped_column(JSONDoc, default=list)
    #: passed, wrong, no_input, abandoned
    outcome: Mapped[str] = mapped_column(String(16))
    #: tries used (an entry during the announcement counts as one)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: the caller keyed (part of) the code while it was being announced, before the answer
    early: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the call was answered to collect the digits
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    #: seconds from the answer to the hang-up fsguard gave (failed challenges), by FreeSWITCH's clock
    answered_seconds: Mapped[float | None] = mapped_column(Float)
    #: this failure made the number reach verification.escalate_after: it was blocked hard
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: a sentence for the operator
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        Index("ix_challenges_number_started_at", "number", "started_at"),
        Index("ix_challenges_call_uuid", "call_uuid"),
        Index("ix_challenges_started_at", "started_at"),
    )

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape of a challenge (``fsguard challenges --json``)."""
        return {"id": self.id, "call_uuid": self.call_uuid, "node": self.node, "number": self.number,
                "dnis": self.dnis, "started_at": self.started_at.isoformat() if self.started_at else None,
                "ended_at": self.ended_at.isoformat() if self.ended_at else None, "triggers": self.triggers,
                "code": self.code, "entered": self.entered, "outcome": self.outcome, "attempts": self.attempts,
                "early": self.early, "answered": self.answered, "answered_seconds": self.answered_seconds,
                "escalated": self.escalated, "detail": self.detail}
