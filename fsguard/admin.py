"""The HTTP side of fsguard: health, readiness, Prometheus metrics and the JSON admin API.

    GET /healthz      the process is up (for a liveness probe)
    GET /readyz       the database answers and the Event Socket listener accepts calls
    GET /metrics      Prometheus text
    /api/...          the admin API, mirroring the CLI; every request needs
                      ``Authorization: Bearer <http.token>``; off when no token is set

It runs in the same gevent hub as the calls (a small WSGI app on gevent.pywsgi), on
``http.listen`` (127.0.0.1:8085 by default). Everything it answers is JSON, errors included:
``{"error": "limit: expected an integer from 1 to 1000, got 'abc'"}``. Handlers hold a database
session only for the length of one short transaction.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterable

import gevent
import structlog
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import exists, select

from fsguard import __version__, numbers, records
from fsguard.config import ConfigError, parse_duration, parse_hostport
from fsguard.config import _coerce as coerce_setting
from fsguard.db import DatabaseError
from fsguard.models import CallRecord, StageVerdict

if TYPE_CHECKING:
    from fsguard.app import App
    from fsguard.server import CallServer

log = structlog.get_logger("fsguard.http")

#: largest request body accepted (the API takes small JSON documents)
MAX_BODY = 64 * 1024
#: requests served at once; more wait in the listen backlog
MAX_REQUESTS = 64
#: readiness gives the database this long to answer
READY_TIMEOUT = 2.0


class HTTPError(Exception):
    """Ends a request with a JSON error: ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, (json.dumps(data, default=str, ensure_ascii=False) + "\n").encode("utf-8"))


class Request:
    """One HTTP request: method, path, query parameters, JSON body, and parameters from the route."""

    def __init__(self, environ: dict[str, Any]) -> None:
        from urllib.parse import parse_qs

        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = environ.get("PATH_INFO", "/") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        self.query: dict[str, str] = {k: v[-1] for k, v in query.items()}
        self.params: dict[str, str] = {}

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; 400/413/415 with the reason otherwise."""
        ctype = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        length_text = self.environ.get("CONTENT_LENGTH") or "0"
        if not length_text.isdigit():
            raise bad_request("Content-Length: not a number")
        length = int(length_text)
        if length > MAX_BODY:
            raise HTTPError(413, f"request body too large ({length} bytes, at most {MAX_BODY})")
        if length == 0:
            return {}
        if ctype != "application/json":
            raise HTTPError(415, f"send the body as application/json (got {ctype or 'no Content-Type'})")
        raw = self.environ["wsgi.input"].read(length)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise bad_request("the body must be a JSON object")
        return data


# ------------------------------------------------------------------ input checks


def int_arg(values: dict[str, Any], name: str, default: int | None = None, *, low: int = 0,
            high: int = 1_000_000) -> int | None:
    """An integer parameter from the query or the body, within bounds."""
    value = values.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise bad_request(f"{name}: expected an integer from {low} to {high}, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise bad_request(f"{name}: expected an integer from {low} to {high}, got {number}")
    return number


def str_arg(values: dict[str, Any], name: str, default: str | None = None, *, required: bool = False,
            max_len: int = 256, pattern: str | None = None, choices: Iterable[str] | None = None) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"{name}: required")
        return default
    if not isinstance(value, str):
        raise bad_request(f"{name}: expected a string, got {value!r}")
    if len(value) > max_len or "\n" in value or "\r" in value or "\0" in value:
        raise bad_request(f"{name}: expected one line of at most {max_len} characters")
    if choices is not None and value not in set(choices):
        raise bad_request(f"{name}: expected one of {', '.join(sorted(choices))}, got {value!r}")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise bad_request(f"{name}: {value!r} is not a valid {name}")
    return value


def number_arg(values: dict[str, Any], name: str, region: str, *, required: bool = False,
               strict: bool = True) -> str | None:
    """A telephone number as an operator types it, in E.164.

    ``strict`` (for numbers put on a list) wants a number that can exist; a search takes any
    number in international form, since calls are stored with whatever number the network sent.
    """
    raw = str_arg(values, name, required=required, max_len=64)
    if raw is None:
        return None
    if not strict:
        number = numbers.parse(raw, region)
        if number.e164 and not number.anonymous:
            return number.e164
    try:
        return numbers.to_e164(raw, region)
    except numbers.InvalidNumber as exc:
        raise bad_request(f"{name}: {exc}") from None


def time_arg(values: dict[str, Any], name: str) -> datetime | None:
    """``since=2h`` (a duration back from now) or an ISO 8601 date/time (UTC unless it says)."""
    raw = str_arg(values, name, max_len=40)
    if raw is None:
        return None
    return parse_when(raw, name, error=bad_request)


def parse_when(raw: str, name: str, error: Callable[[str], Exception] = ConfigError) -> datetime:
    """A point in time from ``7d`` / ``90m`` (ago) or ``2026-11-20`` / ``2026-11-20T08:00:00+01:00``."""
    text = raw.strip()
    if text and (text[-1].isalpha() or text.replace(".", "", 1).isdigit()) and not re.match(r"\d{4}-", text):
        try:
            seconds = parse_duration(text, name)
        except ConfigError as exc:
            raise error(str(exc)) from None
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise error(f"{name}: expected a duration back from now (7d, 12h) or an ISO date (2026-11-20), "
                    f"got {raw!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


UUID_RE = r"[A-Za-z0-9][A-Za-z0-9_.:-]{5,63}"


# ------------------------------------------------------------------ the app


Handler = Callable[[Request], Any]


@dataclass
class Route:
    method: str
    path: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool


class AdminAPI:
    """The WSGI application. ``api.route("GET", "/api/calls/{uuid}", handler)`` adds an endpoint."""

    def __init__(self, app: App, server: CallServer | None = None) -> None:
        self.app = app
        self.server = server
        self.routes: list[Route] = []
        self.started = time.time()
        self.route("GET", "/healthz", self.healthz, auth=False)
        self.route("GET", "/readyz", self.readyz, auth=False)
        self.route("GET", "/metrics", self.metrics, auth=False)
        self.route("GET", "/api", self.index)
        self.route("GET", "/api/status", self.status)
        self.route("POST", "/api/reload", self.reload)
        self.route("GET", "/api/calls", self.list_calls)
        self.route("GET", "/api/calls/{uuid}", self.show_call)
        self.route("GET", "/api/lists", self.list_entries)
        self.route("POST", "/api/lists", self.add_entry)
        self.route("GET", "/api/lists/{number}", self.show_number)
        self.route("DELETE", "/api/lists/{number}", self.remove_entries)
        self.route("GET", "/api/customers", self.list_customers)
        self.route("POST", "/api/customers", self.save_customer)
        self.route("GET", "/api/customers/{number}", self.show_customer)
        self.route("DELETE", "/api/customers/{number}", self.remove_customer_number)
        self.route("GET", "/api/recordings", self.list_recordings)
        self.route("GET", "/api/recordings/{uuid}", self.show_recording)
        self.route("POST", "/api/recordings/{uuid}/hold", self.hold_recording)
        self.route("POST", "/api/recordings/{uuid}/release", self.release_recording)
        self.route("GET", "/api/outbound/frozen", self.frozen_numbers)
        self.route("POST", "/api/outbound/freeze", self.freeze_number)
        self.route("DELETE", "/api/outbound/freeze/{number}", self.unfreeze_number)
        self.route("GET", "/api/outbound/attempts/{number}", self.outbound_attempts)

    # --------------------------------------------------------------- routing

    def route(self, method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
        self.routes.append(Route(method, path, re.compile(f"^{regex}/?$"), handler, auth))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        started = time.perf_counter()
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except HTTPError as exc:
            response = Response.json({"error": exc.message}, exc.status)
            response.headers.extend(exc.headers)
        except DatabaseError as exc:
            self.app.metrics.db_errors.inc()
            log.error("http.database_error", path=request.path, error=str(exc).splitlines()[0])
            response = Response.json({"error": f"database unavailable: {str(exc).splitlines()[0]}"}, 503)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, the server goes on
            log.error("http.failed", method=request.method, path=request.path,
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            response = Response.json({"error": f"internal error: {type(exc).__name__} (see fsguard's log)"}, 500)
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   ("Cache-Control", "no-store"), *response.headers]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        if request.path.startswith("/api"):
            # the audit trail of what operators did through the API
            (log.info if request.method != "GET" or response.status >= 400 else log.debug)(
                "http.request", method=request.method, path=request.path, status=response.status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                client=environ.get("REMOTE_ADDR"))
        return [response.body] if request.method != "HEAD" else []

    def _dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(request.path)
            if not match:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            if route.method != method:
                allowed.append(route.method)
                continue
            if route.auth:
                self._authorise(request)
            request.params = match.groupdict()
            result = route.handler(request)
            return result if isinstance(result, Response) else Response.json(result)
        if request.path.startswith("/api"):
            self._authorise(request)   # do not tell an anonymous client which endpoints exist
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise HTTPError(405, f"{request.method} is not allowed on {request.path} (allowed: {methods})",
                            [("Allow", methods)])
        raise HTTPError(404, f"no such endpoint: {request.method} {request.path}")

    def _authorise(self, request: Request) -> None:
        token = self.app.settings.http.token
        if not token:
            raise HTTPError(403, "the admin API is off: set http.token (or FSGUARD_HTTP_TOKEN) to turn it on")
        scheme, _, given = request.header("Authorization").partition(" ")
        challenge = [("WWW-Authenticate", 'Bearer realm="fsguard"')]
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPError(401, "missing credentials: send 'Authorization: Bearer <http.token>'", challenge)
        if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
            raise HTTPError(401, "invalid token", challenge)

    # ---------------------------------------------------- health and metrics

    def healthz(self, request: Request) -> Any:
        return {"status": "ok", "node": self.app.settings.node.id, "version": __version__}

    def readyz(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            with gevent.Timeout(READY_TIMEOUT):
                checks["database"] = "ok" if self.app.db.ping() else "unreachable"
        except gevent.Timeout:
            checks["database"] = f"no answer within {READY_TIMEOUT:g}s"
        server = self.server
        if server is None:
            checks["esl"] = "no listener in this process"
        elif server.stopping:
            checks["esl"] = "draining: not taking new calls"
        elif not server.server.started:
            checks["esl"] = "not listening"
        else:
            checks["esl"] = "ok"
        ready = all(v == "ok" for v in checks.values())
        return Response.json({"ready": ready, "node": self.app.settings.node.id, "checks": checks},
                             200 if ready else 503)

    def metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(self.app.metrics.registry), CONTENT_TYPE_LATEST)

    # ---------------------------------------------------------------- api

    def index(self, request: Request) -> Any:
        return {"endpoints": [f"{r.method} {r.path}" for r in self.routes if r.auth]}

    def status(self, request: Request) -> Any:
        app, server = self.app, self.server
        policy = app.settings.policy
        return {"node": app.settings.node.id, "version": __version__,
                "uptime_seconds": round(time.time() - self.started, 1),
                "stages": [s.name for s in app.pipeline.stages],
                "enforce": policy.enforce, "enforce_stages": policy.enforce_stages,
                "shadow_stages": [s.name for s in app.pipeline.stages if not policy.enforced(s.name)],
                "calls": {"active": server.active if server else None, "deciding": len(app.deciding),
                          "followed": len(app.held), "max": app.settings.esl.max_calls},
                "stopping": bool(server and server.stopping),
                "config": str(app.settings.source) if app.settings.source else None}

    def reload(self, request: Request) -> Any:
        """The same as ``systemctl reload fsguard`` (SIGHUP): re-read the policy, keep the calls."""
        server = self.server
        if server is None or server.on_reload is None:
            raise HTTPError(409, "this fsguard was not started with a configuration it can re-read")
        result: dict[str, Any] = {}

        def observe(event: str) -> None:
            if event in ("reloaded", "reload_failed"):
                result["event"] = event

        server.observers.append(observe)
        try:
            server.reload()
        finally:
            server.observers.remove(observe)
        if result.get("event") != "reloaded":
            raise HTTPError(409, "reload failed, the previous policy stays: "
                            + (getattr(server.on_reload, "last_error", None) or "see fsguard's log"))
        return {"reloaded": True, "stages": [s.name for s in self.app.pipeline.stages]}

    def list_calls(self, request: Request) -> Any:
        """Recent calls, newest first, with filters: ``?ani=&since=&until=&outcome=&code=&node=&limit=``."""
        q = request.query
        region = self.app.settings.node.default_region
        limit = int_arg(q, "limit", 50, low=1, high=1000)
        stmt = select(CallRecord).order_by(CallRecord.started_at.desc()).limit(limit)
        if (ani := number_arg(q, "ani", region, strict=False)) is not None:
            stmt = stmt.where(CallRecord.ani == ani)
        if (dnis := str_arg(q, "dnis", max_len=128)) is not None:
            stmt = stmt.where(CallRecord.dnis == dnis)
        if (since := time_arg(q, "since")) is not None:
            stmt = stmt.where(CallRecord.started_at >= since)
        if (until := time_arg(q, "until")) is not None:
            stmt = stmt.where(CallRecord.started_at < until)
        if (outcome := str_arg(q, "outcome", max_len=32, pattern=r"[a-z_]+")) is not None:
            stmt = stmt.where(CallRecord.outcome == outcome)
        if (direction := str_arg(q, "direction", choices=("inbound", "outbound"))) is not None:
            stmt = stmt.where(CallRecord.direction == direction)
        if (node := str_arg(q, "node", max_len=128)) is not None:
            stmt = stmt.where(CallRecord.node == node)
        if (code := str_arg(q, "code", max_len=64, pattern=r"[A-Za-z0-9_.:-]+")) is not None:
            stmt = stmt.where(exists().where(StageVerdict.call_uuid == CallRecord.uuid, StageVerdict.code == code))
        with self.app.db.begin() as session:
            calls = [records.call_as_dict(c) for c in session.scalars(stmt)]
        return {"calls": calls, "count": len(calls)}

    def show_call(self, request: Request) -> Any:
        """One call with every stage's verdict, and the explanation ``fsguard calls show`` prints."""
        from fsguard.cli import explain

        uuid = request.params["uuid"]
        if not re.fullmatch(UUID_RE, uuid):
            raise bad_request(f"uuid: {uuid!r} is not a call uuid")
        call = records.find_call(self.app.db, uuid)
        if call is None:
            raise HTTPError(404, f"no call {uuid}")
        data = records.call_as_dict(call)
        if request.query.get("format") == "text":
            return Response(200, (explain(data) + "\n").encode("utf-8"), "text/plain; charset=utf-8")
        data["explanation"] = explain(data)
        return data


    # ------------------------------------------------------------- lists
    # fsguard/lists.py does the work; the CLI equivalent is ``fsguard lists ...``

    def _pattern(self, raw: str) -> tuple[str, bool]:
        from fsguard import lists

        try:
            return lists.parse_pattern(raw, self.app.settings.node.default_region)
        except lists.ListError as exc:
            raise bad_request(f"number: {exc}") from None

    def list_entries(self, request: Request) -> Any:
        """``?kind=block&source=auto&all=true&limit=100``"""
        from fsguard import lists

        q = request.query
        kind = str_arg(q, "kind", choices=lists.KINDS)
        source = str_arg(q, "source", max_len=32, pattern=r"[a-z_]+")
        include_expired = bool_arg(q, "all", False)
        limit = int_arg(q, "limit", 1000, low=1, high=100_000)
        with self.app.db.begin() as session:
            entries = [lists.entry_dict(e) for e in lists.all_entries(
                session, kind=kind, source=source, include_expired=include_expired, limit=limit)]
        return {"entries": entries, "count": len(entries)}

    def show_number(self, request: Request) -> Any:
        """The entries covering a number, the one that applies (``?dnis=``), and its recent call counts."""
        from fsguard import lists

        number, is_prefix = self._pattern(request.params["number"])
        q = request.query
        region = self.app.settings.node.default_region
        dnis = lists.dnis_key(str_arg(q, "dnis", max_len=64), region) if q.get("dnis") else lists.ANY_DNIS
        include_expired = bool_arg(q, "all", False)
        with self.app.db.begin() as session:
            if is_prefix:
                covering = [e for e in lists.all_entries(session, include_expired=include_expired)
                            if e.number.startswith(number)]
                applies, counts = None, {}
            else:
                covering = lists.entries_for(session, number, include_expired=include_expired)
                applies = lists.lookup(session, number, dnis)
                counts = lists.recent_counts(session, number, now=time.time())
            return {"number": number + ("*" if is_prefix else ""), "dnis": dnis,
                    "applies": lists.entry_dict(applies) if applies is not None else None,
                    "entries": [lists.entry_dict(e) for e in covering], "counts": counts}

    def add_entry(self, request: Request) -> Response:
        """``{"number": "+12125550147", "kind": "block", "level": 7, "reason": "...", "expires": "30d",
        "dnis": "5000", "action": "busy"}``; replaces the entry the number had for that dialled number."""
        from fsguard import lists

        body = request.json()
        number = str_arg(body, "number", required=True, max_len=64)
        kind = str_arg(body, "kind", required=True, choices=lists.KINDS)
        level = int_arg(body, "level", None, low=0, high=lists.MAX_LEVEL)
        try:
            spec = lists.make_spec(
                number or "", kind=kind or "", level=level, dnis=str_arg(body, "dnis", max_len=64),
                reason=str_arg(body, "reason", "", max_len=1000) or "", expires=str_arg(body, "expires", max_len=40),
                action=str_arg(body, "action", max_len=128), source="api", added_by=operator(request, body),
                region=self.app.settings.node.default_region)
        except (lists.ListError, ConfigError) as exc:
            raise bad_request(str(exc)) from None
        with self.app.db.begin() as session:
            entry, replaced = lists.add(session, spec)
            data = lists.entry_dict(entry)
        log.info("api.list_entry_added", entry=lists.describe(data), by=spec.added_by)
        return Response.json({"entry": data, "replaced": replaced}, 201)

    def remove_entries(self, request: Request) -> Any:
        """``DELETE /api/lists/+12125550147?dnis=5000&kind=block``"""
        from fsguard import lists

        number, is_prefix = self._pattern(request.params["number"])
        q = request.query
        dnis = str_arg(q, "dnis", max_len=64)
        key = lists.dnis_key(dnis, self.app.settings.node.default_region) if dnis else None
        kind = str_arg(q, "kind", choices=lists.KINDS)
        with self.app.db.begin() as session:
            gone = lists.remove(session, number, is_prefix, dnis=key, kind=kind)
        label = number + ("*" if is_prefix else "")
        if not gone:
            raise HTTPError(404, f"no entry for {label}" + (f" for calls to {key}" if key else ""))
        log.info("api.list_entries_removed", number=label, removed=len(gone), by=operator(request, {}))
        return {"removed": gone}

    # --------------------------------------------------------- customers
    # fsguard/customers.py does the work; the CLI equivalent is ``fsguard customers ...``

    def _customer_number(self, raw: str) -> str:
        from fsguard import customers

        try:
            found = customers.parse_numbers([raw], self.app.settings.node.default_region)
        except customers.CustomerError as exc:
            raise bad_request(f"number: {exc}") from None
        if len(found) != 1:
            raise bad_request(f"number: expected one telephone number, got {raw!r}")
        return found[0]

    def list_customers(self, request: Request) -> Any:
        """``?vip=true&limit=100``"""
        from fsguard import customers

        q = request.query
        vip = bool_arg(q, "vip", False)
        limit = int_arg(q, "limit", 1000, low=1, high=100_000)
        with self.app.db.begin() as session:
            found = [c.as_dict() for c in customers.listing(session, vip_only=bool(vip), limit=limit)]
            total, numbers_ = customers.count(session)
        return {"customers": found, "count": len(found), "total": total, "numbers": numbers_}

    def show_customer(self, request: Request) -> Any:
        from fsguard import customers

        number = self._customer_number(request.params["number"])
        with self.app.db.begin() as session:
            row = customers.get(session, number=number)
            if row is None:
                raise HTTPError(404, f"no customer has the number {number}")
            return customers.CustomerInfo.from_row(row).as_dict()

    def save_customer(self, request: Request) -> Response:
        """``{"numbers": ["+442079460000"], "name": "Ada", "account_id": "C-1001", "vip": true,
        "queue": "vip", "agent": "1001@default", "region": "GB-LND"}``: adds a customer, or updates
        the one with that account id (or those numbers)."""
        from fsguard import customers

        body = request.json()
        raw = body.get("numbers", body.get("number"))
        raw_list = [raw] if isinstance(raw, str) else raw
        if raw_list is None:
            raw_list = []
        if not isinstance(raw_list, list) or not all(isinstance(n, str) for n in raw_list) or len(raw_list) > 100:
            raise bad_request("numbers: expected a list of at most 100 telephone numbers (strings)")
        unknown = set(body) - {"numbers", "number", "by", *customers.FIELDS}
        if unknown:
            raise bad_request(f"unknown field(s): {', '.join(sorted(unknown))} (known: numbers, "
                              f"{', '.join(customers.FIELDS)})")
        for key in customers.FIELDS:
            if key in body and body[key] is not None and not isinstance(body[key], (str, bool) if key == "vip" else str):
                raise bad_request(f"{key}: expected {'true or false' if key == 'vip' else 'a string'}, got {body[key]!r}")
        try:
            numbers_ = customers.parse_numbers(raw_list, self.app.settings.node.default_region)
            fields_ = customers.normalise_customer({k: body[k] for k in customers.FIELDS if k in body})
            with self.app.db.begin() as session:
                saved = customers.save(session, numbers_, fields_, source="api")
        except customers.CustomerError as exc:
            raise bad_request(str(exc)) from None
        log.info("api.customer_saved", customer=saved.customer.customer_id, created=saved.created,
                 by=operator(request, body))
        return Response.json({**saved.customer.as_dict(), "created": saved.created,
                              "added_numbers": saved.added_numbers}, 201 if saved.created else 200)

    def remove_customer_number(self, request: Request) -> Any:
        """Take a number off its customer (the customer goes with its last number)."""
        from fsguard import customers

        number = self._customer_number(request.params["number"])
        with self.app.db.begin() as session:
            said = customers.remove_number(session, number)
        if said is None:
            raise HTTPError(404, f"no customer has the number {number}")
        log.info("api.customer_number_removed", number=number, by=operator(request, {}))
        return {"removed": said}

    # -------------------------------------------------------- recordings
    # fsguard/recordings.py does the work; the CLI equivalent is ``fsguard recordings ...``

    def _recordings(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from fsguard import recordings

        try:
            return fn(self.app.db, *args, **kwargs)
        except recordings.NotFound as exc:
            raise HTTPError(404, str(exc)) from None
        except recordings.RecordingError as exc:
            raise HTTPError(409, str(exc)) from None

    def list_recordings(self, request: Request) -> Any:
        """``?number=&held=true&expired=true&status=&limit=50``"""
        from fsguard import recordings

        q = request.query
        number = str_arg(q, "number", max_len=64)
        try:
            found = recordings.list_recordings(
                self.app.db, number=number, held=bool_arg(q, "held", None), expired=bool_arg(q, "expired", False),
                status=str_arg(q, "status", max_len=16, pattern=r"[a-z_]+"), limit=int_arg(q, "limit", 50, low=1,
                                                                                          high=1000),
                region=self.app.settings.node.default_region)
        except recordings.RecordingError as exc:
            raise bad_request(f"number: {exc}") from None
        return {"recordings": found, "count": len(found)}

    def show_recording(self, request: Request) -> Any:
        from fsguard import recordings

        return self._recordings(recordings.show, self._uuid(request))

    def hold_recording(self, request: Request) -> Any:
        """``{"reason": "case 2026-114, police request"}``: no purge or erasure touches it until released."""
        from fsguard import recordings

        body = request.json()
        reason = str_arg(body, "reason", required=True, max_len=512)
        return self._recordings(recordings.hold, self._uuid(request), reason, by=operator(request, body))

    def release_recording(self, request: Request) -> Any:
        from fsguard import recordings

        body = request.json()
        return self._recordings(recordings.release, self._uuid(request), by=operator(request, body))

    @staticmethod
    def _uuid(request: Request) -> str:
        uuid = request.params["uuid"]
        if not re.fullmatch(UUID_RE, uuid):
            raise bad_request(f"uuid: {uuid!r} is not a call uuid")
        return uuid

    # ---------------------------------------------------------- outbound
    # fsguard/outbound.py does the work; the CLI equivalent is ``fsguard outbound ...``

    def _dialled(self, raw: str | None) -> str:
        from fsguard import outbound

        region = self.app.settings.node.default_region
        number = outbound.dialled_number(raw or "", region)
        if number is None:
            raise bad_request(f"number: {raw!r} is not a telephone number (region {region}); give it in E.164, "
                              "e.g. +15557654321")
        return number

    def frozen_numbers(self, request: Request) -> Any:
        from fsguard import outbound

        with self.app.db.begin() as session:
            rows = [f.as_dict() for f in outbound.frozen(session)]
        return {"frozen": rows, "count": len(rows)}

    def freeze_number(self, request: Request) -> Response:
        """``{"number": "+15557654321", "reason": "asked not to be called", "days": 30}`` (days: default
        ``outbound.freeze_for``); replaces a freeze in force."""
        from fsguard import outbound

        body = request.json()
        number = self._dialled(str_arg(body, "number", required=True, max_len=64))
        reason = " ".join((str_arg(body, "reason", required=True, max_len=1000) or "").split())
        days = body.get("days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 3650):
            raise bad_request(f"days: expected a number of days above 0 and at most 3650, got {days!r}")
        seconds = days * 86400 if days is not None else self.app.settings.outbound.freeze_seconds
        by = operator(request, body)
        with self.app.db.begin() as session:
            new, replaced = outbound.freeze(session, number, reason=reason, seconds=seconds, source="operator", by=by)
        log.info("api.outbound_frozen", number=number, until=new.until.isoformat(), by=by)
        return Response.json({"freeze": new.as_dict(), "replaced": [f.as_dict() for f in replaced]}, 201)

    def unfreeze_number(self, request: Request) -> Any:
        """``DELETE /api/outbound/freeze/+15557654321?reason=customer+called+back``"""
        from fsguard import outbound

        number = self._dialled(request.params["number"])
        reason = " ".join((str_arg(request.query, "reason", "", max_len=1000) or "").split())
        by = operator(request, {})
        with self.app.db.begin() as session:
            lifted = outbound.unfreeze(session, number, by=by, reason=reason)
        if not lifted:
            raise HTTPError(404, f"{number} is not frozen")
        log.info("api.outbound_unfrozen", number=number, by=by)
        return {"lifted": [f.as_dict() for f in lifted]}

    def outbound_attempts(self, request: Request) -> Any:
        from fsguard import outbound

        number = self._dialled(request.params["number"])
        limit = int_arg(request.query, "limit", 50, low=1, high=1000) or 50
        rules = self.app.settings.outbound
        with self.app.db.begin() as session:
            freeze = outbound.active_freeze(session, number)
            return {"number": number, "frozen": freeze.as_dict() if freeze else None,
                    "strikes": outbound.strikes(session, number, rules), "threshold": rules.threshold,
                    "attempts": [outbound.attempt_as_dict(r) for r in outbound.attempts(session, number, limit)],
                    "freezes": [f.as_dict() for f in outbound.freezes(session, number)]}


def bool_arg(values: dict[str, Any], name: str, default: bool | None) -> bool | None:
    value = values.get(name)
    if value is None or value == "":
        return default
    try:
        return bool(coerce_setting(value, bool, name))   # true/false/yes/no/1/0/on/off, as in the config
    except ConfigError as exc:
        raise bad_request(str(exc)) from None


def operator(request: Request, body: dict[str, Any]) -> str:
    """Who made a change, for the audit trail: the body's ``by``, the ``X-Operator`` header, or "api"."""
    given = body.get("by") if isinstance(body.get("by"), str) else request.header("X-Operator")
    given = " ".join(str(given or "").split())[:64]
    return f"api:{given}" if given else "api"


class AdminServer:
    """The HTTP listener, in the same hub as the calls."""

    def __init__(self, app: App, server: CallServer | None = None, listen: str | None = None) -> None:
        host, port = parse_hostport(listen or app.settings.http.listen, "http.listen")
        self.api = AdminAPI(app, server)
        self.http = WSGIServer((host, port), self.api, spawn=Pool(MAX_REQUESTS), log=None,
                               error_log=logging.getLogger("fsguard.http"))

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address  # type: ignore[no-any-return]

    def start(self) -> None:
        self.http.start()
        host, port = self.address
        log.info("http.listening", address=f"{host}:{port}",
                 api="on" if self.api.app.settings.http.token else "off (no http.token)")

    def stop(self) -> None:
        self.http.stop(timeout=1)
