"""The real process: ``python -m fsguard serve`` as a subprocess with its own config file, the
simulator calling it over TCP, signals sent to it, and systemd's notify socket played by the test.

* SIGTERM while a caller is in the middle of a decision (a long prompt): the call still gets its
  instruction, new calls go to the next node, the process exits 0.
* SIGHUP: the next call takes the new policy, the call in progress finishes under the old one.
* NOTIFY_SOCKET: READY=1 once the listener accepts, WATCHDOG=1 pings, RELOADING=1, STOPPING=1.

Tests that need a caller held mid-decision run fsguard through a small runner script that adds a
test stage (a long prompt) to the stage registry and then runs ``python -m fsguard`` unchanged.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gevent
import pytest

from fsguard.store import records
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from test_systemd import NotifySocket  # systemd's side of sd_notify, played by the test

TOKEN = "process-test-token-0123456789"
PROMPT = "ivr/please_hold.wav"

STAGE_MODULE = f'''
"""A stage that keeps the caller in a prompt: a call held in the middle of its decision."""
import os
from pathlib import Path

from fsguard.call.pipeline import Stage, Verdict


class SlowPrompt(Stage):
    name = "slowprompt"

    def run(self, call):
        # tell the test this call is in its decision (its pipeline is chosen) before the prompt
        (Path(os.environ["FSGUARD_TEST_MARKS"]) / call.uuid).touch()
        call.pre_answer()
        call.play("{PROMPT}")
        return Verdict.carry_on("played the hold prompt", "prompt.played")
'''

RUNNER = '''
from gevent import monkey

monkey.patch_all()

import runpy  # noqa: E402

from fsguard.call.pipeline import STAGES  # noqa: E402

STAGES["slowprompt"] = "procstages:SlowPrompt"
runpy.run_module("fsguard", run_name="__main__", alter_sys=True)
'''


class Fsguard:
    """``fsguard serve`` in a subprocess; its JSON log lines are collected as they come."""

    def __init__(self, tmp_path: Path, db_url: str, *, runner: bool, drain: float = 10.0,
                 stages: list[str] | None = None, target: str = "transfer first XML default") -> None:
        self.tmp = tmp_path
        self.config = tmp_path / "fsguard.toml"
        self.db_url = db_url
        self.drain = drain
        self.write_config(stages or ["routing"], target)
        self.notify = NotifySocket()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FSGUARD_", "NOTIFY_", "WATCHDOG_"))}
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        env.update({"NOTIFY_SOCKET": self.notify.path, "WATCHDOG_USEC": "200000",
                    "FSGUARD_TEST_MARKS": str(self.marks),
                    "PYTHONPATH": os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
        if runner:
            (tmp_path / "procstages.py").write_text(STAGE_MODULE)
            (tmp_path / "runner.py").write_text(RUNNER)
            argv = [sys.executable, str(tmp_path / "runner.py")]
        else:
            argv = [sys.executable, "-m", "fsguard"]
        self.proc = subprocess.Popen([*argv, "--config", str(self.config), "serve"], cwd=tmp_path, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.reader = gevent.spawn(self._read)
        self.esl = self._address("server.listening")
        self.http = self._address("http.listening")

    def write_config(self, stages: list[str], target: str, extra: str = "") -> None:
        self.config.write_text(textwrap.dedent(f"""\
            [esl]
            listen = "127.0.0.1:0"
            drain_seconds = {self.drain}
            command_timeout = 3.0
            [http]
            listen = "127.0.0.1:0"
            token = "{TOKEN}"
            [database]
            url = "{self.db_url}"
            [node]
            id = "proc-node"
            [logging]
            format = "json"
            [recording]
            dir = "{self.tmp / 'recordings'}"
            [policy]
            stages = {json.dumps(stages)}
            fail_open_route = "transfer failopen XML default"
            [routing]
            default_target = "{target}"
            """) + extra)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                self.logs.append(json.loads(text))
            except ValueError:
                pass

    def log_event(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        with gevent.Timeout(timeout, AssertionError(f"no {event} in fsguard's log:\n" + "\n".join(self.raw[-30:]))):
            while True:
                for entry in self.logs:
                    if entry.get("event") == event:
                        return entry
                if self.proc.poll() is not None:
                    self.reader.join(timeout=2)
                    raise AssertionError(f"fsguard exited {self.proc.returncode}:\n" + "\n".join(self.raw[-30:]))
                gevent.sleep(0.02)

    def _address(self, event: str) -> tuple[str, int]:
        host, port = self.log_event(event)["address"].rsplit(":", 1)
        return host, int(port)

    def get(self, path: str) -> Any:
        conn = http.client.HTTPConnection(*self.http, timeout=5)
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return json.loads(body) if resp.getheader("Content-Type") == "application/json" else body.decode()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        with gevent.Timeout(timeout, AssertionError("fsguard did not exit:\n" + "\n".join(self.raw[-30:]))):
            while self.proc.poll() is None:
                gevent.sleep(0.05)
        self.reader.join(timeout=2)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.kill()
        self.notify.close()


@pytest.fixture
def fsguard_process(tmp_path, db_url):
    started: list[Fsguard] = []

    def start(**kwargs: Any) -> Fsguard:
        process = Fsguard(tmp_path, db_url, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def in_prompt(process: Fsguard, uuid: str) -> None:
    """Wait until the call is in the slow prompt: its decision has begun under the running policy."""
    with gevent.Timeout(10, AssertionError("the call never reached the prompt")):
        while not (process.marks / uuid).exists():
            gevent.sleep(0.02)
    assert process.get("/api/status")["calls"]["deciding"] >= 1


def prompt_caller(seconds: float, **fields: Any) -> Caller:
    return Caller(playback_durations={PROMPT: seconds}, **fields)


# ------------------------------------------------------------------- tests


def test_serve_tells_systemd_it_is_ready_pings_the_watchdog_and_stops_on_sigterm(fsguard_process):
    process = fsguard_process(runner=False)
    ready = process.notify.wait_for("READY", "1")
    assert f"taking calls on 127.0.0.1:{process.esl[1]}" in ready["STATUS"]
    socket.create_connection(process.esl, timeout=2).close()        # READY means accepting
    mark = len(process.notify.messages)
    process.notify.wait_for("WATCHDOG", "1", after=mark)
    gevent.sleep(0.5)
    assert sum(1 for m in process.notify.messages[mark:] if m.get("WATCHDOG") == "1") >= 3
    assert process.get("/healthz")["status"] == "ok"
    assert process.get("/readyz")["ready"] is True

    fs = FakeFreeSWITCH(process.esl, time_scale=0.005)
    result = fs.call(Caller())
    assert result.outcome == "routed" and result.route == "transfer first XML default"
    assert 'fsguard_info{node="proc-node"' in process.get("/metrics")

    mark = len(process.notify.messages)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    stopping = process.notify.wait_for("STOPPING", "1", after=mark)
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) >= 10_000_000        # drain_seconds asked from systemd
    assert process.notify.wait_for("STATUS", "stopped", after=mark)


def test_sigterm_lets_a_call_being_decided_finish_and_sends_new_calls_to_the_next_node(
        fsguard_process, start_guard, settings, db):
    process = fsguard_process(runner=True, stages=["slowprompt", "routing"], drain=10.0)
    process.notify.wait_for("READY", "1")
    other = start_guard()                                            # node 2, in this process
    fs = FakeFreeSWITCH([process.esl, other.address], time_scale=0.01)
    caller = prompt_caller(150.0)                                   # 1.5 s of prompt
    pending = fs.spawn(caller)
    in_prompt(process, caller.uuid)

    mark = len(process.notify.messages)
    process.signal(signal.SIGTERM)
    process.notify.wait_for("STOPPING", "1", after=mark)
    failover = fs.call(Caller())                                     # h1 is draining: h2 takes it
    assert failover.outcome == "routed" and failover.target == other.address

    result = pending.get(timeout=15)
    assert result.outcome == "routed", result
    assert result.route == "transfer first XML default"              # decided in full, not cut short
    assert PROMPT in result.heard
    assert process.wait() == 0
    call = records.find_call(db, result.uuid)
    assert call.node == "proc-node" and call.outcome == "routed"
    assert [v.stage for v in call.verdicts] == ["slowprompt", "routing"]


def test_sigterm_past_the_drain_time_still_gives_the_call_an_instruction(fsguard_process):
    process = fsguard_process(runner=True, stages=["slowprompt", "routing"], drain=0.5)
    process.notify.wait_for("READY", "1")
    fs = FakeFreeSWITCH(process.esl, time_scale=0.01)
    caller = prompt_caller(2000.0)                                   # 20 s of prompt: longer than the drain
    pending = fs.spawn(caller)
    in_prompt(process, caller.uuid)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    result = pending.get(timeout=30)
    # never stranded, never left in the prompt: the prompt is broken off and the call takes the fail-open route
    assert result.outcome == "routed" and result.route == "transfer failopen XML default", result


def test_sighup_applies_the_new_policy_to_the_next_call_and_keeps_the_one_in_progress(fsguard_process, db):
    process = fsguard_process(runner=True, stages=["slowprompt", "routing"])
    process.notify.wait_for("READY", "1")
    fs = FakeFreeSWITCH(process.esl, time_scale=0.01)
    caller = prompt_caller(150.0)
    first = fs.spawn(caller)
    in_prompt(process, caller.uuid)

    process.write_config(["routing"], "transfer second XML default")
    mark = len(process.notify.messages)
    process.signal(signal.SIGHUP)
    process.notify.wait_for("RELOADING", "1", after=mark)
    assert "FAILED" not in process.notify.wait_for("READY", "1", after=mark)["STATUS"]

    second = fs.call(Caller())
    assert second.outcome == "routed" and second.route == "transfer second XML default"
    assert not second.early_media                                    # the new chain has no prompt
    result = first.get(timeout=15)
    assert result.outcome == "routed" and result.route == "transfer first XML default"   # not dropped
    assert PROMPT in result.heard
    assert process.get("/api/status")["stages"] == ["routing"]
    assert 'fsguard_config_reloads_total{result="ok"} 1.0' in process.get("/metrics")

    # a broken file: the reload fails loudly and the running policy stays
    process.config.write_text("[policy]\non_error = 'maybe'\n")
    mark = len(process.notify.messages)
    process.signal(signal.SIGHUP)
    assert "reload FAILED" in process.notify.wait_for("READY", "1", after=mark)["STATUS"]
    assert process.log_event("server.reload_failed")["error"].startswith("policy.on_error")
    third = fs.call(Caller())
    assert third.route == "transfer second XML default"

    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert records.find_call(db, result.uuid).action == "transfer first XML default"
    assert records.find_call(db, second.uuid).action == "transfer second XML default"


# ------------------------------------------------------------------ config


def test_config_example_holds_every_setting_with_its_default(tmp_path, monkeypatch):
    import dataclasses
    import re

    from fsguard.ops.commands.ops import render_settings
    from fsguard.config import Settings, load_settings

    for key in list(os.environ):
        if key.startswith("FSGUARD_"):
            monkeypatch.delenv(key)
    example = render_settings(Settings(), example=True)
    committed = Path(__file__).resolve().parent.parent / "conf" / "fsguard.toml.example"
    assert committed.read_text() == example, \
        "conf/fsguard.toml.example is out of date: run `fsguard config example > conf/fsguard.toml.example`"

    # uncommenting every setting gives the defaults back
    active = "\n".join(line[1:] if re.match(r"^#[a-z_]+ = ", line) and "<this host's name>" not in line else line
                       for line in example.splitlines())
    path = tmp_path / "all.toml"
    path.write_text(active)
    loaded, defaults = load_settings(path, env={}), Settings()
    for section in dataclasses.fields(defaults):
        if section.name == "source":
            continue
        for f in dataclasses.fields(getattr(defaults, section.name)):
            assert getattr(getattr(loaded, section.name), f.name) == getattr(getattr(defaults, section.name), f.name), \
                f"{section.name}.{f.name}"
    # every setting is there, each with a comment line somewhere above it
    for section in dataclasses.fields(defaults):
        if section.name != "source":
            assert f"[{section.name}]" in example
            for f in dataclasses.fields(getattr(defaults, section.name)):
                assert re.search(rf"^#{f.name} = ", example, re.M), f"{section.name}.{f.name} missing"


def test_config_check_and_show(tmp_path, capsys):
    from fsguard.ops import cli

    good = tmp_path / "good.toml"
    good.write_text(textwrap.dedent(f"""\
        [database]
        url = "postgresql://fsguard:s3cret@db.example/fsguard"
        [http]
        token = "{TOKEN}"
        [policy]
        stages = ["routing"]
        enforce_stages = {{ routing = false }}
        """))
    assert cli.main(["--config", str(good), "config", "check"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    assert cli.main(["--config", str(good), "config", "show"]) == 0
    shown = capsys.readouterr().out
    assert TOKEN not in shown and 's3cret' not in shown and 'token = "<hidden>"' in shown
    assert 'url = "postgresql://fsguard:***@db.example/fsguard"' in shown

    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nstages = ['screenign']\n")
    assert cli.main(["--config", str(bad), "config", "check"]) == 1
    assert "unknown stage 'screenign'" in capsys.readouterr().err
    bad.write_text("[http]\ntoken = 'short'\n")
    assert cli.main(["--config", str(bad), "config", "check"]) == 2
    assert "http.token" in capsys.readouterr().err
