"""FreeSWITCH-style encoding and serialising helpers, for the simulator and parser tests.

These reproduce what mod_event_socket and the core put on the wire, checked against
FreeSWITCH's source and the byte-exact captures in ``tests/captures/``:

* ``switch_url_encode`` (no double encoding): every byte below 0x20 or above 0x7E and every
  byte of ``SWITCH_URL_UNSAFE`` becomes ``%XX`` with upper-case hex, EXCEPT a ``%`` that
  is followed by two upper-case hex digits, which is passed through unchanged
  (capture fs-1.11/09c: ``%0A`` and ``%41`` stay, ``%0a`` and ``%zz`` become ``%250a`` /
  ``%25zz``).  ``/``, ``(``, ``)``, ``,``, ``=``... are not encoded.
* ``switch_event_serialize``: one ``Name: value`` line per header, each VALUE encoded (never
  the name), an empty value written as ``_undef_``, an array header as
  ``ARRAY::a|:b``; then either ``Content-Length: N`` + blank line + body, or a blank line.
* ``switch_event_serialize_json``: one unformatted cJSON object in header order (duplicate
  names are kept, as cJSON does), arrays as JSON arrays, the body as ``_body``; no
  URL-encoding, raw UTF-8.
* event frames: ``Content-Length: N`` then ``Content-Type: text/event-plain|json`` then a
  blank line, then the serialised event.

Besides the encoders there is a frame reader for tests (:class:`FrameReader`): frames are cut
from the stream by fsguard's own reader (:class:`fsguard.esl.protocol.FrameReader`: lines split
first, the LAST ``Content-Length`` of a block trusted, none in a command reply), and each keeps
its header values as FreeSWITCH wrote them, in order, duplicates included, so that a test can
compare the wire form of a capture and of the simulator.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fsguard.esl import protocol

#: SWITCH_URL_UNSAFE from switch_utils.h.
URL_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')
_HEX_DIGITS = "0123456789ABCDEF"

#: The body FreeSWITCH sends in the final ``Content-Disposition: disconnect`` notice.
GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
assert len(GOODBYE) == 67

HeaderValue = str | Sequence[str]
Headers = Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue]


def _to_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    # surrogateescape keeps arbitrary bytes (read from a capture) round-trippable.
    return value.encode("utf-8", "surrogateescape")


#: Values made only of these characters need no encoding (the common case: fast path).
_SAFE_TEXT = re.compile(r"[!$'()*,\-./0-9A-Z_a-z~]*")
_NEEDS_ESCAPE = re.compile(rb'%(?![0-9A-F]{2})|[^\x20-\x7e]|[\r\n #&+:;<=>?@\[\\\]^`{|}"]')


def _escape_byte(m: re.Match[bytes]) -> bytes:
    b = m.group()[0]
    return b"%" + _HEX_DIGITS[b >> 4].encode() + _HEX_DIGITS[b & 0x0F].encode()


@lru_cache(maxsize=65536)
def fs_url_encode(value: str | bytes) -> str:
    """Encode one header value like ``switch_url_encode`` (without double encoding).

    Works on the UTF-8 bytes of ``value``: each non-ASCII byte is encoded separately, as
    C's signed ``char`` comparison ``*p > '~'`` makes FreeSWITCH do (capture fs-1.11/09d).
    A ``%`` followed by two UPPER-case hex digits is copied as it is (capture 09c).
    Cached because the simulator encodes the same channel variables in every event.
    """
    if isinstance(value, str) and _SAFE_TEXT.fullmatch(value):
        return value
    data = _to_bytes(value)
    return _NEEDS_ESCAPE.sub(_escape_byte, data).decode("ascii")


_PCT_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")


@lru_cache(maxsize=65536)
def fs_url_decode(value: str) -> str:
    """Decode one header value like ``switch_url_decode``: ``%XX`` (either case) -> byte.

    A ``%`` not followed by two hex digits is kept as it is.  The result is decoded as
    UTF-8 with ``surrogateescape`` so that any byte sequence survives.
    """
    if "%" not in value:
        return value
    data = _PCT_HEX.sub(lambda m: bytes((int(m.group(1), 16),)), _to_bytes(value))
    return data.decode("utf-8", "surrogateescape")


def _items(headers: Headers) -> Iterable[tuple[str, HeaderValue]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def serialize_value(value: HeaderValue) -> str:
    """The text FreeSWITCH writes for one header value (before URL-encoding)."""
    if isinstance(value, str):
        return value
    # switch_event_serialize writes array headers as "ARRAY::a|:b|:c".
    return "ARRAY::" + "|:".join(value)


@lru_cache(maxsize=131072)
def _header_line(name: str, value: str) -> str:
    return f"{name}: {fs_url_encode(value) or '_undef_'}\n"


def serialize_headers(headers: Headers) -> bytes:
    """The ``Name: encoded-value`` lines of a serialised event, without the blank line."""
    parts = [_header_line(name, value if isinstance(value, str) else serialize_value(value))
             for name, value in _items(headers)]
    return "".join(parts).encode("utf-8", "surrogateescape")


def serialize_event(headers: Headers, body: str | bytes | None = None, *, encode: bool = True) -> bytes:
    """Serialise an event the way ``switch_event_serialize(event, &str, SWITCH_TRUE)`` does."""
    parts: list[str] = []
    has_content_length = False
    for name, value in _items(headers):
        if len(name) == 14 and name.lower() == "content-length":
            has_content_length = True
        text = value if isinstance(value, str) else serialize_value(value)
        # Channel events repeat the same (name, value) pairs over and over: cache the lines.
        parts.append(_header_line(name, text) if encode else f"{name}: {text or '_undef_'}\n")
    out = "".join(parts).encode("utf-8", "surrogateescape")
    body_b = _to_bytes(body) if body is not None else b""
    if body_b and not has_content_length:
        return out + b"Content-Length: %d\n\n" % len(body_b) + body_b
    return out + b"\n"


def frame_for_payload(payload: bytes, fmt: str = "plain") -> bytes:
    """The outer header block mod_event_socket writes before a serialised event."""
    return b"Content-Length: %d\nContent-Type: text/event-%s\n\n" % (len(payload), fmt.encode())


def _json_value(value: HeaderValue) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return "[" + ",".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"


def serialize_event_json(headers: Headers, body: str | None = None) -> bytes:
    """Serialise an event like ``switch_event_serialize_json`` (cJSON, unformatted).

    Built by hand rather than with ``json.dumps(dict)`` because FreeSWITCH keeps repeated
    header names (CHANNEL_HANGUP_COMPLETE carries ``Hangup-Cause`` twice).
    """
    parts = [json.dumps(name, ensure_ascii=False) + ":" + _json_value(value) for name, value in _items(headers)]
    if body:
        parts.append('"_body":' + json.dumps(body, ensure_ascii=False))
    return ("{" + ",".join(parts) + "}").encode("utf-8", "surrogateescape")


def event_frame(headers: Headers, fmt: str = "plain", body: str | None = None) -> bytes:
    """A complete event frame as sent after ``myevents`` / ``event``: outer headers + body."""
    return b"".join(event_frame_parts(headers, fmt, body))


def event_frame_parts(headers: Headers, fmt: str = "plain", body: str | None = None) -> tuple[bytes, bytes]:
    """The two ``send()`` calls mod_event_socket makes per event: outer header block, body."""
    if fmt == "json":
        payload = serialize_event_json(headers, body)
    elif fmt == "plain":
        payload = serialize_event(headers, body)
    else:
        raise ValueError(f"unsupported event format {fmt!r}")
    return frame_for_payload(payload, fmt), payload


def command_reply(reply_text: str | bytes) -> bytes:
    """``Content-Type: command/reply`` with a RAW Reply-Text (FreeSWITCH does not encode it)."""
    return b"Content-Type: command/reply\nReply-Text: " + _to_bytes(reply_text) + b"\n\n"


def api_response(body: str | bytes) -> bytes:
    """Reply to ``api CMD``: ``api/response`` with a Content-Length body."""
    data = _to_bytes(body) or b"-ERR no reply\n"
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


def disconnect_notice(session_uuid: str | None, message: bytes = GOODBYE) -> bytes:
    """The notice ``send_disconnect`` writes before FreeSWITCH closes the socket."""
    if session_uuid:
        head = (
            "Content-Type: text/disconnect-notice\n"
            f"Controlled-Session-UUID: {session_uuid}\n"
            "Content-Disposition: disconnect\n"
            f"Content-Length: {len(message)}\n\n"
        )
    else:
        head = f"Content-Type: text/disconnect-notice\nContent-Length: {len(message)}\n\n"
    return head.encode() + message


def linger_notice(session_uuid: str, channel_name: str | bytes, linger_time: int = -1) -> bytes:
    """The notice sent when a lingering channel hangs up.

    ``Channel-Name`` is written RAW (``switch_channel_get_name``, no encoding), so a channel
    name holding CR LF injects headers here; FreeSWITCH's own ``Content-Length: 0`` is last.
    """
    return (
        b"Content-Type: text/disconnect-notice\n"
        + b"Controlled-Session-UUID: " + session_uuid.encode() + b"\n"
        + b"Content-Disposition: linger\n"
        + b"Channel-Name: " + _to_bytes(channel_name) + b"\n"
        + b"Linger-Time: %d\n" % linger_time
        + b"Content-Length: 0\n\n"
    )


# --------------------------------------------------------------------------- reading


@dataclass
class Frame:
    """One frame from FreeSWITCH: the outer header block (raw values) and the body bytes."""

    headers: list[tuple[str, str]]
    body: bytes = b""
    raw: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name`` (case-insensitive), URL-decoded."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return fs_url_decode(v)
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def content_type(self) -> str | None:
        return self.get("Content-Type")

    def event(self) -> "Event":
        """The event carried in the body (plain or json)."""
        ctype = self.content_type or ""
        if ctype == "text/event-json":
            return Event.from_json(self.body)
        return Event.from_plain(self.body)


@dataclass
class Event:
    """A parsed event: ordered (name, decoded value) pairs and an optional body."""

    headers: list[tuple[str, HeaderValue]] = field(default_factory=list)
    body: str | None = None

    @classmethod
    def from_plain(cls, data: bytes) -> "Event":
        """Parse a serialised plain event safely: split lines, then decode each value."""
        block, sep, rest = data.partition(b"\n\n")
        pairs: list[tuple[str, HeaderValue]] = []
        clen: int | None = None
        for name, raw in parse_header_block(block):
            value = fs_url_decode(raw)
            if name.lower() == "content-length":
                clen = _atoi(raw)
                continue
            if value.startswith("ARRAY::"):
                pairs.append((name, value[len("ARRAY::") :].split("|:")))
            else:
                pairs.append((name, value))
        body = None
        if clen:
            body = rest[:clen].decode("utf-8", "surrogateescape")
        return cls(pairs, body)

    @classmethod
    def from_json(cls, data: bytes) -> "Event":
        pairs: list[tuple[str, HeaderValue]] = []
        body = None
        for name, value in json.loads(data.decode("utf-8", "surrogateescape"), object_pairs_hook=list):
            if name == "_body":
                body = value
            else:
                pairs.append((name, value))
        return cls(pairs, body)

    def get(self, name: str, default: HeaderValue | None = None) -> HeaderValue | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    @property
    def name(self) -> str:
        value = self.get("Event-Name", "")
        return value if isinstance(value, str) else ""

    def names(self) -> list[str]:
        return [k for k, _ in self.headers]

    def as_dict(self) -> dict[str, HeaderValue]:
        """Last value wins, as a dict (convenience for assertions)."""
        return dict(self.headers)


def parse_header_block(block: bytes) -> list[tuple[str, str]]:
    """Split a header block into (name, raw value): lines first, then ``": "``."""
    out: list[tuple[str, str]] = []
    for line in block.decode("utf-8", "surrogateescape").split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        name, sep, value = line.partition(":")
        out.append((name, value.lstrip(" ") if sep else ""))
    return out


def _atoi(text: str) -> int:
    """C ``atoi``: leading digits only (``"30@127.0.0.1"`` -> 30), 0 if none."""
    text = text.strip()
    digits = ""
    for ch in text:
        if ch.isdigit():
            digits += ch
        else:
            break
    return int(digits) if digits else 0


class FrameReader:
    """Sans-IO reader for the FreeSWITCH -> target byte stream (for tests and tools).

    ``feed()`` bytes in any chunking, get complete :class:`Frame` objects back; the frames are
    the ones fsguard itself reads from the same bytes.
    """

    def __init__(self) -> None:
        self._reader = protocol.FrameReader(max_bytes=1 << 30)

    def feed(self, data: bytes) -> list[Frame]:
        return [Frame(parse_header_block(f.raw or b""), f.body, (f.raw or b"") + b"\n\n" + f.body)
                for f in self._reader.feed(data)]

    @property
    def leftover(self) -> bytes:
        """The bytes of a frame not complete yet."""
        return self._reader.unfinished()


def parse_stream(data: bytes) -> list[Frame]:
    """All complete frames in ``data``."""
    return FrameReader().feed(data)
