"""bench/cpuprobe.py, the real-FreeSWITCH benchmark's CPU probe: a greenlet's CPU is its own,
whatever ran between its switches, and a function's is its own, its probed callees' excluded."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import gevent
import greenlet
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture()
def cpuprobe() -> Iterator[Any]:
    """bench/cpuprobe.py, loaded from its file (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("cpuprobe", BENCH / "cpuprobe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.stop()   # no tracer left on the test process's greenlets


def spin(ms: float) -> None:
    """Burn ``ms`` of this thread's CPU."""
    until = time.thread_time() + ms / 1000
    while time.thread_time() < until:
        pass


class Work:
    def outer(self) -> None:
        spin(20)
        self.inner()

    def inner(self) -> None:
        spin(10)
        gevent.sleep(0)   # another greenlet runs here, on the same thread
        spin(10)


def caller() -> None:
    Work().outer()


def neighbour() -> None:
    spin(40)


def test_a_greenlets_cpu_and_a_functions_own_cpu_leave_out_what_ran_elsewhere(cpuprobe: Any) -> None:
    cpuprobe.wrap(Work, "outer")
    cpuprobe.wrap(Work, "inner")
    cpuprobe.start()
    gevent.joinall([gevent.spawn(caller), gevent.spawn(neighbour)])
    report = cpuprobe.report(calls=1)
    cpuprobe.stop()
    assert greenlet.gettrace() is None
    greenlets = {g["kind"]: g["ms"] for g in report["greenlets"]}
    sections = {s["name"]: s for s in report["sections"]}
    # generous bounds: a loaded CI machine adds, it never takes away
    assert 38 <= greenlets["caller"] < 60 and 38 <= greenlets["neighbour"] < 60
    assert 19 <= sections["Work.outer"]["ms"] < 30 and 19 <= sections["Work.inner"]["ms"] < 30
    assert sections["Work.outer"]["n"] == sections["Work.inner"]["n"] == 1
    assert sections["Work.inner"]["us_per_call"] == sections["Work.inner"]["us_each"]


def test_every_function_the_call_path_probe_names_exists() -> None:
    """A rename in fsguard must not leave the probe failing in the middle of a benchmark run
    (in a process of its own: the probe wraps fsguard's classes for good)."""
    done = subprocess.run([sys.executable, "-c", "import cpuprobe; cpuprobe.install_call_path()"], cwd=BENCH,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
