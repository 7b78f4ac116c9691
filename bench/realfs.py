"""The real-FreeSWITCH phase of the benchmark: fsguard and the bare greenswitch app through
FreeSWITCH 1.10.12, the same harness, the same load, side by side.

FreeSWITCH runs from ``conf/freeswitch/`` as shipped (``fsguard_testing.freeswitch``), its one
socket target on a free port; each target in turn gets a FreeSWITCH of its own, started the same
way (one that has carried a target's calls costs more per call for the next), and listens there
(fsguard as ``fsguard serve`` through ``bench/serve.py``, the baseline as
``bench/greenswitch_app.py``), each in its own process.

The load: loopback calls to ``18005550100`` originated over the inbound Event Socket at a fixed
rate (``bgapi originate {origination_uuid=..,origination_caller_id_number=..}loopback/18005550100/public
&sleep(HOLD)``) on a connection with no event subscription. The dialplan hands the b leg to the
target (``socket ... async full``, fallback after it); a routed call is answered by the queue's
dialplan, which answers the a leg, whose ``sleep`` then ends it after ``--hold`` seconds (2 by
default): calls hang up in a controlled way, the same for both targets (the queue has no agents).

What FreeSWITCH did is read from its own events on a second inbound connection subscribed to
``CHANNEL_EXECUTE`` and ``CHANNEL_HANGUP_COMPLETE`` only (each event is read for the few headers
the figures need). Per target and rate:

* calls **decided** (the b leg ran a routing application sent by the target: ``transfer``,
  ``callcenter``, ``bridge``, ``hangup``, ``respond`` after ``socket``), **fell back** (the
  dialplan's ``transfer fallback XML queues``: the target let go without deciding),
  **abandoned** (the target challenged the caller, ``pre_answer``, and the caller hung up
  first: fsguard's own record says ``abandoned``), **stranded** (the ``socket`` application ran
  and nothing else accounts for the call), **still up** (``show channels count`` ``--settle``
  seconds after the last call should have ended); each fsguard target starts from the same
  database, its calls and counters from earlier targets deleted;
* **decision latency** by FreeSWITCH's clock: ``Event-Date-Timestamp`` of the routing
  application's CHANNEL_EXECUTE minus that of ``socket``'s (p50 / p99 / max), and fsguard's own
  (``calls.decision_ms``);
* **CPU per call** of the target and of FreeSWITCH (``/proc/<pid>/stat`` before and after:
  from the first call to the end of the last);
* **applications per call** (CHANNEL_EXECUTE on the b leg from ``socket`` to the route, the route
  included) and **events per call** the target received (each target counts the frames it reads:
  ``bench/serve.py`` and ``bench/greenswitch_app.py`` answer on a stats port).

The **saturation rate** of each target is the highest rate of a ladder (``--ladder``) at which
every call is decided within 1 s by FreeSWITCH's clock, none stranded or left up.

    python bench/realfs.py                      # both targets at 30 and 100 cps, then saturation
    python bench/realfs.py --rates 100 --calls 1000 --no-saturation
    python bench/realfs.py --variant 'fsguard recording off:FSGUARD_RECORDING_MODE=off'
    python bench/realfs.py --targets fsguard --rates 30 --no-saturation --cpu-sections   # where its CPU goes
    python bench/realfs.py --rounds 3 --rates 30,100 --no-saturation   # CPU ratios within rounds, and their median

The JSON goes to bench/results/realfs.json (``bench/run.py`` runs this module when FreeSWITCH
is installed, and puts its figures in its report).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid as uuidlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402

from fsguard.esl.protocol import FrameReader, plain_header  # noqa: E402
from fsguard_testing.freeswitch import Ports, RealFreeSWITCH, find_freeswitch  # noqa: E402

#: applications a target sends to decide a call (the first one after ``socket`` is the decision)
ROUTES = frozenset({"transfer", "callcenter", "bridge", "hangup", "respond"})
FALLBACK = "fallback XML queues"
#: the first application of fsguard's challenge (stages/verification.py): a challenged call's
#: route comes after the caller's answer, or never when the caller hangs up first
CHALLENGE = "pre_answer"
DNIS = "18005550100"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- the inbound connections


class Inbound:
    """A raw inbound Event Socket connection: commands in order, events read header by header."""

    def __init__(self, address: str, password: str = "ClueCon") -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.settimeout(None)
        self.reader = FrameReader(max_bytes=64 * 1024 * 1024)
        self.replies: collections.deque[Any] = collections.deque()
        self.replied = gevent.event.Event()
        self.on_event = None
        self.closed = False
        self.greenlet = gevent.spawn(self._read)
        self._expect()  # auth/request
        self.command(f"auth {password}")

    def _read(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(262144)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                self.replied.set()
                return
            for frame in self.reader.feed(data):
                ctype = frame.content_type
                if ctype == "text/event-plain":
                    if self.on_event is not None:
                        self.on_event(frame.body)
                else:
                    self.replies.append(frame)
                    self.replied.set()

    def _expect(self, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not self.replies:
            if self.closed or time.monotonic() > deadline:
                raise RuntimeError("FreeSWITCH's inbound socket gave no reply")
            self.replied.clear()
            self.replied.wait(0.5)
        return self.replies.popleft()

    def command(self, line: str) -> Any:
        self.sock.sendall(line.encode() + b"\n\n")
        return self._expect()

    def api(self, command: str) -> str:
        return self.command(f"api {command}").body.decode(errors="replace")

    def send_only(self, line: str) -> None:
        """A command whose reply is not waited for (the originator: bgapi replies are dropped)."""
        self.sock.sendall(line.encode() + b"\n\n")

    def drop_replies(self) -> None:
        self.replies.clear()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.greenlet.kill(block=False)


@dataclass
class CallSeen:
    """What FreeSWITCH's events said about one call (keyed by the a leg we chose)."""

    placed: float = 0.0
    b_leg: str | None = None
    socket_us: int | None = None
    route_us: int | None = None
    route: str | None = None
    fallback_us: int | None = None
    #: the target challenged the caller (``pre_answer``, the challenge's first application)
    challenged_us: int | None = None
    apps_to_route: int = 0
    apps: int = 0
    trail: list[str] = field(default_factory=list)
    ended_a: bool = False
    ended_b: bool = False
    cause: str | None = None


class Collector:
    """FreeSWITCH's CHANNEL_EXECUTE and CHANNEL_HANGUP_COMPLETE, for the calls the bench placed."""

    def __init__(self, address: str, *, every_application: bool = False) -> None:
        self.calls: dict[str, CallSeen] = {}
        self.b_to_a: dict[str, str] = {}
        self.events = 0
        self.every_application = every_application
        self.conn = Inbound(address)
        self.conn.on_event = self._event
        self.conn.command("event plain CHANNEL_EXECUTE CHANNEL_HANGUP_COMPLETE")
        if not every_application:
            # Filters are tested before an event is copied for this connection: FreeSWITCH then
            # serialises only the events the figures need, so that watching costs it little and
            # does not cost more for a target that runs more applications.
            self.conn.command("filter Event-Name CHANNEL_HANGUP_COMPLETE")
            self.conn.command("filter Application /^(socket|" + "|".join(sorted(ROUTES | {CHALLENGE})) + ")$/")

    def _event(self, body: bytes) -> None:
        self.events += 1
        name = plain_header(body, b"Event-Name")
        uuid = plain_header(body, b"Unique-ID") or ""
        if uuid in self.calls:  # an a leg
            if name == "CHANNEL_HANGUP_COMPLETE":
                self.calls[uuid].ended_a = True
            return
        a_leg = self.b_to_a.get(uuid)
        if a_leg is None:
            a_leg = plain_header(body, b"variable_other_loopback_leg_uuid")
            if a_leg not in self.calls:
                return
            self.b_to_a[uuid] = a_leg
        seen = self.calls[a_leg]
        seen.b_leg = uuid
        stamp = int(plain_header(body, b"Event-Date-Timestamp") or 0)
        if name == "CHANNEL_HANGUP_COMPLETE":
            seen.ended_b = True
            seen.cause = plain_header(body, b"variable_hangup_cause")
            return
        app = plain_header(body, b"Application") or ""
        seen.apps += 1
        if len(seen.trail) < 40:
            seen.trail.append(app)
        if app == "socket":
            seen.socket_us = stamp
            return
        if seen.socket_us is None or seen.route_us is not None or seen.fallback_us is not None:
            return
        seen.apps_to_route += 1
        if app == CHALLENGE and seen.challenged_us is None:
            seen.challenged_us = stamp
        if app in ROUTES:
            data = plain_header(body, b"Application-Data") or ""
            if app == "transfer" and data.strip() == FALLBACK:
                seen.fallback_us = stamp
            else:
                seen.route_us, seen.route = stamp, f"{app} {data}".strip()

    def place(self, a_leg: str) -> None:
        self.calls[a_leg] = CallSeen(placed=time.monotonic())

    def close(self) -> None:
        self.conn.close()


# ------------------------------------------------------------------------------ the targets


class Target:
    """One socket target in its own process, with the counters its stats port answers."""

    def __init__(self, name: str, server: bench.Server, db_url: str | None, *, probed: bool = False) -> None:
        self.name, self.server, self.db_url = name, server, db_url
        #: fsguard with bench/cpuprobe.py installed (--cpu-sections)
        self.probed = probed

    def ask(self, request: str) -> dict[str, Any]:
        """One request to the stats port (``probe-start``, ``probe-report 600``)."""
        return self.server.ask(request)

    def frames(self) -> dict[str, int]:
        try:
            return dict(self.server.stats().get("frames", {}))
        except OSError:
            return {}

    def stop(self) -> None:
        self.server.stop()


def start_greenswitch(port: int, workdir: Path) -> Target:
    stats_port = bench.free_port()
    server = bench.Server("greenswitch", [bench.PY, str(BENCH / "greenswitch_app.py"), "127.0.0.1", str(port)],
                          port, env={"FSGUARD_BENCH_STATS": str(stats_port)}, stats_port=stats_port,
                          workdir=workdir)
    bench.wait_port(stats_port, 10, server.proc)
    return Target("greenswitch", server, None)


def start_fsguard(port: int, workdir: Path, db_url: str, fs: RealFreeSWITCH, *, tag: str,
                  environment: dict[str, str], probed: bool = False) -> Target:
    if probed:
        environment = {**environment, "FSGUARD_BENCH_PROBE": "1"}
    server = bench.start_fsguard(workdir, db_url, bench.FULL_CHAIN, tag=tag, port=port,
                                 esl_extra=f'inbound = "{fs.esl_address}"\n', environment=environment,
                                 recording_dir=str(fs.recordings / tag))
    return Target(tag, server, db_url, probed=probed)


# ------------------------------------------------------------------------------- one phase


@dataclass
class Phase:
    target: str
    rate: float
    calls: int
    hold: float
    wall: float = 0.0
    seen: dict[str, CallSeen] = field(default_factory=dict)
    target_cpu: float = 0.0
    fs_cpu: float = 0.0
    fs_idle_cpu_per_s: float = 0.0
    frames: dict[str, int] = field(default_factory=dict)
    still_up: int = 0
    fsguard_ms: list[float] = field(default_factory=list)
    #: b leg -> fsguard's ``calls.outcome``, for the calls FreeSWITCH saw no route for
    recorded_outcomes: dict[str, str] = field(default_factory=dict)
    lag_max_ms: float = 0.0
    #: fsguard's CPU by greenlet and function (bench/cpuprobe.py), with --cpu-sections
    cpu_sections: dict[str, Any] | None = None
    machine_busy_pct: float = 0.0
    others_pct: float = 0.0

    def summary(self) -> dict[str, Any]:
        seen = list(self.seen.values())
        decided = [c for c in seen if c.route_us is not None]
        # a challenged call's route waits for the caller's answer: not the target's latency
        latencies = sorted((c.route_us - c.socket_us) / 1000 for c in decided  # type: ignore[operator]
                           if c.socket_us and c.challenged_us is None)
        fell_back = sum(1 for c in seen if c.fallback_us is not None)
        reached = sum(1 for c in seen if c.socket_us is not None)
        left = [c for c in seen if c.socket_us is not None and c.route_us is None and c.fallback_us is None]
        # the caller hung up during the challenge, and fsguard's own record says so: an outcome,
        # not a call left without one
        abandoned = [c for c in left if c.challenged_us is not None
                     and self.recorded_outcomes.get(c.b_leg or "") == "abandoned"]
        stranded = len(left) - len(abandoned)
        n = len(seen) or 1

        def pct(q: float, data: list[float]) -> float | None:
            return round(data[min(len(data) - 1, int(q * len(data)))], 2) if data else None

        ms = sorted(self.fsguard_ms)
        frames_total = sum(self.frames.values())
        events = sum(v for k, v in self.frames.items() if k.startswith("text/event"))
        return {
            "target": self.target, "rate": self.rate, "calls": len(seen), "hold_s": self.hold,
            "wall_s": round(self.wall, 1), "reached_socket": reached, "decided": len(decided),
            "decided_within_1s": sum(1 for v in latencies if v <= 1000), "fell_back": fell_back,
            "challenged": sum(1 for c in seen if c.challenged_us is not None),
            "abandoned_in_challenge": len(abandoned), "stranded": stranded, "still_up_channels": self.still_up,
            "not_ended": sum(1 for c in seen if not c.ended_b),
            "routes": dict(collections.Counter((c.route or "").split(" ")[0] for c in decided)),
            "latency_ms": {"p50": pct(0.5, latencies), "p99": pct(0.99, latencies),
                           "max": round(latencies[-1], 2) if latencies else None},
            "fsguard_decision_ms": {"p50": pct(0.5, ms), "p99": pct(0.99, ms), "n": len(ms)} if ms else None,
            "target_cpu_ms_per_call": round(1000 * self.target_cpu / n, 2),
            "fs_cpu_ms_per_call": round(1000 * self.fs_cpu / n, 2),
            "fs_cpu_s": round(self.fs_cpu, 2), "target_cpu_s": round(self.target_cpu, 2),
            "fs_idle_cpu_pct": round(100 * self.fs_idle_cpu_per_s, 1),
            # meaningful when every application was watched (the warm-up): see Collector
            "apps_per_call": round(sum(c.apps_to_route for c in decided) / max(1, len(decided)), 2),
            "frames_per_call": round(frames_total / n, 2), "events_per_call": round(events / n, 2),
            "frames": self.frames,
            "undecided": [{"a_leg": a, "b_leg": c.b_leg, "apps": c.trail, "cause": c.cause, "ended": c.ended_b}
                          for a, c in list(self.seen.items()) if c.route_us is None][:20],
            "originate_lag_max_ms": round(self.lag_max_ms, 1),
            "cpu_sections": self.cpu_sections,
            "machine_busy_pct": round(self.machine_busy_pct, 1), "others_pct_of_a_core": round(self.others_pct, 1),
            "ok": bool(seen) and len(decided) + len(abandoned) == len(seen) and stranded == 0
            and self.still_up == 0 and all(v <= 1000 for v in latencies),
        }


def run_phase(fs: RealFreeSWITCH, target: Target, rate: float, calls: int, *, hold: float, settle: float,
              mix: list[tuple[float, list[str]]], seed: int, every_application: bool = False) -> Phase:
    """``calls`` calls at ``rate`` a second through FreeSWITCH to ``target``, then wait for them to end.

    ``every_application``: watch every CHANNEL_EXECUTE (applications per call; the warm-up),
    else only ``socket`` and the routing applications."""
    phase = Phase(target.name, rate, calls, hold)
    rng = random.Random(seed)
    collector = Collector(fs.esl_address, every_application=every_application)
    originator = Inbound(fs.esl_address)
    pid = target.server.pid
    try:
        fs_idle0, t_idle0 = fs.cpu_seconds(), time.monotonic()
        gevent.sleep(1.0)
        phase.fs_idle_cpu_per_s = (fs.cpu_seconds() - fs_idle0) / (time.monotonic() - t_idle0)
        frames0 = target.frames()
        if target.probed:
            target.ask("probe-start")
        started_at = datetime.now(timezone.utc)
        fs0, tgt0, (busy0, total0) = fs.cpu_seconds(), bench.proc_cpu(pid), bench.machine_cpu()
        t0 = time.monotonic()
        for i in range(calls):
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                gevent.sleep(due - now)
            else:
                phase.lag_max_ms = max(phase.lag_max_ms, 1000 * (now - due))
            a_leg = str(uuidlib.uuid4())
            collector.place(a_leg)
            caller = pick_caller(rng, mix)
            originator.send_only(
                f"bgapi originate {{origination_uuid={a_leg},origination_caller_id_number={caller},"
                f"origination_caller_id_name=bench}}loopback/{DNIS}/public &sleep({int(hold * 1000)})")
            originator.drop_replies()
        # every call has ended (both legs), or the time a healthy run needs has passed
        deadline = time.monotonic() + hold + settle
        while time.monotonic() < deadline:
            if all(c.ended_a and c.ended_b for c in collector.calls.values()):
                break
            gevent.sleep(0.2)
        phase.wall = time.monotonic() - t0
        # FreeSWITCH's channel list is written by its SQL thread a moment after the hang-ups
        deadline = time.monotonic() + 5.0
        while channels_up(collector.conn) and time.monotonic() < deadline:
            gevent.sleep(0.25)
        phase.fs_cpu = fs.cpu_seconds() - fs0
        phase.target_cpu = bench.proc_cpu(pid) - tgt0
        if target.probed:
            phase.cpu_sections = target.ask(f"probe-report {calls}")
        busy1, total1 = bench.machine_cpu()
        phase.machine_busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0)
        cores = os.cpu_count() or 1
        mine = 100 * (phase.fs_cpu + phase.target_cpu) / max(phase.wall, 1e-6)
        phase.others_pct = max(0.0, phase.machine_busy_pct * cores - mine)
        frames1 = target.frames()
        phase.frames = {k: v - frames0.get(k, 0) for k, v in frames1.items() if v - frames0.get(k, 0)}
        phase.still_up = channels_up(collector.conn)  # not the originator's: bgapi replies still come in
        phase.seen = dict(collector.calls)
        if target.db_url:
            gevent.sleep(1.0)  # the group-commit writer's last batch
            phase.fsguard_ms = bench.decision_ms_since(target.db_url, started_at)
            phase.recorded_outcomes = recorded_outcomes(target.db_url, [
                c.b_leg for c in phase.seen.values() if c.b_leg and c.route_us is None and c.fallback_us is None])
        s = phase.summary()
        log(f"  {target.name} {rate:g} cps x {calls}: decided {s['decided']} (within 1 s {s['decided_within_1s']}), "
            f"fell back {s['fell_back']}, abandoned in a challenge {s['abandoned_in_challenge']}, "
            f"stranded {s['stranded']}, still up {s['still_up_channels']}; "
            f"p50 {s['latency_ms']['p50']} p99 {s['latency_ms']['p99']} ms (FreeSWITCH's clock)"
            + (f", fsguard's own p99 {s['fsguard_decision_ms']['p99']} ms" if s["fsguard_decision_ms"] else "")
            + f"; CPU per call: target {s['target_cpu_ms_per_call']} ms, FreeSWITCH {s['fs_cpu_ms_per_call']} ms; "
            + (f"apps/call {s['apps_per_call']}, " if every_application else "")
            + f"events/call {s['events_per_call']}; others {s['others_pct_of_a_core']}%")
        if phase.cpu_sections:
            log(sections_table(phase.cpu_sections))
        return phase
    finally:
        originator.close()
        clear(collector.conn)
        collector.close()


def recorded_outcomes(db_url: str, uuids: list[str]) -> dict[str, str]:
    """fsguard's own outcome (``calls.outcome``) of these calls, by uuid."""
    if not uuids:
        return {}
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT uuid, outcome FROM calls WHERE uuid IN :uuids").bindparams(
                bindparam("uuids", expanding=True))
            return {uuid: outcome for uuid, outcome in conn.execute(query, {"uuids": uuids})}
    finally:
        engine.dispose()


def reset_call_state(db_url: str) -> None:
    """Forget the calls an earlier target made: each fsguard target starts from the same counters
    (the nuisance counter of a caller who rang 2-second calls through an earlier target would
    otherwise challenge it here, and the targets would not carry the same calls)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            for table in ("review_hits", "review_results", "recording_masks", "recordings", "verdicts", "challenges",
                          "calls", "call_counters"):
                conn.execute(text(f"DELETE FROM {table}"))
    finally:
        engine.dispose()


def channels_up(conn: Inbound) -> int:
    """``show channels count``: FreeSWITCH's own count of the channels it has."""
    answer = conn.api("show channels count")
    for line in answer.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].isdigit() and words[1].startswith("total"):
            return int(words[0])
    raise RuntimeError(f"show channels count: unexpected answer {answer!r}")


def held_calls(fs: RealFreeSWITCH, target: Target, count: int, *, mix: Any, rate: float = 50.0,
               window: float = 5.0) -> dict[str, Any]:
    """``count`` calls routed and still up at once (the a leg sleeps past the measurement):
    what FreeSWITCH and the target spend per second while nothing happens but holding them.
    A target that keeps each call's socket (fsguard follows calls to their end) against one that
    lets go after routing (the greenswitch app)."""
    rng = random.Random(42)
    collector = Collector(fs.esl_address)
    originator = Inbound(fs.esl_address)
    hold = count / rate + window + 10
    try:
        for i in range(count):
            a_leg = str(uuidlib.uuid4())
            collector.place(a_leg)
            originator.send_only(
                f"bgapi originate {{origination_uuid={a_leg},origination_caller_id_number={pick_caller(rng, mix)},"
                f"origination_caller_id_name=bench}}loopback/{DNIS}/public &sleep({int(hold * 1000)})")
            originator.drop_replies()
            gevent.sleep(1 / rate)
        gevent.sleep(3.0)
        up = channels_up(collector.conn)
        decided = sum(1 for c in collector.calls.values() if c.route_us is not None)
        fs0, tgt0, t0 = fs.cpu_seconds(), bench.proc_cpu(target.server.pid), time.monotonic()
        gevent.sleep(window)
        elapsed = time.monotonic() - t0
        fs_rate = (fs.cpu_seconds() - fs0) / elapsed
        tgt_rate = (bench.proc_cpu(target.server.pid) - tgt0) / elapsed
        out = {"target": target.name, "calls": count, "decided": decided, "channels_up": up,
               "fs_cpu_pct": round(100 * fs_rate, 1), "target_cpu_pct": round(100 * tgt_rate, 1),
               "fs_cpu_us_per_held_call_per_s": round(1e6 * fs_rate / max(1, decided), 1)}
        log(f"  {target.name}: {decided} calls held ({up} channels): FreeSWITCH {out['fs_cpu_pct']}% of a core "
            f"({out['fs_cpu_us_per_held_call_per_s']} us per held call per second), target {out['target_cpu_pct']}%")
        return out
    finally:
        originator.close()
        clear(collector.conn)
        collector.close()


def clear(conn: Inbound, timeout: float = 30.0) -> None:
    """Hang up whatever is left, and wait until FreeSWITCH has no channel."""
    conn.api("hupall NORMAL_CLEARING")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if channels_up(conn) == 0:
            return
        gevent.sleep(0.3)
    log("  (channels still up after hupall)")


def pick_caller(rng: random.Random, mix: list[tuple[float, list[str]]]) -> str:
    """A caller from the mix (E.164 without the +, as a carrier sends it), else a stranger."""
    x = rng.random()
    for share, numbers in mix:
        if x < share:
            return rng.choice(numbers).lstrip("+")
        x -= share
    # a stranger with a valid number, as bench/loadgen.py makes them (an invalid one is challenged)
    return f"1{rng.choice(bench.AREAS)}555{rng.randint(0, 9999):04d}"


# ------------------------------------------------------------------------------------- main


def saturation(fs: RealFreeSWITCH, target: Target, ladder: list[float], seconds: float, *, hold: float,
               settle: float, mix: Any) -> dict[str, Any]:
    """Up the ladder until a rate fails: the last rate where every call was decided within 1 s."""
    steps, best = [], None
    for i, rate in enumerate(ladder):
        phase = run_phase(fs, target, rate, int(rate * seconds), hold=hold, settle=settle, mix=mix, seed=700 + i)
        s = phase.summary()
        steps.append(s)
        if not s["ok"]:
            break
        best = rate
    return {"rate": best, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="30,100", help="fixed rates, calls per second (default 30,100)")
    parser.add_argument("--calls", type=int, default=0,
                        help="calls per fixed rate (default: 10 s of calls, at least 300; 1,000 at 100 cps)")
    parser.add_argument("--targets", default="greenswitch,fsguard", help="greenswitch and/or fsguard")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[;VAR=VALUE]",
                        help="an extra fsguard target with FSGUARD_* overrides, e.g. "
                             "'fsguard recording off:FSGUARD_RECORDING_MODE=off'")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds a routed call lasts (the a leg's sleep)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds allowed after that for calls to end")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the fixed rates this many times, the targets taking turns (anchor, fsguard, "
                             "anchor, fsguard, ...), and give each round's CPU ratio and their median: this kind "
                             "of machine changes speed by a third within minutes, between one target and the next")
    parser.add_argument("--no-saturation", action="store_true")
    parser.add_argument("--ladder", default="30,50,75,100,130,170,220,290",
                        help="saturation search rates, climbed until one fails")
    parser.add_argument("--ladder-seconds", type=float, default=8.0)
    parser.add_argument("--held", type=int, default=0, metavar="N",
                        help="also hold N routed calls at once and measure what holding costs per second")
    parser.add_argument("--only-held", action="store_true", help="only the held-calls measurement")
    parser.add_argument("--cpu-sections", action="store_true",
                        help="measure fsguard's CPU per greenlet and per function in each fixed-rate phase "
                             "(bench/cpuprobe.py; its own cost is in the figures)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--population", type=int, default=10_000, help="list entries and customers")
    parser.add_argument("--out", default=str(bench.RESULTS / "realfs.json"))
    args = parser.parse_args(argv)

    variants: dict[str, dict[str, str]] = {}
    for v in args.variant:
        name, _, pairs = v.partition(":")
        items = [p for p in pairs.split(";") if p]
        if not name or any("=" not in p for p in items):
            parser.error(f"--variant {v!r}: expected NAME:VAR=VALUE[;VAR=VALUE]")
        variants[name] = dict(p.split("=", 1) for p in items)
    binary = find_freeswitch()
    if binary is None:
        log("FreeSWITCH is not installed (../shared/freeswitch/install): no real-FreeSWITCH phase")
        return 2
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fsguard-realfs-"))
    report: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": bench.machine(), "hold_s": args.hold, "db": args.db, "phases": [],
                              "saturation": {}}
    report["machine"]["loadavg_at_start"] = round(os.getloadavg()[0], 2)
    drop = None
    try:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        targets += [name for name in variants if name not in targets]
        mix: list[tuple[float, list[str]]] = []
        db_url = None
        bench.AREAS.extend(bench.area_codes())
        if any(t != "greenswitch" for t in targets):
            db_url, drop = bench.make_database(args.db, workdir)
            bench.upgrade(db_url, workdir)
            log(f"populating the {args.db} database ({args.population} list entries and customers)")
            pop = bench.populate(db_url, args.population, args.population)
            mix = bench.caller_mix(pop)
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
        ladder = [float(r) for r in args.ladder.split(",") if r.strip()]
        turns = [(r, index, name) for r in range(1, max(1, args.rounds) + 1) for index, name in enumerate(targets)]
        for round_no, index, name in turns:
            first = round_no == 1
            # a FreeSWITCH of its own for each target: one that has carried a target's calls costs
            # more per call for the next (seen: 1-3 ms per call more for whichever target came second)
            fs = RealFreeSWITCH(binary, workdir / f"freeswitch-{round_no}-{index}", Ports.pick(nodes=1))
            fs.start()
            control = Inbound(fs.esl_address)
            # the shipped 1,000 sessions cap a saturation search (two legs per call, held for --hold s)
            control.api("fsctl max_sessions 10000")
            report["freeswitch"] = {"version": control.api("version").strip(), "binary": binary}
            port = fs.ports.targets[0]
            log(f"target: {name}{f' (round {round_no})' if args.rounds > 1 else ''}; a new FreeSWITCH "
                f"{report['freeswitch']['version']} on {fs.esl_address}, socket target 127.0.0.1:{port}")
            target: Any = None
            try:
                if name == "greenswitch":
                    target = start_greenswitch(port, workdir)
                else:
                    reset_call_state(db_url)  # type: ignore[arg-type]
                    target = start_fsguard(port, workdir, db_url, fs, tag=name.replace(" ", "-"),  # type: ignore[arg-type]
                                           environment=variants.get(name, {}), probed=args.cpu_sections)
                if args.held and first:
                    report.setdefault("held", []).append(held_calls(fs, target, args.held, mix=mix))
                if args.only_held:
                    continue
                warm = run_phase(fs, target, 20, 100, hold=args.hold, settle=args.settle, mix=mix, seed=1,
                                 every_application=first).summary()
                if first:
                    report.setdefault("apps_per_call", {})[name] = warm["apps_per_call"]
                for rate in rates:
                    calls = args.calls or max(300, int(rate * 10))
                    phase = run_phase(fs, target, rate, calls, hold=args.hold, settle=args.settle, mix=mix,
                                      seed=int(rate))
                    report["phases"].append({**phase.summary(), "round": round_no})
                if not args.no_saturation and first:
                    report["saturation"][name] = saturation(fs, target, ladder, args.ladder_seconds, hold=args.hold,
                                                            settle=args.settle, mix=mix)
                    log(f"  {name}: saturation rate {report['saturation'][name]['rate']} cps")
            finally:
                if target is not None:
                    target.stop()
                control.close()
                fs.stop()
    finally:
        if drop is not None:
            drop()
        report["elapsed_s"] = round(time.monotonic() - T0, 1)
        report["table"] = table(report)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        print(report["table"])
        if os.environ.get("FSGUARD_BENCH_KEEP"):
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def sections_table(probe: dict[str, Any], lines: int = 25) -> str:
    """bench/cpuprobe.py's figures, per call: by greenlet, then the costliest functions."""
    out = [f"    fsguard's CPU per call by greenlet and by function (probed: the probe's own cost included; "
           f"{probe['process_cpu_ms']} ms of process CPU in {probe['seconds']} s):"]
    out += [f"    {g['us_per_call']:>8} us  {g['switches']:>6} switches  greenlet {g['kind']}" for g in probe["greenlets"]]
    out += [f"    {s['us_per_call']:>8} us  {s['n']:>6} x {s['us_each']:>7} us  {s['name']}"
            for s in probe["sections"][:lines]]
    out += [f"    gc {gen}: {g['collections']} collections, {g['ms']} ms" for gen, g in probe["gc"].items()]
    return "\n".join(out)


def cpu_ratios(phases: list[dict[str, Any]], anchor: str = "greenswitch") -> list[str]:
    """Each target's CPU per call over the anchor's at the same rate in the same round, fsguard's
    own and FreeSWITCH's, with the median over rounds: what compares when the machine's speed
    drifts between one target and the next."""
    by = {(p.get("round", 1), p["target"], p["rate"]): p for p in phases}
    lines = []
    for target in dict.fromkeys(p["target"] for p in phases if p["target"] != anchor):
        for rate in dict.fromkeys(p["rate"] for p in phases if p["target"] == target):
            own, fs = [], []
            for (round_no, name, r), phase in sorted(by.items()):
                base = by.get((round_no, anchor, rate))
                if name != target or r != rate or base is None:
                    continue
                if phase["target_cpu_ms_per_call"] and base["target_cpu_ms_per_call"]:
                    own.append(phase["target_cpu_ms_per_call"] / base["target_cpu_ms_per_call"])
                if phase["fs_cpu_ms_per_call"] and base["fs_cpu_ms_per_call"]:
                    fs.append(phase["fs_cpu_ms_per_call"] / base["fs_cpu_ms_per_call"])
            if own:
                lines.append(f"CPU per call, {target} / {anchor} at {rate:g} cps: own "
                             f"{statistics.median(own):.2f}x [{', '.join(f'{x:.2f}' for x in own)}], FreeSWITCH "
                             f"{statistics.median(fs):.2f}x [{', '.join(f'{x:.2f}' for x in fs)}]")
    return lines


def table(report: dict[str, Any]) -> str:
    """The figures per target and rate, as docs/performance.rst shows them."""
    head = ["target", "rate", "calls", "decided", "<=1s", "fell back", "abandoned", "stranded", "still up", "p50 ms", "p99 ms",
            "own p99", "target ms/call", "FS ms/call", "apps/call", "events/call", "others %"]
    rounds = any(s.get("round", 1) > 1 for s in report.get("phases", []))
    if rounds:
        head.insert(1, "round")
    rows = [head]
    for s in report.get("phases", []):
        own = (s.get("fsguard_decision_ms") or {}).get("p99")
        rows.append([s["target"], *([str(s.get("round", 1))] if rounds else []), f"{s['rate']:g}", str(s["calls"]), str(s["decided"]), str(s["decided_within_1s"]),
                     str(s["fell_back"]), str(s.get("abandoned_in_challenge", 0)), str(s["stranded"]), str(s["still_up_channels"]),
                     bench.fmt(s["latency_ms"]["p50"]), bench.fmt(s["latency_ms"]["p99"]), bench.fmt(own),
                     bench.fmt(s["target_cpu_ms_per_call"]), bench.fmt(s["fs_cpu_ms_per_call"]),
                     bench.fmt(report.get("apps_per_call", {}).get(s["target"])), bench.fmt(s["events_per_call"]),
                     bench.fmt(s["others_pct_of_a_core"], 0)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += cpu_ratios(report.get("phases", []))
    for name, sat in report.get("saturation", {}).items():
        steps = ", ".join(f"{s['rate']:g} cps {'ok' if s['ok'] else 'FAILED'} (p99 {bench.fmt(s['latency_ms']['p99'])}"
                          f" ms, FS {s['fs_cpu_ms_per_call']} ms/call)" for s in sat["steps"])
        lines.append(f"saturation {name}: {sat['rate'] or '-'} cps  [{steps}]")
    for h in report.get("held", []):
        lines.append(f"held {h['target']}: {h['decided']} routed calls up at once: FreeSWITCH {h['fs_cpu_pct']}% of a "
                     f"core ({h['fs_cpu_us_per_held_call_per_s']} us per held call per second), target "
                     f"{h['target_cpu_pct']}%")
    return "\n".join(lines)


T0 = time.monotonic()

if __name__ == "__main__":
    raise SystemExit(main())
