"""Keyword review of recorded calls: one result row per reviewed recording (the durable claim and
cursor of the review worker) and one row per phrase heard.

Both hang off the recording (``ON DELETE CASCADE``): when retention purges a recording or erasure
deletes it, what was heard in it goes with it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fsguard.store.models.base import Base, UTCDateTime, utcnow


class ReviewResult(Base):
    """A recording's review: claimed by one worker, then done (with its hits) in one transaction.

    The unique ``recording_id`` is what makes a review happen once: a second worker cannot insert a
    claim for the same recording, and the result is only committed by the worker whose ``token``
    is still on the row. A claim whose worker died is taken over after ``review.claim_timeout``.
    """

    __tablename__ = "review_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"), unique=True)
    call_uuid: Mapped[str] = mapped_column(String(64))
    #: claimed (a worker is listening), done, skipped (nothing to listen to), failed (will be retried)
    state: Mapped[str] = mapped_column(String(16), default="claimed")
    #: the claim of the worker that holds it (a new one at each claim or take-over)
    token: Mapped[str] = mapped_column(String(36))
    claimed_by: Mapped[str] = mapped_column(String(128), default="")
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: 0 left (agent/caller), 1 right: the channel listened to
    channel: Mapped[int | None] = mapped_column(Integer)
    #: seconds of audio listened to (masked intervals left out)
    seconds: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_review_results_state", "state"),)


class ReviewHit(Base):
    """A phrase heard in the called party's (or caller's) channel, what the policy did about it,
    and who looked at it."""

    __tablename__ = "review_hits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("review_results.id", ondelete="CASCADE"), index=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"), index=True)
    call_uuid: Mapped[str] = mapped_column(String(64), index=True)
    direction: Mapped[str] = mapped_column(String(16))
    phrase: Mapped[str] = mapped_column(String(128))
    #: seconds from the start of the recording
    second: Mapped[float] = mapped_column(Float)
    end_second: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    #: flag (an operator should look) or freeze (the number was frozen)
    action: Mapped[str] = mapped_column(String(16))
    #: the freeze this hit set off or found in force (outbound_freezes.id; kept as history)
    freeze_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    review_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_review_hits_open", "reviewed_at", "id"),)
