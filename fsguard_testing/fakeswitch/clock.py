"""The channel's clock: channel seconds, and the timers that drive a channel's one greenlet.

All channel timings are in *channel seconds*; ``time_scale`` real seconds pass per channel
second (0.01: a hundred times faster than life).  A channel keeps its timers in a heap and
reads the target's commands with a socket timeout equal to the next one (a playback ending,
a caller's key press, a hang-up), so there are no polling sleeps and no timer greenlets.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Timer:
    """Something due on the channel at ``due``; timers at the same time run in the order they were set."""

    due: float  # monotonic
    seq: int
    ch_time: float = field(compare=False)
    fn: Callable[..., None] = field(compare=False)
    args: tuple = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)


class ChannelClock:
    """Channel seconds and timers (a part of :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ts = self.sim.time_scale  # real seconds per channel second
        self.t0 = 0.0  # monotonic time of the TCP connect: channel second 0
        self.epoch0 = 0.0  # the same instant as a Unix time, for the events' timestamps
        self.clock = 0.0  # channel seconds (virtual)
        self._timers: list[Timer] = []
        self._seq = itertools.count()

    def _real_now_ch(self) -> float:
        return (time.monotonic() - self.t0) / self.ts

    def _sync_clock(self) -> None:
        self.clock = max(self.clock, self._real_now_ch())

    def _at(self, ch_time: float, fn: Callable[..., None], *args: object) -> Timer:
        t = Timer(self.t0 + ch_time * self.ts, next(self._seq), ch_time, fn, args)
        heapq.heappush(self._timers, t)
        return t

    def _after(self, delay: float, fn: Callable[..., None], *args: object) -> Timer:
        return self._at(self.clock + max(0.0, delay), fn, *args)

    def _after_real(self, seconds: float, fn: Callable[..., None], *args: object) -> Timer:
        """A timer for waits on the TARGET (never shorter than sim.min_real_timeout real seconds)."""
        due = time.monotonic() + seconds
        t = Timer(due, next(self._seq), (due - self.t0) / self.ts, fn, args)
        heapq.heappush(self._timers, t)
        return t

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].due <= now and not self.finished:
            t = heapq.heappop(self._timers)
            if t.cancelled:
                continue
            self.clock = max(self.clock, t.ch_time)
            t.fn(*t.args)
            self._flush()

    def _us(self, ch: float | None = None) -> int:
        return int(round((self.epoch0 + (self.clock if ch is None else ch)) * 1_000_000))

    def _time_us(self, ch: float | None) -> str:
        return "0" if ch is None else str(self._us(ch))
