"""Calls: recent ones with filters, and one call with every stage's verdict and its explanation."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from flask import Blueprint, Response
from pydantic import Field
from sqlalchemy import exists, select

from fsguard.store import records
from fsguard.store.db import Database
from fsguard.store.models import CallRecord, StageVerdict
from fsguard.ops.explain import explain
from fsguard.ops.web import web
from fsguard.ops.web.api import region
from fsguard.ops.web.core import HTTPError, Input, Line, check_uuid, json_response, off_hub, to_number, to_time

bp = Blueprint("calls", __name__)

#: a call's outcome as the pipeline records it
CallOutcome = Literal["routed", "rejected", "failed_open", "failed_closed", "abandoned"]
#: a stage verdict's outcome (fsguard.call.pipeline.Outcome)
VerdictOutcome = Literal["continue", "challenge", "verified", "route", "reject", "abandoned", "error"]


class CallFilters(Input):
    """``?ani=&dnis=&since=&until=&outcome=&direction=&node=&code=&stage=&verdict=&limit=``"""

    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    ani: Optional[Annotated[Line, Field(max_length=64)]] = None
    dnis: Optional[Annotated[Line, Field(max_length=128)]] = None
    since: Optional[Annotated[Line, Field(max_length=40)]] = None
    until: Optional[Annotated[Line, Field(max_length=40)]] = None
    outcome: Optional[CallOutcome] = None
    direction: Optional[Literal["inbound", "outbound"]] = None
    node: Optional[Annotated[Line, Field(max_length=128)]] = None
    #: a verdict code (``blocklist``, ``flood_hour``, ...) that some stage of the call gave
    code: Optional[Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]] = None
    #: with ``verdict``: calls where this stage gave that verdict; alone: calls this stage saw
    stage: Optional[Annotated[str, Field(max_length=32, pattern=r"^[a-z_]+$")]] = None
    verdict: Optional[VerdictOutcome] = None


def find_calls(db: Database, f: CallFilters, default_region: str) -> list[dict[str, Any]]:
    """The calls matching the filters, newest first, in the API's shape (both the API and the
    console's Calls page list them with this)."""
    stmt = select(CallRecord).order_by(CallRecord.started_at.desc()).limit(f.limit)
    if (ani := to_number(f.ani, "ani", default_region, strict=False)) is not None:
        stmt = stmt.where(CallRecord.ani == ani)
    if f.dnis is not None:
        stmt = stmt.where(CallRecord.dnis == f.dnis)
    if (since := to_time(f.since, "since")) is not None:
        stmt = stmt.where(CallRecord.started_at >= since)
    if (until := to_time(f.until, "until")) is not None:
        stmt = stmt.where(CallRecord.started_at < until)
    if f.outcome is not None:
        stmt = stmt.where(CallRecord.outcome == f.outcome)
    if f.direction is not None:
        stmt = stmt.where(CallRecord.direction == f.direction)
    if f.node is not None:
        stmt = stmt.where(CallRecord.node == f.node)
    if f.code is not None:
        stmt = stmt.where(exists().where(StageVerdict.call_uuid == CallRecord.uuid, StageVerdict.code == f.code))
    if f.stage is not None or f.verdict is not None:
        cond = [StageVerdict.call_uuid == CallRecord.uuid]
        if f.stage is not None:
            cond.append(StageVerdict.stage == f.stage)
        if f.verdict is not None:
            cond.append(StageVerdict.outcome == f.verdict)
        stmt = stmt.where(exists().where(*cond))
    with db.begin() as session:
        return [records.call_as_dict(c) for c in session.scalars(stmt)]


def call_with_explanation(db: Database, uuid: str) -> dict[str, Any]:
    """One call as ``fsguard calls show`` sees it: the call, its verdicts and the explanation."""
    call = records.find_call(db, check_uuid(uuid))
    if call is None:
        raise HTTPError(404, f"no call {uuid}")
    data = records.call_as_dict(call)
    data["explanation"] = explain(data)
    return data


@bp.get("/api/calls")
def list_calls() -> Response:
    """Recent calls, newest first, with filters."""
    filters = CallFilters.from_query()
    calls = off_hub(find_calls, web().app.db, filters, region())
    return json_response({"calls": calls, "count": len(calls)})


class ShowQuery(Input):
    format: Optional[Literal["json", "text"]] = None


@bp.get("/api/calls/<uuid>")
def show_call(uuid: str) -> Response:
    """One call with every stage's verdict, and the explanation ``fsguard calls show`` prints."""
    query = ShowQuery.from_query()
    data = off_hub(call_with_explanation, web().app.db, check_uuid(uuid))
    if query.format == "text":
        return Response(data["explanation"] + "\n", 200, content_type="text/plain; charset=utf-8")
    return json_response(data)
