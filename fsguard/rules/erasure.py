"""Erasure on request: ``fsguard erase NUMBER`` removes what fsguard keeps about a person's
number, area by area, and says what it did, what it kept and why.

The areas, in this order:

* recordings: audio files and their rows are deleted, except recordings under legal hold;
* call records: anonymised, not deleted - the caller's number, raw caller id, caller name, and
  the number wherever else it is written (the route, e.g. ``bridge sofia/gateway/carrier/NUMBER``,
  the inputs, every verdict text) are removed and the row is marked ``erased``, so
  statistics (how many calls, when, with what outcome) stay right. The record of a call whose
  recording is under legal hold is kept as it is: it is part of what is held;
* then the areas with personal data of their own (:data:`AREAS`): the customer record holding
  the number (routing), its call counters (screening; list entries are the operators' decisions
  and are kept), its outbound attempts and past freezes, its verification challenges. An area
  with personal data of its own adds its function ``fn(session, number_e164) -> lines`` there.

Each area runs in a savepoint of one transaction: an area that fails is reported (and rolled
back) without undoing the others, and ``fsguard erase`` exits 1 so that the request is run again.
Files are deleted before the rows that point to them are removed: if anything fails in between,
a row pointing to a deleted file remains (harmless; a new run removes it), never the reverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import phonenumbers
import structlog
from sqlalchemy import ColumnElement, and_, delete, or_, select
from sqlalchemy.orm import Session

from fsguard.config import Settings
from fsguard.rules import counters, crm, customers, freeze, lists
from fsguard.rules.recordings import erase_for_number, lookup_number, recording_root
from fsguard.store.db import Database
from fsguard.store.models import CallRecord
from fsguard.store.models.challenges import Challenge

log = structlog.get_logger("fsguard.rules.erasure")

Eraser = Callable[[Session, str], list[str]]

#: what replaces erased text
ERASED = "[erased]"
#: keys of the call's inputs (Call.describe() and stages' facts) that hold the caller's identity
#: keys whose values identify the person (the routing stage stores the customer and account)
PERSONAL_KEYS = frozenset({"ani", "presented", "network", "asserted", "caller_name", "customer_name", "name", "customer",
                           "account_id", "crm_customer"})

@dataclass
class AreaResult:
    area: str
    lines: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ErasureReport:
    """What an erasure did, area by area; ``ok`` is false if any area failed."""

    number: str
    dry_run: bool
    areas: list[AreaResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.error is None for a in self.areas)

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "dry_run": self.dry_run, "ok": self.ok,
                "areas": [{"area": a.area, "lines": a.lines, "error": a.error} for a in self.areas]}

    def text(self) -> str:
        head = (f"Erasure of {self.number} - DRY RUN, nothing was changed; this is what it would do:"
                if self.dry_run else f"Erasure of {self.number}:")
        out = [head]
        for a in self.areas:
            out.append(f"  {a.area}:")
            out.extend(f"    {line}" for line in a.lines)
            if a.error:
                out.append(f"    FAILED: {a.error}")
        if not self.ok:
            out.append("Some of it failed (see above): run the same 'fsguard erase' again once the cause is fixed.")
        return "\n".join(out)


def number_forms(e164: str) -> list[str]:
    """The ways a switch may have shown this number (raw caller id, dialled digits), longest first."""
    forms = {e164, e164.lstrip("+"), "00" + e164.lstrip("+"), "011" + e164.lstrip("+")}
    try:
        parsed = phonenumbers.parse(e164, None)
        forms.add(str(parsed.national_number))
        national = re.sub(r"\D", "", phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL))
        if national:
            forms.add(national)
    except phonenumbers.NumberParseException:
        pass
    return sorted((f for f in forms if len(f) >= 6), key=len, reverse=True)


def calls_of_number(e164: str, forms: list[str]) -> ColumnElement[bool]:
    """Call rows about this number: it called (network or presented number), or an agent called it."""
    return or_(CallRecord.ani == e164, CallRecord.ani_raw.in_(forms),
               and_(CallRecord.direction == "outbound", CallRecord.dnis.in_(forms)))


def scrub(value: Any, forms: list[str]) -> Any:
    """A copy of a JSON document with the number (in any of its forms) and identity keys erased."""
    if isinstance(value, dict):
        return {k: (ERASED if k in PERSONAL_KEYS and v not in (None, "", False) else scrub(v, forms))
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, forms) for v in value]
    if isinstance(value, str):
        for form in forms:
            value = value.replace(form, ERASED)
    return value


def _text_columns(model: Any) -> list[str]:
    """Every text column of a table but its keys: any of them can hold the number (the route
    ``bridge sofia/gateway/carrier/NUMBER``, a verdict's reason)."""
    names = []
    for column in model.__table__.columns:
        try:
            is_text = column.type.python_type is str
        except NotImplementedError:   # JSON documents: scrubbed key by key
            is_text = False
        if is_text and not column.primary_key and not column.foreign_keys:
            names.append(column.key)
    return names


def _scrub_columns(row: Any, forms: list[str]) -> None:
    for name in _text_columns(type(row)):
        value = getattr(row, name)
        if isinstance(value, str):
            cleaned = scrub(value, forms)
            if cleaned != value:
                setattr(row, name, cleaned)


def erase_calls(session: Session, e164: str, forms: list[str], held_calls: set[str]) -> list[str]:
    """Anonymise the call records of the number, except those kept with a held recording."""
    calls = list(session.scalars(select(CallRecord).where(calls_of_number(e164, forms),
                                                          CallRecord.erased.is_(False))))
    anonymised, kept = 0, 0
    for call in calls:
        if call.uuid in held_calls:
            kept += 1
            continue
        if call.ani == e164 or call.ani_raw in forms:  # the person called
            call.ani = None
            call.ani_raw = ""
            call.caller_name = ""
        if call.direction == "outbound" and call.dnis in forms:  # an agent called the person
            call.dnis = ""
        _scrub_columns(call, forms)
        call.inputs = scrub(dict(call.inputs or {}), forms)
        call.erased = True
        for verdict in call.verdicts:
            _scrub_columns(verdict, forms)
            verdict.details = scrub(dict(verdict.details or {}), forms)
        anonymised += 1
    lines = []
    if anonymised:
        lines.append(f"anonymised {anonymised} call record(s): number, caller id and caller name removed from them "
                     "and from their inputs and verdicts; times, outcomes and decisions kept for statistics")
    if kept:
        lines.append(f"kept {kept} call record(s) unchanged: their recordings are under legal hold")
    if not calls:
        lines.append("no call records of this number (or already erased)")
    return lines


def erase_customer(session: Session, e164: str) -> list[str]:
    """The customer record holding the number, and what the CRM client's cache kept of it."""
    lines, numbers = customers.erase_number(session, e164)
    crm.forget(numbers)
    return lines


def erase_counters(session: Session, e164: str) -> list[str]:
    """The number's call counters go; its list entries stay (the operators' decisions, not call data)."""
    gone = counters.erase(session, e164)
    kept = [e for e in lists.entries_for(session, e164, include_expired=True) if not e.is_prefix]
    lines = [f"screening: deleted {gone} call counter row(s) for {e164}"]
    if kept:
        lines.append(f"screening: kept {len(kept)} list entr{'y' if len(kept) == 1 else 'ies'} for {e164} "
                     f"(operator decisions, not call data; 'fsguard lists remove {e164}' deletes them)")
    return lines


def erase_challenges(session: Session, e164: str) -> list[str]:
    """The verification challenges of the number (when it called, what it keyed)."""
    gone = session.execute(delete(Challenge).where(Challenge.number == e164)).rowcount or 0
    return [f"deleted {gone} verification challenge(s)" if gone else "no verification challenges of this number"]


#: the areas with personal data of their own, run after the recordings and the call records
AREAS: list[tuple[str, Eraser]] = [("routing", erase_customer), ("lists", erase_counters),
                                   ("outbound", freeze.erase), ("verification", erase_challenges)]


def erase(db: Database, number: str, *, region: str = "US", settings: Settings | None = None,
          dry_run: bool = False) -> ErasureReport:
    """Erase ``number`` everywhere fsguard keeps it; returns the report (check ``ok``).

    Raises numbers.InvalidNumber if ``number`` cannot be read as a telephone number.
    """
    e164 = lookup_number(number, region)
    forms = number_forms(e164)
    report = ErasureReport(e164, dry_run)
    root = recording_root(settings.recording) if settings is not None else None
    held_calls: set[str] = set()

    def recordings_part(session: Session, _: str) -> list[str]:
        lines, held, errors = erase_for_number(session, e164, calls_of_number(e164, forms), root=root,
                                               dry_run=dry_run)
        held_calls.update(held)
        if errors:
            raise _PartialFailure(lines, errors)
        return lines

    def calls_part(session: Session, _: str) -> list[str]:
        return erase_calls(session, e164, forms, held_calls)

    parts: list[tuple[str, Eraser]] = [("recordings", recordings_part), ("calls", calls_part), *AREAS]
    with db.sessions() as session:
        session.begin()
        for area, fn in parts:
            result = AreaResult(area)
            savepoint = session.begin_nested()
            try:
                result.lines = list(fn(session, e164))
                session.flush()
                # a dry run undoes each area at once (a savepoint per area also works on SQLite,
                # whose driver would otherwise have committed at the first RELEASE)
                savepoint.rollback() if dry_run else savepoint.commit()
            except _PartialFailure as exc:
                # the files already deleted stay deleted; their rows go with this savepoint
                result.lines, result.error = exc.lines, "; ".join(exc.errors)
                session.flush()
                savepoint.rollback() if dry_run else savepoint.commit()
            except Exception as exc:  # noqa: BLE001 - one area failing must not undo the others
                savepoint.rollback()
                result.error = f"{type(exc).__name__}: {exc}"
                log.error("erasure.area_failed", area=area, error=result.error, exc_info=True)
            report.areas.append(result)
        if dry_run:
            session.rollback()
        else:
            session.commit()
    log.info("erasure.done", dry_run=dry_run, ok=report.ok, areas=[a.area for a in report.areas])
    return report


class _PartialFailure(Exception):
    def __init__(self, lines: list[str], errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.lines = lines
        self.errors = errors
