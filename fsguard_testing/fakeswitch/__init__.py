"""A FreeSWITCH for the tests: it plays mod_event_socket and the core for the outbound Event Socket.

For every simulated channel :class:`FakeFreeSWITCH` opens a TCP connection to the target, exactly
as ``<action application="socket" data="host:port async full"/>`` does, and then behaves as
FreeSWITCH would, byte for byte where it matters (checked against the captures in
``tests/captures/`` and against mod_event_socket.c; tests/test_simulator_matches_freeswitch.py
runs fsguard on the simulator and on a real FreeSWITCH 1.10.12's recordings and compares them).
What the caller does is described by a :class:`Caller`; what happened is returned as a
:class:`SimResult`.  Its parts, each a module named for what it plays:

* :mod:`.event_socket` -- the connection: ``connect`` and its CHANNEL_DATA reply, command replies,
  ``myevents`` / ``event`` subscriptions, ``sendmsg``, ``linger`` and the linger and disconnect
  notices;
* :mod:`.socket_app` -- the socket application on the channel: the park loop running the queued
  applications, ``break`` nested in a media application, "stranded" when no instruction came;
* :mod:`.applications` -- the dialplan applications (playback, play_and_get_digits, transfer,
  bridge, record_session, set / export / multiset, hangup, callcenter...);
* :mod:`.api` -- the ``api`` / ``bgapi`` commands (status, uuid_*);
* :mod:`.channel` -- :class:`Channel`, one call: its state, answer and hang-up (events in
  FreeSWITCH's order, billing variables), made of the parts above;
* :mod:`.variables` -- channel variables, the caller profile and the event headers they make;
* :mod:`.caller` -- :class:`Caller` and the scripted caller's behaviour (keys, hang-up);
* :mod:`.clock` -- channel seconds and timers; :mod:`.core` -- hang-up causes, the media tick,
  FreeSWITCH's string helpers; :mod:`.result` -- :class:`SimResult`.

Known simplifications: queued applications run one after the other, as with
``event-lock: true``.  Real FreeSWITCH without event-lock runs an execute queued behind a
media application (playback, say, play_and_get_digits, sleep...) NESTED inside that
application's loop; the simulator records that as a violation when the queued application
is itself a media application, and runs ``break`` nested (it stops the app ahead) as
FreeSWITCH does.  Events FreeSWITCH would send that no target relies on (CHANNEL_CREATE,
PRIVATE_COMMAND, CHANNEL_DESTROY...) are not sent; XML event format is not simulated.

All channel timings are in *channel seconds*; ``time_scale`` real seconds pass per channel
second (0.01: a hundred times faster than life).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import gevent
import gevent.pool

from fsguard_testing.fakeswitch.caller import Caller
from fsguard_testing.fakeswitch.channel import Channel
from fsguard_testing.fakeswitch.core import Q850
from fsguard_testing.fakeswitch.result import SimResult
from fsguard_testing.fakeswitch.variables import CALLER_CONTROLLED_VARIABLES

__all__ = ["Caller", "Channel", "SimResult", "FakeFreeSWITCH", "CALLER_CONTROLLED_VARIABLES", "Q850"]


class FakeFreeSWITCH:
    """A FreeSWITCH that dials into a target for each simulated channel.

    ``targets`` are tried in order like ``socket h1:p1|h2:p2`` (connection refused: next).
    """

    #: what each call plays: the lab and some tests play a channel of their own (writing recordings,
    #: speaking, keying as it hears)
    channel_class: type[Channel] = Channel

    def __init__(
        self,
        targets: list[tuple[str, int]] | tuple[str, int],
        *,
        time_scale: float = 0.01,
        mode: str = "async",
        linger_race: bool = False,
        linger_notice: str = "auto",
        linger_timeout: float | None = None,
        max_call_time: float = 120.0,
        min_real_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        exit_grace: float = 0.05,
        split_events: float = 0.25,
        playback_duration: float = 0.2,
        playback_durations: dict[str, float] | None = None,
        hostname: str = "vm",
        core_uuid: str | None = None,
        ipv4: str = "192.0.2.2",
        ipv6: str = "fd00::2",
        seed: int | None = None,
        first_event_sequence: int = 400,
    ) -> None:
        """
        time_scale: real seconds per channel second.
        mode: "async" (``async full``) or "full" (static ``full``: sendmsg replies after the app).
        linger_race: send the linger notice BEFORE CHANNEL_HANGUP (seen under load, 03d).
        linger_notice: where the linger notice goes among the hang-up events, a race in
            FreeSWITCH: "before_hangup" (03d), "after_hangup" (caller_hangup.txt), "last" (after
            CHANNEL_HANGUP_COMPLETE: most fs-1.10.12 captures), or "auto": before with
            ``linger_race``, after CHANNEL_HANGUP for a caller's or far end's hang-up, else last.
        linger_timeout: channel seconds to keep a ``linger`` (forever) socket open after the
            hang-up before closing it ourselves; None: wait for ``exit`` up to 30 channel
            seconds (at least ``min_real_timeout`` real seconds) and record a violation.
        max_call_time: cap on a call, channel seconds (never below ``min_real_timeout`` real s).
        min_real_timeout: floor, in real seconds, of every wait on the target, so that a
            loaded target is not failed because the channel clock runs fast.
        split_events: probability that a write is split between an event's header block and
            its body (FreeSWITCH sends them with two send() calls).
        """
        if isinstance(targets, tuple):
            targets = [targets]
        if not targets:
            raise ValueError("at least one target is needed")
        if mode not in ("async", "full"):
            raise ValueError("mode must be 'async' or 'full'")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.targets = [(str(h), int(p)) for h, p in targets]
        self.time_scale = time_scale
        self.mode = mode
        self.linger_race = linger_race
        if linger_notice not in ("auto", "before_hangup", "after_hangup", "last"):
            raise ValueError("linger_notice must be auto, before_hangup, after_hangup or last")
        self.linger_notice = linger_notice
        self.linger_timeout = linger_timeout
        self.max_call_time = max_call_time
        self.min_real_timeout = min_real_timeout
        self.connect_timeout = connect_timeout
        self.exit_grace = exit_grace
        self.split_events = split_events
        self.playback_duration = playback_duration
        self.playback_durations = dict(playback_durations or {})
        self.hostname = hostname
        self.core_uuid = core_uuid or str(uuid4())
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self._rng = random.Random(seed)
        self._event_seq = itertools.count(first_event_sequence)
        self._session_ids = itertools.count(1)
        self.socket_data = "|".join(f"{h}:{p}" for h, p in self.targets) + (" async full" if mode == "async" else " full")
        self.calls_started = 0
        self.active = 0
        self.peak = 0
        #: a fsguard_testing.inbound_events.InboundEvents that also gets every channel's end
        self.inbound_events: Any = None

    def target_wait(self, channel_seconds: float) -> float:
        """Real seconds to wait on the target for something FreeSWITCH waits ``channel_seconds`` for."""
        return max(channel_seconds * self.time_scale, self.min_real_timeout)

    def _make_caller(self, caller: Caller | None, fields: dict[str, object]) -> Caller:
        if caller is None:
            return Caller(**fields)  # type: ignore[arg-type]
        return dataclasses.replace(caller, **fields) if fields else caller

    def call(self, caller: Caller | None = None, **caller_fields: object) -> SimResult:
        """Run one call to completion, blocking the calling greenlet."""
        c = self._make_caller(caller, caller_fields)
        self.calls_started += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return self.channel_class(self, c).run()
        finally:
            self.active -= 1

    def spawn(self, caller: Caller | None = None, **caller_fields: object) -> gevent.Greenlet:
        """Start a call in its own greenlet; ``.get()`` returns the SimResult."""
        return gevent.spawn(self.call, self._make_caller(caller, caller_fields))

    def run_many(self, callers: Iterable[Caller], concurrency: int) -> list[SimResult]:
        """Run calls with at most ``concurrency`` channels up at once; results in input order."""
        pool = gevent.pool.Pool(max(1, concurrency))
        greenlets = [pool.spawn(self.call, c) for c in callers]
        gevent.joinall(greenlets, raise_error=True)
        return [g.get() for g in greenlets]

    def connect_reply_for(
        self,
        caller: Caller,
        *,
        at_us: int | None = None,
        event_sequence: int | None = None,
        socket_host: str = "127.0.0.1",
    ) -> bytes:
        """The CHANNEL_DATA bytes this simulator would send for ``caller`` (for tests).

        ``at_us`` fixes the channel creation / event time and ``event_sequence`` the
        Event-Sequence, so that a captured reply can be reproduced byte for byte.
        """
        at_us = at_us if at_us is not None else int(time.time() * 1_000_000)
        if caller.created_us is None:
            caller = dataclasses.replace(caller, created_us=at_us)
        ch = Channel(self, caller)
        ch.result.target = (socket_host, 0)
        ch.epoch0 = at_us / 1_000_000
        saved = self._event_seq
        if event_sequence is not None:
            self._event_seq = itertools.count(event_sequence)
        try:
            ch._setup_channel()
            return ch.connect_reply()
        finally:
            self._event_seq = saved
