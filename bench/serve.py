"""``fsguard serve`` as the benchmark runs it: the real command, plus a stats port for the bench.

    FSGUARD_BENCH_STATS=18099 python bench/serve.py -c bench.toml serve

This is ``fsguard.ops.cli.main`` with one more ``SERVE_HOOKS`` entry: a tiny TCP endpoint on
127.0.0.1:$FSGUARD_BENCH_STATS that answers one JSON line about the process -- resident memory,
open file descriptors, calls deciding / held, pooled database connections, and on request
(``full``) the greenlets and Event Socket sessions alive (a walk over the heap: only asked for
between phases). It costs nothing while nobody asks. With ``FSGUARD_BENCH_PROBE=1`` it also answers
``probe-start`` and ``probe-report [CALLS]``: fsguard's CPU per greenlet and per named function
(``bench/cpuprobe.py``), for ``bench/realfs.py --cpu-sections``.

``FSGUARD_BENCH_VARIANT`` runs what-if experiments (comma-separated), never the default, always
labelled in the report:

``allevents`` fsguard as it was before it narrowed its events: no ``nixevent`` after ``myevents``
              and every event parsed whole, to measure what the narrowing is worth.
``unfolded``  every ``set`` / ``export`` sent as an application of its own, as before
              ``fsguard.call.fold_variables`` (a routed call: 13 applications instead of 3), to
              measure through a real FreeSWITCH what the folding is worth.
``longnix``   the subscription and applications written as before (``nixevent`` naming the 19
              events fsguard does not read, an ``Event-UUID`` on every application): 330 bytes
              more per call, each a ``recv`` and a ``sched_yield`` in FreeSWITCH.
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

import cpuprobe  # noqa: E402 - bench/ is the script's directory
from fsguard.ops import cli  # noqa: E402
from fsguard.esl.session import OutboundSession  # noqa: E402

#: frames fsguard's sessions read from FreeSWITCH, by Content-Type (events, replies, notices):
#: the real-FreeSWITCH bench reports events per call from it
FRAMES: dict[str, int] = {}


def count_frames() -> None:
    """Count every frame an OutboundSession dispatches (one dict update per frame)."""
    original = OutboundSession._dispatch

    def _dispatch(self: OutboundSession, frame: Any) -> None:
        ctype = frame.content_type
        FRAMES[ctype] = FRAMES.get(ctype, 0) + 1
        original(self, frame)

    OutboundSession._dispatch = _dispatch  # type: ignore[method-assign]


def _status_value(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def stats(app: Any, server: Any, full: bool) -> dict[str, Any]:
    pool = app.db.engine.pool
    data: dict[str, Any] = {
        "pid": os.getpid(), "rss_kb": _status_value("VmRSS"), "hwm_kb": _status_value("VmHWM"),
        "fds": len(os.listdir("/proc/self/fd")), "active": server.active, "deciding": len(app.deciding),
        "held": len(app.held), "frames": dict(FRAMES), "db_checkedout": pool.checkedout() if hasattr(pool, "checkedout") else None,
    }
    if full:
        import greenlet

        gc.collect()
        objects = gc.get_objects()
        # gevent greenlets only: the thread pool's workers (one greenlet per thread, up to the
        # pool's size, started on demand) are threads, not calls left behind
        data["greenlets"] = sum(1 for o in objects if isinstance(o, gevent.Greenlet) and not o.dead)
        data["threads_greenlets"] = sum(1 for o in objects if isinstance(o, greenlet.greenlet)
                                        and not isinstance(o, gevent.Greenlet) and not o.dead)
        data["sessions"] = sum(1 for o in objects if isinstance(o, OutboundSession))
        data["gc_objects"] = len(objects)
        del objects
    return data


def stats_hook(app: Any, server: Any) -> None:
    port = os.environ.get("FSGUARD_BENCH_STATS")
    if not port:
        return

    def answer(sock: Any, _address: Any) -> None:
        request = sock.makefile("rb").readline().strip().decode()
        if request == "probe-start":
            cpuprobe.start()
            data: dict[str, Any] = {"probe": "started"}
        elif request.startswith("probe-report"):
            calls = request.partition(" ")[2]
            data = cpuprobe.report(int(calls) if calls.isdigit() else None)
        else:
            data = stats(app, server, full=request == "full")
        sock.sendall(json.dumps(data).encode() + b"\n")
        sock.close()

    StreamServer(("127.0.0.1", int(port)), answer).start()


def all_events_variant() -> None:
    """What fsguard did before it narrowed its events: every event ``myevents`` subscribes to
    (no ``nixevent``, completions always on), each one parsed whole. Kept to measure what the
    narrowing is worth."""
    from fsguard.esl import protocol

    def start(self: OutboundSession) -> Any:
        commands = [protocol.Resume(), protocol.MyEvents(self.event_format), protocol.Linger()]
        self.send(protocol.Connect(), *commands)
        connect = self.reply()
        if "Unique-ID" not in connect.headers:
            raise protocol.ProtocolError("connect reply carries no channel data")
        self.channel = connect.headers
        self._check_replies(commands)
        return self.channel

    def _dispatch(self: OutboundSession, frame: Any) -> None:
        if frame.content_type == "text/event-plain":
            self._event(protocol.parse_event_plain(frame.body))
        else:
            original_dispatch(self, frame)

    original_dispatch = OutboundSession._dispatch
    OutboundSession.start = start  # type: ignore[method-assign]
    OutboundSession._dispatch = _dispatch  # type: ignore[method-assign]
    # always subscribed: never nixed, and an ``event`` before a wait is a harmless +OK
    OutboundSession.completions_subscribed = property(  # type: ignore[assignment]
        lambda self: False, lambda self, value: None)


def unfolded_variant() -> None:
    """Each variable an application of its own (fsguard before fold_variables)."""
    from fsguard.call.call import call

    call.fold_variables = lambda apps, export_vars: list(apps)  # type: ignore[assignment]


def longnix_variant() -> None:
    """fsguard's start and instructions with the byte counts they had before (see the docstring)."""
    import uuid

    from fsguard.esl import channel, protocol, session

    def subscription(self: OutboundSession) -> tuple[protocol.Command, ...]:
        # CHANNEL_ANSWER is already subscribed by myevents: the same subscription
        return (protocol.MyEvents(self.event_format),
                protocol.NixEvent(channel.EVENTS_NOT_READ + (channel.COMPLETION,)),
                protocol.Event(("CHANNEL_ANSWER",), self.event_format))

    class Execute(protocol.Execute):
        """An Event-UUID on every application, waited for or not."""

        def __init__(self, app: str, arg: str = "", event_uuid: str | None = None) -> None:
            super().__init__(app, arg, event_uuid or str(uuid.uuid4()))

    OutboundSession.subscription = subscription  # type: ignore[method-assign]
    # the names the channel and the session build applications with
    channel.Execute = session.Execute = Execute  # type: ignore[misc]


def main() -> int:
    variants = {v for v in os.environ.get("FSGUARD_BENCH_VARIANT", "").split(",") if v}
    unknown = variants - {"allevents", "unfolded", "longnix"}
    if unknown:
        raise SystemExit(f"FSGUARD_BENCH_VARIANT: unknown experiment(s) {', '.join(sorted(unknown))}")
    if "allevents" in variants:
        all_events_variant()
    if "unfolded" in variants:
        unfolded_variant()
    if "longnix" in variants:
        longnix_variant()
    if os.environ.get("FSGUARD_BENCH_PROBE") == "1":
        cpuprobe.install_call_path()
    count_frames()
    cli.SERVE_HOOKS.append(stats_hook)
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
