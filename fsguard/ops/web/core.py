"""What every part of fsguard's HTTP side shares: errors, JSON replies, request validation, and
running database reads off the hub.

Validation is pydantic (v2): each endpoint declares the query parameters or the body it takes as
a model with ``extra="forbid"``, so a misspelt field (``{"expire": "30d"}``) is refused with a 400
naming it instead of being silently dropped, and an enum or a bound is checked before a handler
runs. The messages are written for the operator who typed the request:
``limit: expected an integer from 1 to 1000, got 0``.
"""

from __future__ import annotations

import contextvars
import json
import re
import typing
from datetime import datetime
from typing import Annotated, Any, Callable, ClassVar, TypeVar

import gevent
from annotated_types import Ge, Gt, Le, Lt
from flask import Response, current_app, request
from gevent.lock import BoundedSemaphore
from gevent.threadpool import ThreadPool
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from fsguard.rules import numbers
from fsguard.ops.when import parse_when

#: largest request body accepted (the API takes small JSON documents; a CSV import more)
MAX_BODY = 64 * 1024
MAX_UPLOAD = 8 * 1024 * 1024
#: how long a request waits for one of the API's slots before it is told the server is busy
SLOT_WAIT = 10.0
#: a database read in the thread pool gets this long
READ_TIMEOUT = 30.0

UUID_RE = r"[A-Za-z0-9][A-Za-z0-9_.:-]{5,63}"

T = TypeVar("T")
M = TypeVar("M", bound="Input")


class HTTPError(Exception):
    """Ends a request with an error: ``{"error": message}`` on the API, a page on the console."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def json_response(data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(data, default=str, ensure_ascii=False) + "\n"
    response = Response(body, status=status, mimetype="application/json")
    for name, value in headers or []:
        response.headers[name] = value
    return response


# ------------------------------------------------------------------ validation


def _one_line(value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError("expected one line of text")
    return value


#: a single line of text: operators' reasons, names, filters (no CR/LF/NUL that would forge log lines)
Line = Annotated[str, AfterValidator(_one_line)]


class Input(BaseModel):
    """Base of every request model: unknown fields are refused, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    #: words for a field's error instead of the generic ones (``{"days": "expected a number of days ..."}``)
    messages: ClassVar[dict[str, str]] = {}

    @classmethod
    def parse(cls: type[M], data: dict[str, Any]) -> M:
        """The validated input, or a 400 whose message names each bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise bad_request(describe_errors(cls, exc)) from None

    @classmethod
    def from_query(cls: type[M]) -> M:
        """Query parameters; an empty one (``?ani=``) counts as not given, the last of a repeated one wins."""
        return cls.parse({k: v for k, v in request.args.items(multi=False) if v != ""})

    @classmethod
    def from_body(cls: type[M]) -> M:
        return cls.parse(json_body())


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    """The ge/le bounds of a field, also when they sit inside ``Optional[Annotated[int, ...]]``."""
    low = high = None
    field = model.model_fields.get(name)
    metadata: list[Any] = list(field.metadata) if field else []

    def walk(tp: Any) -> None:
        if typing.get_origin(tp) is Annotated:
            metadata.extend(typing.get_args(tp)[1:])
            walk(typing.get_args(tp)[0])
        else:
            for arg in typing.get_args(tp):
                walk(arg)

    if field is not None:
        walk(field.annotation)
    for meta in metadata:
        for item in ([meta] if not hasattr(meta, "metadata") else [meta, *meta.metadata]):
            if isinstance(item, Ge):
                low = item.ge
            elif isinstance(item, Gt):
                low = item.gt
            elif isinstance(item, Le):
                high = item.le
            elif isinstance(item, Lt):
                high = item.lt
    return low, high


def _choices(model: type[BaseModel], name: str) -> list[str]:
    field = model.model_fields.get(name)
    found: list[str] = []

    def walk(tp: Any) -> None:
        if typing.get_origin(tp) is typing.Literal:
            found.extend(str(a) for a in typing.get_args(tp))
        else:
            for arg in typing.get_args(tp):
                walk(arg)

    if field is not None:
        walk(field.annotation)
    return sorted(found)


def _shown(value: Any) -> str:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return str(int(value))
    return repr(value)


def describe_errors(model: type[Input], exc: ValidationError) -> str:
    """pydantic's errors in the API's words, one ``field: problem`` per error, ``; ``-separated."""
    problems: list[str] = []
    unknown: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else "body"
        kind, given = err["type"], err.get("input")
        if kind == "extra_forbidden":
            unknown.append(".".join(loc))
            continue
        if name in model.messages:
            problems.append(f"{name}: {model.messages[name]}, got {given!r}")
        elif kind == "missing":
            problems.append(f"{name}: required")
        elif kind in ("int_parsing", "int_type", "int_from_float", "greater_than_equal", "less_than_equal",
                      "greater_than", "less_than") and model.model_fields.get(name) is not None:
            low, high = _bounds(model, name)
            span = f" from {low} to {high}" if low is not None and high is not None else ""
            problems.append(f"{name}: expected an integer{span}, got {_shown(given)}")
        elif kind in ("bool_parsing", "bool_type"):
            problems.append(f"{name}: expected true or false, got {given!r}")
        elif kind in ("literal_error", "enum"):
            problems.append(f"{name}: expected one of {', '.join(_choices(model, name))}, got {given!r}")
        elif kind == "string_type":
            problems.append(f"{name}: expected a string, got {given!r}")
        elif kind == "string_too_long":
            limit = err.get("ctx", {}).get("max_length")
            problems.append(f"{name}: expected one line of at most {limit} characters")
        elif kind == "string_pattern_mismatch":
            problems.append(f"{name}: {given!r} is not a valid {name}")
        elif kind == "value_error":
            problems.append(f"{name}: {str(err['ctx'].get('error', err['msg']))}")
        else:
            problems.append(f"{name}: {err['msg']}")
    problems = list(dict.fromkeys(problems))          # a union reports each of its members
    if unknown:
        known = ", ".join(model.model_fields)
        problems.insert(0, f"unknown field(s): {', '.join(sorted(unknown))} (known: {known})")
    return "; ".join(problems)


def json_body() -> dict[str, Any]:
    """The body as a JSON object; 400/413/415 with the reason otherwise (an empty body is ``{}``)."""
    length = request.content_length or 0
    if length > MAX_BODY:
        raise HTTPError(413, f"request body too large ({length} bytes, at most {MAX_BODY})")
    if length == 0:
        return {}
    ctype = (request.mimetype or "").lower()
    if ctype != "application/json":
        raise HTTPError(415, f"send the body as application/json (got {ctype or 'no Content-Type'})")
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


# --------------------------------------------------- numbers and times in input


def to_number(raw: str | None, name: str, region: str, *, strict: bool = True) -> str | None:
    """A telephone number as an operator types it, in E.164.

    ``strict`` (for numbers put on a list) wants a number that can exist; a search takes any
    number in international form, since calls are stored with whatever number the network sent.
    """
    if raw is None or raw == "":
        return None
    if not strict:
        number = numbers.parse(raw, region)
        if number.e164 and not number.anonymous:
            return number.e164
    try:
        return numbers.to_e164(raw, region)
    except numbers.InvalidNumber as exc:
        raise bad_request(f"{name}: {exc}") from None


def to_time(raw: str | None, name: str) -> datetime | None:
    return None if raw is None or raw == "" else parse_when(raw, name, error=bad_request)


def check_uuid(uuid: str) -> str:
    if not re.fullmatch(UUID_RE, uuid):
        raise bad_request(f"uuid: {uuid!r} is not a call uuid")
    return uuid


# ------------------------------------------------------ concurrency and the hub


class Limits:
    """How much of the process the HTTP side may take, so that it never starves the calls.

    * ``slots``: requests to the API and the console served at once (health, readiness and
      metrics do not take one, so a busy API never fails a load balancer's probe);
    * ``reads``: a small thread pool of its own where the API's database reads and the shaping of
      their rows run, off the hub that serves the calls (SQLite releases the GIL while it
      reads, and the interpreter switches threads every few milliseconds).
    """

    def __init__(self, slots: int = 8, threads: int = 3) -> None:
        self.slots = BoundedSemaphore(slots)
        self.pool = ThreadPool(threads)

    def close(self) -> None:
        self.pool.kill()


def limits() -> Limits:
    return current_app.extensions["fsguard.limits"]  # type: ignore[no-any-return]


def off_hub(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a database read (and the shaping of its rows) in the HTTP side's thread pool."""
    # Flask's request and app contexts live in contextvars: the thread runs in a copy of ours
    result = limits().pool.spawn(contextvars.copy_context().run, fn, *args, **kwargs)
    try:
        return result.get(timeout=READ_TIMEOUT)  # type: ignore[no-any-return]
    except gevent.Timeout:
        raise HTTPError(503, f"the database read took more than {READ_TIMEOUT:g}s") from None
