"""Commands to FreeSWITCH over its inbound Event Socket (``esl.inbound``, port 8021 by default).

A call's outbound socket belongs to the greenlet that follows that call. An operator's request
about a live call (``fsguard recordings pause UUID``, the admin API) comes from elsewhere, so it
goes to FreeSWITCH as an ``api`` command over the inbound socket, e.g.
``api uuid_record <uuid> mask <path>``.

greenswitch's ``InboundESL`` speaks the protocol, but waits forever at every step (for the
``auth/request`` greeting, for each reply) and leaves its reader greenlets behind when something
goes wrong. Here each step runs under a deadline, the greenlets are always cleaned up, and every
failure is an :class:`InboundError` whose message says what to check.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any

import gevent
import structlog
from greenswitch.esl import InboundESL, NotConnectedError

from fsguard.config import ESLSettings, parse_hostport

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


class FreeSWITCHAPI:
    """One authenticated inbound connection; use as a context manager::

        with FreeSWITCHAPI.from_settings(settings.esl) as fs:
            fs.api("uuid_record 1c6f... mask /var/lib/fsguard/recordings/2026/11/23/1c6f....wav")
    """

    def __init__(self, address: str, password: str, *, timeout: float = 5.0) -> None:
        self.host, self.port = parse_hostport(address, "esl.inbound")
        self.address = address
        self.password = password
        self.timeout = timeout
        self._esl: InboundESL | None = None

    @classmethod
    def from_settings(cls, esl: ESLSettings) -> FreeSWITCHAPI:
        return cls(esl.inbound, esl.inbound_password, timeout=esl.command_timeout)

    # ------------------------------------------------------------ connection

    def connect(self) -> None:
        where = f"FreeSWITCH's inbound event socket at {self.address} (esl.inbound)"
        esl = InboundESL(self.host, self.port, self.password, timeout=self.timeout)
        self._esl = esl
        try:
            with gevent.Timeout(self.timeout, Unreachable(
                    f"{where} did not greet and authenticate within {self.timeout:g}s")):
                esl.connect()
        except ValueError:  # greenswitch: "Invalid password."
            self.close(polite=False)
            raise Unreachable(f"{where} refused the password (esl.inbound_password)") from None
        except NotConnectedError as exc:
            self.close(polite=False)
            raise Unreachable(f"{where} closed the connection ({exc or 'no reason given'}); "
                              "check its ACL (apply-inbound-acl) and listen-ip") from None
        except OSError as exc:
            self.close(polite=False)
            raise Unreachable(f"{where} is unreachable: {exc.strerror or exc}") from None
        except Unreachable:
            self.close(polite=False)
            raise

    def api(self, command: str) -> str:
        """Run ``api <command>`` and return FreeSWITCH's answer; raise CommandRefused on ``-ERR``."""
        if "\n" in command or "\r" in command:
            raise ValueError(f"line break in an api command: {command!r}")
        if self._esl is None:
            self.connect()
        esl = self._esl
        assert esl is not None
        try:
            with gevent.Timeout(self.timeout, Unreachable(
                    f"FreeSWITCH at {self.address} did not answer 'api {command}' within {self.timeout:g}s")):
                reply = esl.send(f"api {command}")
        except (OSError, NotConnectedError) as exc:
            self.close(polite=False)
            raise Unreachable(f"FreeSWITCH at {self.address} dropped the connection during 'api {command}': "
                              f"{exc or type(exc).__name__}") from None
        except Unreachable:
            self.close(polite=False)
            raise
        text = str(getattr(reply, "data", "") or "").strip()
        log.info("inbound.api", command=command, reply=text[:200])
        if text.startswith("-ERR") or text.startswith("-USAGE"):
            raise CommandRefused(f"FreeSWITCH refused 'api {command}': {text.splitlines()[0]}", text)
        return text

    def close(self, *, polite: bool = True) -> None:
        """Say ``exit`` if the connection is healthy, stop greenswitch's reader greenlets, close."""
        esl, self._esl = self._esl, None
        if esl is None:
            return
        if polite and getattr(esl, "connected", False):
            try:
                with gevent.Timeout(min(self.timeout, 1.0), False):
                    esl.send("exit")
            except Exception:  # noqa: BLE001 - leaving anyway
                pass
        esl._run = False
        greenlets = [g for g in (esl._receive_events_greenlet, esl._process_events_greenlet) if g is not None]
        gevent.killall(greenlets, block=True, timeout=1.0)
        for closable in (getattr(esl, "sock_file", None), getattr(esl, "sock", None)):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass

    def __enter__(self) -> FreeSWITCHAPI:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


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
