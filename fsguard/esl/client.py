"""Commands to FreeSWITCH over its inbound Event Socket (``esl.inbound``, port 8021 by default),
and the events it sends there.

A call's outbound socket belongs to the greenlet that follows that call. An operator's request
about a live call (``fsguard recordings pause UUID``, the admin API) comes from elsewhere, so it
goes to FreeSWITCH as an ``api`` command over the inbound socket, e.g.
``api uuid_record <uuid> mask <path>``. The same socket carries events to whoever subscribes
(``event plain CHANNEL_HANGUP_COMPLETE``, narrowed with ``filter``): api replies and events
interleave on it, and each reply still answers its own command.

This is the driver of :mod:`fsguard.esl.protocol` for that socket; greenswitch's ``InboundESL``
is not used, because its public interface cannot do what is needed here: it waits forever at every
step (for the ``auth/request`` greeting, for each reply), it can only be stopped by reaching into
its private greenlets (``_run``, ``_receive_events_greenlet``), and its ``ESLEvent`` decodes a whole
frame before splitting it into lines, so a caller's name in a channel event could forge that
event's headers (the defect fsguard's outbound session was written to avoid). Here each step runs
under a deadline, no greenlet is left behind (the greenlet that waits reads the socket), and every
failure is an :class:`InboundError` whose message says what to check.
"""

from __future__ import annotations

import re
import time
from collections import deque
from types import TracebackType
from typing import Any, Callable

import gevent.event
import gevent.lock
import gevent.socket as gsocket
import structlog

from fsguard.config import ESLSettings, parse_hostport
from fsguard.esl.protocol import (Api, Auth, AuthRequest, Command, Connection, Disconnected, Event, EventHeaders,
                                  Exit, Filter, PlainEvent, ProtocolError, Rejected, Reply)

log = structlog.get_logger("fsguard.esl.client")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
RECORD_ACTIONS = ("start", "stop", "mask", "unmask")


class InboundError(Exception):
    """FreeSWITCH could not be asked, or said no; the message is for the operator."""


class Unreachable(InboundError):
    """No usable inbound Event Socket at ``esl.inbound`` (down, refused, silent, wrong password)."""


class CommandRefused(InboundError):
    """FreeSWITCH answered the command with ``-ERR`` or ``-USAGE``."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


class _Closed(Exception):
    """The socket is closed (the message says how); turned into Unreachable by the caller."""


class FreeSWITCHAPI:
    """One authenticated inbound connection; use as a context manager::

        with FreeSWITCHAPI.from_settings(settings.esl) as fs:
            fs.api("uuid_record 1c6f... mask /var/lib/fsguard/recordings/2026/11/23/1c6f....wav")

    Events, once subscribed to, are kept in arrival order until :meth:`next_event` takes them.
    Several greenlets may share a connection: whichever waits reads the socket for all of them.
    """

    def __init__(self, address: str, password: str, *, timeout: float = 5.0,
                 max_frame_bytes: int = 1_048_576) -> None:
        self.host, self.port = parse_hostport(address, "esl.inbound")
        self.address = address
        self.password = password
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self._sock: Any = None
        self._protocol = Connection(max_frame_bytes)
        self._greeting: AuthRequest | Rejected | None = None
        #: replies read, by the command they answer (the command waiting for each holds it)
        self._answers: dict[int, Reply] = {}
        self.events: deque[EventHeaders] = deque()
        self._closed_because: str | None = None
        #: held by the greenlet reading the socket; the others wait for ``_arrived``
        self._reading = gevent.lock.Semaphore()
        self._arrived = gevent.event.Event()

    @classmethod
    def from_settings(cls, esl: ESLSettings) -> FreeSWITCHAPI:
        return cls(esl.inbound, esl.inbound_password, timeout=esl.command_timeout)

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._closed_because is None

    # ------------------------------------------------------------ connection

    def connect(self) -> None:
        """Open the socket, wait for the greeting, authenticate: all within ``timeout``."""
        where = f"FreeSWITCH's inbound event socket at {self.address} (esl.inbound)"
        deadline = time.monotonic() + self.timeout
        try:
            self._sock = gsocket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            self._sock = None
            raise Unreachable(f"{where} is unreachable: {exc.strerror or exc}") from None
        self._protocol = Connection(self.max_frame_bytes)
        self._greeting, self._closed_because = None, None
        self._answers.clear()
        try:
            self._wait(lambda: self._greeting is not None, deadline)
            if isinstance(self._greeting, Rejected):
                raise _Closed(self._greeting.text.strip() or "rejected")
            reply = self._ask(Auth(self.password), deadline)
        except TimeoutError:
            self.close(polite=False)
            raise Unreachable(f"{where} did not greet and authenticate within {self.timeout:g}s") from None
        except (_Closed, OSError) as exc:
            self.close(polite=False)
            raise Unreachable(f"{where} closed the connection ({exc or 'no reason given'}); "
                              "check its ACL (apply-inbound-acl) and listen-ip") from None
        if not reply.ok:
            self.close(polite=False)
            raise Unreachable(f"{where} refused the password (esl.inbound_password)")

    def api(self, command: str) -> str:
        """Run ``api <command>`` and return FreeSWITCH's answer; raise CommandRefused on ``-ERR``."""
        reply = self._command(Api(command), f"api {command}")
        text = reply.text.strip()
        log.info("inbound.api", command=command, reply=text[:200])
        if reply.error is not None:
            raise CommandRefused(f"FreeSWITCH refused 'api {command}': {reply.error.splitlines()[0]}", text)
        return text

    def subscribe(self, *names: str, fmt: str = "plain") -> None:
        """Receive these events (``ALL``: every one), for :meth:`next_event`."""
        self._expect_ok(self._command(Event(names, fmt), f"event {fmt} {' '.join(names)}"))

    def filter(self, header: str, value: str) -> None:
        """Receive only events whose ``header`` is ``value`` (several filters: any of them)."""
        self._expect_ok(self._command(Filter(header, value), f"filter {header} {value}"))

    def next_event(self, timeout: float) -> EventHeaders | None:
        """The oldest event not taken yet, waiting up to ``timeout`` seconds for one (None if none
        came). Raises Unreachable if FreeSWITCH goes away."""
        if self._sock is None:
            self.connect()
        try:
            self._wait(lambda: bool(self.events), time.monotonic() + timeout)
        except TimeoutError:
            return None
        except _Closed as exc:
            self.close(polite=False)
            raise Unreachable(f"FreeSWITCH at {self.address} dropped the connection: {exc}") from None
        return self.events.popleft()

    def close(self, *, polite: bool = True) -> None:
        """Say ``exit`` if the connection is healthy, then close. Safe to call more than once."""
        sock = self._sock
        if sock is None:
            return
        if polite and self.connected:
            try:
                self._ask(Exit(), time.monotonic() + min(self.timeout, 1.0))
            except (TimeoutError, _Closed, OSError):
                pass
        self._sock = None
        self._closed_because = self._closed_because or "closed"
        try:
            sock.close()
        except OSError:
            pass

    def __enter__(self) -> FreeSWITCHAPI:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------- I/O

    def _command(self, command: Command, what: str) -> Reply:
        """Send ``command`` and read its reply within ``timeout``; the connection is dropped on failure."""
        if self._sock is None:
            self.connect()
        try:
            return self._ask(command, time.monotonic() + self.timeout)
        except TimeoutError:
            self.close(polite=False)
            raise Unreachable(f"FreeSWITCH at {self.address} did not answer '{what}' within {self.timeout:g}s") from None
        except (_Closed, OSError) as exc:
            self.close(polite=False)
            raise Unreachable(f"FreeSWITCH at {self.address} dropped the connection during '{what}': "
                              f"{exc or type(exc).__name__}") from None

    @staticmethod
    def _expect_ok(reply: Reply) -> None:
        if reply.error is not None:
            raise CommandRefused(f"FreeSWITCH refused '{reply.command}': {reply.error}", reply.text)

    def _ask(self, command: Command, deadline: float) -> Reply:
        """Write ``command`` and wait until its own reply is read (by this greenlet or another)."""
        if self._closed_because is not None or self._sock is None:
            raise _Closed(self._closed_because or "not connected")
        self._sock.sendall(self._protocol.send(command))
        key = id(command)
        self._wait(lambda: key in self._answers, deadline)
        return self._answers.pop(key)

    def _wait(self, done: Callable[[], bool], deadline: float) -> None:
        """Until ``done()``: read the socket, or let the greenlet already reading it tell us."""
        while not done():
            if self._closed_because is not None:
                raise _Closed(self._closed_because)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            if self._reading.locked():
                self._arrived.wait(remaining)
                continue
            with self._reading:
                try:
                    self._fill(remaining)
                finally:
                    arrived, self._arrived = self._arrived, gevent.event.Event()
                    arrived.set()

    def _fill(self, timeout: float) -> None:
        """Read once (waiting at most ``timeout``) and sort what came: replies, events, notices."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except (gsocket.timeout, TimeoutError):
            return
        except OSError as exc:
            self._closed_because = exc.strerror or str(exc)
            raise _Closed(self._closed_because) from None
        if not data:
            self._closed_because = self._closed_because or "closed by FreeSWITCH"
            raise _Closed(self._closed_because)
        try:
            received = self._protocol.receive(data)
        except ProtocolError as exc:
            self._closed_because = f"not the Event Socket protocol: {exc}"
            raise _Closed(self._closed_because) from None
        for item in received:
            if isinstance(item, Reply):
                if item.command is None:
                    log.warning("inbound.unsolicited_reply", reply=item.text[:200])
                else:
                    self._answers[id(item.command)] = item
            elif isinstance(item, (AuthRequest, Rejected)):
                self._greeting = item
                if isinstance(item, Rejected):
                    self._closed_because = item.text.strip() or "rejected"
            elif isinstance(item, Disconnected):
                pass  # FreeSWITCH closes the socket next: the read that finds it closed says so
            elif isinstance(item, (PlainEvent, dict)):
                self.events.append(item)


def uuid_record(api: FreeSWITCHAPI | Any, uuid: str, action: str, path: str) -> str:
    """``uuid_record <uuid> start|stop|mask|unmask <path>``.

    FreeSWITCH finds a running recording by its path (the media bug is keyed on it), so mask,
    unmask and stop must name exactly the path the recording was started with.
    """
    if action not in RECORD_ACTIONS:
        raise ValueError(f"uuid_record action must be one of {', '.join(RECORD_ACTIONS)}, got {action!r}")
    if not _UUID.match(uuid):
        raise ValueError(f"not a channel uuid: {uuid!r}")
    if not path or any(c.isspace() for c in path):
        raise ValueError(f"recording path must be non-empty and without spaces: {path!r}")
    return str(api.api(f"uuid_record {uuid} {action} {path}"))
