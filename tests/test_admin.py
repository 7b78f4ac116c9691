"""The HTTP side: health, readiness, metrics moving with calls, and the admin API (auth, validation,
JSON errors), with calls made through the real socket by the simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import http.client
import json
from typing import Any

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fsguard.ops.admin import AdminServer
from fsguard.ops.commands.ops import PolicyReloader
from fsguard.config import ConfigError, DatabaseSettings
from fsguard.store.db import Database
from fsguard.call.pipeline import STAGES, Stage
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle

TOKEN = "s3cret-token-for-the-tests-0123"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json["error"]


def request(address: tuple[str, int], method: str, path: str, *, token: str | None = TOKEN,
            body: Any = None, raw: bytes | None = None, content_type: str = "application/json",
            headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        hdrs["Content-Type"] = content_type
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    conn.close()
    return reply


@pytest.fixture
def admin(guard, settings):
    settings.http.token = TOKEN
    server = AdminServer(guard.app, guard.server, listen="127.0.0.1:0")
    server.start()
    yield server
    server.stop()


def metric(address, name: str, **labels: str) -> float:
    text = request(address, "GET", "/metrics", token=None).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# ------------------------------------------------------------ health, readiness


def test_healthz_and_readyz_answer_without_a_token(admin, settings):
    health = request(admin.address, "GET", "/healthz", token=None)
    assert health.status == 200 and health.json["status"] == "ok" and health.json["node"] == "test-node"
    ready = request(admin.address, "GET", "/readyz", token=None)
    assert ready.status == 200, ready.body
    assert ready.json == {"ready": True, "node": "test-node", "checks": {"database": "ok", "policy": "ok", "esl": "ok"}}


def test_readyz_fails_while_draining(admin, guard):
    guard.server.stop(drain=0.1)
    ready = request(admin.address, "GET", "/readyz", token=None)
    assert ready.status == 503
    assert ready.json["checks"]["esl"].startswith("draining")
    assert ready.json["ready"] is False


def test_readyz_fails_when_the_database_is_unreachable(start_guard, settings):
    down = Database(DatabaseSettings(url="postgresql://postgres@127.0.0.1:1/none", pool_timeout=1.0))
    guard = start_guard(database=down)
    server = AdminServer(guard.app, guard.server, listen="127.0.0.1:0")
    server.start()
    try:
        ready = request(server.address, "GET", "/readyz", token=None)
        assert ready.status == 503
        assert ready.json["checks"] == {"database": "unreachable", "policy": "cannot be loaded from the database",
                                        "esl": "ok"}
    finally:
        server.stop()
        down.dispose()


# ------------------------------------------------------------------ metrics


def test_metrics_move_with_calls(admin, guard, fs):
    address = admin.address
    reply = request(address, "GET", "/metrics", token=None)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    assert metric(address, "fsguard_calls_total", direction="inbound", outcome="routed") == 0
    assert metric(address, "fsguard_decision_seconds_count") == 0

    for _ in range(3):
        assert fs.call(Caller(ani="15551234567", dnis="5000")).outcome == "routed"
    settle(guard)

    assert metric(address, "fsguard_calls_total", direction="inbound", outcome="routed") == 3
    assert metric(address, "fsguard_call_actions_total", direction="inbound", action="transfer") == 3
    assert metric(address, "fsguard_verdicts_total", stage="routing", outcome="route", enforced="true") == 3
    assert metric(address, "fsguard_rule_verdicts_total", stage="routing", code="default", outcome="route",
                  enforced="true") == 3
    assert metric(address, "fsguard_decision_seconds_count") == 3
    assert metric(address, "fsguard_decision_seconds_sum") > 0
    assert metric(address, "fsguard_active_calls") == 0
    # every family the issue lists is exported, even before it first moves
    text = request(address, "GET", "/metrics", token=None).body.decode()
    for name in ("fsguard_database_errors_total", "fsguard_esl_errors", "fsguard_auto_blocks",
                 "fsguard_active_calls", "fsguard_decision_seconds_bucket"):
        assert name in text


def test_active_calls_gauge_counts_a_call_in_progress(admin, guard, fs):
    pending = fs.spawn(Caller(talk_time=300))
    with gevent.Timeout(5):
        while not guard.app.held:
            gevent.sleep(0.01)
    assert metric(admin.address, "fsguard_active_calls") == 1
    assert pending.get(timeout=10).outcome == "routed"
    settle(guard)
    assert metric(admin.address, "fsguard_active_calls") == 0


# --------------------------------------------------------------------- auth


def test_the_api_is_off_without_a_token(admin, settings):
    settings.http.token = ""
    reply = request(admin.address, "GET", "/api/status", token="anything")
    assert reply.status == 403
    assert "admin API is off" in reply.error


@pytest.mark.parametrize("path", ["/api/status", "/api/calls", "/api/calls/abcdef123", "/api/nothing-here"])
def test_api_requests_without_the_right_token_are_refused(admin, path):
    missing = request(admin.address, "GET", path, token=None)
    assert missing.status == 401 and "Bearer" in missing.error
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = request(admin.address, "GET", path, token=TOKEN[:-1] + "x")
    assert wrong.status == 401 and wrong.error == "invalid token"
    basic = request(admin.address, "GET", path, token=None, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status == 401


def test_post_requests_are_refused_without_the_token(admin):
    reply = request(admin.address, "POST", "/api/reload", token=None, body={})
    assert reply.status == 401


def test_unknown_endpoints_and_methods_get_json_errors(admin):
    assert request(admin.address, "GET", "/api/nothing-here").status == 404
    assert "no such endpoint" in request(admin.address, "GET", "/api/nothing-here").error
    wrong = request(admin.address, "DELETE", "/api/status")
    assert wrong.status == 405 and wrong.headers["allow"] == "GET"
    assert request(admin.address, "GET", "/nowhere", token=None).status == 404


def test_a_short_token_is_a_configuration_error(settings):
    settings.http.token = "short"
    with pytest.raises(ConfigError, match="http.token"):
        settings.validate()


# --------------------------------------------------------------- calls


def test_calls_are_listed_filtered_and_explained(admin, guard, fs, settings, start_guard, db):
    other = copy.deepcopy(settings)
    other.node.id = "node-b"
    guard_b = start_guard(other)
    fs_b = FakeFreeSWITCH(guard_b.address, time_scale=0.005)
    a = fs.call(Caller(ani="15551230001", dnis="5000"))
    b = fs_b.call(Caller(ani="+442079460000", dnis="6000"))
    settle(guard)
    settle(guard_b)

    listed = request(admin.address, "GET", "/api/calls").json
    assert listed["count"] == 2
    assert [c["uuid"] for c in listed["calls"]] == [b.uuid, a.uuid]     # newest first
    assert {c["node"] for c in listed["calls"]} == {"test-node", "node-b"}

    by_node = request(admin.address, "GET", "/api/calls?node=node-b").json["calls"]
    assert [c["uuid"] for c in by_node] == [b.uuid]
    by_ani = request(admin.address, "GET", "/api/calls?ani=%2B1%20555%20123%200001").json["calls"]
    assert [c["uuid"] for c in by_ani] == [a.uuid]
    by_code = request(admin.address, "GET", "/api/calls?code=default&since=1h&limit=1").json["calls"]
    assert len(by_code) == 1
    assert request(admin.address, "GET", "/api/calls?outcome=rejected").json["count"] == 0
    assert request(admin.address, "GET", "/api/calls?until=2000-01-01").json["count"] == 0

    shown = request(admin.address, "GET", f"/api/calls/{a.uuid}").json
    assert shown["uuid"] == a.uuid and shown["ani"] == "+15551230001"
    assert shown["verdicts"][0]["stage"] == "routing"
    assert "FreeSWITCH was told: transfer default XML queues" in shown["explanation"]
    text = request(admin.address, "GET", f"/api/calls/{a.uuid}?format=text")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.body.decode().startswith(f"Call {a.uuid}")
    assert request(admin.address, "GET", f"/api/calls/{a.uuid[:8]}").json["uuid"] == a.uuid   # a prefix will do


@pytest.mark.parametrize("query, message", [
    ("limit=abc", "limit: expected an integer from 1 to 1000, got 'abc'"),
    ("limit=0", "limit: expected an integer from 1 to 1000, got 0"),
    ("limit=5000", "limit: expected an integer from 1 to 1000, got 5000"),
    ("ani=not-a-number", "ani: 'not-a-number' is not a valid telephone number"),
    ("since=yesterday", "since: expected a duration"),
    ("until=2026-13-45", "until: expected a duration"),
    ("direction=sideways", "direction: expected one of inbound, outbound, got 'sideways'"),
    ("outcome=Robert');DROP", "outcome: "),
])
def test_call_filters_are_validated(admin, query, message):
    reply = request(admin.address, "GET", f"/api/calls?{query}")
    assert reply.status == 400, reply.body
    assert reply.error.startswith(message), reply.error


def test_show_call_validates_the_uuid_and_says_when_there_is_none(admin):
    bad = request(admin.address, "GET", "/api/calls/x")
    assert bad.status == 400 and "not a call uuid" in bad.error
    missing = request(admin.address, "GET", "/api/calls/0000-not-there")
    assert missing.status == 404 and missing.error == "no call 0000-not-there"


def test_status_tells_the_node_stages_and_shadow_mode(admin, settings):
    settings.policy.enforce_stages = {"routing": False}
    status = request(admin.address, "GET", "/api/status").json
    assert status["node"] == "test-node" and status["stages"] == ["routing"]
    assert status["shadow_stages"] == ["routing"]
    assert status["calls"]["active"] == 0 and status["stopping"] is False
    index = request(admin.address, "GET", "/api").json["endpoints"]
    assert "GET /api/calls/{uuid}" in index


# ------------------------------------------------------------ bodies, reload


def test_request_bodies_are_checked(admin):
    bad_json = request(admin.address, "POST", "/api/lists", raw=b"{not json")
    assert bad_json.status == 400 and "not valid JSON" in bad_json.error
    wrong_type = request(admin.address, "POST", "/api/lists", raw=b"a=b", content_type="application/x-www-form-urlencoded")
    assert wrong_type.status == 415
    too_big = request(admin.address, "POST", "/api/lists", raw=b"{" + b" " * 70000 + b"}")
    assert too_big.status == 413
    not_object = request(admin.address, "POST", "/api/lists", body=[1, 2])
    assert not_object.status == 400 and "JSON object" in not_object.error


class Refuses(Stage):
    name = "refuses"

    def __init__(self, app):
        super().__init__(app)
        raise ConfigError("refuses.key: this stage will not start")


def test_reload_through_the_api(admin, guard, settings, monkeypatch):
    monkeypatch.setitem(STAGES, "refuses", f"{__name__}:Refuses")
    assert request(admin.address, "POST", "/api/reload").status == 409      # nothing to re-read from
    new = copy.deepcopy(settings)
    new.routing.default_target = "transfer 7000 XML default"
    new.esl.listen = "0.0.0.0:9999"                                         # needs a restart: kept
    guard.server.on_reload = PolicyReloader(lambda: copy.deepcopy(new), lambda: guard.app.settings)
    reply = request(admin.address, "POST", "/api/reload")
    assert reply.status == 200 and reply.json["reloaded"] is True
    assert guard.app.settings.routing.default_target == "transfer 7000 XML default"
    assert guard.app.settings.esl.listen == settings.esl.listen

    def broken() -> Any:
        raise ConfigError("policy.on_error: expected open or closed, got 'maybe'")

    guard.server.on_reload = PolicyReloader(broken, lambda: guard.app.settings)
    failed = request(admin.address, "POST", "/api/reload")
    assert failed.status == 409 and "policy.on_error" in failed.error
    assert guard.app.settings.routing.default_target == "transfer 7000 XML default"

    # a stage that refuses its settings when it is built: the running policy and settings stay whole
    refusing = copy.deepcopy(new)
    refusing.policy.stages = ["refuses", "routing"]
    refusing.routing.default_target = "transfer 8000 XML default"
    guard.server.on_reload = PolicyReloader(lambda: copy.deepcopy(refusing), lambda: guard.app.settings)
    failed = request(admin.address, "POST", "/api/reload")
    assert failed.status == 409
    assert guard.app.settings.routing.default_target == "transfer 7000 XML default"
    assert [s.name for s in guard.app.pipeline.stages] == ["routing"]
    assert metric(admin.address, "fsguard_config_reloads_total", result="failed") == 0   # counted by serve's hook

    # SIGHUP (systemctl reload) reloads the same way; every reload is in the audit trail, once
    guard.server.on_reload = PolicyReloader(lambda: copy.deepcopy(new), lambda: guard.app.settings)
    guard.server.reload()
    from fsguard.store import audit

    with guard.app.db.begin() as session:
        trail = [(e.action, e.actor, e.via) for e in audit.entries(session)]
    assert trail == [("policy.reload", "SIGHUP", "cli"), ("policy.reload_failed", "api", "api"),
                     ("policy.reload_failed", "api", "api"), ("policy.reload", "api", "api")]


# ------------------------------------------------------ the areas' endpoints


@pytest.mark.parametrize("body, message", [
    ({"kind": "block", "level": 7}, "number: required"),
    ({"number": "+12025550143", "level": 7}, "kind: required"),
    ({"number": "+12025550143", "kind": "grey"}, "kind: expected one of allow, block, dno, got 'grey'"),
    ({"number": "+12025550143", "kind": "block"}, "a block needs a level"),
    ({"number": "+12025550143", "kind": "block", "level": 100}, "level: expected an integer from 0 to 99, got 100"),
    ({"number": "+12025550143", "kind": "block", "level": "7; drop"}, "level: expected an integer"),
    ({"number": "not a number", "kind": "block", "level": 7}, ""),
    ({"number": "+12025550143", "kind": "block", "level": 7, "expires": "someday"}, ""),
    ({"number": "+12025550143", "kind": "allow", "action": "busy"}, "an action only goes with a block"),
    ({"number": ["+12025550143"], "kind": "allow"}, "number: expected a string"),
])
def test_list_entries_are_validated(admin, body, message):
    reply = request(admin.address, "POST", "/api/lists", body=body)
    assert reply.status == 400, reply.body
    assert reply.error.startswith(message), reply.error


def test_a_block_added_through_the_api_applies_to_the_next_call(admin, guard, settings, start_guard):
    pytest.importorskip("fsguard.stages.screening")
    added = request(admin.address, "POST", "/api/lists", body={
        "number": "+1 202 555 0143", "kind": "block", "level": 8, "reason": "abusive caller", "by": "alice"})
    assert added.status == 201, added.body
    entry = added.json["entry"]
    assert (entry["number"], entry["kind"], entry["level"], entry["hard"], entry["source"], entry["added_by"]) == (
        "+12025550143", "block", 8, True, "api", "api:alice")
    assert added.json["replaced"] is None
    again = request(admin.address, "POST", "/api/lists", body={"number": "+12025550143", "kind": "block", "level": 9})
    assert again.status == 201 and again.json["replaced"]["level"] == 8

    listed = request(admin.address, "GET", "/api/lists?kind=block").json
    assert [e["number"] for e in listed["entries"]] == ["+12025550143"]
    shown = request(admin.address, "GET", "/api/lists/%2B12025550143").json
    assert shown["applies"]["level"] == 9

    settings.policy.stages = ["screening", "routing"]
    node = start_guard()
    fs = FakeFreeSWITCH(node.address, time_scale=0.005)
    result = fs.call(Caller(ani="12025550143"))
    assert result.outcome == "hungup" and not result.answered

    removed = request(admin.address, "DELETE", "/api/lists/%2B12025550143")
    assert removed.status == 200 and removed.json["removed"][0]["level"] == 9
    assert fs.call(Caller(ani="12025550143")).outcome == "routed"
    gone = request(admin.address, "DELETE", "/api/lists/%2B12025550143")
    assert gone.status == 404 and gone.error == "no entry for +12025550143"
    assert request(admin.address, "GET", "/api/lists?kind=purple").status == 400
    assert request(admin.address, "GET", "/api/lists?all=perhaps").error == "all: expected true or false, got 'perhaps'"


def test_outbound_freezes_through_the_api(admin):
    frozen = request(admin.address, "POST", "/api/outbound/freeze",
                     body={"number": "+15557654321", "reason": "asked not to be called", "days": 30})
    assert frozen.status == 201, frozen.body
    assert frozen.json["freeze"]["number"] == "+15557654321" and frozen.json["freeze"]["source"] == "operator"
    listed = request(admin.address, "GET", "/api/outbound/frozen").json
    assert [f["number"] for f in listed["frozen"]] == ["+15557654321"]
    attempts = request(admin.address, "GET", "/api/outbound/attempts/%2B15557654321").json
    assert attempts["frozen"]["reason"] == "asked not to be called" and attempts["attempts"] == []

    for body, message in [({"reason": "x"}, "number: required"),
                          ({"number": "+15557654321"}, "reason: required"),
                          ({"number": "hello", "reason": "x"}, "number: 'hello' is not a telephone number"),
                          ({"number": "+15557654321", "reason": "x", "days": 0}, "days: expected"),
                          ({"number": "+15557654321", "reason": "x", "days": "30"}, "days: expected")]:
        reply = request(admin.address, "POST", "/api/outbound/freeze", body=body)
        assert reply.status == 400 and reply.error.startswith(message), reply.error

    lifted = request(admin.address, "DELETE", "/api/outbound/freeze/%2B15557654321?reason=called+back")
    assert lifted.status == 200 and lifted.json["lifted"][0]["number"] == "+15557654321"
    assert request(admin.address, "DELETE", "/api/outbound/freeze/%2B15557654321").status == 404
    assert request(admin.address, "GET", "/api/outbound/frozen").json["count"] == 0


def test_recordings_hold_and_release_through_the_api(admin, settings, start_guard):
    pytest.importorskip("fsguard.stages.recording")
    settings.policy.stages = ["recording", "routing"]
    settings.recording.mode = "all"
    settings.recording.consent = False
    node = start_guard()
    fs = FakeFreeSWITCH(node.address, time_scale=0.005)
    result = fs.call(Caller())
    assert result.outcome == "routed"
    settle(node)
    listed = request(admin.address, "GET", "/api/recordings").json
    assert [r["uuid"] for r in listed["recordings"]] == [result.uuid]

    no_reason = request(admin.address, "POST", f"/api/recordings/{result.uuid}/hold", body={})
    assert no_reason.status == 400 and no_reason.error == "reason: required"
    held = request(admin.address, "POST", f"/api/recordings/{result.uuid}/hold", body={"reason": "case 2026-114"})
    assert held.status == 200 and held.json["legal_hold"] is True and held.json["hold_reason"] == "case 2026-114"
    assert request(admin.address, "GET", "/api/recordings?held=true").json["count"] == 1
    released = request(admin.address, "POST", f"/api/recordings/{result.uuid}/release")
    assert released.status == 200 and released.json["legal_hold"] is False
    twice = request(admin.address, "POST", f"/api/recordings/{result.uuid}/release")
    assert twice.status == 409 and "not under legal hold" in twice.error
    missing = request(admin.address, "POST", "/api/recordings/00000000-0000-0000-0000-000000000000/hold",
                      body={"reason": "x"})
    assert missing.status == 404
    assert request(admin.address, "GET", "/api/recordings?limit=0").status == 400


def test_customers_through_the_api(admin, settings, start_guard):
    pytest.importorskip("fsguard.rules.customers")
    created = request(admin.address, "POST", "/api/customers", body={
        "numbers": ["+44 20 7946 0000"], "name": "Ada", "account_id": "C-1001", "vip": True, "queue": "vip"})
    assert created.status == 201, created.body
    assert created.json["created"] is True and created.json["numbers"] == ["+442079460000"]
    updated = request(admin.address, "POST", "/api/customers", body={"account_id": "C-1001", "agent": "1001@default"})
    assert updated.status == 200 and updated.json["created"] is False and updated.json["agent"] == "1001@default"

    listed = request(admin.address, "GET", "/api/customers?vip=true").json
    assert [c["account_id"] for c in listed["customers"]] == ["C-1001"] and listed["numbers"] == 1
    shown = request(admin.address, "GET", "/api/customers/%2B442079460000").json
    assert shown["name"] == "Ada" and shown["vip"] is True

    for body, message in [({"numbers": ["+442079460001"], "vip": "maybe"}, "vip must be"),
                          ({"numbers": ["not a number"]}, "'not a number' is not a valid telephone number"),
                          ({"numbers": "+442079460001", "queue": "vip; rm -rf"}, "queue 'vip; rm -rf' is not"),
                          ({"numbers": [1, 2]}, "numbers: expected a list"),
                          ({"numbers": ["+442079460001"], "colour": "red"}, "unknown field(s): colour"),
                          ({"name": "Nobody"}, "a new customer needs at least one number")]:
        reply = request(admin.address, "POST", "/api/customers", body=body)
        assert reply.status == 400 and message in reply.error, reply.error

    removed = request(admin.address, "DELETE", "/api/customers/%2B442079460000")
    assert removed.status == 200 and "C-1001" in removed.json["removed"]
    assert request(admin.address, "GET", "/api/customers/%2B442079460000").status == 404
    assert request(admin.address, "DELETE", "/api/customers/%2B442079460000").status == 404


# ------------------------------------------- refused input (issue 17.5) and the audit trail


@pytest.mark.parametrize("body, message", [
    ({"number": "+12025550143", "kind": "block", "level": 7, "expire": "30d", "reasn": "typo"},
     "unknown field(s): expire, reasn"),
    ({"number": "+12025550143", "kind": "allow", "colour": "red"}, "unknown field(s): colour"),
])
def test_unknown_fields_in_a_list_entry_are_refused_not_dropped(admin, body, message):
    reply = request(admin.address, "POST", "/api/lists", body=body)
    assert reply.status == 400, reply.body
    assert reply.error.startswith(message), reply.error
    assert request(admin.address, "GET", "/api/lists").json["count"] == 0     # nothing was stored


@pytest.mark.parametrize("path, message", [
    ("/api/calls?outcome=bogus", "outcome: expected one of abandoned, failed_closed, failed_open, rejected, routed"),
    ("/api/calls?verdict=maybe", "verdict: expected one of"),
    ("/api/calls?limit=-5", "limit: expected an integer from 1 to 1000, got -5"),
    ("/api/calls?colour=red", "unknown field(s): colour"),
    ("/api/lists?limit=-1", "limit: expected an integer from 1 to 100000, got -1"),
    ("/api/customers?limit=-1", "limit: expected an integer"),
    ("/api/recordings?status=lost", "status: expected one of complete, missing, recording, unreadable"),
    ("/api/recordings?held=perhaps", "held: expected true or false"),
    ("/api/outbound/attempts/%2B15557654321?limit=-3", "limit: expected an integer from 1 to 1000, got -3"),
])
def test_invalid_filters_are_refused(admin, path, message):
    reply = request(admin.address, "GET", path)
    assert reply.status == 400, reply.body
    assert reply.error.startswith(message), reply.error


def test_calls_filter_by_stage_and_verdict(admin, guard, fs, settings):
    fs.call(Caller(ani="15551230001", dnis="5000"))
    settle(guard)
    assert request(admin.address, "GET", "/api/calls?stage=routing&verdict=route").json["count"] == 1
    assert request(admin.address, "GET", "/api/calls?stage=routing&verdict=reject").json["count"] == 0
    assert request(admin.address, "GET", "/api/calls?stage=screening").json["count"] == 0


def test_changes_through_the_api_are_in_the_audit_trail(admin, db):
    from fsguard.store import audit

    assert request(admin.address, "POST", "/api/lists", body={
        "number": "+12025550143", "kind": "block", "level": 8, "reason": "abusive caller", "by": "alice"}).status == 201
    assert request(admin.address, "DELETE", "/api/lists/%2B12025550143?reason=asked+nicely",
                   headers={"X-Operator": "bob"}).status == 200
    assert request(admin.address, "POST", "/api/outbound/freeze",
                   body={"number": "+15557654321", "reason": "asked not to be called"}).status == 201
    assert request(admin.address, "POST", "/api/reload").status == 409          # a failed reload is audited too
    with db.begin() as session:
        rows = [audit.as_dict(e) for e in audit.entries(session)]
    assert [(r["action"], r["actor"], r["via"], r["subject"], r["reason"]) for r in rows] == [
        ("outbound.freeze", "api", "api", "+15557654321", "asked not to be called"),
        ("list.remove", "api:bob", "api", "+12025550143", "asked nicely"),
        ("list.add", "api:alice", "api", "+12025550143", "abusive caller"),
    ]
    listed = request(admin.address, "GET", "/api/audit?action=list&subject=%2B12025550143").json
    assert [(e["action"], e["actor"]) for e in listed["entries"]] == [("list.remove", "api:bob"),
                                                                       ("list.add", "api:alice")]
    assert request(admin.address, "GET", "/api/audit?via=cli").json["count"] == 0
    assert request(admin.address, "GET", "/api/audit?via=fax").status == 400


# ------------------------------------------------- slow clients (issue 16.5), raw errors (16.10)


def _raw(address: tuple[str, int], data: bytes, timeout: float = 20.0) -> bytes:
    import socket

    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_idle_and_half_sent_connections_do_not_stop_health_checks(admin, monkeypatch):
    import socket

    from fsguard.ops.web import server as web_server

    monkeypatch.setattr(web_server, "HEADER_TIMEOUT", 2.0)
    idle = [socket.create_connection(admin.address, timeout=30) for _ in range(100)]
    half = []
    for _ in range(100):
        sock = socket.create_connection(admin.address, timeout=30)
        sock.sendall(b"GET /api/calls?limit=1000 HTTP/1.1\r\nHost: fsguard\r\nAuthorization: Bearer ")   # never ends
        half.append(sock)
    try:
        # 200 connections that say nothing useful (a pool of 64 used to be full with 64)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert request(admin.address, "GET", path, token=None).status == 200
        assert request(admin.address, "GET", "/api/status").status == 200
        # and each of them is closed by the server after the header timeout, not kept for good
        for sock in idle[:5] + half[:5]:
            sock.settimeout(30)
            assert sock.recv(1024) == b""
    finally:
        for sock in idle + half:
            sock.close()


def test_a_flood_of_api_requests_does_not_starve_the_calls(admin, guard, fs, settings, db):
    from datetime import datetime, timedelta, timezone

    from fsguard.store.models import CallRecord

    settings.policy.stages = ["screening", "routing"]
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    with db.begin() as session:
        session.add_all([CallRecord(uuid=f"load-{i:06d}", node="test-node", direction="inbound",
                                    ani=f"+1202555{i % 10000:04d}", dnis="5000", outcome="routed",
                                    started_at=start + timedelta(seconds=i), inputs={"note": "x" * 200})
                         for i in range(1500)])
    node = guard.app
    node.reload(settings)                          # screening on: the call needs the database too
    statuses: list[int] = []

    def hammer() -> None:
        reply = request(admin.address, "GET", "/api/calls?limit=1000", timeout=120)
        statuses.append(reply.status)
        if reply.status == 200:
            assert reply.json["count"] == 1000

    flood = [gevent.spawn(hammer) for _ in range(60)]   # far past the API's 8 slots
    gevent.sleep(0.05)
    results = [fs.call(Caller(ani=f"1555123{i:04d}", dnis="5000")) for i in range(3)]
    assert [r.outcome for r in results] == ["routed"] * 3
    assert all(r.route and "fail" not in r.route for r in results), [r.route for r in results]
    gevent.joinall(flood, timeout=300, raise_error=True)
    assert len(statuses) == 60 and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1
    settle(guard)
    for r in results:
        call = request(admin.address, "GET", f"/api/calls/{r.uuid}").json
        assert call["outcome"] == "routed", call


def test_gevents_own_errors_are_logged_as_json_lines(admin, capfd):
    from fsguard.service import logs

    logs.configure()                                   # onto the captured stderr
    capfd.readouterr()
    many_headers = b"".join(b"X-Header-%d: value\r\n" % i for i in range(120))
    reply = _raw(admin.address, b"GET /api/status HTTP/1.1\r\nHost: fsguard\r\n" + many_headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"more than 100 headers" in reply
    garbage = _raw(admin.address, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert request(admin.address, "GET", "/healthz", token=None).status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]                      # every line is JSON
    bad = [e for e in events if e["event"] == "http.bad_request"]
    assert len(bad) == 2 and "more than 100 headers" in bad[0]["error"]
