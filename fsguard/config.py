"""One typed settings object: defaults, then a TOML file, then FSGUARD_* environment variables.

Every key lives in a section (``[esl] listen = ...``) and can be overridden from the environment
as ``FSGUARD_<SECTION>_<KEY>`` (``FSGUARD_ESL_LISTEN=0.0.0.0:8084``), which is how systemd units
and containers are usually configured. A bad value stops start-up with one line naming the key:
an operator must never have to read a traceback to find a typo in a config file.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/fsguard/fsguard.toml")


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed; the message names the key."""


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8084`` for IPv6) and check the port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_duration(value: str | int | float, key: str = "duration") -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"30d"`` or ``"2w"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a duration like 90s, 15m, 24h or 30d, got {value!r}") from None


@dataclass
class ESLSettings:
    """The outbound Event Socket listener that FreeSWITCH's ``socket`` application connects to."""

    listen: str = "127.0.0.1:8084"
    #: calls handled at once; a call over this gets the fail-open route at once (never a bare close)
    max_calls: int = 2000
    #: seconds to wait for any reply from FreeSWITCH before giving up on the call
    command_timeout: float = 5.0
    #: "plain" or "json": the format of events after ``myevents`` (the connect reply is always plain)
    event_format: str = "plain"
    #: largest header block or body accepted from FreeSWITCH, in bytes
    max_frame_bytes: int = 1_048_576
    #: longest a routed call is followed for its final CDR data (seconds)
    max_call_seconds: float = 4 * 3600
    #: seconds given to calls still being decided when SIGTERM arrives
    drain_seconds: float = 10.0
    #: inbound ESL (for api commands such as uuid_record): host:port and password
    inbound: str = "127.0.0.1:8021"
    inbound_password: str = "ClueCon"

    def validate(self) -> None:
        parse_hostport(self.listen, "esl.listen")
        parse_hostport(self.inbound, "esl.inbound")
        if self.event_format not in ("plain", "json"):
            raise ConfigError(f"esl.event_format: expected plain or json, got {self.event_format!r}")
        if self.max_calls < 1:
            raise ConfigError("esl.max_calls: must be at least 1")
        if self.command_timeout <= 0:
            raise ConfigError("esl.command_timeout: must be positive")


@dataclass
class HTTPSettings:
    """Health, metrics and the admin API."""

    listen: str = "127.0.0.1:8085"
    #: bearer token for /api/; the API is off when empty
    token: str = ""
    enabled: bool = True

    def validate(self) -> None:
        parse_hostport(self.listen, "http.listen")


@dataclass
class DatabaseSettings:
    """Where all state lives. SQLite for one node, PostgreSQL for production and several nodes."""

    url: str = "sqlite:///var/fsguard.db"
    pool_size: int = 20
    #: seconds a call waits for a database connection before failing open
    pool_timeout: float = 2.0
    #: per-statement timeout in seconds (PostgreSQL statement_timeout, SQLite busy timeout)
    statement_timeout: float = 2.0

    def validate(self) -> None:
        if "://" not in self.url:
            raise ConfigError(f"database.url: expected a URL such as sqlite:///path or postgresql://..., got {self.url!r}")


@dataclass
class LoggingSettings:
    level: str = "info"
    #: "auto" (pretty on a terminal, JSON otherwise), "json" or "console"
    format: str = "auto"

    def validate(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"logging.level: expected debug, info, warning or error, got {self.level!r}")
        if self.format not in ("auto", "json", "console"):
            raise ConfigError(f"logging.format: expected auto, json or console, got {self.format!r}")


@dataclass
class NodeSettings:
    #: this node's id, stored on every call record; the host name by default
    id: str = field(default_factory=socket.gethostname)
    #: calls in these dialplan contexts are agents dialling out
    outbound_contexts: list[str] = field(default_factory=lambda: ["default"])
    #: region used to read numbers that are not in international form (ISO 3166 code)
    default_region: str = "US"


@dataclass
class PolicySettings:
    """What happens when fsguard cannot decide, and whether its decisions are enforced."""

    #: the chain, in order; a stage not named here does not run
    stages: list[str] = field(default_factory=lambda: ["routing"])
    #: false = shadow mode: every stage decides and records what it would do, calls are routed as if they passed
    enforce: bool = True
    #: per-stage override of ``enforce``: {"screening" = false}
    enforce_stages: dict[str, bool] = field(default_factory=dict)
    #: "open" (route the call on) or "closed" (refuse it) when fsguard itself fails
    on_error: str = "open"
    #: where a call goes when fsguard fails open, is over capacity or shuts down
    fail_open_route: str = "transfer default XML queues"
    #: hangup cause when fsguard fails closed
    fail_closed_cause: str = "NORMAL_TEMPORARY_FAILURE"
    #: a caller asked to verify when no verification stage runs: "route" or "reject"
    unverified_action: str = "route"

    def validate(self) -> None:
        if self.on_error not in ("open", "closed"):
            raise ConfigError(f"policy.on_error: expected open or closed, got {self.on_error!r}")
        if self.unverified_action not in ("route", "reject"):
            raise ConfigError(f"policy.unverified_action: expected route or reject, got {self.unverified_action!r}")
        validate_target(self.fail_open_route, "policy.fail_open_route")

    def enforced(self, stage: str) -> bool:
        return self.enforce_stages.get(stage, self.enforce)


ROUTE_APPS = ("transfer", "callcenter", "bridge")


def validate_target(target: str, key: str) -> None:
    """A routing target is ``<application> <argument>`` with one of the routing applications."""
    app, _, arg = target.strip().partition(" ")
    if app not in ROUTE_APPS or not arg.strip():
        raise ConfigError(f"{key}: expected '<transfer|callcenter|bridge> <argument>', got {target!r}")
    if "\n" in target or "\r" in target:
        raise ConfigError(f"{key}: a target cannot contain line breaks")


@dataclass
class ScreeningSettings:
    """Who may pass: lists, flood and nuisance blocking, withheld callers, STIR/SHAKEN, DNO."""


@dataclass
class VerificationSettings:
    """The unbilled IVR challenge."""


@dataclass
class RecordingSettings:
    """Who is recorded, where, and for how long."""

    dir: str = "var/recordings"


@dataclass
class RoutingSettings:
    """Where a call goes once it may pass."""

    #: where a call goes when no routing rule matches
    default_target: str = "transfer default XML queues"

    def validate(self) -> None:
        validate_target(self.default_target, "routing.default_target")


@dataclass
class OutboundSettings:
    """Agents dialling out: the freeze rule for numbers that do not want the call."""


@dataclass
class Settings:
    """Everything fsguard can be told. Sections map to TOML tables and FSGUARD_<SECTION>_<KEY>."""

    esl: ESLSettings = field(default_factory=ESLSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    screening: ScreeningSettings = field(default_factory=ScreeningSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    #: the file these settings came from, if any (for reloads)
    source: Path | None = None

    def validate(self) -> None:
        for section in _sections(self):
            check = getattr(getattr(self, section), "validate", None)
            if check:
                check()


def _sections(settings: Settings) -> list[str]:
    return [f.name for f in dataclasses.fields(settings) if f.name != "source"]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn a TOML or environment value into the declared type, or say which key is wrong."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(value, args[0], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if hint is int else 'a number'}, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint) or (str, Any)
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{key}: expected name=value pairs separated by commas, got {value!r}")
            value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    return value


def _apply(section: Any, name: str, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown setting ({where})")
        setattr(section, key, _coerce(value, hints[key], f"{name}.{key}"))


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build the settings: defaults, then ``path`` (or /etc/fsguard/fsguard.toml if it exists), then env.

    Raises ConfigError with a one-line message naming the offending key.
    """
    env = os.environ if env is None else env
    settings = Settings()
    if path is None and env.get("FSGUARD_CONFIG"):
        path = env["FSGUARD_CONFIG"]
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        settings.source = path
        for name, values in data.items():
            section = getattr(settings, name, None)
            if not dataclasses.is_dataclass(section) or not isinstance(values, dict):
                raise ConfigError(f"{name}: unknown section in {path}")
            _apply(section, name, values, str(path))
    for name in _sections(settings):
        section = getattr(settings, name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            var = f"FSGUARD_{name}_{f.name}".upper()
            if var in env:
                _apply(section, name, {f.name: env[var]}, var)
    settings.validate()
    return settings


def load_or_exit(path: str | Path | None = None) -> Settings:
    """Load the settings for a command, or print the one clear line and exit 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"fsguard: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
