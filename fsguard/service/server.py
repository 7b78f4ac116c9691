"""The outbound Event Socket server: FreeSWITCH's ``socket`` application connects here, one TCP
connection per channel, and each connection gets one greenlet.

Admission is explicit: the greenlets are not pooled, so the server never stops accepting (a full
pool would leave FreeSWITCH's connection in the kernel backlog, the caller waiting in silence). A
connection is a call once FreeSWITCH has answered ``connect``: a peer that stays silent is closed
after ``esl.connect_timeout`` and never holds one of the ``esl.max_calls`` slots; a call over the
limit is given the fail-open route at once.
On SIGTERM the listener closes (FreeSWITCH then tries the next node of ``h1|h2`` or its fallback),
calls being decided get up to ``esl.drain_seconds`` to finish, and the process exits 0.
"""

from __future__ import annotations

import gc
import signal
import socket
from typing import Any, Callable

import gevent
import gevent.event
import structlog
from gevent.pool import Group
from gevent.server import StreamServer

from fsguard.service.app import App, ShuttingDown
from fsguard.config import Settings, parse_hostport

log = structlog.get_logger("fsguard.service.server")

class CallServer:
    def __init__(self, app: App, listen: str | None = None) -> None:
        self.app = app
        self.settings: Settings = app.settings
        host, port = parse_hostport(listen or self.settings.esl.listen, "esl.listen")
        self.max_calls = self.settings.esl.max_calls
        #: every connection's greenlet (unbounded: admission is decided after the connect reply;
        #: a silent peer costs a greenlet and a socket for esl.connect_timeout at most)
        self.pool = Group()
        self.server = StreamServer((host, port), self._accept, spawn=self.pool.spawn, backlog=2048)
        self.active = 0
        #: connections still waiting for their connect reply (not calls yet)
        self.connecting = 0
        self.stopping = False
        self.on_reload: Callable[[], Settings] | None = None
        #: told "listening", "stopping", "stopped", "reloading", "reloaded" or "reload_failed"
        #: (systemd notifications, metrics); an observer must not raise
        self.observers: list[Callable[[str], None]] = []

    def _tell(self, event: str) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception as exc:  # noqa: BLE001 - a notification must never stop the server
                log.error("server.observer_failed", server_event=event, error=str(exc))

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address  # type: ignore[no-any-return]

    def start(self) -> None:
        self.app.db.start_checkpointer()
        self.app.policy.start()
        if self.settings.esl.follow_ends == "inbound":
            self.app.ends.start()
        self.server.start()
        log.info("server.listening", address=f"{self.address[0]}:{self.address[1]}", max_calls=self.max_calls,
                 node=self.settings.node.id)
        self._tell("listening")

    def _accept(self, sock: socket.socket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = self.app.session_for(sock)
        if self.stopping:
            self.app.refuse(session, "shutdown")
            return
        self.connecting += 1
        try:
            connected = self.app.connect(session)
        finally:
            self.connecting -= 1
        if not connected:
            return
        if self.stopping:
            self.app.refuse(session, "shutdown")
            return
        if self.active >= self.max_calls:
            self.app.refuse(session, "over_capacity")
            return
        self.active += 1
        try:
            self.app.handle(session)
        finally:
            self.active -= 1

    def stop(self, drain: float | None = None) -> None:
        """Stop accepting, let calls being decided finish for ``drain`` seconds, release the rest."""
        drain = self.settings.esl.drain_seconds if drain is None else drain
        self.stopping = self.app.stopping = True
        self._tell("stopping")
        self.server.close()
        log.info("server.draining", deciding=len(self.app.deciding), held=len(self.app.held), drain_seconds=drain)
        with gevent.Timeout(drain, False):
            while self.app.deciding:
                gevent.sleep(0.05)
        late = list(self.app.deciding)
        if late:
            log.warning("server.drain_timeout", still_deciding=len(late))
        # Calls already routed are in FreeSWITCH's hands; we only stop following them.
        for greenlet in late + list(self.app.held):
            greenlet.kill(ShuttingDown, block=False)
        self.pool.join(timeout=max(self.settings.esl.command_timeout, 1.0) + 1)
        self.pool.kill(block=True, timeout=1)
        self.app.ends.stop()
        self.app.writer.close(timeout=max(self.settings.esl.command_timeout, 5.0))
        self.app.policy.stop()
        self.app.db.stop_checkpointer()
        log.info("server.stopped", rows_written=self.app.writer.rows_written, batches=self.app.writer.batches)
        self._tell("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT (drain and stop); SIGHUP reloads the policy."""
        stop_event = gevent.event.Event()
        gevent.signal_handler(signal.SIGTERM, stop_event.set)
        gevent.signal_handler(signal.SIGINT, stop_event.set)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        # What is loaded by now (phonenumbers' metadata and geocoder, SQLAlchemy's mappers: most of
        # the ~175 MB at start) lives as long as the process. Frozen, the cyclic collector stops
        # walking it at every full collection: those walks were pauses of every call in progress.
        gc.collect()
        gc.freeze()
        self.start()
        stop_event.wait()
        self.stop()

    def reload(self) -> None:
        if self.on_reload is None:
            return
        self._tell("reloading")
        try:
            settings = self.on_reload()
            self.app.reload(settings)
            log.info("server.reloaded", stages=settings.policy.stages)
        except Exception as exc:  # noqa: BLE001 - a bad new config keeps the old one running
            log.error("server.reload_failed", error=str(exc))
            self._tell("reload_failed")
        else:
            self._tell("reloaded")

