"""The real-FreeSWITCH suite: one FreeSWITCH 1.10.12 per test session, from conf/freeswitch/.

FreeSWITCH runs from the reference configuration as shipped, its addresses moved to free ports
(``FSGUARD_LAB_*``, read by vars.xml), its logs, databases, recordings and the prompts it plays
in a temporary directory. fsguard listens on the first socket target; the second target of the
dialplan (``h1:port|h2:port``) is the second node of the two-node scenario.

What FreeSWITCH did is read from FreeSWITCH's own events (an inbound Event Socket client
subscribed to everything), not from fsguard's records. When FreeSWITCH is not installed the
suite is skipped with one loud line at the end of the run, and under CI it fails instead:
``.ci/run`` installs it (``../shared/freeswitch/install``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest

from fsguard.service.app import App
from fsguard.config import Settings
from fsguard.store.db import Database
from fsguard.service.server import CallServer
from fsguard_testing.freeswitch import CallPlacer, EventSocketClient, Ports, RealFreeSWITCH, find_freeswitch


@pytest.fixture(scope="package")
def freeswitch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealFreeSWITCH]:
    """One real FreeSWITCH for the real-FreeSWITCH tests (about a second to start), killed after them."""
    binary = find_freeswitch()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("FreeSWITCH is not installed under CI: .ci/run must run ../shared/freeswitch/install")
        pytest.skip("FreeSWITCH is not installed")  # one loud line at the end: tests/conftest.py
    fs = RealFreeSWITCH(binary, tmp_path_factory.mktemp("freeswitch"), Ports.pick()).start()
    try:
        yield fs
    finally:
        fs.stop(graceful=False)


@pytest.fixture
def fs_events(freeswitch: RealFreeSWITCH) -> Iterator[EventSocketClient]:
    """FreeSWITCH's event stream for this test; every channel is hung up afterwards."""
    client = freeswitch.client()
    client.connect()
    client.api("callcenter_config agent set status 1000@default 'Logged Out'")
    yield client
    client.api("hupall NORMAL_CLEARING")
    try:
        client._wait(lambda: client.api("show channels count").strip().startswith("0 total"), 10,
                     "every channel hung up")
    finally:
        client.close()


@pytest.fixture
def placer(fs_events: EventSocketClient) -> CallPlacer:
    return CallPlacer(fs_events)


@pytest.fixture
def realfs_settings(request: pytest.FixtureRequest, freeswitch: RealFreeSWITCH, tmp_path: Path,
                    sqlite_template: Path) -> Settings:
    """fsguard's settings for a real-FreeSWITCH test: the whole default chain, on SQLite, or on
    PostgreSQL for a test parametrized indirectly with ``"postgresql"``."""
    s = Settings()
    if getattr(request, "param", "sqlite") == "postgresql":
        s.database.url = request.getfixturevalue("db_url_postgresql")
    else:
        path = tmp_path / "fsguard.db"
        shutil.copy(sqlite_template, path)
        s.database.url = f"sqlite:///{path}"
    s.node.id = "realfs"
    s.esl.listen = f"127.0.0.1:{freeswitch.ports.targets[0]}"
    s.esl.inbound = freeswitch.esl_address
    s.esl.drain_seconds = 2.0
    s.recording.dir = str(freeswitch.recordings / tmp_path.name)
    s.http.enabled = False
    return s


@pytest.fixture
def db_url_postgresql(emptied_postgresql: str | None) -> str:
    """This run's PostgreSQL database, emptied; the test fails (never skips) without a server."""
    if emptied_postgresql is None:
        pytest.fail("PostgreSQL is unavailable: the real-FreeSWITCH PostgreSQL scenarios need it")
    return emptied_postgresql


@pytest.fixture
def start_fsguard(realfs_settings: Settings) -> Iterator[Callable[..., App]]:
    """Start fsguard in this process on a socket target of the dialplan (node 0 by default)."""
    running: list[tuple[CallServer, Database]] = []

    def start(settings: Settings | None = None) -> App:
        s = settings or realfs_settings
        db = Database(s.database)
        app = App(s, db=db)
        server = CallServer(app)
        server.start()
        running.append((server, db))
        return app

    yield start
    for server, db in running:
        if not server.stopping:
            server.stop(drain=0.5)
        db.dispose()
    gevent.sleep(0)
