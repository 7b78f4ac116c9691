"""A fake FreeSWITCH inbound Event Socket (what listens on port 8021), for tests.

It speaks as mod_event_socket does:

* on connect: ``Content-Type: auth/request``;
* ``auth <password>``: ``command/reply`` ``+OK accepted``, or ``-ERR invalid`` then a disconnect
  notice and the socket closed;
* ``api <command>``: ``Content-Type: api/response`` + ``Content-Length`` + the body;
* ``event plain|json <names>`` / ``filter <header> <value>``: ``+OK ...``, and from then on every
  event the test sends with :meth:`emit` whose name is subscribed to (or ``ALL``) and that matches
  a filter (any, when there are some) reaches that connection as ``text/event-plain`` or
  ``text/event-json`` (the format of the connection's last ``event`` command, as in
  mod_event_socket);
* ``exit``: ``+OK bye``, a disconnect notice, close.

``uuid_record`` behaves like mod_commands on a FreeSWITCH whose channels and running recordings
are those the test declares with :meth:`add_channel` / :meth:`start_recording`: an unknown uuid
gets ``-ERR Cannot locate session!``, a mask on a path that is not being recorded is refused.
Every command received is kept in ``commands`` so a test can assert on exactly what was sent.

Failure modes for tests: ``behaviour="silent"`` (accepts, never greets), ``"deny"`` (ACL
rejection: ``text/rude-rejection``), ``"mute_api"`` (authenticates, never answers ``api``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gevent
import gevent.lock
from gevent.server import StreamServer

from fsguard_testing.wire import event_frame

DISCONNECT_BODY = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


@dataclass
class FakeChannel:
    uuid: str
    #: recording path -> masked?
    recordings: dict[str, bool] = field(default_factory=dict)


@dataclass(eq=False)
class Listener:
    """One authenticated connection's subscription, as mod_event_socket keeps it."""

    sock: Any
    names: set[str] = field(default_factory=set)
    filters: list[tuple[str, str]] = field(default_factory=list)
    #: plain or json: the connection's last ``event`` command says
    fmt: str = "plain"
    #: a connection's frames are written whole, one at a time (an event never splits a reply)
    lock: gevent.lock.Semaphore = field(default_factory=gevent.lock.Semaphore)

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def reply(self, text: str) -> None:
        self.send(f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode())

    def disconnect(self) -> None:
        self.send(f"Content-Type: text/disconnect-notice\nContent-Length: {len(DISCONNECT_BODY)}\n\n"
                  f"{DISCONNECT_BODY}".encode())

    def wants(self, headers: Mapping[str, str]) -> bool:
        if not ({"ALL", headers.get("Event-Name", "")} & self.names):
            return False
        return not self.filters or any(headers.get(name) == value for name, value in self.filters)


class FakeInboundESL:
    def __init__(self, password: str = "ClueCon", *, behaviour: str = "ok",
                 api_handler: Callable[[str], str | None] | None = None) -> None:
        if behaviour not in ("ok", "silent", "deny", "mute_api"):
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.password = password
        self.behaviour = behaviour
        #: consulted first for every api command; returns a body, or None for the default handling
        self.api_handler = api_handler
        self.channels: dict[str, FakeChannel] = {}
        #: every command block received, first line only ("auth ClueCon", "api uuid_record ...")
        self.commands: list[str] = []
        self.connections = 0
        self.listeners: list[Listener] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    # ------------------------------------------------------------------ setup

    def start(self) -> FakeInboundESL:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(timeout=1)

    @property
    def address(self) -> str:
        host, port = self.server.address[:2]
        return f"{host}:{port}"

    def add_channel(self, uuid: str) -> FakeChannel:
        return self.channels.setdefault(uuid, FakeChannel(uuid))

    def start_recording(self, uuid: str, path: str) -> None:
        """A recording the channel already has (started by record_session in the dialplan)."""
        self.add_channel(uuid).recordings[path] = False

    def hangup(self, uuid: str) -> None:
        self.channels.pop(uuid, None)

    def emit(self, headers: Mapping[str, str]) -> int:
        """Send an event to every connection that subscribed to it; how many got it."""
        frames: dict[str, bytes] = {}
        sent = 0
        for listener in [lst for lst in self.listeners if lst.wants(headers)]:
            try:
                if listener.fmt not in frames:
                    frames[listener.fmt] = event_frame(dict(headers), listener.fmt)
                listener.send(frames[listener.fmt])
                sent += 1
            except OSError:
                pass
        return sent

    @property
    def api_commands(self) -> list[str]:
        return [c[4:] for c in self.commands if c.startswith("api ")]

    # ------------------------------------------------------------- protocol

    def _handle(self, sock, address) -> None:  # type: ignore[no-untyped-def]
        self.connections += 1
        conn = Listener(sock)
        try:
            if self.behaviour == "silent":
                gevent.sleep(3600)
                return
            if self.behaviour == "deny":
                body = "Access Denied, go away.\n"
                conn.send(f"Content-Type: text/rude-rejection\nContent-Length: {len(body)}\n\n{body}".encode())
                return
            conn.send(b"Content-Type: auth/request\n\n")
            authed = False
            buf = b""
            while True:
                while b"\n\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data.replace(b"\r\n", b"\n")
                block, _, buf = buf.partition(b"\n\n")
                line = block.decode("utf-8", "replace").split("\n", 1)[0].strip()
                if not line:
                    continue
                self.commands.append(line)
                if not authed:
                    if line.startswith("auth ") and line[5:].strip() == self.password:
                        authed = True
                        self.listeners.append(conn)
                        conn.reply("+OK accepted")
                        continue
                    conn.reply("-ERR invalid")
                    conn.disconnect()
                    return
                if line == "exit":
                    conn.reply("+OK bye")
                    conn.disconnect()
                    return
                if line.startswith("api "):
                    if self.behaviour == "mute_api":
                        continue
                    body = self._api(line[4:].strip())
                    conn.send(f"Content-Type: api/response\nContent-Length: {len(body.encode())}\n\n{body}".encode())
                    continue
                words = line.split()
                if words[0] == "event" and len(words) > 2 and words[1] in ("plain", "json"):
                    conn.names.update(words[2:])
                    conn.fmt = words[1]
                    conn.reply(f"+OK event listener enabled {words[1]}")
                    continue
                if words[0] == "filter" and len(words) == 3:
                    conn.filters.append((words[1], words[2]))
                    conn.reply(f"+OK filter added. [{words[1]}]=[{words[2]}]")
                    continue
                conn.reply("-ERR command not found")
        except OSError:
            return
        finally:
            if conn in self.listeners:
                self.listeners.remove(conn)
            try:
                sock.close()
            except OSError:
                pass

    def _api(self, command: str) -> str:
        if self.api_handler is not None:
            body = self.api_handler(command)
            if body is not None:
                return body
        name, _, arg = command.partition(" ")
        args = arg.split()
        if name == "status":
            return "UP 0 years, 0 days, 0 hours, 1 minute\nFreeSWITCH (Version 1.10.12-release  64bit) is ready\n"
        if name != "uuid_record":
            return f"-ERR {name} Command not found!\n"
        if len(args) < 3:
            return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"
        uuid, action, path = args[:3]
        channel = self.channels.get(uuid)
        if channel is None:
            return "-ERR Cannot locate session!\n"
        if action == "start":
            channel.recordings[path] = False
            return "+OK Success\n"
        if path not in channel.recordings:
            return {"stop": "-ERR Cannot stop record session!\n", "mask": "-ERR Cannot mask recording session!\n",
                    "unmask": "-ERR Cannot unmask recording session!\n"}.get(
                action, "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n")
        if action == "stop":
            del channel.recordings[path]
        elif action in ("mask", "unmask"):
            channel.recordings[path] = action == "mask"
        else:
            return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"
        return "+OK Success\n"
