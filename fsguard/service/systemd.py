"""systemd integration without a dependency: the sd_notify protocol over ``$NOTIFY_SOCKET``.

With ``Type=notify`` systemd waits for ``READY=1`` before it considers fsguard started, so units
ordered after fsguard (and ``systemctl start`` itself) only return once the Event Socket listener
accepts calls. ``WATCHDOG=1`` is sent from a greenlet of the event loop every half
``WATCHDOG_USEC``: if the hub is stuck (a blocking call, a tight loop) the pings stop and systemd
restarts the process, which is what a watchdog is for. ``STOPPING=1`` (with more time for the
drain), ``RELOADING=1`` and ``STATUS=`` lines keep ``systemctl status`` telling the truth.

The protocol is one datagram per notification, ``KEY=value`` lines, to the unix socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); see sd_notify(3).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import gevent
import structlog

if TYPE_CHECKING:
    from fsguard.service.app import App
    from fsguard.service.server import CallServer

log = structlog.get_logger("fsguard.service.systemd")

#: how often STATUS= is refreshed when systemd asked for no watchdog
STATUS_INTERVAL = 10.0


class Notifier:
    """Sends sd_notify messages; does nothing (and costs nothing) when not started by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = self._address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = self._watchdog_interval(env)
        self._sock: socket.socket | None = None

    @staticmethod
    def _address(value: str) -> str | None:
        if not value:
            return None
        if value.startswith("@"):
            return "\0" + value[1:]          # abstract namespace
        if value.startswith("/"):
            return value
        log.warning("systemd.unsupported_notify_socket", notify_socket=value)
        return None

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        """Half of WATCHDOG_USEC, if the watchdog is meant for this process (WATCHDOG_PID)."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None
        return int(usec) / 2 / 1_000_000

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one notification (``"READY=1"``, ``"STATUS=..."``...); False if it could not be sent."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
            return True
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc), message=message.decode(errors="replace")[:80])
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253) tell this reload from an earlier one
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                         "STATUS=reloading the policy")

    def stopping(self, drain_seconds: float, status: str) -> bool:
        # ask for the drain time on top of TimeoutStopSec= so systemd does not kill calls being decided
        extend = int((drain_seconds + 5) * 1_000_000)
        return self.send("STOPPING=1", f"EXTEND_TIMEOUT_USEC={extend}", f"STATUS={status}")

    def watchdog(self, status: str | None = None) -> bool:
        return self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(app: App, server: CallServer) -> str:
    """What ``systemctl status fsguard`` shows under the unit."""
    host, port = server.address
    if server.stopping:
        return f"draining: {len(app.deciding)} calls being decided, {len(app.held)} followed"
    return (f"node {app.settings.node.id}: taking calls on {host}:{port}; {server.active} active "
            f"({len(app.deciding)} being decided)")


def install(app: App, server: CallServer, notifier: Notifier | None = None) -> Notifier:
    """Tell systemd about the server's life: READY once listening, WATCHDOG from the event loop,
    STOPPING on drain, RELOADING/READY around a SIGHUP."""
    notifier = notifier or Notifier()
    if not notifier.enabled:
        return notifier
    pinger: list[gevent.Greenlet] = []

    def ping() -> None:
        interval = notifier.watchdog_interval or STATUS_INTERVAL
        while True:
            gevent.sleep(interval)
            status = status_line(app, server)
            if notifier.watchdog_interval:
                notifier.watchdog(status)
            else:
                notifier.send(f"STATUS={status}")

    def on_event(event: str) -> None:
        if event == "listening":
            notifier.ready(status_line(app, server))
            if not pinger:
                pinger.append(gevent.spawn(ping))
        elif event == "stopping":
            notifier.stopping(app.settings.esl.drain_seconds + app.settings.esl.command_timeout,
                              status_line(app, server))
        elif event == "reloading":
            notifier.reloading()
        elif event in ("reloaded", "reload_failed"):
            suffix = "" if event == "reloaded" else " (reload FAILED: the previous policy stays; see the log)"
            notifier.ready(status_line(app, server) + suffix)
        elif event == "stopped":
            # the watchdog keeps pinging through the drain; only now is it done
            for greenlet in pinger:
                greenlet.kill(block=False)
            notifier.send("STATUS=stopped")
            notifier.close()

    server.observers.append(on_event)
    log.info("systemd.notify", socket=notifier.address.replace("\0", "@") if notifier.address else None,
             watchdog_seconds=notifier.watchdog_interval)
    return notifier
