"""One typed settings object: defaults, then a TOML file, then FSGUARD_* environment variables.

Every key lives in a section (``[esl] listen = ...``) and can be overridden from the environment
as ``FSGUARD_<SECTION>_<KEY>`` (``FSGUARD_ESL_LISTEN=0.0.0.0:8084``), which is how systemd units
and containers are usually configured. A bad value stops start-up with one line naming the key:
an operator must never have to read a traceback to find a typo in a config file.

Settings are data: this module checks each value's form and imports nothing else of fsguard.
What only a rule can judge (the routing table built from ``[[routing.rules]]``, STIR/SHAKEN's
failure codes) is checked by fsguard.rules.checks, which loads the settings for every command,
``serve`` and its reload: ``load_settings`` here runs the checks it is handed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

#: checks of a section that need a rule, by section name (fsguard.rules.checks hands them in)
SectionChecks = Mapping[str, Callable[[Any], None]]

DEFAULT_CONFIG_PATH = Path("/etc/fsguard/fsguard.toml")
#: where an installed fsguard keeps its state (the unit's StateDirectory). The defaults below are
#: absolute so that every command finds the same database whatever directory it is started from;
#: a checkout's ``make run`` points them at its own var/ through FSGUARD_DATABASE_URL and
#: FSGUARD_RECORDING_DIR.
STATE_DIR = "/var/lib/fsguard"
#: database URL schemes fsguard can use (its drivers are installed with it)
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed; the message names the key.

    ``problems`` holds every problem found (``fsguard config check`` prints them all); the message
    is the first, with a count of the others, so that ``serve`` still stops with one line.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        if len(self.problems) > 1:
            message = (f"{self.problems[0]} (and {len(self.problems) - 1} more problem(s): "
                       "'fsguard config check' lists them all)")
        super().__init__(message)


#: FSGUARD_* variables that are not settings but are read by fsguard or its tests
NON_SETTING_VARIABLES = frozenset({"FSGUARD_CONFIG", "FSGUARD_TEST_PG"})


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

    #: host:port FreeSWITCH's ``socket`` application connects to (``socket host:port async full``)
    listen: str = "127.0.0.1:8084"
    #: calls handled at once; a call over this gets the fail-open route at once (never a bare close)
    max_calls: int = 2000
    #: seconds to wait for any reply from FreeSWITCH before giving up on the call
    command_timeout: float = 5.0
    #: seconds a connection may take to answer ``connect`` (FreeSWITCH answers at once); a peer that
    #: stays silent longer is closed. Until it answers it is not a call: it takes no esl.max_calls slot
    connect_timeout: float = 2.0
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
    #: the password of FreeSWITCH's event_socket.conf.xml (change it there and here)
    inbound_password: str = "ClueCon"
    #: how a routed call is followed to its end (hang-up cause, billsec, the stages' after_call):
    #: "inbound" lets go of the call's socket once routed and learns the end over one inbound
    #: connection (esl.inbound) per node, which needs socket_resume=true set in the dialplan before
    #: ``socket`` (calls without it, and every call while that connection is down, are held as with
    #: "socket"); "socket" holds each routed call's socket until the call ends (docs/operations.rst)
    follow_ends: str = "inbound"

    def validate(self) -> None:
        parse_hostport(self.listen, "esl.listen")
        parse_hostport(self.inbound, "esl.inbound")
        if self.follow_ends not in ("inbound", "socket"):
            raise ConfigError(f"esl.follow_ends: expected inbound or socket, got {self.follow_ends!r}")
        if self.event_format not in ("plain", "json"):
            raise ConfigError(f"esl.event_format: expected plain or json, got {self.event_format!r}")
        if self.max_calls < 1:
            raise ConfigError("esl.max_calls: must be at least 1")
        if self.command_timeout <= 0:
            raise ConfigError("esl.command_timeout: must be positive")
        if self.connect_timeout <= 0:
            raise ConfigError("esl.connect_timeout: must be positive")


@dataclass
class HTTPSettings:
    """Health, metrics and the admin API (docs/operations.rst)."""

    #: host:port of /healthz, /readyz, /metrics and /api/ (keep it on a management network)
    listen: str = "127.0.0.1:8085"
    #: bearer token for /api/ (at least 16 characters; better set FSGUARD_HTTP_TOKEN in an
    #: EnvironmentFile readable by root only); the API is off when empty
    token: str = ""
    #: false: no HTTP listener at all (no health checks, no metrics)
    enabled: bool = True
    #: console: may operators with the viewer role play recordings (supervisors and admins always may)
    viewers_may_listen: bool = False
    #: console: mark the session cookie Secure (set it when a TLS proxy fronts fsguard; a request
    #: that arrives over https gets a Secure cookie anyway)
    behind_tls: bool = False

    def validate(self) -> None:
        parse_hostport(self.listen, "http.listen")
        if self.token and (len(self.token) < 16 or any(c.isspace() for c in self.token)):
            raise ConfigError("http.token: use at least 16 characters and no spaces (e.g. openssl rand -hex 24)")


@dataclass
class DatabaseSettings:
    """Where all state lives. SQLite for one node, PostgreSQL for production and several nodes."""

    #: sqlite:////absolute/path (one node) or postgresql://user:password@host/db (psycopg 3; several nodes)
    url: str = f"sqlite:///{STATE_DIR}/fsguard.db"
    #: connections kept open; at least the calls that use the database at the same moment
    pool_size: int = 20
    #: seconds a call waits for a database connection before failing open
    pool_timeout: float = 2.0
    #: per-statement timeout in seconds (PostgreSQL statement_timeout, SQLite busy timeout)
    statement_timeout: float = 2.0
    #: seconds a call's records are kept and retried while the database cannot be reached; after
    #: that they are logged whole (db.write_abandoned) for an operator to replay
    write_retry_seconds: float = 30.0
    #: seconds a call waits at its end for its records to be committed before closing the socket
    write_wait_seconds: float = 2.0
    #: the call writer commits at most once per this many seconds (group commit): a row after a
    #: quiet spell is written at once, rows that come while commits are frequent share the next
    #: one instead of a transaction per call. 0 commits as soon as the writer wakes. A commit
    #: costs 1.5-2.5 ms of CPU through the switch whatever it carries: at 30 calls a second, 0.05
    #: made it a third of fsguard's CPU per call (docs/performance.rst). The rows wait in memory
    #: meanwhile; a call's end still waits for its own rows before its socket is closed
    write_gather_seconds: float = 0.2

    @property
    def sqlite_path(self) -> Path | None:
        """The file of a SQLite database (None for PostgreSQL or an in-memory database)."""
        scheme, _, rest = self.url.partition("://")
        if scheme.lower() != "sqlite":
            return None
        path = rest.removeprefix("/").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None

    def validate(self) -> None:
        if "://" not in self.url:
            raise ConfigError(f"database.url: expected a URL such as sqlite:///path or postgresql://..., got {self.url!r}")
        scheme = self.url.split("://", 1)[0].lower()
        if scheme not in DATABASE_SCHEMES:
            raise ConfigError(f"database.url: fsguard works with sqlite:/// and postgresql:// databases, "
                              f"not {scheme}://")
        path = self.sqlite_path
        if path is not None and not path.is_absolute():
            raise ConfigError(f"database.url: {self.url!r} names the relative path {str(path)!r}, which depends on "
                              f"the directory fsguard is started from; give an absolute one "
                              f"(sqlite:////var/lib/fsguard/fsguard.db: four slashes)")
        if self.write_retry_seconds < 0 or self.write_wait_seconds < 0 or not 0 <= self.write_gather_seconds <= 1:
            raise ConfigError("database.write_retry_seconds and database.write_wait_seconds cannot be negative, "
                              "and database.write_gather_seconds is from 0 to 1")


@dataclass
class LoggingSettings:
    """What fsguard logs (to stderr: journald under systemd) and in which format."""

    #: debug, info, warning or error
    level: str = "info"
    #: "auto" (pretty on a terminal, JSON otherwise), "json" or "console"
    format: str = "auto"
    #: telephone numbers in log lines: "masked" (all but the last two digits, so a number erased on
    #: request is not left behind in the logs) or "clear" (whole numbers, e.g. while debugging a route)
    numbers: str = "masked"

    def validate(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"logging.level: expected debug, info, warning or error, got {self.level!r}")
        if self.format not in ("auto", "json", "console"):
            raise ConfigError(f"logging.format: expected auto, json or console, got {self.format!r}")
        if self.numbers not in ("masked", "clear"):
            raise ConfigError(f"logging.numbers: expected masked or clear, got {self.numbers!r}")


@dataclass
class NodeSettings:
    """This fsguard node: its id (several nodes share one PostgreSQL) and how it reads numbers."""

    #: this node's id, stored on every call record; the host name by default
    id: str = field(default_factory=socket.gethostname)
    #: calls in these dialplan contexts are agents dialling out
    outbound_contexts: list[str] = field(default_factory=lambda: ["default"])
    #: region used to read numbers that are not in international form (ISO 3166 code)
    default_region: str = "US"

    def validate(self) -> None:
        # the id goes into FreeSWITCH's commands as it is: a channel variable (fsguard_node), the
        # end watcher's event filter, uuid_setvar_multi's name=value;... list
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", self.id or ""):
            raise ConfigError(f"node.id: letters, digits, '.', '_' and '-' only (a host name), got {self.id!r}")


@dataclass
class PolicySettings:
    """What happens when fsguard cannot decide, and whether its decisions are enforced."""

    #: the chain, in order; a stage not named here does not run
    stages: list[str] = field(default_factory=lambda: ["screening", "verification", "recording", "outbound",
                                                       "routing"])
    #: false = shadow mode: every stage decides and records what it would do, calls are routed as if they passed
    enforce: bool = True
    #: per-stage override of ``enforce``: {"screening" = false}
    enforce_stages: dict[str, bool] = field(default_factory=dict)
    #: "open" (route the call on) or "closed" (refuse it) when fsguard itself fails
    on_error: str = "open"
    #: where a call goes when fsguard fails open, is over capacity or shuts down
    fail_open_route: str = "transfer default XML queues"
    #: the same for an agent's outbound call (fsguard_direction / node.outbound_contexts): "dial"
    #: dials the number the agent dialled with outbound.dial_target, as the outbound stage does
    #: with a number it lets through; or a routing target, where {number}, {digits} and {national}
    #: stand for the dialled number as in outbound.dial_target ("transfer {digits} XML direct")
    fail_open_route_outbound: str = "dial"
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
        self.fail_open_route_outbound = self.fail_open_route_outbound.strip()
        if self.fail_open_route_outbound != "dial":
            try:
                sample = self.fail_open_route_outbound.format(number="+15557654321", digits="15557654321",
                                                              national="5557654321")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"policy.fail_open_route_outbound: unknown placeholder {exc} in "
                                  f"{self.fail_open_route_outbound!r} (use {{number}}, {{digits}} or {{national}}, "
                                  "or \"dial\" for outbound.dial_target)") from None
            validate_target(sample, "policy.fail_open_route_outbound")

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


#: risk points each screening signal adds to a call (screening.risk_points overrides some or all)
SCREENING_RISK_POINTS: dict[str, int] = {
    "stir_A": 0, "stir_B": 20, "stir_C": 40, "stir_passed": 0, "stir_none": 10, "stir_failed": 50,
    "withheld": 10, "invalid": 30, "anonymous": 30, "soft_block_per_level": 10, "hard_block": 100, "dno": 100,
    "untrusted_identity": 20,
}
#: what each STIR/SHAKEN outcome does (screening.stir_actions overrides some or all; a failure code
#: such as stale_iat may be given its own action, else "failed" applies)
SCREENING_STIR_ACTIONS: dict[str, str] = {"A": "pass", "B": "pass", "C": "pass", "passed": "pass", "none": "pass",
                                          "failed": "challenge"}
_SCREEN_ACTION = ("pass", "challenge", "reject")


def _block_action(value: str, key: str, extra: tuple[str, ...] = ()) -> None:
    """reject | busy | transfer:TARGET | hangup:CAUSE (and ``extra`` words such as challenge)."""
    text = value.strip()
    low = text.lower()
    if low in ("reject", "busy") + extra:
        return
    kind, sep, arg = text.partition(":")
    if sep and kind.lower() in ("transfer", "hangup") and arg.strip() and "\n" not in arg and "\r" not in arg:
        return
    words = "|".join(("reject", "busy") + extra)
    raise ConfigError(f"{key}: expected {words}, transfer:TARGET or hangup:CAUSE, got {value!r}")


@dataclass
class ScreeningSettings:
    """Who may pass: lists, flood and nuisance blocking, withheld callers, STIR/SHAKEN, DNO."""

    #: what a hard block (level 6 and above) does when its entry has no action of its own:
    #: reject (CALL_REJECTED), busy (USER_BUSY), transfer:TARGET (e.g. "transfer:9999 XML announcements")
    hard_action: str = "reject"
    #: what a soft block (level 1-5) does: "challenge" (the verification stage decides; without one,
    #: policy.unverified_action applies), or pass, reject, busy, transfer:TARGET
    soft_action: str = "challenge"
    #: a caller number that cannot exist (phonenumbers): pass, challenge or reject
    invalid_action: str = "challenge"
    #: a call with no number at all, not even the network's: pass, challenge or reject
    anonymous_action: str = "challenge"
    #: a call presenting one of our Do-Not-Originate numbers (spoofed): reject or challenge
    dno_action: str = "reject"

    #: more than flood_hour calls in the last hour, or flood_day in the last day, from one number
    #: blocks it (0 switches a limit off); the call that crosses the limit is already blocked
    flood_hour: int = 10
    flood_day: int = 30
    #: level and lifetime of a flood block
    flood_level: int = 3
    flood_ttl: str = "24h"
    #: limits for particular dialled numbers: {"+18005550100" = {hour = 3, day = 10, level = 4, ttl = "2h"}}
    flood_dnis: dict[str, Any] = field(default_factory=dict)

    #: nuisance_calls calls that end within nuisance_seconds (call-and-hang-up) inside nuisance_window
    #: block the number at nuisance_level for nuisance_ttl (0 calls: off)
    nuisance_calls: int = 5
    nuisance_seconds: float = 5.0
    nuisance_window: str = "24h"
    nuisance_level: int = 2
    nuisance_ttl: str = "24h"

    #: a caller whose screening signals add up to this many risk points is challenged
    challenge_risk: int = 50
    #: points each signal adds (a signal left out keeps its default)
    risk_points: dict[str, int] = field(default_factory=lambda: dict(SCREENING_RISK_POINTS))

    #: pass / challenge / reject per STIR/SHAKEN outcome: A, B, C, passed (verified, level unknown),
    #: none (no information), failed (any failure), or a failure code of its own (bad_signature,
    #: stale_iat, tn_mismatch, untrusted_cert, cert_expired, cert_unavailable, carrier_failed, ...);
    #: an outcome left out keeps its default
    stir_actions: dict[str, str] = field(default_factory=lambda: dict(SCREENING_STIR_ACTIONS))
    #: CA certificates trusted to sign SHAKEN certificates (a PEM file or a directory of them);
    #: empty: Identity headers are not verified by fsguard (a verstat on the channel still counts)
    stir_trust_store: str = ""
    #: a PASSporT older (or further in the future) than this many seconds is stale
    stir_max_age: float = 60.0
    #: seconds to fetch a certificate from x5u; fetched certificates are kept stir_cert_cache
    stir_fetch_timeout: float = 2.0
    stir_cert_cache: str = "1h"
    #: accept x5u URLs over plain http (the SHAKEN spec requires https)
    stir_allow_http: bool = False
    #: channel variables that may carry the SIP Identity header (first non-empty wins)
    stir_identity_variables: list[str] = field(
        default_factory=lambda: ["sip_identity", "sip_h_Identity", "sip_i_identity"])

    #: who may assert a caller's identity (P-Asserted-Identity, Remote-Party-ID): the networks of
    #: the carriers and SBCs whose calls come in (the channel's sip_network_ip, e.g. "203.0.113.0/24")
    #: and the FreeSWITCH gateways they come through (sip_gateway_name). From anyone else the
    #: asserted number is not the caller's: the caller id is screened, the asserted number as well,
    #: and the mismatch is a risk signal (untrusted_identity). Empty: nobody is trusted.
    trusted_networks: list[str] = field(default_factory=list)
    trusted_gateways: list[str] = field(default_factory=list)

    #: expired list entries are purged this long after they expire
    expired_retention: str = "30d"

    def validate(self) -> None:
        _block_action(self.hard_action, "screening.hard_action")
        _block_action(self.soft_action, "screening.soft_action", ("challenge", "pass"))
        for key in ("invalid_action", "anonymous_action"):
            if getattr(self, key) not in _SCREEN_ACTION:
                raise ConfigError(f"screening.{key}: expected pass, challenge or reject, got {getattr(self, key)!r}")
        if self.dno_action not in ("reject", "challenge"):
            raise ConfigError(f"screening.dno_action: expected reject or challenge, got {self.dno_action!r}")
        for key in ("flood_hour", "flood_day", "nuisance_calls", "challenge_risk"):
            if getattr(self, key) < 0:
                raise ConfigError(f"screening.{key}: must be 0 or more")
        for key in ("flood_level", "nuisance_level"):
            if not 1 <= getattr(self, key) <= 99:
                raise ConfigError(f"screening.{key}: expected a block level from 1 to 99")
        for key in ("flood_ttl", "nuisance_window", "nuisance_ttl", "stir_cert_cache", "expired_retention"):
            if parse_duration(getattr(self, key), f"screening.{key}") <= 0:
                raise ConfigError(f"screening.{key}: must be a positive duration")
        if self.nuisance_seconds < 0 or self.stir_max_age <= 0 or self.stir_fetch_timeout <= 0:
            raise ConfigError("screening.nuisance_seconds, stir_max_age, stir_fetch_timeout: must be positive")
        for dnis, limits in self.flood_dnis.items():
            key = f"screening.flood_dnis.{dnis}"
            if not isinstance(limits, dict) or not set(limits) <= {"hour", "day", "level", "ttl"}:
                raise ConfigError(f"{key}: expected a table with hour, day and optionally level and ttl")
            for name in ("hour", "day", "level"):
                if name in limits and (isinstance(limits[name], bool) or not isinstance(limits[name], int)
                                       or limits[name] < 0):
                    raise ConfigError(f"{key}.{name}: expected a whole number, 0 or more")
            if "ttl" in limits:
                parse_duration(limits["ttl"], f"{key}.ttl")
        unknown = set(self.risk_points) - set(SCREENING_RISK_POINTS)
        if unknown:
            raise ConfigError(f"screening.risk_points: unknown signal(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(SCREENING_RISK_POINTS)})")
        # which outcomes there are is STIR/SHAKEN's to say: fsguard.rules.checks checks the names
        for key, value in self.stir_actions.items():
            if value not in _SCREEN_ACTION:
                raise ConfigError(f"screening.stir_actions.{key}: expected pass, challenge or reject, got {value!r}")
        if self.stir_trust_store and not Path(self.stir_trust_store).exists():
            raise ConfigError(f"screening.stir_trust_store: {self.stir_trust_store} does not exist")
        import ipaddress

        for network in self.trusted_networks:
            try:
                ipaddress.ip_network(network.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"screening.trusted_networks: {network!r} is not an address or network "
                                  "(e.g. 203.0.113.0/24)") from None

    def seconds(self, key: str) -> float:
        """A duration setting in seconds (``settings.screening.seconds("flood_ttl")``)."""
        return parse_duration(getattr(self, key), f"screening.{key}")

    def points(self, signal: str) -> int:
        return int(self.risk_points.get(signal, SCREENING_RISK_POINTS[signal]))

    def stir_action(self, outcome: str, failure: str = "") -> str:
        """pass / challenge / reject for an attestation or outcome, a failure code first."""
        if failure and failure in self.stir_actions:
            return self.stir_actions[failure]
        return self.stir_actions.get(outcome, SCREENING_STIR_ACTIONS.get(outcome, "pass"))


#: what can make the verification stage challenge a caller (verification.triggers)
VERIFICATION_TRIGGERS = ("soft_block", "anonymous", "invalid", "stir", "dno", "risk", "other")
#: how a challenge may end
VERIFICATION_OUTCOMES = ("passed", "wrong", "no_input", "abandoned")


def sound_seconds(sound: str, known: dict[str, float] | None = None) -> float | None:
    """How long a sound lasts, when fsguard can know it: ``tone_stream://%(on,off,...)`` (one
    cycle, times ``;loops=N``), ``silence_stream://MS``, a ``file_string://a!b`` of knowable
    parts, or a file listed in ``known`` (verification.sound_seconds). None otherwise."""
    import re

    known = known or {}
    text = sound.strip()
    if text in known:
        return float(known[text])
    if text.startswith("file_string://"):
        parts = [p for p in text[len("file_string://"):].split("!") if p]
        lengths = [sound_seconds(p, known) for p in parts]
        return None if any(x is None for x in lengths) else sum(lengths)  # type: ignore[misc]
    if text.startswith("silence_stream://"):
        ms = re.match(r"(\d+)", text[len("silence_stream://"):])
        return int(ms.group(1)) / 1000 if ms and int(ms.group(1)) > 0 else None   # 0 or less: endless
    m = re.match(r"tone_stream://%\((\d+),(\d+),[\d.,+]+\)(?:;loops=(\d+))?\Z", text)
    if m:
        return (int(m.group(1)) + int(m.group(2))) * int(m.group(3) or 1) / 1000
    return None


@dataclass
class VerificationSettings:
    """The unbilled IVR challenge (docs/verification.rst).

    The code is announced in early media (SIP 183: the caller hears it, nobody pays); the call is
    answered only to collect the digits, in a window ``guard_margin`` shorter than the carrier's
    unbilled ``guard_interval``, and a caller who fails is hung up inside it: never billed.
    """

    #: the carrier's unbilled guard interval: a call shorter than this (answer to hang-up) is not billed
    guard_interval: float = 5.0
    #: the digit window after the answer is guard_interval minus this, all tries included (room for
    #: network delay and fsguard's hang-up)
    guard_margin: float = 1.0
    #: digits in the code (random, from the secrets module; never the number's previous code)
    code_length: int = 2
    #: tries one challenge allows; a retry is offered only if it still fits in the window
    attempts: int = 3
    #: seconds for the first key after the entry prompt (shortened to what is left of the window)
    first_digit_timeout: float = 2.0
    #: seconds allowed between keys
    inter_digit_timeout: float = 1.0
    #: a retry is offered only if at least this long is left for its first key
    min_first_digit: float = 1.0

    #: before the code, in early media: sounds separated by "!" (stock sounds: "Please enter the... number")
    intro: str = "ivr/ivr-please_enter_the.wav!ivr/ivr-number.wav"
    #: how the code is spoken: "digits" (digit_sound files, in the same playback as the intro) or
    #: "say" (the say application: say en number iterated 42)
    code_voice: str = "digits"
    #: the file for one digit, {digit} replaced (the stock sound packs have digits/0.wav .. digits/9.wav)
    digit_sound: str = "digits/{digit}.wav"
    #: say's language and method when code_voice = "say" (iterated: "four two", not "forty-two")
    say_language: str = "en"
    say_method: str = "iterated"
    #: times the code is spoken in early media, with repeat_pause between
    code_repeats: int = 2
    repeat_pause: str = "silence_stream://700"
    #: after the answer: the caller keys the code now (keys pressed while it plays count)
    entry_prompt: str = "tone_stream://%(250,0,800)"
    #: before each retry, then the entry prompt again
    retry_prompt: str = "tone_stream://%(150,100,480,620)"
    #: seconds a sound FILE played after the answer lasts (entry_prompt, retry_prompt): fsguard must
    #: know it to stay inside the window; tone_stream and silence_stream lengths are read from the string
    sound_seconds: dict[str, float] = field(default_factory=dict)
    #: hang-up cause for a caller who fails (CALL_REJECTED: Q.850 21, SIP 603)
    fail_cause: str = "CALL_REJECTED"

    #: which challenges this stage takes: soft_block, anonymous (no number), invalid (a number that
    #: cannot exist), stir, dno (presenting our Do-Not-Originate number), risk (screening's risk
    #: threshold), other (any other stage's challenge). A challenge no trigger takes gets
    #: policy.unverified_action.
    triggers: list[str] = field(default_factory=lambda: list(VERIFICATION_TRIGGERS))
    #: soft blocks below this level are not challenged by this stage
    min_block_level: int = 1
    #: the STIR/SHAKEN outcomes challenged (A, B, C, passed, none, failed, or a failure code)
    stir_outcomes: list[str] = field(default_factory=lambda: ["A", "B", "C", "passed", "none", "failed"])
    #: also challenge any inbound caller whose risk (all stages' points) reaches this; 0: off
    risk_threshold: int = 0

    #: escalate_after failed challenges within escalate_window block the number at escalate_level
    #: (6 and above: hard, rejected unanswered) for escalate_ttl, with source "auto"; 0: off
    escalate_after: int = 3
    escalate_window: str = "24h"
    escalate_level: int = 6
    escalate_ttl: str = "7d"
    #: what counts as a failure for escalation (wrong, no_input, abandoned)
    escalate_outcomes: list[str] = field(default_factory=lambda: ["wrong", "no_input"])

    @property
    def window(self) -> float:
        """Seconds from the answer by which a failing caller is hung up."""
        return self.guard_interval - self.guard_margin

    def seconds(self, key: str) -> float:
        return parse_duration(getattr(self, key), f"verification.{key}")

    def validate(self) -> None:
        v = "verification"
        if self.guard_interval <= 0 or self.guard_margin < 0.5:
            raise ConfigError(f"{v}.guard_interval must be positive and {v}.guard_margin at least 0.5 s")
        if not 1 <= self.code_length <= 8:
            raise ConfigError(f"{v}.code_length: expected 1 to 8 digits, got {self.code_length}")
        if self.attempts < 1 or self.code_repeats < 1:
            raise ConfigError(f"{v}.attempts and {v}.code_repeats: must be at least 1")
        for key in ("first_digit_timeout", "inter_digit_timeout", "min_first_digit"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{v}.{key}: must be positive")
        if self.code_voice not in ("digits", "say"):
            raise ConfigError(f"{v}.code_voice: expected digits or say, got {self.code_voice!r}")
        if "{digit}" not in self.digit_sound:
            raise ConfigError(f"{v}.digit_sound: must contain {{digit}}, e.g. digits/{{digit}}.wav")
        for key in ("intro", "digit_sound", "repeat_pause", "entry_prompt", "retry_prompt", "say_language",
                    "say_method"):
            value = getattr(self, key)
            if any(c.isspace() for c in value):
                raise ConfigError(f"{v}.{key}: a sound or word without spaces or line breaks, got {value!r}")
        for key in ("entry_prompt", "retry_prompt"):
            if sound_seconds(getattr(self, key), self.sound_seconds) is None:
                raise ConfigError(
                    f"{v}.{key}: fsguard must know how long {getattr(self, key)!r} lasts, because it is played "
                    f"after the answer, inside the unbilled window: use tone_stream:// or silence_stream://N, "
                    f"or give the file's length in {v}.sound_seconds")
        fixed = (sound_seconds(self.entry_prompt, self.sound_seconds) or 0) + \
            (self.code_length - 1) * self.inter_digit_timeout
        if fixed + self.min_first_digit > self.window - 0.2:
            raise ConfigError(
                f"{v}: the entry prompt, {self.code_length - 1} inter-digit timeout(s) and min_first_digit "
                f"({fixed + self.min_first_digit:g} s) do not fit in the window of {self.window:g} s "
                f"(guard_interval - guard_margin)")
        self.fail_cause = self.fail_cause.strip().upper()
        if not self.fail_cause.replace("_", "").isalnum():
            raise ConfigError(f"{v}.fail_cause: {self.fail_cause!r} is not a hang-up cause such as CALL_REJECTED")
        unknown = set(self.triggers) - set(VERIFICATION_TRIGGERS)
        if unknown:
            raise ConfigError(f"{v}.triggers: unknown trigger(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(VERIFICATION_TRIGGERS)})")
        if not 1 <= self.min_block_level <= 99:
            raise ConfigError(f"{v}.min_block_level: expected a block level from 1 to 99")
        if self.risk_threshold < 0 or self.escalate_after < 0:
            raise ConfigError(f"{v}.risk_threshold and {v}.escalate_after: must be 0 or more")
        if not 1 <= self.escalate_level <= 99:
            raise ConfigError(f"{v}.escalate_level: expected a block level from 1 to 99 (6 and above: hard)")
        for key in ("escalate_window", "escalate_ttl"):
            if self.seconds(key) <= 0:
                raise ConfigError(f"{v}.{key}: must be a positive duration")
        bad = set(self.escalate_outcomes) - set(VERIFICATION_OUTCOMES[1:])
        if bad:
            raise ConfigError(f"{v}.escalate_outcomes: unknown outcome(s) {', '.join(sorted(bad))} "
                              "(known: wrong, no_input, abandoned)")


@dataclass
class RecordingSettings:
    """Who is recorded, where, and for how long (see docs/recording.rst).

    ``[[recording.rules]]`` tables are tried in order, the first that matches the call decides;
    a call no rule matches gets ``mode`` / ``purpose`` / ``consent`` from this section.
    """

    #: where FreeSWITCH writes and fsguard hashes and purges recordings: <dir>/YYYY/MM/DD/<uuid>.wav.
    #: Use an absolute path seen the same way by FreeSWITCH and fsguard (same host or same mount).
    dir: str = f"{STATE_DIR}/recordings"
    #: for calls no rule matches: "all", "sample", "on_demand" or "off"
    mode: str = "all"
    #: share of calls recorded in "sample" mode, in percent (reproducible from the call's uuid)
    sample_percent: float = 10.0
    #: purpose of a recording when its rule names none; decides its retention
    purpose: str = "evidence"
    #: how long a recording is kept, by purpose: "5y", "6mo", "90d", "12w", "48h" (merged over the defaults)
    retention: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    #: play the consent announcement before the recording starts (rules may override)
    consent: bool = True
    #: the announcement (a file or ``say:`` / ``tone_stream://`` string, as for playback; a file is
    #: relative to the channel's sound_prefix unless absolute). The default is fsguard's own
    #: "This call may be recorded." (``fsguard:NAME`` names a sound shipped in the package, played
    #: from where fsguard is installed: FreeSWITCH must be able to read it there). Have your own
    #: legal wording recorded and name it here (docs/recording.rst)
    consent_prompt: str = "fsguard:consent-en.wav"
    #: "answer": answer, then announce (the caller surely hears it; billed from the answer) or
    #: "early": announce in early media (unbilled, but only heard where the carrier passes 183 media)
    consent_media: str = "answer"
    #: when the file starts: "bridge" -- once the caller is bridged to an agent or a called party
    #: (record_session run by FreeSWITCH at the bridge, execute_on_pre_bridge): the conversation,
    #: without the queue's wait, hold music or an IVR; a call that never reaches anyone leaves no
    #: file and no recording row. "route"
    #: -- from the moment the call is routed, queue wait included (rules may override)
    start: str = "bridge"
    #: caller and agent on separate channels of a stereo file (RECORD_STEREO)
    stereo: bool = True
    #: channel variable the dialplan sets to name the call's queue, for rules with ``queue = ...``
    queue_variable: str = "fsguard_queue"
    #: the rules, a list of tables: name, dnis, queue, direction, mode, purpose, sample_percent,
    #: consent, consent_prompt, consent_media, start (a JSON list in FSGUARD_RECORDING_RULES)
    rules: Any = field(default_factory=list)
    #: how often ``fsguard serve`` purges expired recordings; "0" turns the periodic purge off
    purge_interval: str = "1h"

    MODES: typing.ClassVar[tuple[str, ...]] = ("all", "sample", "on_demand", "off")
    STARTS: typing.ClassVar[tuple[str, ...]] = ("bridge", "route")
    RULE_KEYS: typing.ClassVar[frozenset[str]] = frozenset(
        {"name", "dnis", "queue", "direction", "mode", "purpose", "sample_percent", "consent", "consent_prompt",
         "consent_media", "start"})

    def validate(self) -> None:
        if not self.dir.strip() or any(c.isspace() for c in self.dir):
            raise ConfigError(f"recording.dir: must be a path without spaces (FreeSWITCH splits record_session's "
                              f"argument on spaces), got {self.dir!r}")
        if not Path(self.dir).expanduser().is_absolute():
            raise ConfigError(f"recording.dir: must be an absolute path (FreeSWITCH and fsguard each resolve a "
                              f"relative one against their own directory), got {self.dir!r}")
        # An operator who adds one purpose keeps the others (evidence, training, analytics).
        self.retention = {**DEFAULT_RETENTION, **self.retention}
        for purpose, period in self.retention.items():
            parse_retention(period, f"recording.retention.{purpose}")
        parse_duration(self.purge_interval, "recording.purge_interval")
        if isinstance(self.rules, str):
            import json

            try:
                self.rules = json.loads(self.rules) if self.rules.strip() else []
            except ValueError as exc:
                raise ConfigError(f"recording.rules: expected a JSON list of tables, {exc}") from None
        if not isinstance(self.rules, list):
            raise ConfigError(f"recording.rules: expected a list of tables ([[recording.rules]]), got {self.rules!r}")
        self._check_choice("recording", {"mode": self.mode, "purpose": self.purpose,
                                         "sample_percent": self.sample_percent, "consent_prompt": self.consent_prompt,
                                         "consent_media": self.consent_media, "consent": self.consent,
                                         "start": self.start})
        for i, rule in enumerate(self.rules):
            key = f"recording.rules[{i}]"
            if not isinstance(rule, dict):
                raise ConfigError(f"{key}: expected a table, got {rule!r}")
            unknown = set(rule) - self.RULE_KEYS
            if unknown:
                raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown rule key "
                                  f"(known: {', '.join(sorted(self.RULE_KEYS))})")
            for name in ("dnis", "queue"):
                value = rule.get(name)
                if value is not None and not (isinstance(value, str) or
                                              (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                    raise ConfigError(f"{key}.{name}: expected a string or a list of strings, got {value!r}")
            if rule.get("direction") not in (None, "inbound", "outbound"):
                raise ConfigError(f"{key}.direction: expected inbound or outbound, got {rule['direction']!r}")
            if "mode" not in rule:
                raise ConfigError(f"{key}.mode: every rule needs a mode (all, sample, on_demand or off)")
            self._check_choice(key, rule)

    def _check_choice(self, key: str, values: dict[str, Any]) -> None:
        if "mode" in values and values["mode"] not in self.MODES:
            raise ConfigError(f"{key}.mode: expected one of {', '.join(self.MODES)}, got {values['mode']!r}")
        if "purpose" in values and values["purpose"] not in self.retention:
            raise ConfigError(f"{key}.purpose: {values['purpose']!r} has no retention "
                              f"(recording.retention knows {', '.join(sorted(self.retention))})")
        if "sample_percent" in values:
            pct = values["sample_percent"]
            if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
                raise ConfigError(f"{key}.sample_percent: expected a number from 0 to 100, got {pct!r}")
        if "consent" in values and not isinstance(values["consent"], bool):
            raise ConfigError(f"{key}.consent: expected true or false, got {values['consent']!r}")
        if "consent_media" in values and values["consent_media"] not in ("answer", "early"):
            raise ConfigError(f"{key}.consent_media: expected answer or early, got {values['consent_media']!r}")
        if "start" in values and values["start"] not in self.STARTS:
            raise ConfigError(f"{key}.start: expected bridge or route, got {values['start']!r}")
        prompt = values.get("consent_prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()
                                   or "\n" in prompt or "\r" in prompt):
            raise ConfigError(f"{key}.consent_prompt: expected a sound file or playback string, got {prompt!r}")
        if isinstance(prompt, str) and prompt.startswith(PACKAGED_SOUND):
            packaged_sound(prompt, f"{key}.consent_prompt")
        if "name" in values and not isinstance(values["name"], str):
            raise ConfigError(f"{key}.name: expected a string, got {values['name']!r}")


#: a sound shipped inside the package: ``fsguard:consent-en.wav`` (fsguard/sounds/)
PACKAGED_SOUND = "fsguard:"


def packaged_sound(value: str, key: str = "sound") -> str:
    """The playback argument for a sound setting: ``fsguard:NAME`` becomes the absolute path of
    that sound in the installed package (FreeSWITCH on the same host plays it from there);
    anything else is returned as it is."""
    if not value.startswith(PACKAGED_SOUND):
        return value
    from importlib import resources

    name = value[len(PACKAGED_SOUND):]
    path = Path(str(resources.files("fsguard") / "sounds" / name))
    if "/" in name or not name or not path.is_file():
        shipped = ", ".join(sorted(p.name for p in path.parent.glob("*.wav"))) if path.parent.is_dir() else "none"
        raise ConfigError(f"{key}: fsguard ships no sound {name!r} (shipped: {shipped})")
    return str(path)


#: recording retention by purpose when the configuration says nothing else
DEFAULT_RETENTION = {"evidence": "5y", "training": "6mo", "analytics": "1y"}

_RETENTION_UNITS = {"y": (12, 0), "mo": (1, 0), "w": (0, 7 * 86400), "d": (0, 86400), "h": (0, 3600)}


def parse_retention(value: str | int, key: str = "retention") -> tuple[int, float]:
    """A retention period as (calendar months, seconds): ``"5y"`` -> (60, 0), ``"6mo"`` -> (6, 0),
    ``"90d"`` -> (0, 7776000). Years and months are calendar ones, so "6mo" from 31 August ends on
    28 (or 29) February: a recording is kept exactly as long as its purpose allows."""
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if unit == "m":
        raise ConfigError(f"{key}: 'm' is ambiguous here; write months as 'mo' (6mo), got {value!r}")
    if unit not in _RETENTION_UNITS or not number.isdigit() or int(number) <= 0:
        raise ConfigError(f"{key}: expected a period such as 5y, 6mo, 90d, 12w or 48h, got {value!r}")
    months, seconds = _RETENTION_UNITS[unit]
    return months * int(number), float(seconds * int(number))


def _default_routing_rules() -> list[Any]:
    """The shipped routing table; conf/freeswitch/autoload_configs/callcenter.conf.xml has its queues."""
    return [
        {"name": "fraud", "risk_at_least": 50, "target": "fraud"},
        {"name": "vip own agent", "vip": True, "target": "customer"},
        {"name": "vip", "vip": True, "target": "vip"},
        {"name": "own queue", "known": True, "target": "customer"},
    ]


@dataclass
class RoutingSettings:
    """Where a call goes once it may pass: the caller is looked up (customer table, then an
    optional CRM), the routing table is read top to bottom and the first rule that holds wins
    (docs/routing.rst). What was learned is exported to the agent's leg and the CDR."""

    #: where a call goes when no routing rule matches
    default_target: str = "transfer default XML queues"
    #: the routing table, tried in order ([[routing.rules]] tables): conditions vip, known,
    #: verified, risk_at_least, risk_below, dnis, country, area_code, region, customer_preference;
    #: target = a mod_callcenter queue name, "customer" (their own agent, else their own queue),
    #: or "transfer|callcenter|bridge <argument>"; after_hours = the target when its queue is closed
    rules: list[Any] = field(default_factory=_default_routing_rules)
    #: the mod_callcenter domain of queue names given without one ("vip" -> callcenter vip@default)
    domain: str = "default"
    #: business hours per queue name ("default" = the default target): "mon-fri 08:00-18:00; sat 09:00-13:00"
    #: (a trailing IANA zone overrides routing.timezone for that queue)
    hours: dict[str, str] = field(default_factory=dict)
    #: where a call goes when the queue its rule chose is closed; empty: that rule is passed over
    after_hours_target: str = ""
    #: days every queue with business hours is closed: "2026-12-25" or, every year, "12-25"
    holidays: list[str] = field(default_factory=list)
    #: time zone of the business hours (IANA name, e.g. America/New_York)
    timezone: str = "UTC"
    #: how a customer's own agent is rung; {agent} is the agent named on the customer record
    agent_target: str = "bridge user/{agent}"
    #: seconds the customer's own agent rings before the call goes to their queue (or the next rule)
    agent_timeout: float = 20.0
    #: mod_callcenter cc_base_score of VIP callers: they are served as if they had waited this many seconds more
    vip_base_score: int = 600
    #: external CRM asked when the customer table does not know the number: an HTTP(S) URL
    #: template returning JSON ({number} = +15551234567, {digits} = 15551234567), or a database
    #: URL (postgresql://..., sqlite:///...) queried with crm_query; empty: no CRM
    crm_url: str = ""
    #: SQL for a database CRM, with :number (E.164) or :digits, returning columns named like the
    #: customer fields: account_id, name, vip, queue, agent, region
    crm_query: str = ""
    #: HTTP headers sent to an HTTP CRM (e.g. { Authorization = "Bearer ..." })
    crm_headers: dict[str, str] = field(default_factory=dict)
    #: where each customer field is in the CRM's JSON: { account_id = "customer.id", vip = "tier_vip" }
    crm_fields: dict[str, str] = field(default_factory=dict)
    #: seconds a call may wait for the CRM; past it the call is routed without the CRM's answer
    crm_timeout: float = 0.3
    #: how long a CRM answer is kept (duration)
    crm_cache_ttl: str = "5m"
    #: how long "the CRM does not know this number" is kept (duration)
    crm_miss_ttl: str = "1m"
    #: numbers kept in the CRM cache (per fsguard process)
    crm_cache_size: int = 10000
    #: consecutive CRM failures (timeouts, errors) that open the circuit breaker: the CRM is not asked ...
    crm_failures: int = 5
    #: ... for this long, then one call tries it again (duration)
    crm_cooldown: str = "30s"

    def validate(self) -> None:
        validate_target(self.default_target, "routing.default_target")
        if self.agent_timeout <= 0:
            raise ConfigError("routing.agent_timeout: must be positive")
        if self.vip_base_score < 0:
            raise ConfigError("routing.vip_base_score: cannot be negative")
        if self.crm_url:
            scheme = self.crm_url.split("://", 1)[0].lower() if "://" in self.crm_url else ""
            if not scheme:
                raise ConfigError(f"routing.crm_url: expected an http(s):// URL template or a database URL, "
                                  f"got {self.crm_url!r}")
            if scheme in ("http", "https"):
                if "{number}" not in self.crm_url and "{digits}" not in self.crm_url:
                    raise ConfigError("routing.crm_url: an HTTP CRM URL needs {number} or {digits} where the "
                                      "caller's number goes")
            elif not self.crm_query.strip():
                raise ConfigError("routing.crm_query: a database CRM (routing.crm_url) needs the SQL to run, "
                                  "with :number or :digits")
            if self.crm_timeout <= 0:
                raise ConfigError("routing.crm_timeout: must be positive")
            if self.crm_failures < 1:
                raise ConfigError("routing.crm_failures: must be at least 1")
            if self.crm_cache_size < 0:
                raise ConfigError("routing.crm_cache_size: cannot be negative")
            for key in ("crm_cache_ttl", "crm_miss_ttl", "crm_cooldown"):
                if parse_duration(getattr(self, key), f"routing.{key}") < 0:
                    raise ConfigError(f"routing.{key}: cannot be negative")
        # the rules, hours and targets are checked by building the table (fsguard.rules.checks)


@dataclass
class OutboundSettings:
    """Agents dialling out: the freeze rule for numbers that do not want the call.

    ``threshold`` rejected-or-short attempts to one number within ``window`` freeze the number for
    ``freeze_for``; while frozen, agents hear ``announcement`` and the call is not dialled.
    """

    #: rejected or short attempts within ``window`` that freeze a number
    threshold: int = 3
    #: the sliding window the strikes are counted in (duration: 24h, 1d, 86400)
    window: str = "1d"
    #: an answered call whose conversation is shorter than this is a "short" call (a strike)
    short_call: str = "15s"
    #: how long an automatic freeze lasts (also the default of ``fsguard outbound freeze --days``)
    freeze_for: str = "7d"
    #: what the agent hears when the number is frozen ("" = nothing, just the hang-up)
    announcement: str = "ivr/ivr-call_cannot_be_completed_as_dialed.wav"
    #: play the announcement after answering the agent's leg instead of in early media (for
    #: phones or PBX trunks that drop 183 early media)
    announce_answered: bool = False
    #: hang-up cause given to the agent's leg when the number is frozen (52 -> SIP 403)
    frozen_cause: str = "OUTGOING_CALL_BARRED"
    #: how a number that may be dialled is dialled: {number} = +15557654321, {digits} =
    #: 15557654321, {national} = 5557654321
    dial_target: str = "bridge sofia/gateway/carrier/{number}"
    #: hang-up causes of an unanswered attempt that mean the called person refused the call
    rejected_causes: list[str] = field(default_factory=lambda: ["USER_BUSY", "CALL_REJECTED"])

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window, "outbound.window")

    @property
    def short_call_seconds(self) -> float:
        return parse_duration(self.short_call, "outbound.short_call")

    @property
    def freeze_seconds(self) -> float:
        return parse_duration(self.freeze_for, "outbound.freeze_for")

    def dial(self, number: str, digits: str, national: str) -> str:
        """The routing instruction that dials ``number`` (E.164)."""
        return self.dial_target.format(number=number, digits=digits, national=national)

    def validate(self) -> None:
        if self.threshold < 1:
            raise ConfigError("outbound.threshold: must be at least 1")
        for key in ("window", "freeze_for"):
            if parse_duration(getattr(self, key), f"outbound.{key}") <= 0:
                raise ConfigError(f"outbound.{key}: must be a positive duration")
        if self.short_call_seconds < 0:
            raise ConfigError("outbound.short_call: cannot be negative")
        self.frozen_cause = self.frozen_cause.strip().upper()
        self.rejected_causes = [c.strip().upper() for c in self.rejected_causes]
        for key, cause in [("frozen_cause", self.frozen_cause)] + [("rejected_causes", c) for c in self.rejected_causes]:
            if not cause.replace("_", "").isalnum():
                raise ConfigError(f"outbound.{key}: {cause!r} is not a hang-up cause such as USER_BUSY")
        if any(c in self.announcement for c in "\r\n"):
            raise ConfigError("outbound.announcement: cannot contain line breaks")
        try:
            sample = self.dial("+15557654321", "15557654321", "5557654321")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"outbound.dial_target: unknown placeholder {exc} in {self.dial_target!r} "
                              "(use {number}, {digits} or {national})") from None
        validate_target(sample, "outbound.dial_target")


#: what ``[review]`` listens for when the configuration names no phrases. Thresholds are
#: pocketsphinx keyword-search thresholds (larger is stricter: 1e-30 hears a lot, 1e5 little); set on
#: synthetic telephone speech (docs/review.rst): tune them on your own calls.
DEFAULT_REVIEW_PHRASES: list[dict[str, Any]] = [
    {"phrase": "not interested", "threshold": 1e-10, "outbound": "freeze", "inbound": "ignore"},
    {"phrase": "stop calling", "threshold": 1e-10, "outbound": "freeze", "inbound": "ignore"},
    {"phrase": "take me off your list", "threshold": 1e-10, "outbound": "freeze", "inbound": "ignore"},
    {"phrase": "remove me from your list", "threshold": 1e-10, "outbound": "freeze", "inbound": "ignore"},
    {"phrase": "this is fraud", "threshold": 1e5, "outbound": "flag", "inbound": "flag"},
]


@dataclass
class ReviewSettings:
    """Keyword review of finished recordings (docs/review.rst): what the called party (or the
    caller) said, heard offline by pocketsphinx, and what the policy does about it."""

    #: ``fsguard serve`` runs the review worker (``fsguard review run`` works either way)
    enabled: bool = False
    #: how long the worker waits when there is nothing to review
    interval: str = "30s"
    #: purposes whose recordings may be analysed; recordings kept for other purposes are not listened to
    purposes: list[str] = field(default_factory=lambda: ["analytics", "training"])
    #: directions reviewed
    directions: list[str] = field(default_factory=lambda: ["inbound", "outbound"])
    #: the phrases: tables with phrase, threshold, outbound and inbound (freeze, flag or ignore)
    phrases: Any = field(default_factory=lambda: [dict(p) for p in DEFAULT_REVIEW_PHRASES])
    #: how long a review freeze lasts; empty: outbound.freeze_for
    freeze_for: str = ""
    #: seconds around a masked interval that are not listened to either
    mask_margin: float = 0.5
    #: a claim older than this is taken to belong to a worker that died, and is taken over
    claim_timeout: str = "15m"
    #: a recording whose review failed is tried again this many times in all
    max_attempts: int = 3
    #: the recogniser's time limit: this many seconds per second of audio, plus a minute
    timeout_factor: float = 2.0
    #: pocketsphinx's phone-loop penalty (kws_plp): lower hears phrases more readily
    phone_loop_penalty: float = 1e-10

    ACTIONS: typing.ClassVar[tuple[str, ...]] = ("freeze", "flag", "ignore")
    PHRASE_KEYS: typing.ClassVar[frozenset[str]] = frozenset({"phrase", "threshold", "outbound", "inbound"})

    def validate(self) -> None:
        for key in ("interval", "claim_timeout"):
            if parse_duration(getattr(self, key), f"review.{key}") <= 0:
                raise ConfigError(f"review.{key}: must be a positive duration")
        if self.freeze_for and parse_duration(self.freeze_for, "review.freeze_for") <= 0:
            raise ConfigError("review.freeze_for: must be a positive duration (or empty for outbound.freeze_for)")
        for d in self.directions:
            if d not in ("inbound", "outbound"):
                raise ConfigError(f"review.directions: expected inbound and/or outbound, got {d!r}")
        if self.mask_margin < 0 or self.timeout_factor <= 0 or self.max_attempts < 1:
            raise ConfigError("review.mask_margin must be >= 0, review.timeout_factor > 0, review.max_attempts >= 1")
        if not 0 < self.phone_loop_penalty <= 1:
            raise ConfigError(f"review.phone_loop_penalty: expected a number in (0, 1], got {self.phone_loop_penalty!r}")
        if isinstance(self.phrases, str):
            import json

            try:
                self.phrases = json.loads(self.phrases) if self.phrases.strip() else []
            except ValueError as exc:
                raise ConfigError(f"review.phrases: expected a JSON list of tables, {exc}") from None
        if not isinstance(self.phrases, list):
            raise ConfigError(f"review.phrases: expected a list of tables ([[review.phrases]]), got {self.phrases!r}")
        seen: set[str] = set()
        for i, table in enumerate(self.phrases):
            key = f"review.phrases[{i}]"
            if not isinstance(table, dict):
                raise ConfigError(f"{key}: expected a table, got {table!r}")
            unknown = set(table) - self.PHRASE_KEYS
            if unknown:
                raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(self.PHRASE_KEYS))})")
            text = table.get("phrase")
            if not isinstance(text, str) or not re.fullmatch(r"[a-z' ]+", " ".join(text.lower().split())):
                raise ConfigError(f"{key}.phrase: expected words (letters and apostrophes), got {text!r}")
            table["phrase"] = " ".join(text.lower().split())
            if table["phrase"] in seen:
                raise ConfigError(f"{key}.phrase: {table['phrase']!r} is listed twice")
            seen.add(table["phrase"])
            threshold = table.setdefault("threshold", 1e-10)
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 1e-80 <= threshold <= 1e80:
                raise ConfigError(f"{key}.threshold: expected a number from 1e-80 to 1e80 such as 1e-10, got {threshold!r}")
            table["threshold"] = float(threshold)
            for direction, default in (("outbound", "flag"), ("inbound", "flag")):
                action = table.setdefault(direction, default)
                if action not in self.ACTIONS:
                    raise ConfigError(f"{key}.{direction}: expected one of {', '.join(self.ACTIONS)}, got {action!r}")


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
    review: ReviewSettings = field(default_factory=ReviewSettings)
    #: the file these settings came from, if any (for reloads)
    source: Path | None = None

    def validate(self, checks: SectionChecks | None = None) -> None:
        """Check every section, then a section's ``checks`` that need a rule (when its own values
        are right); raise one ConfigError holding every section's problem."""
        problems: list[str] = []
        for section in _sections(self):
            values = getattr(self, section)
            try:
                if hasattr(values, "validate"):
                    values.validate()
                if checks and section in checks:
                    checks[section](values)
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(problems[0], problems)


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


def _apply(section: Any, name: str, values: dict[str, Any], where: str, problems: list[str]) -> None:
    """Set each key; a problem is added to ``problems`` and the next key is tried."""
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            problems.append(f"{name}.{key}: unknown setting ({where})")
            continue
        try:
            setattr(section, key, _coerce(value, hints[key], f"{name}.{key}"))
        except ConfigError as exc:
            problems.append(str(exc))


def unknown_variables(env: typing.Mapping[str, str] | None = None) -> list[str]:
    """FSGUARD_* variables that name no setting (``FSGUARD_ESL_LISTN``): a typo that would
    otherwise be ignored without a word."""
    env = os.environ if env is None else env
    settings = Settings()
    known = {f"FSGUARD_{name}_{f.name}".upper() for name in _sections(settings)
             for f in dataclasses.fields(getattr(settings, name))} | NON_SETTING_VARIABLES
    return sorted(var for var in env if var.upper().startswith("FSGUARD_") and var.upper() not in known)


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None,
                  checks: SectionChecks | None = None) -> Settings:
    """Build the settings: defaults, then ``path`` (or /etc/fsguard/fsguard.toml if it exists), then env.

    ``checks`` are the checks that need a rule (fsguard.rules.checks.load_settings hands them in).
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
    problems: list[str] = []
    for name, values in data.items() if path is not None else ():
        section = getattr(settings, name, None)
        if not dataclasses.is_dataclass(section) or not isinstance(values, dict) or name == "source":
            problems.append(f"{name}: unknown section in {path}")
            continue
        _apply(section, name, values, str(path), problems)
    for name in _sections(settings):
        section = getattr(settings, name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            var = f"FSGUARD_{name}_{f.name}".upper()
            if var in env:
                _apply(section, name, {f.name: env[var]}, var, problems)
    try:
        settings.validate(checks)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems[0], problems)
    return settings

