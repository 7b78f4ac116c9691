"""A point in time as an operator gives it, on the command line or to the admin API:
``7d`` / ``90m`` back from now, or an ISO date or date-time (UTC unless it says otherwise)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Callable

from fsguard.config import ConfigError, parse_duration


def parse_when(raw: str, name: str, error: Callable[[str], Exception] = ConfigError) -> datetime:
    """A point in time from ``7d`` / ``90m`` (ago) or ``2026-11-20`` / ``2026-11-20T08:00:00+01:00``."""
    text = raw.strip()
    if text and (text[-1].isalpha() or text.replace(".", "", 1).isdigit()) and not re.match(r"\d{4}-", text):
        try:
            seconds = parse_duration(text, name)
        except ConfigError as exc:
            raise error(str(exc)) from None
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise error(f"{name}: expected a duration back from now (7d, 12h) or an ISO date (2026-11-20), "
                    f"got {raw!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
