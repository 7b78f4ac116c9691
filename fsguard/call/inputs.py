"""The input port: the facts a stage decides on that come from outside the call, live or replayed.

A stage asks the port for a fact (the flood counters, the freeze on a number, what the CRM said,
the time) and gives it the way to fetch it live::

    counts = call.inputs.fact("screening.flood", lambda: lists.count_call(...), encode=..., decode=...)

A live call fetches it and the port records what it returned (stored with the call as its
``inputs``); a replayed call (``fsguard replay``) is given back what was recorded then, and fetches
live only what the record does not hold (today's lists and tables), or, for what must never be
asked again (the CRM, the caller), takes the ``offline`` stand-in. A write a replay must not repeat
goes through :meth:`LiveInputs.effect`. So stages have no replay branch: the port they are handed
is live or replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: no offline stand-in: a replay fetches the fact live when the record does not hold it
MISSING: Any = _Missing()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _get(data: Mapping[str, Any], name: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; MISSING when any part is absent."""
    for part in name.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return MISSING
        data = data[part]
    return data


def _put(data: dict[str, Any], name: str, value: Any) -> None:
    *parents, last = name.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


class LiveInputs:
    """The facts of a live call: fetched as the stages ask, and recorded for the call's record."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        #: what the stages were given, stored with the call (``Call.describe()``)
        self.recorded: dict[str, Any] = {}
        self.clock = clock

    def fact(self, name: str, fetch: Callable[[], T], *, encode: Callable[[T], Any] | None = None,
             decode: Callable[[Any], T] | None = None, offline: T = MISSING, record: bool = True,
             keep_empty: bool = True) -> T:
        """The fact ``name`` (dotted: ``"screening.flood"``): fetched, and recorded as ``encode`` says
        (not at all with ``record=False``; not when what would be recorded is empty unless ``keep_empty``)."""
        value = fetch()
        if record:
            kept = encode(value) if encode is not None else value
            if keep_empty or kept:
                _put(self.recorded, name, kept)
        return value

    def effect(self, do: Callable[[], T], replayed: T) -> T:
        """A write a replay must not repeat (a recording's row, an automatic block): done on a live
        call; a replayed call gets ``replayed`` instead."""
        return do()

    def note(self, name: str, value: Any) -> None:
        """Record something for the call's record that no stage decides on again (e.g. a verstat's text)."""
        _put(self.recorded, name, value)

    def now(self, name: str | None = None) -> datetime:
        """The time a stage decides at (business hours); recorded as ``name`` when given."""
        now = self.clock()
        if name is not None:
            _put(self.recorded, name, now.isoformat())
        return now


class ReplayedInputs(LiveInputs):
    """The facts as a stored call recorded them: given back, never fetched again if held."""

    def __init__(self, stored: Mapping[str, Any], started_at: datetime | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(clock)
        self.stored = stored
        self.started_at = started_at

    def fact(self, name: str, fetch: Callable[[], T], *, encode: Callable[[T], Any] | None = None,
             decode: Callable[[Any], T] | None = None, offline: T = MISSING, record: bool = True,
             keep_empty: bool = True) -> T:
        stored = _get(self.stored, name)
        if stored is not MISSING:
            value: T = decode(stored) if decode is not None else stored
            _put(self.recorded, name, stored)
            return value
        if offline is not MISSING:
            return offline
        return super().fact(name, fetch, encode=encode, record=record, keep_empty=keep_empty)

    def effect(self, do: Callable[[], T], replayed: T) -> T:
        return replayed

    def now(self, name: str | None = None) -> datetime:
        """The time the call was decided at: as recorded, else when it started."""
        stored = _get(self.stored, name) if name is not None else MISSING
        when = datetime.fromisoformat(stored) if isinstance(stored, str) else self.started_at
        if not isinstance(when, datetime):
            return super().now(name)
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
