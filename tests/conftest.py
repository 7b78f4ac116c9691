from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
import structlog  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from fsguard.service import logs  # noqa: E402
from fsguard.store import migrate
from fsguard.service.app import App  # noqa: E402
from fsguard.config import Settings  # noqa: E402
from fsguard.store.db import Database  # noqa: E402
from fsguard.store.models import Base  # noqa: E402
from fsguard.service.server import CallServer  # noqa: E402

#: the PostgreSQL server the PostgreSQL leg runs on; a database of its own is created per run
PG_ADMIN_URL = os.environ.get("FSGUARD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: real FreeSWITCH captures kept with the tests (a clone anywhere has them)
TRANSCRIPTS = Path(__file__).resolve().parent / "captures"

_pg_problem: str | None = None


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0]


def _start_postgres() -> None:
    """Start the machine's PostgreSQL cluster if it is installed but stopped."""
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").exists():
        return
    for version in os.listdir("/etc/postgresql"):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str | None]:
    """A database of this run's own on the PostgreSQL server, or None (loudly) when none can be had."""
    global _pg_problem
    problem = _pg_reachable()
    if problem:
        _start_postgres()
        problem = _pg_reachable()
    if problem:
        _pg_problem = problem
        yield None
        return
    name = f"fsguard_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url)
    with engine.begin() as conn:
        migrate_conn_upgrade(conn)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate_conn_upgrade(conn: Any) -> None:
    from alembic import command

    command.upgrade(migrate._config(conn), "head")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    realfs_skipped = [r for r in terminalreporter.stats.get("skipped", [])
                      if "FreeSWITCH is not installed" in str(getattr(r, "longrepr", ""))]
    if realfs_skipped:
        terminalreporter.write_sep("!", f"REAL-FREESWITCH SUITE SKIPPED ({len(realfs_skipped)} tests): "
                                   "FreeSWITCH is not installed", red=True)
        terminalreporter.write_line("  install it with ../shared/freeswitch/install (what .ci/run does), "
                                    "or point FREESWITCH at a FreeSWITCH 1.10 binary")
    if _pg_problem:
        terminalreporter.write_sep("!", "PostgreSQL leg SKIPPED: no server could be reached or started", red=True)
        terminalreporter.write_line(f"  {PG_ADMIN_URL}: {_pg_problem}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating every time would be slow)."""
    path = tmp_path_factory.mktemp("template") / "fsguard.db"
    db = Database(Settings().database.__class__(url=f"sqlite:///{path}"))
    migrate.upgrade(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def _pg_emptier(pg_base_url: str | None) -> Iterator[Any]:
    """One engine for the whole run to empty the tables with (one per test cost a connection each)."""
    if pg_base_url is None:
        yield None
        return
    # pre-ping: a test may terminate every session of the database (tests/test_issue16.py)
    engine = create_engine(pg_base_url, pool_size=1, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture
def emptied_postgresql(pg_base_url: str | None, _pg_emptier: Any) -> str | None:
    """This run's PostgreSQL database with every table emptied for the test (None without a server).

    DELETE, children first, and the sequences restarted: on tables of a few rows that is 8 ms
    against TRUNCATE's 40 (TRUNCATE makes new files for every table), in each of ~450 tests.
    """
    if pg_base_url is None:
        return None
    with _pg_emptier.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{table.name}"'))
        sequences = conn.execute(text("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"))
        for (sequence,) in sequences.all():
            conn.execute(text(f'ALTER SEQUENCE "{sequence}" RESTART'))
    return pg_base_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """Every database test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "fsguard.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    base = request.getfixturevalue("emptied_postgresql")
    if base is None:
        pytest.skip(f"PostgreSQL unavailable: {_pg_problem}")
    yield base


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    s = Settings()
    s.database.url = db_url
    s.database.pool_size = 10
    # each call's socket closes once its rows are committed: no group-commit interval in front of
    # that here, or every simulated call would wait for it (tests/test_db.py covers the interval)
    s.database.write_gather_seconds = 0.0
    s.node.id = "test-node"
    s.policy.stages = ["routing"]  # each test names the stages it exercises
    s.esl.listen = "127.0.0.1:0"
    s.esl.command_timeout = 3.0
    s.esl.drain_seconds = 2.0
    # the simulator's calls are held on their socket (tests/test_ends.py lets go of them, with a
    # fake inbound event socket; nothing here may reach a real one on esl.inbound)
    s.esl.follow_ends = "socket"
    # the simulator's queue bridges no agent (as the lab FreeSWITCH's, captured): its recordings
    # start with the route; recording from the bridge (the default) is tested where it is named,
    # and on a real FreeSWITCH with an agent (tests/realfs/)
    s.recording.start = "route"
    s.recording.dir = str(tmp_path / "recordings")
    s.http.enabled = False
    return s


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database)
    yield database
    database.dispose()


@dataclass
class Guard:
    """A running fsguard: the app and its server on an ephemeral port."""

    app: App
    server: CallServer

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address


@pytest.fixture
def start_guard(settings: Settings, db: Database) -> Iterator[Callable[..., Guard]]:
    """Start fsguard servers (several to play several nodes); all are stopped after the test."""
    started: list[Guard] = []

    def start(settings_: Settings | None = None, database: Database | None = None) -> Guard:
        app = App(settings_ or settings, db=database or db)
        server = CallServer(app)
        server.start()
        guard = Guard(app, server)
        started.append(guard)
        return guard

    yield start
    for guard in started:
        if not guard.server.stopping:
            guard.server.stop(drain=0.5)


@pytest.fixture
def guard(start_guard: Callable[..., Guard]) -> Guard:
    return start_guard()


@pytest.fixture
def fs(guard: Guard) -> Any:
    """The FreeSWITCH simulator pointed at the running fsguard."""
    from fsguard_testing.fakeswitch import FakeFreeSWITCH

    return FakeFreeSWITCH(guard.address, time_scale=0.005)


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    logs.configure()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def transcripts() -> Path:
    assert TRANSCRIPTS.is_dir(), f"no ESL captures at {TRANSCRIPTS}"
    return TRANSCRIPTS
