"""``fsguard lists``: add / remove / show / import / export / purge, through the real command line
entry point (``fsguard.ops.cli.main``), on SQLite and PostgreSQL; ``--from-call`` against a call that
went through the socket."""

from __future__ import annotations

import csv
import json
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import gevent
import pytest
from sqlalchemy import func, select, update

from fsguard.rules import counters, lists
from fsguard.store.models import utcnow
from fsguard.store.models.lists import CallCounter, ListEntry
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH


# fsguard(...) runs the command in-process against the test database: (exit code, stdout, stderr)
from test_operator_cli import fsguard, run  # noqa: E402,F401 - the CLI fixtures of the operator tests


def entries(db) -> list[ListEntry]:
    with db.begin() as session:
        return list(session.scalars(select(ListEntry).order_by(ListEntry.number, ListEntry.dnis)))


# ------------------------------------------------------------------ add


@pytest.mark.parametrize("typed, stored", [
    ("+1 (212) 555-0147", "+12125550147"),
    ("212.555.0147", "+12125550147"),
    ("1-212-555-0147", "+12125550147"),
    ("0044 20 7946 0000", "+442079460000"),
    ("+44 (0)20 7946 0000", "+442079460000"),
])
def test_numbers_in_any_usual_form_are_stored_in_e164(fsguard, db, typed, stored):
    code, out, _ = fsguard("lists", "add", typed, "--block", "7", "--reason", "abusive caller")
    assert code == 0
    assert out.startswith(f"added: {stored} block level 7 (hard) for every dialled number [cli]: abusive caller")
    [entry] = entries(db)
    assert (entry.number, entry.is_prefix, entry.kind, entry.level, entry.added_by) == (stored, False, "block", 7, "alice")


@pytest.mark.parametrize("typed, problem", [
    ("12345", "'12345' is not a valid telephone number (region US)"),
    ("call me", "'call me' is not a valid telephone number"),
    ("anonymous", "'anonymous' is not a number"),
    ("+0123*", "'+0123*' is not a valid number prefix"),
    ("12ab*", "'12ab*' is not a valid number prefix"),
])
def test_an_invalid_number_is_refused_with_a_clear_message(fsguard, db, typed, problem):
    code, out, err = fsguard("lists", "add", typed, "--block", "7")
    assert code == 1 and out == ""
    # the gevent monitor (GEVENT_MONITOR_THREAD_ENABLE in make test) may print a report first
    assert err.strip().splitlines()[-1].startswith("fsguard: ") and problem in err and "Traceback" not in err
    assert entries(db) == []


@pytest.mark.parametrize("typed, stored", [("+1900*", "+1900"), ("1900*", "+1900"), ("900*", "+1900"),
                                           ("0044 9*", "+449"), ("+1 212 555*", "+1212555")])
def test_prefixes(fsguard, db, typed, stored):
    assert fsguard("lists", "add", typed, "--block", "8", "--action", "busy")[0] == 0
    [entry] = entries(db)
    assert (entry.number, entry.is_prefix, entry.action) == (stored, True, "hangup USER_BUSY")
    assert entry.pattern == stored + "*"


def test_adding_again_replaces_the_entry_and_says_what_it_replaced(fsguard, db):
    fsguard("lists", "add", "+12125550147", "--block", "3", "--reason", "complaints")
    code, out, _ = fsguard("lists", "add", "+12125550147", "--allow", "--reason", "spoke to them, a customer")
    assert code == 0
    assert "replaced: +12125550147 block level 3 (soft)" in out and "complaints" in out
    [entry] = entries(db)
    assert (entry.kind, entry.level, entry.reason) == ("allow", 0, "spoke to them, a customer")


def test_expiry_dialled_number_and_action(fsguard, db):
    code, out, _ = fsguard("lists", "add", "+12125550147", "--block", "7", "--expires", "30d", "--dnis",
                           "1 (800) 555-0100", "--action", "transfer:9999 XML announcements", "--json")
    assert code == 0
    data = json.loads(out)["entry"]
    assert data["dnis"] == "+18005550100" and data["action"] == "transfer:9999 XML announcements"
    [entry] = entries(db)
    assert timedelta(days=29, hours=23) < entry.expires_at - utcnow() <= timedelta(days=30)
    assert entry.action == "transfer 9999 XML announcements"
    fsguard("lists", "add", "+13125550100", "--block", "2", "--expires", "2031-01-01")
    assert entries(db)[1].expires_at.isoformat().startswith("2031-01-01T00:00:00")


@pytest.mark.parametrize("argv, problem", [
    (["--block", "100"], "level 100: expected 0 to 99"),
    (["--block", "-1"], "level -1: expected 0 to 99"),
    (["--allow", "--action", "busy"], "an action only goes with a block"),
    (["--block", "7", "--action", "explode"], "action 'explode': expected reject, busy, transfer:TARGET"),
    (["--block", "7", "--action", "transfer:9999 XML announcements\nexit"], "expected reject, busy"),
    (["--block", "7", "--expires", "2001-01-01"], "is in the past"),
    (["--block", "7", "--expires", "soon"], "expected a duration (30d, 12h) or a date"),
])
def test_bad_options_are_refused_in_one_line(fsguard, db, argv, problem):
    code, _, err = fsguard("lists", "add", "+12125550147", *argv)
    assert code == 1 and problem in err and len(err.strip().splitlines()) == 1
    assert entries(db) == []


def test_a_kind_is_required(fsguard):
    code, _, err = fsguard("lists", "add", "+12125550147")
    assert code == 2 and "one of the arguments --allow --block --dno is required" in err


# ------------------------------------------------------------------ --from-call


@pytest.fixture
def phone(start_guard, settings):
    """A running fsguard with screening, and a way to place a call through the socket."""
    settings.policy.stages = ["screening"]
    settings.screening.trusted_networks = ["192.0.2.0/24"]   # the simulated carrier: its PAI is believed
    guard = start_guard(settings)
    sim = FakeFreeSWITCH(guard.address, time_scale=0.005)

    def call(**kwargs: Any):
        result = sim.call(Caller(dnis="+18005550100", **kwargs))
        with gevent.Timeout(5):
            while guard.app.deciding or guard.app.held or guard.server.active:
                gevent.sleep(0.005)
        return result
    return call


def test_block_the_caller_of_a_recorded_call(fsguard, db, phone):
    first = phone(ani="+12125550147")
    assert first.outcome == "routed"
    code, out, _ = fsguard("lists", "add", "--from-call", first.uuid[:8], "--block", "7")
    assert code == 0
    assert f"the caller of call {first.uuid} is +12125550147" in out
    [entry] = entries(db)
    assert (entry.number, entry.level, entry.reason) == ("+12125550147", 7, f"caller of call {first.uuid}")
    again = phone(ani="+12125550147")
    assert again.outcome == "hungup" and again.hangup_cause == "CALL_REJECTED" and not again.answered


def test_block_a_withheld_caller_from_the_call_record(fsguard, db, phone):
    hidden = phone(ani="anonymous", privacy=True,
                   variables={"sip_P-Asserted-Identity": "<sip:+13125550100@carrier.example>"})
    code, out, _ = fsguard("lists", "add", "--from-call", hidden.uuid, "--block", "3", "--reason", "prank calls",
                           "--json")
    assert code == 0
    data = json.loads(out)
    assert data["from_call"].endswith("(the caller had withheld the number)")
    assert data["entry"]["number"] == "+13125550100"
    assert [(e.number, e.reason) for e in entries(db)] == [("+13125550100", "prank calls")]


def test_from_call_errors(fsguard, db, phone):
    anonymous = phone(ani="anonymous", network_ani="anonymous", privacy=True)
    code, _, err = fsguard("lists", "add", "--from-call", anonymous.uuid, "--block", "7")
    assert code == 1 and "has no caller number to block" in err
    code, _, err = fsguard("lists", "add", "--from-call", "0000dead-beef", "--block", "7")
    assert code == 1 and "no call 0000dead-beef" in err
    code, _, err = fsguard("lists", "add", "+12125550147", "--from-call", anonymous.uuid, "--block", "7")
    assert code == 1 and "give a NUMBER or --from-call UUID" in err
    assert entries(db) == []


# ------------------------------------------------------------------ remove and show


def test_remove(fsguard, db):
    fsguard("lists", "add", "+12125550147", "--block", "7")
    fsguard("lists", "add", "+12125550147", "--allow", "--dnis", "+18885550199")
    fsguard("lists", "add", "+1212*", "--block", "2")
    code, out, _ = fsguard("lists", "remove", "(212) 555-0147", "--dnis", "1 888 555 0199")
    assert code == 0 and out.startswith("removed: +12125550147 allow for calls to +18885550199")
    assert fsguard("lists", "remove", "+12125550147")[0] == 0
    code, _, err = fsguard("lists", "remove", "+12125550147")
    assert code == 1 and "no entry for +12125550147; it is covered by +1212*" in err
    assert fsguard("lists", "remove", "+1212*")[0] == 0
    assert entries(db) == []


def test_show_a_number_says_which_entry_applies_and_how_often_it_called(fsguard, db):
    fsguard("lists", "add", "+1212*", "--block", "2", "--reason", "area with complaints")
    fsguard("lists", "add", "+12125550147", "--block", "7", "--reason", "abusive")
    fsguard("lists", "add", "+12125550147", "--allow", "--dnis", "+18885550199", "--reason", "premium customer")
    with db.begin() as session:
        for _ in range(3):
            counters.count_call(session, "+12125550147", ["*"], now=time.time())
    code, out, _ = fsguard("lists", "show", "+1 212 555 0147")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("+12125550147, calls to any dialled number: +12125550147 block level 7 (hard)")
    assert "  +12125550147 allow for calls to +18885550199 [cli]: premium customer" in lines
    assert "  +1212* block level 2 (soft) for every dialled number [cli]: area with complaints" in lines
    assert "calls (all dialled numbers): 3 in the last hour, 3 in the last day, 0 ended within seconds" in lines
    code, out, _ = fsguard("lists", "show", "+12125550147", "--dnis", "+18885550199", "--json")
    data = json.loads(out)
    assert data["applies"]["kind"] == "allow" and len(data["entries"]) == 3
    assert data["counts"]["*"]["hour"] == 3
    code, out, _ = fsguard("lists", "show", "+13125550100")
    assert out.startswith("+13125550100: no entry")


def test_show_everything_and_filter(fsguard, db):
    fsguard("lists", "add", "+12125550147", "--block", "7", "--reason", "abusive")
    fsguard("lists", "add", "+18005550100", "--dno", "--reason", "our toll-free line")
    fsguard("lists", "add", "+13125550100", "--allow", "--expires", "1h")
    with db.begin() as session:
        lists.auto_block(session, "+14155550123", level=3, reason="11 calls in the last hour", code="flood.hour",
                         ttl_seconds=86400)
        session.execute(update(ListEntry).where(ListEntry.number == "+13125550100")
                        .values(expires_at=utcnow() - timedelta(minutes=1)))
    code, out, _ = fsguard("lists", "show")
    assert code == 0
    assert out.splitlines()[0].split() == ["number", "kind", "level", "action", "dialled", "expires", "(UTC)",
                                           "source", "reason"]
    assert "+13125550100" not in out and "+18005550100  dno" in out
    assert "+13125550100" in fsguard("lists", "show", "--all")[1]
    rows = json.loads(fsguard("lists", "show", "--source", "auto", "--json")[1])["entries"]   # one shape
    assert [(r["number"], r["level"], r["code"], r["hard"]) for r in rows] == [("+14155550123", 3, "flood.hour", False)]
    rows = json.loads(fsguard("lists", "show", "--kind", "dno", "--json")[1])["entries"]
    assert [r["number"] for r in rows] == ["+18005550100"]


# ------------------------------------------------------------------ import / export


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_import_a_good_file(fsguard, db, tmp_path):
    f = write(tmp_path / "lists.csv", "\n".join([
        "number,kind,level,reason,expires,dnis,action",
        "+1 212 555 0147,block,7,abusive,30d,,busy",
        "+1900*,block,8,premium range,,,transfer:9999 XML announcements",
        "+18005550100,dno,,our toll-free line,,,",
        "# a comment line",
        "",
        "0044 20 7946 0000,allow,,head office,,1-888-555-0199,",
        "+13125550100,,3,level without kind means block,2030-06-30,,",
    ]))
    code, out, err = fsguard("lists", "import", str(f))
    assert (code, err) == (0, "")
    assert out.strip() == "imported 5 entries from 5 rows"
    got = {(e.pattern, e.kind, e.level, e.dnis, e.action, e.source) for e in entries(db)}
    assert got == {("+12125550147", "block", 7, "*", "hangup USER_BUSY", "import"),
                   ("+1900*", "block", 8, "*", "transfer 9999 XML announcements", "import"),
                   ("+18005550100", "dno", 0, "*", None, "import"),
                   ("+442079460000", "allow", 0, "+18885550199", None, "import"),
                   ("+13125550100", "block", 3, "*", None, "import")}


BAD_FILE = "\n".join([
    "number,kind,level,reason",
    "+12125550147,block,7,fine",
    "12345,block,7,too short",
    "+13125550100,block,high,not a level",
    "+14155550123,maybe,,unknown kind",
    "+14155550124,block,,no level",
    "+14155550125,allow,,fine too",
    "+14155550126,block,5,x,extra",
])


def test_import_reports_bad_rows_by_line_and_writes_nothing(fsguard, db, tmp_path):
    f = write(tmp_path / "bad.csv", BAD_FILE)
    code, out, err = fsguard("lists", "import", str(f))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "line 3: '12345' is not a valid telephone number (region US)"
    assert lines[1] == "line 4: level 'high': expected a whole number"
    assert lines[2] == "line 5: kind 'maybe': expected allow, block or dno"
    assert lines[3].startswith("line 6: a block needs a level")
    assert lines[4] == "line 8: 5 cells, expected at most 4"
    assert lines[5] == ("fsguard: 5 bad row(s) of 7; nothing was written (fix them, or use --skip-invalid to import "
                        "the good rows)")
    assert entries(db) == []


def test_import_skip_bad_writes_the_good_rows(fsguard, db, tmp_path):
    f = write(tmp_path / "bad.csv", BAD_FILE)
    code, out, err = fsguard("lists", "import", str(f), "--skip-bad")
    assert code == 0 and "line 3:" in err
    assert out.strip() == "imported 2 entries from 7 rows; 5 bad row(s) skipped"
    assert [e.number for e in entries(db)] == ["+12125550147", "+14155550125"]


def test_import_dry_run_and_defaults_for_a_plain_list_of_numbers(fsguard, db, tmp_path):
    f = write(tmp_path / "numbers.txt", "+12125550147\n+13125550100\n+12125550147\n")
    code, out, err = fsguard("lists", "import", str(f), "--block", "6", "--reason", "fraud ring", "--dry-run")
    assert code == 0 and "2 entries would be imported (dry run: nothing written)" in out
    assert "line 3: warning: +12125550147 repeats line 1; the later row is kept" in err
    assert entries(db) == []
    assert fsguard("lists", "import", str(f), "--block", "6", "--reason", "fraud ring")[0] == 0
    assert [(e.number, e.level, e.reason) for e in entries(db)] == [("+12125550147", 6, "fraud ring"),
                                                                    ("+13125550100", 6, "fraud ring")]


def test_import_refuses_unknown_columns_and_missing_files(fsguard, tmp_path):
    f = write(tmp_path / "odd.csv", "number,colour\n+12125550147,red\n")
    code, _, err = fsguard("lists", "import", str(f), "--block", "7")
    assert code == 1 and "line 1: unknown column(s) colour" in err
    code, _, err = fsguard("lists", "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "cannot read" in err and "missing.csv" in err
    (tmp_path / "latin1.csv").write_bytes("number,reason\n+12125550147,caf\xe9\n".encode("latin-1"))
    code, _, err = fsguard("lists", "import", str(tmp_path / "latin1.csv"), "--block", "7")
    assert code == 1 and "is not UTF-8 text" in err


def test_import_50000_rows_with_progress(fsguard, db, tmp_path):
    rng = random.Random(7)
    numbers = set()
    while len(numbers) < 50_000:
        numbers.add(f"+1212{rng.randint(2_000_000, 9_999_999)}")
    f = tmp_path / "big.csv"
    with f.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["number", "kind", "level", "reason", "expires"])
        for n in sorted(numbers):
            writer.writerow([n, "block", 7, "bulk list", "90d"])
    code, out, err = fsguard("lists", "import", str(f))
    assert code == 0, err
    assert out.strip() == "imported 50000 entries from 50000 rows"
    assert "validated" not in err and "written" not in err   # progress bars are for a terminal only
    with db.begin() as session:
        assert session.scalar(select(func.count()).select_from(ListEntry)) == 50_000
        some = sorted(numbers)[12345]
        assert lists.lookup(session, some, None).level == 7


def test_export_and_import_round_trip(fsguard, db, tmp_path):
    fsguard("lists", "add", "+12125550147", "--block", "7", "--reason", 'says "hello", hangs up', "--action", "busy")
    fsguard("lists", "add", "+1900*", "--block", "8", "--expires", "30d")
    fsguard("lists", "add", "+18005550100", "--dno")
    fsguard("lists", "add", "+442079460000", "--allow", "--dnis", "+18885550199")
    before = [lists.entry_dict(e) for e in entries(db)]
    code, out, _ = fsguard("lists", "export", "--output", str(tmp_path / "out.csv"))
    assert code == 0 and out.strip() == f"exported 4 entries to {tmp_path / 'out.csv'}"
    assert fsguard("lists", "export")[1] == (tmp_path / "out.csv").read_text()
    for e in before:
        fsguard("lists", "remove", e["number"])
    assert entries(db) == []
    assert fsguard("lists", "import", str(tmp_path / "out.csv"))[0] == 0
    after = [lists.entry_dict(e) for e in entries(db)]
    keys = ("number", "kind", "level", "dnis", "action", "reason", "expires_at")
    assert [{k: e[k] for k in keys} for e in after] == [{k: e[k] for k in keys} for e in before]


# ------------------------------------------------------------------ purge, erasure


def test_purge_drops_old_counters_and_long_expired_entries(fsguard, db):
    now = time.time()
    with db.begin() as session:
        counters.count_call(session, "+12125550147", ["*"], now=now - 3 * 86400)
        counters.count_call(session, "+12125550147", ["*"], now=now)
        lists.add(session, lists.make_spec("+13125550100", kind="block", level=3))
        lists.add(session, lists.make_spec("+14155550123", kind="block", level=3))
        session.execute(update(ListEntry).where(ListEntry.number == "+13125550100")
                        .values(expires_at=utcnow() - timedelta(days=40)))
        session.execute(update(ListEntry).where(ListEntry.number == "+14155550123")
                        .values(expires_at=utcnow() - timedelta(days=1)))
    code, out, _ = fsguard("lists", "purge")
    assert code == 0 and out.strip() == "purged 1 call counter rows and 1 expired entries"
    assert [e.number for e in entries(db)] == ["+14155550123"]   # expired a day ago: still shown with --all


def test_erasure_forgets_the_counts_and_keeps_the_operators_decisions(fsguard, db):
    with db.begin() as session:
        counters.count_call(session, "+12125550147", ["*"], now=time.time())
        lists.add(session, lists.make_spec("+12125550147", kind="block", level=7))
    code, out, _ = fsguard("erase", "+1 212 555 0147")
    assert code == 0
    assert "deleted 1 call counter row(s) for +12125550147" in out
    assert "kept 1 list entry for +12125550147 (operator decisions" in out
    with db.begin() as session:
        assert session.scalar(select(func.count()).select_from(CallCounter)) == 0
    assert [e.number for e in entries(db)] == ["+12125550147"]
