"""The Event Socket protocol without a socket: bytes in, frames, replies and events out; commands
as values, each knowing its bytes.

Nothing here reads or writes anything, so every rule of the protocol is tested with bytes alone
(tests/test_esl.py); the drivers in :mod:`fsguard.esl.session` (a call's outbound socket) and
:mod:`fsguard.esl.client` (the inbound socket) only move those bytes.

What a hostile caller can do to the Event Socket, and what stops it here:

* FreeSWITCH URL-encodes every header value of an event and of the ``connect`` reply, but a
  parser that decodes the whole frame before splitting it into lines (greenswitch's
  ``ESLEvent.parse_data``) lets a caller id name carrying ``%0ACaller-Caller-ID-Number%3A%20...``
  forge headers. Here a frame is split into lines first and each value is decoded on its own.
* the linger notice's ``Channel-Name:`` is written raw (mod_sofia URL-decodes the SIP From user
  into the channel name), so a caller can end the notice early and forge frames after it, or
  inject a ``Content-Length``. Here the notice is recognised by what FreeSWITCH itself writes
  (its fixed headers around the channel name known from the ``connect`` reply, cut at 511 bytes
  as mod_event_socket's 512-byte buffer does), whatever bytes the caller put in the name.
* a frame over ``max_bytes``, a ``Content-Length`` that is not plain ASCII digits, raw bytes that
  are not UTF-8: :class:`ProtocolError`, and the connection is dropped.
* a command argument holding a line break would end the command and start another of the
  caller's choosing: no command value can be built with one (:func:`check_arg`).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping, Union
from urllib.parse import unquote

Headers = dict[str, str]


class ESLError(Exception):
    """Base of everything that can go wrong on the Event Socket."""


class ProtocolError(ESLError):
    """The peer sent something that is not the Event Socket protocol; this connection is dropped."""


class Frame:
    """One Event Socket frame: the outer header block, its body if any, and the header block as
    sent (the ``connect`` reply's values are read from it still encoded, to match the linger
    notice; the test tools read the wire form of every value from it)."""

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
    # FreeSWITCH writes every value as a string but an array's: only those are rewritten, in place
    for key in [key for key, value in data.items() if value.__class__ is not str]:
        value = data[key]
        data[key] = "ARRAY::" + "|:".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return data


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
        self._pending_raw = b""
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

    def unfinished(self) -> bytes:
        """The bytes read of a frame not complete yet (what a peer that went away left behind)."""
        head = self._pending_raw + b"\n\n" if self._pending is not None else b""
        return head + bytes(self._buf)

    def _linger_notice(self) -> int | None:
        """The length of the linger notice at the start of the buffer (-1: more bytes needed)."""
        assert self.notice is not None
        buf = self._buf
        head = min(len(buf), len(NOTICE_HEAD))
        if buf[:head] != NOTICE_HEAD[:head]:
            return None
        return match_notice(buf, self.notice)

    def feed(self, data: bytes) -> list[Frame]:
        """Every whole frame that ``data`` completes."""
        return list(self.frames(data))

    def frames(self, data: bytes) -> Iterator[Frame]:
        """The frames that ``data`` completes, one at a time (iterate it to the end): whoever
        reads them can arm the linger notice between the ``connect`` reply and the next frame."""
        self._buf += data
        buf = self._buf
        while True:
            if self._pending is not None:
                if len(buf) < self._need:
                    break
                body = bytes(buf[: self._need])
                del buf[: self._need]
                headers, raw = self._pending, self._pending_raw
                self._pending = None
                yield Frame(headers, body, raw)
                continue
            if self.notice is not None and buf[:1] == b"C":
                length = self._linger_notice()
                if length == -1:
                    break
                if length is not None:
                    del buf[:length]
                    self.notice, self._scan = None, 0
                    yield Frame({"Content-Type": "text/disconnect-notice", "Content-Disposition": "linger"})
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
            if ctype == "command/reply" or length is None or length == "0":
                yield Frame(headers, raw=block)
                continue
            if not (length.isascii() and length.isdigit()) or len(length) > 10:
                raise ProtocolError(f"Content-Length {length!r} is not a number")
            need = int(length)
            if need > self.max_bytes:
                raise ProtocolError(f"Content-Length {need} is over the {self.max_bytes} byte limit")
            self._pending, self._pending_raw, self._need = headers, block, need
        if not buf and self._pending is None:
            # A bytearray keeps the capacity of its largest fill even once emptied: a call held
            # for an hour would keep a 64 KB read buffer for nothing.
            self._buf = bytearray()


def raw_value(block: bytes | None, name: bytes) -> bytes:
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


def check_arg(text: str) -> str:
    """``text`` if it can go into a command: a line break would end the command and start another."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"line break in an Event Socket argument: {text!r}")
    return text




# ------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Command:
    """A command to FreeSWITCH; ``bytes(command)`` is exactly what is written for it.

    No argument may hold a line break (checked when the command is made): the command would end
    there and the rest be read as another one.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str):
                    check_arg(text)

    def lines(self) -> list[str]:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        return ("\n".join(self.lines()) + "\n\n").encode("utf-8")

    def __str__(self) -> str:
        return self.lines()[0]


@dataclass(frozen=True)
class Connect(Command):
    """Outbound: the first command, answered with the channel's data."""

    def lines(self) -> list[str]:
        return ["connect"]


@dataclass(frozen=True)
class Resume(Command):
    """Outbound: when the socket closes, the channel goes on in the dialplan."""

    def lines(self) -> list[str]:
        return ["resume"]


@dataclass(frozen=True)
class Linger(Command):
    """Outbound: keep the socket after the hang-up until the final events are read (``seconds``:
    at most that long). The linger notice says the time back, ``-1`` for a bare ``linger``."""

    seconds: int | None = None

    @property
    def notice_time(self) -> int:
        return -1 if self.seconds is None else self.seconds

    def lines(self) -> list[str]:
        return ["linger" if self.seconds is None else f"linger {self.seconds}"]


@dataclass(frozen=True)
class MyEvents(Command):
    """Outbound: this channel's events only (and a subscription to 20 of them)."""

    fmt: str = "plain"

    def lines(self) -> list[str]:
        return ["myevents" if self.fmt == "plain" else f"myevents {self.fmt}"]


@dataclass(frozen=True)
class Event(Command):
    """Subscribe to events by name (``ALL``: every event), in ``plain`` or ``json``."""

    names: tuple[str, ...]
    fmt: str = "plain"

    def lines(self) -> list[str]:
        return [f"event {self.fmt} {' '.join(self.names)}"]


@dataclass(frozen=True)
class NixEvent(Command):
    """Unsubscribe from events by name (``ALL``: from every one; ``myevents``'s limit stays)."""

    names: tuple[str, ...]

    def lines(self) -> list[str]:
        return [f"nixevent {' '.join(self.names)}"]


@dataclass(frozen=True)
class Filter(Command):
    """Only events whose ``header`` is ``value`` (any filter matching lets an event through)."""

    header: str
    value: str

    def lines(self) -> list[str]:
        return [f"filter {self.header} {self.value}"]


@dataclass(frozen=True)
class Execute(Command):
    """Outbound: run a dialplan application on the channel (``sendmsg`` / ``execute``).

    ``event_uuid`` comes back as the completion's ``Application-UUID``: how a completion is told
    from another run of the same application. Left out when nobody waits for the completion:
    every byte written costs FreeSWITCH two system calls (it reads commands byte by byte).
    """

    app: str
    arg: str = ""
    event_uuid: str | None = None

    def lines(self) -> list[str]:
        lines = ["sendmsg", "call-command: execute", f"execute-app-name: {self.app}"]
        if self.arg:
            lines.append(f"execute-app-arg: {self.arg}")
        if self.event_uuid:
            lines.append(f"Event-UUID: {self.event_uuid}")
        return lines

    def __bytes__(self) -> bytes:
        """A long argument goes as the message's body (``content-type: text/plain``), which
        switch_ivr_parse_event takes as the argument when there is no ``execute-app-arg``:
        mod_event_socket reads a header block one byte per ``recv`` with a ``sched_yield`` after
        each, and a body in one read. A routed call's multiset is 800-odd bytes."""
        arg = self.arg.encode("utf-8")
        if len(arg) <= INLINE_ARG_MAX:
            return super().__bytes__()
        lines = [line for line in self.lines() if not line.startswith("execute-app-arg: ")]
        lines += ["content-type: text/plain", f"content-length: {len(arg)}"]
        return ("\n".join(lines) + "\n\n").encode("utf-8") + arg


#: an application argument longer than this many bytes is sent as the sendmsg's body: the two
#: headers that announce a body cost about as many bytes as this
INLINE_ARG_MAX = 48


@dataclass(frozen=True)
class GetVar(Command):
    """Outbound: one channel variable, answered raw (not encoded) in the reply text."""

    name: str

    def lines(self) -> list[str]:
        return [f"getvar {self.name}"]


@dataclass(frozen=True)
class Api(Command):
    """An API command (``uuid_record ...``, ``status``), answered with an ``api/response``."""

    command: str

    def lines(self) -> list[str]:
        return [f"api {self.command}"]


@dataclass(frozen=True)
class BgApi(Command):
    """An API command run in the background: the reply carries a ``Job-UUID``, the result comes
    as a BACKGROUND_JOB event."""

    command: str

    def lines(self) -> list[str]:
        return [f"bgapi {self.command}"]


@dataclass(frozen=True)
class Auth(Command):
    """Inbound: the password, answering the ``auth/request`` greeting."""

    password: str

    def lines(self) -> list[str]:
        return [f"auth {self.password}"]

    def __repr__(self) -> str:
        return "Auth(password=...)"


@dataclass(frozen=True)
class Exit(Command):
    """Close the connection (FreeSWITCH answers, says goodbye, closes)."""

    def lines(self) -> list[str]:
        return ["exit"]


# ------------------------------------------------------------------- what comes back


@dataclass(frozen=True, eq=False)
class AuthRequest:
    """Inbound: FreeSWITCH's greeting, asking for the password."""


@dataclass(frozen=True, eq=False)
class Reply:
    """FreeSWITCH's answer to one command (replies carry no id: they come in the order the
    commands were read). ``command`` is None for a reply nobody asked for."""

    command: Command | None

    @property
    def text(self) -> str:
        raise NotImplementedError

    @property
    def error(self) -> str | None:
        """FreeSWITCH's refusal (``-ERR ...``), or None."""
        raise NotImplementedError

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, eq=False)
class CommandReply(Reply):
    """A ``command/reply``: ``Reply-Text`` says ``+OK ...`` or ``-ERR ...``. The ``connect``
    reply's headers are the channel's data; ``raw`` is the header block as sent."""

    headers: Headers
    raw: bytes = b""

    @property
    def text(self) -> str:
        return self.headers.get("Reply-Text", "")

    @property
    def error(self) -> str | None:
        text = self.text
        return None if text.startswith("+OK") else text


@dataclass(frozen=True, eq=False)
class ApiResponse(Reply):
    """An ``api/response``: the command's output, ``-ERR ...`` or ``-USAGE ...`` when refused."""

    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def error(self) -> str | None:
        text = self.text.strip()
        return text if text.startswith(("-ERR", "-USAGE")) else None


@dataclass(frozen=True)
class Disconnected:
    """A ``text/disconnect-notice``: ``linger`` when the channel hung up and the socket lingers
    for the last events, else FreeSWITCH is about to close the socket."""

    linger: bool


@dataclass(frozen=True)
class Rejected:
    """A ``text/rude-rejection``: the inbound socket's ACL refused this address."""

    text: str


#: an event: a :class:`PlainEvent` (read on demand) or the headers of a JSON one
EventHeaders = Mapping[str, str]
#: everything FreeSWITCH sends, as a value; a frame of a kind not listed comes as the Frame itself
Incoming = Union[Reply, EventHeaders, Disconnected, Rejected, AuthRequest, Frame]


class Connection:
    """One Event Socket connection's protocol state, without the socket.

    :meth:`send` turns commands into the bytes to write; :meth:`receive` turns the bytes read into
    values, each reply paired with the command it answers. After a ``connect`` reply and a
    ``linger``, the linger notice is armed (see :func:`linger_notice_tokens`) before the next frame
    is read.
    """

    def __init__(self, max_frame_bytes: int = 1_048_576) -> None:
        self.reader = FrameReader(max_frame_bytes)
        #: commands sent and not answered yet, oldest first
        self.pending: deque[Command] = deque()
        self._connect_raw: bytes | None = None
        self._linger_time: int | None = None

    def send(self, *commands: Command) -> bytes:
        """The bytes to write for ``commands``; their replies are expected in that order."""
        self.pending.extend(commands)
        for command in commands:
            if isinstance(command, Linger):
                self._linger_time = command.notice_time
                self._arm_notice()
        return b"".join(bytes(c) for c in commands)

    def receive(self, data: bytes) -> list[Incoming]:
        """What the bytes read complete, as values."""
        return [self.incoming(frame) for frame in self.reader.frames(data)]

    def incoming(self, frame: Frame) -> Incoming:
        """One frame as a value."""
        ctype = frame.content_type
        if ctype == "text/event-plain":
            return PlainEvent(frame.body)
        if ctype == "command/reply":
            command = self.pending.popleft() if self.pending else None
            if isinstance(command, Connect) and "Unique-ID" in frame.headers:
                self._connect_raw = frame.raw
                self._arm_notice()
            return CommandReply(command, frame.headers, frame.raw or b"")
        if ctype == "api/response":
            return ApiResponse(self.pending.popleft() if self.pending else None, frame.body)
        if ctype == "text/event-json":
            return parse_event_json(frame.body)
        if ctype == "text/disconnect-notice":
            return Disconnected(frame.headers.get("Content-Disposition") == "linger")
        if ctype == "text/rude-rejection":
            return Rejected(frame.body.decode("utf-8", errors="replace"))
        if ctype == "auth/request":
            return AuthRequest()
        return frame

    def _arm_notice(self) -> None:
        if self._connect_raw is not None and self._linger_time is not None:
            self.reader.notice = linger_notice_tokens(raw_value(self._connect_raw, b"Unique-ID"),
                                                      raw_value(self._connect_raw, b"Channel-Name"),
                                                      self._linger_time)
            self._connect_raw = None
