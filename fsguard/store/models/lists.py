"""Screening tables: the allow / block / Do-Not-Originate list, and the per-number call counters
that flood and nuisance blocking decide on at call time.

Both are keyed for one indexed lookup per call:

* ``list_entries`` is unique on (number, dnis, is_prefix): a number has one status per dialled
  number (allowed, blocked at a level, or one of our own Do-Not-Originate numbers). A prefix
  entry (``+1900*``) stores ``+1900`` with ``is_prefix`` true; ``dnis`` is ``*`` for every
  dialled number. The unique index starts with ``number``, so ``number IN (<every prefix of
  the caller>)`` is one index probe per prefix.
* ``call_counters`` holds one row per (number, dnis, five-minute bucket); a call increments its
  row with an upsert that also returns the sums over the hour and the day (see fsguard.rules.counters).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fsguard.store.models.base import Base, UTCDateTime, utcnow

#: the ``dnis`` of an entry or counter that applies to every dialled number
ANY_DNIS = "*"


class ListEntry(Base):
    """One operator decision (or automatic block) about a caller number or a range of numbers."""

    __tablename__ = "list_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: E.164 (``+15551234567``), or for a prefix entry the prefix without its ``*`` (``+1900``)
    number: Mapped[str] = mapped_column(String(32))
    is_prefix: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the dialled number this entry is limited to (E.164 when it is a valid number), or ``*``
    dnis: Mapped[str] = mapped_column(String(64), default=ANY_DNIS)
    #: allow, block or dno
    kind: Mapped[str] = mapped_column(String(8))
    #: block level: 0 pass, 1-5 soft (must verify), 6 and above hard (rejected unanswered)
    level: Mapped[int] = mapped_column(Integer, default=0)
    #: what a hard block does: "hangup CALL_REJECTED", "hangup USER_BUSY", "transfer 9999 XML announcements";
    #: None means screening.hard_action
    action: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text, default="")
    #: cli, import, auto (flood / nuisance / another stage), api
    source: Mapped[str] = mapped_column(String(16), default="cli")
    #: for automatic entries, the rule that made it (flood.hour, flood.day, nuisance, ...)
    code: Mapped[str] = mapped_column(String(64), default="")
    #: who added it (operator login, node id for automatic entries)
    added_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: None: until removed; an expired entry no longer applies (and is purged after a while)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("number", "dnis", "is_prefix", name="uq_list_entries_key"),
        Index("ix_list_entries_expires_at", "expires_at"),
    )

    @property
    def pattern(self) -> str:
        """The number as an operator writes it: ``+15551234567`` or ``+1900*``."""
        return f"{self.number}*" if self.is_prefix else self.number

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


class CallCounter(Base):
    """Calls (and short calls) from one number in one five-minute bucket, for one dialled number or all (``*``)."""

    __tablename__ = "call_counters"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)
    dnis: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: start of the bucket, seconds since the epoch (UTC), a multiple of the bucket length
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    #: calls that ended within screening.nuisance_seconds (call-and-hang-up)
    short_calls: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_call_counters_bucket", "bucket"),)
