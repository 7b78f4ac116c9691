"""Hardening: the frame parser under arbitrary input, and faults end to end through the real socket.

Two halves:

* property-based tests (hypothesis) of ``FrameReader`` / ``parse_headers`` / ``OutboundSession``:
  arbitrary bytes, any split of a valid stream, absurd lengths, stray frames around a command;
* fault injection through TCP with the simulator playing FreeSWITCH, on SQLite and PostgreSQL:
  the database unreachable or too slow, FreeSWITCH vanishing at every step of a call, a reply
  that never comes, garbage and oversized frames. After each fault fsguard must have let go of
  everything (no greenlet, socket, session or pooled connection left) and serve the next call.

The faults between FreeSWITCH and fsguard are made by :class:`FlakyLink`, a TCP hop that the
simulator dials instead of fsguard; the simulator itself is not modified.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import struct
from dataclasses import replace
from typing import Any, Callable

import gevent
import gevent.event
import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import sessionmaker

from fsguard.store import records
from fsguard.store.db import Database
from fsguard.esl.protocol import FrameReader, ProtocolError, parse_event_json, parse_event_plain, parse_headers
from fsguard.esl.session import CallGone, ESLTimeout, OutboundSession
from fsguard.store.models import CallRecord
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard_testing import wire
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH

FAST = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# =============================================================== the frame parser, property-based

#: header names as FreeSWITCH writes them (never encoded, so never containing ": " or a line break)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,24}", fullmatch=True).filter(
    lambda n: n.lower() not in ("content-length", "content-type"))
#: any value a caller can put into a channel variable, CR, LF, "%0A", ": " and UTF-8 included
values = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
event_headers = st.dictionaries(names, values, min_size=1, max_size=8)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (as a socket may deliver it)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def feed_all(reader: FrameReader, pieces: list[bytes]) -> list[Any]:
    frames = []
    for piece in pieces:
        frames.extend(reader.feed(piece))
    return frames


@FAST
@given(st.binary(max_size=4000), st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
@example(b"Content-Type: text/event-plain\nContent-Length: \xc2\xb2\n\n", [])
@example(b"Content-Type: text/event-plain\nContent-Length: %C2%B2\n\n", [])
@example(b"Content-Length: 00000000009\n\n123", [5])
def test_arbitrary_bytes_give_frames_or_a_protocol_error_and_memory_stays_bounded(data, cuts):
    """Whatever FreeSWITCH (or anything on that port) sends, the reader either makes frames or
    raises ProtocolError (which drops the connection); it never raises anything else and never
    holds more than its limit."""
    reader = FrameReader(max_bytes=1024)
    try:
        for piece in chunks(data, cuts):
            reader.feed(piece)
            assert reader.buffered <= 1024 + len(piece)
    except ProtocolError:
        return
    assert reader.buffered <= 1024


def frame_stream() -> st.SearchStrategy[list[tuple[str, Any]]]:
    """A sequence of the frames FreeSWITCH sends an outbound socket, in any order."""
    reply = st.tuples(st.just("reply"), st.text(st.characters(blacklist_categories=("Cs",),
                                                              blacklist_characters="\r\n"), max_size=40))
    plain = st.tuples(st.just("plain"), event_headers)
    as_json = st.tuples(st.just("json"), event_headers)
    api = st.tuples(st.just("api"), st.binary(min_size=1, max_size=300))
    # the RAW channel name of a linger notice: CR, LF and a forged Content-Length, but no blank
    # line (see test_a_linger_notice_whose_channel_name_holds_a_blank_line_does_not_desynchronise)
    linger = st.tuples(st.just("linger"), st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).map(
        lambda n: re.sub("\n+", "\n", n).rstrip("\n")) | st.just("1555\nContent-Length: 30"))
    return st.lists(st.one_of(reply, plain, as_json, api, linger), min_size=1, max_size=12)


def encode(kind: str, payload: Any) -> bytes:
    if kind == "reply":
        return wire.command_reply(payload)
    if kind in ("plain", "json"):
        return wire.event_frame({"Event-Name": "CUSTOM", **payload}, kind)
    if kind == "api":
        return wire.api_response(payload)
    return wire.linger_notice("0b3c8a8e-0000-4000-8000-000000000001", payload)


@FAST
@given(frame_stream(), st.lists(st.integers(min_value=0, max_value=50_000), max_size=30))
def test_any_split_of_a_valid_stream_gives_the_same_frames_and_no_header_is_forged(stream, cuts):
    """A valid stream cut anywhere (TCP does) parses to the same frames as the whole, one frame per
    frame sent, and every event carries exactly the headers it was sent with, whatever a caller
    put into the values (line breaks, ': ', '%0A', a raw Content-Length in a linger notice)."""
    data = b"".join(encode(kind, payload) for kind, payload in stream)
    whole = FrameReader().feed(data)
    split = feed_all(FrameReader(), chunks(data, cuts))
    assert [(f.headers, f.body) for f in split] == [(f.headers, f.body) for f in whole]
    assert len(whole) == len(stream)
    for (kind, payload), frame in zip(stream, whole):
        if kind == "plain":
            event = parse_event_plain(frame.body)
            assert set(event) == {"Event-Name", *payload}
            for name, value in payload.items():
                assert event[name] == wire.fs_url_decode(wire.fs_url_encode(value)).encode(
                    "utf-8", "surrogateescape").decode("utf-8", "replace")
        elif kind == "json":
            assert parse_event_json(frame.body) == {"Event-Name": "CUSTOM", **payload}
        elif kind == "api":
            assert frame.content_type == "api/response" and frame.body == payload
        elif kind == "linger":
            assert frame.content_type == "text/disconnect-notice" and frame.body == b""


@FAST
@given(st.integers(min_value=1025, max_value=10 ** 40))
def test_a_length_over_the_limit_is_refused_before_anything_is_buffered(length):
    reader = FrameReader(max_bytes=1024)
    with pytest.raises(ProtocolError):
        reader.feed(b"Content-Type: text/event-plain\nContent-Length: %d\n\n" % length)


@FAST
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=20))
@example("\u00b2")
@example("\u0661\u0662")
@example("+12")
@example(" 12")
@example("1_000")
def test_a_content_length_that_is_not_plain_ascii_digits_is_a_protocol_error(length):
    """``'²'.isdigit()`` is true and ``int('²')`` raises ValueError; ``int('١٢')`` is 12."""
    reader = FrameReader(max_bytes=1024)
    block = f"Content-Type: text/event-plain\nContent-Length: {length}\n\n".encode()
    decoded = parse_headers(block[:-2]).get("Content-Length", "")
    try:
        reader.feed(block)
    except ProtocolError:
        return
    assert decoded in ("", "0") or (decoded.isascii() and decoded.isdigit() and int(decoded) <= 1024)


def test_a_header_block_that_never_ends_is_refused_at_the_limit():
    reader = FrameReader(max_bytes=64 * 1024)
    with pytest.raises(ProtocolError):
        for _ in range(100):
            reader.feed(b"X" * 1024)
    assert reader.buffered <= 66 * 1024


class _CountingBuffer(bytearray):
    """A bytearray that counts the bytes ``find`` looks at."""

    scanned = 0

    def find(self, sub, start=0, *args):  # type: ignore[override]
        type(self).scanned += max(0, len(self) - start)
        return super().find(sub, start, *args)


def test_a_header_block_trickled_byte_by_byte_is_scanned_in_linear_time():
    """FreeSWITCH writes a header block at once, but anything may be on the other end of the port:
    200 KB sent one byte at a time must not cost 20 G byte comparisons (about 16 s on the hub)."""
    reader = FrameReader(max_bytes=1_048_576)
    reader._buf = _CountingBuffer()
    _CountingBuffer.scanned = 0
    block = b"Caller-Caller-ID-Name: " + b"x" * 20_000
    for i in range(len(block)):
        reader.feed(block[i:i + 1])
    assert _CountingBuffer.scanned <= 4 * len(block)


LINGER_NAMES = [
    pytest.param("sofia/lab/1555\n\nContent-Length: 90\n\n@192.0.2.10", id="forged-length"),
    pytest.param("sofia/lab/1555\n\nContent-Type: text/event-plain\nContent-Length: 90\n\n@192.0.2.10",
                 id="forged-type-and-length"),
]


@pytest.mark.parametrize("name", LINGER_NAMES)
def test_a_linger_notice_whose_channel_name_holds_a_blank_line_does_not_desynchronise(name):
    """mod_sofia URL-decodes the SIP From user into the channel name, and the linger notice writes
    that name RAW: with LF LF in it (From user ``1555%0A%0AContent-Length%3A%2090%0A%0A``), the
    notice ends early and what follows is a header block of the caller's making, whose
    Content-Length swallows FreeSWITCH's next frame (here the CHANNEL_HANGUP_COMPLETE with the
    hang-up cause and billsec)."""
    uuid = "0b3c8a8e-0000-4000-8000-000000000001"
    connect = wire.serialize_event({"Event-Name": "CHANNEL_DATA", "Unique-ID": uuid, "Channel-Name": name,
                                    "Content-Type": "command/reply", "Reply-Text": "+OK\n"})

    def respond(command: str) -> bytes:
        return connect if command == "connect" else wire.command_reply("+OK")

    sock = ScriptedSocket(respond, [65536])
    session = OutboundSession(sock, command_timeout=0.2)
    session.start()
    sock.inbox += wire.linger_notice(uuid, name) + wire.event_frame(
        {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": uuid, "variable_hangup_cause": "NORMAL_CLEARING",
         "variable_billsec": "42"})
    try:
        end = session.wait_for_end(0.5)
    except ProtocolError:
        end = None
    assert end is not None and end["variable_billsec"] == "42"


# ------------------------------------------------------------------ the session, librevox-style


class ScriptedSocket:
    """A socket stand-in for OutboundSession: every command fsguard writes is answered by
    ``respond(command_text) -> bytes``, delivered in the read sizes given (split reads)."""

    def __init__(self, respond: Callable[[str], bytes], sizes: list[int]) -> None:
        self.respond = respond
        self.sizes = sizes or [65536]
        self.inbox = bytearray()
        self.reads = 0
        self.timeout: float | None = None
        self.written: list[str] = []

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        for command in data.decode().split("\n\n"):
            if command:
                self.written.append(command)
                self.inbox += self.respond(command)

    def recv(self, n: int) -> bytes:
        if not self.inbox:
            if self.timeout == 0:
                raise BlockingIOError()
            raise socket.timeout("timed out")
        size = max(1, min(n, self.sizes[self.reads % len(self.sizes)]))
        self.reads += 1
        data = bytes(self.inbox[:size])
        del self.inbox[:size]
        return data

    def close(self) -> None:
        pass


def _event(name: str, **headers: str) -> bytes:
    return wire.event_frame({"Event-Name": name, "Unique-ID": "u1", **headers})


stray_before = st.sampled_from(["reply", "api", "complete_other", "execute", "dtmf", "state"])
stray_after = st.sampled_from(["complete_other", "execute", "dtmf", "state"])


def _stray(kind: str, n: int) -> bytes:
    if kind == "reply":
        return wire.command_reply("+OK stray")
    if kind == "api":
        return wire.api_response("+OK stray api\n")
    if kind == "complete_other":
        return _event("CHANNEL_EXECUTE_COMPLETE", Application="playback", **{"Application-UUID": f"other-{n}",
                                                                          "Application-Response": "WRONG"})
    if kind == "execute":
        return _event("CHANNEL_EXECUTE", Application="playback", **{"Application-UUID": f"other-{n}"})
    if kind == "dtmf":
        return _event("DTMF", **{"DTMF-Digit": str(n % 10)})
    return _event("CHANNEL_STATE", **{"Channel-State": "CS_EXECUTE"})


@FAST
@given(st.lists(stray_before, max_size=6), st.lists(stray_after, max_size=6),
       st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=10))
def test_execute_returns_its_own_completion_whatever_strays_surround_it(before, after, sizes):
    """The session is not driven forward by stray replies, api responses, other applications'
    completions or DTMF: ``execute`` returns the completion carrying the Event-UUID it sent.

    (A reply that arrives while one is expected cannot be told apart from it: Event Socket
    replies carry no id. So stray replies are only sent before the command.)"""

    def respond(command: str) -> bytes:
        app_uuid = next(line.split(": ", 1)[1] for line in command.splitlines() if line.startswith("Event-UUID: "))
        return (wire.command_reply("+OK") + b"".join(_stray(k, i) for i, k in enumerate(after))
                + _event("CHANNEL_EXECUTE_COMPLETE", Application="playback",
                         **{"Application-UUID": app_uuid, "Application-Response": "FILE PLAYED"}))

    sock = ScriptedSocket(respond, sizes)
    sock.inbox += b"".join(_stray(k, i) for i, k in enumerate(before))
    session = OutboundSession(sock, command_timeout=0.05)
    while sock.inbox:  # what came before the command was read by earlier waits
        session.poll()
    event = session.execute("playback", "welcome.wav", timeout=0.5)
    assert event["Application-Response"] == "FILE PLAYED"
    digits = [str(i % 10) for i, k in enumerate(before) if k == "dtmf"]
    digits += [str(i % 10) for i, k in enumerate(after) if k == "dtmf"]
    assert session.dtmf == digits
    assert session.replies_expected == 0 and not session.replies


def test_completions_of_queued_applications_are_not_kept_for_the_life_of_the_call():
    """Each completion carries every channel variable (2-5 KB on the wire, ~20 KB as a dict). The
    exports and the route are queued with send_apps, whose completions nobody waits for: kept,
    they are ~300 KB per held call with the full chain (5,000 held calls: 1.5 GB). They are not
    even parsed: reading their Event-Name and Application-UUID is enough to drop them."""
    queued: list[str] = []

    def respond(command: str) -> bytes:
        app_uuid = next((line.split(": ", 1)[1] for line in command.splitlines() if line.startswith("Event-UUID: ")),
                        None)
        if app_uuid:
            queued.append(app_uuid)
        return wire.command_reply("+OK")

    sock = ScriptedSocket(respond, [65536])
    session = OutboundSession(sock, command_timeout=0.05)
    session.send_apps([("export", f"fsguard_var{i}=x") for i in range(10)] + [("transfer", "default XML queues")])
    for app_uuid in queued:
        sock.inbox += _event("CHANNEL_EXECUTE_COMPLETE", Application="export",
                             **{"Application-UUID": app_uuid, "variable_big": "x" * 4000})
    while sock.inbox:
        session.poll()
    assert session.events_skipped == len(queued) and session.events_read == 0
    assert not session.completions


def test_a_completion_that_never_comes_times_out_and_a_dead_session_refuses_commands():
    sock = ScriptedSocket(lambda command: wire.command_reply("+OK"), [65536])
    session = OutboundSession(sock, command_timeout=0.05)
    with pytest.raises(ESLTimeout):
        session.execute("playback", "welcome.wav", timeout=0.1)
    session.eof = True
    with pytest.raises(CallGone):
        session.execute("playback", "welcome.wav")


# =============================================================== faults end to end, through TCP


class FlakyLink:
    """A TCP hop between the simulator (FreeSWITCH) and fsguard that fails on cue.

    ``vanish_after=k``: once fsguard's k-th command has been passed on (0: as soon as the TCP
    connection is up), wait ``delay`` seconds and close both sides (with an RST when ``rst``):
    FreeSWITCH crashed, the network went, a firewall dropped the flow.
    ``swallow_replies_after=k``: from fsguard's k-th command on, FreeSWITCH's command replies are
    not passed on (events still are): a reply that never comes.
    ``garbage_after=m``: after FreeSWITCH's m-th frame, fsguard gets ``garbage`` instead of the rest.
    """

    def __init__(self, target: tuple[str, int], *, vanish_after: int | None = None, delay: float = 0.0,
                 rst: bool = False, swallow_replies_after: int | None = None, garbage_after: int | None = None,
                 garbage: bytes = b"") -> None:
        self.target = target
        self.vanish_after, self.delay, self.rst = vanish_after, delay, rst
        self.swallow_replies_after = swallow_replies_after
        self.garbage_after, self.garbage = garbage_after, garbage
        self.commands = 0
        self.frames = 0
        self.swallowed = 0
        self.closed_by_guard = gevent.event.Event()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _handle(self, fs_sock: Any, _address: Any) -> None:
        guard = gsocket.create_connection(self.target)
        self.fs_sock, self.guard_sock = fs_sock, guard
        if self.vanish_after == 0:
            self._vanish()
            return
        pumps = [gevent.spawn(self._commands), gevent.spawn(self._frames)]
        gevent.joinall(pumps)
        for s in (fs_sock, guard):
            s.close()

    def _vanish(self) -> None:
        gevent.sleep(self.delay)
        if self.rst:
            self.guard_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for s in (self.guard_sock, self.fs_sock):
            try:
                s.close()
            except OSError:
                pass

    def _commands(self) -> None:
        """fsguard -> FreeSWITCH: count commands (each ends with a blank line)."""
        pending = b""
        while True:
            try:
                data = self.guard_sock.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread: the kernel sends an RST
                data = b""
            except OSError:
                return
            if not data:
                self.closed_by_guard.set()
                self._shut(self.fs_sock)
                return
            pending += data
            while b"\n\n" in pending:
                command, _, pending = pending.partition(b"\n\n")
                self.commands += 1
                try:
                    self.fs_sock.sendall(command + b"\n\n")
                except OSError:
                    return
                if self.commands == self.vanish_after:
                    self._vanish()
                    return

    def _frames(self) -> None:
        """FreeSWITCH -> fsguard: whole frames, some swallowed or replaced by garbage."""
        buf = b""
        while True:
            try:
                data = self.fs_sock.recv(65536)
            except OSError:
                return
            if not data:
                self._shut(self.guard_sock)
                return
            buf += data
            while True:
                end = buf.find(b"\n\n")
                if end < 0:
                    break
                head = buf[:end].decode("utf-8", "replace").split("\n")
                lengths = [line.split(": ", 1)[1] for line in head if line.startswith("Content-Length: ")]
                reply = "Content-Type: command/reply" in head
                size = end + 2 + (int(lengths[-1]) if lengths and not reply else 0)
                if len(buf) < size:
                    break
                frame, buf = buf[:size], buf[size:]
                if self.garbage_after is not None and self.frames >= self.garbage_after:
                    if self.frames == self.garbage_after:
                        self._send(self.guard_sock, self.garbage)
                    self.frames += 1
                    continue
                self.frames += 1
                if reply and self.swallow_replies_after is not None and self.commands >= self.swallow_replies_after:
                    self.swallowed += 1
                    continue
                if not self._send(self.guard_sock, frame):
                    return

    @staticmethod
    def _send(sock: Any, data: bytes) -> bool:
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False

    @staticmethod
    def _shut(sock: Any) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


# ---------------------------------------------------------------- stages that use what can fail


class Prompting(Stage):
    """Talks to the caller like verification does: early media, a prompt, a digit window."""

    name = "prompting"

    def run(self, call):
        call.pre_answer()
        call.play("ivr/welcome.wav")
        digits = call.collect(max_digits=2, timeout=20.0).digits
        return Verdict.carry_on("the caller heard the prompt", "probe.prompted", digits=digits)


class DatabaseProbe(Stage):
    """An indexed read and a write per call, like a list lookup and a flood counter."""

    name = "dbprobe"

    def run(self, call):
        with self.db.begin() as session:
            seen = session.scalar(select(func.count()).select_from(CallRecord).where(CallRecord.ani == call.ani))
            session.execute(update(CallRecord).where(CallRecord.ani == call.ani).values(risk=CallRecord.risk))
        return Verdict.carry_on("looked the caller up", "probe.looked_up", seen=seen)


@pytest.fixture
def probe_stages(monkeypatch):
    monkeypatch.setitem(STAGES, "prompting", f"{__name__}:Prompting")
    monkeypatch.setitem(STAGES, "dbprobe", f"{__name__}:DatabaseProbe")


#: real seconds per channel second: the prompt and the digit window last 40 ms, a call 0.1 s
TS = 0.002
PROMPTS = {"ivr/welcome.wav": 20.0}


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    with gevent.Timeout(timeout, AssertionError(f"{what} not reached in {timeout} s")):
        while not predicate():
            gevent.sleep(0.01)


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def pooled(db: Database) -> int:
    pool = db.engine.pool
    return pool.checkedin() + pool.checkedout() if hasattr(pool, "checkedin") else 0


def assert_let_go(guard: Any, db: Database, sockets_before: int | None = None) -> None:
    """fsguard holds nothing of the calls it had: greenlets, sessions, sockets, DB connections."""
    wait_for(lambda: not guard.app.deciding and not guard.app.held and guard.server.active == 0
             and guard.server.connecting == 0, what="fsguard letting go of every call")
    gc.collect()
    sessions = [o for o in gc.get_objects() if isinstance(o, OutboundSession)]
    assert not sessions, f"{len(sessions)} OutboundSession objects still alive"
    assert db.engine.pool.checkedout() == 0
    if sockets_before is not None:
        wait_for(lambda: open_sockets() - pooled(db) <= sockets_before, 3.0, "sockets closed")


def assert_serves_next_call(guard: Any, db: Database) -> None:
    result = FakeFreeSWITCH(guard.address, time_scale=TS, playback_durations=PROMPTS).call(
        Caller(ani="+12125550100"))  # a valid, unlisted number: every chain routes it
    assert result.outcome == "routed" and result.ok, (result.outcome, result.violations)
    wait_for(lambda: not guard.app.held and guard.server.active == 0)
    assert guard.app.writer.wait_idle(10), "the writer did not catch up"
    assert records.find_call(db, result.uuid) is not None


@pytest.fixture
def quick(settings):
    """Short ESL timeouts so a lost reply costs a fraction of a second."""
    settings.esl.command_timeout = 0.3
    settings.esl.connect_timeout = 0.3
    settings.esl.drain_seconds = 0.5
    settings.database.write_wait_seconds = 0.3
    return settings


def baseline(guard: Any, db: Database) -> int:
    """Serve one call first (pools and caches warm), then count the sockets that stay open."""
    assert_serves_next_call(guard, db)
    gc.collect()
    return open_sockets() - pooled(db)


# ------------------------------------------------------------------------- FreeSWITCH vanishing

#: (fsguard's command after which FreeSWITCH vanishes, seconds later, with RST) for the call
#: connect resume myevents linger | pre_answer playback play_and_get_digits | transfer | exit
VANISH_POINTS = [
    (0, 0.0, False),     # right after the TCP connect, before fsguard's first command
    (1, 0.0, False),     # after connect, before its reply
    (2, 0.0, False),     # after resume
    (4, 0.0, True),      # after linger: the start replies never come
    (4, 0.02, False),    # started, the first events in
    (5, 0.0, False),     # pre_answer sent
    (6, 0.0, True),      # playback sent
    (6, 0.02, False),    # during the playback (40 ms)
    (7, 0.02, True),     # during the digit window (40 ms)
    (8, 0.0, False),     # the route sent, before its reply
    (8, 0.02, False),    # routed, the call being followed to its end
    (9, 0.0, True),      # exit sent after the hang-up
]


#: the points FreeSWITCH vanishes at are about sockets and greenlets: on SQLite alone; the real
#: chain's test below (its stages use the database) runs on both databases
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize("after,delay,rst", VANISH_POINTS,
                         ids=[f"cmd{a}{'+%dms' % (d * 1000) if d else ''}{'-rst' if r else ''}"
                              for a, d, r in VANISH_POINTS])
def test_freeswitch_vanishing_at_any_step_leaves_nothing_behind(after, delay, rst, quick, start_guard, db,
                                                                probe_stages):
    quick.policy.stages = ["prompting", "routing"]
    guard = start_guard()
    before = baseline(guard, db)
    link = FlakyLink(guard.address, vanish_after=after, delay=delay, rst=rst)
    try:
        FakeFreeSWITCH(link.address, time_scale=TS, playback_durations=PROMPTS,
                       min_real_timeout=1.0).call(Caller(talk_time=20.0))
    finally:
        link.stop()
    assert_let_go(guard, db, before)
    assert_serves_next_call(guard, db)


def test_freeswitch_vanishing_after_any_command_of_the_real_chain_leaves_nothing_behind(quick, start_guard, db):
    """The product's own stages, with a soft-blocked caller: screening challenges, verification
    plays the code in early media, answers and opens the digit window, recording plays the
    consent notice and starts recording, routing exports and transfers. FreeSWITCH vanishes
    right after each of fsguard's commands in turn (FIN and RST alternately)."""
    from fsguard.rules import lists

    quick.policy.stages = ["screening", "verification", "recording", "routing"]
    quick.recording.consent = True
    quick.recording.start = "route"   # record_session among fsguard's commands, cut after too
    with db.begin() as session:
        lists.add(session, lists.make_spec("+12125550142", kind="block", level=3, reason="hardening test"))
    guard = start_guard()
    before = baseline(guard, db)

    def caller() -> Caller:
        return Caller(ani="+12125550142", digits="auto", talk_time=20.0)

    normal = FakeFreeSWITCH(guard.address, time_scale=TS).call(caller())
    assert normal.outcome == "routed" and normal.ok, (normal.outcome, normal.violations)
    assert "play_and_get_digits" in [app for app, _ in normal.apps] and "record_session" in [a for a, _ in normal.apps]
    wait_for(lambda: not guard.app.held and guard.server.active == 0)
    for after in range(1, len(normal.commands) + 1):
        link = FlakyLink(guard.address, vanish_after=after, rst=after % 2 == 0)
        try:
            FakeFreeSWITCH(link.address, time_scale=TS, min_real_timeout=1.0).call(caller())
        finally:
            link.stop()
        wait_for(lambda: not guard.app.deciding and not guard.app.held and guard.server.active == 0,
                 what=f"fsguard letting go of the call cut after command {after}")
        assert db.engine.pool.checkedout() == 0, f"a connection still checked out after command {after}"
    assert_let_go(guard, db, before)  # sessions and sockets: any one left by any cut shows here
    assert_serves_next_call(guard, db)


# ---------------------------------------------------------------------- a reply that never comes


@pytest.mark.parametrize("after", [1, 5, 8], ids=["connect", "pre_answer", "route"])
def test_a_reply_that_never_comes_still_ends_in_an_instruction_or_the_fallback(after, quick, start_guard, db,
                                                                              probe_stages):
    quick.policy.stages = ["prompting", "routing"]
    guard = start_guard()
    before = baseline(guard, db)
    link = FlakyLink(guard.address, swallow_replies_after=after)
    try:
        result = FakeFreeSWITCH(link.address, time_scale=TS, playback_durations=PROMPTS,
                                min_real_timeout=1.0).call(Caller(talk_time=20.0))
        assert link.swallowed >= 1
        assert link.closed_by_guard.wait(timeout=5), "fsguard kept the socket of a call it cannot talk to"
        assert [c.split("\n")[0] for c in result.commands][:2] == ["connect", "resume"]
        assert result.outcome in ("routed", "fallback"), (result.outcome, result.violations)
        if result.outcome == "routed":
            assert result.route in ("transfer default XML queues", quick.policy.fail_open_route)
    finally:
        link.stop()
    assert_let_go(guard, db, before)
    assert_serves_next_call(guard, db)


# ------------------------------------------------------------------- garbage and oversized frames

GARBAGE = {
    "binary": bytes(range(256)) * 4 + b"\n\n",
    "not-utf8": b"Content-Type: command/reply\nReply-Text: \xff\xfe\xfd\n\n",
    "huge-length": b"Content-Type: text/event-plain\nContent-Length: 99999999999999\n\n",
    "over-limit": b"Content-Type: text/event-plain\nContent-Length: 2000000\n\n",
    "endless-header": b"X-Junk: " + b"a" * 1_100_000,
    "odd-length": b"Content-Type: text/event-plain\nContent-Length: \xc2\xb2\n\n",
}


#: (what, after how many of FreeSWITCH's frames): instead of the connect reply, during start,
#: during the prompts, while the call is held
GARBAGE_POINTS = [("binary", 0), ("not-utf8", 1), ("endless-header", 1), ("huge-length", 5), ("odd-length", 5),
                  ("over-limit", 9), ("binary", 25)]


@SQLITE_ONLY
@pytest.mark.parametrize("kind,after", GARBAGE_POINTS, ids=[f"{k}-after{a}" for k, a in GARBAGE_POINTS])
def test_garbage_from_freeswitch_drops_the_connection_never_the_call(kind, after, quick, start_guard, db,
                                                                      probe_stages):
    """fsguard drops a connection that does not speak ESL; resume was sent with connect, so the
    channel falls back to the dialplan (or was already routed) instead of being stranded."""
    quick.policy.stages = ["prompting", "routing"]
    guard = start_guard()
    before = baseline(guard, db)
    link = FlakyLink(guard.address, garbage_after=after, garbage=GARBAGE[kind])
    try:
        result = FakeFreeSWITCH(link.address, time_scale=TS, playback_durations=PROMPTS,
                                min_real_timeout=1.0).call(Caller(talk_time=20.0))
        assert link.closed_by_guard.wait(timeout=5), "fsguard kept a connection that sent garbage"
        assert result.outcome in ("routed", "fallback"), (result.outcome, result.violations)
    finally:
        link.stop()
    assert_let_go(guard, db, before)
    assert_serves_next_call(guard, db)


# ------------------------------------------------------------------------------ database faults


def dead_database_url(db: Database, tmp_path: Any) -> str:
    """A URL of the same kind where nothing answers."""
    if db.is_sqlite:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        return f"sqlite:///{blocker}/fsguard.db"
    return "postgresql+psycopg://postgres@127.0.0.1:9/fsguard?connect_timeout=1"


def take_down(db: Database, url: str, monkeypatch) -> Callable[[], None]:
    """Point the running fsguard's database at ``url``; returns the function that brings it back."""
    engine, sessions = db.engine, db.sessions
    dead = create_engine(url, pool_size=2, max_overflow=0, pool_timeout=0.5)
    monkeypatch.setattr(db, "engine", dead)
    monkeypatch.setattr(db, "sessions", sessionmaker(dead, expire_on_commit=False))

    def bring_back() -> None:
        dead.dispose()
        db.engine, db.sessions = engine, sessions

    return bring_back


def logged(caplog, event: str) -> list[dict]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event]


def test_database_unreachable_when_a_call_comes_fails_open_and_is_logged(quick, start_guard, db, tmp_path,
                                                                        monkeypatch, probe_stages, caplog):
    quick.policy.stages = ["dbprobe", "routing"]
    guard = start_guard()
    before = baseline(guard, db)
    bring_back = take_down(db, dead_database_url(db, tmp_path), monkeypatch)
    result = FakeFreeSWITCH(guard.address, time_scale=TS).call(Caller())
    assert result.outcome == "routed" and result.route == quick.policy.fail_open_route, result
    assert result.ok, result.violations
    wait_for(lambda: not guard.app.held and guard.server.active == 0)
    failed = logged(caplog, "stage.failed")
    assert failed and failed[0]["stage"] == "dbprobe" and failed[0]["kind"] == "database unavailable"
    assert logged(caplog, "db.write_retry"), "the call's records were not kept for a retry"
    assert guard.app.metrics.db_errors._value.get() >= 2
    canonical = [e for e in logged(caplog, "call") if e.get("uuid") == result.uuid]
    assert canonical and canonical[0]["outcome"] == "failed_open"
    assert db.engine.pool.checkedout() == 0
    bring_back()
    # the database is back: what the call left behind is written, nothing was lost
    assert guard.app.writer.wait_idle(10)
    stored = records.find_call(db, result.uuid)
    assert stored is not None and stored.outcome == "failed_open" and stored.ended_at is not None
    assert [v.code for v in stored.verdicts] == ["error.database"]
    assert not logged(caplog, "db.write_abandoned")
    assert_let_go(guard, db, before)
    assert_serves_next_call(guard, db)


def test_records_the_database_never_takes_are_logged_whole_for_an_operator(quick, start_guard, db, tmp_path,
                                                                           monkeypatch, probe_stages, caplog):
    quick.policy.stages = ["routing"]
    quick.database.write_retry_seconds = 0.3
    guard = start_guard()
    before = baseline(guard, db)
    bring_back = take_down(db, dead_database_url(db, tmp_path), monkeypatch)
    result = FakeFreeSWITCH(guard.address, time_scale=TS).call(Caller())
    assert result.outcome == "routed" and result.ok, result.violations
    assert guard.app.writer.wait_idle(10)
    abandoned = logged(caplog, "db.write_abandoned")
    assert {e["kind"] for e in abandoned} == {"call", "verdict", "call_end"}
    call_row = next(e["row"] for e in abandoned if e["kind"] == "call")
    assert call_row["uuid"] == result.uuid and call_row["action"] == "transfer default XML queues"
    bring_back()
    assert records.find_call(db, result.uuid) is None
    assert_let_go(guard, db, before)
    assert_serves_next_call(guard, db)


def test_database_lost_while_a_call_is_held_ends_the_call_cleanly(quick, start_guard, db, tmp_path, monkeypatch,
                                                                  probe_stages, caplog):
    quick.policy.stages = ["dbprobe", "routing"]
    guard = start_guard()
    before = baseline(guard, db)
    fs = FakeFreeSWITCH(guard.address, time_scale=TS)
    pending = fs.spawn(Caller(talk_time=60.0))
    wait_for(lambda: len(guard.app.held) == 1, what="the call routed and held")
    bring_back = take_down(db, dead_database_url(db, tmp_path), monkeypatch)
    result = pending.get(timeout=10)
    assert result.outcome == "routed" and result.route == "transfer default XML queues" and result.ok
    wait_for(lambda: not guard.app.held and guard.server.active == 0)
    assert logged(caplog, "db.write_retry")
    bring_back()
    assert guard.app.writer.wait_idle(10)
    assert_let_go(guard, db, before)
    stored = records.find_call(db, result.uuid)
    # the end, kept while the database was away, is written once it is back
    assert stored.outcome == "routed" and stored.ended_at is not None and stored.hangup_cause
    assert_serves_next_call(guard, db)


@pytest.fixture
def slow_database(quick, db_url):
    """The same database with a 0.2 s statement timeout (busy timeout on SQLite)."""
    database = Database(replace(quick.database, statement_timeout=0.2, pool_timeout=0.5))
    yield database
    database.dispose()


def lock_calls(url: str):
    """Another client holds a write lock on the calls table: every write to it waits."""
    engine = create_engine(url)
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(text("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE"))

    def release() -> None:
        conn.rollback()
        conn.close()
        engine.dispose()

    return release


def test_a_database_too_slow_to_answer_fails_open(quick, start_guard, slow_database, probe_stages, caplog):
    quick.policy.stages = ["dbprobe", "routing"]
    guard = start_guard(database=slow_database)
    before = baseline(guard, slow_database)
    release = lock_calls(slow_database.url.render_as_string(hide_password=False))
    try:
        result = FakeFreeSWITCH(guard.address, time_scale=TS).call(Caller())
        assert result.outcome == "routed" and result.route == quick.policy.fail_open_route, result
        assert result.ok, result.violations
        failed = logged(caplog, "stage.failed")
        assert failed and failed[0]["kind"] == "database unavailable"
        wait_for(lambda: not guard.app.held and guard.server.active == 0)
    finally:
        release()
    assert_let_go(guard, slow_database, before)
    assert_serves_next_call(guard, slow_database)
