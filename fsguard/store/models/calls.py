"""Calls and what each stage decided about them: the record an operator reads to learn why."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fsguard.store.models.base import Base, JSONDoc, UTCDateTime, utcnow


class CallRecord(Base):
    """One channel fsguard took. Written once when the decision is made, completed at hang-up."""

    __tablename__ = "calls"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(128))
    direction: Mapped[str] = mapped_column(String(16))
    #: the caller id number as presented (raw), and the caller in E.164 (network number)
    ani_raw: Mapped[str] = mapped_column(String(128), default="")
    ani: Mapped[str | None] = mapped_column(String(32))
    caller_name: Mapped[str] = mapped_column(String(256), default="")
    dnis: Mapped[str] = mapped_column(String(128), default="")
    context: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_ms: Mapped[float | None] = mapped_column(Float)
    #: the final instruction given to FreeSWITCH ("transfer default XML queues", "hangup CALL_REJECTED")
    action: Mapped[str | None] = mapped_column(String(512))
    #: routed, rejected, challenged_failed, abandoned, failed_open, failed_closed, over_capacity, shutdown
    outcome: Mapped[str] = mapped_column(String(32), default="")
    risk: Mapped[int] = mapped_column(Integer, default=0)
    verified: Mapped[bool | None] = mapped_column(Boolean)
    #: the inputs every stage saw (number forms, privacy, direction...)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    duration: Mapped[int | None] = mapped_column(Integer)
    billsec: Mapped[int | None] = mapped_column(Integer)
    #: personal data removed on an erasure request (the row stays for statistics)
    erased: Mapped[bool] = mapped_column(Boolean, default=False)

    verdicts: Mapped[list[StageVerdict]] = relationship(
        back_populates="call", order_by="StageVerdict.seq", cascade="all, delete-orphan", lazy="selectin")

    __table_args__ = (
        Index("ix_calls_started_at", "started_at"),
        Index("ix_calls_ani_started_at", "ani", "started_at"),
    )


class StageVerdict(Base):
    """What one stage decided about one call, and why."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_uuid: Mapped[str] = mapped_column(ForeignKey("calls.uuid", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    #: continue, challenge, verified, route, reject, abandoned, error
    outcome: Mapped[str] = mapped_column(String(16))
    #: a short machine-readable code ("blocklist.hard", "flood.day") and the sentence for people
    code: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    #: false when the stage runs in shadow mode: it recorded what it would have done
    enforced: Mapped[bool] = mapped_column(Boolean, default=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    elapsed_ms: Mapped[float] = mapped_column(Float, default=0.0)

    call: Mapped[CallRecord] = relationship(back_populates="verdicts")
