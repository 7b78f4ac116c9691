"""sd_notify without a dependency: the messages systemd receives, on a unix datagram socket of the
test's own, from a real call server going through start, reload and drain."""

from __future__ import annotations

import copy
import os
import socket
import tempfile
import uuid
from pathlib import Path

import gevent
import pytest

from fsguard.service.app import App
from fsguard.service.server import CallServer
from fsguard.service.systemd import Notifier, install
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH


class NotifySocket:
    """What systemd listens on: a unix datagram socket; ``messages`` are the datagrams received."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"fsguard-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="fsg-")   # short: sun_path holds 108 bytes
            self.path = str(Path(self.dir) / "notify")
            self.sock.bind(self.path)
            self.env_value = self.path
        self.messages: list[dict[str, str]] = []
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            data = self.sock.recv(4096)
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0, timeout: float = 10.0) -> dict[str, str]:
        with gevent.Timeout(timeout, AssertionError(f"no {key} in {self.messages}")):
            while True:
                for message in self.messages[after:]:
                    if key in message and (value is None or message[key] == value):
                        return message
                gevent.sleep(0.01)

    def close(self) -> None:
        self.reader.kill()
        self.sock.close()


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_socket(request):
    s = NotifySocket(abstract=request.param)
    yield s
    s.close()


def test_notifier_is_silent_without_systemd():
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process():
    assert Notifier(env={"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0
    assert Notifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier(env={"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier(env={"WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_notifications_reach_the_socket(notify_socket):
    notifier = Notifier(env={"NOTIFY_SOCKET": notify_socket.env_value})
    assert notifier.enabled
    assert notifier.ready("taking calls")
    assert notify_socket.wait_for("READY") == {"READY": "1", "STATUS": "taking calls"}
    notifier.reloading()
    message = notify_socket.wait_for("RELOADING")
    assert int(message["MONOTONIC_USEC"]) > 0
    notifier.stopping(10, "draining: 1 call")
    assert notify_socket.wait_for("STOPPING")["EXTEND_TIMEOUT_USEC"] == "15000000"
    notifier.close()


def test_a_missing_socket_is_logged_not_raised():
    notifier = Notifier(env={"NOTIFY_SOCKET": "/nonexistent/fsguard/notify"})
    assert notifier.send("READY=1") is False


def test_the_server_life_as_systemd_sees_it(settings, db, notify_socket):
    """READY once listening, WATCHDOG from the event loop, RELOADING then READY around a reload,
    STOPPING when the drain starts."""
    app = App(settings, db=db)
    server = CallServer(app)
    env = {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "100000"}
    install(app, server, Notifier(env=env))
    assert notify_socket.messages == []            # nothing before the listener is up
    server.start()
    try:
        ready = notify_socket.wait_for("READY")
        host, port = server.address
        assert f"taking calls on {host}:{port}" in ready["STATUS"]
        before = len(notify_socket.messages)
        notify_socket.wait_for("WATCHDOG", "1", after=before)
        gevent.sleep(0.35)
        pings = [m for m in notify_socket.messages[before:] if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3                       # every 50 ms (half of WATCHDOG_USEC)

        fs = FakeFreeSWITCH(server.address, time_scale=0.005)
        assert fs.call(Caller()).outcome == "routed"

        new = copy.deepcopy(settings)
        new.routing.default_target = "transfer 7000 XML default"
        server.on_reload = lambda: new
        mark = len(notify_socket.messages)
        server.reload()
        notify_socket.wait_for("RELOADING", "1", after=mark)
        reloaded = notify_socket.wait_for("READY", "1", after=mark)
        assert "FAILED" not in reloaded["STATUS"]
        assert app.settings.routing.default_target == "transfer 7000 XML default"

        def broken():
            raise ValueError("bad file")

        server.on_reload = broken
        mark = len(notify_socket.messages)
        server.reload()
        assert "reload FAILED" in notify_socket.wait_for("READY", "1", after=mark)["STATUS"]
    finally:
        mark = len(notify_socket.messages)
        server.stop(drain=0.1)
    stopping = notify_socket.wait_for("STOPPING", "1", after=mark)
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) > 0
    assert notify_socket.wait_for("STATUS", "stopped", after=mark)
    count = len(notify_socket.messages)
    gevent.sleep(0.2)
    assert not [m for m in notify_socket.messages[count:] if "WATCHDOG" in m]   # no pings after the stop
