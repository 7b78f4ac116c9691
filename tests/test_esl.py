"""The Event Socket session, tested on real FreeSWITCH captures and on a socket pair.

Each test named after a greenswitch 0.0.19 defect proves fsguard does not inherit it.
"""

from __future__ import annotations

import random
import re
import socket
import time

import gevent
import pytest
from greenswitch.esl import ESLEvent

from fsguard.esl.protocol import (FrameReader, Linger, MyEvents, PlainEvent, ProtocolError, linger_notice_tokens,
                                  parse_event_plain, parse_headers, plain_header, raw_value)
from fsguard.esl.session import CallGone, ESLTimeout, OutboundSession
from fsguard_testing import transcripts as tx
from fsguard_testing.wire import command_reply, event_frame, linger_notice



def frames_of(data: bytes, chunk: int | None = None):
    reader = FrameReader()
    if chunk is None:
        return reader.feed(data)
    out = []
    for i in range(0, len(data), chunk):
        out.extend(reader.feed(data[i:i + chunk]))
    return out


def test_caller_name_cannot_forge_the_caller_id_number(transcripts):
    """greenswitch decodes the whole frame first: the caller's name forges Caller-Caller-ID-Number."""
    raw = tx.connect_reply(transcripts / "injection.txt")
    forged = ESLEvent(raw.decode()).headers["Caller-Caller-ID-Number"]
    (frame,) = frames_of(raw)
    assert frame.headers["Caller-Caller-ID-Number"] == "15557654321"
    assert forged != "15557654321"
    assert frame.headers["Caller-Caller-ID-Name"] == "Eve\nCaller-Caller-ID-Number: 18005550199"


def test_sip_display_name_injection_is_kept_inside_the_value(transcripts):
    raw = tx.connect_reply(transcripts / "sip_injection.txt")
    (frame,) = frames_of(raw)
    assert "\n" in frame.headers["Caller-Caller-ID-Name"]
    assert frame.headers["Caller-Caller-ID-Number"] != "18005550199"


def test_content_length_injected_in_a_linger_notice_does_not_desynchronise(transcripts):
    data = tx.received_bytes(transcripts / "fs-1.11" / "14d_sip_from_user_injects_content_length.txt")
    frames = frames_of(data)
    notices = [f for f in frames if f.content_type == "text/disconnect-notice"]
    assert [n.headers["Content-Disposition"] for n in notices] == ["linger", "disconnect"]
    assert notices[0].body == b""
    assert notices[1].body.startswith(b"Disconnected, goodbye.")


@pytest.mark.parametrize("name", [p.name for p in tx.available()] if tx.available() else ["none"])
def test_every_capture_parses_the_same_however_the_bytes_are_split(name):
    paths = {p.name: p for p in tx.available()}
    if name not in paths:
        pytest.skip("no captures")
    data = tx.received_bytes(paths[name])
    whole = frames_of(data)
    assert whole or not data.strip(), "bytes that made no frame"
    rnd = random.Random(name)
    for chunk in (1, 7, rnd.randint(2, 4000)):
        split = frames_of(data, chunk)
        assert [(f.headers, f.body) for f in split] == [(f.headers, f.body) for f in whole]
    events = [parse_event_plain(f.body) for f in whole if f.content_type == "text/event-plain"]
    assert all("Event-Name" in e for e in events)


@pytest.mark.parametrize("name", [p.name for p in tx.available()] if tx.available() else ["none"])
def test_an_event_is_sorted_on_the_same_headers_the_full_parser_reads(name):
    """fsguard decides whether to parse an event from its Event-Name and Application-UUID alone."""
    paths = {p.name: p for p in tx.available()}
    if name not in paths:
        pytest.skip("no captures")
    for frame in frames_of(tx.received_bytes(paths[name])):
        if frame.content_type != "text/event-plain":
            continue
        event = parse_event_plain(frame.body)
        for header in ("Event-Name", "Application-UUID", "Unique-ID", "Caller-Caller-ID-Name"):
            assert plain_header(frame.body, header.encode()) == event.get(header), header
        lazy = PlainEvent(frame.body)
        assert all(lazy.get(key) == value for key, value in event.items())
        assert lazy.get("No-Such-Header", "none") == "none" and "No-Such-Header" not in lazy
        assert dict(lazy) == event


def test_a_caller_name_cannot_pass_for_the_event_name_the_sorting_reads():
    body = (b"Event-Name: CHANNEL_EXECUTE\nCaller-Caller-ID-Name: x%0AEvent-Name%3A%20DTMF%0A"
            b"Application-UUID%3A%20forged\nApplication-UUID: real\n\nbody text\nEvent-Name: DTMF\n")
    assert plain_header(body, b"Event-Name") == "CHANNEL_EXECUTE"
    assert plain_header(body, b"Application-UUID") == "real"
    assert plain_header(body, b"DTMF-Digit") is None


def test_oversized_header_block_is_a_protocol_error():
    reader = FrameReader(max_bytes=1024)
    with pytest.raises(ProtocolError):
        reader.feed(b"X-Junk: " + b"a" * 2000)


@pytest.mark.parametrize("length", [b"99999999999", b"-1", b"12abc", str(10 ** 7).encode()])
def test_absurd_content_length_is_a_protocol_error(length):
    with pytest.raises(ProtocolError):
        FrameReader(max_bytes=1_000_000).feed(b"Content-Type: text/event-plain\nContent-Length: " + length + b"\n\n")


def test_raw_non_utf8_bytes_are_a_protocol_error():
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"Content-Type: command/reply\nReply-Text: \xff\xfe\n\n")


def test_percent_escapes_of_invalid_utf8_are_replaced_not_fatal():
    headers = parse_headers(b"Caller-Caller-ID-Name: %FF%FEbad\nCaller-Caller-ID-Number: 1555")
    assert headers["Caller-Caller-ID-Number"] == "1555"
    assert "bad" in headers["Caller-Caller-ID-Name"]


# ---------------------------------------------------------------- session


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    session = OutboundSession(ours, command_timeout=0.5)
    yield session, theirs
    ours.close()
    theirs.close()


def _complete(app_uuid: str, app: str = "playback", **extra: str) -> bytes:
    return event_frame({"Event-Name": "CHANNEL_EXECUTE_COMPLETE", "Unique-ID": "u1", "Application": app,
                        "Application-UUID": app_uuid, **extra})


def _sent_event_uuid(theirs: socket.socket) -> str:
    data = b""
    while b"\n\n" not in data:
        data += theirs.recv(4096)
    for line in data.decode().splitlines():
        if line.startswith("Event-UUID: "):
            return line.split(": ", 1)[1]
    raise AssertionError(data)


def test_a_reply_that_never_comes_times_out_instead_of_blocking_forever(pair):
    """greenswitch's send() waits forever on a dead peer."""
    session, _theirs = pair
    started = time.monotonic()
    with pytest.raises(ESLTimeout):
        session.command(MyEvents())
    assert time.monotonic() - started < 2


def test_an_unsolicited_reply_is_dropped_and_the_session_goes_on(pair):
    """greenswitch pops a reply off an empty list and its reader dies."""
    session, theirs = pair
    theirs.sendall(command_reply("+OK stray"))
    gevent.sleep(0.01)
    session.poll()
    theirs.sendall(command_reply("+OK will linger"))
    session.send(Linger())
    assert session.reply().text == "+OK will linger"


def test_completion_is_matched_on_application_uuid_not_on_the_application_name(pair):
    """greenswitch matches completions by name: an earlier playback's completion ends the wait."""
    session, theirs = pair
    result = gevent.spawn(session.execute, "playback", "b.wav", timeout=2)
    app_uuid = _sent_event_uuid(theirs)
    theirs.sendall(command_reply("+OK"))
    theirs.sendall(_complete("some-other-playback"))
    gevent.sleep(0.05)
    assert not result.ready()
    theirs.sendall(_complete(app_uuid, **{"Application-Response": "FILE PLAYED"}))
    assert result.get(timeout=2)["Application-Response"] == "FILE PLAYED"


def test_a_hangup_already_received_stops_the_next_command_before_it_is_sent(pair):
    """greenswitch issue #59: the hang-up is noticed only at the next command."""
    session, theirs = pair
    theirs.sendall(event_frame({"Event-Name": "CHANNEL_HANGUP", "Unique-ID": "u1", "Hangup-Cause": "NORMAL_CLEARING"}))
    gevent.sleep(0.01)
    with pytest.raises(CallGone):
        session.execute("playback", "x.wav")
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)


def test_hangup_during_an_application_ends_the_wait(pair):
    session, theirs = pair
    result = gevent.spawn(session.execute, "play_and_get_digits", "1 2 1 5000 # a b v \\d+", timeout=2)
    _sent_event_uuid(theirs)
    theirs.sendall(command_reply("+OK"))
    theirs.sendall(linger_notice("u1", "sofia/x/1555"))
    theirs.sendall(event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "u1",
                                "variable_hangup_cause": "NORMAL_CLEARING", "variable_billsec": "0"}))
    with pytest.raises(CallGone):
        result.get(timeout=2)
    assert session.hangup_cause == "NORMAL_CLEARING"


def test_an_argument_with_a_line_break_is_never_written(pair):
    session, _ = pair
    with pytest.raises(ValueError):
        session.execute("set", "x=1\nexecute-app-name: hangup")


def test_getvar_refuses_caller_controlled_variables(pair):
    session, _ = pair
    with pytest.raises(ValueError):
        session.getvar("caller_id_name")


# ------------------------------------------------- the linger notice, by FreeSWITCH's own bytes


LINGER_CAPTURES = ["14b_sip_from_user_escaped_crlf.txt", "14d_sip_from_user_injects_content_length.txt",
                   "03d_caller_hangup_kill_b_leg_linger_RACE_notice_before_hangup_events.txt"]


@pytest.mark.parametrize("name", LINGER_CAPTURES)
def test_the_linger_notice_of_a_real_capture_is_recognised_by_the_bytes_freeswitch_wrote(name, transcripts):
    """Real linger notices (a CR LF and an injected Content-Length in the raw Channel-Name, and one
    that came before the hang-up events) are matched whole, from the connect reply's encoded
    name, and every frame after them is FreeSWITCH's."""
    path = transcripts / "fs-1.11" / name
    data = tx.received_bytes(path)
    linger = int(re.search(rb"\nLinger-Time: (-?\d+)\n", data).group(1))
    connect_end = data.index(b"\n\n") + 2
    (connect,) = FrameReader().feed(data[:connect_end])
    for chunk in (1, 13, len(data)):
        reader = FrameReader()
        reader.notice = linger_notice_tokens(raw_value(connect.raw, b"Unique-ID"),
                                             raw_value(connect.raw, b"Channel-Name"), linger)
        frames = []
        for i in range(connect_end, len(data), chunk):
            frames.extend(reader.feed(data[i:i + chunk]))
        assert reader.notice is None, "the linger notice was not recognised"
        notices = [f.headers.get("Content-Disposition") for f in frames if f.content_type == "text/disconnect-notice"]
        assert notices == ["linger", "disconnect"]
        events = [parse_event_plain(f.body) for f in frames if f.content_type == "text/event-plain"]
        assert events and all("Event-Name" in e for e in events)
        assert "CHANNEL_HANGUP_COMPLETE" in [e["Event-Name"] for e in events]
