"""The JSON admin API, one blueprint per area (ops, calls, lists, customers, recordings, outbound,
audit).

Every ``/api`` request needs ``Authorization: Bearer <http.token>`` (the API is off without a
token) and one of the HTTP side's slots; everything it answers is JSON, errors included:
``{"error": "limit: expected an integer from 1 to 1000, got 0"}``.
"""

from __future__ import annotations

import hmac
import time
from http import HTTPStatus
from typing import Any

import structlog
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from fsguard.store.db import DatabaseError
from fsguard.ops.web import web
from fsguard.ops.web.core import SLOT_WAIT, HTTPError, json_response, limits

log = structlog.get_logger("fsguard.http")

#: paths served without a slot or a token: a busy API must never fail a load balancer's probe
PROBES = ("/healthz", "/readyz", "/metrics")


def install(flask: Flask) -> None:
    from fsguard.ops.web.api import audit, calls, customers, lists, ops, outbound, recordings

    for module in (ops, calls, lists, customers, recordings, outbound, audit):
        flask.register_blueprint(module.bp)
    flask.before_request(_before)
    flask.teardown_request(_release_slot)
    flask.after_request(_after)
    flask.register_error_handler(Exception, _error)


def _before() -> None:
    g.started = time.perf_counter()
    path = request.path
    if path in PROBES:
        return
    if path == "/api" or path.startswith("/api/"):
        authorise()       # before a 404 too: an anonymous client is not told which endpoints exist
    if not limits().slots.acquire(timeout=SLOT_WAIT):
        raise HTTPError(503, "the admin server is busy: try again", [("Retry-After", "5")])
    g.slot = True


def _release_slot(exc: BaseException | None = None) -> None:
    if g.pop("slot", False):
        limits().slots.release()


def authorise() -> None:
    token = web().app.settings.http.token
    if not token:
        raise HTTPError(403, "the admin API is off: set http.token (or FSGUARD_HTTP_TOKEN) to turn it on")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    challenge = [("WWW-Authenticate", 'Bearer realm="fsguard"')]
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPError(401, "missing credentials: send 'Authorization: Bearer <http.token>'", challenge)
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise HTTPError(401, "invalid token", challenge)


def _after(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    if request.path.startswith("/api"):
        status = response.status_code
        (log.info if request.method not in ("GET", "HEAD") or status >= 400 else log.debug)(
            "http.request", method=request.method, path=request.path, status=status,
            ms=round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            client=request.remote_addr)
    return response


def _error(exc: Exception) -> Any:
    """Every error as JSON on the API (and the probes), as a page on the console."""
    from fsguard.ops.web import console

    if isinstance(exc, HTTPError):
        status, message, headers = exc.status, exc.message, exc.headers
    elif isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(set(exc.valid_methods or []) - {"HEAD", "OPTIONS"}))
        status, message = 405, f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
        headers = [("Allow", allowed)]
    elif isinstance(exc, HTTPException):
        status, headers = exc.code or 500, []
        message = (f"no such endpoint: {request.method} {request.path}" if status == 404
                   else exc.description or HTTPStatus(status).phrase)
    elif isinstance(exc, DatabaseError):
        web().app.metrics.db_errors.inc()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("http.database_error", path=request.path, error=first)
        status, message, headers = 503, f"database unavailable: {first}", []
    else:
        log.error("http.failed", method=request.method, path=request.path,
                  error=f"{type(exc).__name__}: {exc}", exc_info=True)
        status, message, headers = 500, f"internal error: {type(exc).__name__} (see fsguard's log)", []
    if request.path.startswith("/console"):
        return console.error_page(status, message, headers)
    return json_response({"error": message}, status, headers)


def actor(body: dict[str, Any] | None = None) -> str:
    """Who made a change through the API, for the audit trail: the body's ``by``, the
    ``X-Operator`` header, or just "api"."""
    given = (body or {}).get("by") if isinstance((body or {}).get("by"), str) else request.headers.get("X-Operator")
    given = " ".join(str(given or "").split())[:64]
    return f"api:{given}" if given else "api"


def region() -> str:
    return web().app.settings.node.default_region
