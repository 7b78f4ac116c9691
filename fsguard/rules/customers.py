"""Customers: fsguard's own table of who owns which number, and the operators' changes to it.

The call-time question is "who owns this number?": one primary-key probe on
``customer_numbers`` joined to ``customers`` (:func:`find`). When the table does not know the
number, the business's CRM may (fsguard.rules.crm). The operator-facing functions (add, import,
remove, erase) are below.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session, selectinload

from fsguard.rules import changes, numbers
from fsguard.store.models.base import utcnow
from fsguard.store.models.customers import Customer, CustomerNumber
from fsguard.rules.routing import NAME_RE
from fsguard.rules.spreadsheet import looks_like_formula, unescape_cell

#: the fields of a customer as fsguard reads them from its table, a CSV file or a CRM
FIELDS = ("account_id", "name", "vip", "queue", "agent", "region")


class CustomerError(ValueError):
    """Bad customer data from an operator (the message says which and why)."""


# -------------------------------------------------------------------- facts


@dataclass(frozen=True)
class CustomerInfo:
    """What is known about a caller: the facts routing and the agent's screen use."""

    #: fsguard's own id (None for a customer known only to the CRM)
    id: int | None = None
    account_id: str | None = None
    name: str = ""
    vip: bool = False
    queue: str | None = None
    agent: str | None = None
    region: str | None = None
    #: "local" (fsguard's table) or "crm"
    source: str = "local"
    numbers: tuple[str, ...] = ()
    #: how a local customer was entered: cli, import, api
    added_via: str | None = None

    @property
    def customer_id(self) -> str:
        """The id shown on the agent's screen: the business's account id, else fsguard's own id."""
        return self.account_id or (str(self.id) if self.id is not None else "")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["numbers"] = list(self.numbers)
        return data

    def routing_inputs(self) -> dict[str, Any]:
        """What a replay needs to route this caller again (no name: nothing personal beyond that)."""
        return {"account_id": self.account_id, "vip": self.vip, "queue": self.queue, "agent": self.agent,
                "region": self.region, "source": self.source}

    @classmethod
    def from_inputs(cls, stored: dict[str, Any], number: str | None) -> CustomerInfo:
        """A CRM customer as :meth:`routing_inputs` stored it with the call (for a replay)."""
        def text(key: str) -> str | None:
            value = stored.get(key)
            return value if isinstance(value, str) else None

        return cls(id=None, account_id=text("account_id"), vip=stored.get("vip") is True, queue=text("queue"),
                   agent=text("agent"), region=text("region"), source="crm",
                   numbers=(number,) if number else ())

    @classmethod
    def from_row(cls, row: Customer) -> CustomerInfo:
        return cls(id=row.id, account_id=row.account_id, name=row.name, vip=row.vip, queue=row.queue,
                   agent=row.agent, region=row.region, source="local",
                   numbers=tuple(n.number for n in row.numbers) if "numbers" in row.__dict__ else (),
                   added_via=row.source)


#: built once: it runs for every inbound call
_FIND = (select(Customer.id, Customer.account_id, Customer.name, Customer.vip, Customer.queue, Customer.agent,
                Customer.region)
         .join(CustomerNumber, CustomerNumber.customer_id == Customer.id)
         .where(CustomerNumber.number == bindparam("number")))


def find(session: Session, number: str) -> CustomerInfo | None:
    """The customer who owns ``number`` (E.164): one primary-key probe, joined."""
    row = session.execute(_FIND, {"number": number}).first()
    if row is None:
        return None
    return CustomerInfo(id=row.id, account_id=row.account_id, name=row.name, vip=row.vip, queue=row.queue,
                        agent=row.agent, region=row.region, source="local", numbers=(number,))


# ------------------------------------------------------------ the operator


def normalise_customer(values: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Check and tidy operator-given fields (from the CLI or a CSV row); raises CustomerError."""
    out: dict[str, Any] = {}
    prefix = f"{where}: " if where else ""
    for key in ("name", "account_id", "region"):
        if key in values and values[key] is not None:
            text_value = str(values[key]).strip()
            if re.search(r"[\x00-\x1f\x7f]", text_value):
                raise CustomerError(f"{prefix}{key} contains control characters")
            limit = {"name": 256, "account_id": 64, "region": 64}[key]
            if len(text_value) > limit:
                raise CustomerError(f"{prefix}{key} is longer than {limit} characters")
            if key != "name" and looks_like_formula(text_value):
                # an identifier never starts like a spreadsheet formula (=, +, -, @); a name may,
                # and is written as text in every CSV export (fsguard.rules.spreadsheet)
                raise CustomerError(f"{prefix}{key} {text_value!r} cannot start with =, +, -, or @")
            out[key] = text_value or None
    if "name" in out:
        out["name"] = out["name"] or ""
    for key in ("queue", "agent"):
        if key in values and values[key] is not None:
            text_value = str(values[key]).strip()
            if text_value and not NAME_RE.match(text_value):
                kind = "an agent" if key == "agent" else "a queue"
                raise CustomerError(f"{prefix}{key} {text_value!r} is not {kind} name "
                                    "(letters, digits, . _ - + and an optional @domain)")
            out[key] = text_value or None
    if "vip" in values and values["vip"] is not None:
        vip = values["vip"]
        if isinstance(vip, str):
            low = vip.strip().lower()
            if low not in ("", "0", "1", "true", "false", "yes", "no", "y", "n"):
                raise CustomerError(f"{prefix}vip must be true/false/yes/no/1/0, got {vip!r}")
            vip = low in ("1", "true", "yes", "y")
        out["vip"] = bool(vip)
    return out


def parse_numbers(raw: Iterable[str], region: str, *, where: str = "") -> list[str]:
    """Operator-typed numbers in E.164; CustomerError naming the bad one."""
    out: list[str] = []
    for item in raw:
        for piece in re.split(r"[;|]", item):
            if not piece.strip():
                continue
            try:
                e164 = numbers.to_e164(piece.strip(), region)
            except numbers.InvalidNumber as exc:
                raise CustomerError(f"{where + ': ' if where else ''}{exc}") from None
            if e164 not in out:
                out.append(e164)
    return out


@dataclass
class Saved:
    customer: CustomerInfo
    created: bool
    added_numbers: list[str]


def save(session: Session, numbers_: list[str], fields: dict[str, Any], *, source: str = "cli") -> Saved:
    """Add a customer, or update the one these numbers (or this account id) belong to.

    A customer is found by ``account_id`` when one is given, else by any of the numbers. A number
    that already belongs to another customer is an error (move it with ``customers remove`` first):
    a number routes to one customer only.
    """
    account = fields.get("account_id")
    by_account = session.scalars(select(Customer).where(Customer.account_id == account)).first() if account else None
    owners = {n.number: n.customer for n in session.scalars(
        select(CustomerNumber).options(selectinload(CustomerNumber.customer))
        .where(CustomerNumber.number.in_(numbers_)))} if numbers_ else {}
    owner_ids = {c.id for c in owners.values()}
    customer: Customer | None
    if by_account is not None:
        customer = by_account
        others = {n: c for n, c in owners.items() if c.id != customer.id}
    elif len(owner_ids) > 1:
        raise CustomerError("these numbers belong to different customers: "
                            + ", ".join(f"{n} ({_who(c)})" for n, c in owners.items()))
    else:
        customer = next(iter(owners.values()), None)
        others = {}
        if customer is not None and account and customer.account_id and customer.account_id != account:
            raise CustomerError(f"{next(iter(owners))} belongs to customer {_who(customer)}, not to account "
                                f"{account}; remove it first (fsguard customers remove {next(iter(owners))})")
    if others:
        n, c = next(iter(others.items()))
        raise CustomerError(f"{n} already belongs to customer {_who(c)}; remove it first "
                            f"(fsguard customers remove {n})")
    created = customer is None
    if customer is None:
        if not numbers_:
            raise CustomerError("a new customer needs at least one number")
        customer = Customer(name="", vip=False, source=source, created_at=utcnow())
        session.add(customer)
    for key, value in fields.items():
        setattr(customer, key, value)
    customer.updated_at = utcnow()
    session.flush()
    added = [n for n in numbers_ if n not in owners]
    for n in added:
        session.add(CustomerNumber(number=n, customer_id=customer.id, created_at=utcnow()))
    session.flush()
    session.refresh(customer, ["numbers"])
    changes.changed(session, "customer", [n.number for n in customer.numbers])
    return Saved(CustomerInfo.from_row(customer), created, added)


def _who(c: Customer) -> str:
    return f"{c.account_id} (id {c.id})" if c.account_id else f"id {c.id}"


@dataclass
class ImportResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    numbers: int = 0
    errors: list[str] = field(default_factory=list)


#: CSV header names accepted for each field
CSV_COLUMNS = {"number": "numbers", "numbers": "numbers", "phone": "numbers", "phones": "numbers",
               "name": "name", "account": "account_id", "account_id": "account_id", "vip": "vip",
               "queue": "queue", "agent": "agent", "region": "region"}


def import_csv(session: Session, stream: io.TextIOBase | Any, region: str, *, source: str = "import",
               skip_invalid: bool = False) -> ImportResult:
    """Add or update customers from CSV (header row: number(s), name, account, vip, queue, agent, region).

    Several numbers in one cell are separated by ``;``; rows with the same account are one customer.
    An empty cell leaves that field of an existing customer as it is.
    All rows are read and checked first. With an error and without ``skip_invalid`` the result
    lists it and the caller rolls the transaction back, so a bad file changes nothing.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise CustomerError("the file is empty (expected a header row: number,name,account,vip,queue,agent,region)") \
            from None
    columns: list[str | None] = []
    for name in header:
        key = name.strip().lower().replace(" ", "_")
        if key and key not in CSV_COLUMNS:
            raise CustomerError(f"line 1: unknown column {name!r} (known: number, name, account, vip, queue, "
                                "agent, region)")
        columns.append(CSV_COLUMNS.get(key))
    if "numbers" not in columns:
        raise CustomerError("line 1: the header has no number column")
    result = ImportResult()
    rows: list[tuple[int, list[str], dict[str, Any]]] = []
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            result.errors.append(f"line {line}: {len(cells)} cells for {len(columns)} columns")
            continue
        record: dict[str, Any] = {}
        for col, cell in zip(columns, cells):
            if col and cell.strip():   # an empty cell leaves the field as it is
                record[col] = unescape_cell(cell)   # what export wrote as text, back as it was
        try:
            nums = parse_numbers([record.pop("numbers", "")], region, where=f"line {line}")
            if not nums:
                raise CustomerError(f"line {line}: no number")
            fields_ = normalise_customer(record, where=f"line {line}")
        except CustomerError as exc:
            result.errors.append(str(exc))
            continue
        rows.append((line, nums, fields_))
    if result.errors and not skip_invalid:
        return result
    for line, nums, fields_ in rows:
        try:
            saved = save(session, nums, fields_, source=source)   # checks everything before writing
        except CustomerError as exc:
            result.errors.append(f"line {line}: {exc}")
            if not skip_invalid:
                return result
            continue
        result.rows += 1
        result.created += saved.created
        result.updated += not saved.created
        result.numbers += len(saved.added_numbers)
    return result


def get(session: Session, *, number: str | None = None, account_id: str | None = None) -> Customer | None:
    """A customer row (with its numbers) by number or account id."""
    query = select(Customer).options(selectinload(Customer.numbers))
    if number is not None:
        query = query.join(CustomerNumber).where(CustomerNumber.number == number)
    elif account_id is not None:
        query = query.where(Customer.account_id == account_id)
    else:
        raise ValueError("number or account_id")
    return session.scalars(query).first()


def listing(session: Session, *, vip_only: bool = False, limit: int | None = None) -> list[CustomerInfo]:
    query = select(Customer).options(selectinload(Customer.numbers)).order_by(Customer.id)
    if vip_only:
        query = query.where(Customer.vip.is_(True))
    if limit:
        query = query.limit(limit)
    return [CustomerInfo.from_row(c) for c in session.scalars(query)]


def count(session: Session) -> tuple[int, int]:
    """(customers, numbers)."""
    return (session.scalar(select(func.count()).select_from(Customer)) or 0,
            session.scalar(select(func.count()).select_from(CustomerNumber)) or 0)


def remove_number(session: Session, number: str) -> str | None:
    """Take a number off its customer (and drop a customer left without numbers). None if unknown."""
    owner = get(session, number=number)
    if owner is None:
        return None
    session.execute(delete(CustomerNumber).where(CustomerNumber.number == number))
    changes.changed(session, "customer", [number])
    remaining = [n.number for n in owner.numbers if n.number != number]
    if not remaining:
        session.execute(delete(Customer).where(Customer.id == owner.id))
        return f"removed {number} and customer {_who(owner)}, who had no other number"
    return f"removed {number} from customer {_who(owner)} ({len(remaining)} number(s) left)"


def remove_customer(session: Session, account_id: str) -> str | None:
    owner = get(session, account_id=account_id)
    if owner is None:
        return None
    count_ = len(owner.numbers)
    session.execute(delete(CustomerNumber).where(CustomerNumber.customer_id == owner.id))
    session.execute(delete(Customer).where(Customer.id == owner.id))
    changes.changed(session, "customer", [n.number for n in owner.numbers])
    return f"removed customer {_who(owner)} and {count_} number(s)"


def erase_number(session: Session, number: str) -> tuple[list[str], list[str]]:
    """Erasure by number (``fsguard erase``): the whole customer record this number belongs to.

    The record describes the person who owns the number: name, account id, VIP flag, preferences
    and all of their numbers go. Returns what was done, and the numbers the record held (the
    erasure has the CRM client forget them too; a CRM's own data stays the CRM's).
    """
    owner = get(session, number=number)
    if owner is None:
        return ["no customer record holds this number"], []
    nums = [n.number for n in owner.numbers]
    session.execute(delete(CustomerNumber).where(CustomerNumber.customer_id == owner.id))
    session.execute(delete(Customer).where(Customer.id == owner.id))
    changes.changed(session, "customer", nums)
    return [f"deleted customer id {owner.id}{' (account ' + owner.account_id + ')' if owner.account_id else ''}"
            f" with name, preferences and {len(nums)} number(s)"], nums
