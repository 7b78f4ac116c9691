"""The outbound Event Socket session: what fsguard says to FreeSWITCH about one channel.

This replaces greenswitch 0.0.19's ``OutboundSession`` (greenswitch stays the inbound ESL client)
because of defects a call guard cannot live with, each covered by a test in tests/test_esl.py:

* ``ESLEvent.parse_data`` URL-decodes the whole frame before splitting it into lines, so a caller
  id name carrying ``%0ACaller-Caller-ID-Number%3A%20...`` forges headers. Here a frame is split
  into lines first and each value is decoded on its own.
* ``send()`` waits forever; here every wait has a deadline and a dead peer raises.
* replies are matched with ``pop(0)`` and an unsolicited reply kills the reader; here replies are
  counted and a stray one is logged and dropped.
* completions are matched on the application name; here on ``Application-UUID`` (we send
  ``Event-UUID`` with every ``sendmsg``).
* three greenlets and a queue per call with ``gevent.sleep(1)`` polling; here the call's own
  greenlet reads the socket when it waits for something, and nothing else runs per call.
* a hang-up is noticed only at the next command (its issue #59); here pending input is read
  without blocking before every command, so a command is never sent to a channel known to be gone.
* the linger notice's ``Channel-Name:`` is written raw (mod_sofia URL-decodes the SIP From user
  into the channel name), so a caller can end the notice early and forge frames after it, or
  inject a ``Content-Length``. Here the notice is recognised by what FreeSWITCH itself writes
  (its fixed headers around the channel name known from the ``connect`` reply, cut at 511 bytes
  as mod_event_socket's 512-byte buffer does), whatever bytes the caller put in the name; and
  hang-up events count only when they carry the channel's own ``Unique-ID``.

The session is deliberately synchronous from the caller's point of view: ``execute`` returns when
the application has finished, which is what lets a stage read like the call flow.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections import deque
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote

import gevent.socket as gsocket
import structlog
from greenswitch.esl import OutboundSessionHasGoneAway

Headers = dict[str, str]

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

#: what fsguard asks for (a bare ``linger``: until the final events are read); the notice says it
#: back as ``Linger-Time: -1``
LINGER_TIME = -1

#: variables a caller can put text into; never ``getvar`` these (the reply is not encoded)
CALLER_CONTROLLED = frozenset(
    {"caller_id_name", "caller_id_number", "effective_caller_id_name", "effective_caller_id_number",
     "sip_from_display", "sip_from_user", "sip_full_from", "channel_name", "sip_contact_user"}
)


class ESLError(Exception):
    """Base of everything that can go wrong on the Event Socket."""


class ProtocolError(ESLError):
    """The peer sent something that is not the Event Socket protocol; this connection is dropped."""


class ESLTimeout(ESLError):
    """FreeSWITCH did not answer in time."""


class CommandFailed(ESLError):
    """FreeSWITCH answered ``-ERR`` to a command."""


class CallGone(ESLError, OutboundSessionHasGoneAway):
    """The channel has hung up or the socket is closed: nothing more can be done with this call.

    It is also greenswitch's ``OutboundSessionHasGoneAway``, so code written against greenswitch
    keeps catching it.
    """


class Frame:
    """One Event Socket frame: the outer header block and its body, if any (and for a command
    reply, the header block as sent: the ``connect`` reply's encoded values are read from it)."""

    __slots__ = ("headers", "body", "raw")

    def __init__(self, headers: Headers, body: bytes = b"", raw: bytes | None = None) -> None:
        self.headers = headers
        self.body = body
        self.raw = raw

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def __repr__(self) -> str:
        return f"Frame({self.content_type!r}, {len(self.body)} bytes)"


def parse_headers(block: bytes | str) -> Headers:
    """Parse ``Name: value`` lines, splitting lines first and decoding each value on its own.

    Raw bytes must be UTF-8 (FreeSWITCH encodes everything else); a value's ``%XX`` escapes are
    decoded with replacement so an odd caller name cannot take the connection down. When a name
    repeats, the first value wins, except ``Content-Length`` where the last one wins: in a
    disconnect notice FreeSWITCH writes its own ``Content-Length`` last, after the raw
    ``Channel-Name`` a caller may have put a forged one into.
    """
    if isinstance(block, bytes):
        try:
            block = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"header block is not UTF-8 at byte {exc.start}") from None
    headers: Headers = {}
    for line in block.split("\n"):
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
            if not sep:
                continue
        if value.endswith("\r"):
            value = value[:-1]
        if "%" in value:
            value = unquote(value, errors="replace")
        if name == "Content-Length" or name not in headers:
            headers[name] = value
    return headers


def parse_event_plain(body: bytes) -> Headers:
    """A ``text/event-plain`` body: a serialised event, possibly with a body of its own."""
    head, sep, rest = body.partition(b"\n\n")
    headers = parse_headers(head)
    if sep and rest.strip():
        headers["_body"] = rest.decode("utf-8", errors="replace")
    return headers


def plain_header(body: bytes, name: bytes) -> str | None:
    """One header of an event-plain body, found without parsing the others.

    Only a match at the start of a line counts: FreeSWITCH URL-encodes every value of a plain
    event, so no caller text can put a line break, let alone a header name, at a line start.
    The body's own body (after the blank line) is not searched.
    """
    key = b"\n" + name + b": "
    end_of_headers = body.find(b"\n\n")
    if body.startswith(key[1:]):
        start = len(key) - 1
    else:
        at = body.find(key, 0, end_of_headers if end_of_headers >= 0 else len(body))
        if at < 0:
            return None
        start = at + len(key)
    stop = body.find(b"\n", start)
    value = body[start:stop if stop >= 0 else len(body)].decode("utf-8", errors="replace")
    return unquote(value, errors="replace") if "%" in value else value


class PlainEvent(Mapping[str, str]):
    """An event-plain body read header by header, on demand.

    A hang-up event carries every channel variable (2-5 KB) and fsguard reads three of them:
    each lookup is a search in the raw bytes (see :func:`plain_header`), and the whole event is
    parsed only if something iterates over it. It reads exactly as :func:`parse_event_plain`
    would have parsed it.
    """

    __slots__ = ("body", "_seen", "_all")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._seen: dict[str, str | None] = {}
        self._all: Headers | None = None

    def _parsed(self) -> Headers:
        if self._all is None:
            self._all = parse_event_plain(self.body)
        return self._all

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if self._all is not None:
            return self._all.get(key, default)
        if key == "_body" or key == "Content-Length":
            return self._parsed().get(key, default)
        try:
            value = self._seen[key]
        except KeyError:
            value = self._seen[key] = plain_header(self.body, key.encode())
        return default if value is None else value

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __bool__(self) -> bool:
        return True   # an event always has headers; ``event or {}`` must not parse it whole

    def __repr__(self) -> str:
        return f"PlainEvent({self.get('Event-Name')!r}, {len(self.body)} bytes)"


def parse_event_json(body: bytes) -> Headers:
    """A ``text/event-json`` body. Arrays become FreeSWITCH's ``ARRAY::a|:b`` form, as in plain."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"event-json body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("event-json body is not an object")
    headers: Headers = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = "ARRAY::" + "|:".join(str(v) for v in value)
        elif not isinstance(value, str):
            value = str(value)
        headers[key] = value
    return headers


#: mod_event_socket formats the linger notice into ``char disco_buf[512]`` with snprintf: a notice
#: longer than 511 bytes is cut there, without its last headers and its blank line
NOTICE_MAX = 511
NOTICE_HEAD = b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: "
_HEX = b"0123456789ABCDEF"

#: a run of bytes the notice must hold, each alternative a possibility
NoticeToken = tuple[bytes, ...]


def raw_value_tokens(encoded: bytes) -> list[NoticeToken]:
    """What FreeSWITCH may hold raw for a value it sent URL-encoded, as tokens to match.

    ``switch_url_encode`` does not double-encode: a ``%`` followed by two upper-case hex digits is
    copied as it is. So each ``%XX`` of the encoded value stands for the byte it encodes OR for
    those three characters, and only the bytes FreeSWITCH writes raw can tell which.
    """
    tokens: list[NoticeToken] = []
    run = bytearray()
    i, n = 0, len(encoded)
    while i < n:
        pair = encoded[i + 1:i + 3]
        if encoded[i] == 0x25 and len(pair) == 2 and all(c in b"0123456789ABCDEFabcdef" for c in pair):
            byte = bytes((int(pair, 16),))
            if run:
                tokens.append((bytes(run),))
                run.clear()
            literal = pair[0] in _HEX and pair[1] in _HEX
            tokens.append((byte, encoded[i:i + 3]) if literal else (byte,))
            i += 3
        else:
            run.append(encoded[i])
            i += 1
    if run:
        tokens.append((bytes(run),))
    return tokens


def linger_notice_tokens(encoded_uuid: bytes, encoded_name: bytes, linger_time: int) -> list[NoticeToken]:
    """The linger notice exactly as mod_event_socket.c writes it, for one channel."""
    return ([(NOTICE_HEAD,)] + raw_value_tokens(encoded_uuid)
            + [(b"\nContent-Disposition: linger\nChannel-Name: ",)] + raw_value_tokens(encoded_name)
            + [(b"\nLinger-Time: %d\nContent-Length: 0\n\n" % linger_time,)])


def match_notice(buf: bytes | bytearray, tokens: list[NoticeToken]) -> int | None:
    """Where the linger notice at the start of ``buf`` ends: its length, -1 when more bytes are
    needed to know, None when ``buf`` does not start with this notice.

    Every way the tokens can be read is followed at once (a set of positions: polynomial, whatever
    the caller put in the name). Of the readings that fit, the longest is FreeSWITCH's: a reading
    that ends later would have to match FreeSWITCH's own next frame, which no caller writes.
    """
    positions = {0}
    pending = False
    have = len(buf)
    for token in tokens:
        following: set[int] = set()
        for start in positions:
            if start >= NOTICE_MAX:
                following.add(start)   # cut by snprintf: the rest was never written
                continue
            for alt in token:
                stop = min(start + len(alt), NOTICE_MAX)
                if stop > have:
                    if buf[start:have] == alt[:have - start]:
                        pending = True
                    continue
                if buf[start:stop] == alt[:stop - start]:
                    following.add(stop)
        positions = following
        if not positions:
            return -1 if pending else None
    return -1 if pending else max(positions)


class FrameReader:
    """Sans-IO frame reader: feed it bytes as they arrive, get whole frames back.

    Anything that cannot be a FreeSWITCH frame (a header block or body over ``max_bytes``, a
    Content-Length that is not a plain number, raw bytes that are not UTF-8) raises ProtocolError.
    """

    def __init__(self, max_bytes: int = 1_048_576) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._pending: Headers | None = None
        self._need = 0
        #: where the search for the end of the header block resumes (a block trickled in byte
        #: by byte is scanned once, not once per byte)
        self._scan = 0
        #: the linger notice this channel will get, as tokens (see :func:`linger_notice_tokens`):
        #: recognised by FreeSWITCH's own bytes around the raw channel name, once
        self.notice: list[NoticeToken] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _linger_notice(self) -> int | None:
        """The length of the linger notice at the start of the buffer (-1: more bytes needed)."""
        assert self.notice is not None
        buf = self._buf
        head = min(len(buf), len(NOTICE_HEAD))
        if buf[:head] != NOTICE_HEAD[:head]:
            return None
        return match_notice(buf, self.notice)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        while True:
            if self._pending is not None:
                if len(buf) < self._need:
                    break
                body = bytes(buf[: self._need])
                del buf[: self._need]
                frames.append(Frame(self._pending, body))
                self._pending = None
                continue
            if self.notice is not None and buf[:1] == b"C":
                length = self._linger_notice()
                if length == -1:
                    break
                if length is not None:
                    del buf[:length]
                    self.notice, self._scan = None, 0
                    frames.append(Frame({"Content-Type": "text/disconnect-notice",
                                         "Content-Disposition": "linger"}))
                    continue
            end = buf.find(b"\n\n", max(0, self._scan - 1))
            if end < 0:
                if len(buf) > self.max_bytes:
                    raise ProtocolError(f"header block longer than {self.max_bytes} bytes")
                self._scan = len(buf)
                break
            self._scan = 0
            block = bytes(buf[:end])
            del buf[: end + 2]
            if not block.strip():
                continue
            headers = parse_headers(block)
            ctype = headers.get("Content-Type")
            if ctype is None:
                # Every frame FreeSWITCH writes has a Content-Type. A block without one is the
                # tail of a raw value with a blank line in it (a linger notice's Channel-Name
                # carrying a caller's LF LF): drop it, and above all never read a body for it.
                continue
            length = headers.get("Content-Length")
            # A command reply never has a body; a Content-Length in one can only be caller text
            # that FreeSWITCH echoed raw (a getvar reply), so it is not trusted.
            if ctype == "command/reply":
                frames.append(Frame(headers, raw=block))
                continue
            if length is None or length == "0":
                frames.append(Frame(headers))
                continue
            if not (length.isascii() and length.isdigit()) or len(length) > 10:
                raise ProtocolError(f"Content-Length {length!r} is not a number")
            need = int(length)
            if need > self.max_bytes:
                raise ProtocolError(f"Content-Length {need} is over the {self.max_bytes} byte limit")
            self._pending, self._need = headers, need
        if not buf and self._pending is None:
            # A bytearray keeps the capacity of its largest fill even once emptied: a call held
            # for an hour would keep a 64 KB read buffer for nothing.
            self._buf = bytearray()
        return frames


def _raw_value(block: bytes | None, name: bytes) -> bytes:
    """A header's value in a header block as sent (still URL-encoded)."""
    if not block:
        return b""
    key = name + b": "
    at = 0 if block.startswith(key) else block.find(b"\n" + key) + 1
    if at == 0 and not block.startswith(key):
        return b""
    start = at + len(key)
    stop = block.find(b"\n", start)
    value = block[start:stop if stop >= 0 else len(block)]
    return value[:-1] if value.endswith(b"\r") else value


def _check_arg(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"line break in an Event Socket argument: {text!r}")
    return text


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
        self.event_format = event_format
        self.log = log or structlog.get_logger("fsguard.esl")
        self.reader = FrameReader(max_frame_bytes)
        self.channel: Headers = {}
        self.frames: deque[Frame] = deque()
        self.replies: deque[Frame] = deque()
        self.replies_expected = 0
        self.completions: dict[str, Headers] = {}
        #: Event-UUIDs of the applications a caller waits on (completions of queued ones are dropped)
        self.awaiting: set[str] = set()
        self.dtmf: list[str] = []
        self.answered = False
        self.hangup_event: Headers | None = None
        self.hangup_complete: Headers | None = None
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
        self.on_event: Callable[[Headers], None] | None = None

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
            if self.reader.buffered:
                self.log.warning("esl.truncated_frame", buffered=self.reader.buffered)
            raise CallGone("socket closed by FreeSWITCH")
        for frame in self.reader.feed(data):
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        """Sort a frame: replies to the reply queue, events into the session's state."""
        ctype = frame.content_type
        if ctype in ("command/reply", "api/response"):
            if self.replies_expected <= 0:
                self.log.warning("esl.unsolicited_reply", reply=frame.headers.get("Reply-Text", ""))
                return
            self.replies_expected -= 1
            self.replies.append(frame)
        elif ctype == "text/event-plain":
            if self._wanted(frame.body):
                self._event(PlainEvent(frame.body))
            else:
                self.events_skipped += 1
        elif ctype == "text/event-json":
            self._event(parse_event_json(frame.body))
        elif ctype == "text/disconnect-notice":
            if frame.headers.get("Content-Disposition") == "linger":
                self.linger_notice = True
            else:
                self.exited = True
        elif ctype == "text/rude-rejection":
            self.eof = True
        else:
            self.log.debug("esl.ignored_frame", content_type=ctype)

    def _wanted(self, body: bytes) -> bool:
        """Whether an event-plain body is worth parsing: most of a call's events are 2-5 KB of
        channel variables fsguard has no use for (a completion nobody waits on, an event the
        ``nixevent`` did not cover on an older FreeSWITCH). Deciding costs two searches."""
        name = plain_header(body, b"Event-Name")
        if name not in EVENTS_READ:
            return False
        if name == "CHANNEL_EXECUTE_COMPLETE":
            return plain_header(body, b"Application-UUID") in self.awaiting
        return True

    def _event(self, event: Headers) -> None:
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

    def send(self, *commands: str) -> None:
        """Write commands in one go; their replies are awaited with :meth:`reply`."""
        self._write("".join(c + "\n\n" for c in commands).encode("utf-8"))
        self.replies_expected += len(commands)

    def reply(self, timeout: float | None = None) -> Frame:
        """The next reply, in the order the commands were sent."""
        self._wait(lambda: bool(self.replies), timeout or self.command_timeout, "a command reply")
        return self.replies.popleft()

    def command(self, command: str, timeout: float | None = None) -> Frame:
        self.send(command)
        return self.reply(timeout)

    def start(self) -> Headers:
        """``connect``, then ``resume``, the subscription and ``linger``, written in one go.

        ``connect`` must be the first command (anything before it is never answered); FreeSWITCH
        reads commands one by one, so the rest can follow in the same write. ``resume`` comes at
        once so that from here on, whatever happens to fsguard, closing the socket hands the
        channel back to the dialplan's fallback instead of leaving it ringing. ``nixevent`` drops
        the channel events fsguard never reads from what ``myevents`` subscribed to: most of the
        bytes FreeSWITCH would write about a call are events nobody here looks at.
        """
        self.send("connect", "resume", *self.subscription(), "linger")
        connect = self.reply(self.connect_timeout)
        if "Unique-ID" not in connect.headers:
            raise ProtocolError("connect reply carries no channel data")
        self.channel = connect.headers
        self.reader.notice = linger_notice_tokens(_raw_value(connect.raw, b"Unique-ID"),
                                                  _raw_value(connect.raw, b"Channel-Name"), LINGER_TIME)
        for name in ("resume", "myevents", "nixevent", "event", "linger"):
            self._expect_ok(name)
        self.completions_subscribed = False
        return self.channel

    def subscription(self) -> tuple[str, str, str]:
        """What fsguard asks for, in as few bytes as FreeSWITCH's semantics allow.

        ``myevents`` limits the socket to this channel's events (and subscribes to 20 of them);
        ``nixevent ALL`` empties the list but keeps that limit; ``event`` adds back the four
        fsguard reads. The same subscription as ``nixevent`` naming the 19 others, in 90 bytes
        instead of 340: mod_event_socket reads commands one byte per ``recv`` (and a
        ``sched_yield`` after each), so every byte sent costs FreeSWITCH two system calls.
        """
        fmt = "json" if self.event_format == "json" else "plain"
        myevents = "myevents json" if fmt == "json" else "myevents"
        return myevents, "nixevent ALL", f"event {fmt} " + " ".join(EVENTS_SUBSCRIBED)

    @staticmethod
    def _sendmsg(app: str, arg: str, app_uuid: str | None) -> str:
        lines = ["sendmsg", "call-command: execute", f"execute-app-name: {_check_arg(app)}"]
        if arg:
            lines.append(f"execute-app-arg: {_check_arg(arg)}")
        if app_uuid:
            lines.append(f"Event-UUID: {app_uuid}")
        return "\n".join(lines)

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
        commands = [self._sendmsg(app, arg, None) for app, arg in apps]
        unsubscribe = self.completions_subscribed and not self.awaiting
        if unsubscribe:
            commands.insert(0, f"nixevent {COMPLETION}")
        self.send(*commands)
        if unsubscribe:
            self.completions_subscribed = False
            self._expect_ok("nixevent")
        refused: list[str] = []
        for app, _ in apps:
            # every reply is read, even after a refusal: one left unread would answer the next command
            text = self.reply().headers.get("Reply-Text", "")
            if not text.startswith("+OK"):
                refused.append(f"{app} refused: {text}")
        if refused:
            raise CommandFailed("; ".join(refused))

    def _expect_ok(self, command: str) -> None:
        text = self.reply().headers.get("Reply-Text", "")
        if not text.startswith("+OK"):
            self.log.warning("esl.command_refused", command=command, reply=text)

    def execute(self, app: str, arg: str = "", *, wait: bool = True, timeout: float | None = None) -> Headers | None:
        """Run a dialplan application on the channel.

        With ``wait`` it returns the CHANNEL_EXECUTE_COMPLETE event of this very execution (matched
        on the Event-UUID we sent), waiting at most ``timeout`` seconds. Raises CallGone if the
        channel is already gone or hangs up before the application completes.
        """
        self.poll()
        if self.hungup:
            raise CallGone(f"channel gone before {app}")
        app_uuid = str(uuidlib.uuid4())
        if wait:
            self.awaiting.add(app_uuid)
        try:
            if wait and not self.completions_subscribed:
                # in the same write, before the application: FreeSWITCH reads commands in order
                self.send(f"event {'json' if self.event_format == 'json' else 'plain'} {COMPLETION}",
                          self._sendmsg(app, arg, app_uuid))
                self.completions_subscribed = True
                self._expect_ok("event")
                reply = self.reply()
            else:
                reply = self.command(self._sendmsg(app, arg, app_uuid))
            text = reply.headers.get("Reply-Text", "")
            if not text.startswith("+OK"):
                raise CommandFailed(f"{app} refused: {text}")
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
            reply = self.command(f"api uuid_break {self.uuid} all")
            self.log.info("esl.break", application=self.running, reply=reply.body.decode(errors="replace").strip())
            self.running = None

    def getvar(self, name: str) -> str:
        """A channel variable that no caller can put text into.

        The reply to ``getvar`` is the raw value, not encoded: a caller-controlled variable could
        carry CR LF and forge headers. Those are read from the channel data instead.
        """
        if name in CALLER_CONTROLLED or name.startswith(("sip_h_", "sip_from", "sip_to", "sip_req")):
            raise ValueError(f"{name} is caller-controlled: read it from the channel data, never getvar")
        return self.command(f"getvar {_check_arg(name)}").headers.get("Reply-Text", "")

    def wait_for_end(self, timeout: float) -> Headers | None:
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
                self.send("exit")
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
