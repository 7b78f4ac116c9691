"""Agents dialling out: every attempt to a number, the freezes on numbers, and the per-number row
that serialises the freeze decision across fsguard nodes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fsguard.store.models.base import Base, UTCDateTime, utcnow


class OutboundFreeze(Base):
    """A number agents may not dial until ``until`` (or until an operator lifts it).

    Rows are kept after they expire or are lifted: they are the history an operator reads to learn
    why a number could not be dialled last week. The number is frozen while a row has
    ``lifted_at IS NULL AND until > now``; the call-time check is one lookup on (number, until).
    """

    __tablename__ = "outbound_freezes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    #: "auto" (the freeze rule) or "operator" (``fsguard outbound freeze``)
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    #: the node that applied the rule, or the operator's user name
    created_by: Mapped[str] = mapped_column(String(128), default="")
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lifted_by: Mapped[str | None] = mapped_column(String(128))
    lift_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_outbound_freezes_number_until", "number", "until"),)


class OutboundAttempt(Base):
    """One outbound call to a number, classified from its hang-up (or prevented by a freeze).

    ``outcome``: no_answer, rejected, short, conversation, failed (the network could not reach the
    number) or prevented (frozen: not dialled). ``strike`` marks the attempts the freeze rule counted.
    """

    __tablename__ = "outbound_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(32))
    #: when the attempt ended (when it was prevented, for a prevented one)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    call_uuid: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(128), default="")
    #: the agent's caller id (extension) as FreeSWITCH presented it
    agent: Mapped[str] = mapped_column(String(128), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    #: seconds from the far end answering to the hang-up; None when it never answered
    talk_seconds: Mapped[float | None] = mapped_column(Float)
    #: counted by the freeze rule (rejected or short, and the number was not frozen already)
    strike: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the freeze that stopped this attempt, was in force (shadow mode), or that this attempt set off
    freeze_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_freezes.id", ondelete="SET NULL"))

    __table_args__ = (Index("ix_outbound_attempts_number_at", "number", "at"),)


class OutboundNumber(Base):
    """Per-number counting state, and the row every node locks before deciding a freeze.

    Recording an attempt upserts this row first: on PostgreSQL the upsert holds the row lock until
    the transaction ends, so two nodes finishing calls to one number at once count one after the
    other and freeze it exactly once (SQLite serialises all writers anyway).
    """

    __tablename__ = "outbound_numbers"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: strikes before this instant no longer count (set when a freeze starts or is lifted)
    strikes_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
