"""The screening lists: what the operators (and the automatic blocks) say about a caller number.

The list (table ``list_entries``) holds three kinds of entry, each for one number or a prefix
(``+1900*``), for every dialled number or one only:

* ``allow`` -- the number always passes: no block, flood rule, STIR/SHAKEN or DNO check applies;
* ``block`` with a level -- 0 pass, 1-5 soft (the caller must verify), 6 and above hard
  (rejected before answer, so the call is never billed), with an action for hard blocks;
* ``dno`` -- Do-Not-Originate: one of our own inbound-only numbers. A call *presenting* it as
  its caller id is spoofed.

The most specific entry wins: the longest number (an exact number beats a prefix of the same
length), then an entry for this dialled number over one for all, then allow over block. One
exception: an automatic block never beats an allow entry, however specific.

Finding the entry is one indexed query: a number in E.164 has at most 15 prefixes, so the query
is ``number IN (every prefix of the caller)`` on the unique index that starts with ``number``.

How often a number has called (the flood and nuisance rules) is counted apart, in
fsguard.rules.counters; a block those rules decide on is written here (:func:`auto_block`).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Sequence

from phonenumbers import PhoneMetadata
from sqlalchemy import and_, bindparam, case, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fsguard.rules import changes, numbers
from fsguard.config import ConfigError, parse_duration
from fsguard.store.models.base import utcnow
from fsguard.store.models.lists import ANY_DNIS, ListEntry
from fsguard.rules.spreadsheet import safe_cell, unescape_cell

__all__ = [
    "ANY_DNIS", "HARD_LEVEL", "ListError", "Match", "EntrySpec", "ImportReport",
    "lookup", "match_call", "add", "remove", "entries_for", "all_entries", "auto_block", "purge_expired",
    "parse_pattern", "dnis_key", "parse_action", "action_label", "parse_expiry",
    "read_csv", "import_entries", "export_rows", "describe",
]

#: block levels at or above this are hard: rejected before answer
HARD_LEVEL = 6
MAX_LEVEL = 99
KINDS = ("allow", "block", "dno")

#: the actions an operator can give a hard block, and what FreeSWITCH is told
_NAMED_ACTIONS = {"reject": "hangup CALL_REJECTED", "busy": "hangup USER_BUSY"}
_TARGET = re.compile(r"^[A-Za-z0-9_+*#.@:=/-]+( [A-Za-z0-9_+*#.@:=/-]+){0,2}\Z")
_CAUSE = re.compile(r"^[A-Z_]{3,40}\Z")


class ListError(ValueError):
    """Bad input for a list entry; the message is for the operator (and names the problem)."""


# ------------------------------------------------------------------ input forms


def parse_pattern(raw: str, region: str = "US") -> tuple[str, bool]:
    """``(stored number, is_prefix)`` for a number or prefix an operator typed.

    Numbers are accepted in any usual form (``+1 555 123 4567``, ``(555) 123-4567``,
    ``0044 20 7946 0000``) and stored in E.164. A prefix ends with ``*``: ``+1900*``, ``00449*``,
    or in national form for the default region (``1900*`` and ``900*`` in the US, ``020*`` in GB).
    """
    text = (raw or "").strip()
    if not text:
        raise ListError("a number is required")
    if text.endswith("*"):
        return _prefix(text[:-1], region), True
    try:
        return numbers.to_e164(text, region), False
    except numbers.InvalidNumber as exc:
        raise ListError(str(exc)) from None


def _prefix(text: str, region: str) -> str:
    digits = re.sub(r"[\s().\-/]", "", text)
    if digits.startswith("+"):
        body = digits[1:]
    elif digits.startswith("00"):
        body = digits[2:]
    else:
        meta = PhoneMetadata.metadata_for_region(region.upper())
        if meta is None:
            raise ListError(f"{text + '*'!r}: unknown region {region!r} to read a national prefix")
        national = meta.national_prefix or ""
        if national and digits.startswith(national):
            digits = digits[len(national):]
        body = f"{meta.country_code}{digits}"
    if not body.isdigit() or not 1 <= len(body) <= 15 or body.startswith("0"):
        raise ListError(f"{text + '*'!r} is not a valid number prefix (expected e.g. +1900*)")
    return "+" + body


_DIALLED = re.compile(r"\+?[0-9*#]+|[A-Za-z0-9][A-Za-z0-9_.*#]*")


@lru_cache(maxsize=4096)
def dnis_key(raw: str | None, region: str = "US") -> str:
    """The form a dialled number is stored and compared in: E.164 when it is a valid number,
    else the digits as dialled (an extension such as ``5000``); ``*`` for every dialled number."""
    text = (raw or "").strip()
    if text in ("", ANY_DNIS):
        return ANY_DNIS
    parsed = numbers.parse(text, region)
    if parsed.valid and parsed.e164:
        return parsed.e164
    return re.sub(r"[\s().\-/]", "", text)


def operator_dnis(raw: str | None, region: str = "US") -> str:
    """:func:`dnis_key` of a dialled number an operator gives (command line, API, import): a
    number, digits such as an extension (5000, *97) or an extension name; never a formula
    (``=1+1``) or anything else a spreadsheet or a dial string would read as more than a number.
    (A call's own dialled number is looked up as it comes, whatever it holds.)"""
    key = dnis_key(raw, region)
    if key != ANY_DNIS and not key.startswith("+") and not _DIALLED.fullmatch(key) \
            or key.startswith("+") and not key[1:].isdigit():
        raise ListError(f"dnis {raw!r}: expected a dialled number (+18005550100, 5000) or an extension name")
    return key


@lru_cache(maxsize=256)
def parse_action(text: str | None) -> str | None:
    """What a hard block does: ``reject`` (CALL_REJECTED), ``busy`` (USER_BUSY),
    ``transfer:9999 XML announcements`` (an announcement or voicemail), ``hangup:CAUSE``.
    Returns the FreeSWITCH instruction; None for no action of its own (screening.hard_action)."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    low = value.lower()
    if low in _NAMED_ACTIONS:
        return _NAMED_ACTIONS[low]
    kind, sep, arg = value.partition(":")
    if not sep:
        kind, _, arg = value.partition(" ")
    kind, arg = kind.lower().strip(), arg.strip()
    if kind == "transfer" and _TARGET.match(arg):
        return f"transfer {arg}"
    if kind == "hangup" and _CAUSE.match(arg.upper()):
        return f"hangup {arg.upper()}"
    raise ListError(f"action {text!r}: expected reject, busy, transfer:TARGET (e.g. 'transfer:9999 XML announcements') "
                    "or hangup:CAUSE")


def action_label(action: str | None) -> str:
    """The operator's form of an action (inverse of parse_action); '' for the default."""
    if not action:
        return ""
    for name, value in _NAMED_ACTIONS.items():
        if action == value:
            return name
    app, _, arg = action.partition(" ")
    return f"{app}:{arg}"


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30d`` / ``12h`` / ``90m`` from now, or a date / ISO datetime (UTC unless it says otherwise)."""
    if text is None or not str(text).strip():
        return None
    now = now or utcnow()
    value = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?[smhdwy]?", value.lower()):
        seconds = parse_duration(value, "expires")
        if seconds <= 0:
            raise ListError(f"expires {value!r}: must be in the future")
        return now + timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ListError(f"expires {value!r}: expected a duration (30d, 12h) or a date (2026-12-31)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if when <= now:
        raise ListError(f"expires {value!r} is in the past")
    return when.astimezone(timezone.utc)


# ------------------------------------------------------------------ lookup


def prefixes(e164: str) -> list[str]:
    """Every prefix of an E.164 number that a list entry may be stored under, longest first."""
    return [e164[:i] for i in range(len(e164), 1, -1)]


def _covers(entry: ListEntry, number: str) -> bool:
    return number.startswith(entry.number) if entry.is_prefix else number == entry.number


def _specificity(entry: ListEntry) -> tuple[int, bool, bool, bool]:
    return (len(entry.number), not entry.is_prefix, entry.dnis != ANY_DNIS, entry.kind == "allow")


def _winner(entries: Iterable[ListEntry], number: str) -> ListEntry | None:
    """The entry that applies to ``number`` among candidates (see the module docstring)."""
    applying = [e for e in entries if _covers(e, number)]
    if not applying:
        return None
    best = max(applying, key=_specificity)
    if best.kind == "block" and best.source == "auto":
        allows = [e for e in applying if e.kind == "allow"]
        if allows:
            return max(allows, key=_specificity)
    return best


def _candidates(session: Session, numbers_: Iterable[str], dnis: str, now: datetime) -> list[ListEntry]:
    """THE list query: every active entry stored under a prefix of one of ``numbers_`` (one indexed IN)."""
    keys: set[str] = set()
    for number in numbers_:
        if number:
            keys.update(prefixes(number))
    if not keys:
        return []
    dnis_values = [ANY_DNIS] if dnis == ANY_DNIS else [ANY_DNIS, dnis]
    return list(session.scalars(_CANDIDATES, {"keys": sorted(keys), "dnis": dnis_values, "now": now}))


#: built once: this query runs for every call, and building it anew (operators, coercions, a
#: cache key) cost more than running it
_CANDIDATES = select(ListEntry).where(
    ListEntry.number.in_(bindparam("keys", expanding=True)), ListEntry.dnis.in_(bindparam("dnis", expanding=True)),
    or_(ListEntry.expires_at.is_(None), ListEntry.expires_at > bindparam("now", type_=ListEntry.expires_at.type)),
).execution_options(populate_existing=True)


def lookup(session: Session, number_e164: str, dnis: str | None, *, now: datetime | None = None) -> ListEntry | None:
    """The entry that applies to a caller number calling ``dnis`` (any form; None: every dialled
    number), or None. One indexed query."""
    now = now or utcnow()
    key = dnis if dnis in (None, ANY_DNIS) else dnis_key(dnis)
    return _winner(_candidates(session, [number_e164], key or ANY_DNIS, now), number_e164)


@dataclass
class Match:
    """What the list says about one call: the entry for the caller's (network) number, and a
    Do-Not-Originate entry matching the number the call presents or its network number."""

    entry: ListEntry | None = None
    dno: ListEntry | None = None
    #: which number matched the DNO entry: "presented" or "network"
    dno_on: str = ""
    #: the block entry of a number screened as well (an identity asserted by an untrusted peer)
    also: ListEntry | None = None

    @property
    def allowed(self) -> bool:
        return self.entry is not None and self.entry.kind == "allow"


def match_call(session: Session, ani: str | None, presented: str | None, dnis: str,
               *, now: datetime | None = None, also: str | None = None) -> Match:
    """The list's view of a call, for the screening stage: still one indexed query.

    ``also`` is a number whose blocks apply too but whose allow entries do not (what an untrusted
    peer asserts the caller is: a blocked number stays blocked, a listed one earns nothing)."""
    now = now or utcnow()
    return match_entries(_candidates(session, [n for n in (ani, presented, also) if n], dnis, now),
                         ani, presented, also)


def match_entries(rows: Sequence[ListEntry], ani: str | None, presented: str | None,
                  also: str | None = None) -> Match:
    """The list's view of a call from the active entries stored under a prefix of its numbers
    (the database's answer, or the in-process snapshot's: fsguard.rules.snapshot)."""
    if not rows:
        return Match()
    match = Match(entry=_winner(rows, ani) if ani else None)
    if also:
        hit = _winner([e for e in rows if e.kind == "block"], also)
        match.also = hit if hit is not None and hit.level > 0 else None
    dnos = [e for e in rows if e.kind == "dno"]
    for number, where in ((presented, "presented"), (ani, "network")):
        hit = _winner(dnos, number) if number else None
        if hit is not None:
            match.dno, match.dno_on = hit, where
            break
    return match


# ------------------------------------------------------------------ changing the list


def _insert_for(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


@dataclass
class EntrySpec:
    """A list entry to write (from the CLI, an import row or the API), already validated."""

    number: str
    is_prefix: bool
    kind: str
    level: int = 0
    dnis: str = ANY_DNIS
    reason: str = ""
    expires_at: datetime | None = None
    action: str | None = None
    source: str = "cli"
    added_by: str = ""
    code: str = ""

    @property
    def key(self) -> tuple[str, str, bool]:
        return (self.number, self.dnis, self.is_prefix)

    def row(self, now: datetime) -> dict[str, Any]:
        return {"number": self.number, "is_prefix": self.is_prefix, "dnis": self.dnis, "kind": self.kind,
                "level": self.level, "action": self.action, "reason": self.reason, "source": self.source,
                "code": self.code, "added_by": self.added_by, "created_at": now, "updated_at": now,
                "expires_at": self.expires_at}


def make_spec(number: str, *, kind: str, level: int | None = None, dnis: str | None = None, reason: str = "",
              expires: str | datetime | None = None, action: str | None = None, source: str = "cli",
              added_by: str = "", region: str = "US", now: datetime | None = None) -> EntrySpec:
    """Validate an entry as an operator gives it; ListError with a clear message otherwise.
    ``expires`` is what the operator typed (30d, a date) or an already computed datetime."""
    kind = (kind or "").strip().lower()
    if kind not in KINDS:
        raise ListError(f"kind {kind!r}: expected allow, block or dno")
    stored, is_prefix = parse_pattern(number, region)
    if kind == "block":
        if level is None:
            raise ListError("a block needs a level (0 pass, 1-5 soft, 6 and above hard)")
        if not 0 <= level <= MAX_LEVEL:
            raise ListError(f"level {level}: expected 0 to {MAX_LEVEL}")
    elif level not in (None, 0):
        raise ListError(f"a level only goes with a block, not with {kind}")
    parsed_action = parse_action(action)
    if parsed_action and kind != "block":
        raise ListError(f"an action only goes with a block, not with {kind}")
    if "\n" in reason or "\r" in reason:
        reason = " ".join(reason.split())
    return EntrySpec(number=stored, is_prefix=is_prefix, kind=kind, level=level or 0,
                     dnis=operator_dnis(dnis, region), reason=reason.strip()[:1000],
                     expires_at=expires if isinstance(expires, datetime) else parse_expiry(expires, now),
                     action=parsed_action, source=source,
                     added_by=added_by[:128])


def _upsert(session: Session) -> Any:
    insert = _insert_for(session)
    stmt = insert(ListEntry)
    keep = ("id", "created_at", "number", "dnis", "is_prefix")
    return stmt.on_conflict_do_update(
        index_elements=[ListEntry.number, ListEntry.dnis, ListEntry.is_prefix],
        set_={c.name: getattr(stmt.excluded, c.name) for c in ListEntry.__table__.columns if c.name not in keep})


def add(session: Session, spec: EntrySpec, *, now: datetime | None = None) -> tuple[ListEntry, dict[str, Any] | None]:
    """Write an entry; it replaces whatever entry the same number had for the same dialled number.
    Returns the entry and a description of what it replaced (None if nothing)."""
    now = now or utcnow()
    previous = session.scalars(select(ListEntry).where(
        ListEntry.number == spec.number, ListEntry.dnis == spec.dnis, ListEntry.is_prefix == spec.is_prefix)).first()
    replaced = entry_dict(previous) if previous is not None else None
    session.execute(_upsert(session), [spec.row(now)])
    changes.changed(session, "list", [spec.number])
    session.expire_all()
    entry = session.scalars(select(ListEntry).where(
        ListEntry.number == spec.number, ListEntry.dnis == spec.dnis, ListEntry.is_prefix == spec.is_prefix)).one()
    return entry, replaced


def remove(session: Session, number: str, is_prefix: bool, *, dnis: str | None = None,
           kind: str | None = None) -> list[dict[str, Any]]:
    """Delete the entries stored for a number (for one dialled number, or every one); returns them."""
    where = [ListEntry.number == number, ListEntry.is_prefix == is_prefix]
    if dnis is not None:
        where.append(ListEntry.dnis == dnis)
    if kind is not None:
        where.append(ListEntry.kind == kind)
    gone = [entry_dict(e) for e in session.scalars(select(ListEntry).where(*where).order_by(ListEntry.dnis))]
    if gone:
        session.execute(delete(ListEntry).where(*where))
        changes.changed(session, "list", [number])
    return gone


def auto_block(session: Session, number_e164: str, *, level: int, reason: str, code: str, ttl_seconds: float,
               dnis: str | None = None, now: datetime | None = None, added_by: str = "") -> bool:
    """Block a number automatically (flood, nuisance, another stage's rule) with source ``auto``.

    Never overrides an allow entry (or a Do-Not-Originate entry), never lowers a block that is at
    least as strong, and refreshes the expiry of its own earlier automatic block. Safe when two
    nodes do it at once (a conditional upsert). Returns True if it wrote a block.
    """
    now = now or utcnow()
    key = ANY_DNIS if dnis in (None, ANY_DNIS) else dnis_key(dnis)
    written = auto_block_reason(_candidates(session, [number_e164], key, now), number_e164, key, level, reason)
    if written is None:
        return False
    row = auto_block_row(number_e164, key, level=level, reason=written, code=code, ttl_seconds=ttl_seconds,
                         now=now, added_by=added_by)
    if session.execute(auto_block_statement(session.get_bind().dialect.name).returning(ListEntry.id),
                       row).first() is None:
        return False
    changes.changed(session, "list", [number_e164])
    return True


def auto_block_reason(rows: Iterable[ListEntry], number_e164: str, key: str, level: int, reason: str) -> str | None:
    """The reason an automatic block of ``number_e164`` (for dialled number ``key``) is written
    with, given the active entries stored under its prefixes; None when it must not be written:
    an allow or Do-Not-Originate entry applies, or a block at least as strong under another key."""
    applying = [e for e in rows if _covers(e, number_e164)]
    if any(e.kind in ("allow", "dno") for e in applying):
        return None
    current = _winner(applying, number_e164)
    if current is not None and current.level >= level and (current.number, current.dnis, current.is_prefix) != (
            number_e164, key, False):
        return None
    same = next((e for e in applying if (e.number, e.dnis, e.is_prefix) == (number_e164, key, False)), None)
    if same is not None and same.kind == "block" and same.source != "auto":
        return f"{reason} (replaced block level {same.level}: {same.reason or 'no reason given'})"
    return reason


def auto_block_row(number_e164: str, key: str, *, level: int, reason: str, code: str, ttl_seconds: float,
                   now: datetime, added_by: str = "") -> dict[str, Any]:
    """The parameters of :func:`auto_block_statement` for one block."""
    return {"number": number_e164, "dnis": key, "level": level, "reason": reason[:1000], "code": code[:64],
            "added_by": added_by[:128], "now": now, "expires": now + timedelta(seconds=ttl_seconds)}


@lru_cache(maxsize=4)
def auto_block_statement(dialect: str) -> Any:
    """The conditional upsert of an automatic block (parameters: :func:`auto_block_row`). The row
    may have changed since it was read (another node): the upsert decides again, atomically, and
    writes only over an expired entry or a weaker (or shorter) block."""
    t = ListEntry.__table__
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = bindparam("now", type_=ListEntry.expires_at.type)
    expires = bindparam("expires", type_=ListEntry.expires_at.type)
    level = bindparam("level", type_=ListEntry.level.type)
    stmt = insert(ListEntry).values(number=bindparam("number"), is_prefix=False, dnis=bindparam("dnis"),
                                    kind="block", level=level, action=None, reason=bindparam("reason"),
                                    source="auto", code=bindparam("code"), added_by=bindparam("added_by"),
                                    created_at=now, updated_at=now, expires_at=expires)
    expired = and_(t.c.expires_at.is_not(None), t.c.expires_at <= now)
    stronger = or_(t.c.level < level, and_(t.c.level == level, t.c.expires_at.is_not(None), t.c.expires_at < expires))
    return stmt.on_conflict_do_update(
        index_elements=[t.c.number, t.c.dnis, t.c.is_prefix],
        set_={"kind": "block", "level": level, "action": None, "source": "auto", "code": stmt.excluded.code,
              "reason": stmt.excluded.reason, "added_by": stmt.excluded.added_by, "updated_at": now,
              "expires_at": expires, "created_at": case((expired, now), else_=t.c.created_at)},
        where=or_(expired, and_(t.c.kind == "block", stronger)),
    )


# ------------------------------------------------------------------ reading the list


def entry_dict(entry: ListEntry) -> dict[str, Any]:
    """The stable JSON shape of an entry (``lists show --json``, the API, export)."""
    return {"id": entry.id, "number": entry.pattern, "is_prefix": entry.is_prefix, "kind": entry.kind,
            "level": entry.level if entry.kind == "block" else None,
            "hard": entry.kind == "block" and entry.level >= HARD_LEVEL,
            "dnis": entry.dnis, "action": action_label(entry.action), "reason": entry.reason,
            "source": entry.source, "code": entry.code, "added_by": entry.added_by,
            "created_at": entry.created_at.isoformat() if entry.created_at else None,
            "updated_at": entry.updated_at.isoformat() if entry.updated_at else None,
            "expires_at": entry.expires_at.isoformat() if entry.expires_at else None}


def describe(entry: ListEntry | dict[str, Any]) -> str:
    """One line an operator reads: ``+1900* block level 7 (hard: busy) for every dialled number ...``."""
    e = entry if isinstance(entry, dict) else entry_dict(entry)
    if e["kind"] == "block":
        level = e["level"]
        strength = "hard" if level >= HARD_LEVEL else ("soft" if level else "pass")
        action = f": {e['action']}" if e["action"] and level >= HARD_LEVEL else ""
        what = f"block level {level} ({strength}{action})"
    elif e["kind"] == "dno":
        what = "do-not-originate (our own inbound-only number)"
    else:
        what = "allow"
    scope = "every dialled number" if e["dnis"] == ANY_DNIS else f"calls to {e['dnis']}"
    until = f", until {e['expires_at'][:19].replace('T', ' ')} UTC" if e["expires_at"] else ""
    reason = f": {e['reason']}" if e["reason"] else ""
    return f"{e['number']} {what} for {scope}{until} [{e['source']}]{reason}"


def entries_for(session: Session, number: str, *, include_expired: bool = False,
                now: datetime | None = None) -> list[ListEntry]:
    """Every entry covering a number (prefixes too, every dialled number), most specific first."""
    now = now or utcnow()
    stmt = select(ListEntry).where(ListEntry.number.in_(prefixes(number)))
    if not include_expired:
        stmt = stmt.where(or_(ListEntry.expires_at.is_(None), ListEntry.expires_at > now))
    rows = [e for e in session.scalars(stmt.execution_options(populate_existing=True)) if _covers(e, number)]
    return sorted(rows, key=_specificity, reverse=True)


def all_entries(session: Session, *, kind: str | None = None, source: str | None = None,
                include_expired: bool = False, limit: int | None = None,
                now: datetime | None = None) -> list[ListEntry]:
    now = now or utcnow()
    stmt = select(ListEntry).order_by(ListEntry.number, ListEntry.is_prefix, ListEntry.dnis)
    if kind:
        stmt = stmt.where(ListEntry.kind == kind)
    if source:
        stmt = stmt.where(ListEntry.source == source)
    if not include_expired:
        stmt = stmt.where(or_(ListEntry.expires_at.is_(None), ListEntry.expires_at > now))
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def purge_expired(session: Session, *, expired_seconds: float, now: datetime | None = None) -> int:
    """Delete the entries expired longer ago than ``expired_seconds``; returns how many."""
    cutoff = (now or utcnow()) - timedelta(seconds=expired_seconds)
    return session.execute(delete(ListEntry).where(ListEntry.expires_at.is_not(None),
                                                   ListEntry.expires_at < cutoff)).rowcount or 0


# ------------------------------------------------------------------ import / export

#: the CSV columns, in order (a file without a header row uses this order)
CSV_COLUMNS = ("number", "kind", "level", "reason", "expires", "dnis", "action")
_ALIASES = {"list": "kind", "type": "kind", "expires_at": "expires", "expiry": "expires", "dialled": "dnis",
            "dialed": "dnis", "did": "dnis"}
_IGNORED = {"id", "source", "code", "added_by", "created_at", "updated_at", "hard", "is_prefix"}


@dataclass
class ImportReport:
    """What an import found: the valid entries, the bad rows (line, message) and warnings."""

    specs: list[EntrySpec] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    rows: int = 0
    written: int = 0


def read_csv(text: Iterable[str], *, defaults: dict[str, Any] | None = None, region: str = "US",
             added_by: str = "", now: datetime | None = None,
             progress: Callable[[str, int], None] | None = None) -> ImportReport:
    """Validate every row of a list CSV. A header row names the columns (number, kind, level,
    reason, expires, dnis, action; export's extra columns are ignored); without one, that order
    is assumed. ``defaults`` fill empty cells (the command line's --block 7, --reason ...)."""
    now = now or utcnow()
    defaults = defaults or {}
    report = ImportReport()
    seen: dict[tuple[str, str, bool], int] = {}
    expiries: dict[str, datetime | None] = {}   # "30d" is the same instant for every row of one import
    columns: list[str] = list(CSV_COLUMNS)
    reader = csv.reader(text)
    first = True
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if first:
            first = False
            names = [_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in row]
            if "number" in names:
                unknown = [n for n in names if n not in CSV_COLUMNS and n not in _IGNORED]
                if unknown:
                    report.errors.append((line, f"unknown column(s) {', '.join(unknown)} (expected "
                                                f"{', '.join(CSV_COLUMNS)})"))
                    return report
                columns = names
                continue
        report.rows += 1
        if progress and report.rows % 10000 == 0:
            progress("validated", report.rows)
        cells = dict(zip(columns, (unescape_cell(c.strip()) for c in row)))
        if len(row) > len(columns) and any(c.strip() for c in row[len(columns):]):
            report.errors.append((line, f"{len(row)} cells, expected at most {len(columns)}"))
            continue
        try:
            spec = _row_spec(cells, defaults, region, added_by, now, expiries)
        except (ListError, ConfigError) as exc:
            report.errors.append((line, str(exc)))
            continue
        if spec.key in seen:
            report.warnings.append((line, f"{spec.number}{'*' if spec.is_prefix else ''} repeats line "
                                          f"{seen[spec.key]}; the later row is kept"))
        seen[spec.key] = line
        report.specs.append(spec)
    if report.warnings:   # one row per key: a bulk upsert cannot touch the same row twice
        last: dict[tuple[str, str, bool], EntrySpec] = {}
        for spec in report.specs:
            last[spec.key] = spec
        report.specs = list(last.values())
    return report


def _row_spec(cells: dict[str, str], defaults: dict[str, Any], region: str, added_by: str,
              now: datetime, expiries: dict[str, datetime | None]) -> EntrySpec:
    def cell(name: str) -> str | None:
        value = cells.get(name) or ""
        return value if value else defaults.get(name)

    number = cell("number")
    if not number:
        raise ListError("no number")
    level_text = cell("level")
    level: int | None = None
    if level_text not in (None, ""):
        try:
            level = int(str(level_text))
        except ValueError:
            raise ListError(f"level {level_text!r}: expected a whole number") from None
    kind = cell("kind") or ("block" if level is not None else None)
    if not kind:
        raise ListError(f"{number}: no kind (allow, block or dno) and no level")
    expires_text = cell("expires") or ""
    if expires_text not in expiries:
        expiries[expires_text] = parse_expiry(expires_text, now)
    return make_spec(str(number), kind=str(kind), level=level, dnis=cell("dnis"), reason=cell("reason") or "",
                     expires=expiries[expires_text], action=cell("action"), source="import", added_by=added_by,
                     region=region, now=now)


def import_entries(session: Session, specs: Sequence[EntrySpec], *, now: datetime | None = None,
                   chunk: int = 5000, progress: Callable[[str, int], None] | None = None) -> int:
    """Write validated entries (each replaces the entry stored under the same key) in bulk.

    The rows go straight to the driver's executemany (values converted by the columns' own
    types): 100,000 entries are written in a few seconds on SQLite and PostgreSQL alike.
    """
    now = now or utcnow()
    conn = session.connection()
    dialect = conn.dialect
    columns = [c for c in ListEntry.__table__.columns if c.name != "id"]
    processors = [c.type.bind_processor(dialect) for c in columns]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    names = [c.name for c in columns]
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in ("created_at", "number", "dnis", "is_prefix"))
    sql = (f"INSERT INTO list_entries ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"
           f" ON CONFLICT (number, dnis, is_prefix) DO UPDATE SET {updates}")
    written = 0
    for start in range(0, len(specs), chunk):
        batch = []
        for spec in specs[start:start + chunk]:
            row = spec.row(now)
            batch.append(tuple(proc(row[n]) if proc else row[n] for n, proc in zip(names, processors)))
        conn.exec_driver_sql(sql, batch)
        changes.changed(session, "list", [spec.number for spec in specs[start:start + chunk]])
        written += len(batch)
        if progress and len(specs) >= 10000 and (written % 10000 < chunk or written == len(specs)):
            progress("written", written)
    return written


def export_rows(session: Session, *, include_expired: bool = False, kind: str | None = None,
                now: datetime | None = None) -> Iterator[list[str]]:
    """The list as CSV rows (header first), in the form ``lists import`` reads back."""
    now = now or utcnow()
    yield [*CSV_COLUMNS, "source", "code", "added_by", "created_at"]
    stmt = select(ListEntry).order_by(ListEntry.number, ListEntry.is_prefix, ListEntry.dnis)
    if kind:
        stmt = stmt.where(ListEntry.kind == kind)
    if not include_expired:
        stmt = stmt.where(or_(ListEntry.expires_at.is_(None), ListEntry.expires_at > now))
    for e in session.scalars(stmt.execution_options(yield_per=2000)):
        yield [e.pattern, e.kind, str(e.level) if e.kind == "block" else "", e.reason,
               e.expires_at.isoformat() if e.expires_at else "", "" if e.dnis == ANY_DNIS else e.dnis,
               action_label(e.action), e.source, e.code, e.added_by,
               e.created_at.isoformat() if e.created_at else ""]


def csv_text(rows: Iterable[list[str]]) -> Iterator[str]:
    """The rows as CSV, a line at a time; cells a spreadsheet would run as a formula are written
    as text (fsguard.rules.spreadsheet; read_csv takes the ``'`` off again)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow([safe_cell(c) for c in row])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
