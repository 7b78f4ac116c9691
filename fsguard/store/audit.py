"""The audit trail: every change to fsguard's state, with who made it, when, through what and why.

Whatever changes something (a list entry, a customer, a recording held or released or purged, a
number frozen or unfrozen, an erasure, a policy reload, an operator account) calls ``record`` in
the same transaction as the change, so a change and its audit line are committed together or not
at all::

    with db.begin() as session:
        lists.add(session, spec)
        audit.record(session, actor="alice", action="list.add", subject="+12025550143",
                     reason="abusive caller", via="console", details={"level": 8})

``fsguard audit`` and the console's Audit page read it back.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from fsguard.store.models.console import AuditEntry

log = structlog.get_logger("fsguard.store.audit")

Via = Literal["cli", "api", "console"]
VIAS = ("cli", "api", "console")


def record(session: Session, *, actor: str, action: str, subject: str = "", reason: str = "",
           via: Via, details: dict[str, Any] | None = None, db: Any = None) -> AuditEntry:
    """Write one audit line in the caller's transaction (and one structlog line beside it)."""
    entry = AuditEntry(actor=(actor or "unknown")[:128], via=via, action=action[:64], subject=(subject or "")[:256],
                       reason=" ".join((reason or "").split())[:2000], details=details or None)
    session.add(entry)
    # debug: the daemon's own change lines (api.list_entry_added, ...) already say it at info, and a
    # CLI command's stderr stays for its one-line errors
    log.debug("audit", actor=entry.actor, via=via, action=action, subject=entry.subject, reason=entry.reason)
    return entry


def record_now(db: Any, **kwargs: Any) -> None:
    """``record`` in a transaction of its own, for changes made by code that commits by itself
    (the recordings module opens its own sessions)."""
    with db.begin() as session:
        record(session, **kwargs)


def cli_actor() -> str:
    """The Unix user behind a CLI command (the one who ran sudo, if any)."""
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME") or "cli"


def as_dict(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at.isoformat() if entry.at else None, "actor": entry.actor,
            "via": entry.via, "action": entry.action, "subject": entry.subject, "reason": entry.reason,
            "details": entry.details}


def entries(session: Session, *, since: datetime | None = None, until: datetime | None = None,
            actor: str | None = None, action: str | None = None, subject: str | None = None,
            via: str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, filtered; ``action`` matches a prefix (``list`` finds list.add and list.remove)."""
    stmt = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.at < until)
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    if action:
        stmt = stmt.where((AuditEntry.action == action) | AuditEntry.action.startswith(action + "."))
    if subject:
        stmt = stmt.where(AuditEntry.subject == subject)
    if via:
        stmt = stmt.where(AuditEntry.via == via)
    return list(session.scalars(stmt))
