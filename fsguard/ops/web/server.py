"""The HTTP listener: gevent's pywsgi, hardened against slow clients, logging through structlog.

* A connection gets ``HEADER_TIMEOUT`` seconds to send each request's line and headers (an idle
  keep-alive connection is closed after as long) and every read of the body waits at most as
  long: a client that connects and says nothing, or sends half a request, does not keep a
  connection for good.
* The pool of connections is far larger than the API's slots (fsguard.ops.web.core.Limits), so that
  slow clients or a burst of API requests never stop ``/healthz``, ``/readyz`` and ``/metrics``
  from being accepted and answered.
* gevent's own error reports (a request with too many headers, a bad request line, a client gone
  mid-request) become one structlog line each instead of a raw traceback on stderr.
"""

from __future__ import annotations

import json
import socket
import sys
from http.client import HTTPException
from typing import TYPE_CHECKING, Any

import gevent
import structlog
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from fsguard.config import parse_hostport

if TYPE_CHECKING:
    from fsguard.service.app import App
    from fsguard.service.server import CallServer

log = structlog.get_logger("fsguard.http")

#: connections open at once (idle ones included); far above the API's slots
MAX_CONNECTIONS = 1000
#: seconds a client gets to send a request's line and headers, and for each read of its body
HEADER_TIMEOUT = 10.0


class HeaderTimeout(socket.timeout):
    """The client took too long to send its request."""


class _LogWriter:
    """A file-like ``error_log`` for pywsgi: each write becomes one structlog line."""

    def write(self, message: str) -> None:
        text = " ".join(str(message).split())
        if text:
            log.warning("http.client_error", detail=text[:500])

    def flush(self) -> None:
        pass

    writelines = None  # pywsgi only writes


class Handler(WSGIHandler):
    """pywsgi's handler with a deadline on reading each request and structlog for its errors."""

    _deadline: gevent.Timeout | None = None

    def handle(self) -> None:
        try:
            self.socket.settimeout(HEADER_TIMEOUT)
        except OSError:
            return
        try:
            super().handle()
        finally:
            self._cancel_deadline()

    def read_requestline(self) -> str:
        self._cancel_deadline()
        self._deadline = gevent.Timeout(HEADER_TIMEOUT, HeaderTimeout("request not received in time"))
        self._deadline.start()
        return super().read_requestline()  # type: ignore[no-any-return]

    def get_environ(self) -> dict[str, Any]:
        self._cancel_deadline()                       # the request is in; the app's time is its own
        return super().get_environ()  # type: ignore[no-any-return]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def _handle_client_error(self, ex: BaseException) -> Any:
        # gevent prints a traceback for anything but a ValueError here (e.g. over 100 headers)
        if isinstance(ex, socket.timeout):
            log.info("http.client_timeout", client=_client(self.client_address), detail=str(ex))
            self.close_connection = True
            return None
        reason = " ".join(str(ex).split())[:300]
        log.warning("http.bad_request", client=_client(self.client_address), error=f"{type(ex).__name__}: {reason}")
        return ("400", _json_error(400, f"bad request: {reason}" if isinstance(ex, HTTPException) else "bad request"))

    def _log_error(self, t: Any, v: Any, tb: Any) -> None:
        if not issubclass(t, gevent.GreenletExit):
            log.error("http.internal_error", path=(self.environ or {}).get("PATH_INFO"),
                      error=f"{t.__name__}: {v}", exc_info=(t, v, tb))

    def log_error(self, msg: str, *args: Any) -> None:
        try:
            text = msg % args if args else msg
        except Exception:  # noqa: BLE001
            text = f"{msg!r} {args!r}"
        log.warning("http.client_error", client=_client(getattr(self, "client_address", None)),
                    detail=" ".join(str(text).split())[:500])

    _print_unexpected_exc = staticmethod(lambda: log.error("http.unexpected", exc_info=sys.exc_info()))


def _client(address: Any) -> str | None:
    if isinstance(address, tuple) and address:
        return f"{address[0]}:{address[1]}" if len(address) > 1 else str(address[0])
    return str(address) if address else None


def _json_error(status: int, message: str) -> bytes:
    body = (json.dumps({"error": message}) + "\n").encode()
    phrase = {400: "Bad Request", 408: "Request Timeout"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class AdminServer:
    """The HTTP listener in the same hub as the calls: health, readiness, metrics, the API, the console."""

    def __init__(self, app: App, server: CallServer | None = None, listen: str | None = None) -> None:
        from fsguard.ops.web import create_app

        host, port = parse_hostport(listen or app.settings.http.listen, "http.listen")
        self.app = app
        self.server = server
        self.stopped = False
        self.wsgi = create_app(app, server)
        self.http = WSGIServer((host, port), self.wsgi, spawn=Pool(MAX_CONNECTIONS), handler_class=Handler,
                               log=None, error_log=_LogWriter())

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address  # type: ignore[no-any-return]

    def start(self) -> None:
        from fsguard.ops.web.console import console_enabled

        self.http.start()
        if self.server is not None:
            self.server.observers.append(self._audit_signal_reload)
        host, port = self.address
        log.info("http.listening", address=f"{host}:{port}",
                 api="on" if self.app.settings.http.token else "off (no http.token)",
                 console="on" if console_enabled(self.app) else "off (no operator)")

    def _audit_signal_reload(self, event: str) -> None:
        """A reload by SIGHUP (``systemctl reload fsguard``) goes to the audit trail too; one
        through ``POST /api/reload`` is audited by the API with its operator."""
        from fsguard.store import audit
        from fsguard.store.db import DatabaseError

        if (event not in ("reloaded", "reload_failed") or self.stopped
                or self.wsgi.extensions["fsguard"].api_reloading):
            return
        error = getattr(getattr(self.server, "on_reload", None), "last_error", None)
        try:
            audit.record_now(self.app.db, actor="SIGHUP", via="cli", reason="systemctl reload (SIGHUP)",
                             action="policy.reload" if event == "reloaded" else "policy.reload_failed",
                             subject=self.app.settings.node.id, details={"error": error} if error else None)
        except DatabaseError as exc:
            log.error("audit.write_failed", action="policy.reload", error=str(exc).splitlines()[0])

    def stop(self) -> None:
        # the audit observer stays in server.observers (stop may run inside the server's own loop
        # over them, on "stopped": removing one there would skip the next observer); it does
        # nothing once the listener is stopped
        self.stopped = True
        self.http.stop(timeout=1)
        self.wsgi.extensions["fsguard.limits"].close()
