"""Recordings: one row per recorded call, with its purpose, retention, legal hold and integrity data.

The row is handed over BEFORE FreeSWITCH is told to record (a policy's to the call writer, committed
moments later, or logged whole if the database never takes it), so there is never a file on disk
that no row accounts for (a file without a row would never be purged). Everything after it on the
call's way finds it by ``call_uuid``, never by ``id``. Size, duration and the SHA-256 are
filled in when the call ends. Masked intervals (card data spoken while the recording was paused)
are kept beside it so an auditor can see which parts of the file are silence by design.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fsguard.store.models.base import Base, UTCDateTime, utcnow


class Recording(Base):
    """A call's recording: where it is, why it was made and until when it may be kept."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: the FreeSWITCH channel uuid (one recording per call), the key its closing rows are written by;
    #: not a foreign key: the recording row is queued in the decision, the call row after it
    call_uuid: Mapped[str] = mapped_column(String(64), unique=True)
    #: absolute path of the file as FreeSWITCH writes it: <recording.dir>/YYYY/MM/DD/<uuid>.wav
    path: Mapped[str] = mapped_column(String(1024))
    node: Mapped[str] = mapped_column(String(128), default="")
    direction: Mapped[str] = mapped_column(String(16), default="inbound")
    #: the outside party in E.164 (the caller of an inbound call, the called party of an outbound one),
    #: so that erasure by number finds the recording even without its call row
    number: Mapped[str | None] = mapped_column(String(32))
    #: all, sample or on_demand
    mode: Mapped[str] = mapped_column(String(16))
    #: the recording rule that decided (its name, or "default")
    rule: Mapped[str] = mapped_column(String(128), default="")
    #: evidence, training, analytics... decides ``retain_until``
    purpose: Mapped[str] = mapped_column(String(32))
    #: the consent announcement was played (and completed) before the recording started
    consent: Mapped[bool] = mapped_column(Boolean, default=False)
    stereo: Mapped[bool] = mapped_column(Boolean, default=True)
    #: "policy" for recordings the stage started, else who asked (cli, api, an agent id)
    started_by: Mapped[str] = mapped_column(String(64), default="policy")
    #: recording, complete, missing (no file when the call ended), unreadable
    status: Mapped[str] = mapped_column(String(16), default="recording")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime)
    #: a legal hold keeps the recording whatever its retention says, through purge and erasure
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str] = mapped_column(String(512), default="")
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: seconds of audio, from the WAV header
    duration: Mapped[float | None] = mapped_column(Float)
    sha256: Mapped[str | None] = mapped_column(String(64))
    #: the last problem with this recording (file missing at the end of the call, purge failure)
    error: Mapped[str] = mapped_column(Text, default="")

    masks: Mapped[list[RecordingMask]] = relationship(
        back_populates="recording", order_by="RecordingMask.started_at", cascade="all, delete-orphan",
        passive_deletes=True, lazy="selectin")

    __table_args__ = (
        Index("ix_recordings_retain_until", "retain_until"),
        Index("ix_recordings_number", "number"),
    )


class RecordingMask(Base):
    """An interval during which the recording wrote silence (``uuid_record ... mask``), e.g. while
    the caller read out card data. ``ended_at`` is empty while the mask is on."""

    __tablename__ = "recording_masks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: who asked for the mask (cli, api, an agent id)
    requested_by: Mapped[str] = mapped_column(String(64), default="")

    recording: Mapped[Recording] = relationship(back_populates="masks")
