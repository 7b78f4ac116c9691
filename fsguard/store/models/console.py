"""Who may use the console, their sessions, and the audit trail of every change made to fsguard's
state (through the CLI, the API or the console)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fsguard.store.models.base import Base, JSONDoc, UTCDateTime, utcnow


class Operator(Base):
    """A named person with a role: viewer (reads), supervisor (changes lists, holds, freezes),
    admin (everything, operators included). The password is kept only as an argon2 hash."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: failed logins in a row; at operators.max_failures the account locks until ``locked_until``
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OperatorSession(Base):
    """A logged-in browser. The cookie holds a random token; only its SHA-256 is stored, so a
    read of the table does not give anyone a session. Kept in the database (not a signed cookie)
    so that logging out ends it on every fsguard node at once."""

    __tablename__ = "operator_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"), index=True)
    #: the form token every POST of this session must carry (synchronizer-token CSRF protection)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    client: Mapped[str] = mapped_column(String(64), default="")


class AuditEntry(Base):
    """One change: who, when, through what, to what, and why."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: the operator's name, "api:<X-Operator>", or the Unix user of a CLI command
    actor: Mapped[str] = mapped_column(String(128))
    #: cli, api or console
    via: Mapped[str] = mapped_column(String(16))
    #: e.g. list.add, list.remove, customer.save, recording.hold, outbound.freeze, policy.reload
    action: Mapped[str] = mapped_column(String(64))
    #: what was changed: a number, a call uuid, an operator's name
    subject: Mapped[str] = mapped_column(String(256), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)

    __table_args__ = (Index("ix_audit_at", "at"), Index("ix_audit_subject", "subject"))
