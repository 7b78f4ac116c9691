"""Numbers agents dial out to (fsguard/rules/freeze.py does the work; the CLI's equivalent is
``fsguard outbound ...``): frozen numbers, attempts per number, freeze and unfreeze."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Optional, Union

import structlog
from flask import Blueprint, Response
from pydantic import Field

from fsguard.store import audit
from fsguard.rules import freeze
from fsguard.ops.web import web
from fsguard.ops.web.api import actor, region
from fsguard.ops.web.core import HTTPError, Input, Line, bad_request, json_response, off_hub

log = structlog.get_logger("fsguard.http")
bp = Blueprint("outbound", __name__)


def dialled(raw: str | None) -> str:
    number = freeze.dialled_number(raw or "", region())
    if number is None:
        raise bad_request(f"number: {raw!r} is not a telephone number (region {region()}); give it in E.164, "
                          "e.g. +15557654321")
    return number


def frozen_rows() -> list[dict[str, Any]]:
    with web().app.db.begin() as session:
        return [f.as_dict() for f in freeze.frozen(session)]


@bp.get("/api/outbound/frozen")
def frozen_numbers() -> Response:
    rows = off_hub(frozen_rows)
    return json_response({"frozen": rows, "count": len(rows)})


class FreezeBody(Input):
    """``{"number": "+15557654321", "reason": "asked not to be called", "days": 30}`` (days: default
    ``outbound.freeze_for``); replaces a freeze in force."""

    number: Annotated[Line, Field(max_length=64)]
    reason: Annotated[Line, Field(min_length=1, max_length=1000)]
    days: Optional[Union[Annotated[int, Field(strict=True, gt=0, le=3650)],
                         Annotated[float, Field(strict=True, gt=0, le=3650)]]] = None
    by: Optional[Annotated[Line, Field(max_length=64)]] = None

    messages: ClassVar[dict[str, str]] = {"days": "expected a number of days above 0 and at most 3650"}


def freeze_as(who: str, via: audit.Via, raw: str, reason: str, days: float | None) -> tuple[Any, list[Any]]:
    number = dialled(raw)
    reason = " ".join(reason.split())
    if not reason:
        raise bad_request("reason: required")
    seconds = days * 86400 if days is not None else web().app.settings.outbound.freeze_seconds
    with web().app.db.begin() as session:
        new, replaced = freeze.freeze(session, number, reason=reason, seconds=seconds, source="operator", by=who)
        audit.record(session, actor=who, action="outbound.freeze", subject=number, reason=reason, via=via,
                     details={"until": new.until.isoformat()})
    log.info(f"{via}.outbound_frozen", number=number, until=new.until.isoformat(), by=who)
    return new, replaced


@bp.post("/api/outbound/freeze")
def freeze_number() -> Response:
    b = FreezeBody.from_body()
    new, replaced = freeze_as(actor({"by": b.by}), "api", b.number, b.reason, b.days)
    return json_response({"freeze": new.as_dict(), "replaced": [f.as_dict() for f in replaced]}, 201)


class UnfreezeQuery(Input):
    reason: Annotated[Line, Field(max_length=1000)] = ""
    by: Optional[Annotated[Line, Field(max_length=64)]] = None


def unfreeze_as(who: str, via: audit.Via, raw: str, reason: str) -> list[Any]:
    number = dialled(raw)
    reason = " ".join(reason.split())
    with web().app.db.begin() as session:
        lifted = freeze.unfreeze(session, number, by=who, reason=reason)
        if lifted:
            audit.record(session, actor=who, action="outbound.unfreeze", subject=number, reason=reason, via=via)
    if not lifted:
        raise HTTPError(404, f"{number} is not frozen")
    log.info(f"{via}.outbound_unfrozen", number=number, by=who)
    return lifted


@bp.delete("/api/outbound/freeze/<number>")
def unfreeze_number(number: str) -> Response:
    """``DELETE /api/outbound/freeze/+15557654321?reason=customer+called+back``"""
    q = UnfreezeQuery.from_query()
    lifted = unfreeze_as(actor({"by": q.by}), "api", number, q.reason)
    return json_response({"lifted": [f.as_dict() for f in lifted]})


class AttemptsQuery(Input):
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


def attempts_report(number: str, limit: int) -> dict[str, Any]:
    rules = web().app.settings.outbound
    with web().app.db.begin() as session:
        frozen = freeze.active_freeze(session, number)
        return {"number": number, "frozen": frozen.as_dict() if frozen else None,
                "strikes": freeze.strikes(session, number, rules), "threshold": rules.threshold,
                "attempts": [freeze.attempt_as_dict(r) for r in freeze.attempts(session, number, limit)],
                "freezes": [f.as_dict() for f in freeze.freezes(session, number)]}


@bp.get("/api/outbound/attempts/<number>")
def outbound_attempts(number: str) -> Response:
    q = AttemptsQuery.from_query()
    return json_response(off_hub(attempts_report, dialled(number), q.limit))
