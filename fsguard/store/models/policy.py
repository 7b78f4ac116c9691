"""The change counter every node's in-process policy snapshot follows (fsguard.rules.snapshot).

Every transaction that changes what a call is decided on (list entries, customers and their
numbers, outbound freezes) bumps ``policy_version`` (one row) and writes down, in
``policy_changes``, which keys it changed under the version it bumped to. A node polls the
version (one tiny SELECT a second) and, when it moved, reloads only the keys changed since.

Writers take the version row's lock until they commit, so versions become visible in order: a
node that sees version V has every change up to V committed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fsguard.store.models.base import Base


class PolicyVersion(Base):
    """One row (id 1): the version of the policy data, bumped by every change to it."""

    __tablename__ = "policy_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class PolicyChange(Base):
    """A key one version changed: ``kind`` list (key: the stored number or prefix), customer (key:
    a number) or freeze (key: a number); key ``*`` means every key of that kind."""

    __tablename__ = "policy_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_policy_changes_version", "version"),)
