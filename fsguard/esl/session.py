"""The outbound Event Socket session: what fsguard says to FreeSWITCH about one channel.

The driver of one call's socket: it writes the commands of :mod:`fsguard.esl.protocol` and reads
what comes back as values, on the call's own greenlet. It replaces greenswitch 0.0.19's
``OutboundSession`` because of defects a call guard cannot live with, each covered by a test in
tests/test_esl.py:

* ``ESLEvent.parse_data`` URL-decodes the whole frame before splitting it into lines, so a caller
  id name carrying ``%0ACaller-Caller-ID-Number%3A%20...`` forges headers (the protocol module
  splits first: see :mod:`fsguard.esl.protocol`).
* ``send()`` waits forever; here every wait has a deadline and a dead peer raises.
* replies are matched with ``pop(0)`` and an unsolicited reply kills the reader; here replies are
  counted and a stray one is logged and dropped.
* completions are matched on the application name; here on ``Application-UUID`` (we send
  ``Event-UUID`` with every ``sendmsg``).
* three greenlets and a queue per call with ``gevent.sleep(1)`` polling; here the call's own
  greenlet reads the socket when it waits for something, and nothing else runs per call.
* a hang-up is noticed only at the next command (its issue #59); here pending input is read
  without blocking before every command, so a command is never sent to a channel known to be gone.
* the linger notice's raw ``Channel-Name:`` can carry forged frames (recognised by FreeSWITCH's
  own bytes: see :mod:`fsguard.esl.protocol`); and hang-up events count only when they carry the
  channel's own ``Unique-ID``.

The session is deliberately synchronous from the caller's point of view: ``execute`` returns when
the application has finished, which is what lets a stage read like the call flow.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections import deque
from typing import Any, Callable

import gevent.socket as gsocket
import structlog

from fsguard.esl.protocol import (Api, Command, CommandReply, Connect, Connection, Disconnected, ESLError, Event,
                                  EventHeaders, Execute, Exit, Frame, GetVar, Headers, Linger, MyEvents, NixEvent,
                                  PlainEvent, ProtocolError, Rejected, Reply, Resume)

#: the channel events fsguard reads: completions, answer, hang-up, the end of the call, digits
EVENTS_READ = frozenset({"CHANNEL_EXECUTE_COMPLETE", "CHANNEL_ANSWER", "CHANNEL_HANGUP",
                         "CHANNEL_HANGUP_COMPLETE", "DTMF"})
#: what ``myevents`` subscribes to (mod_event_socket.c) less the above: unsubscribed with
#: ``nixevent`` in the same write, so FreeSWITCH never serialises them (each is 2-5 KB with every
#: channel variable) and fsguard never reads them
EVENTS_NOT_READ = ("CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA", "CHANNEL_DESTROY",
                   "CHANNEL_EXECUTE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
                   "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE",
                   "CHANNEL_UNPARK", "DETECTED_SPEECH", "NOTALK", "TALK")
#: subscribed to for the whole call (after ``myevents`` and ``nixevent ALL``: see
#: OutboundSession.subscription); completions only while a stage waits for one
EVENTS_SUBSCRIBED = ("CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "DTMF")
#: read only while a stage waits for an application: subscribed to (``event``) in the same write
#: as the application, unsubscribed in the next write that waits for nothing. A routed call's
#: exports and route would otherwise bring back one 2-5 KB completion each that nobody reads.
COMPLETION = "CHANNEL_EXECUTE_COMPLETE"

#: variables a caller can put text into; never ``getvar`` these (the reply is not encoded)
CALLER_CONTROLLED = frozenset(
    {"caller_id_name", "caller_id_number", "effective_caller_id_name", "effective_caller_id_number",
     "sip_from_display", "sip_from_user", "sip_full_from", "channel_name", "sip_contact_user"}
)


class ESLTimeout(ESLError):
    """FreeSWITCH did not answer in time."""


class CommandFailed(ESLError):
    """FreeSWITCH answered ``-ERR`` to a command."""


class CallGone(ESLError):
    """The channel has hung up or the socket is closed: nothing more can be done with this call."""


class OutboundSession:
    """One channel handed to fsguard by FreeSWITCH's ``socket`` application.

    Only the call's own greenlet uses a session. It reads the socket when it waits for something
    (a reply, an application's completion, the end of the call) and records every event it reads
    on the way: hang-up, answer, DTMF.
    """

    def __init__(self, sock: Any, *, command_timeout: float = 5.0, max_frame_bytes: int = 1_048_576,
                 event_format: str = "plain", log: Any = None, connect_timeout: float | None = None) -> None:
        self.sock = sock
        self.command_timeout = command_timeout
        #: how long the peer may take to answer ``connect`` (FreeSWITCH answers at once)
        self.connect_timeout = connect_timeout or command_timeout
        self.event_format = "json" if event_format == "json" else "plain"
        self.log = log or structlog.get_logger("fsguard.esl")
        self.protocol = Connection(max_frame_bytes)
        self.channel: Headers = {}
        self.replies: deque[Reply] = deque()
        self.completions: dict[str, EventHeaders] = {}
        #: Event-UUIDs of the applications a caller waits on (completions of queued ones are dropped)
        self.awaiting: set[str] = set()
        self.dtmf: list[str] = []
        self.answered = False
        self.hangup_event: EventHeaders | None = None
        self.hangup_complete: EventHeaders | None = None
        self.linger_notice = False
        self.eof = False
        self.closed = False
        self.exited = False
        self.events_read = 0
        #: events dropped unparsed (see _wanted)
        self.events_skipped = 0
        #: whether FreeSWITCH currently sends CHANNEL_EXECUTE_COMPLETE (see COMPLETION)
        self.completions_subscribed = True
        #: the application we are waiting on, if a wait was interrupted it is still running
        self.running: str | None = None
        self.on_event: Callable[[EventHeaders], None] | None = None

    # ----------------------------------------------------------------- state

    @property
    def uuid(self) -> str:
        return self.channel.get("Unique-ID", "")

    @property
    def started(self) -> bool:
        """FreeSWITCH has answered ``connect``: this connection is a channel."""
        return bool(self.channel)

    @property
    def hungup(self) -> bool:
        """The channel is gone (or we can no longer talk to it)."""
        return self.hangup_event is not None or self.hangup_complete is not None or self.eof

    @property
    def hangup_cause(self) -> str | None:
        for event in (self.hangup_complete, self.hangup_event):
            if event:
                return event.get("variable_hangup_cause") or event.get("Hangup-Cause")
        return None

    @property
    def replies_expected(self) -> int:
        """Commands sent whose reply has not been read yet."""
        return len(self.protocol.pending)

    # ------------------------------------------------------------------- I/O

    def _write(self, data: bytes) -> None:
        if self.eof or self.closed:
            raise CallGone("socket closed")
        self.sock.settimeout(self.command_timeout)
        try:
            self.sock.sendall(data)
        except (OSError, gsocket.timeout) as exc:
            self.eof = True
            raise CallGone(f"write failed: {exc}") from None

    def _fill(self, timeout: float | None) -> None:
        """Read once from the socket (waiting up to ``timeout``; 0 = only what is there)."""
        if self.eof:
            raise CallGone("socket closed by FreeSWITCH")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, gsocket.timeout, TimeoutError):
            if timeout == 0:
                return
            raise ESLTimeout("no data from FreeSWITCH in time") from None
        except OSError as exc:
            self.eof = True
            raise CallGone(f"read failed: {exc}") from None
        if not data:
            self.eof = True
            unfinished = self.protocol.reader.unfinished()
            if unfinished:
                self.log.warning("esl.truncated_frame", buffered=len(unfinished))
            raise CallGone("socket closed by FreeSWITCH")
        for frame in self.protocol.reader.frames(data):
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        """Sort what a frame says: replies to the reply queue, events into the session's state."""
        item = self.protocol.incoming(frame)
        if isinstance(item, Reply):
            if item.command is None:
                self.log.warning("esl.unsolicited_reply", reply=item.text)
            else:
                self.replies.append(item)
        elif isinstance(item, PlainEvent):
            if self._wanted(item):
                self._event(item)
            else:
                self.events_skipped += 1
        elif isinstance(item, dict):
            self._event(item)
        elif isinstance(item, Disconnected):
            if item.linger:
                self.linger_notice = True
            else:
                self.exited = True
        elif isinstance(item, Rejected):
            self.eof = True
        else:
            self.log.debug("esl.ignored_frame", content_type=frame.content_type)

    def _wanted(self, event: PlainEvent) -> bool:
        """Whether an event is worth parsing: most of a call's events are 2-5 KB of channel
        variables fsguard has no use for (a completion nobody waits on, an event the ``nixevent``
        did not cover on an older FreeSWITCH). Deciding costs two searches in the raw bytes."""
        name = event.get("Event-Name")
        if name not in EVENTS_READ:
            return False
        if name == "CHANNEL_EXECUTE_COMPLETE":
            return event.get("Application-UUID") in self.awaiting
        return True

    def _event(self, event: EventHeaders) -> None:
        self.events_read += 1
        name = event.get("Event-Name")
        if name == "CHANNEL_EXECUTE_COMPLETE":
            app_uuid = event.get("Application-UUID")
            if app_uuid in self.awaiting:
                self.completions[app_uuid] = event
        elif name == "DTMF":
            self.dtmf.append(event.get("DTMF-Digit", ""))
        elif name in ("CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
            if self.channel and event.get("Unique-ID") != self.uuid:
                # myevents sends this channel's events only: another uuid (or none) is a forgery
                self.log.warning("esl.foreign_event", event_name=name, event_uuid=event.get("Unique-ID"))
                return
            if name == "CHANNEL_ANSWER":
                self.answered = True
            elif name == "CHANNEL_HANGUP":
                self.hangup_event = self.hangup_event or event
            elif self.hangup_complete is None:
                self.hangup_complete = event   # the first: FreeSWITCH sends it once
        if self.on_event is not None:
            self.on_event(event)

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ESLTimeout(f"timed out after {timeout:g}s waiting for {what}")
            self._fill(remaining)

    def poll(self) -> None:
        """Take in whatever FreeSWITCH already sent, without waiting."""
        if not self.eof and not self.closed:
            try:
                self._fill(0)
            except CallGone:
                pass

    # -------------------------------------------------------------- commands

    def send(self, *commands: Command) -> None:
        """Write commands in one go; their replies are awaited with :meth:`reply`."""
        self._write(self.protocol.send(*commands))

    def reply(self, timeout: float | None = None) -> Reply:
        """The next reply, in the order the commands were sent."""
        self._wait(lambda: bool(self.replies), timeout or self.command_timeout, "a command reply")
        return self.replies.popleft()

    def command(self, command: Command, timeout: float | None = None) -> Reply:
        self.send(command)
        return self.reply(timeout)

    def start(self) -> Headers:
        """``connect``, then ``resume``, the subscription and ``linger``, written in one go.

        ``connect`` must be the first command (anything before it is never answered); FreeSWITCH
        reads commands one by one, so the rest can follow in the same write. ``resume`` comes at
        once so that from here on, whatever happens to fsguard, closing the socket hands the
        channel back to the dialplan's fallback instead of leaving it ringing. ``nixevent`` drops
        the channel events fsguard never reads from what ``myevents`` subscribed to: most of the
        bytes FreeSWITCH would write about a call are events nobody here looks at. A bare
        ``linger``: the socket stays until the final events are read.
        """
        subscription = self.subscription()
        self.send(Connect(), Resume(), *subscription, Linger())
        connect = self.reply(self.connect_timeout)
        if not isinstance(connect, CommandReply) or "Unique-ID" not in connect.headers:
            raise ProtocolError("connect reply carries no channel data")
        self.channel = connect.headers
        for _ in range(len(subscription) + 2):
            self._expect_ok()
        self.completions_subscribed = False
        return self.channel

    def subscription(self) -> tuple[Command, ...]:
        """What fsguard asks for, in as few bytes as FreeSWITCH's semantics allow.

        ``myevents`` limits the socket to this channel's events (and subscribes to 20 of them);
        ``nixevent ALL`` empties the list but keeps that limit; ``event`` adds back the four
        fsguard reads. The same subscription as ``nixevent`` naming the 19 others, in 90 bytes
        instead of 340: mod_event_socket reads commands one byte per ``recv`` (and a
        ``sched_yield`` after each), so every byte sent costs FreeSWITCH two system calls.
        """
        return (MyEvents(self.event_format), NixEvent(("ALL",)), Event(EVENTS_SUBSCRIBED, self.event_format))

    def send_apps(self, apps: list[tuple[str, str]]) -> None:
        """Queue applications on the channel in one write, without waiting for them to run.

        In async mode FreeSWITCH answers each ``sendmsg`` at once and runs the applications in
        order, so setting variables and then routing costs one round trip, not one per application.
        """
        if not apps:
            return
        self.poll()
        if self.hungup:
            raise CallGone(f"channel gone before {apps[0][0]}")
        # no Event-UUID: nobody waits for these completions (and they are not subscribed to), and
        # every byte written costs FreeSWITCH (see subscription)
        commands: list[Command] = [Execute(app, arg) for app, arg in apps]
        unsubscribe = self.completions_subscribed and not self.awaiting
        if unsubscribe:
            commands.insert(0, NixEvent((COMPLETION,)))
        self.send(*commands)
        if unsubscribe:
            self.completions_subscribed = False
            self._expect_ok()
        refused: list[str] = []
        for app, _ in apps:
            # every reply is read, even after a refusal: one left unread would answer the next command
            reply = self.reply()
            if not reply.ok:
                refused.append(f"{app} refused: {reply.text}")
        if refused:
            raise CommandFailed("; ".join(refused))

    def _expect_ok(self) -> None:
        reply = self.reply()
        if not reply.ok:
            self.log.warning("esl.command_refused", command=str(reply.command), reply=reply.text)

    def execute(self, app: str, arg: str = "", *, wait: bool = True, timeout: float | None = None) -> EventHeaders | None:
        """Run a dialplan application on the channel.

        With ``wait`` it returns the CHANNEL_EXECUTE_COMPLETE event of this very execution (matched
        on the Event-UUID we sent), waiting at most ``timeout`` seconds. Raises CallGone if the
        channel is already gone or hangs up before the application completes.
        """
        app_uuid = str(uuidlib.uuid4())
        command = Execute(app, arg, app_uuid)
        self.poll()
        if self.hungup:
            raise CallGone(f"channel gone before {app}")
        if wait:
            self.awaiting.add(app_uuid)
        try:
            if wait and not self.completions_subscribed:
                # in the same write, before the application: FreeSWITCH reads commands in order
                self.send(Event((COMPLETION,), self.event_format), command)
                self.completions_subscribed = True
                self._expect_ok()
                reply = self.reply()
            else:
                reply = self.command(command)
            if not reply.ok:
                raise CommandFailed(f"{app} refused: {reply.text}")
            if not wait:
                return None

            def finished() -> bool:
                return app_uuid in self.completions or self.hangup_complete is not None or self.eof

            self.running = app
            try:
                self._wait(finished, timeout or self.command_timeout, f"{app} to complete")
            except CallGone:
                pass
            self.running = None
            event = self.completions.pop(app_uuid, None)
        finally:
            self.awaiting.discard(app_uuid)
        if event is None:
            raise CallGone(f"channel gone during {app}")
        return event

    def break_media(self) -> None:
        """Stop the application still running on the channel (``uuid_break all``).

        Applications run in order in async mode: after an interrupted wait (a timeout, a
        shutdown), an instruction sent now would only run once that playback or digit
        collection ends on its own.
        """
        if self.running and not self.hungup:
            reply = self.command(Api(f"uuid_break {self.uuid} all"))
            self.log.info("esl.break", application=self.running, reply=reply.text.strip())
            self.running = None

    def getvar(self, name: str) -> str:
        """A channel variable that no caller can put text into.

        The reply to ``getvar`` is the raw value, not encoded: a caller-controlled variable could
        carry CR LF and forge headers. Those are read from the channel data instead.
        """
        if name in CALLER_CONTROLLED or name.startswith(("sip_h_", "sip_from", "sip_to", "sip_req")):
            raise ValueError(f"{name} is caller-controlled: read it from the channel data, never getvar")
        return self.command(GetVar(name)).text

    def wait_for_end(self, timeout: float) -> EventHeaders | None:
        """Follow the call until FreeSWITCH reports it over (CHANNEL_HANGUP_COMPLETE) or closes."""
        try:
            self._wait(lambda: self.hangup_complete is not None or self.exited, timeout, "the end of the call")
        except CallGone:
            pass
        return self.hangup_complete

    def close(self) -> None:
        """Say ``exit`` if FreeSWITCH is still there, then close. Safe to call more than once."""
        if self.closed:
            return
        try:
            if not self.eof:
                self.send(Exit())
                try:
                    self._wait(lambda: self.exited, min(self.command_timeout, 1.0), "exit")
                except (ESLTimeout, CallGone, ProtocolError):
                    pass
        except (CallGone, OSError):
            pass
        finally:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
