"""Operator accounts for the console: roles, argon2 password hashes, login with lock-out, sessions.

Roles, each including the one before:

* ``viewer``: reads calls, lists, customers, recordings' facts, outbound numbers, the audit trail;
* ``supervisor``: also blocks and allows callers, edits lists and customers, holds and releases
  recordings, freezes and unfreezes numbers;
* ``admin``: also manages operators.

Passwords are hashed with argon2id (argon2-cffi, the password hashing competition's winner, with
its maintained defaults); ``needs_rehash`` upgrades old hashes at the next login. A wrong password
counts against the account: after ``MAX_FAILURES`` in a row it is locked for ``LOCK_SECONDS``,
even for the right password, so a password cannot be guessed online.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fsguard.store.models.console import Operator, OperatorSession

ROLES = ("viewer", "supervisor", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}"
MIN_PASSWORD = 10
#: wrong passwords in a row before the account locks, and for how long
MAX_FAILURES = 5
LOCK_SECONDS = 15 * 60
#: a session lasts this long from login
SESSION_SECONDS = 12 * 3600

_hasher = PasswordHasher()


class OperatorError(ValueError):
    """A request about operators that cannot be done (the message says why)."""


@dataclass(frozen=True)
class Who:
    """The operator behind a request, as the pages and handlers need it."""

    id: int
    name: str
    role: str
    csrf_token: str = ""

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_RE, name or ""):
        raise OperatorError(f"operator name {name!r}: use letters, digits and _ . @ - (at most 64)")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise OperatorError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"the password must have at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def new_token() -> str:
    """A generated password for an operator who will not choose one (printed once, stored hashed)."""
    return secrets.token_urlsafe(18)


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Operator).where(Operator.disabled.is_(False))) or 0)


def get(session: Session, name: str) -> Operator | None:
    return session.scalars(select(Operator).where(Operator.name == name)).first()


def add(session: Session, name: str, role: str, password: str) -> Operator:
    check_name(name)
    check_role(role)
    if get(session, name) is not None:
        raise OperatorError(f"operator {name} exists (change it with 'fsguard operators set')")
    operator = Operator(name=name, role=role, password_hash=hash_password(password))
    session.add(operator)
    session.flush()
    return operator


def update(session: Session, name: str, *, role: str | None = None, password: str | None = None,
           disabled: bool | None = None, unlock: bool = False) -> Operator:
    operator = get(session, name)
    if operator is None:
        raise OperatorError(f"no operator {name}")
    if role is not None:
        operator.role = check_role(role)
    if password is not None:
        operator.password_hash = hash_password(password)
    if disabled is not None:
        operator.disabled = disabled
    if unlock or password is not None:
        operator.failed_logins, operator.locked_until = 0, None
    if disabled or password is not None or role is not None:
        end_sessions(session, operator.id)
    return operator


def remove(session: Session, name: str) -> None:
    operator = get(session, name)
    if operator is None:
        raise OperatorError(f"no operator {name}")
    end_sessions(session, operator.id)
    session.delete(operator)


def listing(session: Session) -> list[Operator]:
    return list(session.scalars(select(Operator).order_by(Operator.name)))


def as_dict(operator: Operator) -> dict[str, Any]:
    return {"name": operator.name, "role": operator.role, "disabled": operator.disabled,
            "created_at": operator.created_at.isoformat() if operator.created_at else None,
            "last_login_at": operator.last_login_at.isoformat() if operator.last_login_at else None,
            "failed_logins": operator.failed_logins,
            "locked_until": operator.locked_until.isoformat() if operator.locked_until else None}


# ------------------------------------------------------------------ login


@dataclass
class LoginResult:
    who: Who | None
    token: str = ""
    #: why it failed, in words safe to show (never says whether the name exists)
    problem: str = ""


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def login(session: Session, name: str, password: str, *, client: str = "",
          now: datetime | None = None) -> LoginResult:
    """Check a name and password; on success open a session and return its cookie token."""
    now = now or datetime.now(timezone.utc)
    refused = LoginResult(None, problem="wrong name or password")
    operator = get(session, name) if re.fullmatch(NAME_RE, name or "") else None
    if operator is None or operator.disabled:
        _hasher_burn(password)            # the same time whether or not the name exists
        return refused
    if operator.locked_until is not None and operator.locked_until > now:
        return LoginResult(None, problem="too many failed logins: this account is locked for now; "
                                         "try later or ask an admin ('fsguard operators set NAME --unlock')")
    try:
        _hasher.verify(operator.password_hash, password)
    except (VerificationError, InvalidHashError):
        operator.failed_logins += 1
        if operator.failed_logins >= MAX_FAILURES:
            operator.locked_until = now + timedelta(seconds=LOCK_SECONDS)
            operator.failed_logins = 0
        return refused
    if _hasher.check_needs_rehash(operator.password_hash):
        operator.password_hash = _hasher.hash(password)
    operator.failed_logins, operator.locked_until, operator.last_login_at = 0, None, now
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(OperatorSession(token_hash=_hash_token(token), operator_id=operator.id, csrf_token=csrf,
                                created_at=now, expires_at=now + timedelta(seconds=SESSION_SECONDS),
                                client=client[:64]))
    session.execute(delete(OperatorSession).where(OperatorSession.expires_at < now))
    return LoginResult(Who(operator.id, operator.name, operator.role, csrf), token)


def _hasher_burn(password: str) -> None:
    try:
        _hasher.verify(_dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        pass


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to verify against when the name is unknown (made on first use, not at import)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def who(session: Session, token: str, now: datetime | None = None) -> Who | None:
    """The operator a session cookie belongs to, or None (no such session, expired, disabled)."""
    if not token or len(token) > 128:
        return None
    now = now or datetime.now(timezone.utc)
    row = session.execute(select(OperatorSession, Operator).join(Operator, Operator.id == OperatorSession.operator_id)
                          .where(OperatorSession.token_hash == _hash_token(token))).first()
    if row is None:
        return None
    sess, operator = row
    if sess.expires_at <= now or operator.disabled:
        return None
    return Who(operator.id, operator.name, operator.role, sess.csrf_token)


def logout(session: Session, token: str) -> None:
    session.execute(delete(OperatorSession).where(OperatorSession.token_hash == _hash_token(token)))


def end_sessions(session: Session, operator_id: int) -> None:
    session.execute(delete(OperatorSession).where(OperatorSession.operator_id == operator_id))
