"""Tests of the FreeSWITCH simulator (fsguard_testing) against the real captures and a scripted target.

The scripted target is a raw-socket StreamServer written here, so these tests do not depend on
fsguard's own ESL code: they pin down what the simulator puts on the wire.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import pytest  # noqa: E402
from gevent.server import StreamServer  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fsguard_testing import transcripts, wire  # noqa: E402
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH, SimResult  # noqa: E402

ALL_CAPTURES = transcripts.available()  # raises (collection error) when a capture folder is missing


# --------------------------------------------------------------------------- scripted target


class Conn:
    """The target's side of one simulated channel, driven by a test script."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = wire.FrameReader()
        self.frames: list[wire.Frame] = []  # everything received, in order
        self._pending: list[wire.Frame] = []
        self.raw = bytearray()
        self.chunks: list[bytes] = []  # recv() boundaries, as read
        self.eof = False
        self.done = gevent.event.Event()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8", "surrogateescape"))

    def command(self, text: str) -> None:
        self.send(text.rstrip("\n") + "\n\n")

    def sendmsg(self, app: str, arg: str | None = None, uuid: str | None = None) -> None:
        lines = ["sendmsg", "call-command: execute", f"execute-app-name: {app}"]
        if uuid:
            lines.append(f"Event-UUID: {uuid}")
        if arg is not None:
            lines.append(f"execute-app-arg: {arg}")
        self.command("\n".join(lines))

    def next_frame(self, timeout: float = 5.0) -> wire.Frame | None:
        """The next frame FreeSWITCH sent, or None at EOF."""
        with gevent.Timeout(timeout):
            while not self._pending:
                if self.eof:
                    return None
                data = self.sock.recv(65536)
                if not data:
                    self.eof = True
                    continue
                self.raw += data
                self.chunks.append(data)
                new = self.reader.feed(data)
                self.frames += new
                self._pending += new
        return self._pending.pop(0)

    def read_raw_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        """Read raw bytes up to and including ``marker``, bypassing the frame reader.

        For replies a Content-Length-trusting reader cannot frame (a raw getvar reply
        carrying an injected Content-Length): the bytes after the marker go to the reader.
        """
        assert not self._pending and not self.reader.leftover
        buf = b""
        with gevent.Timeout(timeout):
            while marker not in buf:
                data = self.sock.recv(65536)
                assert data, "EOF while reading raw"
                buf += data
        end = buf.index(marker) + len(marker)
        self.raw += buf
        new = self.reader.feed(buf[end:])
        self.frames += new
        self._pending += new
        return buf[:end]

    def reply(self, timeout: float = 5.0) -> wire.Frame:
        """Skip events until the next command/reply or api/response."""
        while True:
            f = self.next_frame(timeout)
            assert f is not None, "EOF while waiting for a reply"
            if f.content_type in ("command/reply", "api/response"):
                return f

    def until_event(self, name: str, timeout: float = 5.0) -> wire.Event:
        while True:
            f = self.next_frame(timeout)
            assert f is not None, f"EOF while waiting for {name}"
            if f.content_type in ("text/event-plain", "text/event-json") and f.event().name == name:
                return f.event()

    def until(self, pred: Callable[[wire.Frame], bool], timeout: float = 5.0) -> wire.Frame:
        while True:
            f = self.next_frame(timeout)
            assert f is not None, "EOF while waiting"
            if pred(f):
                return f

    def drain(self, timeout: float = 5.0) -> None:
        """Read until FreeSWITCH closes the socket."""
        while self.next_frame(timeout) is not None:
            pass

    def event_names(self) -> list[str]:
        return [f.event().name for f in self.frames if f.content_type in ("text/event-plain", "text/event-json")]

    def close(self) -> None:
        self.sock.close()


class Target:
    """A StreamServer that runs ``script(conn)`` for each connection FreeSWITCH makes."""

    def __init__(self, script: Callable[[Conn], None]) -> None:
        self.script = script
        self.conns: list[Conn] = []
        self.errors: list[BaseException] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.server_port)

    def _handle(self, sock: socket.socket, addr: object) -> None:
        conn = Conn(sock)
        self.conns.append(conn)
        try:
            self.script(conn)
        except BaseException as exc:  # surfaced by check()
            self.errors.append(exc)
        finally:
            sock.close()
            conn.done.set()

    def check(self, timeout: float = 10.0) -> None:
        """Wait for every connection's script to finish; re-raise the first failure."""
        for conn in list(self.conns):
            assert conn.done.wait(timeout), "target script did not finish"
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def target_factory():
    made: list[Target] = []

    def make(script: Callable[[Conn], None]) -> Target:
        t = Target(script)
        made.append(t)
        return t

    yield make
    for t in made:
        t.stop()


def sim_for(target: Target, **kw) -> FakeFreeSWITCH:
    kw.setdefault("time_scale", 0.01)
    kw.setdefault("min_real_timeout", 1.0)
    kw.setdefault("seed", 1)
    return FakeFreeSWITCH(target.address, **kw)


RunCall = Callable[..., tuple[SimResult, Conn]]


@pytest.fixture
def run_call(target_factory) -> RunCall:
    """``run_call(script, caller=None, **sim_options)``: one call into a target running ``script``.

    Most tests here are a script and what must hold afterwards; this is the part in between:
    the call from a fresh simulator, the script's own assertions re-raised (Target.check),
    then the result and the target's side of the channel for the test to look at.
    """

    def run(script: Callable[[Conn], None], caller: Caller | None = None, **sim_options) -> tuple[SimResult, Conn]:
        target = target_factory(script)
        result = sim_for(target, **sim_options).call(caller)
        target.check()
        return result, target.conns[0]

    return run


def standard_setup(conn: Conn, linger: str | None = "linger", events: str = "myevents") -> wire.Frame:
    """connect, myevents, linger: what fsguard does first."""
    conn.command("connect")
    data = conn.next_frame()
    assert data is not None
    conn.command(events)
    assert conn.reply().get("Reply-Text") == "+OK Events Enabled"
    if linger:
        conn.command(linger)
        assert conn.reply().get("Reply-Text", "").startswith("+OK will linger")
    return data


def finish(conn: Conn) -> None:
    """After a hang-up: wait for the final event, send exit, read to EOF."""
    conn.until_event("CHANNEL_HANGUP_COMPLETE")
    conn.command("exit")
    conn.drain()


def non_variable_names(headers: list[tuple[str, object]]) -> list[str]:
    return [k for k, _ in headers if not k.startswith("variable_")]


# --------------------------------------------------------------------------- transcripts loader


def test_loader_reads_both_formats():
    old = transcripts.load("full.txt")
    assert old[0].direction == "to_fs" and old[0].data == b"connect\n\n"
    assert old[1].from_fs and old[1].data.startswith(b"Event-Name: CHANNEL_DATA\n")
    assert old[-1].direction == "eof"
    new = transcripts.load("fs-1.11/14d_sip_from_user_injects_content_length.txt")
    assert {c.channel for c in new} == {"inbound", "outbound"}
    out = [c for c in new if c.channel == "outbound"]
    assert out[0].direction == "to_fs" and out[0].data == b"connect\n\n"
    assert len(out[1].data) == 6457  # exact byte counts are honoured


@pytest.mark.parametrize("path", ALL_CAPTURES, ids=lambda p: p.name[:30])
def test_every_capture_parses_into_frames(path: Path):
    data = transcripts.received_bytes(path)
    frames = wire.parse_stream(data)
    if not data:
        return
    assert frames, path
    for f in frames:
        if f.content_type in ("text/event-plain", "text/event-json"):
            # Content-Length counts exactly the serialised event
            assert int(f.get_all("Content-Length")[-1]) == len(f.body)
            assert f.event().name


def test_connect_reply_is_the_channel_data():
    raw = transcripts.connect_reply("full.txt")
    assert raw.endswith(b"Reply-Text: %2BOK%0A\nSocket-Mode: async\nControl: full\n\n")
    ev = wire.Event.from_plain(raw)
    assert ev.name == "CHANNEL_DATA" and ev.get("Reply-Text") == "+OK\n"
    assert ev.get("variable_DP_MATCH") == ["5000", "5000"]


# --------------------------------------------------------------------------- encoding


def test_url_encoding_matches_captures_09():
    def caller_name(path: str) -> str:
        return dict(wire.parse_header_block(transcripts.connect_reply(path)))["Caller-Caller-ID-Name"]

    def caller_number(path: str) -> str:
        return dict(wire.parse_header_block(transcripts.connect_reply(path)))["Caller-Caller-ID-Number"]

    c = "fs-1.11/09c_callerid_name_percent_colon.txt"
    # '%' + two UPPER-case hex digits passes through; lower case and non-hex are escaped
    assert wire.fs_url_encode("50% off: a%0Ab %41 c%0ad %zz") == caller_name(c)
    assert wire.fs_url_encode("+1%20555:99") == caller_number(c)
    assert wire.fs_url_encode("Zoë Ünïcødé 日本") == caller_name("fs-1.11/09d_callerid_name_utf8.txt")
    assert wire.fs_url_encode("a\nVariable-Injected: 1") == caller_name("fs-1.11/09a_callerid_name_newline.txt")
    assert wire.fs_url_encode("+OK\n") == "%2BOK%0A"
    assert wire.fs_url_encode("tone_stream://%(100,0,350)") == "tone_stream%3A//%25(100,0,350)"


@given(st.text(alphabet=st.characters(blacklist_characters="%", blacklist_categories=("Cs",))))
@settings(max_examples=200, deadline=None)
def test_url_encoding_round_trips_and_is_line_safe(value: str):
    enc = wire.fs_url_encode(value)
    assert not set(enc) & set("\r\n :")
    assert wire.fs_url_decode(enc) == value


@pytest.mark.parametrize("path", [p for p in ALL_CAPTURES if "09c" not in p.name], ids=lambda p: p.name[:30])
def test_serialize_event_reproduces_captured_events(path: Path):
    """Parse each captured event safely, re-serialise it: the bytes must be identical."""
    for f in wire.parse_stream(transcripts.received_bytes(path)):
        if f.content_type == "text/event-plain":
            ev = wire.Event.from_plain(f.body)
            assert wire.serialize_event(ev.headers, ev.body) == f.body
        elif f.content_type == "text/event-json":
            ev = wire.Event.from_json(f.body)
            assert wire.serialize_event_json(ev.headers, ev.body) == f.body


# --------------------------------------------------------------------------- byte-exact reproduction


def test_injection_caller_reproduced_byte_for_byte():
    captured = transcripts.connect_reply("injection.txt")
    d = dict(wire.parse_header_block(captured))
    sim = FakeFreeSWITCH(("127.0.0.1", 8084), core_uuid=d["Core-UUID"])
    caller = Caller(
        endpoint="loopback",
        uuid=d["Unique-ID"],
        name="Eve%0ACaller-Caller-ID-Number%3A%2018005550199",
        ani="15557654321",
        dnis="5006",
        session_id=14,
        loopback_leg_uuid=d["variable_other_loopback_leg_uuid"],
    )
    mine = sim.connect_reply_for(caller, at_us=int(d["Event-Date-Timestamp"]), event_sequence=int(d["Event-Sequence"]))
    assert mine == captured
    # and the safe reading of it gives the true number, not the forged one
    assert wire.Event.from_plain(mine).get("Caller-Caller-ID-Number") == "15557654321"


def test_sofia_connect_reply_has_the_captured_structure():
    captured = wire.Event.from_plain(transcripts.connect_reply("fs-1.11/14a_sip_from_display_literal_pct0A.txt"))
    sim = FakeFreeSWITCH(("127.0.0.1", 8084))
    mine = wire.Event.from_plain(sim.connect_reply_for(Caller(name="Evil\nInjected: 1")))
    assert non_variable_names(mine.headers) == non_variable_names(captured.headers)
    assert {k for k in captured.names() if k.startswith("variable_")} <= set(mine.names())
    assert mine.get("Caller-Caller-ID-Name") == "Evil\nInjected: 1"


# --------------------------------------------------------------------------- a whole call, like full.txt


def test_full_flow_frames_match_full_txt(run_call):
    uuids = {}

    def script(conn: Conn) -> None:
        standard_setup(conn)
        for app, arg in [
            ("answer", None),
            ("playback", "tone_stream://%(100,0,350)"),
            ("play_and_get_digits", "2 2 1 5000 # silence_stream://250 silence_stream://250 code \\d+"),
            ("hangup", "CALL_REJECTED"),
        ]:
            uuids[app] = f"uuid-{app}"
            conn.sendmsg(app, arg, uuid=uuids[app])
            assert conn.reply().get("Reply-Text") == "+OK"
            if app != "hangup":
                done = conn.until_event("CHANNEL_EXECUTE_COMPLETE")
                assert done.get("Application-UUID") == uuids[app]
        conn.until(lambda f: f.get("Content-Disposition") == "linger")
        conn.command("exit")
        assert conn.reply().get("Reply-Text") == "+OK bye"
        conn.drain()

    result, conn = run_call(script, Caller(endpoint="loopback", digits="42"), split_events=0.5)
    assert result.outcome == "hungup" and result.hangup_cause == "CALL_REJECTED"
    assert result.variables["code"] == "42" and result.variables["read_result"] == "success"
    assert result.heard == ["tone_stream://%(100,0,350)", "silence_stream://250"]
    assert result.violations == []

    captured = wire.parse_stream(transcripts.received_bytes("full.txt"))
    cap_events = [f.event() for f in captured if f.content_type == "text/event-plain"]
    sim_events = [f.event() for f in conn.frames if f.content_type == "text/event-plain"]
    assert [e.name for e in sim_events if e.name != "CHANNEL_PARK"] == [e.name for e in cap_events]
    # same header layout (apart from variables) event by event
    for mine, real in zip([e for e in sim_events if e.name != "CHANNEL_PARK"], cap_events):
        assert non_variable_names(mine.headers) == non_variable_names(real.headers), mine.name
    # the frame kinds and order after the events: linger notice, +OK bye, goodbye notice
    tail = [(f.content_type, f.get("Content-Disposition")) for f in conn.frames[-3:]]
    assert tail == [("text/disconnect-notice", "linger"), ("command/reply", None), ("text/disconnect-notice", "disconnect")]
    assert conn.frames[-1].body == wire.GOODBYE
    linger = conn.frames[-3]
    assert [k for k, _ in linger.headers] == [
        "Content-Type", "Controlled-Session-UUID", "Content-Disposition", "Channel-Name", "Linger-Time", "Content-Length"]
    hc = sim_events[-1]
    assert hc.name == "CHANNEL_HANGUP_COMPLETE" and hc.get("variable_hangup_cause") == "CALL_REJECTED"
    assert "variable_billsec" in hc.names() and "variable_billmsec" in hc.names()


def test_event_frames_are_sometimes_split_between_header_and_body(run_call):
    """FreeSWITCH sends an event's header block and body with two send()s (fs-1.11)."""

    def script(conn: Conn) -> None:
        standard_setup(conn)
        for _ in range(20):
            conn.sendmsg("set", "x=1")
            conn.reply()
            conn.until_event("CHANNEL_EXECUTE_COMPLETE")
        conn.sendmsg("hangup")
        finish(conn)

    _, conn = run_call(script, split_events=1.0)
    head = re.compile(rb"Content-Length: \d+\nContent-Type: text/event-plain\n\n$")
    assert any(head.search(chunk) for chunk in conn.chunks)


# --------------------------------------------------------------------------- connect and first command


def test_connect_reply_and_command_replies(run_call):
    got = {}

    def script(conn: Conn) -> None:
        data = standard_setup(conn, linger="linger 5")
        got["data"] = data
        conn.command("myevents")
        got["again"] = conn.reply().get("Reply-Text")
        conn.command("nolinger")
        got["nolinger"] = conn.reply().get("Reply-Text")
        conn.command("api status")
        got["api"] = conn.reply()
        conn.command("api no_such_thing")
        got["api_bad"] = conn.reply().body
        conn.command("bogus")
        got["bogus"] = conn.reply().get("Reply-Text")
        conn.command("nixevent CHANNEL_EXECUTE")
        got["nix"] = conn.reply().get("Reply-Text")
        conn.command("resume")
        got["resume"] = conn.reply().get("Reply-Text")
        conn.sendmsg("hangup", "USER_BUSY")
        conn.drain()

    result, conn = run_call(script, Caller(name="Ann\r\nX: 1"))
    data = got["data"]
    assert data.get("Content-Type") == "command/reply" and data.get("Reply-Text") == "+OK\n"
    assert [k for k, _ in data.headers][-4:] == ["Content-Type", "Reply-Text", "Socket-Mode", "Control"]
    assert data.get("Socket-Mode") == "async" and data.get("Control") == "full"
    assert data.get("Caller-Caller-ID-Name") == "Ann\r\nX: 1"  # encoded on the wire, decoded here
    assert "X" not in dict(data.headers)
    assert got["again"] == "-ERR aready enabled."
    assert got["nolinger"] == "+OK will not linger"
    assert got["api"].content_type == "api/response" and b"is ready" in got["api"].body
    assert got["api_bad"].startswith(b"-ERR no_such_thing Command not found!")
    assert got["bogus"] == "-ERR command not found"
    assert got["nix"] == "+OK events nixed"
    assert got["resume"] == "+OK"
    assert result.outcome == "hungup" and result.hangup_cause == "USER_BUSY"
    assert "CHANNEL_EXECUTE" not in conn.event_names()
    assert any("unknown command" in v for v in result.violations)


def test_command_before_connect_is_processed_but_not_answered(run_call):
    got = {}

    def script(conn: Conn) -> None:
        conn.command("myevents")  # processed, never answered (capture 12)
        conn.sendmsg("answer")  # answered, but runs only once connected
        got["first"] = conn.reply()
        conn.command("connect")
        got["data"] = conn.until(lambda f: f.get("Event-Name") == "CHANNEL_DATA")
        conn.until_event("CHANNEL_ANSWER")
        conn.sendmsg("hangup")
        conn.drain()

    result, _ = run_call(script)
    assert got["first"].get("Reply-Text") == "+OK"
    assert sum("command before connect" in v for v in result.violations) == 2
    assert result.answered and result.outcome == "hungup"


def test_no_connect_at_all_strands_the_channel(run_call):
    def script(conn: Conn) -> None:
        conn.drain(timeout=10)  # sends nothing

    result, conn = run_call(script, min_real_timeout=0.3)
    assert result.outcome == "stranded"
    assert any("no command within" in v for v in result.violations)
    assert conn.frames[-1].get("Content-Disposition") == "disconnect"


# --------------------------------------------------------------------------- closing: stranded, fallback, routed


def test_close_without_instruction_is_stranded(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.close()

    result, _ = run_call(script)
    assert result.outcome == "stranded"
    assert any("without any instruction" in v for v in result.violations)


def test_exit_without_instruction_is_stranded_too(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.command("exit")
        assert conn.reply().get("Reply-Text") == "+OK bye"
        conn.drain()

    result, _ = run_call(script)
    assert result.outcome == "stranded"


def test_resume_then_close_falls_back(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.command("resume")
        conn.reply()
        conn.close()

    result, _ = run_call(script)
    assert result.outcome == "fallback" and result.violations == []
    assert result.variables["socket_resume"] == "true"


def test_close_after_an_application_falls_back(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("answer")
        conn.until_event("CHANNEL_EXECUTE_COMPLETE")
        conn.close()

    result, _ = run_call(script)
    assert result.outcome == "fallback" and result.answered


def test_transfer_is_routed_and_events_keep_coming(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("answer")
        conn.sendmsg("export", "fsguard_customer_id=42")
        conn.sendmsg("transfer", "default XML queues")
        finish(conn)

    result, conn = run_call(script, Caller(talk_time=3.0))
    assert result.outcome == "routed" and result.route == "transfer default XML queues"
    assert result.exported == {"fsguard_customer_id": "42"}
    assert result.variables["export_vars"] == "fsguard_customer_id"
    assert 2.9 <= result.billsec <= 3.5
    names = conn.event_names()
    i = names.index("CHANNEL_UNPARK")
    assert names[i - 2 : i + 4] == [
        "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE",
        "CHANNEL_STATE", "CHANNEL_STATE"]
    assert names[-1] == "CHANNEL_HANGUP_COMPLETE" and result.hangup_by == "caller"


def test_transfer_then_close_keeps_the_route(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("transfer", "default XML queues")
        conn.command("exit")  # pipelined: the queued transfer still runs
        conn.drain()

    result, _ = run_call(script, Caller(talk_time=0.5))
    assert result.outcome == "routed" and result.violations == []
    assert result.hangup_cause == "NORMAL_CLEARING"


def test_callcenter_and_bridge_routes(target_factory, run_call):
    def cc(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("callcenter", "support@default")
        conn.until_event("CHANNEL_HANGUP_COMPLETE")
        conn.close()

    r, _ = run_call(cc, Caller(talk_time=2.0))
    assert (r.outcome, r.route, r.answered) == ("routed", "callcenter support@default", True)
    assert 1.9 <= r.billsec <= 2.5

    def bridge(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("bridge", "sofia/gateway/carrier/15550001111")
        conn.until_event("CHANNEL_HANGUP_COMPLETE")
        conn.close()

    t2 = target_factory(bridge)
    busy = sim_for(t2).call(Caller(answered_by_far_end=False, far_end_cause="USER_BUSY"))
    t2.check()
    assert busy.route == "bridge sofia/gateway/carrier/15550001111"
    assert busy.hangup_cause == "USER_BUSY" and not busy.answered and busy.billsec == 0
    assert busy.variables["DIALSTATUS"] == "BUSY"
    ok = sim_for(t2).call(Caller(talk_time=4.0))
    t2.check()
    assert ok.answered and ok.hangup_by == "far_end" and 3.9 <= ok.billsec <= 4.6


# --------------------------------------------------------------------------- billing, early media, digits


def test_billsec_counts_from_answer_not_from_early_media(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("pre_answer")
        conn.sendmsg("say", "en number iterated 42")
        conn.sendmsg("sleep", "2000")
        conn.sendmsg("answer")
        conn.sendmsg("sleep", "1500")
        conn.sendmsg("hangup", "NORMAL_CLEARING")
        finish(conn)

    result, _ = run_call(script)
    assert result.early_media and result.answered
    assert result.heard == ["say:en number iterated 42"]
    assert 1.5 <= result.billsec <= 1.7
    assert result.variables["billsec"] == "1"
    assert int(result.variables["progress_mediamsec"]) < int(result.variables["answermsec"])


def test_unanswered_rejection_is_unbilled_and_playback_pre_answers(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("playback", "ivr/ivr-call_rejected.wav")
        conn.sendmsg("hangup", "CALL_REJECTED")
        finish(conn)

    result, conn = run_call(script)
    names = conn.event_names()
    assert names.index("CHANNEL_PROGRESS_MEDIA") < names.index("CHANNEL_HANGUP")  # implicit pre_answer
    assert result.early_media and not result.answered and result.billsec == 0
    assert result.heard == ["ivr/ivr-call_rejected.wav"]


@pytest.mark.parametrize(
    ("digits", "expected_result", "expected_code"),
    [("auto", "success", "37"), ("99", "failure", None), (None, "timeout", None)],
)
def test_caller_keys_the_code_it_heard(run_call, digits, expected_result, expected_code):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("pre_answer")
        conn.sendmsg("playback", "file_string://digits/3.wav!digits/7.wav")
        conn.sendmsg("answer")
        conn.sendmsg("play_and_get_digits", "2 2 1 3000 # ivr/enter_code.wav silence_stream://250 code ^37$ 1000")
        conn.until_event("CHANNEL_EXECUTE_COMPLETE")  # pre_answer
        conn.until_event("CHANNEL_EXECUTE_COMPLETE")  # playback
        conn.until_event("CHANNEL_EXECUTE_COMPLETE")  # answer
        done = conn.until_event("CHANNEL_EXECUTE_COMPLETE")
        assert done.get("Application") == "play_and_get_digits"
        conn.sendmsg("hangup")
        finish(conn)

    result, conn = run_call(script, Caller(digits=digits))
    assert result.variables["read_result"] == expected_result
    assert result.variables.get("code") == expected_code
    assert result.heard[:3] == ["digits/3.wav", "digits/7.wav", "ivr/enter_code.wav"]
    dtmf = [f.event() for f in conn.frames if f.content_type == "text/event-plain" and f.event().name == "DTMF"]
    assert "".join(str(e.get("DTMF-Digit")) for e in dtmf) == {"auto": "37", "99": "99", None: ""}[digits]


# --------------------------------------------------------------------------- hang-ups and linger


def test_unknown_application_kills_the_channel(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("no_such_app_xyz", "1", uuid="bad-1")
        assert conn.reply().get("Reply-Text") == "+OK"
        finish(conn)

    result, conn = run_call(script)
    assert result.hangup_cause == "DESTINATION_OUT_OF_ORDER"
    assert any("unknown application" in v for v in result.violations)
    assert not any(f.content_type == "text/event-plain" and f.event().get("Application-UUID") == "bad-1" for f in conn.frames)
    kinds = [f.content_type if f.content_type != "text/event-plain" else f.event().name for f in conn.frames]
    # badapp.txt: the linger notice comes first, then the hang-up events
    assert kinds.index("text/disconnect-notice") < kinds.index("CHANNEL_HANGUP")


def test_caller_hangup_with_linger_completes_the_running_app(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("answer")
        conn.sendmsg("play_and_get_digits", "2 2 1 8000 # silence_stream://250 silence_stream://250 code \\d+", uuid="pagd")
        conn.until(lambda f: f.get("Content-Disposition") == "linger")
        conn.until_event("CHANNEL_HANGUP_COMPLETE")
        conn.sendmsg("playback", "tone_stream://%(100,0,350)")  # on the dead channel: still +OK
        assert conn.reply().get("Reply-Text") == "+OK"
        conn.command("exit")
        conn.drain()

    result, conn = run_call(script, Caller(hangup_after=1.0))
    assert result.outcome == "caller_hangup" and result.hangup_by == "caller"
    assert result.late_commands and result.violations == []
    names = [f.content_type if f.content_type != "text/event-plain" else f.event().name for f in conn.frames]
    i = names.index("CHANNEL_HANGUP")
    assert names[i : i + 3] == ["CHANNEL_HANGUP", "text/disconnect-notice", "CHANNEL_EXECUTE_COMPLETE"]
    complete = [f.event() for f in conn.frames
                if f.content_type == "text/event-plain" and f.event().get("Application-UUID") == "pagd"][-1]
    assert complete.get("variable_read_result") == "failure"


def test_linger_race_sends_the_notice_before_the_hangup_events(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("answer")
        conn.until_event("CHANNEL_EXECUTE_COMPLETE")
        conn.until(lambda f: f.get("Content-Disposition") == "linger")
        finish(conn)

    _, conn = run_call(script, Caller(hangup_after=0.5), linger_race=True)
    names = [f.content_type if f.content_type != "text/event-plain" else f.event().name for f in conn.frames]
    assert names.index("text/disconnect-notice") < names.index("CHANNEL_HANGUP")


def test_without_linger_a_caller_hangup_closes_at_once(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn, linger=None)
        conn.sendmsg("answer")
        conn.sendmsg("play_and_get_digits", "2 2 1 15000 # silence_stream://250 silence_stream://250 code \\d+")
        conn.drain()

    result, conn = run_call(script, Caller(hangup_after=1.0))
    names = conn.event_names()
    assert names[-1] == "CHANNEL_HANGUP"  # no completion, no CHANNEL_HANGUP_COMPLETE (03c)
    assert conn.frames[-1].get("Content-Disposition") == "disconnect"
    assert result.outcome == "caller_hangup"


def test_linger_n_closes_by_itself(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn, linger="linger 3")
        conn.command("sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING")
        conn.drain()  # never sends exit: FreeSWITCH closes after 3 channel seconds

    result, conn = run_call(script)
    frames = conn.frames
    assert frames[-2].get("Content-Disposition") == "linger" and frames[-2].get("Linger-Time") == "3"
    assert frames[-1].get("Content-Disposition") == "disconnect"
    assert result.outcome == "hungup" and result.violations == []


def test_exit_and_commands_after_exit(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("hangup")
        conn.until_event("CHANNEL_HANGUP_COMPLETE")
        conn.send("exit\n\nsendmsg\ncall-command: execute\nexecute-app-name: log\n\n")
        conn.drain()

    result, conn = run_call(script)
    assert any("command after exit" in v for v in result.violations)
    assert conn.frames[-1].body == wire.GOODBYE


def test_raw_channel_name_injects_into_the_linger_notice(run_call):
    """fs-1.11/14d: a From user of 1555%0D%0AContent-Length%3A%2030 decoded by mod_sofia."""
    got = {}

    def script(conn: Conn) -> None:
        standard_setup(conn, linger="linger 2")
        conn.command("getvar caller_id_number")
        got["getvar"] = conn.read_raw_until(b"\n\n")
        conn.sendmsg("hangup")
        conn.until(lambda f: f.get("Content-Disposition") == "linger")
        conn.command("exit")
        conn.drain()

    result, conn = run_call(script, Caller(ani="1555\r\nContent-Length: 30"))
    # the raw reply injects a header a Content-Length-trusting reader would obey
    assert got["getvar"] == b"Content-Type: command/reply\nReply-Text: 1555\r\nContent-Length: 30\n\n"
    assert any("getvar of caller-controlled" in v for v in result.violations)
    raw = bytes(conn.raw)
    assert b"Channel-Name: sofia/lab/1555\r\nContent-Length: 30@192.0.2.10\nLinger-Time: 2\nContent-Length: 0\n\n" in raw


def test_json_events(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn, events="myevents json")
        conn.sendmsg("answer")
        ev = conn.until_event("CHANNEL_EXECUTE_COMPLETE")
        assert ev.get("variable_DP_MATCH") == ["5000", "5000"]
        conn.sendmsg("hangup")
        finish(conn)

    _, conn = run_call(script)
    frames = [f for f in conn.frames if f.content_type == "text/event-json"]
    assert frames and all(json.loads(f.body) for f in frames)
    hc = frames[-1].event()
    assert [k for k, _ in hc.headers].count("Hangup-Cause") == 2  # duplicates kept, like cJSON


def test_app_arg_with_newline_is_a_violation(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("set", "name=Eve\nexecute-app-name: hangup")
        conn.reply()
        conn.sendmsg("hangup")
        finish(conn)

    result, _ = run_call(script)
    assert any("repeats 'execute-app-name'" in v for v in result.violations)


# --------------------------------------------------------------------------- targets, refusal, load


def test_refused_then_next_target(target_factory):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead = free.getsockname()
    free.close()

    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("hangup")
        finish(conn)

    target = target_factory(script)
    assert FakeFreeSWITCH([dead], time_scale=0.01).call().outcome == "refused"
    result = FakeFreeSWITCH([dead, target.address], time_scale=0.01).call()
    assert result.outcome == "hungup" and result.target == target.address


def test_many_concurrent_calls(target_factory):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.command("resume")
        conn.reply()
        conn.sendmsg("answer")
        conn.sendmsg("transfer", "default XML queues")
        finish(conn)

    target = target_factory(script)
    sim = sim_for(target, split_events=0.3)
    results = sim.run_many([Caller(talk_time=0.5) for _ in range(200)], concurrency=100)
    target.check()
    assert len(results) == 200 and len({r.uuid for r in results}) == 200
    assert all(r.outcome == "routed" and not r.violations for r in results)
    assert all(r.decision_latency is not None for r in results)


def test_a_call_always_ends(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)  # then does nothing at all
        conn.drain(timeout=10)

    result, _ = run_call(script, max_call_time=10, min_real_timeout=0.3)
    assert result.outcome == "protocol_error"
    assert any("did not end" in v for v in result.violations)


def test_spawn_returns_a_result(target_factory):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("hangup")
        finish(conn)

    target = target_factory(script)
    g = sim_for(target).spawn(Caller())
    assert isinstance(g.get(timeout=10), SimResult)


def test_uuid_break_stops_the_prompt_and_the_next_app_runs(run_call):
    def script(conn: Conn) -> None:
        standard_setup(conn)
        conn.sendmsg("playback", "ivr/long_prompt.wav", uuid="long")
        conn.until_event("CHANNEL_EXECUTE")
        uuid = conn.frames[0].get("Unique-ID")
        conn.command(f"api uuid_break {uuid} all")
        assert conn.reply().body == b"+OK"
        done = conn.until_event("CHANNEL_EXECUTE_COMPLETE")
        assert done.get("Application-UUID") == "long" and done.get("Application-Response") == "FILE PLAYED"
        conn.sendmsg("playback", "ivr/other_prompt.wav")
        conn.sendmsg("break")  # run nested, from the playback's loop
        conn.sendmsg("transfer", "default XML queues")
        finish(conn)

    result, _ = run_call(script, Caller(talk_time=0.5, playback_durations={
        "ivr/long_prompt.wav": 500.0, "ivr/other_prompt.wav": 500.0}))
    assert result.outcome == "routed" and result.violations == []
    assert [a for a, _ in result.apps] == ["playback", "playback", "break", "transfer"]
    assert result.billsec < 5


def test_channel_data_raw_is_sent_verbatim_and_adopted(run_call):
    captured = transcripts.connect_reply("full.txt")
    got = {}

    def script(conn: Conn) -> None:
        conn.command("connect")
        got["raw"] = conn.read_raw_until(b"Control: full\n\n")
        conn.command("myevents")
        conn.reply()
        conn.sendmsg("hangup")
        conn.drain()

    result, conn = run_call(script, Caller(channel_data_raw=captured))
    assert got["raw"] == captured
    assert result.uuid == "619b3e65-3f47-4c89-94e8-a6ad76c0a671"
    hangup = next(f.event() for f in conn.frames
                  if f.content_type == "text/event-plain" and f.event().name == "CHANNEL_HANGUP")
    assert hangup.get("Unique-ID") == result.uuid and hangup.get("Channel-Name") == "loopback/5000-b"


def test_static_full_mode_replies_after_the_application(run_call):
    got = {}

    def script(conn: Conn) -> None:
        data = standard_setup(conn)
        got["mode"] = data.get("Socket-Mode")
        conn.sendmsg("playback", "ivr/prompt.wav")
        conn.reply()
        got["before_reply"] = conn.event_names()
        conn.close()

    result, _ = run_call(script, mode="full")
    assert got["mode"] == "static"
    assert got["before_reply"][-1] == "CHANNEL_EXECUTE_COMPLETE"  # sendmsg returned after the app
    assert result.outcome == "fallback"  # static mode: closing continues the dialplan
