"""Business hours of a queue, holidays and time zones (``routing.hours``, ``routing.holidays``).

A queue with business hours that is closed sends a call to its rule's after-hours target
(fsguard.rules.routing); this module only says whether it is open, and why not in words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fsguard.config import ConfigError

__all__ = ["Hours", "zone", "parse_holidays", "WEEKDAYS"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Hours:
    """Business hours of a queue: ``"mon-fri 08:00-18:00; sat 09:00-13:00"``.

    Days are ``mon``..``sun``, ranges (``mon-fri``), lists (``mon,wed``) or ``daily``; a span that
    ends before it starts runs past midnight (``22:00-06:00``); ``24:00`` ends a day. ``always``
    and ``closed`` say what they mean. A trailing IANA zone (``... Europe/London``) overrides
    ``routing.timezone`` for this queue. ``holidays`` close the queue all day (``YYYY-MM-DD``,
    or ``MM-DD`` every year), in the queue's time zone.
    """

    spec: str
    tz: tzinfo
    #: (weekday 0=Monday, start minute, end minute); end may pass 1440 (past midnight)
    windows: tuple[tuple[int, int, int], ...]
    holidays: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, spec: str, default_tz: tzinfo, holidays: frozenset[str] = frozenset(), *,
              key: str = "hours") -> Hours:
        text = spec.strip()
        tz = default_tz
        tokens = text.split()
        if tokens and ("/" in tokens[-1] or tokens[-1].upper() == "UTC"):
            tz = zone(tokens[-1], key)
            text = " ".join(tokens[:-1])
        low = text.lower()
        if low in ("always", "24/7"):
            return cls(spec, tz, tuple((d, 0, 1440) for d in range(7)), holidays)
        if low in ("closed", "never"):
            return cls(spec, tz, (), holidays)
        windows: list[tuple[int, int, int]] = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            days_text, _, spans_text = part.partition(" ")
            if not spans_text.strip():
                raise ConfigError(f"{key}: {part!r} needs days and times, e.g. 'mon-fri 08:00-18:00'")
            days = _days(days_text, key)
            for span in filter(None, (s.strip() for s in spans_text.replace(" ", "").split(","))):
                start, end = _span(span, key)
                windows.extend((d, start, end) for d in days)
        if not windows:
            raise ConfigError(f"{key}: no opening hours in {spec!r} (say 'closed' if that is meant)")
        return cls(spec, tz, tuple(windows), holidays)

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.tz)
        if local.strftime("%Y-%m-%d") in self.holidays or local.strftime("%m-%d") in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        for d, start, end in self.windows:
            if d == day and start <= minute < end:
                return True
            if (d + 1) % 7 == day and end > 1440 and minute + 1440 < end:
                return True  # yesterday's span running past midnight
        return False

    def describe(self, now: datetime | None = None) -> str:
        zone = getattr(self.tz, "key", str(self.tz))
        text = f"{self.spec} ({zone})" if zone not in self.spec else self.spec
        if now is not None:
            text += f", now {now.astimezone(self.tz):%a %Y-%m-%d %H:%M}"
        return text


def zone(name: str, key: str) -> tzinfo:
    """A time zone by IANA name (or UTC); ConfigError naming ``key`` for an unknown one."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {name!r} (use an IANA name such as Europe/London)") from None


def _days(text: str, key: str) -> list[int]:
    low = text.lower()
    if low in ("daily", "*", "mon-sun"):
        return list(range(7))
    days: list[int] = []
    for item in low.split(","):
        first, dash, last = item.partition("-")
        try:
            a = WEEKDAYS.index(first[:3])
            b = WEEKDAYS.index(last[:3]) if dash else a
        except ValueError:
            raise ConfigError(f"{key}: {text!r} is not a day or day range (mon..sun, mon-fri, daily)") from None
        days.extend(WEEKDAYS.index(WEEKDAYS[(a + i) % 7]) for i in range((b - a) % 7 + 1))
    return days


def _minute(text: str, key: str) -> int:
    match = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?", text)
    if not match or int(match.group(1)) > 24 or int(match.group(2) or 0) > 59 or \
            (int(match.group(1)) == 24 and int(match.group(2) or 0) != 0):
        raise ConfigError(f"{key}: {text!r} is not a time of day (HH:MM)")
    return int(match.group(1)) * 60 + int(match.group(2) or 0)


def _span(text: str, key: str) -> tuple[int, int]:
    start_text, dash, end_text = text.partition("-")
    if not dash:
        raise ConfigError(f"{key}: {text!r} is not a time span such as 08:00-18:00")
    start, end = _minute(start_text, key), _minute(end_text, key)
    if start == end:
        raise ConfigError(f"{key}: the span {text!r} is empty")
    if end < start:
        end += 1440
    return start, end


def parse_holidays(items: list[str]) -> frozenset[str]:
    """``routing.holidays``: ``YYYY-MM-DD`` dates, or ``MM-DD`` for every year."""
    out = set()
    for i, item in enumerate(items):
        text = str(item).strip()
        try:
            if len(text) == 5:
                datetime.strptime(f"2000-{text}", "%Y-%m-%d")
            else:
                date.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"routing.holidays[{i}]: expected YYYY-MM-DD or MM-DD, got {item!r}") from None
        out.add(text)
    return frozenset(out)
