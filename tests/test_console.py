"""The console's handlers through the real listener (a cookie-keeping client, no browser): login,
sessions, lock-out, CSRF, roles enforced on the server for every action, escaping of what a caller
controls, imports, audio with Range requests, the glance page; and the ``operators`` / ``audit``
commands through the real entry point. tests/test_console_browser.py drives the same pages in
chromium."""

from __future__ import annotations

import io
import json
import re
import uuid as uuidlib
from types import SimpleNamespace
from typing import Any

import pytest

from consolekit import OPERATORS, PASSWORD, Browser, add_operators, console_node, write_wav
from fsguard.store import audit
from fsguard.ops import cli, operators
from fsguard.rules import lists
from fsguard.ops.web.server import AdminServer
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle


@pytest.fixture
def node(start_guard, settings, db):
    """fsguard with screening, recording and routing, its admin listener, and three operators."""
    settings.http.token = "s3cret-token-for-the-tests-0123"
    with console_node(start_guard, settings, db) as (guard, server):
        yield SimpleNamespace(guard=guard, address=server.address, db=db, settings=settings,
                              fs=FakeFreeSWITCH(guard.address, time_scale=0.005))


def entries(db) -> list[dict[str, Any]]:
    with db.begin() as session:
        return [lists.entry_dict(e) for e in lists.all_entries(session)]


def audit_rows(db) -> list[dict[str, Any]]:
    with db.begin() as session:
        return [audit.as_dict(e) for e in audit.entries(session)]


def block(db, number: str, level: int = 8, reason: str = "abusive caller") -> None:
    with db.begin() as session:
        lists.add(session, lists.make_spec(number, kind="block", level=level, reason=reason, source="cli"))


# ------------------------------------------------------------------ on, off, login


def test_the_console_is_off_until_an_operator_exists(start_guard, settings, db):
    guard = start_guard()
    server = AdminServer(guard.app, guard.server, listen="127.0.0.1:0")
    server.start()
    try:
        client = Browser(server.address)
        off = client.get("/console/login")
        assert off.status == 404 and "add an operator" in off.text
        with db.begin() as session:
            operators.add(session, "ada", "admin", PASSWORD)
        assert client.get("/console/login").status == 200
    finally:
        server.stop()


def test_login_sets_a_safe_session_cookie_and_logout_ends_it(node):
    client = Browser(node.address)
    first = client.get("/console/calls")
    assert first.status == 302 and "/console/login" in first.location
    wrong = client.login("sam", "not the password")
    assert wrong.status == 401 and "wrong name or password" in wrong.text
    unknown = client.login("nobody", PASSWORD)
    assert unknown.status == 401 and "wrong name or password" in unknown.text    # the same words
    ok = client.login("sam")
    assert ok.status == 303 and ok.location.endswith("/console/")
    cookie = next(line for line in client.set_cookie_lines if line.startswith("fsguard_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    page = client.get("/console/calls")
    assert page.status == 200 and "sam (supervisor)" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    stolen = dict(client.cookies)
    assert client.post("/console/logout", {"csrf_token": page.csrf()}).status == 303
    replay = Browser(node.address)
    replay.cookies = stolen                                     # the old cookie is worth nothing now
    assert replay.get("/console/calls").status == 302


def test_the_session_cookie_is_secure_behind_tls(node):
    node.guard.app.settings.http.behind_tls = True
    client = Browser(node.address)
    assert client.login("sam").status == 303
    cookie = next(line for line in client.set_cookie_lines if line.startswith("fsguard_session="))
    assert "Secure" in cookie


def test_repeated_failures_lock_the_account_until_an_admin_unlocks_it(node, fsguard_cli):
    client = Browser(node.address)
    for _ in range(operators.MAX_FAILURES):
        assert client.login("vic", "guess-guess-guess").status == 401
    locked = client.login("vic")                               # even the right password
    assert locked.status == 401 and "locked" in locked.text
    code, out, _ = fsguard_cli("operators", "set", "vic", "--unlock")
    assert code == 0
    assert client.login("vic").status == 303


def test_a_login_form_from_elsewhere_is_refused(node):
    client = Browser(node.address)
    forged = client.post("/console/login", {"name": "sam", "password": PASSWORD, "login_token": "made-up"})
    assert forged.status == 401 and "expired" in forged.text and "fsguard_session" not in client.cookies


# ------------------------------------------------------------------ CSRF and roles


def test_every_form_needs_the_sessions_csrf_token(node):
    client = Browser(node.address)
    client.login("sam")
    form = {"number": "+12025550143", "kind": "block", "level": "8", "reason": "abusive"}
    assert client.post("/console/lists/add", form).status == 403
    assert client.post("/console/lists/add", {**form, "csrf_token": "x" * 43}).status == 403
    other = Browser(node.address)
    other.login("ada")
    assert client.post("/console/lists/add", {**form, "csrf_token": other.csrf()}).status == 403   # not ours
    assert entries(node.db) == []
    assert client.post("/console/lists/add", {**form, "csrf_token": client.csrf()}).status == 303
    assert [e["number"] for e in entries(node.db)] == ["+12025550143"]


def console_rules(node) -> list[Any]:
    from fsguard.ops.web import create_app

    app = create_app(node.guard.app, node.guard.server)
    return [r for r in app.url_map.iter_rules() if r.rule.startswith("/console") and r.endpoint != "static"]


def test_every_console_page_and_action_declares_the_role_it_needs(node):
    from fsguard.ops.web import create_app

    app = create_app(node.guard.app, node.guard.server)
    for rule in console_rules(node):
        view = app.view_functions[rule.endpoint]
        if rule.endpoint in ("console.login", "console.logout", "console.home"):
            continue
        role = getattr(view, "needs_role", None)
        assert role in operators.ROLES, f"{rule.rule} declares no role"
        if "POST" in (rule.methods or ()):
            assert role in ("supervisor", "admin"), f"{rule.rule}: a change open to viewers"


def test_a_viewers_changes_are_refused_on_the_server(node):
    call = node.fs.call(Caller(ani="12025550143", dnis="5000"))
    settle(node.guard)
    viewer = Browser(node.address)
    assert viewer.login("vic").status == 303
    token = viewer.csrf()
    page = viewer.get(f"/console/calls/{call.uuid}")
    assert page.status == 200 and 'id="block-form"' not in page.text        # not offered...
    posts = [rule for rule in console_rules(node) if "POST" in (rule.methods or ()) and
             rule.endpoint not in ("console.login", "console.logout")]
    assert len(posts) >= 9
    for rule in posts:
        path = rule.rule.replace("<uuid>", call.uuid)
        refused = viewer.post(path, {"csrf_token": token, "kind": "block", "level": "8", "reason": "x",
                                     "number": "+12025550143", "action": "freeze"})
        assert refused.status == 403, (path, refused.status)               # ...and refused when sent anyway
        assert "needs the supervisor role" in refused.text
    assert entries(node.db) == [] and audit_rows(node.db) == []


# ------------------------------------------------------------------ calls


def test_block_and_unblock_a_caller_from_a_call(node):
    first = node.fs.call(Caller(ani="12025550143", dnis="5000"))
    assert first.outcome == "routed"
    settle(node.guard)
    sam = Browser(node.address)
    sam.login("sam")
    page = sam.get(f"/console/calls/{first.uuid}")
    assert "Outcome: routed" in page.text                      # the explanation of `calls show`
    done = sam.post(f"/console/calls/{first.uuid}/list", {"csrf_token": page.csrf(), "kind": "block",
                                                          "level": "8", "reason": "abusive caller"})
    assert done.status == 303
    blocked = node.fs.call(Caller(ani="12025550143", dnis="5000"))
    assert blocked.outcome == "hungup" and not blocked.answered
    settle(node.guard)
    listed = sam.get("/console/calls?outcome=rejected")
    assert blocked.uuid[:8] in listed.text or blocked.uuid in listed.text
    page = sam.get(f"/console/calls/{blocked.uuid}")
    assert "+12025550143 block level 8" in page.text
    gone = sam.post("/console/lists/remove", {"csrf_token": page.csrf(), "number": "+12025550143",
                                              "kind": "block", "reason": "customer called to complain",
                                              "back": f"/console/calls/{blocked.uuid}"})
    assert gone.status == 303 and gone.location.endswith(f"/console/calls/{blocked.uuid}")
    assert node.fs.call(Caller(ani="12025550143", dnis="5000")).outcome == "routed"
    trail = audit_rows(node.db)
    assert [(r["action"], r["actor"], r["via"], r["subject"], r["reason"]) for r in trail] == [
        ("list.remove", "sam", "console", "+12025550143", "customer called to complain"),
        ("list.add", "sam", "console", "+12025550143", "abusive caller")]
    shown = sam.get("/console/audit?subject=%2B12025550143")
    assert "customer called to complain" in shown.text


def test_call_filters_on_the_calls_page_are_validated(node):
    client = Browser(node.address)
    client.login("vic")
    assert client.get("/console/calls?outcome=bogus").status == 400
    assert client.get("/console/calls?limit=-1").status == 400
    assert client.get("/console/calls?since=2h&outcome=routed&stage=routing&verdict=route").status == 200


def test_a_caller_controlled_name_is_shown_as_text(node):
    import gevent

    evil = '<script>document.title="owned"</script><img src=x onerror=alert(1)>'
    client = Browser(node.address)
    client.login("vic")
    held = node.fs.spawn(Caller(ani="12025550199", name=evil, talk_time=600))   # 3 s at this time scale
    with gevent.Timeout(10):
        while not node.guard.app.held:
            gevent.sleep(0.01)
    live = client.get("/console/calls/live")
    assert "&lt;script&gt;document.title=" in live.text and "<script>document" not in live.text
    assert held.get(timeout=60).outcome == "routed"
    settle(node.guard)
    call_uuid = held.get().uuid
    for path in ("/console/calls", f"/console/calls/{call_uuid}"):
        page = client.get(path)
        assert page.status == 200
        assert "&lt;script&gt;" in page.text and "<script>document" not in page.text
        assert "<img src=x" not in page.text


# ------------------------------------------------------------------ lists and customers


def post_csv(client: Browser, path: str, token: str, csv_text: str, extra: dict[str, str]) -> Any:
    """A multipart form with a CSV file, as the browser's import form sends it."""
    boundary = "----fsguard" + uuidlib.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in {"csrf_token": token, **extra}.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="import.csv"\r\n'
                 f"Content-Type: text/csv\r\n\r\n{csv_text}\r\n--{boundary}--\r\n")
    return client.request("POST", path, body="".join(parts).encode(),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def test_list_csv_import_reports_bad_lines_and_writes_nothing_until_fixed(node):
    sam = Browser(node.address)
    sam.login("sam")
    token = sam.csrf("/console/lists/import")
    csv_text = "number,kind,level,reason\n+12025550143,block,8,abusive\nnot-a-number,block,8,x\n+12025550144,allow,,vip\n"

    def upload(extra: dict[str, str]) -> Any:
        return post_csv(sam, "/console/lists/import", token, csv_text, extra)

    refused = upload({})
    assert refused.status == 400 and "nothing was written" in refused.text
    assert re.search(r"<td>3</td><td>[^<]*not-a-number", refused.text), refused.text
    assert entries(node.db) == []
    written = upload({"skip_bad": "on"})
    assert written.status == 200 and "2 written" in written.text
    assert sorted(e["number"] for e in entries(node.db)) == ["+12025550143", "+12025550144"]
    exported = sam.get("/console/lists/export.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    assert "+12025550143,block,8,abusive" in exported.text
    assert audit_rows(node.db)[0]["action"] == "list.import"


def test_customers_csv_import_is_all_or_nothing_unless_bad_rows_are_skipped(node):
    sam = Browser(node.address)
    sam.login("sam")
    token = sam.csrf("/console/customers/import")
    csv_text = "number,name,account,vip\n+442079460000,Ada,C-1,yes\nnonsense,Bob,C-2,no\n"
    refused = post_csv(sam, "/console/customers/import", token, csv_text, {})
    assert refused.status == 400 and "line 3" in refused.text and "nothing was written" in refused.text
    assert "0 customers" in sam.get("/console/customers").text
    done = post_csv(sam, "/console/customers/import", token, csv_text, {"skip_bad": "on"})
    assert done.status == 200 and "1 written" in done.text
    assert "C-1" in sam.get("/console/customers").text
    assert audit_rows(node.db)[0]["action"] == "customer.import"


def test_customers_are_added_searched_and_removed(node):
    sam = Browser(node.address)
    sam.login("sam")
    token = sam.csrf("/console/customers")
    saved = sam.post("/console/customers/save", {"csrf_token": token, "numbers": "+442079460000; +442079460001",
                                                  "account_id": "C-1001", "name": "Ada <Lovelace>", "vip": "on"})
    assert saved.status == 303
    found = sam.get("/console/customers?number=%2B442079460001")
    assert "C-1001" in found.text and "Ada &lt;Lovelace&gt;" in found.text
    assert sam.post("/console/customers/remove", {"csrf_token": token, "number": "+442079460000"}).status == 303
    table = sam.get("/console/customers").text.split('id="customers"', 1)[1]
    assert "+442079460000" not in table and "+442079460001" in table
    assert [r["action"] for r in audit_rows(node.db)] == ["customer.remove_number", "customer.save"]


# ------------------------------------------------------------------ recordings, outbound, glance


def recorded_call(node) -> tuple[str, str]:
    result = node.fs.call(Caller(ani="12025550150", dnis="5000"))
    assert result.outcome == "routed"
    settle(node.guard)
    with node.db.begin() as session:
        from fsguard.store.models import Recording

        rec = session.query(Recording).filter_by(call_uuid=result.uuid).one()
        path = rec.path
    write_wav(path)                                             # FreeSWITCH's file, as it would be
    return result.uuid, path


def test_recordings_play_with_range_requests_and_respect_roles(node):
    call_uuid, path = recorded_call(node)
    sam = Browser(node.address)
    sam.login("sam")
    page = sam.get(f"/console/recordings/{call_uuid}")
    assert page.status == 200 and 'id="player"' in page.text
    whole = sam.get(f"/console/recordings/{call_uuid}/audio")
    assert whole.status == 200 and whole.headers["content-type"] == "audio/wav" and whole.body[:4] == b"RIFF"
    part = sam.get(f"/console/recordings/{call_uuid}/audio", headers={"Range": "bytes=100-199"})
    assert part.status == 206 and len(part.body) == 100
    assert part.headers["content-range"].startswith("bytes 100-199/")
    vic = Browser(node.address)
    vic.login("vic")
    assert 'id="player"' not in vic.get(f"/console/recordings/{call_uuid}").text
    assert vic.get(f"/console/recordings/{call_uuid}/audio").status == 403
    node.guard.app.settings.http.viewers_may_listen = True
    assert vic.get(f"/console/recordings/{call_uuid}/audio").status == 200
    assert Browser(node.address).get(f"/console/recordings/{call_uuid}/audio").status == 302   # not logged in


def test_hold_and_release_a_recording_with_a_reason(node):
    call_uuid, _ = recorded_call(node)
    sam = Browser(node.address)
    sam.login("sam")
    token = sam.csrf(f"/console/recordings/{call_uuid}")
    no_reason = sam.post(f"/console/recordings/{call_uuid}/hold", {"csrf_token": token, "action": "hold"})
    assert no_reason.status == 400
    assert sam.post(f"/console/recordings/{call_uuid}/hold",
                    {"csrf_token": token, "action": "hold", "reason": "case 2026-114"}).status == 303
    assert "Held since" in sam.get(f"/console/recordings/{call_uuid}").text
    assert sam.post(f"/console/recordings/{call_uuid}/hold",
                    {"csrf_token": token, "action": "release", "reason": "case closed"}).status == 303
    assert [(r["action"], r["reason"]) for r in audit_rows(node.db)] == [
        ("recording.release", "case closed"), ("recording.hold", "case 2026-114")]
    assert sam.get("/console/recordings/purge").status == 200


def test_freeze_and_unfreeze_an_outbound_number(node):
    sam = Browser(node.address)
    sam.login("sam")
    token = sam.csrf("/console/outbound")
    assert sam.post("/console/outbound/freeze", {"csrf_token": token, "action": "freeze", "number": "+15557654321",
                                                 "reason": "asked not to be called", "days": "30"}).status == 303
    page = sam.get("/console/outbound?number=%2B15557654321")
    assert "asked not to be called" in page.text and "frozen until" in page.text
    assert sam.post("/console/outbound/freeze", {"csrf_token": token, "action": "unfreeze", "number": "+15557654321",
                                                 "reason": "called back"}).status == 303
    assert "No number is frozen" in sam.get("/console/outbound").text
    assert [r["action"] for r in audit_rows(node.db)] == ["outbound.unfreeze", "outbound.freeze"]


def test_the_glance_page_draws_calls_by_outcome(node):
    block(node.db, "+12025550166")
    assert node.fs.call(Caller(ani="12025550166")).outcome == "hungup"
    for i in range(3):
        assert node.fs.call(Caller(ani=f"1202555017{i}")).outcome == "routed"
    settle(node.guard)
    client = Browser(node.address)
    client.login("vic")
    page = client.get("/console/glance")
    assert page.status == 200
    assert re.search(r'id="total-calls">4<', page.text)
    tiles = dict((name, int(n)) for name, n in re.findall(r'<div class="tile legend-(\w+)"><b>(\d+)</b>', page.text))
    assert tiles == {"routed": 3, "challenged": 0, "verified": 0, "blocked": 1, "failed_open": 0}, tiles
    assert page.text.count("<polyline") == 5 and 'class="series-blocked"' in page.text
    assert "Calls per 5 minutes by outcome" in page.text
    assert "Calls per 1 minute by outcome" in client.get("/console/glance?hours=1").text
    assert client.get("/console/glance?hours=0").status == 400
    assert "database: ok" in page.text and 'id="backlog">0<' in page.text


def test_the_readiness_tile_says_what_readyz_says_a_stale_policy_included(node, monkeypatch):
    """The console's tile and the load balancer's probe run the same checks: a policy that has
    not been confirmed current for too long is shown to the supervisor, not only to the probe."""
    client = Browser(node.address)
    client.login("vic")
    tile = re.search(r'id="readiness">(.*?)</div>', client.get("/console/glance").text, re.S).group(1)
    assert "database: ok" in tile and "policy: ok" in tile and "esl: ok" in tile, tile
    monkeypatch.setattr(node.guard.app.policy, "age", lambda: 3600.0)
    reply = Browser(node.address).get("/readyz")
    probe = json.loads(reply.text)
    assert reply.status == 503 and probe["ready"] is False and probe["checks"]["policy"] == "stale: last known current 3600s ago", probe
    page = client.get("/console/glance")
    tile = re.search(r'id="readiness">(.*?)</div>', page.text, re.S).group(1)
    assert "policy: stale: last known current 3600s ago" in tile and 'class="tile bad"' in page.text, tile


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def fsguard_cli(settings, db, monkeypatch, capsys):
    """``fsguard ...`` in-process through the real entry point, against the test database."""
    monkeypatch.setenv("FSGUARD_DATABASE_URL", settings.database.url)
    monkeypatch.delenv("FSGUARD_CONFIG", raising=False)
    monkeypatch.setenv("USER", "root-of-ops")

    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_operators_commands_manage_accounts_and_are_audited(fsguard_cli, db):
    code, out, _ = fsguard_cli("operators", "add", "olga", "--role", "supervisor", "--password-stdin",
                               stdin="a long enough password\n")
    assert code == 0 and "added operator olga (supervisor)" in out
    code, out, _ = fsguard_cli("operators", "add", "gen", "--role", "viewer", "--generate")
    generated = re.search(r"password \(shown once\): (\S+)", out).group(1)
    with db.begin() as session:
        assert operators.login(session, "gen", generated).who is not None
        stored = operators.get(session, "gen").password_hash
    assert generated not in stored and stored.startswith("$argon2id$")
    code, _, err = fsguard_cli("operators", "add", "olga", "--role", "admin", "--generate")
    assert code == 1 and "exists" in err.strip().splitlines()[-1]
    code, _, err = fsguard_cli("operators", "add", "short", "--role", "admin", "--password-stdin", stdin="tiny\n")
    assert code == 1 and "at least" in err.strip().splitlines()[-1]
    code, _, _ = fsguard_cli("operators", "set", "olga", "--role", "admin", "--disable")
    assert code == 0
    code, out, _ = fsguard_cli("operators", "list", "--json")
    import json

    listed = {o["name"]: o for o in json.loads(out)}
    assert listed["olga"]["role"] == "admin" and listed["olga"]["disabled"] is True
    code, out, _ = fsguard_cli("operators", "add", "jay", "--role", "viewer", "--generate", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["operator"]["role"] == "viewer" and len(shown["password"]) >= 20
    assert json.loads(fsguard_cli("operators", "remove", "jay", "--json")[1]) == {"removed": "jay"}
    assert fsguard_cli("operators", "remove", "gen")[0] == 0
    code, out, _ = fsguard_cli("audit", "--action", "operator", "--json")
    trail = json.loads(out)
    assert [(r["action"], r["subject"], r["actor"], r["via"]) for r in trail] == [
        ("operator.remove", "gen", "root-of-ops", "cli"), ("operator.remove", "jay", "root-of-ops", "cli"),
        ("operator.add", "jay", "root-of-ops", "cli"), ("operator.set", "olga", "root-of-ops", "cli"),
        ("operator.add", "gen", "root-of-ops", "cli"), ("operator.add", "olga", "root-of-ops", "cli")]


def test_cli_changes_are_in_the_audit_trail(fsguard_cli, db):
    assert fsguard_cli("lists", "add", "+12025550143", "--block", "8", "--reason", "abusive caller")[0] == 0
    assert fsguard_cli("lists", "remove", "+12025550143")[0] == 0
    assert fsguard_cli("outbound", "freeze", "+15557654321", "--reason", "asked not to be called")[0] == 0
    assert fsguard_cli("customers", "add", "+442079460000", "--name", "Ada", "--account", "C-1")[0] == 0
    code, out, _ = fsguard_cli("audit")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["when", "(UTC)", "who", "via"]
    assert [line.split()[4] for line in lines[1:]] == ["customer.save", "outbound.freeze", "list.remove", "list.add"]
    assert all(line.split()[2:4] == ["root-of-ops", "cli"] for line in lines[1:])
    code, _, err = fsguard_cli("audit", "--since", "yesterday")
    assert code == 1 and "--since" in err.strip().splitlines()[-1]


def test_all_operators_roles_are_known():
    assert set(OPERATORS.values()) == set(operators.ROLES)


def test_glance_counts_fall_in_their_minute_and_old_calls_are_left_out(db):
    from datetime import datetime, timedelta, timezone

    from fsguard.store.models import CallRecord, StageVerdict
    from fsguard.ops.web import charts

    now = datetime(2026, 11, 20, 12, 0, 30, tzinfo=timezone.utc)

    def call(uuid: str, minutes_ago: float, outcome: str, *, challenged: bool = False,
             verified: bool | None = None) -> list[Any]:
        rows: list[Any] = [CallRecord(uuid=uuid, node="n", direction="inbound", outcome=outcome, verified=verified,
                                      started_at=now - timedelta(minutes=minutes_ago))]
        if challenged:
            rows.append(StageVerdict(call_uuid=uuid, seq=1, stage="screening", outcome="challenge", code="blocklist.soft",
                                     reason="", enforced=True, details={}, elapsed_ms=1.0))
        return rows

    with db.begin() as session:
        for rows in (call("call-now-1", 0, "routed"), call("call-now-2", 0.2, "rejected"),
                     call("call-10m-1", 10, "routed", challenged=True, verified=True),
                     call("call-10m-2", 10, "rejected", challenged=True, verified=False),
                     call("call-90m", 90, "failed_open"), call("call-old", 200, "routed")):
            session.add_all(rows)
    app = SimpleNamespace(db=db)
    facts = charts.glance_facts(app, 3, now=now)
    assert facts["total_calls"] == 5                                   # the 200-minute-old call is out
    assert facts["totals"] == {"routed": 2, "challenged": 2, "verified": 1, "blocked": 2, "failed_open": 1}
    assert facts["pass_rate"] == 50.0
    series = facts["series"]
    assert series["routed"][-1] == 1 and series["blocked"][-1] == 1     # the minute now is the last bucket
    assert series["challenged"][-11] == 2 and series["verified"][-11] == 1
    assert series["failed_open"][-91] == 1
    svg = charts.line_chart(series, facts["since"])
    assert svg.count("<polyline") == 5 and "<script" not in svg
