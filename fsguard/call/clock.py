"""Time as FreeSWITCH keeps it for one channel: the clock that bills.

Every channel event carries ``Event-Date-Timestamp`` and ``Caller-Channel-Answered-Time``
(microseconds, FreeSWITCH's clock). A stage that must act within seconds of the answer (the
verification window) measures with this clock; fsguard's own monotonic clock is kept as a floor,
so the measure never comes out shorter than what fsguard itself saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fsguard.esl.session import Headers, OutboundSession


class ChannelClock:
    """Seconds since the answer by FreeSWITCH's clock, read from the channel's events as they come."""

    def __init__(self, session: OutboundSession, answered_at: Callable[[], float | None]) -> None:
        self.last_us: int | None = None
        self.answered_us: int | None = None
        #: when fsguard saw the answer complete (monotonic), None before
        self._answered_at = answered_at
        self._previous = session.on_event
        session.on_event = self._on_event

    def _on_event(self, event: Headers) -> None:
        stamp = event.get("Event-Date-Timestamp", "")
        if stamp.isdigit():
            self.last_us = int(stamp)
        answered = event.get("Caller-Channel-Answered-Time", "")
        if answered.isdigit() and answered != "0":
            self.answered_us = int(answered)
        if self._previous is not None:
            self._previous(event)

    def since_answer(self) -> float:
        """Seconds from the answer to the channel's latest event (0 before the answer)."""
        answered_at = self._answered_at()
        ours = time.monotonic() - answered_at if answered_at is not None else 0.0
        if self.answered_us is None or self.last_us is None:
            return ours
        return max(ours, (self.last_us - self.answered_us) / 1e6)
