"""fsguard as a user installs it: a wheel built from the repository's tracked files, installed into
a fresh virtualenv outside the checkout, run from an empty working directory.

The wheel is built once per session (pip's isolated build, as ``pip wheel .`` does for a user).
The fresh virtualenv gets the wheel only (``--no-deps``) and borrows the dependencies already
installed for the test run through a ``.pth`` line, so the test needs no network for them; the
test checks that ``fsguard`` itself is imported from the new environment, not from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fsguard's wheel, built from a copy of the tracked files (nothing untracked gets in)."""
    if not (REPO / ".git").exists():
        pytest.fail("the install tests build the wheel from a git checkout")
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    [built] = out.glob("fsguard-*.whl")
    return built


def _dependencies_path() -> list[str]:
    """Where the test run's own dependencies (gevent, SQLAlchemy, ...) are installed."""
    return [p for p in site.getsitepackages() if Path(p).is_dir()]


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, outside the checkout, with the wheel installed: its bin/ directory."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    [site_packages] = venv.glob("lib/python*/site-packages")
    (site_packages / "zz_test_dependencies.pth").write_text("\n".join(_dependencies_path()) + "\n")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSGUARD_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_wheel_carries_the_migrations_and_the_shipped_files(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "fsguard/store/migrations/env.py" in names and "fsguard/store/migrations/script.py.mako" in names
    shipped = {Path(n).name for n in names if n.startswith("fsguard/store/migrations/versions/")}
    in_repo = {p.name for p in (REPO / "fsguard" / "store" / "migrations" / "versions").glob("*.py")}
    assert shipped == in_repo and len(in_repo) >= 6
    assert "fsguard/sounds/consent-en.wav" in names        # the default recording notice
    data = "fsguard-" + wheel.name.split("-")[1] + ".data/data/share/fsguard/conf/"
    for shipped in ("freeswitch/dialplan/public_fsguard.xml", "freeswitch/autoload_configs/event_socket.conf.xml",
                    "systemd/fsguard.service", "monitoring/fsguard-alerts.yml", "monitoring/fsguard-dashboard.json",
                    "fsguard.toml.example"):
        assert data + shipped in names, shipped
    assert not [n for n in names if n.startswith(("alembic/", "tests/"))]


def test_a_wheel_in_a_fresh_virtualenv_migrates_serves_and_lists_calls_from_an_empty_directory(
        installed, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    port = _free_port()
    env = _env(FSGUARD_DATABASE_URL=f"sqlite:///{state}/fsguard.db", FSGUARD_RECORDING_DIR=str(state / "rec"),
               FSGUARD_ESL_LISTEN=f"127.0.0.1:{port}", FSGUARD_HTTP_ENABLED="false",
               FSGUARD_LOGGING_FORMAT="json", FSGUARD_POLICY_STAGES="screening,routing")
    fsguard = str(installed / "fsguard")

    where = subprocess.run([str(installed / "python"), "-c", "import fsguard, sys; print(fsguard.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(installed.parent)), where.stdout + where.stderr

    up = subprocess.run([fsguard, "db", "upgrade"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("migrated the database from empty to ")
    again = subprocess.run([fsguard, "db", "upgrade", "--json"], cwd=work, env=env, capture_output=True, text=True,
                           timeout=120)
    assert json.loads(again.stdout)["changed"] is False

    serve = subprocess.Popen([fsguard, "serve"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
                assert time.monotonic() < deadline, "fsguard serve never listened"
                time.sleep(0.1)
        result = FakeFreeSWITCH(("127.0.0.1", port), time_scale=0.005).call(Caller(ani="+12125550147"))
        assert result.outcome == "routed"
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode == 0

    calls = subprocess.run([fsguard, "calls", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert calls.returncode == 0, calls.stderr
    [call] = json.loads(calls.stdout)
    assert call["uuid"] == result.uuid and call["ani"] == "+12125550147"
    assert list(work.iterdir()) == []          # nothing written where the commands were run

    # the FreeSWITCH snippets come with the wheel (<venv>/share/fsguard/conf), not from a checkout
    snippets = tmp_path / "freeswitch"
    wrote = subprocess.run([fsguard, "config", "freeswitch", str(snippets), "--json"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert wrote.returncode == 0, wrote.stderr
    assert len(json.loads(wrote.stdout)["written"]) == 5
    assert f'data="127.0.0.1:{port} async full"' in (snippets / "dialplan" / "public_fsguard.xml").read_text()
    where = subprocess.run([str(installed / "python"), "-c",
                            "from fsguard.ops.commands.ops import shipped_conf; print(shipped_conf())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(installed.parent / "share" / "fsguard" / "conf"), where.stderr


def test_the_unit_passes_systemd_analyze_verify_with_the_installed_fsguard(installed, tmp_path):
    """The unit as shipped, with /opt/fsguard/venv replaced by where this fsguard is installed."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing (Debian's systemd package)")
    unit = (installed.parent / "share" / "fsguard" / "conf" / "systemd" / "fsguard.service").read_text()
    assert unit == (REPO / "conf" / "systemd" / "fsguard.service").read_text()
    path = tmp_path / "fsguard.service"
    path.write_text(unit.replace("/opt/fsguard/venv", str(installed.parent)))
    verified = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and "fsguard.service" not in verified.stderr, verified.stderr


def test_an_install_outside_sys_prefix_finds_its_migrations(wheel, tmp_path):
    """``pip install --user`` puts fsguard outside ``sys.prefix``; ``--target`` does the same and
    works inside a virtualenv: the migrations must come with the package wherever it lands."""
    target = tmp_path / "target"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    work = tmp_path / "empty"
    work.mkdir()
    env = _env(PYTHONPATH=str(target), FSGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/user.db")
    run = subprocess.run([sys.executable, "-c", "import fsguard.ops.cli, sys; print(fsguard.ops.cli.__file__, file=sys.stderr);"
                          " sys.exit(fsguard.ops.cli.main(['db', 'upgrade']))"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[0].startswith(str(target))
    assert "migrated the database from empty to" in run.stdout
