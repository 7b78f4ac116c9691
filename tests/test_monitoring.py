"""What an operator's monitoring reads: /metrics of a real ``fsguard serve`` (process_*, challenge
outcomes, the call writer), and the Prometheus alert rules and Grafana dashboard in
conf/monitoring, checked with promtool (Debian's ``prometheus`` package; ``make install`` installs
it when it is missing) and against the metrics fsguard really exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fsguard.ops import cli
from fsguard.store import records
from fsguard.config import DatabaseSettings
from fsguard.store.db import Database
from fsguard.service.metrics import Metrics
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from test_process import fsguard_process  # noqa: F401 - the real `python -m fsguard serve` fixture

MONITORING = Path(__file__).resolve().parent.parent / "conf" / "monitoring"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make install` installs Debian's prometheus package, which ships it")
    return path


def scrape(process) -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics: {name: {labels: value}}."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(process.get("/metrics")):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


# ------------------------------------------------------------------ /metrics


def test_metrics_of_a_real_process_count_challenges_and_show_the_process_and_the_writer(
        fsguard_process, db, monkeypatch, capsys):
    monkeypatch.setenv("FSGUARD_DATABASE_URL", str(db.url.render_as_string(hide_password=False)))
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    assert cli.main(["lists", "add", "+13125550100", "--block", "3", "--reason", "complaints"]) == 0
    process = fsguard_process(runner=False, stages=["screening", "verification", "routing"])
    fs = FakeFreeSWITCH(process.esl, time_scale=0.005)
    passed = fs.call(Caller(ani="+13125550100", digits="auto"))
    silent = fs.call(Caller(ani="+13125550100", digits=None))
    assert (passed.outcome, silent.outcome) == ("routed", "hungup")

    samples = scrape(process)
    challenges = {dict(labels)["outcome"]: value for labels, value in samples["fsguard_challenges_total"].items()}
    assert challenges == {"passed": 1.0, "no_input": 1.0, "wrong": 0.0, "abandoned": 0.0}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "python_info"):
        assert name in samples, name
    assert samples["fsguard_writer_backlog"][()] == 0.0
    assert samples["fsguard_writer_abandoned_total"][()] == 0.0
    assert samples["fsguard_writer_rows_written_total"][()] >= 4.0   # two calls, their verdicts and ends


def test_abandoned_writes_are_counted(tmp_path, sqlite_template):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    path = tmp_path / "fsguard.db"
    shutil.copy(sqlite_template, path)
    dead = Database(DatabaseSettings(url=f"sqlite:///{path}"))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    # the database goes away: nothing can be opened where it was
    dead.engine = create_engine(f"sqlite:///{blocker}/fsguard.db", pool_size=1, max_overflow=0, pool_timeout=0.2)
    dead.sessions = sessionmaker(dead.engine)
    writer = records.make_writer(dead, retry_seconds=0.3)
    metrics = Metrics()
    metrics.watch_writer(writer)
    try:
        ticket = writer.submit("call_end", {"_key": "uuid-1", "ended_at": None, "hangup_cause": "NORMAL_CLEARING",
                                            "duration": 1, "billsec": 1, "answered": True})
        assert "fsguard_writer_backlog 1.0" in generate_latest(metrics.registry).decode()
        ticket.done.wait(10)
        assert ticket.done.is_set() and not ticket.ok
        text = generate_latest(metrics.registry).decode()
        assert "fsguard_writer_abandoned_total 1.0" in text and "fsguard_writer_backlog 0.0" in text
    finally:
        writer.close(timeout=1)
        dead.dispose()


# -------------------------------------------------------- rules and dashboard


def test_the_alert_rules_load_and_fire_on_what_they_watch():
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", "fsguard-alerts.yml"], cwd=MONITORING, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", "fsguard-alerts.test.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def exposed_metric_names() -> set[str]:
    """The series names a fsguard exposes (counters with _total, histograms with _bucket ...),
    whether or not a series of them has been counted yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in suffixes.get(family.type, [""])} | {"up"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "fsguard-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_grafana_json_whose_queries_parse_and_name_real_metrics(tmp_path):
    dashboard = json.loads((MONITORING / "fsguard-dashboard.json").read_text())
    assert dashboard["title"] == "fsguard" and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
    exprs = dashboard_exprs()
    # promtool parses PromQL when it checks rules: each query becomes a recording rule, with
    # Grafana's variables given values
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))   # JSON is YAML
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    known = exposed_metric_names()
    alerts = (MONITORING / "fsguard-alerts.yml").read_text()
    used = {name for text in [*exprs, alerts] for name in re.findall(r"\b((?:fsguard|process|python)_[a-z_]+)\b", text)}
    assert used and used <= known, sorted(used - known)
