"""One channel as fsguard follows it over its outbound socket, without the socket.

What FreeSWITCH says about the channel (replies, events, notices: values from
:mod:`fsguard.esl.protocol`) is sorted here into what a call needs to know: answered, hung up and
why, the digits pressed, the completion of each application waited for. And what fsguard says is
decided here: which events to subscribe to, when to unsubscribe from completions. The driver,
:class:`fsguard.esl.session.OutboundSession`, adds the socket and the waiting.

* completions are matched on ``Application-UUID`` (the ``Event-UUID`` sent with the application),
  not on the application's name: an earlier playback's completion never ends the wait for another;
* hang-up and answer events count only when they carry the channel's own ``Unique-ID``
  (``myevents`` sends nothing else: another uuid is a forgery);
* an event nobody reads is dropped after two searches in its raw bytes, never parsed.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import structlog

from fsguard.esl.protocol import (Command, Connection, Disconnected, Event, EventHeaders, Execute, Frame, GetVar,
                                  Headers, MyEvents, NixEvent, PlainEvent, Rejected, Reply)

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
#: OutboundChannel.subscription); completions only while a stage waits for one
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


class OutboundChannel:
    """What is known of one channel, from what FreeSWITCH said on its socket; what to say next."""

    def __init__(self, *, max_frame_bytes: int = 1_048_576, event_format: str = "plain", log: Any = None) -> None:
        self.protocol = Connection(max_frame_bytes)
        self.event_format = "json" if event_format == "json" else "plain"
        self.log = log or structlog.get_logger("fsguard.esl")
        #: the ``connect`` reply's headers: the channel's data
        self.channel: Headers = {}
        #: replies read and not taken yet, in the order of the commands
        self.replies: deque[Reply] = deque()
        self.completions: dict[str, EventHeaders] = {}
        #: Event-UUIDs of the applications a caller waits on (completions of queued ones are dropped)
        self.awaiting: set[str] = set()
        self.dtmf: list[str] = []
        self.answered = False
        self.hangup_event: EventHeaders | None = None
        self.hangup_complete: EventHeaders | None = None
        self.linger_notice = False
        #: nothing more will come from FreeSWITCH (the socket closed, or it refused us)
        self.eof = False
        self.exited = False
        self.events_read = 0
        #: events dropped unparsed (see _wanted)
        self.events_skipped = 0
        #: whether FreeSWITCH currently sends CHANNEL_EXECUTE_COMPLETE (see COMPLETION)
        self.completions_subscribed = True
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

    # ----------------------------------------------------------- what comes in

    def receive(self, data: bytes) -> None:
        """Take in bytes read from the socket."""
        for frame in self.protocol.reader.frames(data):
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        """Sort what a frame says: replies to the reply queue, events into the channel's state."""
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

    # ------------------------------------------------------------ what to say

    def subscription(self) -> tuple[Command, ...]:
        """What fsguard asks for, in as few bytes as FreeSWITCH's semantics allow.

        ``myevents`` limits the socket to this channel's events (and subscribes to 20 of them);
        ``nixevent ALL`` empties the list but keeps that limit; ``event`` adds back the four
        fsguard reads. The same subscription as ``nixevent`` naming the 19 others, in 90 bytes
        instead of 340: mod_event_socket reads commands one byte per ``recv`` (and a
        ``sched_yield`` after each), so every byte sent costs FreeSWITCH two system calls.
        """
        return (MyEvents(self.event_format), NixEvent(("ALL",)), Event(EVENTS_SUBSCRIBED, self.event_format))

    def commands_to_queue(self, apps: list[tuple[str, str]]) -> list[Command]:
        """The commands that queue ``apps`` without waiting for them.

        No Event-UUID: nobody waits for these completions, and every byte written costs
        FreeSWITCH (see :meth:`subscription`). Completions are unsubscribed in the same write when
        nobody waits for one any more.
        """
        commands: list[Command] = [Execute(app, arg) for app, arg in apps]
        if self.completions_subscribed and not self.awaiting:
            commands.insert(0, NixEvent((COMPLETION,)))
            self.completions_subscribed = False
        return commands

    def commands_to_run(self, execute: Execute) -> list[Command]:
        """The commands that run ``execute`` and bring back its completion: the subscription to
        completions goes in the same write, before the application (FreeSWITCH reads in order)."""
        assert execute.event_uuid is not None
        self.awaiting.add(execute.event_uuid)
        if self.completions_subscribed:
            return [execute]
        self.completions_subscribed = True
        return [Event((COMPLETION,), self.event_format), execute]

    @staticmethod
    def getvar_command(name: str) -> GetVar:
        """``getvar`` for a channel variable that no caller can put text into.

        The reply to ``getvar`` is the raw value, not encoded: a caller-controlled variable could
        carry CR LF and forge headers. Those are read from the channel data instead.
        """
        if name in CALLER_CONTROLLED or name.startswith(("sip_h_", "sip_from", "sip_to", "sip_req")):
            raise ValueError(f"{name} is caller-controlled: read it from the channel data, never getvar")
        return GetVar(name)
