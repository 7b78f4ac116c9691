"""The Event Socket: the protocol on bytes alone, the outbound session on real FreeSWITCH captures
and a socket pair, the inbound client against the fake inbound Event Socket.

Each test named after a greenswitch 0.0.19 defect proves fsguard does not inherit it.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time

import gevent
import pytest
from greenswitch.esl import ESLEvent

from fsguard.esl.channel import COMPLETION, OutboundChannel
from fsguard.esl.client import FreeSWITCHAPI, Unreachable
from fsguard.esl.protocol import (Api, ApiResponse, Auth, AuthRequest, BgApi, CommandReply, Connect, Connection,
                                  Disconnected, Event, Execute, Exit, Filter, FrameReader, GetVar, Linger, MyEvents,
                                  NixEvent, PlainEvent, ProtocolError, Rejected, Resume, linger_notice_tokens,
                                  parse_event_plain, parse_headers, plain_header, raw_value)
from fsguard.esl.session import CallGone, ESLTimeout, OutboundSession
from fsguard_testing import transcripts as tx
from fsguard_testing.inbound import FakeInboundESL
from fsguard_testing.wire import (api_response, command_reply, disconnect_notice, event_frame, linger_notice,
                                  serialize_event)


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


def _connect_reply(uuid: str = "u1") -> bytes:
    return (b"Content-Type: command/reply\nReply-Text: +OK\nSocket-Mode: async\nControl: full\nUnique-ID: "
            + uuid.encode() + b"\nCaller-Caller-ID-Number: 15551234567\nvariable_socket_resume: true\n\n")


class _Said:
    """A log that keeps what the session said."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **kw: self.lines.append((event, kw))


def test_start_returns_with_the_connect_reply_and_the_others_are_checked_before_the_next_reply():
    ours, theirs = socket.socketpair()
    said = _Said()
    session = OutboundSession(ours, command_timeout=0.5, log=said, resume=False)
    theirs.sendall(_connect_reply())
    channel = gevent.spawn(session.start).get(timeout=0.3)   # the subscription's and linger's replies never came
    assert channel["Unique-ID"] == "u1"
    unread = [str(c).split()[0] for c in session.unread]
    assert unread == ["myevents", "nixevent", "event", "linger"]
    # they come late, linger refused, then the reply to the next command
    theirs.sendall(b"".join(command_reply("+OK") for _ in unread[:-1]) + command_reply("-ERR not now")
                   + command_reply("+OK will linger"))
    session.send(Linger())
    assert session.reply().text == "+OK will linger"   # not one of the earlier commands' replies
    assert [(e, kw["command"].split()[0]) for e, kw in said.lines] == [("esl.command_refused", "linger")]
    assert session.unread == []
    ours.close()
    theirs.close()


def test_a_connection_that_sent_garbage_is_sent_nothing_more_and_closed_without_exit(pair):
    session, theirs = pair
    theirs.sendall(_connect_reply())
    session.start()
    theirs.sendall(b"Content-Type: text/event-plain\nContent-Length: \xc2\xb2\n\n")
    gevent.sleep(0.01)
    with pytest.raises(ProtocolError):
        session.execute("playback", "x.wav")
    with pytest.raises(ProtocolError):
        session.send_apps([("transfer", "default XML queues")])
    session.close()
    theirs.settimeout(1)
    written = b""
    while chunk := theirs.recv(65536):
        written += chunk
    assert written.startswith(b"connect\n\n") and b"playback" not in written and b"transfer" not in written
    assert b"exit" not in written


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


# ------------------------------------------------------------- the protocol, bytes alone


@pytest.mark.parametrize("command, wire", [
    (Connect(), b"connect\n\n"),
    (Resume(), b"resume\n\n"),
    (Linger(), b"linger\n\n"),
    (Linger(30), b"linger 30\n\n"),
    (MyEvents(), b"myevents\n\n"),
    (MyEvents("json"), b"myevents json\n\n"),
    (Event(("CHANNEL_ANSWER", "DTMF")), b"event plain CHANNEL_ANSWER DTMF\n\n"),
    (Event(("ALL",), "json"), b"event json ALL\n\n"),
    (NixEvent(("ALL",)), b"nixevent ALL\n\n"),
    (Filter("Unique-ID", "u1"), b"filter Unique-ID u1\n\n"),
    (Execute("answer"), b"sendmsg\ncall-command: execute\nexecute-app-name: answer\n\n"),
    (Execute("playback", "welcome.wav", "a1"),
     b"sendmsg\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: welcome.wav\nEvent-UUID: a1\n\n"),
    (GetVar("billsec"), b"getvar billsec\n\n"),
    (Api("status"), b"api status\n\n"),
    (BgApi("originate x &park()"), b"bgapi originate x &park()\n\n"),
    (Auth("ClueCon"), b"auth ClueCon\n\n"),
    (Exit(), b"exit\n\n"),
], ids=lambda v: str(v) if not isinstance(v, bytes) else "")
def test_each_command_is_written_as_freeswitch_reads_it(command, wire):
    assert bytes(command) == wire


@pytest.mark.parametrize("make", [
    lambda: Execute("set", "x=1\nexecute-app-name: hangup"),
    lambda: Execute("playback\r", "x.wav"),
    lambda: Api("status\n\napi hupall"),
    lambda: Filter("Unique-ID", "u1\nevent plain ALL"),
    lambda: Event(("DTMF\nexit",)),
    lambda: Auth("ClueCon\n\napi hupall"),
])
def test_a_command_with_a_line_break_in_an_argument_cannot_be_made(make):
    with pytest.raises(ValueError, match="line break"):
        make()


def test_the_password_is_not_in_the_auth_commands_repr():
    assert "ClueCon" not in repr(Auth("ClueCon"))


def test_replies_are_paired_with_the_commands_in_the_order_they_were_sent_whatever_events_come_between():
    protocol = Connection()
    status, record, subscribe = Api("status"), Api("uuid_record u1 mask /r.wav"), Event(("CHANNEL_HANGUP_COMPLETE",))
    assert protocol.send(subscribe, status, record) == bytes(subscribe) + bytes(status) + bytes(record)
    hangup = event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "u1"})
    values = protocol.receive(command_reply("+OK event listener enabled plain") + hangup
                              + api_response("UP 0 years\n") + hangup + api_response("-ERR Cannot locate session!\n"))
    assert [type(v) for v in values] == [CommandReply, PlainEvent, ApiResponse, PlainEvent, ApiResponse]
    assert [v.command for v in values if not isinstance(v, PlainEvent)] == [subscribe, status, record]
    assert values[1]["Unique-ID"] == "u1"
    assert values[2].ok and values[2].text == "UP 0 years\n"
    assert not values[4].ok and values[4].error == "-ERR Cannot locate session!"
    assert not protocol.pending


def test_a_reply_nobody_asked_for_answers_no_command():
    protocol = Connection()
    (stray,) = protocol.receive(command_reply("+OK stray"))
    assert stray.command is None and stray.ok
    exit_ = Exit()
    protocol.send(exit_)
    (bye,) = protocol.receive(command_reply("+OK bye"))
    assert bye.command is exit_


@pytest.mark.parametrize("text, error", [("+OK accepted", None), ("-ERR invalid", "-ERR invalid"),
                                         ("-ERR command not found", "-ERR command not found")])
def test_a_command_reply_is_ok_only_when_freeswitch_says_plus_ok(text, error):
    protocol = Connection()
    protocol.send(Auth("x"))
    (reply,) = protocol.receive(command_reply(text))
    assert (reply.ok, reply.error, reply.text) == (error is None, error, text)


def test_greeting_rejection_and_notices_come_as_values():
    values = Connection().receive(
        b"Content-Type: auth/request\n\n"
        + b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"
        + linger_notice("u1", "sofia/lab/1555") + disconnect_notice("u1"))
    assert [type(v) for v in values] == [AuthRequest, Rejected, Disconnected, Disconnected]
    assert values[1].text == "Access Denied, go away.\n"
    assert [v.linger for v in values[2:]] == [True, False]


def test_a_json_event_comes_as_its_headers():
    (event,) = Connection().receive(event_frame({"Event-Name": "DTMF", "DTMF-Digit": "5"}, "json"))
    assert event == {"Event-Name": "DTMF", "DTMF-Digit": "5"}


def test_a_json_events_arrays_and_numbers_read_as_the_plain_events_strings():
    body = json.dumps({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "variable_sip_h_X": ["a", "b"], "odd": 5,
                       "Caller-Caller-ID-Name": "x\nUnique-ID: forged"}).encode()
    (event,) = Connection().receive(b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body)
    assert event == {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "variable_sip_h_X": "ARRAY::a|:b", "odd": "5",
                     "Caller-Caller-ID-Name": "x\nUnique-ID: forged"}
    assert "Unique-ID" not in event


def test_the_linger_notice_is_recognised_even_in_the_same_read_as_the_connect_reply():
    """The connect reply arms the notice before the next frame of the same read is parsed: a
    forged hang-up in the raw channel name of a notice that came with it is never read as one."""
    uuid = "0b3c8a8e-0000-4000-8000-000000000001"
    forged = event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": uuid, "variable_billsec": "9999"})
    name = "sofia/lab/1555\n\n" + forged.decode() + "@192.0.2.10"
    connect = serialize_event({"Event-Name": "CHANNEL_DATA", "Unique-ID": uuid, "Channel-Name": name,
                               "Content-Type": "command/reply", "Reply-Text": "+OK\n"})
    real = event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": uuid, "variable_billsec": "2"})
    protocol = Connection()
    protocol.send(Connect(), Linger())
    values = protocol.receive(connect + command_reply("+OK will linger") + linger_notice(uuid, name) + real)
    assert [type(v) for v in values] == [CommandReply, CommandReply, Disconnected, PlainEvent]
    assert values[0].headers["Channel-Name"] == name and values[2].linger
    assert values[3]["variable_billsec"] == "2"


# -------------------------------------------------------------- the channel, bytes alone


def connected_channel(uuid: str = "u1") -> OutboundChannel:
    channel = OutboundChannel()
    channel.protocol.send(Connect())
    channel.receive(serialize_event({"Content-Type": "command/reply", "Reply-Text": "+OK", "Unique-ID": uuid,
                                     "Channel-Name": "sofia/lab/1555"}))
    channel.channel = channel.replies.popleft().headers
    return channel


def test_the_channel_ends_only_with_its_own_hangup():
    channel = connected_channel("u1")
    channel.receive(event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "u2",
                                 "variable_hangup_cause": "FORGED"}))
    assert not channel.hungup
    channel.receive(event_frame({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u1"})
                    + event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "u1",
                                   "variable_hangup_cause": "NORMAL_CLEARING"}))
    assert channel.answered and channel.hungup and channel.hangup_cause == "NORMAL_CLEARING"


def test_a_completion_is_kept_only_for_the_application_waited_for():
    channel = connected_channel()
    channel.completions_subscribed = False
    playback = Execute("playback", "b.wav", "a2")
    assert channel.commands_to_run(playback) == [Event((COMPLETION,)), playback]
    assert channel.commands_to_run(Execute("playback", "c.wav", "a3"))[0].app == "playback"  # subscribed once
    complete = {"Event-Name": COMPLETION, "Unique-ID": "u1", "Application": "playback"}
    channel.receive(event_frame({**complete, "Application-UUID": "a1"}))
    assert not channel.completions and channel.events_skipped == 1   # not even parsed
    channel.receive(event_frame({**complete, "Application-UUID": "a2", "Application-Response": "FILE PLAYED"}))
    assert channel.completions["a2"]["Application-Response"] == "FILE PLAYED"


def test_completions_are_unsubscribed_with_the_first_queued_applications_once_nobody_waits():
    channel = connected_channel()
    channel.awaiting.add("a1")
    assert [str(c) for c in channel.commands_to_queue([("set", "x=1")])] == ["sendmsg"]
    channel.awaiting.clear()
    commands = channel.commands_to_queue([("set", "x=1"), ("transfer", "default XML queues")])
    assert commands == [NixEvent((COMPLETION,)), Execute("set", "x=1"), Execute("transfer", "default XML queues")]
    assert not channel.completions_subscribed
    assert len(channel.commands_to_queue([("set", "y=2")])) == 1


def test_digits_are_kept_in_the_order_pressed():
    channel = connected_channel()
    channel.receive(b"".join(event_frame({"Event-Name": "DTMF", "Unique-ID": "u1", "DTMF-Digit": d}) for d in "42#"))
    assert channel.dtmf == ["4", "2", "#"]


@pytest.mark.parametrize("name", ["caller_id_name", "sip_from_user", "sip_h_X-Evil", "sip_req_uri"])
def test_a_caller_controlled_variable_is_never_asked_for_with_getvar(name):
    with pytest.raises(ValueError, match="caller-controlled"):
        OutboundChannel.getvar_command(name)


# ------------------------------------------------------- the inbound client, on the fake


@pytest.fixture
def inbound():
    fake = FakeInboundESL().start()
    yield fake
    fake.stop()


def hangup_complete(uuid: str, **extra: str) -> dict[str, str]:
    return {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": uuid, "variable_billsec": "7", **extra}


def test_the_inbound_client_authenticates_and_runs_api_commands(inbound):
    with FreeSWITCHAPI(inbound.address, "ClueCon", timeout=2) as fs:
        assert fs.api("status").startswith("UP 0 years")
    assert inbound.commands == ["auth ClueCon", "api status", "exit"]


def test_events_are_received_as_values_while_api_replies_answer_their_own_commands(inbound):
    """An event FreeSWITCH sends between a command and its reply is kept for the event reader;
    the reply still answers the command."""
    def hang_up_first(command: str) -> str | None:
        inbound.emit(hangup_complete("u1"))
        return None

    inbound.api_handler = hang_up_first
    with FreeSWITCHAPI(inbound.address, "ClueCon", timeout=2) as fs:
        fs.subscribe("CHANNEL_HANGUP_COMPLETE")
        fs.filter("Unique-ID", "u1")
        assert fs.api("status").startswith("UP 0 years")
        inbound.emit(hangup_complete("u2"))   # filtered out by FreeSWITCH
        inbound.emit(hangup_complete("u1", variable_billsec="8"))
        first, second = fs.next_event(2), fs.next_event(2)
        assert (first["Unique-ID"], first["variable_billsec"]) == ("u1", "7")
        assert (second["Unique-ID"], second["variable_billsec"]) == ("u1", "8")
        assert fs.next_event(0.05) is None
    assert inbound.commands[1:3] == ["event plain CHANNEL_HANGUP_COMPLETE", "filter Unique-ID u1"]


def test_a_greenlet_waiting_for_events_does_not_hold_up_another_ones_api_command(inbound):
    with FreeSWITCHAPI(inbound.address, "ClueCon", timeout=2) as fs:
        fs.subscribe("CHANNEL_HANGUP_COMPLETE")
        watcher = gevent.spawn(fs.next_event, 5)
        gevent.sleep(0)
        assert fs.api("status").startswith("UP 0 years")
        assert not watcher.ready()
        inbound.emit(hangup_complete("u1"))
        assert watcher.get(timeout=2)["Unique-ID"] == "u1"


def test_a_caller_name_in_an_inbound_event_cannot_forge_its_headers(inbound):
    """greenswitch decodes the whole frame first: here the name stays inside its own value."""
    with FreeSWITCHAPI(inbound.address, "ClueCon", timeout=2) as fs:
        fs.subscribe("ALL")
        inbound.emit(hangup_complete("u1", **{"Caller-Caller-ID-Name": "Eve\nUnique-ID: u2\nvariable_billsec: 0"}))
        event = fs.next_event(2)
    assert (event["Unique-ID"], event["variable_billsec"]) == ("u1", "7")
    assert event["Caller-Caller-ID-Name"] == "Eve\nUnique-ID: u2\nvariable_billsec: 0"


@pytest.mark.parametrize("behaviour, password, says", [
    ("ok", "wrong", "refused the password"),
    ("deny", "ClueCon", "check its ACL"),
    ("silent", "ClueCon", "did not greet and authenticate within 0.3s"),
])
def test_an_inbound_socket_that_cannot_be_used_says_what_to_check(behaviour, password, says):
    fake = FakeInboundESL(behaviour=behaviour).start()
    try:
        with pytest.raises(Unreachable, match=says):
            FreeSWITCHAPI(fake.address, password, timeout=0.3).connect()
    finally:
        fake.stop()


def test_an_api_command_that_is_never_answered_times_out_and_drops_the_connection():
    fake = FakeInboundESL(behaviour="mute_api").start()
    try:
        fs = FreeSWITCHAPI(fake.address, "ClueCon", timeout=0.3)
        with pytest.raises(Unreachable, match="did not answer 'api status' within 0.3s"):
            fs.api("status")
        assert not fs.connected
    finally:
        fake.stop()


def test_a_long_application_argument_is_sent_as_the_body_freeswitch_reads_in_one_go():
    """mod_event_socket reads headers a byte at a time and a body at once; switch_ivr_parse_event
    takes a text/plain body as the argument when there is no execute-app-arg."""
    from fsguard.esl.protocol import INLINE_ARG_MAX, Execute

    short = bytes(Execute("transfer", "default XML queues"))
    assert short == b"sendmsg\ncall-command: execute\nexecute-app-name: transfer\nexecute-app-arg: default XML queues\n\n"
    arg = "^^|" + "|".join(f"fsguard_v{i}=é{i}" for i in range(20))
    assert len(arg.encode()) > INLINE_ARG_MAX
    head, body = bytes(Execute("multiset", arg, "u-1")).split(b"\n\n", 1)
    assert head.split(b"\n") == [b"sendmsg", b"call-command: execute", b"execute-app-name: multiset",
                                 b"Event-UUID: u-1", b"content-type: text/plain",
                                 f"content-length: {len(arg.encode())}".encode()]
    assert body == arg.encode()   # the length in bytes, not characters
