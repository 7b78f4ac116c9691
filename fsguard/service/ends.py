"""The end-of-call watcher: one inbound Event Socket connection per node that learns how the
calls this node let go of ended.

A routed call's outbound socket costs FreeSWITCH about 2 ms of CPU per second it is held (the
listener thread polls it every 20 ms, and every event fired is checked against every listener).
fsguard only held it to read the final CHANNEL_HANGUP_COMPLETE (cause, billsec, bridge times,
``record_*`` variables) for the stages' ``after_call`` hooks and the end row. Here that event
comes instead over ONE inbound connection (``esl.inbound``) subscribed to
``event json CHANNEL_HANGUP_COMPLETE`` with ``filter variable_fsguard_node <node id>``: the
variable is set with the route, so each node receives its own calls' ends only.

Letting go is safe only when FreeSWITCH will not reset the channel when the socket goes away.
mod_event_socket (1.10.12) sets ``CS_RESET`` on the channel at the end of the listener when
``resume`` was sent or ``socket_resume`` is true; seen on a real FreeSWITCH: an ``exit`` after the
routing application ran breaks the bridge to the agent (the call is hung up, or left without an
agent), and a ``bridge`` queued behind an ``exit`` is abandoned and the dialplan's fallback runs.
So in this mode the dialplan sets ``socket_resume=true`` (the same protection as ``resume`` until
the route), fsguard does not send ``resume``, and the route's write ends with ``api
uuid_setvar_multi <uuid> fsguard_node=<node>;socket_resume=false``: FreeSWITCH's listener thread
queues the route's applications, then sets the two variables itself, at once (a ``multiset`` would
run only on a media tick of the channel's thread, and fsguard had to poll ``getvar`` until it had:
a 20 ms wait and more polls than one from a busy FreeSWITCH). Its ``+OK`` means the route is
queued and nothing resets the channel, so the socket is closed there and then, without ``exit``:
the listener reads the end of the stream and takes the same way out (``exit`` cost it a system
call per byte, a reply and a notice).

The connection is a :class:`fsguard.esl.client.FreeSWITCHAPI` (subscribe, filter, next_event,
and ``api uuid_exists`` after a reconnection, whose answers interleave with the events).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import gevent
import structlog
from gevent.event import AsyncResult

from fsguard.call.call import fold_variables
from fsguard.config import ESLSettings
from fsguard.esl.client import FreeSWITCHAPI, InboundError
from fsguard.esl.protocol import ESLError
from fsguard.esl.session import ESLTimeout, OutboundSession

log = structlog.get_logger("fsguard.service.ends")

#: the channel variable that names the node which decided the call (the watcher's filter)
NODE_VARIABLE = "fsguard_node"
#: what a routed call's multiset sets when its socket may be let go (see the module docstring)
RELEASE_VARIABLES = ("socket_resume", "false")
#: the end of a call that no waiting call has claimed yet is kept this long, at most this many
KEEP_SECONDS = 120.0
KEEP_MAX = 20_000
#: reconnection backoff, seconds
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0


def released(session: OutboundSession, **variables: str) -> bool:
    """Closing the socket is safe: FreeSWITCH's listener confirmed, in the route's own write
    (``then_set``: ``Call.route``, :func:`route_and_close`), that it set ``socket_resume`` false,
    and ``variables`` with it.

    FreeSWITCH finds no channel that has begun to hang up (its session read lock refuses one), so
    the channel's CHANNEL_HANGUP_COMPLETE was still to come and carries the variables
    (``fsguard_node``: the end watcher's filter). False for an instruction sent without them (a
    hang-up), or when FreeSWITCH refused the command (the channel was already hanging up, a
    ``socket`` without ``full``): the socket is then held to the call's end."""
    wanted = {**variables, RELEASE_VARIABLES[0]: RELEASE_VARIABLES[1]}
    return all(session.listener_set.get(name) == value for name, value in wanted.items())


def route_and_close(session: OutboundSession, app: str, arg: str, hold_seconds: float) -> bool:
    """Give a call its last route (refused, failed, shut down) and close its socket only when
    closing cannot reset the channel under that route. True when the socket was let go at once.

    With ``socket_resume=true`` from the dialplan, the listener sets ``socket_resume=false`` once
    the route is queued, in the same write (:func:`released`), and the socket is closed then.
    When fsguard sent ``resume`` itself, nothing on the channel undoes it (mod_event_socket keeps
    it as a flag of the listener), so the socket is held until the channel hangs up, for at most
    ``hold_seconds``: the same when FreeSWITCH refuses ``uuid_setvar_multi``. Raises what
    :meth:`OutboundSession.send_apps` raises when the route cannot be sent; the socket is then
    left to the caller to close.
    """
    variables = []
    if app == "bridge":
        # as Call.route does: once the socket is gone the socket application returns when the
        # bridge ends, and the dialplan's own fallback after it would dial the number again
        variables.append(("set", "hangup_after_bridge=true"))
    then_set = None if session.resume_sent else dict([RELEASE_VARIABLES])
    session.send_apps(fold_variables([*variables, (app, arg)], []), then_set=then_set)
    return let_go(session, hold_seconds)


def let_go(session: OutboundSession, hold_seconds: float) -> bool:
    """Close a routed call's socket that is not followed to its end, once closing is safe: at
    once when ``socket_resume`` is false on the channel, else when the call ends or after
    ``hold_seconds``. True when it was let go at once."""
    if not session.resume_sent and released(session):
        session.close(say_exit=False)
        return True
    try:
        session.wait_for_end(hold_seconds)
    except ESLTimeout:
        log.info("ends.hold_timeout", hold_seconds=hold_seconds)
    session.close()
    return False


class EndMissed(ESLError):
    """The inbound connection was down when the call ended: its end is not known."""


class EndWatcher:
    """One inbound connection, the calls waiting for their end, and ends nobody claimed yet."""

    def __init__(self, esl: ESLSettings, node: str, *, keep_seconds: float = KEEP_SECONDS,
                 keep_max: int = KEEP_MAX) -> None:
        self.address = esl.inbound
        self.password = esl.inbound_password
        self.timeout = esl.command_timeout
        self.max_frame_bytes = esl.max_frame_bytes
        self.node = node
        self.keep_seconds = keep_seconds
        self.keep_max = keep_max
        #: uuid -> the waiting call's result (a CHANNEL_HANGUP_COMPLETE, or EndMissed)
        self.waiting: dict[str, AsyncResult] = {}
        #: uuid -> (monotonic time, the event): ends that arrived before their call waited
        self.recent: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.connected = False
        self.connections = 0
        self.ends_received = 0
        self._fs: FreeSWITCHAPI | None = None
        self._runner: gevent.Greenlet | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._runner is None:
            self._stopping = False
            self._runner = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stopping = True
        runner, self._runner = self._runner, None
        self._close()
        if runner is not None:
            runner.kill(block=True, timeout=2)
        self.connected = False

    # ------------------------------------------------------------ the calls

    def register(self, uuid: str) -> AsyncResult:
        """Wait for ``uuid``'s end; an end that already arrived is handed over at once."""
        result = AsyncResult()
        kept = self.recent.pop(uuid, None)
        if kept is not None:
            result.set(kept[1])
        else:
            self.waiting[uuid] = result
        return result

    def forget(self, uuid: str) -> None:
        self.waiting.pop(uuid, None)

    def follow(self, session: OutboundSession, timeout: float, *, answered_at_connect: bool) -> bool:
        """Let go of a routed call's socket and wait here for its CHANNEL_HANGUP_COMPLETE.

        False, with the socket untouched, when the call cannot be let go: the watcher is not
        connected, fsguard had to send ``resume`` (the dialplan does not set socket_resume), the
        channel is already ending, or the route's write did not set ``fsguard_node`` and
        ``socket_resume=false`` (:func:`released`: a hang-up, a refused ``uuid_setvar_multi``).
        Otherwise the session ends up
        as it would have after holding the socket: ``hangup_complete`` set, ``answered`` when the
        channel was answered after fsguard got it (the CHANNEL_ANSWER the socket would have read).
        Raises ESLTimeout after ``timeout`` and EndMissed if the end was lost, as a held socket
        that timed out or broke does (the call then gets no end row).
        """
        if (not self.connected or session.resume_sent or session.hungup
                or not released(session, **{NODE_VARIABLE: self.node})):
            return False
        uuid = session.uuid
        waiter = self.register(uuid)
        try:
            session.close(say_exit=False)
            try:
                event = waiter.get(timeout=timeout)
            except gevent.Timeout:
                raise ESLTimeout(f"timed out after {timeout:g}s waiting for the end of the call") from None
        finally:
            self.forget(uuid)
        session.hangup_complete = event
        answered_at = event.get("Caller-Channel-Answered-Time") or "0"
        if not answered_at_connect and answered_at.isdigit() and int(answered_at) > 0:
            session.answered = True
        return True

    # ------------------------------------------------------------ the connection

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            try:
                self._session()
            except (OSError, ESLError, InboundError) as exc:
                log.warning("ends.disconnected", error=str(exc) or type(exc).__name__, address=self.address,
                            retry_seconds=backoff, calls_waiting=len(self.waiting))
            finally:
                was = self.connected
                self.connected = False
                self._close()
            if self._stopping:
                return
            if was:
                backoff = BACKOFF_FIRST
            gevent.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is not None:
            fs.close(polite=False)

    def _session(self) -> None:
        """Connect, authenticate, subscribe; then hand out ends until the connection drops."""
        fs = FreeSWITCHAPI(self.address, self.password, timeout=self.timeout, max_frame_bytes=self.max_frame_bytes)
        self._fs = fs
        fs.connect()
        # the filter before the subscription: no other node's end is ever serialised for us
        fs.filter(f"variable_{NODE_VARIABLE}", self.node)
        # JSON: the call's last event is the largest frame fsguard reads per call (160-odd
        # headers, 6 KB), and C's JSON parser reads it in a third of the time the plain parser takes
        fs.subscribe("CHANNEL_HANGUP_COMPLETE", fmt="json")
        self.connections += 1
        self.connected = True
        log.info("ends.connected", address=self.address, node=self.node, calls_waiting=len(self.waiting))
        self._ask_about_waiting(fs)
        while not self._stopping:
            event = fs.next_event(60.0)
            if event is not None:
                self._end(event)

    def _ask_about_waiting(self, fs: FreeSWITCHAPI) -> None:
        """After a reconnection: a waiting call whose channel is gone ended while we were away."""
        gone = [uuid for uuid in list(self.waiting) if fs.api(f"uuid_exists {uuid}") != "true"]
        while fs.events:   # ends that came while we asked are ends, not losses
            self._end(fs.events.popleft())
        for uuid in gone:
            waiter = self.waiting.get(uuid)
            if waiter is not None and not waiter.ready():
                log.warning("ends.missed", call=uuid)
                waiter.set_exception(EndMissed("the call ended while the inbound event socket was down"))

    def _end(self, event: Any) -> None:
        if event.get("Event-Name") != "CHANNEL_HANGUP_COMPLETE":
            return
        uuid = event.get("Unique-ID")
        if not uuid:
            return
        self.ends_received += 1
        waiter = self.waiting.pop(uuid, None)
        if waiter is not None:
            waiter.set(event)
            return
        now = time.monotonic()
        self.recent[uuid] = (now, event)
        recent = self.recent
        while recent and (len(recent) > self.keep_max or next(iter(recent.values()))[0] < now - self.keep_seconds):
            recent.popitem(last=False)
