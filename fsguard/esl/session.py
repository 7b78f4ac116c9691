"""The outbound Event Socket session: what fsguard says to FreeSWITCH about one channel.

The driver of one call's socket: the channel's state and the commands to send come from
:class:`fsguard.esl.channel.OutboundChannel`, the bytes from :mod:`fsguard.esl.protocol`; here they
are written and read, on the call's own greenlet. It replaces greenswitch 0.0.19's
``OutboundSession`` because of defects a call guard cannot live with, each covered by a test in
tests/test_esl.py:

* ``ESLEvent.parse_data`` URL-decodes the whole frame before splitting it into lines, so a caller
  id name carrying ``%0ACaller-Caller-ID-Number%3A%20...`` forges headers (the protocol splits
  first).
* ``send()`` waits forever; here every wait has a deadline and a dead peer raises.
* replies are matched with ``pop(0)`` and an unsolicited reply kills the reader; here each reply
  is paired with its command and a stray one is logged and dropped.
* completions are matched on the application name; here on ``Application-UUID`` (the channel).
* three greenlets and a queue per call with ``gevent.sleep(1)`` polling; here the call's own
  greenlet reads the socket when it waits for something, and nothing else runs per call.
* a hang-up is noticed only at the next command (its issue #59); here pending input is read
  without blocking before every command, so a command is never sent to a channel known to be gone.
* the linger notice's raw ``Channel-Name:`` can carry forged frames (recognised by FreeSWITCH's
  own bytes: the protocol); and hang-up events count only when they carry the channel's own
  ``Unique-ID`` (the channel).

The session is deliberately synchronous from the caller's point of view: ``execute`` returns when
the application has finished, which is what lets a stage read like the call flow.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import Any, Callable, Mapping

import gevent.socket as gsocket

from fsguard.esl.channel import OutboundChannel
from fsguard.esl.protocol import (Api, Command, CommandReply, Connect, ESLError, EventHeaders, Execute, Exit, Headers,
                                  Linger, ProtocolError, Reply, Resume)


class ESLTimeout(ESLError):
    """FreeSWITCH did not answer in time."""


class CommandFailed(ESLError):
    """FreeSWITCH answered ``-ERR`` to a command."""


class CallGone(ESLError):
    """The channel has hung up or the socket is closed: nothing more can be done with this call."""


class OutboundSession(OutboundChannel):
    """One channel handed to fsguard by FreeSWITCH's ``socket`` application: the channel's state
    (:class:`OutboundChannel`) and the socket it is read from.

    Only the call's own greenlet uses a session. It reads the socket when it waits for something
    (a reply, an application's completion, the end of the call) and records every event it reads
    on the way: hang-up, answer, DTMF.
    """

    def __init__(self, sock: Any, *, command_timeout: float = 5.0, max_frame_bytes: int = 1_048_576,
                 event_format: str = "plain", log: Any = None, connect_timeout: float | None = None,
                 resume: bool = True) -> None:
        super().__init__(max_frame_bytes=max_frame_bytes, event_format=event_format, log=log)
        self.sock = sock
        #: send ``resume`` with ``connect``; False: only when the dialplan did not set
        #: socket_resume=true (see fsguard.service.ends: a socket that sent it cannot be let go)
        self.resume = resume
        self.resume_sent = False
        self.command_timeout = command_timeout
        #: how long the peer may take to answer ``connect`` (FreeSWITCH answers at once)
        self.connect_timeout = connect_timeout or command_timeout
        self.closed = False
        #: the application we are waiting on, if a wait was interrupted it is still running
        self.running: str | None = None
        #: channel variables FreeSWITCH's listener confirmed it set (send_apps' ``then_set``)
        self.listener_set: dict[str, str] = {}
        #: commands whose replies are still to be read and checked, before any other reply
        self.unread: list[Command] = []
        #: why the peer's bytes could not be read as the Event Socket: from then on nothing more
        #: is read or sent, and the socket is closed without ``exit`` (the dialplan takes the call back)
        self.garbled: str | None = None

    # ------------------------------------------------------------------- I/O

    def _write(self, data: bytes) -> None:
        if self.eof or self.closed:
            raise CallGone("socket closed")
        if self.garbled:
            raise ProtocolError(f"nothing more is sent on a connection that sent garbage ({self.garbled})")
        self.sock.settimeout(self.command_timeout)
        try:
            self.sock.sendall(data)
        except (OSError, gsocket.timeout) as exc:
            self.eof = True
            raise CallGone(f"write failed: {exc}") from None

    def _fill(self, timeout: float | None) -> None:
        """Read once from the socket (waiting up to ``timeout``; 0 = only what is there)."""
        if self.eof:
            raise CallGone("socket closed by FreeSWITCH")
        if self.garbled:
            raise ProtocolError(self.garbled)
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, gsocket.timeout, TimeoutError):
            if timeout == 0:
                return
            raise ESLTimeout("no data from FreeSWITCH in time") from None
        except OSError as exc:
            self.eof = True
            raise CallGone(f"read failed: {exc}") from None
        if not data:
            self.eof = True
            unfinished = self.protocol.reader.unfinished()
            if unfinished:
                self.log.warning("esl.truncated_frame", buffered=len(unfinished))
            raise CallGone("socket closed by FreeSWITCH")
        try:
            self.receive(data)
        except ProtocolError as exc:
            self.garbled = str(exc)
            raise

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ESLTimeout(f"timed out after {timeout:g}s waiting for {what}")
            self._fill(remaining)

    def poll(self) -> None:
        """Take in whatever FreeSWITCH already sent, without waiting."""
        if not self.eof and not self.closed:
            try:
                self._fill(0)
            except CallGone:
                pass

    # -------------------------------------------------------------- commands

    def send(self, *commands: Command) -> None:
        """Write commands in one go; their replies are awaited with :meth:`reply`."""
        self._write(self.protocol.send(*commands))

    def reply(self, timeout: float | None = None) -> Reply:
        """The next reply, in the order the commands were sent (the replies :meth:`start` left
        unread are read and checked first)."""
        self._read_unread()
        return self._next_reply(timeout)

    def _read_unread(self) -> None:
        if self.unread:
            commands, self.unread = self.unread, []
            self._check_replies(commands)

    def _next_reply(self, timeout: float | None = None) -> Reply:
        self._wait(lambda: bool(self.replies), timeout or self.command_timeout, "a command reply")
        return self.replies.popleft()

    def command(self, command: Command, timeout: float | None = None) -> Reply:
        self.send(command)
        return self.reply(timeout)

    def _check_replies(self, commands: list[Command]) -> list[str]:
        """Read the reply to each of ``commands``: the applications refused, the other refusals logged.

        Every reply is read, even after a refusal: one left unread would answer the next command.
        """
        self._read_unread()
        refused: list[str] = []
        for command in commands:
            reply = self._next_reply()
            if reply.ok:
                continue
            if isinstance(command, Execute):
                refused.append(f"{command.app} refused: {reply.text}")
            else:
                self.log.warning("esl.command_refused", command=str(command), reply=reply.text)
        return refused

    def start(self) -> Headers:
        """``connect``, then ``resume``, the subscription and ``linger``, written in one go.

        ``connect`` must be the first command (anything before it is never answered); FreeSWITCH
        reads commands one by one, so the rest can follow in the same write. ``resume`` comes at
        once so that from here on, whatever happens to fsguard, closing the socket hands the
        channel back to the dialplan's fallback instead of leaving it ringing. ``nixevent`` drops
        the channel events fsguard never reads from what ``myevents`` subscribed to: most of the
        bytes FreeSWITCH would write about a call are events nobody here looks at. A bare
        ``linger``: the socket stays until the final events are read.

        Only ``connect``'s reply is waited for. FreeSWITCH acts on each command as it reads it, and
        none of the others changes what the call's decision starts from, so their replies are read
        and checked with the next reply fsguard waits for (:attr:`unread`): by then they are
        there, and the call's greenlet does not wake once more for each of them.
        """
        commands = [*((Resume(),) if self.resume else ()), *self.subscription(), Linger()]
        self.send(Connect(), *commands)
        connect = self._next_reply(self.connect_timeout)
        if not isinstance(connect, CommandReply) or "Unique-ID" not in connect.headers:
            raise ProtocolError("connect reply carries no channel data")
        self.channel = connect.headers
        self.unread = commands
        self.resume_sent = self.resume
        if not self.resume_sent and self.channel.get("variable_socket_resume") != "true":
            self.command(Resume())   # the dialplan did not set it: the same safety net, one round trip
            self.resume_sent = True
        self.completions_subscribed = False
        return self.channel

    def send_apps(self, apps: list[tuple[str, str]], *, then_set: Mapping[str, str] | None = None) -> None:
        """Queue applications on the channel in one write, without waiting for them to run.

        In async mode FreeSWITCH answers each ``sendmsg`` at once and runs the applications in
        order, so setting variables and then routing costs one round trip, not one per application.
        ``then_set``: channel variables the listener thread sets itself as soon as it has queued
        the applications (``api uuid_setvar_multi``, in the same write), where a ``multiset``
        would wait for the channel's thread; those it confirmed are in :attr:`listener_set`.
        """
        if not apps:
            return
        self.poll()
        if self.hungup:
            raise CallGone(f"channel gone before {apps[0][0]}")
        commands = self.commands_to_queue(apps)
        setter: list[Command] = []
        if then_set:
            assignments = ";".join(f"{name}={value}" for name, value in then_set.items())
            setter.append(Api(f"uuid_setvar_multi {self.uuid} {assignments}"))
        self.send(*commands, *setter)
        refused = self._check_replies(commands)
        if then_set:
            # refused: no such channel (FreeSWITCH's session lock refuses one that has begun to
            # hang up), or a ``socket`` without ``full``, which may not run ``api``
            reply = self.reply()
            if reply.ok:
                self.listener_set.update(then_set)
            else:
                self.log.info("esl.setvar_refused", reply=reply.error)
        if refused:
            raise CommandFailed("; ".join(refused))

    def execute(self, app: str, arg: str = "", *, wait: bool = True, timeout: float | None = None) -> EventHeaders | None:
        """Run a dialplan application on the channel.

        With ``wait`` it returns the CHANNEL_EXECUTE_COMPLETE event of this very execution (matched
        on the Event-UUID we sent), waiting at most ``timeout`` seconds. Raises CallGone if the
        channel is already gone or hangs up before the application completes.
        """
        app_uuid = str(uuidlib.uuid4())
        execute = Execute(app, arg, app_uuid)
        self.poll()
        if self.hungup:
            raise CallGone(f"channel gone before {app}")
        try:
            commands = self.commands_to_run(execute) if wait else [execute]
            self.send(*commands)
            refused = self._check_replies(commands)
            if refused:
                raise CommandFailed(refused[0])
            if not wait:
                return None

            def finished() -> bool:
                return app_uuid in self.completions or self.hangup_complete is not None or self.eof

            self.running = app
            try:
                self._wait(finished, timeout or self.command_timeout, f"{app} to complete")
            except CallGone:
                pass
            self.running = None
            event = self.completions.pop(app_uuid, None)
        finally:
            self.awaiting.discard(app_uuid)
        if event is None:
            raise CallGone(f"channel gone during {app}")
        return event

    def break_media(self) -> None:
        """Stop the application still running on the channel (``uuid_break all``).

        Applications run in order in async mode: after an interrupted wait (a timeout, a
        shutdown), an instruction sent now would only run once that playback or digit
        collection ends on its own.
        """
        if self.running and not self.hungup:
            reply = self.command(Api(f"uuid_break {self.uuid} all"))
            self.log.info("esl.break", application=self.running, reply=reply.text.strip())
            self.running = None

    def getvar(self, name: str) -> str:
        """A channel variable that no caller can put text into (see :meth:`getvar_command`)."""
        return self.command(self.getvar_command(name)).text

    def wait_for_end(self, timeout: float) -> EventHeaders | None:
        """Follow the call until FreeSWITCH reports it over (CHANNEL_HANGUP_COMPLETE) or closes."""
        try:
            self._wait(lambda: self.hangup_complete is not None or self.exited, timeout, "the end of the call")
        except CallGone:
            pass
        return self.hangup_complete

    def close(self, *, say_exit: bool = True) -> None:
        """Say ``exit`` if FreeSWITCH is still there, then close. Safe to call more than once.

        Without ``say_exit`` the socket is only closed: FreeSWITCH's listener reads the end of the
        stream and ends as after ``exit``, without the reply and the goodbye (a let-go call)."""
        if self.closed:
            return
        try:
            if say_exit and not self.eof and not self.garbled:
                self.send(Exit())
                try:
                    self._wait(lambda: self.exited, min(self.command_timeout, 1.0), "exit")
                except (ESLTimeout, CallGone, ProtocolError):
                    pass
        except (CallGone, OSError):
            pass
        finally:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
