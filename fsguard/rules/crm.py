"""The business's CRM, asked who owns a number when fsguard's customer table does not know it.

The CRM is an HTTP(S) URL answering JSON or a database queried with SQL (``routing.crm_url``).
It is asked under three protections so that a slow or broken CRM never holds a call past
``routing.crm_timeout``:

* a timeout (``gevent.Timeout``) around the whole request, connection included;
* a cache of answers and of misses (``crm_cache_ttl`` / ``crm_miss_ttl``), per process;
* a circuit breaker: after ``crm_failures`` failures in a row the CRM is not asked for
  ``crm_cooldown``; then one call tries it again, and a success closes the breaker.

Whatever happens, the lookup returns a :class:`Lookup` that says what the CRM did (``crm``:
``hit``, ``miss``, ``cached``, ``timeout``, ``error``, ``circuit open``...), which the routing
verdict records.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import structlog
import urllib3
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from fsguard.config import RoutingSettings, parse_duration
from fsguard.store.db import normalise_url
from fsguard.rules.customers import FIELDS, CustomerInfo
from fsguard.rules.routing import NAME_RE

log = structlog.get_logger("fsguard.routing")

#: longest CRM answer read, in bytes (a CRM that sends more is broken)
MAX_CRM_BYTES = 256 * 1024


class CRMTimeout(Exception):
    """The CRM did not answer within routing.crm_timeout."""


class CRMError(Exception):
    """The CRM answered something unusable (HTTP error, bad JSON, SQL error)."""


@dataclass
class Lookup:
    """The outcome of looking a caller up."""

    customer: CustomerInfo | None = None
    #: what the CRM did: "not configured", "not asked" (the table knew the caller), "hit", "miss",
    #: "cached hit", "cached miss", "timeout", "error", "circuit open", "not asked (replay)"
    crm: str = "not configured"
    #: why the CRM failed, when it did
    crm_error: str | None = None
    crm_ms: float | None = None
    #: the local lookup failed (database down): the call is routed on what else is known
    local_error: str | None = None


class CircuitBreaker:
    """Stops asking a failing service for a while, then lets one request try it again.

    Shared by all the calls of one process (greenlets: no locks needed around plain attributes).
    """

    def __init__(self, failures: int, cooldown: float, clock: Any = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """May a request go out now? In half-open state only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failure(self) -> bool:
        """Count a failure; True if this one opened (or re-opened) the breaker."""
        self.failures += 1
        was_trial, self.trial = self.trial, False
        if was_trial or (self.opened_at is None and self.failures >= self.threshold):
            self.opened_at = self.clock()
            return True
        return False


class TTLCache:
    """A small LRU with per-entry expiry: CRM answers (and misses) by number."""

    def __init__(self, size: int, clock: Any = time.monotonic) -> None:
        self.size = size
        self.clock = clock
        self.data: OrderedDict[str, tuple[float, CustomerInfo | None]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, CustomerInfo | None]:
        item = self.data.get(key)
        if item is None:
            return False, None
        if item[0] < self.clock():
            del self.data[key]
            return False, None
        self.data.move_to_end(key)
        return True, item[1]

    def put(self, key: str, value: CustomerInfo | None, ttl: float) -> None:
        if self.size <= 0 or ttl <= 0:
            return
        self.data[key] = (self.clock() + ttl, value)
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def discard(self, key: str) -> None:
        self.data.pop(key, None)


class CRM:
    """The business's CRM, asked by number with a timeout, a cache and a circuit breaker."""

    def __init__(self, settings: RoutingSettings) -> None:
        self.settings = settings
        self.url = settings.crm_url.strip()
        self.kind = "http" if self.url.lower().startswith(("http://", "https://")) else "sql"
        self.timeout = settings.crm_timeout
        self.cache = TTLCache(settings.crm_cache_size)
        self.hit_ttl = parse_duration(settings.crm_cache_ttl, "routing.crm_cache_ttl")
        self.miss_ttl = parse_duration(settings.crm_miss_ttl, "routing.crm_miss_ttl")
        self.breaker = CircuitBreaker(settings.crm_failures, parse_duration(settings.crm_cooldown,
                                                                            "routing.crm_cooldown"))
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None

    def describe(self) -> str:
        """The CRM's address for logs, without any password."""
        if self.kind == "sql":
            from sqlalchemy.engine import make_url

            try:
                return make_url(normalise_url(self.url)).render_as_string(hide_password=True)
            except Exception:  # noqa: BLE001
                return "<database CRM>"
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    def lookup(self, number: str) -> Lookup:
        """Ask the CRM about ``number``; never raises, never waits past the timeout."""
        cached, value = self.cache.get(number)
        if cached:
            return Lookup(value, "cached hit" if value else "cached miss")
        if not self.breaker.allow():
            return Lookup(None, "circuit open")
        started = time.perf_counter()
        try:
            with gevent.Timeout(self.timeout, CRMTimeout(f"no answer within {self.timeout:g} s")):
                customer = self._http(number) if self.kind == "http" else self._sql(number)
        except CRMTimeout as exc:
            return self._failed(number, "timeout", str(exc), started)
        except (CRMError, SQLAlchemyError, OSError, ValueError) as exc:
            return self._failed(number, "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300], started)
        elapsed = (time.perf_counter() - started) * 1000
        self.breaker.success()
        self.cache.put(number, customer, self.hit_ttl if customer else self.miss_ttl)
        return Lookup(customer, "hit" if customer else "miss", crm_ms=round(elapsed, 3))

    def _failed(self, number: str, what: str, why: str, started: float) -> Lookup:
        opened = self.breaker.failure()
        log.warning("crm.failed", crm=self.describe(), outcome=what, error=why,
                    breaker="opened" if opened else self.breaker.state, failures=self.breaker.failures)
        return Lookup(None, what, crm_error=why, crm_ms=round((time.perf_counter() - started) * 1000, 3))

    # --------------------------------------------------------------- HTTP

    def _http_pool(self) -> urllib3.PoolManager:
        """Kept-alive connections to the CRM (urllib3): a lookup on the call's path reuses one
        instead of paying a TCP (and TLS) handshake each time, as urllib.request did. No retries
        and no redirects inside the timeout: a 3xx is an error to fix in routing.crm_url."""
        if self._pool is None:
            self._pool = urllib3.PoolManager(
                num_pools=4, maxsize=32, block=False, retries=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                headers={"Accept": "application/json", "User-Agent": "fsguard", **self.settings.crm_headers})
        return self._pool

    def _http(self, number: str) -> CustomerInfo | None:
        url = self.url.format(number=urllib.parse.quote(number, safe=""), digits=number.lstrip("+"))
        try:
            reply = self._http_pool().request("GET", url, preload_content=False)
        except urllib3.exceptions.NewConnectionError as exc:   # a refusal, though urllib3 files it under timeouts
            raise CRMError(f"cannot reach the CRM: {exc.__cause__ or exc}") from None
        except urllib3.exceptions.TimeoutError:
            raise CRMTimeout(f"no answer within {self.timeout:g} s") from None
        except urllib3.exceptions.HTTPError as exc:
            raise CRMError(f"cannot reach the CRM: {exc}") from None
        reusable = True
        try:
            if reply.status == 404:
                return None
            if not 200 <= reply.status < 300:
                raise CRMError(f"HTTP {reply.status} {reply.reason or ''}".rstrip())
            body = reply.read(MAX_CRM_BYTES + 1)
            if len(body) > MAX_CRM_BYTES:
                reusable = False
                raise CRMError(f"answer larger than {MAX_CRM_BYTES} bytes")
        except urllib3.exceptions.TimeoutError:
            reusable = False
            raise CRMTimeout(f"no answer within {self.timeout:g} s") from None
        except urllib3.exceptions.HTTPError as exc:
            reusable = False
            raise CRMError(f"cannot read the CRM's answer: {exc}") from None
        finally:
            if reusable:
                reply.drain_conn()     # the rest of a 404's or an error's body, so the connection is reused
                reply.release_conn()
            else:
                reply.close()
        if not body.strip():
            return None
        try:
            data = json.loads(body)
        except ValueError:
            raise CRMError("answer is not JSON") from None
        if isinstance(data, list):
            data = data[0] if data else None
        if data is None or data == {}:
            return None
        if not isinstance(data, dict):
            raise CRMError(f"expected a JSON object, got {type(data).__name__}")
        return self._customer(data, number)

    # ---------------------------------------------------------------- SQL

    def engine(self) -> Engine:
        """The CRM's own engine (never fsguard's pool): small, with short timeouts."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    url = normalise_url(self.url)
                    args: dict[str, Any] = {}
                    if url.startswith("postgresql"):
                        args = {"connect_timeout": max(1, int(self.timeout + 0.999)),
                                "options": f"-c statement_timeout={max(1, int(self.timeout * 1000))}"}
                    elif url.startswith("sqlite"):
                        args = {"check_same_thread": False, "timeout": self.timeout}
                    kwargs: dict[str, Any] = {"connect_args": args}
                    if not url.startswith("sqlite"):
                        kwargs.update(pool_size=5, max_overflow=5, pool_timeout=self.timeout, pool_recycle=300)
                    self._engine = create_engine(url, **kwargs)
        return self._engine

    def _sql(self, number: str) -> CustomerInfo | None:
        conn = None
        try:
            conn = self.engine().connect()
            row = conn.execute(text(self.settings.crm_query),
                               {"number": number, "digits": number.lstrip("+")}).mappings().first()
        except BaseException:
            # a query cut short by the timeout leaves the connection mid-statement: never reuse it
            if conn is not None:
                conn.invalidate()
            raise
        finally:
            if conn is not None:
                conn.close()
        return self._customer(dict(row), number) if row is not None else None

    # ------------------------------------------------------------- fields

    def _customer(self, data: dict[str, Any], number: str) -> CustomerInfo:
        """A CRM record as a customer; fields that could reach a dial string are checked first."""
        mapping = {f: self.settings.crm_fields.get(f, f) for f in FIELDS}
        values = {f: _dig(data, path) for f, path in mapping.items()}
        if values["account_id"] in (None, ""):
            values["account_id"] = _dig(data, "id") if "id" in data else _dig(data, "customer_id")
        account = _clean(values["account_id"], 64)
        queue, agent = _clean(values["queue"], 128), _clean(values["agent"], 128)
        for what, value in (("queue", queue), ("agent", agent)):
            if value and not NAME_RE.match(value):
                log.warning("crm.bad_field", field=what, value=value[:80], note="ignored: not a queue/agent name")
        return CustomerInfo(
            id=None, account_id=account, name=_clean(values["name"], 256) or "", vip=_truthy(values["vip"]),
            queue=queue if queue and NAME_RE.match(queue) else None,
            agent=agent if agent and NAME_RE.match(agent) else None,
            region=_clean(values["region"], 64), source="crm", numbers=(number,))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._pool is not None:
            self._pool.clear()
            self._pool = None


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _clean(value: Any, limit: int) -> str | None:
    """A value safe for a channel variable: no control characters, bounded length."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value)).strip()
    return text[:limit] or None


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return str(value or "").strip().lower() in ("1", "true", "yes", "y", "on", "vip", "t")


#: the process's CRM client, by configuration: a reload with the same CRM settings keeps its
#: cache, breaker and pool; a reload with other settings replaces it
_CRMS: dict[tuple[Any, ...], CRM] = {}


def crm_for(settings: RoutingSettings) -> CRM | None:
    """The process's CRM client for these settings, or None when no CRM is configured."""
    if not settings.crm_url.strip():
        return None
    key = (settings.crm_url, settings.crm_query, tuple(sorted(settings.crm_headers.items())),
           tuple(sorted(settings.crm_fields.items())), settings.crm_timeout, settings.crm_cache_ttl,
           settings.crm_miss_ttl, settings.crm_cache_size, settings.crm_failures, settings.crm_cooldown)
    crm = _CRMS.get(key)
    if crm is None:
        forget_crms()
        crm = _CRMS[key] = CRM(settings)
    return crm


def forget_crms() -> None:
    """Drop the CRM clients (their caches, breakers and pools): a new configuration, or a test."""
    while _CRMS:
        _, old = _CRMS.popitem()
        old.close()   # a call still using it finishes; its connection is discarded on return


def forget(numbers: Iterable[str]) -> None:
    """Drop these numbers from every CRM client's cache (an erasure: the next call asks again)."""
    wanted = list(numbers)
    for crm in _CRMS.values():
        for number in wanted:
            crm.cache.discard(number)
