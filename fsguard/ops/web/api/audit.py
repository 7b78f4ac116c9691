"""The audit trail for machines: ``GET /api/audit`` (``fsguard audit`` and the console's Audit page
read the same rows)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from flask import Blueprint, Response
from pydantic import Field

from fsguard.store import audit
from fsguard.ops.web import web
from fsguard.ops.web.core import Input, Line, json_response, off_hub, to_time

bp = Blueprint("audit", __name__)


class AuditFilters(Input):
    """``?since=7d&until=&actor=&action=list&subject=+12025550143&via=console&limit=100``"""

    since: Optional[Annotated[Line, Field(max_length=40)]] = None
    until: Optional[Annotated[Line, Field(max_length=40)]] = None
    actor: Optional[Annotated[Line, Field(max_length=128)]] = None
    action: Optional[Annotated[str, Field(max_length=64, pattern=r"^[a-z_.]+$")]] = None
    subject: Optional[Annotated[Line, Field(max_length=256)]] = None
    via: Optional[Literal["cli", "api", "console"]] = None
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


@bp.get("/api/audit")
def audit_entries() -> Response:
    f = AuditFilters.from_query()
    since, until = to_time(f.since, "since"), to_time(f.until, "until")

    def read() -> list[dict[str, Any]]:
        with web().app.db.begin() as session:
            return [audit.as_dict(e) for e in audit.entries(session, since=since, until=until, actor=f.actor,
                                                            action=f.action, subject=f.subject, via=f.via,
                                                            limit=f.limit)]

    rows = off_hub(read)
    return json_response({"entries": rows, "count": len(rows)})
