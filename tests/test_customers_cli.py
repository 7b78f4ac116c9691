"""``fsguard customers`` and ``fsguard route``, run as an operator would, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsguard.ops import cli
from fsguard.rules.crm import forget_crms
from fsguard.store.models.customers import Customer, CustomerNumber


@pytest.fixture
def env(monkeypatch, settings, tmp_path):
    """The CLI reads its settings from the environment (and an optional file)."""
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    forget_crms()
    yield
    forget_crms()


def fsguard(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def shown(capsys, *argv: str):
    code, out, err = fsguard(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_add_update_and_show(env, db, capsys):
    code, out, _ = fsguard(capsys, "customers", "add", "+1 (212) 555-0123", "--name", "Ada Lovelace", "--account",
                           "A-1001", "--vip", "--agent", "1001@default")
    assert code == 0
    assert out.strip() == "added customer A-1001: +12125550123; Ada Lovelace; VIP; own agent 1001@default"

    # a second number for the same account; only what is given changes
    code, out, _ = fsguard(capsys, "customers", "add", "4155550100", "--account", "A-1001", "--region", "west")
    assert code == 0 and out.startswith("updated customer A-1001: +12125550123, +14155550100; Ada Lovelace; VIP")

    # by number: no longer a VIP, the agent cleared, a queue set
    code, _, _ = fsguard(capsys, "customers", "add", "+14155550100", "--no-vip", "--agent", "", "--queue", "gold")
    assert code == 0
    [one] = shown(capsys, "customers", "show", "+12125550123")   # one shape: always a list
    assert one == {"id": one["id"], "account_id": "A-1001", "name": "Ada Lovelace", "vip": False, "queue": "gold",
                   "agent": None, "region": "west", "source": "local", "numbers": ["+12125550123", "+14155550100"],
                   "added_via": "cli"}
    assert [c["id"] for c in shown(capsys, "customers", "show", "--account", "A-1001")] == [one["id"]]

    fsguard(capsys, "customers", "add", "+442079460000", "--vip")
    assert [c["numbers"] for c in shown(capsys, "customers", "show", "--vip")] == [["+442079460000"]]
    code, out, _ = fsguard(capsys, "customers", "show")
    assert code == 0
    assert "A-1001" in out and "+442079460000" in out and out.rstrip().endswith("2 of 2 customer(s), 3 number(s)")

    with db.begin() as s:
        assert s.query(Customer).count() == 2 and s.query(CustomerNumber).count() == 3


@pytest.mark.parametrize("argv,message", [
    (["customers", "add", "12345"], "'12345' is not a valid telephone number (region US)"),
    (["customers", "add", "+12125550123", "--agent", "1001; hangup"], "agent '1001; hangup' is not an agent name"),
    (["customers", "add", "+12125550123", "--queue", "gold queue"], "queue 'gold queue' is not a queue name"),
    (["customers", "add", "+12125550123", "--name", "Eve\nCaller-ID: 1"], "name contains control characters"),
    (["customers", "add"], "give at least one number (or --account to update a customer)"),
    (["customers", "add", "--account", "NOPE", "--vip"], "a new customer needs at least one number"),
    (["customers", "show", "+13125550188"], "no customer with number +13125550188"),
    (["customers", "remove", "+13125550188"], "no customer has the number +13125550188"),
    (["customers", "remove"], "give a NUMBER or --account (one of them)"),
    (["route", "explain", "not-a-number"], "'not-a-number' is not a valid telephone number"),
    (["route", "explain", "+12125550123", "--at", "tomorrow"], "--at: expected 'YYYY-MM-DD HH:MM'"),
])
def test_operator_mistakes_get_one_clear_line(env, db, capsys, argv, message):
    code, out, err = fsguard(capsys, *argv)
    assert code == 1 and out == ""
    # the gevent monitor (GEVENT_MONITOR_THREAD_ENABLE in make test) may print a report first
    assert err.strip().splitlines()[-1].startswith("fsguard: ") and message in err and "Traceback" not in err


def test_a_number_belongs_to_one_customer(env, db, capsys):
    fsguard(capsys, "customers", "add", "+12125550123", "--account", "A-1")
    fsguard(capsys, "customers", "add", "+14155550100", "--account", "B-2")
    code, _, err = fsguard(capsys, "customers", "add", "+12125550123", "--account", "B-2")
    assert code == 1 and "+12125550123 already belongs to customer A-1 (id 1); remove it first" in err
    code, _, err = fsguard(capsys, "customers", "add", "+12125550123", "+14155550100")
    assert code == 1 and "these numbers belong to different customers" in err
    code, _, err = fsguard(capsys, "customers", "add", "+12125550123", "--account", "C-3")
    assert code == 1 and "belongs to customer A-1 (id 1), not to account C-3" in err

    # moving a number: remove it, add it again
    code, out, _ = fsguard(capsys, "customers", "remove", "+12125550123")
    assert code == 0 and out.strip() == "removed +12125550123 and customer A-1 (id 1), who had no other number"
    code, out, _ = fsguard(capsys, "customers", "add", "+12125550123", "--account", "B-2")
    assert code == 0 and "+12125550123, +14155550100" in out
    code, out, _ = fsguard(capsys, "customers", "remove", "--account", "B-2")
    assert code == 0 and out.strip() == "removed customer B-2 (id 2) and 2 number(s)"
    assert shown(capsys, "customers", "show") == []


GOOD_CSV = """\ufeffNumber,Name,Account,VIP,Queue,Agent,Region
+12125550123;4155550100,Ada Lovelace,A-1001,yes,,1001@default,east
+442079460000,Grace Hopper,A-2002,no,gold,,EMEA
+13125550188,,A-1001,,,,
"""


def test_import_a_csv_file(env, db, capsys, tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    code, out, err = fsguard(capsys, "customers", "import", str(path), "--dry-run")
    assert code == 0 and out.startswith("would import 3 row(s): 2 customer(s) added, 1 updated, 4 number(s) added")
    assert shown(capsys, "customers", "show") == []

    code, out, err = fsguard(capsys, "customers", "import", str(path))
    assert code == 0, err
    assert out.strip() == "imported 3 row(s): 2 customer(s) added, 1 updated, 4 number(s) added"
    listed = {c["account_id"]: c for c in shown(capsys, "customers", "show")}
    assert listed["A-1001"]["numbers"] == ["+12125550123", "+13125550188", "+14155550100"]
    assert listed["A-1001"]["vip"] is True and listed["A-1001"]["agent"] == "1001@default"
    assert listed["A-1001"]["region"] == "east"      # an empty cell does not clear a field
    assert listed["A-2002"]["queue"] == "gold" and listed["A-2002"]["vip"] is False
    assert listed["A-2002"]["added_via"] == "import"

    # importing the same file again changes nothing but says so
    code, out, _ = fsguard(capsys, "customers", "import", str(path))
    assert out.strip() == "imported 3 row(s): 0 customer(s) added, 3 updated, 0 number(s) added"


BAD_CSV = """number,name,vip,agent
+16175550111,Good Row,yes,
12345,Bad Number,no,
+16175550122,Bad Agent,no,1001 x
+16175550133,Bad Flag,perhaps,
+16175550144,Good Too,,
"""


def test_a_bad_file_imports_nothing_and_says_which_lines(env, db, capsys, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_CSV)
    code, out, err = fsguard(capsys, "customers", "import", str(path))
    assert code == 1
    assert "line 3: '12345' is not a valid telephone number" in err
    assert "line 4: agent '1001 x' is not an agent name" in err
    assert "line 5: vip must be true/false/yes/no/1/0, got 'perhaps'" in err
    assert "3 bad row(s), nothing imported" in err
    assert shown(capsys, "customers", "show") == []

    code, out, err = fsguard(capsys, "customers", "import", str(path), "--skip-invalid")
    assert code == 0
    assert out.strip() == ("imported 2 row(s): 2 customer(s) added, 0 updated, 2 number(s) added; "
                           "3 bad row(s) skipped")
    assert sorted(c["name"] for c in shown(capsys, "customers", "show")) == ["Good Row", "Good Too"]


def test_a_conflict_inside_the_file_rolls_the_whole_import_back(env, db, capsys, tmp_path):
    path = tmp_path / "conflict.csv"
    path.write_text("number,account\n+16175550111,A\n+16175550122,B\n+16175550111,B\n")
    code, _, err = fsguard(capsys, "customers", "import", str(path))
    assert code == 1 and "line 4: +16175550111 already belongs to customer A (id 1); remove it first" in err
    assert shown(capsys, "customers", "show") == []


@pytest.mark.parametrize("content,message", [
    ("", "the file is empty"),
    ("phone,colour\n+16175550111,red\n", "line 1: unknown column 'colour'"),
    ("name,vip\nAda,yes\n", "line 1: the header has no number column"),
])
def test_unreadable_files(env, db, capsys, tmp_path, content, message):
    path = tmp_path / "x.csv"
    path.write_text(content)
    code, _, err = fsguard(capsys, "customers", "import", str(path))
    assert code == 1 and message in err
    code, _, err = fsguard(capsys, "customers", "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "cannot read" in err and "missing.csv" in err


def test_erase_removes_the_customer_record(env, db, capsys):
    from fsguard.rules import erasure

    assert "routing" in [area for area, _ in erasure.AREAS]
    fsguard(capsys, "customers", "add", "+12125550123", "+14155550100", "--name", "Ada", "--account", "A-1001")
    fsguard(capsys, "customers", "add", "+442079460000", "--name", "Someone Else")
    code, out, err = fsguard(capsys, "erase", "+14155550100", "--dry-run")
    assert code == 0, err
    assert "deleted customer id 1 (account A-1001) with name, preferences and 2 number(s)" in out
    assert len(shown(capsys, "customers", "show")) == 2

    code, out, err = fsguard(capsys, "erase", "+14155550100")
    assert code == 0, err
    assert "routing:" in out and "deleted customer id 1 (account A-1001)" in out
    assert [c["name"] for c in shown(capsys, "customers", "show")] == ["Someone Else"]
    code, out, _ = fsguard(capsys, "erase", "+14155550100")
    assert "no customer record holds this number" in out


# --------------------------------------------------------------------------------- route explain


def test_route_explain_walks_the_table(env, db, capsys):
    fsguard(capsys, "customers", "add", "+12125550123", "--name", "Ada", "--account", "A-1001", "--vip")
    code, out, err = fsguard(capsys, "route", "explain", "2125550123", "--dnis", "8005550100")
    assert code == 0, err
    assert out.startswith("Caller +12125550123 dialling 8005550100 at ")
    assert "customer A-1001 (fsguard table): Ada; VIP" in out
    assert "number: US, New York, NY (US-NY), area code 212; routing region US-NY" in out
    lines = out.splitlines()
    assert any(line.split()[:3] == ["1", "fraud", "no"] and "risk 0 below 50" in line for line in lines)
    assert any("vip own agent" in line and "customer has no own agent or queue" in line for line in lines)
    assert any(line.split()[:3] == ["3", "vip", "WINS"] for line in lines)
    assert any("own queue" in line and "not tried" in line for line in lines)
    assert "Route: callcenter vip@default" in out
    assert "fsguard_customer_id=A-1001 fsguard_vip=true" in out and "cc_base_score=600" in out

    risky = shown(capsys, "route", "explain", "+12125550123", "--risk", "75", "--verified")
    assert risky["target"] == "callcenter fraud@default" and risky["rule"] == "fraud"
    assert risky["exported"]["fsguard_verified"] == "true" and risky["exported"]["fsguard_risk"] == "75"
    assert [r["matched"] for r in risky["rules"]] == [True, None, None, None]

    stranger = shown(capsys, "route", "explain", "+13125550188")
    assert stranger["target"] == "transfer default XML queues" and stranger["rule"] is None
    assert stranger["customer"] is None and stranger["region"]["subdivision"] == "US-IL"
    assert "cc_export_vars" not in stranger["exported"]


def test_route_explain_with_hours_regions_and_a_config_file(env, db, capsys, tmp_path, monkeypatch):
    config = tmp_path / "fsguard.toml"
    config.write_text("""
[routing]
timezone = "America/New_York"
hours = { west = "mon-fri 09:00-17:00 America/Los_Angeles" }
after_hours_target = "transfer after_hours XML queues"

[[routing.rules]]
name = "west coast"
region = ["US-CA", "US-WA"]
target = "west"
""")
    monkeypatch.setenv("FSGUARD_CONFIG", str(config))
    day = shown(capsys, "route", "explain", "+14155550100", "--at", "2026-01-05 13:00")
    assert day["target"] == "callcenter west@default" and day["at"].startswith("2026-01-05T13:00:00-05:00")
    night = shown(capsys, "route", "explain", "+14155550100", "--at", "2026-01-05T21:00:00-05:00")
    assert night["target"] == "transfer after_hours XML queues" and night["after_hours"] is True
    assert "west@default, which is closed (mon-fri 09:00-17:00 America/Los_Angeles, now Mon 2026-01-05 18:00)" \
        in night["reason"]

    code, out, _ = fsguard(capsys, "route", "table")
    assert code == 0
    assert "west coast" in out and "region=US-CA|US-WA" in out and "callcenter west@default" in out
    assert "(default)" in out and "transfer default XML queues" in out
    assert "mon-fri 09:00-17:00 America/Los_Angeles" in out
    assert "closed queues go to: transfer after_hours XML queues" in out
    table = shown(capsys, "route", "table")
    assert table["rules"][0]["region"] == ["US-CA", "US-WA"]


def test_route_explain_asks_the_crm_unless_told_not_to(env, db, capsys, monkeypatch):
    from gevent import pywsgi

    asked = []

    def crm_app(environ, start_response):
        asked.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"id": "CRM-7", "vip": "yes", "agent": "2002@default"}']

    server = pywsgi.WSGIServer(("127.0.0.1", 0), crm_app, log=None, error_log=None)
    server.start()
    try:
        monkeypatch.setenv("FSGUARD_ROUTING_CRM_URL", f"http://127.0.0.1:{server.server_port}/c?n={{number}}")
        asked_crm = shown(capsys, "route", "explain", "+12125550123")
        assert asked_crm["crm"] == "hit" and asked_crm["customer"]["account_id"] == "CRM-7"
        assert asked_crm["target"] == "transfer m:^:bridge:user/2002@default^callcenter:vip@default inline"
        assert asked_crm["fallback"] == "callcenter vip@default"
        not_asked = shown(capsys, "route", "explain", "+12125550123", "--no-crm")
        assert not_asked["crm"] == "not asked (--no-crm)" and not_asked["customer"] is None
        assert len(asked) == 1
    finally:
        server.stop(timeout=0)


def test_a_bad_routing_table_is_a_configuration_error(env, db, capsys, tmp_path, monkeypatch):
    config = tmp_path / "fsguard.toml"
    config.write_text('[[routing.rules]]\nname = "x"\nvip = "yes"\ntarget = "vip"\n')
    monkeypatch.setenv("FSGUARD_CONFIG", str(config))
    code, _, err = fsguard(capsys, "route", "table")
    assert code == 2
    assert err.strip() == "fsguard: configuration error: routing.rules[0] (x).vip: expected true or false, got 'yes'"


def test_the_shipped_callcenter_config_has_the_default_tables_queues():
    import xml.etree.ElementTree as ET

    from fsguard.config import Settings
    from fsguard.rules.routing import build_table

    conf = Path(__file__).resolve().parent.parent / "conf" / "freeswitch" / "autoload_configs" / "callcenter.conf.xml"
    queues = {q.get("name") for q in ET.parse(conf).getroot().iter("queue")}
    table = build_table(Settings().routing)
    named = {r.target.split(" ", 1)[1] for r in table.rules if r.target.startswith("callcenter ")}
    assert named == {"fraud@default", "vip@default"} and named <= queues
    # the default target's queue (dialplan/queues.xml) is there too
    queues_xml = (conf.parent.parent / "dialplan" / "queues.xml").read_text()
    assert 'data="support@default"' in queues_xml and "support@default" in queues
