"""The fsguard benchmark (``make bench``): measure fsguard like a switch is measured.

fsguard runs as its own process (``bench/serve.py``: ``fsguard serve`` plus a stats port) on a
populated database (10,000 list entries, 10,000 customers), and the FreeSWITCH simulator
(``fsguard_testing.fakeswitch``) dials it from separate load-generator processes
(``bench/loadgen.py``). In the same run the same load goes to a bare greenswitch
``OutboundESLServer`` application (``bench/greenswitch_app.py``: connect / myevents / linger /
transfer), so that the figures are ratios on this machine.

Measured, per database:
  * decision latency at a fixed 10 (unloaded), 100 and 300 calls per second: from FreeSWITCH's TCP
    connect to the routing or reject command it receives (p50 / p99 / max), and fsguard's own
    clock for the same calls (``calls.decision_ms``: pipeline start -> instruction written);
  * calls per second at saturation (closed loop), with the CPU used by fsguard, by the load
    generators and by every other process, and fsguard's CPU per call;
and on the first database only:
  * concurrent held calls (routed, followed to their hang-up): resident memory per held call;
  * where the time goes: a py-spy profile of fsguard at 300 calls per second;
  * variants at 100 cps: ``esl.event_format = json``, fsguard as it was before it narrowed its
    events (``allevents`` in bench/serve.py: every myevents event, each parsed whole), and the
    recording consent notice.

Results: a table on stdout, JSON in bench/results/latest.json. ``--docs`` also writes the figures
into docs/performance.rst between its ``bench-results`` markers.

    python bench/run.py                 # the full run, SQLite and PostgreSQL (under ten minutes)
    python bench/run.py --quick         # a smoke run: short phases, 1,000 held calls
    python bench/run.py --db sqlite
    python bench/run.py --soak 100000   # 100,000 calls: fds, greenlets, memory back to baseline
    python bench/run.py --realfs-only   # only the real-FreeSWITCH phase (bench/realfs.py)
    python bench/run.py --no-realfs     # only the simulator phases

When FreeSWITCH is installed, the run starts with the real-FreeSWITCH phase (``bench/realfs.py``,
in its own process): fsguard and the bare greenswitch app through one FreeSWITCH 1.10.12, side
by side; its figures lead docs/performance.rst.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
DOC = ROOT / "docs" / "performance.rst"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_ADMIN = os.environ.get("FSGUARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
FULL_CHAIN = ["screening", "outbound", "verification", "recording", "routing"]

sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- processes and /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


class Server:
    """A server under test in its own process: fsguard or the greenswitch baseline."""

    def __init__(self, name: str, argv: list[str], port: int, *, env: dict[str, str] | None = None,
                 stats_port: int | None = None, metrics_port: int | None = None, log_path: Path | None = None,
                 workdir: Path) -> None:
        self.name, self.port, self.stats_port, self.metrics_port = name, port, stats_port, metrics_port
        self.log_path = log_path or workdir / f"{name}.log"
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=workdir, env={**os.environ, **(env or {})}, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        try:
            wait_port(port, 60, self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{name} did not start: see {self.log_path}\n" + self.tail())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss_kb(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stats(self, full: bool = False) -> dict[str, Any]:
        if self.stats_port is None:
            return {"rss_kb": self.rss_kb(), "fds": self.fds()}
        return self.ask("full" if full else "cheap")

    def ask(self, request: str) -> dict[str, Any]:
        """One request to the stats port (``cheap``, ``full``; fsguard's ``probe-start``...), its JSON answer."""
        with socket.create_connection(("127.0.0.1", self.stats_port or 0), timeout=120) as s:
            s.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def metrics_text(self) -> str | None:
        if self.metrics_port is None:
            return None
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        except OSError:
            return None

    def call_outcomes(self) -> collections.Counter | None:
        """fsguard's own count of calls by outcome (routed, rejected, failed_open, ...) from /metrics."""
        text = self.metrics_text()
        if text is None:
            return None
        counts: collections.Counter = collections.Counter()
        for m in re.finditer(r'^fsguard_calls_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
            outcome = re.search(r'outcome="([^"]*)"', m.group(1))
            counts[outcome.group(1) if outcome else "?"] += int(float(m.group(2)))
        return counts

    def decision_histogram(self) -> dict[float, float] | None:
        """fsguard_decision_seconds buckets from the admin /metrics, when it is on."""
        text = self.metrics_text()
        if text is None:
            return None
        buckets = {}
        for m in re.finditer(r'^fsguard_decision_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', text, re.M):
            buckets[float(m.group(1))] = float(m.group(2))
        return buckets or None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


# ------------------------------------------------------------------------------- the load


@dataclass
class LoadResult:
    """What a phase's load generators saw, merged, with the CPU each side used."""

    label: str
    offered: str
    wall: float = 0.0
    started: int = 0
    completed: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    routes: collections.Counter = field(default_factory=collections.Counter)
    violations: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    loadgen_cpu: float = 0.0
    server_cpu: float = 0.0
    machine_busy: float = 0.0
    lag_max_ms: float = 0.0
    cores: int = os.cpu_count() or 1
    server_ms: list[float] = field(default_factory=list)
    histogram: dict[float, float] | None = None
    #: fsguard's own outcomes for the phase's calls (/metrics): a fail-open looks like a route to
    #: the switch, only fsguard knows the call went through unscreened
    fsguard_outcomes: collections.Counter | None = None

    def pct(self, q: float, values: list[float] | None = None) -> float | None:
        data = sorted(self.latencies if values is None else values)
        if not data:
            return None
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def unanswered(self) -> int:
        """Calls that got no instruction before the simulated switch gave up (10 s): overload."""
        return sum(n for outcome, n in self.outcomes.items() if outcome not in ("routed", "hungup", "caller_hangup"))

    def summary(self) -> dict[str, Any]:
        cps = self.completed / self.wall if self.wall else 0.0
        out: dict[str, Any] = {
            "offered": self.offered, "wall_s": round(self.wall, 2), "started": self.started,
            "completed": self.completed, "cps": round(cps, 1),
            "outcomes": dict(self.outcomes), "actions": dict(self.routes),
            "violations": dict(self.violations), "errors": dict(self.errors),
            "latency_ms": {"p50": self.pct(0.5), "p99": self.pct(0.99), "max": max(self.latencies, default=None),
                           "n": len(self.latencies)},
            "server_cpu_pct": round(100 * self.server_cpu / self.wall, 1) if self.wall else None,
            "loadgen_cpu_pct": round(100 * self.loadgen_cpu / self.wall, 1) if self.wall else None,
            "machine_busy_pct": round(self.machine_busy, 1),
            # what other processes took, in % of one core: a busy machine makes every figure worse
            "other_cpu_pct": round(max(0.0, self.machine_busy * self.cores - 100 * (self.server_cpu + self.loadgen_cpu)
                                       / self.wall), 1) if self.wall else None,
            # per call only when every call got its instruction: past saturation the backlog's CPU
            # runs after the phase and the calls that got none would make the figure look cheap
            "server_cpu_ms_per_call": round(1000 * self.server_cpu / self.completed, 3)
            if self.completed and not self.unanswered else None,
            "unanswered": self.unanswered,
            "loadgen_cpu_ms_per_call": round(1000 * self.loadgen_cpu / self.completed, 3) if self.completed else None,
            "loadgen_lag_max_ms": self.lag_max_ms,
        }
        if self.server_ms:
            out["fsguard_decision_ms"] = {"p50": round(self.pct(0.5, self.server_ms), 3),
                                          "p99": round(self.pct(0.99, self.server_ms), 3),
                                          "max": round(max(self.server_ms), 3), "n": len(self.server_ms)}
        if self.fsguard_outcomes is not None:
            out["fsguard_outcomes"] = dict(self.fsguard_outcomes)
            out["failed_open"] = sum(v for k, v in self.fsguard_outcomes.items() if k.startswith("failed")
                                     or k in ("over_capacity", "shutdown"))
        if self.histogram:
            total = max(self.histogram.values()) or 1
            out["fsguard_decision_seconds_le_5ms_pct"] = round(100 * self.histogram.get(0.005, 0) / total, 2)
        return out


def run_load(label: str, server: Server, specs: list[dict[str, Any]], *, offered: str,
             db_url: str | None = None, monitor: Callable[[float], None] | None = None,
             interval: float = 10.0) -> LoadResult:
    """Run load-generator processes against ``server`` at once and merge what they report.

    ``monitor(elapsed_seconds)`` is called every ``interval`` seconds while they run (the soak
    samples fsguard's memory with it)."""
    result = LoadResult(label, offered)
    started_at = datetime.now(timezone.utc)
    hist0, calls0 = server.decision_histogram(), server.call_outcomes()
    cpu0, (busy0, total0) = server.cpu(), machine_cpu()
    t0 = time.monotonic()
    procs = start_loadgens(specs)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            monitor(time.monotonic() - t0)  # type: ignore[misc]

    watcher = threading.Thread(target=watch, daemon=True) if monitor else None
    if watcher:
        watcher.start()
    outputs = [p.communicate() for p in procs]
    done.set()
    if watcher:
        watcher.join()
    result.wall = time.monotonic() - t0
    for p in procs:
        os.unlink(p.spec_file)
    result.server_cpu = server.cpu() - cpu0
    busy1, total1 = machine_cpu()
    result.machine_busy = 100 * (busy1 - busy0) / max(1, total1 - total0)
    hist1 = server.decision_histogram()
    if hist0 is not None and hist1 is not None:
        result.histogram = {le: hist1.get(le, 0) - hist0.get(le, 0) for le in hist1}
    time.sleep(0.5)  # the canonical line (and its counter) comes once fsguard has seen the hang-up
    calls1 = server.call_outcomes()
    if calls0 is not None and calls1 is not None:
        result.fsguard_outcomes = collections.Counter({k: v - calls0.get(k, 0) for k, v in calls1.items()
                                                       if v - calls0.get(k, 0)})
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
        data = json.loads(out.decode().strip().splitlines()[-1])
        result.started += data["started"]
        result.completed += data["completed"]
        result.outcomes.update(data["outcomes"])
        result.routes.update(data["routes"])
        result.violations.update(data["violations"])
        result.errors.update(data["errors"])
        result.latencies.extend(data["latencies_ms"])
        result.loadgen_cpu += data["cpu"]
        result.lag_max_ms = max(result.lag_max_ms, data["lag_max_ms"])
    if db_url:
        result.server_ms = decision_ms_since(db_url, started_at)
    s = result.summary()
    log(f"  {label}: {s['completed']} calls, {s['cps']} cps, p50 {fmt(s['latency_ms']['p50'])} "
        f"p99 {fmt(s['latency_ms']['p99'])} max {fmt(s['latency_ms']['max'])} ms; server CPU "
        f"{s['server_cpu_pct']}% ({s['server_cpu_ms_per_call']} ms/call), load generator {s['loadgen_cpu_pct']}%"
        + f", other processes {s['other_cpu_pct']}%"
        + (f"; outcomes {dict(result.outcomes)}" if set(result.outcomes) - {"routed", "hungup"} else "")
        + (f"; fsguard failed open {s['failed_open']}" if s.get("failed_open") else ""))
    return result


def start_loadgens(specs: list[dict[str, Any]]) -> list[subprocess.Popen]:
    """One process per spec; the spec (with its thousands of caller numbers) goes in a file."""
    procs = []
    if not AREAS:
        AREAS.extend(area_codes())
    for spec in specs:
        spec.setdefault("areas", AREAS)
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fsguard-load-", delete=False) as f:
            json.dump(spec, f)
        procs.append(subprocess.Popen([PY, str(BENCH / "loadgen.py"), "@" + f.name], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, cwd=ROOT))
        procs[-1].spec_file = f.name  # type: ignore[attr-defined]
    return procs


def decision_ms_since(db_url: str, since: datetime) -> list[float]:
    """fsguard's own decision times (``calls.decision_ms``) of the calls that started since ``since``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT decision_ms FROM calls WHERE started_at >= :since AND decision_ms "
                                     "IS NOT NULL"), {"since": since.replace(tzinfo=None) if "sqlite" in db_url
                                                      else since}).all()
        return [float(r[0]) for r in rows]
    except Exception as exc:  # noqa: BLE001 - a figure we could not read is reported as missing
        log(f"  (could not read calls.decision_ms: {str(exc).splitlines()[0]})")
        return []
    finally:
        engine.dispose()


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------- the database


def make_database(kind: str, workdir: Path) -> tuple[str, Any]:
    """A fresh database and the function that drops it."""
    if kind == "sqlite":
        path = workdir / "fsguard.db"
        return f"sqlite:///{path}", lambda: None
    from sqlalchemy import create_engine, text

    name = f"fsguard_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


def postgres_problem() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1),
                               connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0]


@dataclass
class Population:
    """The numbers written into the database, for the callers' mix."""

    customers: list[str] = field(default_factory=list)
    vips: list[str] = field(default_factory=list)
    blocked_hard: list[str] = field(default_factory=list)
    blocked_soft: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def area_codes() -> list[int]:
    """North American area codes that phonenumbers holds valid (screening challenges invalid numbers)."""
    import phonenumbers

    return [a for a in range(200, 1000) if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{a}5550123"))]


AREAS: list[int] = []


def number(i: int, exchange: int) -> str:
    """A valid North American number, distinct for each i below 10,000 and exchange."""
    import phonenumbers

    if not AREAS:
        AREAS.extend(area_codes())
    for step in range(len(AREAS)):
        area = AREAS[(i * 7 + step) % len(AREAS)]
        candidate = f"+1{area}{exchange}{i % 10000:04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate)):
            return candidate
    raise ValueError(f"no valid number for {i} in exchange {exchange}")


def populate(db_url: str, entries: int, customers_count: int) -> Population:
    """10,000 list entries and 10,000 customers, written through fsguard's own service modules."""
    from fsguard.config import DatabaseSettings
    from fsguard.store.db import Database

    pop = Population()
    t0 = time.monotonic()
    db = Database(DatabaseSettings(url=db_url))
    try:
        try:
            from fsguard.rules import lists
        except ImportError:
            lists = None
            pop.notes.append("fsguard.rules.lists is not there yet: no list entries written")
        if lists is not None:
            specs = []
            for i in range(entries):
                n = number(i, 556)
                if i < 50:
                    specs.append(lists.make_spec(f"+1{900 + i % 10}{i:02d}*", kind="block", level=8,
                                                 reason="premium-rate prefix"))
                    continue
                share = i % 20
                if share < 12:
                    specs.append(lists.make_spec(n, kind="block", level=8, reason="reported fraud"))
                    pop.blocked_hard.append(n)
                elif share < 16:
                    specs.append(lists.make_spec(n, kind="block", level=3, reason="nuisance"))
                    pop.blocked_soft.append(n)
                elif share < 19:
                    specs.append(lists.make_spec(n, kind="allow", reason="partner"))
                    pop.allowed.append(n)
                else:
                    specs.append(lists.make_spec(number(i, 557), kind="dno", reason="our inbound-only line"))
            with db.begin() as session:
                lists.import_entries(session, specs)
        try:
            from fsguard.rules import customers
        except ImportError:
            customers = None
            pop.notes.append("fsguard.rules.customers is not there yet: no customers written")
        if customers is not None:
            import io

            rows = ["number,name,account,vip,queue,region"]
            for i in range(customers_count):
                n = number(i, 558)
                vip = i % 10 == 0
                rows.append(f"{n},Customer {i},ACC{i:06d},{'yes' if vip else 'no'},{'vip' if vip else ''},"
                            f"{'east' if i % 2 else 'west'}")
                (pop.vips if vip else pop.customers).append(n)
            with db.begin() as session:
                imported = customers.import_csv(session, io.StringIO("\n".join(rows) + "\n"), "US")
                if imported.errors:
                    raise RuntimeError(f"customer import failed: {imported.errors[:3]}")
    finally:
        db.dispose()
    pop.seconds = time.monotonic() - t0
    return pop


def caller_mix(pop: Population) -> list[tuple[float, list[str]]]:
    """Who calls: 40 % customers (a tenth of them VIPs), 5 % on the allow list, 5 % hard-blocked,
    the rest strangers. Soft-blocked callers (who would be challenged) are left out of the latency
    figures: their decision includes the IVR's seconds."""
    mix = []
    if pop.customers:
        mix.append((0.36, pop.customers))
    if pop.vips:
        mix.append((0.04, pop.vips))
    if pop.allowed:
        mix.append((0.05, pop.allowed))
    if pop.blocked_hard:
        mix.append((0.05, pop.blocked_hard))
    return mix


# ------------------------------------------------------------------------------ fsguard


def available_stages(wanted: list[str]) -> tuple[list[str], list[str]]:
    """The stages of ``wanted`` that this checkout has, and those it does not have yet."""
    from importlib import import_module

    from fsguard.call.pipeline import STAGES

    have, missing = [], []
    for name in wanted:
        try:
            module, _, cls = STAGES[name].partition(":")
            getattr(import_module(module), cls)
            have.append(name)
        except (KeyError, ImportError, AttributeError):
            missing.append(name)
    return have, missing


def write_config(path: Path, *, port: int, http_port: int, db_url: str, stages: list[str], event_format: str,
                 pool_size: int, consent: bool, extra: str = "", esl_extra: str = "",
                 recording_dir: str | None = None) -> None:
    path.write_text(f"""# written by bench/run.py
[esl]
listen = "127.0.0.1:{port}"
max_calls = 20000
event_format = "{event_format}"
command_timeout = 10.0
{esl_extra}
[http]
listen = "127.0.0.1:{http_port}"
enabled = true

[database]
url = "{db_url}"
pool_size = {pool_size}

[logging]
level = "info"
format = "json"

[node]
id = "bench"

[policy]
stages = {json.dumps(stages)}

[recording]
dir = "{recording_dir or path.parent / 'recordings'}"
# with consent, every call is answered and hears the notice before it is routed: its decision
# time is the notice's length, not fsguard's (measured apart, as the "consent notice" variant)
consent = {'true' if consent else 'false'}
""" + extra)


def start_fsguard(workdir: Path, db_url: str, stages: list[str], *, event_format: str = "plain",
                  variant: str = "", consent: bool = False, tag: str = "fsguard", extra: str = "",
                  port: int | None = None, esl_extra: str = "", recording_dir: str | None = None,
                  environment: dict[str, str] | None = None) -> Server:
    """fsguard serving on ``port`` (a free one by default); ``extra`` is TOML appended to its
    configuration, ``esl_extra`` lines added to its ``[esl]`` table, ``environment`` its
    ``FSGUARD_*`` overrides."""
    port, http_port, stats_port = port or free_port(), free_port(), free_port()
    config = workdir / f"{tag}.toml"
    write_config(config, port=port, http_port=http_port, db_url=db_url, stages=stages, event_format=event_format,
                 pool_size=20, consent=consent, extra=extra, esl_extra=esl_extra, recording_dir=recording_dir)
    env = {"FSGUARD_BENCH_STATS": str(stats_port), "FSGUARD_BENCH_VARIANT": variant,
           "PYTHONPATH": str(ROOT), **(environment or {})}
    server = Server(tag, [PY, str(BENCH / "serve.py"), "-c", str(config), "serve"], port, env=env,
                    stats_port=stats_port, metrics_port=http_port, workdir=workdir)
    wait_port(stats_port, 10, server.proc)
    return server


def upgrade(db_url: str, workdir: Path) -> None:
    config = workdir / "upgrade.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[http]\nenabled = false\n')
    done = subprocess.run([PY, "-m", "fsguard", "-c", str(config), "db", "upgrade"], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fsguard db upgrade failed: {done.stderr.strip()}")


# --------------------------------------------------------------------------- the phases


@dataclass
class Plan:
    """How long and how hard each phase pushes."""

    rate_seconds: float
    saturation_seconds: float
    saturation_concurrency: int
    held: int
    held_ramp_cps: float
    profile_seconds: float
    warmup_calls: int
    variant_seconds: float
    #: real seconds per channel second: FreeSWITCH's 20 ms media tick is 20 us, a prompt 0.2 ms,
    #: so the latencies are fsguard's, not the simulated switch's
    time_scale: float = 0.001
    #: channel seconds a call lasts after it is routed (0.5 s real)
    talk_time: float = 500.0

    @classmethod
    def full(cls) -> Plan:
        return cls(rate_seconds=15, saturation_seconds=15, saturation_concurrency=120, held=5000, held_ramp_cps=250,
                   profile_seconds=12, warmup_calls=300, variant_seconds=10)

    @classmethod
    def quick(cls) -> Plan:
        return cls(rate_seconds=5, saturation_seconds=5, saturation_concurrency=120, held=1000, held_ramp_cps=250,
                   profile_seconds=5, warmup_calls=100, variant_seconds=4)


def rate_specs(server: Server, rate: float, seconds: float, plan: Plan, mix: Any, *, seed: int,
               workers: int | None = None) -> list[dict[str, Any]]:
    """Split a rate over enough load generators (about 150 calls per second each)."""
    workers = workers or max(1, int(rate // 151) + 1)
    return [{"target": ["127.0.0.1", server.port], "mode": "rate", "rate": rate / workers, "duration": seconds,
             "offset": i / rate, "time_scale": plan.time_scale, "talk_time": plan.talk_time, "mix": mix,
             "seed": seed * 100 + i} for i in range(workers)]


def closed_specs(server: Server, concurrency: int, seconds: float, plan: Plan, mix: Any, *, seed: int,
                 workers: int = 2) -> list[dict[str, Any]]:
    return [{"target": ["127.0.0.1", server.port], "mode": "closed", "concurrency": concurrency // workers,
             "duration": seconds, "time_scale": plan.time_scale, "talk_time": 0.0, "mix": mix,
             "seed": seed * 100 + i} for i in range(workers)]


def latency_and_saturation(server: Server, plan: Plan, mix: Any, *, db_url: str | None, label: str,
                           rates: tuple[int, ...] = (100, 300), saturation: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate in rates:
        out[f"rate_{rate}"] = run_load(f"{label} {rate} cps", server,
                                       rate_specs(server, rate, plan.rate_seconds, plan, mix, seed=rate),
                                       offered=f"{rate} cps", db_url=db_url).summary()
    if saturation:
        out["saturation"] = run_load(f"{label} saturation", server,
                                     closed_specs(server, plan.saturation_concurrency, plan.saturation_seconds, plan,
                                                  mix, seed=7),
                                     offered=f"closed loop, {plan.saturation_concurrency} channels",
                                     db_url=db_url).summary()
    return out


#: (name, esl.event_format, bench/serve.py experiment, recording.consent): each measured at 100 cps
VARIANTS = [("json events", "json", "", False), ("all events", "plain", "allevents", False),
            ("consent notice", "plain", "", True)]


def variants(workdir: Path, db_url: str, stages: list[str], plan: Plan, mix: Any) -> dict[str, Any]:
    """The same chain with one thing changed, at 100 calls per second: CPU per call and latency."""
    out: dict[str, Any] = {}
    short = replace_plan(plan, rate_seconds=plan.variant_seconds, warmup_calls=min(plan.warmup_calls, 200))
    for name, event_format, experiment, consent in VARIANTS:
        log(f"variant: {name}")
        server = start_fsguard(workdir, db_url, stages, event_format=event_format, variant=experiment,
                               consent=consent, tag=f"fsguard-{name.replace(' ', '-').replace('+', 'and')}")
        try:
            warm_up(server, short, mix)
            out[name] = latency_and_saturation(server, short, mix, db_url=db_url, label=name, rates=(100,),
                                               saturation=False)
        finally:
            server.stop()
    return out


def warm_up(server: Server, plan: Plan, mix: Any) -> None:
    run_load("warm-up", server, rate_specs(server, 100, plan.warmup_calls / 100, plan, mix, seed=1),
             offered="100 cps")


def held_calls(server: Server, plan: Plan, mix: Any, ramp_cps: float | None = None) -> dict[str, Any]:
    """Ramp up to ``plan.held`` calls routed and followed at once; resident memory per held call.

    The ramp goes at ``ramp_cps`` (at most the plan's; run.py passes 70 % of the measured saturation,
    so that the calls are decided as they come rather than queued)."""
    n = plan.held
    ramp = min(plan.held_ramp_cps, ramp_cps or plan.held_ramp_cps)
    ramp_seconds = n / ramp
    hold_real = ramp_seconds + 15.0
    before = server.stats(full=True)
    cpu_before = server.cpu()
    workers = 2
    specs = [{"target": ["127.0.0.1", server.port], "mode": "calls", "rate": ramp / workers, "calls": n // workers,
              "offset": i / ramp, "time_scale": plan.time_scale, "talk_time": hold_real / plan.time_scale,
              "mix": mix, "seed": 900 + i} for i in range(workers)]
    procs = start_loadgens(specs)
    peak: dict[str, Any] = {"held": 0}
    deadline = time.monotonic() + ramp_seconds + 12
    while time.monotonic() < deadline:
        time.sleep(0.5)
        st = server.stats()
        if st["held"] >= peak["held"]:
            peak = st
        if st["held"] >= n or (st["held"] + st["deciding"] >= n and st["deciding"] == 0):
            break
    # with every call held, measure memory and the idle cost of following them
    time.sleep(1.0)
    at_peak = server.stats()
    idle_cpu0, idle_t0 = server.cpu(), time.monotonic()
    time.sleep(2.0)
    idle_cpu = (server.cpu() - idle_cpu0) / (time.monotonic() - idle_t0)
    at_peak_full = server.stats(full=True)
    outputs = [p.communicate() for p in procs]
    for p in procs:
        os.unlink(p.spec_file)
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"held-calls load generator failed: {err.decode(errors='replace')[-1500:]}")
    outcomes: collections.Counter = collections.Counter()
    for out, _ in outputs:
        outcomes.update(json.loads(out.decode().strip().splitlines()[-1])["outcomes"])
    time.sleep(1.0)
    after = server.stats(full=True)
    held = max(at_peak["held"], peak["held"])
    rss_delta_kb = at_peak["rss_kb"] - before["rss_kb"]
    result = {
        "target_held": n, "held": held, "ramp_cps": ramp, "outcomes": dict(outcomes),
        "rss_before_mb": round(before["rss_kb"] / 1024, 1), "rss_held_mb": round(at_peak["rss_kb"] / 1024, 1),
        "rss_after_mb": round(after["rss_kb"] / 1024, 1),
        "kb_per_held_call": round(rss_delta_kb / max(1, held), 1),
        "projected_rss_5000_mb": round((before["rss_kb"] + rss_delta_kb / max(1, held) * 5000) / 1024, 1),
        "idle_cpu_pct_while_held": round(100 * idle_cpu, 2),
        "greenlets": {"before": before.get("greenlets"), "held": at_peak_full.get("greenlets"),
                      "after": after.get("greenlets")},
        "fds": {"before": before["fds"], "held": at_peak["fds"], "after": after["fds"]},
        "sessions_after": after.get("sessions"), "server_cpu_s": round(server.cpu() - cpu_before, 2),
    }
    log(f"  held calls: {held} held, RSS {result['rss_before_mb']} -> {result['rss_held_mb']} MB "
        f"({result['kb_per_held_call']} KB per held call), idle CPU while held {result['idle_cpu_pct_while_held']}%, "
        f"after: RSS {result['rss_after_mb']} MB, greenlets {after.get('greenlets')}, fds {after['fds']}")
    return result


def profile(server: Server, plan: Plan, mix: Any, workdir: Path) -> dict[str, Any]:
    """py-spy on fsguard at 300 calls per second: where the time goes."""
    pyspy = shutil.which("py-spy", path=str(Path(PY).parent) + os.pathsep + os.environ.get("PATH", ""))
    if not pyspy:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    raw = workdir / "profile.txt"
    spy = subprocess.Popen([pyspy, "record", "-p", str(server.pid), "-d", str(int(plan.profile_seconds)), "-r", "250",
                            "-f", "raw", "-o", str(raw)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    run_load("profiled 300 cps", server, rate_specs(server, 300, plan.profile_seconds - 2, plan, mix, seed=3),
             offered="300 cps")
    _, err = spy.communicate(timeout=120)
    if not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"}
    from profile_summary import summarise

    summary = summarise(raw.read_text())
    shutil.copy(raw, RESULTS / "profile-raw.txt")
    return summary


# ------------------------------------------------------------------------------- the soak


def soak(calls: int, kind: str, stages: list[str], workdir: Path, rate: float) -> dict[str, Any]:
    """``calls`` calls at a sustainable rate: fds, greenlets and memory must come back to baseline.

    The rate is ``rate`` or 70 % of a short saturation measurement, whichever is lower: a soak
    checks what a long run leaves behind, not what an overload does (that is the saturation row).
    """
    db_url, drop = make_database(kind, workdir)
    try:
        upgrade(db_url, workdir)
        pop = populate(db_url, 10_000, 10_000)
        # Every caller is one of a few thousand numbers, all seen in the soak's first minute or two:
        # the caches of parsed numbers (up to 65,536 each) then stop growing, so that memory
        # growing after that is a leak, not a cache meeting new callers.
        mix = [(share, numbers[:1000]) for share, numbers in caller_mix(pop)]
        # The pool of 2,000 strangers calls each number ~25 times in the soak's few minutes: with
        # the default flood limits (10 an hour) the last third would turn into a flood of
        # auto-blocks and challenges, a different load from the first two thirds. The soak checks
        # what a steady load leaves behind; the flood path has its tests.
        server = start_fsguard(workdir, db_url, stages, tag=f"fsguard-soak-{kind}",
                               extra="\n[screening]\nflood_hour = 1000000\nflood_day = 1000000\n")
        try:
            plan = Plan.full()
            warm_up(server, replace_plan(plan, warmup_calls=1000), mix)
            probe = run_load("capacity probe", server, closed_specs(server, 120, 6, plan, mix, seed=9),
                             offered="closed loop").summary()
            rate = min(rate, max(10.0, 0.7 * probe["cps"]))
            time.sleep(3)
            base = server.stats(full=True)
            log(f"  soak baseline: RSS {base['rss_kb'] / 1024:.1f} MB, fds {base['fds']}, greenlets "
                f"{base['greenlets']}, sessions {base['sessions']}; {calls} calls at {rate:.0f} cps "
                f"(about {calls / rate / 60:.0f} min)")
            # strangers from a pool of 2,000 numbers (see the mix above)
            specs = [{"target": ["127.0.0.1", server.port], "mode": "calls", "rate": rate / 2, "calls": calls // 2,
                      "offset": i / rate, "time_scale": plan.time_scale, "talk_time": plan.talk_time, "mix": mix,
                      "stranger_pool": 2000, "seed": 500 + i} for i in range(2)]
            samples: list[dict[str, Any]] = []

            def sample(elapsed: float) -> None:
                st = server.stats()
                samples.append({"s": round(elapsed), "calls": int(elapsed * rate), "rss_mb": round(st["rss_kb"] / 1024, 1),
                                "fds": st["fds"], "deciding": st["deciding"], "held": st["held"]})

            load = run_load(f"soak {calls} calls", server, specs, offered=f"{calls} calls at {rate:.0f} cps",
                            db_url=db_url, monitor=sample, interval=max(5.0, calls / rate / 60)).summary()
            time.sleep(3)
            end = server.stats(full=True)
            checks = {
                "fds": (base["fds"], end["fds"], end["fds"] <= base["fds"]),
                "greenlets": (base["greenlets"], end["greenlets"], end["greenlets"] <= base["greenlets"]),
                "sessions": (base["sessions"], end["sessions"], end["sessions"] == 0),
                "db_checkedout": (base["db_checkedout"], end["db_checkedout"], end["db_checkedout"] == 0),
                # memory: caches of parsed numbers fill up (about 0.65 KB per distinct caller, up to
                # 65,536) and the allocator keeps what a burst took, so the test is that growth
                # stops: the second half may add at most a fifth of what the first half did (a
                # leak grows the same in both halves)
                "rss_mb": (round(base["rss_kb"] / 1024, 1), round(end["rss_kb"] / 1024, 1), rss_settles(
                    base["rss_kb"] / 1024, samples, end["rss_kb"] / 1024)),
                "calls_failed": (0, sum(v for k, v in load["outcomes"].items() if k not in ("routed", "hungup")),
                                 all(k in ("routed", "hungup") for k in load["outcomes"])),
            }
            for name, (b, e, ok) in checks.items():
                log(f"  {name}: {b} -> {e} {'ok' if ok else 'NOT BACK TO BASELINE'}")
            mid = samples[len(samples) // 2]["rss_mb"] if samples else None
            log(f"  RSS: {base['rss_kb'] / 1024:.1f} MB at the start, {mid} MB half-way, "
                f"{end['rss_kb'] / 1024:.1f} MB at the end")
            return {"db": kind, "calls": calls, "rate": rate, "load": load, "baseline": base, "end": end,
                    "samples": samples,
                    "checks": {k: {"before": b, "after": e, "ok": ok} for k, (b, e, ok) in checks.items()},
                    "ok": all(ok for _, _, ok in checks.values())}
        finally:
            server.stop()
    finally:
        drop()


def rss_settles(base_mb: float, samples: list[dict[str, Any]], end_mb: float) -> bool:
    """True when memory stopped growing: the second half of the soak added at most a fifth of what
    the first half did, or less than 10 MB."""
    if len(samples) < 4:
        return end_mb <= base_mb * 1.10 + 10
    mid_mb = samples[len(samples) // 2]["rss_mb"]
    first, second = mid_mb - base_mb, end_mb - mid_mb
    return second < 10 or second <= 0.2 * max(first, 0.0)


def replace_plan(plan: Plan, **changes: Any) -> Plan:
    from dataclasses import replace

    return replace(plan, **changes)


# ------------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import gevent
    import sqlalchemy

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "gevent": gevent.__version__,
            "sqlalchemy": sqlalchemy.__version__, "kernel": platform.release()}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure and whether it is met."""
    out = []
    gs = report.get("greenswitch", {})
    gs_sat = gs.get("saturation", {})
    for db, run in report.get("fsguard", {}).items():
        sat = run.get("saturation", {})
        if sat and gs_sat:
            ratio = sat["cps"] / gs_sat["cps"] if gs_sat.get("cps") else None
            cpu_ratio = (gs_sat["server_cpu_ms_per_call"] / sat["server_cpu_ms_per_call"]
                         if sat.get("server_cpu_ms_per_call") and gs_sat.get("server_cpu_ms_per_call") else None)
            out.append({"target": f"saturated throughput >= 2x greenswitch ({db})",
                        "figure": f"{sat['cps']} vs {gs_sat['cps']} cps = {fmt(ratio)}x; CPU per call "
                                  f"{sat['server_cpu_ms_per_call']} vs {gs_sat['server_cpu_ms_per_call']} ms = "
                                  f"{fmt(cpu_ratio)}x",
                        "met": bool(ratio and ratio >= 2), "at_least_1x": bool(ratio and ratio >= 1)})
        r100 = run.get("rate_100", {})
        if r100:
            p99 = r100["latency_ms"]["p99"]
            out.append({"target": f"p99 decision latency at 100 cps < 5 ms ({db})",
                        "figure": f"p99 {fmt(p99)} ms (fsguard's own clock: "
                                  f"{fmt(r100.get('fsguard_decision_ms', {}).get('p99'))} ms)",
                        "met": p99 is not None and p99 < 5})
    if gs.get("rate_100"):
        p99 = gs["rate_100"]["latency_ms"]["p99"]
        out.append({"target": "greenswitch p99 at 100 cps > 100 ms (the baseline's)", "figure": f"{fmt(p99)} ms",
                    "met": p99 is not None and p99 > 100})
    held = report.get("held")
    if held:
        out.append({"target": "5,000 concurrent held calls under 1 GiB resident",
                    "figure": f"{held['held']} held at {held['rss_held_mb']} MB ({held['kb_per_held_call']} KB each; "
                              f"5,000 projected {held['projected_rss_5000_mb']} MB)",
                    "met": held["held"] >= 5000 and held["rss_held_mb"] < 1024})
    return out


def table(report: dict[str, Any]) -> str:
    rows = [["target", "db", "phase", "calls", "cps", "no instr.", "fail-open", "p50 ms", "p99 ms", "max ms",
             "fsguard p99", "srv CPU %", "srv ms/call", "loadgen %", "others %"]]

    def add(target: str, db: str, phase: str, s: dict[str, Any]) -> None:
        lat = s["latency_ms"]
        rows.append([target, db, phase, str(s["completed"]), fmt(s["cps"], 1), str(s.get("unanswered", 0)),
                     fmt(s.get("failed_open")), fmt(lat["p50"]), fmt(lat["p99"]),
                     fmt(lat["max"]), fmt(s.get("fsguard_decision_ms", {}).get("p99")), fmt(s["server_cpu_pct"], 0),
                     fmt(s["server_cpu_ms_per_call"]), fmt(s["loadgen_cpu_pct"], 0), fmt(s["other_cpu_pct"], 0)])

    for db, run in report.get("fsguard", {}).items():
        for phase in ("rate_10", "rate_100", "rate_300", "saturation"):
            if phase in run:
                add("fsguard", db, phase.replace("rate_", "") + (" cps" if "rate" in phase else ""), run[phase])
    for name, run in report.get("variants", {}).items():
        for phase in ("rate_100", "rate_300", "saturation"):
            if phase in run:
                add(f"fsguard {name}", "sqlite", phase.replace("rate_", "") + (" cps" if "rate" in phase else ""),
                    run[phase])
    for phase in ("rate_100", "rate_300", "saturation"):
        if phase in report.get("greenswitch", {}):
            add("greenswitch", "-", phase.replace("rate_", "") + (" cps" if "rate" in phase else ""),
                report["greenswitch"][phase])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    held = report.get("held")
    if held:
        lines += ["", f"held calls: {held['held']} routed and followed at once; RSS {held['rss_before_mb']} MB -> "
                      f"{held['rss_held_mb']} MB ({held['kb_per_held_call']} KB per held call); idle CPU while "
                      f"holding {held['idle_cpu_pct_while_held']}%; after they ended: RSS {held['rss_after_mb']} MB, "
                      f"greenlets {held['greenlets']['before']} -> {held['greenlets']['held']} -> "
                      f"{held['greenlets']['after']}, fds {held['fds']['before']} -> {held['fds']['held']} -> "
                      f"{held['fds']['after']}"]
    prof = report.get("profile")
    if prof and "categories" in prof:
        lines += ["", "where fsguard's time goes at 300 cps (py-spy, % of samples): " + ", ".join(
            f"{k} {v}%" for k, v in prof["categories"].items()),
            "  by fsguard function (inclusive): " + ", ".join(
                f"{f.split(' (')[0]} {p}%" for f, p in prof.get("top_fsguard_inclusive", [])[2:14])]
    lines += ["", "targets:"]
    for t in report.get("targets", []):
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['figure']}")
    return "\n".join(lines)


def write_docs(report: dict[str, Any]) -> None:
    """Put the table into docs/performance.rst between its markers."""
    if not DOC.exists():
        return
    text = DOC.read_text()
    start, end = ".. bench-results-start", ".. bench-results-end"
    if start not in text or end not in text:
        log(f"  {DOC} has no {start} / {end} markers: not updated")
        return
    body = (f"{start}\n\nRun of {report['started']} on {report['machine']['cpu'] or 'this machine'} "
            f"({report['machine']['cores']} cores), stages {', '.join(report['stages'])}:\n\n::\n\n"
            + "\n".join("    " + line for line in table(report).splitlines()) + f"\n\n{end}")
    text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    realfs = report.get("realfs") or {}
    rstart, rend = ".. realfs-results-start", ".. realfs-results-end"
    if realfs.get("table") and rstart in text and rend in text:
        rbody = (f"{rstart}\n\nRun of {realfs['started']}, FreeSWITCH {realfs.get('freeswitch', {}).get('version', '')}, "
                 f"calls held {realfs['hold_s']:g} s, {realfs['db']}:\n\n::\n\n"
                 + "\n".join("    " + line for line in realfs["table"].splitlines()) + f"\n\n{rend}")
        text = text[:text.index(rstart)] + rbody + text[text.index(rend) + len(rend):]
    DOC.write_text(text)
    log(f"  figures written to {DOC}")


# ------------------------------------------------------------------------ real FreeSWITCH


def real_freeswitch(quick: bool) -> dict[str, Any] | None:
    """bench/realfs.py in its own process (it runs under gevent): fsguard and greenswitch through
    a real FreeSWITCH, when one is installed. Its figures lead docs/performance.rst."""
    from fsguard_testing.freeswitch import find_freeswitch

    if find_freeswitch() is None:
        log("FreeSWITCH is not installed (../shared/freeswitch/install): no real-FreeSWITCH phase")
        return None
    out = RESULTS / "realfs.json"
    argv = [PY, str(BENCH / "realfs.py"), "--out", str(out)]
    if quick:
        argv += ["--rates", "30,100", "--calls", "300", "--ladder", "30,60,100", "--ladder-seconds", "5",
                 "--population", "2000"]
    log("real FreeSWITCH: " + " ".join(argv[1:]))
    done = subprocess.run(argv, cwd=ROOT)
    if done.returncode != 0 or not out.exists():
        log(f"  the real-FreeSWITCH phase failed ({done.returncode})")
        return {"failed": done.returncode}
    return json.loads(out.read_text())


def realfs_targets(realfs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 15's targets, read from the real-FreeSWITCH phase (the 100 cps row: 1,000 calls in a
    full run, 300 with --quick)."""
    if not realfs or "phases" not in realfs:
        return []
    out = []
    by = {(p["target"], p["rate"]): p for p in realfs["phases"]}
    fg, gs = by.get(("fsguard", 100.0)), by.get(("greenswitch", 100.0))
    if fg:
        clean = fg["decided"] == fg["calls"] and not fg["stranded"] and not fg["still_up_channels"]
        out.append({"target": "real FreeSWITCH, 100 cps: every call decided, none stranded, none left up",
                    "figure": f"{fg['decided']}/{fg['calls']} decided, {fg['stranded']} stranded, "
                              f"{fg['still_up_channels']} channels up", "met": clean})
    if fg and gs:
        p_f, p_g = fg["latency_ms"]["p99"], gs["latency_ms"]["p99"]
        out.append({"target": "real FreeSWITCH, 100 cps: fsguard's p99 no worse than greenswitch's",
                    "figure": f"{fmt(p_f)} vs {fmt(p_g)} ms", "met": p_f is not None and p_g is not None
                    and p_f <= p_g})
        ratio = fg["fs_cpu_ms_per_call"] / gs["fs_cpu_ms_per_call"] if gs["fs_cpu_ms_per_call"] else None
        out.append({"target": "real FreeSWITCH, 100 cps: FreeSWITCH CPU per call <= 1.5x greenswitch's",
                    "figure": f"{fg['fs_cpu_ms_per_call']} vs {gs['fs_cpu_ms_per_call']} ms = {fmt(ratio)}x",
                    "met": ratio is not None and ratio <= 1.5})
        out.append({"target": "real FreeSWITCH, 100 cps: fsguard's own CPU per call <= greenswitch's",
                    "figure": f"{fg['target_cpu_ms_per_call']} vs {gs['target_cpu_ms_per_call']} ms",
                    "met": fg["target_cpu_ms_per_call"] <= gs["target_cpu_ms_per_call"]})
    sat = realfs.get("saturation", {})
    if "fsguard" in sat and "greenswitch" in sat:
        f, g = sat["fsguard"]["rate"], sat["greenswitch"]["rate"]
        out.append({"target": "real FreeSWITCH: fsguard's saturation rate >= greenswitch's",
                    "figure": f"{f or 'below the ladder'} vs {g or 'below the ladder'} cps",
                    "met": bool(f) and (not g or f >= g)})
    return out


# ------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases and 1,000 held calls (a smoke run)")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--soak", type=int, metavar="N", help="only the soak: N calls, then check the baseline")
    parser.add_argument("--soak-rate", type=float, default=250.0, metavar="CPS",
                        help="the soak's rate (at most 70%% of the measured capacity; default 250)")
    parser.add_argument("--stages", default=",".join(FULL_CHAIN),
                        help="policy.stages (default: the full inbound chain, as far as this checkout has it)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the greenswitch baseline")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--docs", action="store_true", help="write the figures into docs/performance.rst")
    parser.add_argument("--no-realfs", action="store_true",
                        help="skip the real-FreeSWITCH phase (bench/realfs.py; run when FreeSWITCH is installed)")
    parser.add_argument("--realfs-only", action="store_true", help="only the real-FreeSWITCH phase")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH))
    stages, missing = available_stages([s.strip() for s in args.stages.split(",") if s.strip()])
    if missing:
        log(f"stages not in this checkout (left out): {', '.join(missing)}")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in kinds:
        problem = postgres_problem()
        if problem:
            log(f"PostgreSQL unreachable ({PG_ADMIN}: {problem}): SQLite only")
            kinds = [k for k in kinds if k != "postgresql"]
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="fsguard-bench-"))
    report: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine(), "stages": stages, "stages_missing": missing,
                              "quick": args.quick, "fsguard": {}, "notes": []}
    load = os.getloadavg()[0]
    report["machine"]["loadavg_at_start"] = round(load, 2)
    if load > 0.5:
        log(f"the machine is busy (load average {load:.2f}): the figures will be worse than on a quiet machine; "
            "the 'others %' column says how much CPU other processes took")
    try:
        if args.soak:
            report["soak"] = soak(args.soak, kinds[0], stages, workdir, args.soak_rate)
            out = RESULTS / "soak.json"
            out.write_text(json.dumps(report, indent=2, default=str))
            log(f"soak {'passed' if report['soak']['ok'] else 'FAILED'} in {time.monotonic() - began:.0f} s; "
                f"JSON in {out}")
            return 0 if report["soak"]["ok"] else 1
        plan = Plan.quick() if args.quick else Plan.full()
        report["plan"] = plan.__dict__
        if not args.no_realfs:
            report["realfs"] = real_freeswitch(args.quick)
        if args.realfs_only:
            kinds = []
            args.no_baseline = True
        for i, kind in enumerate(kinds):
            log(f"fsguard on {kind}: creating and populating the database")
            db_url, drop = make_database(kind, workdir)
            try:
                upgrade(db_url, workdir)
                pop = populate(db_url, 10_000, 10_000)
                report.setdefault("population", {})[kind] = {
                    "seconds": round(pop.seconds, 1), "customers": len(pop.customers) + len(pop.vips),
                    "list_entries": 10_000 if not any("lists" in n for n in pop.notes) else 0, "notes": pop.notes}
                for note in pop.notes:
                    log(f"  note: {note}")
                mix = caller_mix(pop)
                server = start_fsguard(workdir, db_url, stages, tag=f"fsguard-{kind}")
                try:
                    warm_up(server, plan, mix)
                    report["fsguard"][kind] = latency_and_saturation(server, plan, mix, db_url=db_url,
                                                                     label=f"fsguard/{kind}", rates=(10, 100, 300))
                    if i == 0:
                        # callers the caches already know: the figure is memory per held call, not
                        # per new number (numbers.parse keeps up to 65,536 parsed numbers, ~330 B each)
                        sat_cps = report["fsguard"][kind].get("saturation", {}).get("cps") or plan.held_ramp_cps
                        report["held"] = held_calls(server, plan, [(1.0, pop.customers + pop.vips)]
                                                    if pop.customers else mix, ramp_cps=max(plan.held / 60, 0.7 * sat_cps))
                        if not args.no_profile:
                            report["profile"] = profile(server, plan, mix, workdir)
                    with open(server.log_path, "rb") as f:
                        report["fsguard"][kind]["log_lines"] = sum(1 for _ in f)
                finally:
                    server.stop()
                if i == 0:
                    report["variants"] = variants(workdir, db_url, stages, plan, mix)
            finally:
                drop()
        if not args.no_baseline:
            log("greenswitch baseline")
            port = free_port()
            gs = Server("greenswitch", [PY, str(BENCH / "greenswitch_app.py"), "127.0.0.1", str(port)], port,
                        workdir=workdir)
            try:
                mix = caller_mix(Population())
                warm_up(gs, plan, mix)
                report["greenswitch"] = latency_and_saturation(gs, plan, mix, db_url=None, label="greenswitch")
            finally:
                gs.stop()
        report["targets"] = targets(report) + realfs_targets(report.get("realfs"))
        report["elapsed_s"] = round(time.monotonic() - began, 1)
        out = RESULTS / "latest.json"
        out.write_text(json.dumps(report, indent=2, default=str))
        stamp = RESULTS / f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        shutil.copy(out, stamp)
        if report.get("realfs") and "table" in report["realfs"]:
            print("through a real FreeSWITCH:\n" + report["realfs"]["table"] + "\n")
        if report["fsguard"] or report.get("greenswitch"):
            print(table(report))
        else:
            print("targets:\n" + "\n".join(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['figure']}"
                                            for t in report["targets"]))
        print(f"\n{report['elapsed_s']:.0f} s; JSON in {out}")
        if args.docs:
            write_docs(report)
        return 0
    finally:
        if os.environ.get("FSGUARD_BENCH_KEEP"):
            log(f"kept {workdir} (FSGUARD_BENCH_KEEP): fsguard's logs and the SQLite database are there")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
