"""Block, allow and do-not-originate lists (fsguard/rules/lists.py does the work; the CLI's
equivalent is ``fsguard lists ...``)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Optional

import structlog
from flask import Blueprint, Response
from pydantic import Field

from fsguard.store import audit
from fsguard.rules import counters, lists
from fsguard.config import ConfigError
from fsguard.ops.web import web
from fsguard.ops.web.api import actor, region
from fsguard.ops.web.core import HTTPError, Input, Line, bad_request, json_response, off_hub

log = structlog.get_logger("fsguard.http")
bp = Blueprint("lists", __name__)

Kind = Literal["allow", "block", "dno"]


def pattern(raw: str) -> tuple[str, bool]:
    try:
        return lists.parse_pattern(raw, region())
    except lists.ListError as exc:
        raise bad_request(f"number: {exc}") from None


class ListFilters(Input):
    kind: Optional[Kind] = None
    source: Optional[Annotated[str, Field(max_length=32, pattern=r"^[a-z_]+$")]] = None
    all: bool = False
    limit: Annotated[int, Field(ge=1, le=100_000)] = 1000


@bp.get("/api/lists")
def list_entries() -> Response:
    """``?kind=block&source=auto&all=true&limit=100``"""
    f = ListFilters.from_query()

    def read() -> list[dict[str, Any]]:
        with web().app.db.begin() as session:
            return [lists.entry_dict(e) for e in lists.all_entries(
                session, kind=f.kind, source=f.source, include_expired=f.all, limit=f.limit)]

    entries = off_hub(read)
    return json_response({"entries": entries, "count": len(entries)})


class NumberQuery(Input):
    dnis: Optional[Annotated[Line, Field(max_length=64)]] = None
    all: bool = False


def number_report(number: str, is_prefix: bool, dnis_raw: str | None, include_expired: bool) -> dict[str, Any]:
    """The entries covering a number, the one that applies for a dialled number, its recent counts."""
    dnis = lists.dnis_key(dnis_raw, region()) if dnis_raw else lists.ANY_DNIS
    with web().app.db.begin() as session:
        if is_prefix:
            covering = [e for e in lists.all_entries(session, include_expired=include_expired)
                        if e.number.startswith(number)]
            applies, counts = None, {}
        else:
            covering = lists.entries_for(session, number, include_expired=include_expired)
            applies = lists.lookup(session, number, dnis)
            counts = counters.recent_counts(session, number, now=time.time())
        return {"number": number + ("*" if is_prefix else ""), "dnis": dnis,
                "applies": lists.entry_dict(applies) if applies is not None else None,
                "entries": [lists.entry_dict(e) for e in covering], "counts": counts}


@bp.get("/api/lists/<number>")
def show_number(number: str) -> Response:
    """The entries covering a number, the one that applies (``?dnis=``), and its recent call counts."""
    q = NumberQuery.from_query()
    found, is_prefix = pattern(number)
    return json_response(off_hub(number_report, found, is_prefix, q.dnis, q.all))


class EntryBody(Input):
    """``{"number": "+12125550147", "kind": "block", "level": 7, "reason": "...", "expires": "30d",
    "dnis": "5000", "action": "busy", "by": "alice"}``"""

    number: Annotated[Line, Field(max_length=64)]
    kind: Kind
    level: Optional[Annotated[int, Field(ge=0, le=lists.MAX_LEVEL)]] = None
    reason: Annotated[Line, Field(max_length=1000)] = ""
    expires: Optional[Annotated[Line, Field(max_length=40)]] = None
    dnis: Optional[Annotated[Line, Field(max_length=64)]] = None
    action: Optional[Annotated[Line, Field(max_length=128)]] = None
    by: Optional[Annotated[Line, Field(max_length=64)]] = None


def add_entry_as(who: str, via: audit.Via, *, number: str, kind: str, level: int | None, reason: str,
                 expires: str | None, dnis: str | None, action: str | None,
                 source: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validate and write a list entry and its audit line (the API and the console both add with it)."""
    try:
        spec = lists.make_spec(number, kind=kind, level=level, dnis=dnis, reason=reason, expires=expires,
                               action=action, source=source, added_by=who, region=region())
    except (lists.ListError, ConfigError) as exc:
        raise bad_request(str(exc)) from None
    with web().app.db.begin() as session:
        entry, replaced = lists.add(session, spec)
        data = lists.entry_dict(entry)
        audit.record(session, actor=who, action="list.add", subject=data["number"], reason=spec.reason, via=via,
                     details={"entry": lists.describe(data), "replaced": lists.describe(replaced) if replaced else None})
    log.info(f"{via}.list_entry_added", entry=lists.describe(data), by=who)
    return data, replaced


@bp.post("/api/lists")
def add_entry() -> Response:
    """Adds an entry; it replaces the entry the number had for that dialled number."""
    b = EntryBody.from_body()
    data, replaced = add_entry_as(actor({"by": b.by}), "api", number=b.number, kind=b.kind, level=b.level,
                                  reason=b.reason, expires=b.expires, dnis=b.dnis, action=b.action, source="api")
    return json_response({"entry": data, "replaced": replaced}, 201)


class RemoveQuery(Input):
    dnis: Optional[Annotated[Line, Field(max_length=64)]] = None
    kind: Optional[Kind] = None
    reason: Annotated[Line, Field(max_length=1000)] = ""
    by: Optional[Annotated[Line, Field(max_length=64)]] = None


def remove_entries_as(who: str, via: audit.Via, raw: str, *, dnis: str | None, kind: str | None,
                      reason: str) -> list[dict[str, Any]]:
    number, is_prefix = pattern(raw)
    key = lists.dnis_key(dnis, region()) if dnis else None
    label = number + ("*" if is_prefix else "")
    with web().app.db.begin() as session:
        gone = lists.remove(session, number, is_prefix, dnis=key, kind=kind)
        if gone:
            audit.record(session, actor=who, action="list.remove", subject=label, reason=reason, via=via,
                         details={"removed": [lists.describe(e) for e in gone]})
    if not gone:
        raise HTTPError(404, f"no entry for {label}" + (f" for calls to {key}" if key else ""))
    log.info(f"{via}.list_entries_removed", number=label, removed=len(gone), by=who)
    return gone


@bp.delete("/api/lists/<number>")
def remove_entries(number: str) -> Response:
    """``DELETE /api/lists/+12125550147?dnis=5000&kind=block&reason=...``"""
    q = RemoveQuery.from_query()
    gone = remove_entries_as(actor({"by": q.by}), "api", number, dnis=q.dnis, kind=q.kind, reason=q.reason)
    return json_response({"removed": gone})
