"""Record what FreeSWITCH and fsguard say to each other: a TCP proxy and the capture scenarios.

:class:`RecordingProxy` listens where the dialplan's ``socket`` application dials (a socket target)
and forwards each connection to fsguard on another port, keeping every chunk exactly as it was
read, in both directions, with its time. A :class:`Recording` is written in the chunk format of
``tests/captures/fs-1.11`` (``----- <<< FROM-FS [outbound] t=+S.SSSs N bytes -----``, N raw
bytes, ``----- end -----``, ``##### NOTE`` annotations), which :mod:`fsguard_testing.transcripts`
reads: chunk boundaries are real ``recv()`` boundaries and any byte (CR, NUL, UTF-8) survives.

The same proxy sits between the simulator and fsguard in the tests, so that a scenario run on
:class:`~fsguard_testing.fakeswitch.FakeFreeSWITCH` yields a recording of the same shape as the one
captured from the real FreeSWITCH, and the two can be compared frame by frame.

``python -m fsguard_testing.capture --out tests/captures/fs-1.10.12`` starts a real FreeSWITCH on
``conf/freeswitch`` (:mod:`fsguard_testing.freeswitch`), fsguard with its default chain on a fresh
SQLite database, the proxy on the first socket target, and records :data:`SCENARIOS` one call at
a time. Capturing needs FreeSWITCH; reading the captures does not.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket as _stdsocket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import gevent.event
from gevent import socket as gsocket
from gevent.server import StreamServer

from fsguard_testing.transcripts import Chunk, Direction

if TYPE_CHECKING:
    from fsguard.service.app import App
    from fsguard_testing.freeswitch import CallPlacer, Event, EventSocketClient, RealFreeSWITCH

#: The default port of nothing: pick a free one.
ANY_PORT = 0


@dataclass
class Recording:
    """One proxied connection: its chunks (times from ``t0``) and notes, in order."""

    name: str
    t0: float = field(default_factory=time.monotonic)
    items: list[Chunk | tuple[float, str]] = field(default_factory=list)
    closed: gevent.event.Event = field(default_factory=gevent.event.Event)

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, direction: Direction, data: bytes) -> None:
        self.items.append(Chunk(direction, "outbound", self._now(), data))

    def note(self, text: str) -> None:
        """An annotation: what the scenario did at this moment (a key press, a hang-up)."""
        self.items.append((self._now(), " ".join(text.split())))

    @property
    def chunks(self) -> list[Chunk]:
        return [item for item in self.items if isinstance(item, Chunk)]

    def received(self) -> bytes:
        """Everything FreeSWITCH (real or simulated) sent, concatenated."""
        return b"".join(c.data for c in self.chunks if c.direction == "from_fs")

    def sent(self) -> bytes:
        """Everything fsguard sent, concatenated."""
        return b"".join(c.data for c in self.chunks if c.direction == "to_fs")

    def render(self, header: str = "") -> bytes:
        """The recording in the fs-1.11 chunk format (what :func:`transcripts.load` reads)."""
        out = [f"# fsguard capture {self.name!r}\n".encode()]
        out += [b"# " + line.encode() + b"\n" for line in header.splitlines()]
        out.append(b"# Chunk format: a line '----- <<< FROM-FS|>>> TO-FS [conn] t=+S.SSSs N bytes -----',\n"
                   b"# then exactly N raw bytes, then '\\n----- end -----'.  NOTE lines are annotations.\n\n")
        for item in self.items:
            if isinstance(item, Chunk):
                arrow = "<<< FROM-FS" if item.direction == "from_fs" else ">>> TO-FS"
                out.append(f"----- {arrow} [outbound] t=+{item.t:.3f}s {len(item.data)} bytes -----\n".encode())
                out.append(item.data)
                out.append(b"\n----- end -----\n\n")
            else:
                t, text = item
                out.append(f"##### NOTE t=+{t:.3f}s: {text} #####\n\n".encode())
        return b"".join(out)

    def write(self, path: Path, header: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.render(header))


class RecordingProxy:
    """A TCP proxy that records every connection: FreeSWITCH -> proxy -> fsguard and back.

    Connections are recorded in the order they are accepted. :meth:`expect` names the next one
    (and starts its clock, so that notes made before FreeSWITCH dials in have a time too).
    """

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", ANY_PORT)) -> None:
        self.upstream = upstream
        self.recordings: list[Recording] = []
        self._next: Recording | None = None
        self._server = StreamServer(listen, self._handle)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.address[:2]
        return str(host), int(port)

    def start(self) -> RecordingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def expect(self, name: str) -> Recording:
        """The recording the next accepted connection goes into."""
        self._next = Recording(name)
        return self._next

    def _handle(self, fs_sock: gsocket.socket, _address: object) -> None:
        recording = self._next or Recording(f"connection-{len(self.recordings) + 1}")
        self._next = None
        self.recordings.append(recording)
        recording.note(f"FreeSWITCH connected to the proxy; forwarding to {self.upstream[0]}:{self.upstream[1]}")
        try:
            target = gsocket.create_connection(self.upstream, timeout=5)
        except OSError as exc:
            recording.note(f"the target refused: {exc}")
            fs_sock.close()
            recording.closed.set()
            return
        target.settimeout(None)
        for s in (fs_sock, target):
            s.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)  # as mod_event_socket does
        pumps = [gevent.spawn(self._pump, fs_sock, target, recording, "from_fs", "FreeSWITCH"),
                 gevent.spawn(self._pump, target, fs_sock, recording, "to_fs", "the target")]
        gevent.joinall(pumps)
        for s in (fs_sock, target):
            s.close()
        recording.closed.set()

    @staticmethod
    def _pump(src: gsocket.socket, dst: gsocket.socket, recording: Recording, direction: Direction, who: str) -> None:
        """Copy one direction chunk by chunk; an EOF is passed on as a half-close."""
        while True:
            try:
                data = src.recv(65536)
            except OSError as exc:
                recording.note(f"{who}: read failed ({exc})")
                data = b""
            if not data:
                recording.note(f"{who} closed the socket")
                try:
                    dst.shutdown(_stdsocket.SHUT_WR)
                except OSError:
                    pass
                return
            recording.add(direction, data)
            try:
                dst.sendall(data)
            except OSError as exc:
                recording.note(f"could not pass {len(data)} bytes on ({exc})")


# =========================================================================== the real captures

CALLER = "12125550101"
SOFT = "13125550121"
BLOCKED = "13125550166"
DIALLED = "18005550100"


@dataclass
class Lab:
    """A real FreeSWITCH, fsguard behind the recording proxy, and an inbound client."""

    freeswitch: RealFreeSWITCH
    app: App
    client: EventSocketClient
    placer: CallPlacer
    proxy: RecordingProxy

    def block(self, number: str, level: int) -> None:
        from fsguard.rules import lists

        with self.app.db.begin() as session:
            lists.add(session, lists.make_spec(number, kind="block", level=level))

    def unblock_all(self) -> None:
        from sqlalchemy import delete

        from fsguard.store.models.lists import ListEntry

        with self.app.db.begin() as session:
            session.execute(delete(ListEntry))

    def wait(self, name: str, uuid: str, timeout: float = 15.0, **where: str) -> Event:
        return self.client.wait_for(name, where={"Unique-ID": uuid, **where}, timeout=timeout)

    def api(self, recording: Recording, command: str) -> str:
        recording.note(f"inbound ESL: api {command}")
        return self.client.api(command)

    def finish(self, recording: Recording, b_leg: str, timeout: float = 20.0) -> None:
        """Wait for the call's end and the proxied socket's close."""
        self.wait("CHANNEL_HANGUP_COMPLETE", b_leg, timeout)
        if not recording.closed.wait(timeout):
            raise TimeoutError(f"{recording.name}: the socket was still open {timeout} s after the hang-up")


def _heard_code(lab: Lab, b_leg: str) -> str:
    """The code fsguard played in early media (digits/N.wav, played verification.code_repeats times)."""
    playback = lab.wait("CHANNEL_EXECUTE", b_leg, Application="playback")
    digits = re.findall(r"digits/(\d)\.wav", playback["Application-Data"])
    if not digits:
        raise RuntimeError(f"no code in the challenge prompt {playback['Application-Data']!r}")
    return "".join(digits[: len(digits) // 2])


def scenario_routed(lab: Lab, recording: Recording) -> None:
    """An ordinary caller: consent prompt, routed to the queues; the caller hangs up in the queue."""
    recording.note(f"placing a loopback call from {CALLER} to {DIALLED}: the b leg runs the dialplan")
    a_leg, b_leg = lab.placer.loopback(CALLER, DIALLED)
    lab.wait("CHANNEL_EXECUTE", b_leg, Application="callcenter")
    gevent.sleep(1.0)
    lab.api(recording, f"uuid_kill {a_leg}")
    lab.finish(recording, b_leg)


def scenario_challenge_keyed(lab: Lab, recording: Recording) -> None:
    """A soft-blocked caller hears the code in early media, keys it, and is routed."""
    lab.block("+" + SOFT, 2)
    recording.note(f"{SOFT} is on the block list at level 2 (soft: challenged)")
    a_leg, b_leg = lab.placer.loopback(SOFT, DIALLED)
    code = _heard_code(lab, b_leg)
    lab.wait("CHANNEL_EXECUTE", b_leg, Application="play_and_get_digits")
    lab.api(recording, f"uuid_recv_dtmf {b_leg} {code}")
    lab.wait("CHANNEL_EXECUTE", b_leg, Application="transfer")
    lab.wait("CHANNEL_EXECUTE", b_leg, Application="callcenter")
    gevent.sleep(1.0)
    lab.api(recording, f"uuid_kill {a_leg}")
    lab.finish(recording, b_leg)


def scenario_challenge_caller_hangup(lab: Lab, recording: Recording) -> None:
    """A soft-blocked caller hangs up while the challenge waits for the digits."""
    lab.block("+" + SOFT, 2)
    recording.note(f"{SOFT} is on the block list at level 2 (soft: challenged)")
    a_leg, b_leg = lab.placer.loopback(SOFT, DIALLED)
    lab.wait("CHANNEL_EXECUTE", b_leg, Application="play_and_get_digits")
    gevent.sleep(0.5)
    lab.api(recording, f"uuid_kill {a_leg}")
    lab.finish(recording, b_leg)


def scenario_hard_block(lab: Lab, recording: Recording) -> None:
    """A hard-blocked caller is refused before any answer (CALL_REJECTED, unbilled)."""
    lab.block("+" + BLOCKED, 8)
    recording.note(f"{BLOCKED} is on the block list at level 8 (hard: refused)")
    a_leg, b_leg = lab.placer.loopback(BLOCKED, DIALLED)
    lab.finish(recording, b_leg)


def scenario_hard_block_sip(lab: Lab, recording: Recording) -> None:
    """The hard-blocked caller again, over real SIP (mod_sofia): the channel a carrier brings."""
    from fsguard_testing.freeswitch import sip_invite

    lab.block("+" + BLOCKED, 8)
    recording.note(f"{BLOCKED} is on the block list at level 8 (hard: refused); a SIP INVITE from "
                   f"\"Bob\" <sip:{BLOCKED}@127.0.0.1> to {DIALLED}")
    call = sip_invite(lab.freeswitch.ports.sip, user=BLOCKED, display="Bob", to=DIALLED)
    recording.note(f"SIP responses: {' '.join(str(s) for s in call.statuses)}")
    end = lab.client.wait_for("CHANNEL_HANGUP_COMPLETE", where={"variable_sip_call_id": call.call_id},
                              timeout=15)
    lab.finish(recording, end.uuid)


#: name -> (what it shows, the scenario); each is one call, its capture ``<name>.txt``.
SCENARIOS: dict[str, tuple[str, Callable[[Lab, Recording], None]]] = {
    "routed": ("an ordinary caller routed to the queues, followed to the caller's hang-up", scenario_routed),
    "challenge_keyed": ("a soft-blocked caller keys the code played in early media", scenario_challenge_keyed),
    "challenge_caller_hangup": ("a soft-blocked caller hangs up during the digit window",
                                scenario_challenge_caller_hangup),
    "hard_block": ("a hard-blocked caller refused before answer", scenario_hard_block),
    "hard_block_sip": ("a hard-blocked caller over real SIP refused before answer (603)", scenario_hard_block_sip),
}


#: suffix -> (what fsguard subscribes to, the events fsguard unsubscribes from with ``nixevent``):
#: as shipped (only the events it reads), and every ``myevents`` event, so that the captures hold
#: CHANNEL_EXECUTE, CHANNEL_PROGRESS_MEDIA, CHANNEL_STATE... for the simulator to be held to.
VARIANTS: dict[str, tuple[str, bool]] = {
    "": ("fsguard as shipped: myevents, nixevent ALL, event of the events it reads", False),
    ".all-events": ("fsguard keeping every myevents event (CHANNEL_EXECUTE_COMPLETE still only while a "
                    "stage waits for an application): fsguard_testing.capture.every_event", True),
}


def _version(binary: str) -> str:
    import subprocess

    out = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version:?\s*(\S+)", out, re.I)
    return m.group(1) if m else out.strip()


@contextlib.contextmanager
def every_event(enabled: bool = True) -> Iterator[None]:
    """While calls run, fsguard keeps every ``myevents`` event (but CHANNEL_EXECUTE_COMPLETE, which
    it subscribes to while a stage waits for an application), so that a recording shows them all.

    It replaces :meth:`OutboundSession.subscription` (``myevents``, ``nixevent ALL``, ``event ...``)
    with three commands that leave ``myevents``'s subscription as it is; ``enabled=False``: as shipped.
    """
    from fsguard.esl.protocol import Command, Event, MyEvents, NixEvent
    from fsguard.esl.channel import COMPLETION
    from fsguard.esl.session import OutboundSession

    if not enabled:
        yield
        return

    def everything(self: OutboundSession) -> tuple[Command, ...]:
        return MyEvents(self.event_format), NixEvent((COMPLETION,)), Event(("CHANNEL_ANSWER",), self.event_format)

    saved = OutboundSession.subscription
    OutboundSession.subscription = everything  # type: ignore[method-assign]
    try:
        yield
    finally:
        OutboundSession.subscription = saved  # type: ignore[method-assign]


def capture(out_dir: Path, names: list[str], *, binary: str | None = None, workdir: Path | None = None) -> list[Path]:
    """Run ``names`` (keys of :data:`SCENARIOS`) through a real FreeSWITCH; write ``out_dir/<name>.txt``."""
    from fsguard.store import migrate
    from fsguard.service.app import App
    from fsguard.config import Settings, packaged_sound
    from fsguard.store.db import Database
    from fsguard.service.server import CallServer
    from fsguard_testing.freeswitch import CallPlacer, Ports, RealFreeSWITCH, find_freeswitch, free_port

    binary = binary or find_freeswitch()
    if binary is None:
        raise RuntimeError("FreeSWITCH is not installed (set FREESWITCH to its binary)")
    work = workdir or Path(tempfile.mkdtemp(prefix="fsguard-capture-"))
    ports = Ports.pick()
    fs = RealFreeSWITCH(binary, work / "freeswitch", ports).start()
    written: list[Path] = []
    try:
        settings = Settings()
        settings.database.url = f"sqlite:///{work / 'fsguard.db'}"
        settings.node.id = "capture"
        settings.esl.listen = f"127.0.0.1:{free_port()}"
        settings.esl.inbound = fs.esl_address
        # the routed call's socket is held to the hang-up, so that the capture holds every event
        # of the call up to its end (letting go of it is proven by tests/realfs/test_realfs_ends.py)
        settings.esl.follow_ends = "socket"
        settings.recording.dir = str(fs.recordings)
        # fsguard's own notice, played from FreeSWITCH's sound prefix (a path relative to it), so
        # that the captures name no directory of the machine they were made on
        shipped = Path(packaged_sound(settings.recording.consent_prompt))
        relative = Path("fsguard") / shipped.name
        (fs.sounds / "en" / "us" / "callie" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, fs.sounds / "en" / "us" / "callie" / relative)
        settings.recording.consent_prompt = str(relative)
        settings.http.enabled = False
        db = Database(settings.database)
        migrate.upgrade(db)
        app = App(settings, db=db)
        server = CallServer(app)
        server.start()
        host, port = settings.esl.listen.rsplit(":", 1)
        proxy = RecordingProxy((host, int(port)), ("127.0.0.1", ports.targets[0])).start()
        client = fs.client()
        client.connect()
        client.api("callcenter_config agent set status 1000@default 'Logged Out'")
        lab = Lab(fs, app, client, CallPlacer(client), proxy)
        version = _version(binary)
        try:
            for suffix, (subscription, everything) in VARIANTS.items():
                for name in names:
                    what, run = SCENARIOS[name]
                    lab.unblock_all()
                    recording = proxy.expect(name + suffix)
                    with every_event(everything):
                        run(lab, recording)
                    header = (f"{what}\n{subscription}\n"
                              f"FreeSWITCH {version}, conf/freeswitch as shipped; fsguard's default chain, "
                              "esl.follow_ends = socket; "
                              f"captured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
                              "regenerate: python -m fsguard_testing.capture --out tests/captures/fs-1.10.12")
                    path = out_dir / f"{name}{suffix}.txt"
                    recording.write(path, header)
                    written.append(path)
                    client.api("hupall NORMAL_CLEARING")
                    gevent.sleep(0.5)
        finally:
            client.close()
            proxy.stop()
            server.stop(drain=1.0)
            db.dispose()
    finally:
        fs.stop()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fsguard_testing.capture",
        description="Capture what a real FreeSWITCH and fsguard exchange, one file per scenario.")
    parser.add_argument("--out", type=Path, required=True, help="folder for <scenario>.txt")
    parser.add_argument("--freeswitch", help="the FreeSWITCH binary (default: $FREESWITCH, PATH, usual prefixes)")
    parser.add_argument("--workdir", type=Path, help="where FreeSWITCH and fsguard write (default: a new temp dir)")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"which to capture (default: all of {', '.join(SCENARIOS)})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})")
    try:
        for path in capture(args.out, list(args.scenarios) or list(SCENARIOS), binary=args.freeswitch,
                            workdir=args.workdir):
            print(path)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"capture failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    sys.exit(main())
