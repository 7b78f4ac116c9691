"""Customers (fsguard/rules/customers.py does the work; the CLI's equivalent is ``fsguard customers ...``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Optional, Union

import structlog
from flask import Blueprint, Response
from pydantic import Field

from fsguard.store import audit
from fsguard.rules import customers
from fsguard.ops.web import web
from fsguard.ops.web.api import actor, region
from fsguard.ops.web.core import HTTPError, Input, Line, bad_request, json_response, off_hub

log = structlog.get_logger("fsguard.http")
bp = Blueprint("customers", __name__)


def customer_number(raw: str) -> str:
    try:
        found = customers.parse_numbers([raw], region())
    except customers.CustomerError as exc:
        raise bad_request(f"number: {exc}") from None
    if len(found) != 1:
        raise bad_request(f"number: expected one telephone number, got {raw!r}")
    return found[0]


class CustomerFilters(Input):
    vip: bool = False
    limit: Annotated[int, Field(ge=1, le=100_000)] = 1000


def customer_listing(vip: bool, limit: int) -> dict[str, Any]:
    with web().app.db.begin() as session:
        found = [c.as_dict() for c in customers.listing(session, vip_only=vip, limit=limit)]
        total, numbers_ = customers.count(session)
    return {"customers": found, "count": len(found), "total": total, "numbers": numbers_}


@bp.get("/api/customers")
def list_customers() -> Response:
    """``?vip=true&limit=100``"""
    f = CustomerFilters.from_query()
    return json_response(off_hub(customer_listing, f.vip, f.limit))


@bp.get("/api/customers/<number>")
def show_customer(number: str) -> Response:
    found = customer_number(number)

    def read() -> dict[str, Any] | None:
        with web().app.db.begin() as session:
            row = customers.get(session, number=found)
            return customers.CustomerInfo.from_row(row).as_dict() if row is not None else None

    data = off_hub(read)
    if data is None:
        raise HTTPError(404, f"no customer has the number {found}")
    return json_response(data)


class CustomerBody(Input):
    """``{"numbers": ["+442079460000"], "name": "Ada", "account_id": "C-1001", "vip": true,
    "queue": "vip", "agent": "1001@default", "region": "GB-LND"}``"""

    numbers: Optional[Union[Annotated[Line, Field(max_length=64)],
                            Annotated[list[Annotated[Line, Field(max_length=64)]], Field(max_length=100)]]] = None
    number: Optional[Annotated[Line, Field(max_length=64)]] = None
    account_id: Optional[Line] = None
    name: Optional[Line] = None
    vip: Optional[Union[bool, Line]] = None
    queue: Optional[Line] = None
    agent: Optional[Line] = None
    region: Optional[Line] = None
    by: Optional[Annotated[Line, Field(max_length=64)]] = None

    messages: ClassVar[dict[str, str]] = {
        "numbers": "expected a list of at most 100 telephone numbers (strings)"}


def save_customer_as(who: str, via: audit.Via, raw_numbers: list[str], fields: dict[str, Any],
                     source: str) -> customers.Saved:
    try:
        numbers_ = customers.parse_numbers(raw_numbers, region())
        values = customers.normalise_customer(fields)
        with web().app.db.begin() as session:
            saved = customers.save(session, numbers_, values, source=source)
            audit.record(session, actor=who, action="customer.save", subject=saved.customer.customer_id, via=via,
                         details={"created": saved.created, "added_numbers": saved.added_numbers,
                                  "fields": {k: v for k, v in values.items() if k != "name"}})
    except customers.CustomerError as exc:
        raise bad_request(str(exc)) from None
    log.info(f"{via}.customer_saved", customer=saved.customer.customer_id, created=saved.created, by=who)
    return saved


@bp.post("/api/customers")
def save_customer() -> Response:
    """Adds a customer, or updates the one with that account id (or those numbers)."""
    b = CustomerBody.from_body()
    raw = b.numbers if b.numbers is not None else b.number
    raw_list = [raw] if isinstance(raw, str) else list(raw or [])
    fields = {k: getattr(b, k) for k in customers.FIELDS if k in b.model_fields_set}
    saved = save_customer_as(actor({"by": b.by}), "api", raw_list, fields, "api")
    return json_response({**saved.customer.as_dict(), "created": saved.created,
                          "added_numbers": saved.added_numbers}, 201 if saved.created else 200)


class RemoveQuery(Input):
    reason: Annotated[Line, Field(max_length=1000)] = ""
    by: Optional[Annotated[Line, Field(max_length=64)]] = None


def remove_customer_number_as(who: str, via: audit.Via, number: str, reason: str) -> str:
    with web().app.db.begin() as session:
        said = customers.remove_number(session, number)
        if said is not None:
            audit.record(session, actor=who, action="customer.remove_number", subject=number, reason=reason,
                         via=via, details={"result": said})
    if said is None:
        raise HTTPError(404, f"no customer has the number {number}")
    log.info(f"{via}.customer_number_removed", number=number, by=who)
    return said


@bp.delete("/api/customers/<number>")
def remove_customer_number(number: str) -> Response:
    """Take a number off its customer (the customer goes with its last number)."""
    q = RemoveQuery.from_query()
    said = remove_customer_number_as(actor({"by": q.by}), "api", customer_number(number), q.reason)
    return json_response({"removed": said})
