"""A real FreeSWITCH for the tests, the lab and the benchmarks.

The simulator is the fast loop; this is the judge. :class:`RealFreeSWITCH` starts the
FreeSWITCH binary (``../shared/freeswitch/install`` puts 1.10.12 under
``/usr/local/freeswitch``) on ``conf/freeswitch/`` exactly as shipped, with every address moved
to free ports through the ``FSGUARD_LAB_*`` variables that ``vars.xml`` reads, and its logs,
databases, recordings and prompts in a directory of the caller's. No sound pack exists here, so
:func:`make_prompts` writes the prompt files fsguard plays as short tones.

:class:`EventSocketClient` is a test-side inbound Event Socket client: it originates calls,
presses keys, and keeps every event FreeSWITCH emits, so that a test asserts what FreeSWITCH
did (answer, progress, hang-up cause, billsec, the applications executed) from FreeSWITCH's own
events rather than from fsguard's records.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.lock

from fsguard.esl.protocol import Frame, FrameReader, parse_event_plain

#: The reference configuration, shipped with the project.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "freeswitch"

#: Where ../shared/freeswitch/install puts the binary (FreeSWITCH's conventional prefix).
CANDIDATES = ("/usr/local/freeswitch/bin/freeswitch", "/usr/bin/freeswitch", "/opt/freeswitch/bin/freeswitch")

#: The prompt files fsguard's defaults play, relative to $${sound_prefix} (vars.xml:
#: $${sounds_dir}/en/us/callie), each as (path, tone frequency in Hz, seconds).
PROMPTS: tuple[tuple[str, int, float], ...] = (
    ("ivr/ivr-please_enter_the.wav", 440, 0.4),
    ("ivr/ivr-number.wav", 480, 0.3),
    ("ivr/ivr-this_call_may_be_recorded.wav", 520, 0.5),
    ("ivr/ivr-recording_started.wav", 560, 0.3),
    *((f"digits/{d}.wav", 600 + 50 * d, 0.25) for d in range(10)),
)

SAMPLE_RATE = 8000


def find_freeswitch() -> str | None:
    """The FreeSWITCH binary: ``$FREESWITCH``, the PATH, then the usual prefixes."""
    explicit = os.environ.get("FREESWITCH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("freeswitch")
    if found:
        return found
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def write_tone(path: Path, frequency: int, seconds: float, *, amplitude: float = 0.4) -> None:
    """An 8 kHz mono 16-bit WAV holding one sine tone (0 Hz: silence)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(SAMPLE_RATE * seconds)
    peak = int(32767 * amplitude)
    samples = (
        int(peak * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE)) if frequency else 0
        for i in range(frames)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))


def make_prompts(sounds_dir: Path) -> Path:
    """Write the prompts fsguard plays under ``sounds_dir/en/us/callie`` (the lab's sound_prefix)."""
    prefix = sounds_dir / "en" / "us" / "callie"
    for name, frequency, seconds in PROMPTS:
        write_tone(prefix / name, frequency, seconds)
    return prefix


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on now (TCP or UDP), from the kernel's ephemeral range."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int, kinds: tuple[int, ...] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_sip_port() -> int:
    """A port free for both UDP and TCP (mod_sofia binds both), below the ephemeral range, where
    the outgoing connections of other programs cannot take it between now and FreeSWITCH's start."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(10000, 19990)
        if _bindable(port):
            return port
    raise RuntimeError("no free SIP port between 10000 and 20000")


def _free_rtp_base() -> int:
    """The start of 200 UDP ports, all free now, picked at random between 20000 and 30000 so that
    FreeSWITCHes started side by side (tests, the benchmark, a lab) do not share media ports."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(100):
        base = rng.randrange(20000, 30000 - 200, 200)
        if all(_bindable(port, (socket.SOCK_DGRAM,)) for port in range(base, base + 200, 2)):
            return base
    raise RuntimeError("no free block of RTP ports between 20000 and 30000")


@dataclass
class Ports:
    """Every address one FreeSWITCH of the lab uses; the socket targets are fsguard's."""

    esl: int
    sip: int
    agents: int
    rtp_start: int
    targets: tuple[int, ...]

    @classmethod
    def pick(cls, nodes: int = 2) -> Ports:
        sip = free_sip_port()
        agents = free_sip_port()
        while agents == sip:
            agents = free_sip_port()
        return cls(esl=free_port(), sip=sip, agents=agents,
                   rtp_start=_free_rtp_base(), targets=tuple(free_port() for _ in range(nodes)))

    @property
    def socket_target(self) -> str:
        return "|".join(f"127.0.0.1:{p}" for p in self.targets)

    def environment(self) -> dict[str, str]:
        return {
            "FSGUARD_LAB_SOCKET": self.socket_target,
            "FSGUARD_LAB_ESL_PORT": str(self.esl),
            "FSGUARD_LAB_SIP_PORT": str(self.sip),
            "FSGUARD_LAB_AGENT_PORT": str(self.agents),
            "FSGUARD_LAB_RTP_START": str(self.rtp_start),
        }


@dataclass
class RealFreeSWITCH:
    """One FreeSWITCH process on ``conf_dir``, everything it writes under ``workdir``."""

    binary: str
    workdir: Path
    ports: Ports
    conf_dir: Path = CONF_DIR
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "log" / "freeswitch.log"

    @property
    def recordings(self) -> Path:
        return self.workdir / "recordings"

    @property
    def sounds(self) -> Path:
        return self.workdir / "sounds"

    @property
    def esl_address(self) -> str:
        return f"127.0.0.1:{self.ports.esl}"

    def start(self, timeout: float = 30.0) -> RealFreeSWITCH:
        for sub in ("log", "db", "run", "temp", "sounds", "recordings"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        make_prompts(self.sounds)
        env = {**os.environ, **self.ports.environment()}
        w = self.workdir
        self.process = subprocess.Popen(
            [self.binary, "-nf", "-nonat", "-conf", str(self.conf_dir),
             "-log", str(w / "log"), "-db", str(w / "db"), "-run", str(w / "run"), "-temp", str(w / "temp"),
             "-sounds", str(w / "sounds"), "-recordings", str(w / "recordings")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(w / "log" / "stderr.txt", "wb"), start_new_session=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"FreeSWITCH exited with {self.process.returncode} at start; see {self.log_file}")
            try:
                with EventSocketClient(self.esl_address, subscribe=False) as client:
                    status = client.api("sofia status")
                    if all(re.search(rf"^\s*{name}\s+profile\s.*RUNNING", status, re.M) for name in ("lab", "agents")):
                        return self
            except OSError:
                pass
            gevent.sleep(0.2)
        self.stop()
        raise RuntimeError(f"FreeSWITCH did not answer on {self.esl_address} within {timeout} s; see {self.log_file}")

    def stop(self, timeout: float = 15.0, *, graceful: bool = True) -> None:
        """``fsctl shutdown``, then SIGKILL if it has not gone in time; not ``graceful``: SIGKILL
        at once (a test's FreeSWITCH, whose files go with its temporary directory: its orderly
        shutdown, the SIP profiles' above all, takes some 5 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        if not graceful:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            return
        try:
            with EventSocketClient(self.esl_address, subscribe=False, timeout=3.0) as client:
                client.send(b"api fsctl shutdown\n\n")
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def client(self, **kwargs: Any) -> EventSocketClient:
        return EventSocketClient(self.esl_address, **kwargs)

    def cpu_seconds(self) -> float:
        """user + system CPU FreeSWITCH has used so far (/proc), for the benchmarks."""
        assert self.pid is not None
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Event(dict[str, str]):
    """One FreeSWITCH event: its headers (values decoded), and when it was received."""

    received: float = 0.0

    @property
    def name(self) -> str:
        return self.get("Event-Name", "")

    @property
    def uuid(self) -> str:
        return self.get("Unique-ID", "")

    @property
    def timestamp_us(self) -> int:
        """FreeSWITCH's own clock (Event-Date-Timestamp, microseconds)."""
        return int(self.get("Event-Date-Timestamp", "0"))

    def var(self, name: str, default: str | None = None) -> str | None:
        return self.get(f"variable_{name}", default)


@dataclass
class EventSocketClient:
    """Inbound Event Socket client for tests: api commands and the full event stream."""

    address: str
    password: str = "ClueCon"
    subscribe: bool | str = True
    timeout: float = 10.0
    events: list[Event] = field(default_factory=list)
    _sock: socket.socket | None = None
    _reader: FrameReader = field(default_factory=lambda: FrameReader(max_bytes=16 * 1024 * 1024))
    _replies: list[Frame] = field(default_factory=list)
    _greenlet: gevent.Greenlet | None = None
    _lock: gevent.lock.Semaphore = field(default_factory=gevent.lock.Semaphore)
    _changed: gevent.event.Event = field(default_factory=lambda: gevent.event.Event())
    _closed: bool = False

    def __enter__(self) -> EventSocketClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        host, port = self.address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=self.timeout)
        self._sock.settimeout(None)
        self._greenlet = gevent.spawn(self._read_loop)
        self._expect(lambda f: f.content_type == "auth/request", "auth/request")
        reply = self._command(f"auth {self.password}")
        if not reply.headers.get("Reply-Text", "").startswith("+OK"):
            raise OSError(f"FreeSWITCH refused the password: {reply.headers.get('Reply-Text')}")
        if self.subscribe:
            kinds = "ALL" if self.subscribe is True else str(self.subscribe)
            self._command(f"event plain {kinds}")

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def _read_loop(self) -> None:
        assert self._sock is not None
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._closed = True
                self._changed.set()
                return
            for frame in self._reader.feed(data):
                if frame.content_type == "text/event-plain":
                    event = Event(parse_event_plain(frame.body))
                    event.received = time.monotonic()
                    self.events.append(event)
                else:
                    self._replies.append(frame)
            self._changed.set()

    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._closed and not predicate()):
                raise TimeoutError(f"FreeSWITCH: {what} not seen within {timeout} s")
            self._changed.wait(min(remaining, 0.5))

    def _expect(self, match: Callable[[Frame], bool], what: str) -> Frame:
        def found() -> Frame | None:
            for i, frame in enumerate(self._replies):
                if match(frame):
                    return self._replies.pop(i)
            return None

        return self._wait(found, self.timeout, what)

    def _command(self, line: str) -> Frame:
        with self._lock:
            self._replies.clear()
            self.send(line.encode() + b"\n\n")
            return self._expect(lambda f: f.content_type in ("command/reply", "api/response"), f"reply to {line!r}")

    def api(self, command: str) -> str:
        """``api COMMAND``: FreeSWITCH's answer, as text."""
        return self._command(f"api {command}").body.decode(errors="replace")

    def originate(self, dial: str, app: str = "&park()", timeout: float = 15.0) -> str:
        """``api originate``: the a-leg's uuid (``+OK <uuid>``), or AssertionError with the reason."""
        answer = self.api(f"originate {dial} {app}").strip()
        assert answer.startswith("+OK"), f"originate {dial}: {answer}"
        return answer.split()[1]

    def bgapi(self, command: str) -> str:
        reply = self._command(f"bgapi {command}")
        return reply.headers.get("Job-UUID", "")

    # -- the event stream -------------------------------------------------------------------

    def find(self, name: str | None = None, *, where: Mapping[str, str] | None = None,
             test: Callable[[Event], bool] | None = None) -> list[Event]:
        """The events seen so far that match; ``where`` compares headers exactly."""
        found = []
        for event in list(self.events):
            if name is not None and event.name != name:
                continue
            if where and any(event.get(k) != v for k, v in where.items()):
                continue
            if test and not test(event):
                continue
            found.append(event)
        return found

    def wait_for(self, name: str | None = None, *, where: Mapping[str, str] | None = None,
                 test: Callable[[Event], bool] | None = None, timeout: float = 10.0) -> Event:
        """The first event that matches, waiting up to ``timeout`` seconds for it."""
        def first() -> Event | None:
            matches = self.find(name, where=where, test=test)
            return matches[0] if matches else None

        return self._wait(first, timeout, f"{name or 'event'} {dict(where or {})}")

    def channel_events(self, uuid: str) -> Iterator[Event]:
        return (e for e in list(self.events) if e.uuid == uuid)

    def applications(self, uuid: str) -> list[tuple[str, str]]:
        """The applications FreeSWITCH executed on a channel, in order (CHANNEL_EXECUTE)."""
        return [(e.get("Application", ""), e.get("Application-Data", ""))
                for e in self.channel_events(uuid) if e.name == "CHANNEL_EXECUTE"]


@dataclass
class CallPlacer:
    """Place calls the way a carrier and an agent would, for the tests."""

    client: EventSocketClient
    counter: int = 0
    placed: list[str] = field(default_factory=list)

    def loopback(self, ani: str, dnis: str = "18005550100", context: str = "public", *,
                 variables: Mapping[str, str] | None = None, app: str = "&park()") -> tuple[str, str]:
        """A loopback call: ``(a_leg, b_leg)`` uuids. The b leg runs the dialplan (and meets fsguard)."""
        self.counter += 1
        a_leg = f"{os.getpid()}-{self.counter}-{time.monotonic_ns()}"
        pairs = {"origination_uuid": a_leg, "origination_caller_id_number": ani, **(variables or {})}
        dial = "{" + ",".join(f"{k}={v}" for k, v in pairs.items()) + f"}}loopback/{dnis}/{context}"
        job = self.client.bgapi(f"originate {dial} {app}")
        assert job, "bgapi originate got no Job-UUID"
        b_leg = self.client.wait_for(
            "CHANNEL_CREATE", test=lambda e: e.get("variable_other_loopback_leg_uuid") == a_leg, timeout=10).uuid
        self.placed.append(a_leg)
        return a_leg, b_leg


@dataclass
class SIPResponse:
    status: int
    reason: str
    headers: dict[str, str]
    raw: bytes


@dataclass
class SIPCall:
    """The result of one INVITE: every response FreeSWITCH sent, in order."""

    call_id: str
    responses: list[SIPResponse]

    @property
    def final(self) -> SIPResponse:
        return self.responses[-1]

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def sip_invite(port: int, *, user: str, display: str | None = None, to: str = "18005550100",
               extra_headers: Mapping[str, str] | None = None, timeout: float = 15.0,
               answered: Callable[[SIPResponse], None] | None = None) -> SIPCall:
    """Send a real SIP INVITE over UDP to the lab's profile on 127.0.0.1 and follow it to its final
    response: a non-2xx is ACKed; a 2xx is ACKed, ``answered`` is called, then the call is hung up
    with BYE. ``display`` and ``user`` are written into the From header exactly as given, so a test
    can send what a hostile carrier would (``Eve%0ACaller-Caller-ID-Number%3A%20...``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    local = sock.getsockname()[1]
    call_id = f"{time.monotonic_ns()}@127.0.0.1"
    tag = f"t{os.getpid()}{time.monotonic_ns() % 100000}"
    branch = f"z9hG4bK{time.monotonic_ns()}"
    rtp = free_port(socket.SOCK_DGRAM)
    sdp = ("v=0\r\no=fsguard-test 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {rtp} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
           "a=fmtp:101 0-16\r\na=sendrecv\r\n")
    name = f'"{display}" ' if display is not None else ""
    from_header = f"{name}<sip:{user}@127.0.0.1>;tag={tag}"
    to_header = f"<sip:{to}@127.0.0.1:{port}>"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (extra_headers or {}).items())

    def request(method: str, cseq: int, branch_: str, to_: str, body: str = "") -> bytes:
        content = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:{to}@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch_};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: {from_header}\r\nTo: {to_}\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} {method}\r\nContact: <sip:{user}@127.0.0.1:{local}>\r\n"
                f"{extra if method == 'INVITE' else ''}{content}Content-Length: {len(body.encode())}\r\n\r\n{body}"
                ).encode()

    responses: list[SIPResponse] = []
    try:
        sock.sendto(request("INVITE", 1, branch, to_header, sdp), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65535)
            except (socket.timeout, TimeoutError):
                continue
            response = _parse_sip(data)
            if response is None or "INVITE" not in response.headers.get("cseq", ""):
                continue
            responses.append(response)
            if response.status < 200:
                continue
            to_tagged = response.headers.get("to", to_header)
            if response.status >= 300:
                sock.sendto(request("ACK", 1, branch, to_tagged), ("127.0.0.1", port))
            else:
                sock.sendto(request("ACK", 1, f"{branch}a", to_tagged), ("127.0.0.1", port))
                if answered is not None:
                    answered(response)
                sock.sendto(request("BYE", 2, f"{branch}b", to_tagged), ("127.0.0.1", port))
            return SIPCall(call_id, responses)
        raise TimeoutError(f"no final response to the INVITE within {timeout} s (got {[r.status for r in responses]})")
    finally:
        sock.close()


def _parse_sip(data: bytes) -> SIPResponse | None:
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    first = head[0].split(" ", 2)
    if len(first) < 2 or not first[0].startswith("SIP/2.0"):
        return None
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return SIPResponse(int(first[1]), first[2] if len(first) > 2 else "", headers, data)


def main(argv: list[str] | None = None) -> int:
    """``python -m fsguard_testing.freeswitch prompts DIR | invite ...``: the lab's two helpers."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fsguard_testing.freeswitch",
                                     description="helpers for the FreeSWITCH lab (conf/freeswitch/)")
    sub = parser.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts", help="write the prompt files fsguard plays (tones) under DIR/en/us/callie")
    prompts.add_argument("dir", type=Path)
    invite = sub.add_parser("invite", help="send a real SIP INVITE to the lab's profile and print the responses")
    invite.add_argument("--port", type=int, default=int(os.environ.get("FSGUARD_LAB_SIP_PORT", "5080")))
    invite.add_argument("--user", required=True, help="the From user part (the caller id number)")
    invite.add_argument("--display", default=None, help="the From display name, written as given")
    invite.add_argument("--to", default="18005550100")
    invite.add_argument("--talk", type=float, default=3.0, help="seconds to stay on an answered call")
    args = parser.parse_args(argv)
    if args.command == "prompts":
        print(make_prompts(args.dir))
        return 0
    try:
        call = sip_invite(args.port, user=args.user, display=args.display, to=args.to,
                          answered=lambda _: time.sleep(args.talk))
    except TimeoutError as exc:
        print(f"invite: {exc}")
        return 1
    for response in call.responses:
        print(response.status, response.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
