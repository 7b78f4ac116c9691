"""Routing tables: the customers fsguard knows, and the telephone numbers they call from.

A customer may call from several numbers (mobile, office, home), so numbers live in their own
table, ``customer_numbers``, with the E.164 number as its primary key:

* the call-time lookup is one primary-key probe joined to its customer, on SQLite and PostgreSQL
  alike (a numbers column on ``customers``, as JSON or text, cannot be indexed the same way on
  both databases, and a LIKE over a list is a table scan);
* the key also guarantees that a number belongs to one customer only, so the routing decision
  for a number is never ambiguous;
* adding, moving or erasing one number is one row, without rewriting a list.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fsguard.store.models.base import Base, UTCDateTime, utcnow


class Customer(Base):
    """Someone the contact centre knows: what the agent's screen shows and how the call is routed.

    Nothing here is ever played to the caller; it goes to the agent's leg and the CDR as channel
    variables (see docs/routing.rst).
    """

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: the customer's id in the business's own systems (CRM, core banking); unique when given
    account_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    vip: Mapped[bool] = mapped_column(Boolean, default=False)
    #: preferred mod_callcenter queue ("gold" or "gold@default"), used by rules with target "customer"
    queue: Mapped[str | None] = mapped_column(String(128))
    #: own agent ("1001@default"), reached through routing.agent_target
    agent: Mapped[str | None] = mapped_column(String(128))
    #: the customer's region as the business names it ("EMEA", "west"); else the number's region is used
    region: Mapped[str | None] = mapped_column(String(64))
    #: cli, import, api
    source: Mapped[str] = mapped_column(String(16), default="cli")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    numbers: Mapped[list[CustomerNumber]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", passive_deletes=True,
        order_by="CustomerNumber.number")


class CustomerNumber(Base):
    """One telephone number (E.164) of one customer."""

    __tablename__ = "customer_numbers"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="numbers")

    __table_args__ = (Index("ix_customer_numbers_customer_id", "customer_id"),)
