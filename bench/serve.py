"""``fsguard serve`` as the benchmark runs it: the real command, plus a stats port for the bench.

    FSGUARD_BENCH_STATS=18099 python bench/serve.py -c bench.toml serve

This is ``fsguard.cli.main`` with one more ``SERVE_HOOKS`` entry: a tiny TCP endpoint on
127.0.0.1:$FSGUARD_BENCH_STATS that answers one JSON line about the process -- resident memory,
open file descriptors, calls deciding / held, pooled database connections, and on request
(``full``) the greenlets and Event Socket sessions alive (a walk over the heap: only asked for
between phases). It costs nothing while nobody asks.

``FSGUARD_BENCH_VARIANT`` runs what-if experiments (comma-separated), never the default, always
labelled in the report; each measures a change proposed for fsguard/esl.py before it is made:

``nixevent``  right after ``myevents``, unsubscribe from the channel events fsguard never reads
              (CHANNEL_EXECUTE, CHANNEL_STATE, CHANNEL_PARK, ...): a narrower event filter.
``lean``      do not parse what nobody reads: an event-plain frame whose ``Event-Name`` fsguard
              does not use is counted and dropped unparsed, and so is the completion of an
              application queued with ``send_apps`` (nobody waits for it; today it is parsed and
              kept in ``completions`` for the life of the call).
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import uuid as uuidlib  # noqa: E402
from typing import Any  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

from fsguard import cli  # noqa: E402
from fsguard.esl import OutboundSession  # noqa: E402

#: what fsguard reads from events: completions, answer, hang-up, the end of the call, digits
EVENTS_READ = {"CHANNEL_EXECUTE_COMPLETE", "CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "DTMF"}
#: what ``myevents`` subscribes to (mod_event_socket.c), less the above
EVENTS_NOT_READ = ["CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA", "CHANNEL_DESTROY",
                   "CHANNEL_EXECUTE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
                   "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE",
                   "CHANNEL_UNPARK", "DETECTED_SPEECH", "NOTALK", "TALK"]


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
        "held": len(app.held), "db_checkedout": pool.checkedout() if hasattr(pool, "checkedout") else None,
    }
    if full:
        import greenlet

        gc.collect()
        objects = gc.get_objects()
        data["greenlets"] = sum(1 for o in objects if isinstance(o, greenlet.greenlet) and not o.dead)
        data["sessions"] = sum(1 for o in objects if isinstance(o, OutboundSession))
        data["gc_objects"] = len(objects)
        del objects
    return data


def stats_hook(app: Any, server: Any) -> None:
    port = os.environ.get("FSGUARD_BENCH_STATS")
    if not port:
        return

    def answer(sock: Any, _address: Any) -> None:
        request = sock.makefile("rb").readline().strip()
        sock.sendall(json.dumps(stats(app, server, full=request == b"full")).encode() + b"\n")
        sock.close()

    StreamServer(("127.0.0.1", int(port)), answer).start()


def nixevent_variant() -> None:
    """Experiment: unsubscribe, in the same write as ``myevents``, from the events fsguard never reads."""
    original = OutboundSession.start

    def start(self: OutboundSession) -> Any:
        myevents = "myevents json" if self.event_format == "json" else "myevents"
        self.send("connect", "resume", myevents, "nixevent " + " ".join(EVENTS_NOT_READ), "linger")
        connect = self.reply()
        if "Unique-ID" not in connect.headers:
            from fsguard.esl import ProtocolError

            raise ProtocolError("connect reply carries no channel data")
        self.channel = connect.headers
        for _ in range(4):
            self.reply()
        return self.channel

    start.__doc__ = original.__doc__
    OutboundSession.start = start  # type: ignore[method-assign]


_EVENT_NAME = re.compile(rb"(?:^|\n)Event-Name: ([A-Z_]+)\n")
_APP_UUID = re.compile(rb"\nApplication-UUID: ([0-9A-Fa-f-]+)\n")


def lean_variant() -> None:
    """Experiment: parse only the events fsguard reads; forget the completions nobody awaits.

    Safe on ``text/event-plain`` bodies because FreeSWITCH URL-encodes every value there: a line
    break cannot come from a caller, so ``\nEvent-Name: X\n`` is FreeSWITCH's own header.
    """
    original_dispatch = OutboundSession._dispatch

    def send_apps(self: OutboundSession, apps: list[tuple[str, str]]) -> None:
        if not apps:
            return
        self.poll()
        if self.hungup:
            from fsguard.esl import CallGone

            raise CallGone(f"channel gone before {apps[0][0]}")
        ids = [str(uuidlib.uuid4()) for _ in apps]
        self.__dict__.setdefault("unawaited", set()).update(ids)
        self.send(*(self._sendmsg(app, arg, app_uuid) for (app, arg), app_uuid in zip(apps, ids)))
        for app, _ in apps:
            text = self.reply().headers.get("Reply-Text", "")
            if not text.startswith("+OK"):
                from fsguard.esl import CommandFailed

                raise CommandFailed(f"{app} refused: {text}")

    def _dispatch(self: OutboundSession, frame: Any) -> None:
        if frame.content_type == "text/event-plain" and self.on_event is None:
            found = _EVENT_NAME.search(frame.body)
            name = found.group(1).decode() if found else ""
            if name not in EVENTS_READ:
                self.events_read += 1
                return
            if name == "CHANNEL_EXECUTE_COMPLETE":
                app_uuid = _APP_UUID.search(frame.body)
                unawaited = self.__dict__.get("unawaited", ())
                if app_uuid and app_uuid.group(1).decode() in unawaited:
                    unawaited.discard(app_uuid.group(1).decode())
                    self.events_read += 1
                    return
        original_dispatch(self, frame)

    OutboundSession.send_apps = send_apps  # type: ignore[method-assign]
    OutboundSession._dispatch = _dispatch  # type: ignore[method-assign]


def main() -> int:
    variants = {v for v in os.environ.get("FSGUARD_BENCH_VARIANT", "").split(",") if v}
    unknown = variants - {"nixevent", "lean"}
    if unknown:
        raise SystemExit(f"FSGUARD_BENCH_VARIANT: unknown experiment(s) {', '.join(sorted(unknown))}")
    if "nixevent" in variants:
        nixevent_variant()
    if "lean" in variants:
        lean_variant()
    cli.SERVE_HOOKS.append(stats_hook)
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
