"""mod_event_socket's side of the connection: the target's commands in, replies, events and notices out.

For every simulated channel the simulator opens a TCP connection to the target, as the socket
application does, and answers as mod_event_socket.c does:

* the first command must be ``connect``; its reply is the channel's CHANNEL_DATA serialised
  like an event (:mod:`.variables`).  A first command other than ``connect`` is processed but
  never answered (capture 12); ``read_packet(25)``: no command within 25 s closes the socket;
* ``sendmsg`` execute is answered ``+OK`` at once (async mode) and the application queued
  (:mod:`.socket_app`); in static mode (``full``) the reply waits for the application;
* after ``myevents`` (or ``event``) every channel event the target subscribed to is sent as
  ``Content-Length`` + ``Content-Type: text/event-plain`` (or ``text/event-json``) and the body,
  sometimes in two writes as FreeSWITCH does (header block, then body);
* ``getvar`` answers the RAW value (a violation for a caller-controlled variable);
* hang-up with ``linger``: the hang-up events, then the ``Content-Disposition: linger`` notice
  (where among them is a race); the socket stays open until ``exit`` (or ``linger N``
  expires).  Without ``linger`` a caller hang-up gives CHANNEL_HANGUP, the disconnect notice
  and EOF (capture 03c).
"""

from __future__ import annotations

import re
import socket as _stdsocket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import uuid4

import gevent
from gevent import socket as gsocket

from fsguard_testing import wire
from fsguard_testing.fakeswitch.applications import ROUTING_APPS, AppRun
from fsguard_testing.fakeswitch.clock import Timer
from fsguard_testing.fakeswitch.core import TICK, atoi, cause_name, switch_true
from fsguard_testing.fakeswitch.variables import is_caller_controlled

#: FreeSWITCH waits this long (seconds) for the first command before giving up (read_packet(25)).
FIRST_PACKET_TIMEOUT = 25.0
#: A command block larger than this with no terminating blank line is treated as garbage.
MAX_COMMAND_BYTES = 256 * 1024

#: Events enabled by ``myevents`` (mod_event_socket.c parse_command).
MYEVENTS = frozenset(
    {
        "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA",
        "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
        "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING",
        "CHANNEL_PARK", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE",
        "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK", "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
    }
)
#: The blank line that ends a command block (CRs before its second LF are tolerated).
_CMD_END = re.compile(rb"\n\r*\n")


@dataclass
class Command:
    """One command frame read the way read_packet() does."""

    line: str  # first line (the command)
    headers: list[tuple[str, str]]
    body: bytes
    raw: str
    malformed_lines: int = 0
    has_cr: bool = False

    def header(self, name: str) -> str | None:
        """The first header of that name (any case), as mod_event_socket reads one."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def count(self, name: str) -> int:
        """How often the header appears: more than once means CR/LF got into a value."""
        lname = name.lower()
        return sum(1 for k, _ in self.headers if k.lower() == lname)


def parse_command(block: bytes, body: bytes) -> Command:
    """A command block (up to its blank line) and its body as a :class:`Command`; bad lines are counted."""
    text = block.decode("utf-8", "surrogateescape")
    lines = re.split(r"[\r\n]+", text)
    headers: list[tuple[str, str]] = []
    malformed = 0
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            malformed += 1
            continue
        headers.append((name, value.lstrip(" ")))
    return Command(lines[0], headers, body, text, malformed, "\r" in text.rstrip("\r\n"))


class EventSocket:
    """The target's connection (a part of :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def __init__(self) -> None:
        super().__init__()
        self.sock: gsocket.socket | None = None
        self._rx = bytearray()
        self._out: list[bytes] = []
        self._splits: list[int] = []
        self._out_len = 0
        self.got_first_packet = False
        self.first_packet_timer: Timer | None = None
        self.connected = False
        self.exited = False
        self.subscribed: set[str] = set()
        self.all_events = False
        self.event_format = "plain"
        self.linger: int | None = None
        self.socket_gone = False
        self.read_paused = False

    # ------------------------------------------------------------------ the connection

    def _connect(self) -> bool:
        for host, port in self.sim.targets:
            try:
                sock = gsocket.create_connection((host, port), timeout=self.sim.connect_timeout)
            except OSError:
                continue
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
            self.sock = sock
            self.result.target = (host, port)
            self.t0 = time.monotonic()
            self.epoch0 = time.time()
            self.result.connected_at = self.t0
            return True
        return False

    def _loop(self) -> None:
        while not self.finished:
            self._run_due_timers()
            self._flush()
            if self.finished:
                break
            wait = (self._timers[0].due - time.monotonic()) if self._timers else None
            if self.sock is None or self.read_paused:
                if wait is None:
                    self._end()
                    break
                gevent.sleep(max(0.0, wait))
                continue
            self.sock.settimeout(max(wait, 0.0001) if wait is not None else self.sim.target_wait(60.0))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, _stdsocket.timeout):
                continue
            except OSError:
                data = b""
            if not data:
                self._on_target_eof()
            else:
                self._sync_clock()
                self._rx += data
                self._process_rx()
            self._flush()

    # ------------------------------------------------------------------ output

    def _send(self, data: bytes, split_at: int | None = None) -> None:
        if self.sock is None:
            return
        if split_at is not None:
            self._splits.append(self._out_len + split_at)
        self._out.append(data)
        self._out_len += len(data)

    def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        splits = self._splits
        self._out, self._splits, self._out_len = [], [], 0
        if self.sock is None:
            return
        try:
            self.sock.settimeout(self.sim.target_wait(30.0))
            if splits and self.rng.random() < self.sim.split_events:
                # FreeSWITCH writes an event's header block and body with two send()s;
                # give the target a chance to see them in two reads.
                cut = self.rng.choice(splits)
                self.sock.sendall(data[:cut])
                # sleep(0) would resume us before the hub polls the target's socket; a
                # short timer lets a target in this process read the first part alone.
                gevent.sleep(0.0002)
                if self.sock is None:
                    return
                self.sock.sendall(data[cut:])
            else:
                self.sock.sendall(data)
            self.result.bytes_sent += len(data)
        except (TimeoutError, _stdsocket.timeout):
            self.result.violations.append("target stopped reading (send timed out)")
            self._on_target_eof()
        except OSError:
            self._on_target_eof()

    def _reply(self, text: str | bytes) -> None:
        self._send(wire.command_reply(text))

    def _wants(self, name: str) -> bool:
        return self.sock is not None and (self.all_events or name in self.subscribed)

    def emit(
        self,
        name: str,
        *,
        pre: Iterable[tuple[str, str]] = (),
        post: Iterable[tuple[str, str]] = (),
        with_vars: bool = True,
        body: str | None = None,
    ) -> None:
        """Fire a channel event; it goes on the wire if the target subscribed to it."""
        if not self._wants(name):
            return
        if self.event_format == "plain" and body is None:
            payload = self._plain_event(name, pre, post, with_vars)
            head = wire.frame_for_payload(payload, "plain")
        else:
            headers = self.build_event(name, pre=pre, post=post, with_vars=with_vars)
            head, payload = wire.event_frame_parts(headers, self.event_format, body)
        self._send(head + payload, split_at=len(head))
        self.result.events_sent += 1
        self.result.event_names.append(name)

    # ------------------------------------------------------------------ reading commands

    def _process_rx(self) -> None:
        while self._rx and not self.finished and self.sock is not None and not self.read_paused:
            # read_packet() drops CR/LF before a command ("bah").
            i = 0
            while i < len(self._rx) and self._rx[i] in (0x0D, 0x0A):
                i += 1
            if i:
                del self._rx[:i]
                continue
            m = _CMD_END.search(self._rx)
            if m is None:
                if len(self._rx) > MAX_COMMAND_BYTES:
                    self._garbage(f"no command terminator in {len(self._rx)} bytes")
                return
            block = bytes(self._rx[: m.start()])
            end = m.end()
            clen = 0
            for line in re.split(rb"[\r\n]+", block)[1:]:
                name, sep, value = line.partition(b":")
                if sep and name.strip().lower() == b"content-length":
                    digits = re.match(rb"\s*(\d+)", value)
                    clen = int(digits.group(1)) if digits else 0
            if clen > MAX_COMMAND_BYTES * 40:
                self._garbage(f"absurd Content-Length {clen}")
                return
            if len(self._rx) < end + clen:
                return
            body = bytes(self._rx[end : end + clen])
            del self._rx[: end + clen]
            self._handle(parse_command(block, body))

    def _garbage(self, why: str) -> None:
        self.result.violations.append(f"garbage from target: {why}")
        self._rx.clear()
        if not self.hung_up:
            self._hangup("PROTOCOL_ERROR", by="freeswitch")
        self._fs_close()

    # ------------------------------------------------------------------ command dispatch

    def _handle(self, cmd: Command) -> None:
        r = self.result
        r.commands.append(cmd.raw)
        line = cmd.line
        low = line.lower()
        if self.exited:
            r.violations.append(f"command after exit: {line!r}")
            return
        if self.hung_up:
            r.late_commands.append(cmd.raw)
        if not self.connected and not low.startswith("connect"):
            r.violations.append(f"command before connect: {line!r}")
        if not self.got_first_packet:
            self.got_first_packet = True
            if self.first_packet_timer:
                self.first_packet_timer.cancelled = True
            if not low.startswith("connect"):
                # listener_run() parses the first packet but never sends its reply (capture 12).
                self._dispatch(cmd, low, reply=False)
                return
        self._dispatch(cmd, low, reply=True)

    def _dispatch(self, cmd: Command, low: str, *, reply: bool) -> None:
        send = self._reply if reply else (lambda text: None)
        line = cmd.line
        if low.startswith("exit") or low.startswith("..."):
            send("+OK bye")
            self.exited = True
            self._fs_close()
            return
        if low.startswith("filter "):
            parts = line[7:].strip().split(" ", 1)
            send(f"+OK filter added. [{parts[0]}]=[{parts[1] if len(parts) > 1 else ''}]")
            return
        if low.startswith("resume"):
            self.resume = True
            self._setvar("socket_resume", "true")
            send("+OK")
            return
        if low.startswith("connect"):
            self._on_connect()
            return
        if low.startswith("getvar"):
            name = line.split(" ", 1)[1] if " " in line else ""
            value = self.getvar(name) if name else ""
            if name and is_caller_controlled(name, value):
                self.result.violations.append(f"getvar of caller-controlled variable {name!r} (reply is raw)")
            send(value[:511])
            return
        if low.startswith("myevents"):
            if self.subscribed >= MYEVENTS:
                send("-ERR aready enabled.")
                return
            self.subscribed |= MYEVENTS
            if "json" in line or "JSON" in line:
                self.event_format = "json"
            elif "xml" in line or "XML" in line:
                self.result.violations.append("xml event format is not simulated; sending plain")
            send("+OK Events Enabled")
            return
        if low.startswith("divert_events"):
            on = line[13:].strip().lower() == "on"
            send("+OK events diverted" if on else "+OK events not diverted")
            return
        if low.startswith("sendmsg"):
            self._sendmsg(cmd, send)
            return
        if low.startswith("sendevent"):
            send(f"+OK {uuid4()}")
            return
        if low.startswith("api "):
            if reply:
                self._send(wire.api_response(self._api(line[4:].strip())))
            else:
                self._api(line[4:].strip())
            return
        if low.startswith("bgapi "):
            job = cmd.header("Job-UUID") or str(uuid4())
            result = self._api(line[6:].strip())
            if reply:
                self._send(f"Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n".encode())
            if self._wants("BACKGROUND_JOB"):
                cmd_name, _, cmd_arg = line[6:].strip().partition(" ")
                post = [("Job-UUID", job), ("Job-Command", cmd_name)] + ([("Job-Command-Arg", cmd_arg)] if cmd_arg else [])
                headers = self._base_headers("BACKGROUND_JOB") + post
                head, payload = wire.event_frame_parts(headers, self.event_format, result)
                self._send(head + payload, split_at=len(head))
                self.result.events_sent += 1
                self.result.event_names.append("BACKGROUND_JOB")
            return
        if low.startswith("log"):
            send("+OK log level  [7]")
            return
        if low.startswith("linger"):
            rest = line[6:]
            if rest.startswith(" ") and rest[1:]:
                n = atoi(rest[1:])
                self.linger = n
                send(f"+OK will linger {n} seconds")
            else:
                self.linger = -1
                send("+OK will linger")
            self.result.linger = self.linger
            return
        if low.startswith("nolinger"):
            self.linger = None
            self.result.linger = None
            send("+OK will not linger")
            return
        if low.startswith("nolog"):
            send("-ERR not loging")
            return
        if low.startswith("event"):
            self._event_cmd(line, send)
            return
        if low.startswith("nixevent"):
            names = line.split()[1:]
            if not names:
                send("-ERR no keywords supplied")
                return
            for n in names:
                if n.upper() == "ALL":
                    self.subscribed.clear()
                    self.all_events = False
                else:
                    self.subscribed.discard(n.upper())
            send("+OK events nixed")
            return
        if low.startswith("noevents"):
            if self.subscribed or self.all_events:
                self.subscribed.clear()
                self.all_events = False
                send("+OK no longer listening for events")
            else:
                send("-ERR not listening for events")
            return
        self.result.violations.append(f"unknown command {line!r}")
        send("-ERR command not found")

    def _event_cmd(self, line: str, send: Callable[[str], None]) -> None:
        words = line.split()[1:]
        if words and words[0].lower() in ("plain", "json", "xml"):
            fmt = words.pop(0).lower()
            self.event_format = "json" if fmt == "json" else "plain"
        keys = 0
        custom = False
        for w in words:
            if custom:
                continue
            if w.upper() == "ALL":
                self.all_events = True
                keys += 1
            elif w.upper() == "CUSTOM":
                custom = True
                keys += 1
            elif re.fullmatch(r"[A-Z_]+", w.upper()):
                self.subscribed.add(w.upper())
                keys += 1
        if not keys:
            send("-ERR no keywords supplied")
            return
        send(f"+OK event listener enabled {self.event_format}")

    def _on_connect(self) -> None:
        first = not self.connected
        self.connected = True
        self._send(self.connect_reply())
        if first:
            self.result.connect_reply_at = time.monotonic()
            if self.sim.mode == "async":
                self._after(TICK, self._park)
            else:
                self.parked = True

    def _first_packet_timeout(self) -> None:
        """read_packet(25) gave up: FreeSWITCH closes; the channel stays parked, ringing."""
        if self.got_first_packet or self.finished:
            return
        self.result.violations.append(f"no command within {FIRST_PACKET_TIMEOUT:g} s of connecting")
        self._fs_close()

    # ------------------------------------------------------------------ sendmsg

    def _sendmsg(self, cmd: Command, send: Callable[[str], None]) -> None:
        r = self.result
        target_uuid = cmd.line[7:].strip() or (cmd.header("session-id") or "")
        if target_uuid and target_uuid != self.uuid:
            send(f"-ERR invalid session id [{target_uuid}]")
            return
        if cmd.malformed_lines:
            r.violations.append("sendmsg has a line without ':' (CR/LF inside a value?)")
        if cmd.has_cr:
            r.violations.append("sendmsg contains a bare CR (CR/LF inside a value?)")
        for name in ("call-command", "execute-app-name", "execute-app-arg", "hangup-cause", "Event-UUID"):
            if cmd.count(name) > 1:
                r.violations.append(f"sendmsg repeats {name!r} (CR/LF inside a value?)")
        call_command = (cmd.header("call-command") or "").strip().lower()
        if call_command == "execute":
            self._sendmsg_execute(cmd, send)
            return
        if call_command == "hangup":
            cause_text = cmd.header("hangup-cause") or "NORMAL_CLEARING"
            cause = cause_name(cause_text)
            if cause is None:
                r.violations.append(f"unknown hangup cause {cause_text!r}")
                cause = "NORMAL_CLEARING"
            send("+OK")
            self._decided()
            if not self.hung_up:
                self._hangup(cause, by="target")
            return
        if call_command not in ("unicast", "nomedia", "xferext", "sleep"):
            r.violations.append(f"sendmsg with unknown call-command {call_command!r}")
        send("+OK")

    def _sendmsg_execute(self, cmd: Command, send: Callable[[str], None]) -> None:
        r = self.result
        app = (cmd.header("execute-app-name") or "").strip()
        arg = cmd.header("execute-app-arg")
        if not arg and cmd.body and (cmd.header("content-type") or "").strip().lower() == "text/plain":
            # switch_ivr_parse_event: no execute-app-arg, a text/plain body is the argument
            arg = cmd.body.decode("utf-8", "surrogateescape")
        arg = arg or ""
        if "\r" in arg or "\n" in arg:
            r.violations.append(f"application argument of {app!r} contains CR/LF")
        loops = atoi(cmd.header("loops") or "1") or 1
        event_uuid = cmd.header("Event-UUID") or str(uuid4())
        if app.lower() in ROUTING_APPS or app.lower() in ("hangup", "respond"):
            self._decided()
        if not app:
            r.violations.append("sendmsg execute without execute-app-name")
            send("+OK")
            return
        self._enqueue(AppRun(app, arg, event_uuid, loops, event_lock=switch_true(cmd.header("event-lock") or "")), send)

    def _decided(self) -> None:
        if self.result.decided_at is None:
            self.result.decided_at = time.monotonic()

    # ------------------------------------------------------------------ linger

    def _linger_notice_place(self, by: str) -> str:
        """Where the linger notice goes among the hang-up events: a race inside FreeSWITCH."""
        place = self.sim.linger_notice
        if place == "auto":
            if self.sim.linger_race or by == "freeswitch":
                place = "before_hangup"  # badapp.txt, fs-1.11/03d
            else:
                place = "after_hangup" if by in ("caller", "far_end") else "last"  # caller_hangup.txt
        return place

    def _linger_or_close(self, lingering: bool, notice_sent: bool) -> None:
        """After the hang-up events: keep a lingering socket open (until ``exit`` or the linger time), else close."""
        if self.sock is None:
            self._end()
            return
        if lingering:
            if not notice_sent:
                self._linger_notice()
            if self.linger is not None and self.linger >= 0:
                self._after(self.linger, self._linger_timeout)
            else:
                wait = self.sim.linger_timeout
                if wait is not None:
                    self._after(wait, self._linger_timeout)
                else:
                    self._after_real(self.sim.target_wait(30.0), self._linger_forever)
        else:
            self._fs_close()

    def _linger_notice(self) -> None:
        linger = self.linger if self.linger is not None else -1
        self._send(wire.linger_notice(self.uuid, self.channel_name, linger))

    def _linger_timeout(self) -> None:
        if not self.finished and self.sock is not None:
            self._fs_close()

    def _linger_forever(self) -> None:
        if self.finished or self.sock is None:
            return
        self.result.violations.append("target held the lingering socket open after hang-up and never sent exit")
        self._fs_close()

    # ------------------------------------------------------------------ closing

    def _fs_close(self, final: bool = False) -> None:
        """FreeSWITCH ends the session's socket: goodbye notice, FIN, then gone."""
        if self.sock is None:
            return
        self._send(wire.disconnect_notice(self.uuid))
        self._flush()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(_stdsocket.SHUT_WR)
            except OSError:
                pass
            if self.exited:
                self._drain_after_exit(sock)
        self._close_socket()
        if not final:
            self._after_socket_gone()

    def _drain_after_exit(self, sock: gsocket.socket) -> None:
        """Anything the target writes after ``exit`` is a bug: read it for a moment."""
        deadline = time.monotonic() + self.sim.exit_grace
        buf = bytes(self._rx)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except (TimeoutError, _stdsocket.timeout, OSError):
                break
            if not data:
                break
            buf += data
        for m in re.finditer(rb"([^\r\n][^\n]*)\n", buf.lstrip(b"\r\n")):
            self.result.violations.append(f"command after exit: {m.group(1)[:60].decode('utf-8', 'replace')!r}")
            break

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        self._out.clear()
        self._splits.clear()
        self._out_len = 0
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _on_target_eof(self) -> None:
        if self.sock is None:
            return
        self._close_socket()
        self._after_socket_gone()
