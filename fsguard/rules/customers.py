"""Customers: who is calling, from fsguard's own table or from the business's CRM.

The call-time question is "who owns this number?": one primary-key probe on
``customer_numbers`` joined to ``customers`` (:func:`find`). When the table does not know the
number and a CRM is configured, the CRM is asked (:class:`CRM`), under three protections so that
a slow or broken CRM never holds a call past ``routing.crm_timeout``:

* a timeout (``gevent.Timeout``) around the whole request, connection included;
* a cache of answers and of misses (``crm_cache_ttl`` / ``crm_miss_ttl``), per process;
* a circuit breaker: after ``crm_failures`` failures in a row the CRM is not asked for
  ``crm_cooldown``; then one call tries it again, and a success closes the breaker.

Whatever happens, the lookup returns a :class:`Lookup` that says what the CRM did (``crm``:
``hit``, ``miss``, ``cached``, ``timeout``, ``error``, ``circuit open``...), which the routing
verdict records. The operator-facing functions (add, import, remove, erase) are below.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
import structlog
import urllib3
from sqlalchemy import Engine, bindparam, create_engine, delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from fsguard.rules import numbers
from fsguard.config import RoutingSettings, parse_duration
from fsguard.store.db import normalise_url
from fsguard.store.models.base import utcnow
from fsguard.store.models.customers import Customer, CustomerNumber
from fsguard.rules.routing import NAME_RE
from fsguard.rules.spreadsheet import looks_like_formula, unescape_cell

log = structlog.get_logger("fsguard.routing")

#: the fields of a customer as fsguard reads them from its table, a CSV file or a CRM
FIELDS = ("account_id", "name", "vip", "queue", "agent", "region")
#: longest CRM answer read, in bytes (a CRM that sends more is broken)
MAX_CRM_BYTES = 256 * 1024


class CustomerError(ValueError):
    """Bad customer data from an operator (the message says which and why)."""


# -------------------------------------------------------------------- facts


@dataclass(frozen=True)
class CustomerInfo:
    """What is known about a caller: the facts routing and the agent's screen use."""

    #: fsguard's own id (None for a customer known only to the CRM)
    id: int | None = None
    account_id: str | None = None
    name: str = ""
    vip: bool = False
    queue: str | None = None
    agent: str | None = None
    region: str | None = None
    #: "local" (fsguard's table) or "crm"
    source: str = "local"
    numbers: tuple[str, ...] = ()
    #: how a local customer was entered: cli, import, api
    added_via: str | None = None

    @property
    def customer_id(self) -> str:
        """The id shown on the agent's screen: the business's account id, else fsguard's own id."""
        return self.account_id or (str(self.id) if self.id is not None else "")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["numbers"] = list(self.numbers)
        return data

    def routing_inputs(self) -> dict[str, Any]:
        """What a replay needs to route this caller again (no name: nothing personal beyond that)."""
        return {"account_id": self.account_id, "vip": self.vip, "queue": self.queue, "agent": self.agent,
                "region": self.region, "source": self.source}

    @classmethod
    def from_inputs(cls, stored: dict[str, Any], number: str | None) -> CustomerInfo:
        """A CRM customer as :meth:`routing_inputs` stored it with the call (for a replay)."""
        def text(key: str) -> str | None:
            value = stored.get(key)
            return value if isinstance(value, str) else None

        return cls(id=None, account_id=text("account_id"), vip=stored.get("vip") is True, queue=text("queue"),
                   agent=text("agent"), region=text("region"), source="crm",
                   numbers=(number,) if number else ())

    @classmethod
    def from_row(cls, row: Customer) -> CustomerInfo:
        return cls(id=row.id, account_id=row.account_id, name=row.name, vip=row.vip, queue=row.queue,
                   agent=row.agent, region=row.region, source="local",
                   numbers=tuple(n.number for n in row.numbers) if "numbers" in row.__dict__ else (),
                   added_via=row.source)


#: built once: it runs for every inbound call
_FIND = (select(Customer.id, Customer.account_id, Customer.name, Customer.vip, Customer.queue, Customer.agent,
                Customer.region)
         .join(CustomerNumber, CustomerNumber.customer_id == Customer.id)
         .where(CustomerNumber.number == bindparam("number")))


def find(session: Session, number: str) -> CustomerInfo | None:
    """The customer who owns ``number`` (E.164): one primary-key probe, joined."""
    row = session.execute(_FIND, {"number": number}).first()
    if row is None:
        return None
    return CustomerInfo(id=row.id, account_id=row.account_id, name=row.name, vip=row.vip, queue=row.queue,
                        agent=row.agent, region=row.region, source="local", numbers=(number,))


# ---------------------------------------------------------------------- CRM


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


# ------------------------------------------------------------ the operator


def normalise_customer(values: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Check and tidy operator-given fields (from the CLI or a CSV row); raises CustomerError."""
    out: dict[str, Any] = {}
    prefix = f"{where}: " if where else ""
    for key in ("name", "account_id", "region"):
        if key in values and values[key] is not None:
            text_value = str(values[key]).strip()
            if re.search(r"[\x00-\x1f\x7f]", text_value):
                raise CustomerError(f"{prefix}{key} contains control characters")
            limit = {"name": 256, "account_id": 64, "region": 64}[key]
            if len(text_value) > limit:
                raise CustomerError(f"{prefix}{key} is longer than {limit} characters")
            if key != "name" and looks_like_formula(text_value):
                # an identifier never starts like a spreadsheet formula (=, +, -, @); a name may,
                # and is written as text in every CSV export (fsguard.rules.spreadsheet)
                raise CustomerError(f"{prefix}{key} {text_value!r} cannot start with =, +, -, or @")
            out[key] = text_value or None
    if "name" in out:
        out["name"] = out["name"] or ""
    for key in ("queue", "agent"):
        if key in values and values[key] is not None:
            text_value = str(values[key]).strip()
            if text_value and not NAME_RE.match(text_value):
                kind = "an agent" if key == "agent" else "a queue"
                raise CustomerError(f"{prefix}{key} {text_value!r} is not {kind} name "
                                    "(letters, digits, . _ - + and an optional @domain)")
            out[key] = text_value or None
    if "vip" in values and values["vip"] is not None:
        vip = values["vip"]
        if isinstance(vip, str):
            low = vip.strip().lower()
            if low not in ("", "0", "1", "true", "false", "yes", "no", "y", "n"):
                raise CustomerError(f"{prefix}vip must be true/false/yes/no/1/0, got {vip!r}")
            vip = low in ("1", "true", "yes", "y")
        out["vip"] = bool(vip)
    return out


def parse_numbers(raw: Iterable[str], region: str, *, where: str = "") -> list[str]:
    """Operator-typed numbers in E.164; CustomerError naming the bad one."""
    out: list[str] = []
    for item in raw:
        for piece in re.split(r"[;|]", item):
            if not piece.strip():
                continue
            try:
                e164 = numbers.to_e164(piece.strip(), region)
            except numbers.InvalidNumber as exc:
                raise CustomerError(f"{where + ': ' if where else ''}{exc}") from None
            if e164 not in out:
                out.append(e164)
    return out


@dataclass
class Saved:
    customer: CustomerInfo
    created: bool
    added_numbers: list[str]


def save(session: Session, numbers_: list[str], fields: dict[str, Any], *, source: str = "cli") -> Saved:
    """Add a customer, or update the one these numbers (or this account id) belong to.

    A customer is found by ``account_id`` when one is given, else by any of the numbers. A number
    that already belongs to another customer is an error (move it with ``customers remove`` first):
    a number routes to one customer only.
    """
    account = fields.get("account_id")
    by_account = session.scalars(select(Customer).where(Customer.account_id == account)).first() if account else None
    owners = {n.number: n.customer for n in session.scalars(
        select(CustomerNumber).options(selectinload(CustomerNumber.customer))
        .where(CustomerNumber.number.in_(numbers_)))} if numbers_ else {}
    owner_ids = {c.id for c in owners.values()}
    customer: Customer | None
    if by_account is not None:
        customer = by_account
        others = {n: c for n, c in owners.items() if c.id != customer.id}
    elif len(owner_ids) > 1:
        raise CustomerError("these numbers belong to different customers: "
                            + ", ".join(f"{n} ({_who(c)})" for n, c in owners.items()))
    else:
        customer = next(iter(owners.values()), None)
        others = {}
        if customer is not None and account and customer.account_id and customer.account_id != account:
            raise CustomerError(f"{next(iter(owners))} belongs to customer {_who(customer)}, not to account "
                                f"{account}; remove it first (fsguard customers remove {next(iter(owners))})")
    if others:
        n, c = next(iter(others.items()))
        raise CustomerError(f"{n} already belongs to customer {_who(c)}; remove it first "
                            f"(fsguard customers remove {n})")
    created = customer is None
    if customer is None:
        if not numbers_:
            raise CustomerError("a new customer needs at least one number")
        customer = Customer(name="", vip=False, source=source, created_at=utcnow())
        session.add(customer)
    for key, value in fields.items():
        setattr(customer, key, value)
    customer.updated_at = utcnow()
    session.flush()
    added = [n for n in numbers_ if n not in owners]
    for n in added:
        session.add(CustomerNumber(number=n, customer_id=customer.id, created_at=utcnow()))
    session.flush()
    session.refresh(customer, ["numbers"])
    return Saved(CustomerInfo.from_row(customer), created, added)


def _who(c: Customer) -> str:
    return f"{c.account_id} (id {c.id})" if c.account_id else f"id {c.id}"


@dataclass
class ImportResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    numbers: int = 0
    errors: list[str] = field(default_factory=list)


#: CSV header names accepted for each field
CSV_COLUMNS = {"number": "numbers", "numbers": "numbers", "phone": "numbers", "phones": "numbers",
               "name": "name", "account": "account_id", "account_id": "account_id", "vip": "vip",
               "queue": "queue", "agent": "agent", "region": "region"}


def import_csv(session: Session, stream: io.TextIOBase | Any, region: str, *, source: str = "import",
               skip_invalid: bool = False) -> ImportResult:
    """Add or update customers from CSV (header row: number(s), name, account, vip, queue, agent, region).

    Several numbers in one cell are separated by ``;``; rows with the same account are one customer.
    An empty cell leaves that field of an existing customer as it is.
    All rows are read and checked first. With an error and without ``skip_invalid`` the result
    lists it and the caller rolls the transaction back, so a bad file changes nothing.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise CustomerError("the file is empty (expected a header row: number,name,account,vip,queue,agent,region)") \
            from None
    columns: list[str | None] = []
    for name in header:
        key = name.strip().lower().replace(" ", "_")
        if key and key not in CSV_COLUMNS:
            raise CustomerError(f"line 1: unknown column {name!r} (known: number, name, account, vip, queue, "
                                "agent, region)")
        columns.append(CSV_COLUMNS.get(key))
    if "numbers" not in columns:
        raise CustomerError("line 1: the header has no number column")
    result = ImportResult()
    rows: list[tuple[int, list[str], dict[str, Any]]] = []
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            result.errors.append(f"line {line}: {len(cells)} cells for {len(columns)} columns")
            continue
        record: dict[str, Any] = {}
        for col, cell in zip(columns, cells):
            if col and cell.strip():   # an empty cell leaves the field as it is
                record[col] = unescape_cell(cell)   # what export wrote as text, back as it was
        try:
            nums = parse_numbers([record.pop("numbers", "")], region, where=f"line {line}")
            if not nums:
                raise CustomerError(f"line {line}: no number")
            fields_ = normalise_customer(record, where=f"line {line}")
        except CustomerError as exc:
            result.errors.append(str(exc))
            continue
        rows.append((line, nums, fields_))
    if result.errors and not skip_invalid:
        return result
    for line, nums, fields_ in rows:
        try:
            saved = save(session, nums, fields_, source=source)   # checks everything before writing
        except CustomerError as exc:
            result.errors.append(f"line {line}: {exc}")
            if not skip_invalid:
                return result
            continue
        result.rows += 1
        result.created += saved.created
        result.updated += not saved.created
        result.numbers += len(saved.added_numbers)
    return result


def get(session: Session, *, number: str | None = None, account_id: str | None = None) -> Customer | None:
    """A customer row (with its numbers) by number or account id."""
    query = select(Customer).options(selectinload(Customer.numbers))
    if number is not None:
        query = query.join(CustomerNumber).where(CustomerNumber.number == number)
    elif account_id is not None:
        query = query.where(Customer.account_id == account_id)
    else:
        raise ValueError("number or account_id")
    return session.scalars(query).first()


def listing(session: Session, *, vip_only: bool = False, limit: int | None = None) -> list[CustomerInfo]:
    query = select(Customer).options(selectinload(Customer.numbers)).order_by(Customer.id)
    if vip_only:
        query = query.where(Customer.vip.is_(True))
    if limit:
        query = query.limit(limit)
    return [CustomerInfo.from_row(c) for c in session.scalars(query)]


def count(session: Session) -> tuple[int, int]:
    """(customers, numbers)."""
    return (session.scalar(select(func.count()).select_from(Customer)) or 0,
            session.scalar(select(func.count()).select_from(CustomerNumber)) or 0)


def remove_number(session: Session, number: str) -> str | None:
    """Take a number off its customer (and drop a customer left without numbers). None if unknown."""
    owner = get(session, number=number)
    if owner is None:
        return None
    session.execute(delete(CustomerNumber).where(CustomerNumber.number == number))
    remaining = [n.number for n in owner.numbers if n.number != number]
    if not remaining:
        session.execute(delete(Customer).where(Customer.id == owner.id))
        return f"removed {number} and customer {_who(owner)}, who had no other number"
    return f"removed {number} from customer {_who(owner)} ({len(remaining)} number(s) left)"


def remove_customer(session: Session, account_id: str) -> str | None:
    owner = get(session, account_id=account_id)
    if owner is None:
        return None
    count_ = len(owner.numbers)
    session.execute(delete(CustomerNumber).where(CustomerNumber.customer_id == owner.id))
    session.execute(delete(Customer).where(Customer.id == owner.id))
    return f"removed customer {_who(owner)} and {count_} number(s)"


def erase_number(session: Session, number: str) -> list[str]:
    """Erasure by number (``fsguard erase``): the whole customer record this number belongs to.

    The record describes the person who owns the number: name, account id, VIP flag, preferences
    and all of their numbers go. A CRM's data stays the CRM's; fsguard's in-memory CRM cache
    forgets it within routing.crm_cache_ttl.
    """
    owner = get(session, number=number)
    if owner is None:
        return ["no customer record holds this number"]
    nums = [n.number for n in owner.numbers]
    session.execute(delete(CustomerNumber).where(CustomerNumber.customer_id == owner.id))
    session.execute(delete(Customer).where(Customer.id == owner.id))
    for crm in _CRMS.values():
        for n in nums:
            crm.cache.discard(n)
    return [f"deleted customer id {owner.id}{' (account ' + owner.account_id + ')' if owner.account_id else ''}"
            f" with name, preferences and {len(nums)} number(s)"]
