"""Where fsguard's CPU goes, per greenlet and per named function, measured as the calls run.

Sampling profilers and cProfile mislead here: py-spy attributes a greenlet's switches to
whatever frame is on top, and cProfile's times run across switches. This probe reads the
thread's CPU clock (``time.thread_time_ns``) at every greenlet switch (``greenlet.settrace``)
and charges the time since the last switch to the greenlet that ran: the hub, the calls, the
writer, the end watcher. Inside a greenlet, wrapped functions get their own CPU, exclusive of the
wrapped functions they call, so the sections add up to the greenlet's total.

What it showed through a real FreeSWITCH at 30 calls a second: fsguard's code runs cold. A log
line that costs 66 us back to back costs 250-500 us when it runs once every 30 ms (the caches
and the CPU have moved on to FreeSWITCH in between): cutting per-call work pays several times
what a micro-benchmark says, and batching (the group commit) pays most.

``bench/serve.py`` installs it when ``FSGUARD_BENCH_PROBE=1``; ``bench/realfs.py --cpu-sections``
turns it on for each fixed-rate phase (its stats port: ``probe-start``, ``probe-report``). The
probe costs a few per cent: its runs are for finding where the time goes, not for the figures.
"""

from __future__ import annotations

import collections
import functools
import gc
import time
from typing import Any, Callable

import gevent
import gevent.hub
import greenlet

_cpu: collections.Counter[str] = collections.Counter()
_switches: collections.Counter[str] = collections.Counter()
_per_greenlet: dict[int, int] = {}
_section_ns: collections.Counter[str] = collections.Counter()
_section_n: collections.Counter[str] = collections.Counter()
_stacks: dict[int, list[int]] = {}
_kinds: dict[int, str] = {}
_gc_ns: collections.Counter[int] = collections.Counter()
_gc_n: collections.Counter[int] = collections.Counter()
_state: dict[str, Any] = {"on": False, "last": 0, "gc_start": 0, "process0": 0.0, "wall0": 0.0}


def _kind(g: Any) -> str:
    """What a greenlet is: the hub, a call (the server's handler), or the function it runs."""
    kind = _kinds.get(id(g))
    if kind is None:
        if isinstance(g, gevent.hub.Hub):
            kind = "hub"
        elif isinstance(g, gevent.Greenlet):
            run = getattr(g, "_run", None)
            name = getattr(run, "__qualname__", None) or type(run).__name__
            kind = "calls" if "_handle_and_close" in name else name
        else:
            kind = "other"
        _kinds[id(g)] = kind
    return kind


def _trace(event: str, args: Any) -> None:
    if event in ("switch", "throw"):
        origin, target = args
        if target is not None and id(target) not in _kinds:
            _kind(target)   # named while it can be: a finished greenlet has let go of its function
        now = time.thread_time_ns()
        spent = now - _state["last"]
        _state["last"] = now
        kind = _kind(origin)
        _cpu[kind] += spent
        _switches[kind] += 1
        _per_greenlet[id(origin)] = _per_greenlet.get(id(origin), 0) + spent


def _greenlet_cpu() -> int:
    """The current greenlet's CPU so far (ns), this stretch included."""
    return _per_greenlet.get(id(greenlet.getcurrent()), 0) + time.thread_time_ns() - _state["last"]


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    if not _state["on"]:
        return
    if phase == "start":
        _state["gc_start"] = time.thread_time_ns()
    else:
        _gc_ns[info["generation"]] += time.thread_time_ns() - _state["gc_start"]
        _gc_n[info["generation"]] += 1


def wrap(owner: Any, attr: str, label: str | None = None) -> None:
    """Charge ``owner.attr``'s own CPU (its wrapped callees' excluded) to a section."""
    function = getattr(owner, attr)
    name = label or f"{getattr(owner, '__name__', owner)}.{attr}"

    @functools.wraps(function)
    def probed(*args: Any, **kwargs: Any) -> Any:
        if not _state["on"]:
            return function(*args, **kwargs)
        stack = _stacks.setdefault(id(greenlet.getcurrent()), [])
        started = _greenlet_cpu()
        stack.append(0)
        try:
            return function(*args, **kwargs)
        finally:
            inner = stack.pop()
            total = _greenlet_cpu() - started
            _section_ns[name] += total - inner
            _section_n[name] += 1
            if stack:
                stack[-1] += total

    setattr(owner, attr, probed)


def wrap_all(owner: type, predicate: Callable[[str], bool]) -> None:
    """Wrap the methods of a class whose names pass ``predicate``."""
    for attr, value in list(vars(owner).items()):
        if callable(value) and not attr.startswith("__") and predicate(attr):
            wrap(owner, attr)


def start() -> None:
    """Forget what was measured and measure from now."""
    for table in (_cpu, _switches, _section_ns, _section_n, _gc_ns, _gc_n):
        table.clear()
    _per_greenlet.clear()
    _stacks.clear()
    _state.update(on=True, last=time.thread_time_ns(), process0=time.process_time(), wall0=time.monotonic())
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    greenlet.settrace(_trace)


def stop() -> None:
    """Measure no more (the tracer and the collector's callback removed)."""
    _state["on"] = False
    greenlet.settrace(None)
    if _gc_callback in gc.callbacks:
        gc.callbacks.remove(_gc_callback)


def report(calls: int | None = None) -> dict[str, Any]:
    """What was measured since :func:`start`, in ms (and us per call when ``calls`` is given)."""
    _trace("switch", (greenlet.getcurrent(), None))   # charge the running stretch
    per = (lambda ns: round(ns / 1e3 / calls, 1)) if calls else (lambda ns: None)
    return {
        "seconds": round(time.monotonic() - _state["wall0"], 1),
        "process_cpu_ms": round(1000 * (time.process_time() - _state["process0"]), 1),
        "calls": calls,
        "greenlets": [{"kind": k, "ms": round(v / 1e6, 1), "us_per_call": per(v), "switches": _switches[k]}
                      for k, v in _cpu.most_common()],
        "sections": [{"name": k, "ms": round(v / 1e6, 1), "n": _section_n[k],
                      "us_each": round(v / 1e3 / max(1, _section_n[k]), 1), "us_per_call": per(v)}
                     for k, v in _section_ns.most_common()],
        "gc": {f"gen{g}": {"collections": _gc_n[g], "ms": round(_gc_ns[g] / 1e6, 1)} for g in sorted(_gc_n)},
    }


def install_call_path() -> None:
    """Wrap the functions a call goes through (the layout's main steps, each stage's own steps)."""
    import importlib
    import pkgutil

    import prometheus_client.metrics
    import structlog.stdlib
    from sqlalchemy.engine import base as sqlalchemy_engine

    import fsguard.stages
    from fsguard.call import call as call_module
    from fsguard.call import pipeline
    from fsguard.esl import protocol, session
    from fsguard.rules import numbers
    from fsguard.service import app, calls, ends, server
    from fsguard.stages import routing
    from fsguard.store import db, writer

    wrap(server.CallServer, "_accept")
    for attr in ("session_for", "connect", "handle", "_call", "_end", "_canonical_line"):
        wrap(app.App, attr)
    wrap(pipeline.Pipeline, "decide")
    wrap(pipeline.Pipeline, "_instruct")
    wrap(call_module.Call, "__init__")
    wrap(calls, "record_decision")
    wrap(calls, "record_end")
    wrap(ends.EndWatcher, "follow")
    wrap(ends.EndWatcher, "_end")
    for attr in ("start", "send_apps", "close", "reply"):
        wrap(session.OutboundSession, attr)
    wrap(protocol, "parse_headers", "esl.parse_headers")
    wrap(writer.Ticket, "wait")
    wrap(writer.Writer, "submit")
    wrap(writer.Writer, "_write_batch")
    wrap(sqlalchemy_engine.Connection, "execute", "sqlalchemy Connection.execute")
    wrap(db.Database, "statement")
    wrap(db.GreenCursor, "execute", "sqlite execute")
    wrap(db.GreenCursor, "executemany", "sqlite executemany")
    wrap(db, "files_writable", "db.files_writable")
    wrap(numbers, "parse", "numbers.parse")
    wrap(routing, "caller_region", "regions.caller_region")
    wrap(structlog.stdlib.BoundLogger, "_proxy_to_logger", "a log line")
    wrap(prometheus_client.metrics.MetricWrapperBase, "labels", "prometheus labels()")
    for info in pkgutil.iter_modules(fsguard.stages.__path__):
        module = importlib.import_module(f"fsguard.stages.{info.name}")
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == module.__name__ and value.__name__.endswith("Stage"):
                wrap_all(value, lambda attr: attr in ("run", "after_call") or attr.startswith("_"))
