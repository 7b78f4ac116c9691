"""One load-generator process: the FreeSWITCH simulator dialling a target at a fixed rate, in a
closed loop, or up to a number of calls held at once.

Run by ``bench/run.py`` (several at once when one process cannot make the load). Takes one JSON
argument (or ``@file`` holding it) and prints one JSON line: what the calls did, their decision latencies as FreeSWITCH
would see them (TCP connect -> first routing or hang-up command received), and the CPU this
process used, so that the report can tell a slow target from a slow load generator.

    python bench/loadgen.py '{"target": ["127.0.0.1", 8084], "mode": "rate", "rate": 100, "duration": 10}'

Modes:
  rate    open loop: call i starts at i / rate seconds, whatever happened to the calls before
          (a switch's arrivals do not wait for fsguard); ``duration`` seconds of arrivals
  closed  ``concurrency`` channels, each starting its next call when the last one ends, for
          ``duration`` seconds: the throughput at saturation
  calls   ``calls`` calls at ``rate`` (the soak)
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH, SimResult  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Load:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rng = random.Random(spec.get("seed", 1))
        self.fs = FakeFreeSWITCH(
            tuple(spec["target"]), time_scale=spec.get("time_scale", 0.01), seed=spec.get("seed", 1),
            max_call_time=spec.get("max_call_time", 10_000_000.0), min_real_timeout=spec.get("min_real_timeout", 10.0),
            connect_timeout=spec.get("connect_timeout", 10.0), split_events=spec.get("split_events", 0.25),
            linger_timeout=spec.get("linger_timeout"))
        self.mix: list[tuple[float, list[str]]] = []
        for share, anis in spec.get("mix", []):
            self.mix.append((float(share), list(anis)))
        self.talk_time = float(spec.get("talk_time", 1.0))
        self.areas = spec.get("areas") or [212, 312, 415, 617, 713]
        #: strangers drawn from a fixed pool (the soak: caches fill early, so growth after is a leak)
        pool = int(spec.get("stranger_pool") or 0)
        self.strangers = [f"+1{self.areas[(i * 13) % len(self.areas)]}555{(i * 7919) % 10000:04d}"
                          for i in range(pool)]
        self.outcomes: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.lag_max = 0.0
        self.started = 0
        self.errors: Counter[str] = Counter()

    def caller(self) -> Caller:
        """A caller from the mix: customers, listed numbers, strangers (shares given by run.py)."""
        roll = self.rng.random()
        ani = None
        for share, anis in self.mix:
            if roll < share:
                ani = self.rng.choice(anis)
                break
            roll -= share
        if ani is None and self.strangers:
            ani = self.rng.choice(self.strangers)
        elif ani is None:  # a stranger, with a valid number (an invalid one is challenged)
            ani = f"+1{self.rng.choice(self.areas)}555{self.rng.randint(0, 9999):04d}"
        return Caller(ani=ani, dnis=self.spec.get("dnis", "5000"), talk_time=self.talk_time)

    def one(self) -> None:
        self.started += 1
        try:
            result: SimResult = self.fs.call(self.caller())
        except Exception as exc:  # noqa: BLE001 - a simulator failure is a figure, not a crash
            self.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            return
        self.outcomes[result.outcome or "none"] += 1
        if result.route:
            self.routes[result.route.split(" ")[0]] += 1
        elif result.hangup_cause and result.hangup_by == "target":
            self.routes[f"hangup {result.hangup_cause}"] += 1
        for v in result.violations:
            self.violations[v[:120]] += 1
        if result.decision_latency is not None:
            self.latencies.append(round(result.decision_latency * 1000, 4))

    def run_rate(self, rate: float, count: int) -> None:
        greenlets = []
        t0 = time.monotonic() + self.spec.get("offset", 0.0)
        for i in range(count):
            due = t0 + i / rate
            wait = due - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
            else:
                self.lag_max = max(self.lag_max, -wait)
            greenlets.append(gevent.spawn(self.one))
        gevent.joinall(greenlets)

    def run_closed(self, concurrency: int, duration: float) -> None:
        stop_at = time.monotonic() + duration

        def loop() -> None:
            while time.monotonic() < stop_at:
                self.one()

        gevent.joinall([gevent.spawn(loop) for _ in range(concurrency)])

    def run(self) -> dict[str, Any]:
        spec = self.spec
        wall0, cpu0 = time.monotonic(), cpu_seconds()
        mode = spec["mode"]
        if mode == "rate":
            self.run_rate(float(spec["rate"]), int(float(spec["rate"]) * float(spec["duration"])))
        elif mode == "calls":
            self.run_rate(float(spec["rate"]), int(spec["calls"]))
        elif mode == "closed":
            self.run_closed(int(spec["concurrency"]), float(spec["duration"]))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
        return {"mode": mode, "started": self.started, "completed": sum(self.outcomes.values()),
                "wall": wall, "cpu": cpu, "outcomes": dict(self.outcomes), "routes": dict(self.routes),
                "violations": dict(self.violations.most_common(5)), "errors": dict(self.errors.most_common(5)),
                "lag_max_ms": round(self.lag_max * 1000, 2), "peak_channels": self.fs.peak,
                "latencies_ms": self.latencies}


def main() -> None:
    arg = sys.argv[1]
    if arg.startswith("@"):
        with open(arg[1:]) as f:
            arg = f.read()
    spec = json.loads(arg)
    result = Load(spec).run()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
