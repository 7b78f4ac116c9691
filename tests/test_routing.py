"""Queue routing end to end: the simulator plays FreeSWITCH over real TCP, on SQLite and PostgreSQL.

Risk and verification normally come from screening and verification; here two small test stages
stand in for them (``risky`` adds the risk a channel variable asks for, ``verifies`` verifies a
caller whose channel says so), so that routing is tested on exactly what it reads: ``call.risk``
and ``call.verified``.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import gevent
import pytest
from gevent import pywsgi

from fsguard.rules import customers
from fsguard.store import records
from fsguard.config import ConfigError, Settings
from fsguard.rules.checks import load_settings, validate
from fsguard.rules.crm import CircuitBreaker, TTLCache, forget_crms
from fsguard.rules.snapshot import PolicySnapshot
from fsguard.call.pipeline import STAGES, Stage, Verdict
from fsguard.rules.hours import Hours
from fsguard.rules.regions import caller_region
from fsguard.rules.routing import RouteFacts, build_table
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle

NY = ZoneInfo("America/New_York")
#: a Monday at 10:00 and at 20:00 in New York, and a Saturday
MONDAY_10 = datetime(2026, 1, 5, 10, 0, tzinfo=NY)
MONDAY_20 = datetime(2026, 1, 5, 20, 0, tzinfo=NY)
SATURDAY_11 = datetime(2026, 1, 10, 11, 0, tzinfo=NY)

VIP = "+12125550123"          # New York
WEST = "+14155550100"         # San Francisco, CA
LONDON = "+442079460000"
STRANGER = "+13125550188"     # Chicago, nobody we know


class Risky(Stage):
    """Stands in for screening: adds the risk the channel variable ``test_risk`` names."""

    name = "risky"

    def run(self, call):
        points = int(call.var("test_risk", "0") or 0)
        if points:
            call.add_risk(points, "test: risky caller")
        return Verdict.carry_on("test risk", "test.risk", risk=points)


class Verifies(Stage):
    """Stands in for verification: a caller whose channel says ``test_verified=true`` passed."""

    name = "verifies"
    resolves_challenges = True

    def run(self, call):
        if call.var("test_verified") == "true":
            return Verdict.verified()
        return Verdict.carry_on("not verified", "test.unverified")


@pytest.fixture(autouse=True)
def _fresh_crm_clients():
    """CRM clients (cache, breaker) live per process: each test starts with none."""
    forget_crms()
    yield
    forget_crms()


@pytest.fixture
def test_stages(monkeypatch):
    monkeypatch.setitem(STAGES, "risky", f"{__name__}:Risky")
    monkeypatch.setitem(STAGES, "verifies", f"{__name__}:Verifies")


def add(db, number: str, **fields) -> None:
    with db.begin() as session:
        customers.save(session, [number], customers.normalise_customer(fields))


def routing_verdict(db, uuid: str):
    call = records.find_call(db, uuid)
    assert call is not None, "the call was not recorded"
    verdict = next(v for v in call.verdicts if v.stage == "routing")
    return call, verdict


def run(settings, start_guard, caller: Caller, *, clock=None):
    guard = start_guard(settings)
    if clock is not None:
        guard.app.clock = clock
    fs = FakeFreeSWITCH(guard.address, time_scale=0.005)
    result = fs.call(caller)
    settle(guard)
    assert result.ok, result.violations
    return result, guard


def fs_for(guard) -> FakeFreeSWITCH:
    return FakeFreeSWITCH(guard.address, time_scale=0.005)


# ------------------------------------------------------------------ the four promises of the issue


def test_a_vip_reaches_the_vip_queue_with_what_was_learned_exported(settings, start_guard, db):
    add(db, VIP, name="Ada Lovelace", account_id="A-1001", vip=True)
    result, _ = run(settings, start_guard, Caller(ani=VIP.lstrip("+"), dnis="8005550100"))

    assert result.outcome == "routed" and result.route == "callcenter vip@default"
    assert result.exported["fsguard_customer_id"] == "A-1001"
    assert result.exported["fsguard_vip"] == "true"
    assert result.exported["fsguard_verified"] == "unknown"
    assert result.exported["fsguard_risk"] == "0"
    assert result.exported["fsguard_region"] == "US-NY"
    assert result.exported["fsguard_route_rule"] == "vip"
    # mod_callcenter copies these to the agent's leg, and serves the VIP first
    assert result.variables["cc_export_vars"].split(",") == [
        "fsguard_customer_id", "fsguard_vip", "fsguard_verified", "fsguard_risk", "fsguard_region",
        "fsguard_route_rule"]
    assert result.variables["cc_base_score"] == str(settings.routing.vip_base_score)
    # nothing about the customer reaches the caller's ears, and the variables went with the route
    assert result.heard == [] and not result.early_media
    assert [a for a, _ in result.apps][-1] == "callcenter"
    assert "Ada" not in json.dumps(result.exported) + json.dumps(result.heard)

    call, verdict = routing_verdict(db, result.uuid)
    assert call.action == "callcenter vip@default"
    assert verdict.code == "rule.vip" and "VIP customer" in verdict.reason
    assert verdict.details["customer"] == "A-1001" and verdict.details["customer_source"] == "local"
    assert verdict.details["passed_over"][0].startswith("fraud: risk 0 below 50")
    assert "Ada" not in json.dumps(verdict.details)


def test_a_high_risk_caller_reaches_the_fraud_queue_even_as_a_vip(settings, start_guard, db, test_stages):
    add(db, VIP, account_id="A-1001", vip=True)
    settings.policy.stages = ["risky", "routing"]
    result, _ = run(settings, start_guard, Caller(ani=VIP, variables={"test_risk": "70"}))

    assert result.route == "callcenter fraud@default"
    assert result.exported["fsguard_risk"] == "70" and result.exported["fsguard_route_rule"] == "fraud"
    # the fraud team sees who the number belongs to; the score is not raised for a suspect call
    assert result.exported["fsguard_customer_id"] == "A-1001"
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.code == "rule.fraud" and "risk 70 at or above 50" in verdict.reason
    assert verdict.details["risk"] == 70


def test_an_unknown_caller_goes_to_the_default_queue(settings, start_guard, db):
    result, _ = run(settings, start_guard, Caller(ani=STRANGER))
    assert result.route == "transfer default XML queues"
    assert result.exported["fsguard_customer_id"] == ""
    assert result.exported["fsguard_vip"] == "false"
    assert result.exported["fsguard_region"] == "US-IL"
    assert "cc_base_score" not in result.variables
    # the default target is a queue too (queues.xml): its agent sees what fsguard learned
    assert set(result.variables["cc_export_vars"].split(",")) >= set(result.exported)
    call, verdict = routing_verdict(db, result.uuid)
    assert verdict.code == "default" and "default target" in verdict.reason
    assert verdict.details["customer"] is None and verdict.details["crm"] == "not configured"


def test_an_anonymous_caller_is_routed_without_a_lookup(settings, start_guard, db):
    result, _ = run(settings, start_guard, Caller(ani="anonymous", privacy=True))
    assert result.route == "transfer default XML queues"
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.details["crm"] == "not asked (no caller number)"


# ------------------------------------------------------------------------------- region and hours


def test_region_and_area_code_rules(settings, start_guard, db):
    settings.routing.rules = [
        {"name": "new york", "area_code": ["212", "646"], "target": "nyc"},
        {"name": "west coast", "region": ["US-CA", "US-OR", "US-WA"], "target": "west"},
        {"name": "emea", "region": "EMEA", "target": "emea"},
        {"name": "uk", "country": "GB", "target": "uk"},
    ]
    add(db, LONDON, region="EMEA")
    guard = start_guard(settings)
    fs = fs_for(guard)
    west, nyc, emea, uk, other = (fs.call(Caller(ani=n)) for n in (WEST, VIP, LONDON, "+442071234567", STRANGER))
    settle(guard)
    assert west.route == "callcenter west@default" and west.exported["fsguard_region"] == "US-CA"
    assert nyc.route == "callcenter nyc@default"
    # the customer's own region wins over the number's
    assert emea.route == "callcenter emea@default" and emea.exported["fsguard_region"] == "EMEA"
    assert uk.route == "callcenter uk@default" and uk.exported["fsguard_region"] == "GB London"
    assert other.route == "transfer default XML queues"
    _, verdict = routing_verdict(db, west.uuid)
    assert verdict.details["region"] == "US-CA" and verdict.details["area_code"] == "415"
    assert "caller's region US-CA (US-CA)" in verdict.reason


def test_a_closed_queue_sends_the_call_to_the_after_hours_target(settings, start_guard, db):
    add(db, VIP, account_id="A-1001", vip=True)
    settings.routing.timezone = "America/New_York"
    settings.routing.hours = {"vip": "mon-fri 08:00-18:00"}
    settings.routing.after_hours_target = "transfer after_hours XML queues"
    guard = start_guard(settings)
    fs = fs_for(guard)

    guard.app.clock = lambda: MONDAY_10
    open_ = fs.call(Caller(ani=VIP))
    guard.app.clock = lambda: MONDAY_20
    evening = fs.call(Caller(ani=VIP))
    guard.app.clock = lambda: SATURDAY_11
    weekend = fs.call(Caller(ani=VIP))
    settle(guard)

    assert open_.route == "callcenter vip@default"
    assert evening.route == "transfer after_hours XML queues"
    assert weekend.route == "transfer after_hours XML queues"
    # the agent's screen still learns who it is, wherever the call goes
    assert evening.exported["fsguard_vip"] == "true"
    _, verdict = routing_verdict(db, evening.uuid)
    assert verdict.code == "after_hours.vip" and verdict.details["after_hours"] is True
    assert "vip@default, which is closed (mon-fri 08:00-18:00 (America/New_York), now Mon 2026-01-05 20:00)" \
        in verdict.reason
    call = records.find_call(db, evening.uuid)
    assert call.inputs["routed_at"].startswith("2026-01-05T20:00")


def test_without_an_after_hours_target_a_closed_queue_passes_to_the_next_rule(settings, start_guard, db):
    add(db, VIP, vip=True)
    settings.routing.hours = {"vip": "mon-fri 08:00-18:00 America/New_York"}
    result, _ = run(settings, start_guard, Caller(ani=VIP), clock=lambda: SATURDAY_11)
    assert result.route == "transfer default XML queues"
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.code == "default"
    assert any("queue vip@default is closed" in p and "next rule" in p for p in verdict.details["passed_over"])


def test_verified_and_dialled_number_rules(settings, start_guard, db, test_stages):
    settings.policy.stages = ["verifies", "routing"]
    settings.routing.rules = [
        {"name": "verified priority", "verified": True, "dnis": ["+18005550100"], "target": "priority"},
        {"name": "cards line", "dnis": "800555*", "target": "cards"},
    ]
    guard = start_guard(settings)
    fs = fs_for(guard)
    verified = fs.call(Caller(ani=STRANGER, dnis="18005550100", variables={"test_verified": "true"}))
    unverified = fs.call(Caller(ani=STRANGER, dnis="8005550100"))
    elsewhere = fs.call(Caller(ani=STRANGER, dnis="5000"))
    settle(guard)
    assert verified.route == "callcenter priority@default" and verified.exported["fsguard_verified"] == "true"
    assert unverified.route == "callcenter cards@default" and unverified.exported["fsguard_verified"] == "unknown"
    assert elsewhere.route == "transfer default XML queues"


def test_a_customer_with_an_own_agent_rings_them_first_then_their_queue(settings, start_guard, db):
    add(db, VIP, account_id="A-1001", vip=True, agent="1001@default", queue="gold")
    result, _ = run(settings, start_guard, Caller(ani=VIP))
    assert result.route.startswith("transfer m:^:bridge:user/1001@default^callcenter:gold@default inline")
    assert result.variables["continue_on_fail"] == "true"
    assert result.variables["hangup_after_bridge"] == "true"
    assert result.variables["call_timeout"] == "20"
    assert result.variables["cc_base_score"] == "600" and "fsguard_vip" in result.variables["cc_export_vars"]
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.code == "rule.vip_own_agent"
    assert verdict.details["agent"] == "1001@default" and verdict.details["fallback"] == "callcenter gold@default"


def test_a_known_customer_with_an_own_queue(settings, start_guard, db):
    add(db, WEST, account_id="B-7", queue="gold")
    result, _ = run(settings, start_guard, Caller(ani=WEST))
    assert result.route == "callcenter gold@default"
    assert result.exported["fsguard_vip"] == "false" and "cc_base_score" not in result.variables


# ---------------------------------------------------------------------------------------- the CRM


class FakeCRM:
    """An HTTP CRM in the test: answers /customers/<number> after ``delay`` real seconds."""

    def __init__(self, known: dict[str, dict], delay: float = 0.0) -> None:
        self.known = known
        self.delay = delay
        self.requests: list[str] = []
        self.server = pywsgi.WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/customers/{{number}}"

    def app(self, environ, start_response):
        number = environ["PATH_INFO"].rsplit("/", 1)[-1].replace("%2B", "+")
        self.requests.append(number)
        if self.delay:
            gevent.sleep(self.delay)
        if number not in self.known:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "unknown"}']
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(self.known[number]).encode()]

    def stop(self) -> None:
        self.server.stop(timeout=0)


@pytest.fixture
def crm():
    servers = []

    def make(known=None, delay=0.0):
        server = FakeCRM(known or {}, delay)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


def test_a_vip_known_only_to_the_crm(settings, start_guard, db, crm):
    server = crm({VIP: {"customer": {"id": "CRM-9", "tier": "platinum"}, "vip": True, "region": "east"}})
    settings.routing.crm_url = server.url
    settings.routing.crm_fields = {"account_id": "customer.id"}
    guard = start_guard(settings)
    fs = fs_for(guard)
    first = fs.call(Caller(ani=VIP))
    second = fs.call(Caller(ani=VIP))
    stranger = fs.call(Caller(ani=STRANGER))
    again = fs.call(Caller(ani=STRANGER))
    settle(guard)

    assert first.route == second.route == "callcenter vip@default"
    assert first.exported["fsguard_customer_id"] == "CRM-9" and first.exported["fsguard_region"] == "east"
    assert stranger.route == again.route == "transfer default XML queues"
    assert server.requests == [VIP, STRANGER]  # answers and misses are cached
    crm_said = [routing_verdict(db, r.uuid)[1].details["crm"] for r in (first, second, stranger, again)]
    assert crm_said == ["hit", "cached hit", "miss", "cached miss"]
    assert routing_verdict(db, first.uuid)[1].details["customer_source"] == "crm"
    # stored for replay, without the name
    assert records.find_call(db, first.uuid).inputs["crm_customer"]["vip"] is True


def test_a_slow_crm_does_not_hold_the_call_past_its_timeout(settings, start_guard, db, crm, test_stages):
    """The CRM answers after 2 s; the call is decided without it once crm_timeout (0.2 s) is up."""
    server = crm({VIP: {"id": "CRM-9", "vip": True}}, delay=2.0)
    settings.policy.stages = ["risky", "routing"]
    settings.routing.crm_url = server.url
    settings.routing.crm_timeout = 0.2
    settings.routing.crm_failures = 2
    guard = start_guard(settings)
    fs = fs_for(guard)

    plain = fs.call(Caller(ani=VIP))
    risky = fs.call(Caller(ani=VIP, variables={"test_risk": "80"}))   # rules without the customer still apply
    skipped = fs.call(Caller(ani=VIP))                                 # two failures: the breaker is open
    settle(guard)

    assert plain.outcome == "routed" and plain.route == "transfer default XML queues"
    assert risky.route == "callcenter fraud@default"
    assert skipped.route == "transfer default XML queues"
    details = [routing_verdict(db, r.uuid)[1].details for r in (plain, risky, skipped)]
    assert [d["crm"] for d in details] == ["timeout", "timeout", "circuit open"]
    assert details[0]["crm_error"] == "no answer within 0.2 s"
    assert details[0]["customer"] is None
    _, verdict = routing_verdict(db, plain.uuid)
    assert "CRM timeout: routed without it" in verdict.reason
    assert len(server.requests) == 2    # the open breaker spared the CRM the third request


def test_a_broken_crm_is_an_error_not_a_failed_call(settings, start_guard, db):
    settings.routing.crm_url = "http://127.0.0.1:9/customers/{number}"   # nothing listens on the discard port
    result, _ = run(settings, start_guard, Caller(ani=VIP))
    assert result.route == "transfer default XML queues"
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.details["crm"] == "error" and "cannot reach the CRM" in verdict.details["crm_error"]


def test_a_sql_crm(settings, start_guard, db, tmp_path):
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (acct TEXT, phone TEXT, full_name TEXT, tier TEXT, home_queue TEXT)")
        conn.execute("INSERT INTO accounts VALUES ('S-1', '12125550123', 'Grace Hopper', 'gold', 'gold')")
    settings.routing.crm_url = f"sqlite:///{path}"
    settings.routing.crm_query = ("SELECT acct AS account_id, full_name AS name, tier = 'gold' AS vip, "
                                  "home_queue AS queue FROM accounts WHERE phone = :digits")
    settings.routing.rules = [{"name": "vip", "vip": True, "target": "vip"}]
    result, _ = run(settings, start_guard, Caller(ani=VIP))
    assert result.route == "callcenter vip@default"
    assert result.exported["fsguard_customer_id"] == "S-1"
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.details["crm"] == "hit" and verdict.details["customer_source"] == "crm"


def test_a_slow_sql_crm_times_out_and_its_connection_is_not_reused(settings, start_guard, db, db_url):
    """PostgreSQL as the CRM, with a query that sleeps: the timeout cuts it and drops the connection."""
    if not db_url.startswith("postgresql"):
        pytest.skip("pg_sleep needs PostgreSQL")
    settings.routing.crm_url = db_url
    settings.routing.crm_query = "SELECT 'P-1' AS account_id, true AS vip FROM pg_sleep(3) WHERE :number <> ''"
    settings.routing.crm_timeout = 0.3
    result, guard = run(settings, start_guard, Caller(ani=VIP))
    assert result.route == "transfer default XML queues"
    _, verdict = routing_verdict(db, result.uuid)
    assert verdict.details["crm"] == "timeout"
    assert guard.app.pipeline.stages[-1].crm.engine().pool.checkedout() == 0


def test_replay_routes_again_without_asking_the_crm(settings, start_guard, db, crm):
    from fsguard.ops.replay import replay

    server = crm({VIP: {"id": "CRM-9", "vip": True}})
    settings.routing.crm_url = server.url
    settings.routing.hours = {"vip": "mon-fri 08:00-18:00 America/New_York"}
    result, _ = run(settings, start_guard, Caller(ani=VIP), clock=lambda: MONDAY_10)
    assert result.route == "callcenter vip@default"

    server.stop()
    later = Settings()
    later.routing.crm_url = "http://127.0.0.1:9/customers/{number}"   # the CRM is gone by now
    later.routing.hours = dict(settings.routing.hours)
    later.database = settings.database
    report = replay(db, later)
    assert report.calls == 1 and report.changed == 0, str(report)
    assert len(server.requests) == 1


def test_the_customer_table_down_still_routes_on_what_else_is_known(settings, start_guard, db, monkeypatch,
                                                                    test_stages):
    from sqlalchemy.exc import OperationalError

    def down(snapshot):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(PolicySnapshot, "load", down)   # the customers could never be read
    settings.policy.stages = ["risky", "routing"]
    guard = start_guard(settings)
    result = fs_for(guard).call(Caller(ani=VIP, variables={"test_risk": "90"}))
    settle(guard)
    assert result.route == "callcenter fraud@default"
    _, verdict = routing_verdict(db, result.uuid)
    assert "connection refused" in verdict.details["customer_lookup_error"]
    assert "customer table unavailable" in verdict.reason
    assert guard.app.metrics.db_errors._value.get() >= 1


def test_an_agents_outbound_call_is_not_queued_by_routing(settings, start_guard, db):
    result, _ = run(settings, start_guard, Caller(ani="1000", dnis="12125550123", context="default"))
    call = records.find_call(db, result.uuid)
    assert call.direction == "outbound"
    assert [v.stage for v in call.verdicts] == ["pipeline"]
    assert "fsguard_vip" not in result.exported


# --------------------------------------------------------------------------- the table by itself


def facts(**kw) -> RouteFacts:
    kw.setdefault("now", MONDAY_10)
    number = kw.get("number")
    if number and "region" not in kw:
        kw["region"] = caller_region(number)
    return RouteFacts(**kw)


def table(**routing):
    s = Settings()
    for k, v in routing.items():
        setattr(s.routing, k, v)
    return build_table(s.routing)


def test_the_default_table_in_order():
    t = table()
    assert t.decide(facts(risk=50, vip=True, known=True)).target == "callcenter fraud@default"
    assert t.decide(facts(vip=True, known=True)).target == "callcenter vip@default"
    own = t.decide(facts(vip=True, known=True, customer_agent="7@default"))
    assert own.target == "transfer m:^:bridge:user/7@default^callcenter:vip@default inline"
    assert own.fallback == "callcenter vip@default" and own.queue == "vip@default"
    assert t.decide(facts(known=True, customer_queue="gold")).target == "callcenter gold@default"
    plain = t.decide(facts(known=True))
    assert plain.target == "transfer default XML queues" and plain.code == "default"
    assert [tr.why[0] for tr in plain.trace] == ["risk 0 below 50", "caller is not a VIP", "caller is not a VIP",
                                                 "customer has no own agent or queue"]


def test_an_own_agent_whose_fallback_is_not_a_queue_is_quoted():
    t = table(rules=[{"name": "own", "target": "customer"}])
    d = t.decide(facts(known=True, customer_agent="7"))
    assert d.target == "transfer 'm:^:bridge:user/7^transfer:default XML queues' inline"
    assert d.queue is None


@pytest.mark.parametrize("number,labels,label,area", [
    ("+14155550100", {"us-ca", "california", "san francisco", "san francisco, ca"}, "US-CA", "415"),
    ("+13105550100", {"us-ca", "california"}, "US-CA", "310"),
    ("+14165550100", {"ca-on", "ontario"}, "CA-ON", "416"),
    ("+442079460000", {"london"}, "GB London", "20"),
    ("+18005550100", set(), "US", None),       # toll-free: a country, no place
    ("+15551234567", set(), "", None),         # not a valid number
    (None, set(), "", None),
])
def test_caller_region(number, labels, label, area):
    region = caller_region(number)
    assert region.labels() == labels and region.label == label and region.area_code == area


def test_a_callers_area_and_place_are_what_phonenumbers_says_for_every_countrys_kinds_of_number():
    """caller_region works the number's type out once and takes a North American area code as
    its three first digits; phonenumbers' own functions, each working the type out again, must
    agree on every country's example numbers and on numbers all over the North American plan."""
    import random

    import phonenumbers
    from phonenumbers import geocoder

    from fsguard.rules import regions

    def as_phonenumbers_says(e164: str) -> tuple[str | None, str, str | None]:
        parsed = phonenumbers.parse(e164, None)
        place = geocoder.description_for_number(parsed, "en") if phonenumbers.is_valid_number(parsed) else ""
        length = phonenumbers.length_of_geographical_area_code(parsed)
        return (phonenumbers.region_code_for_number(parsed),
                "" if place.lower() == regions._country_name(phonenumbers.region_code_for_number(parsed)) else place,
                phonenumbers.national_significant_number(parsed)[:length] if length else None)

    kinds = [phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
             phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE, phonenumbers.PhoneNumberType.TOLL_FREE]
    examples = [phonenumbers.example_number_for_type(r, k) for r in phonenumbers.SUPPORTED_REGIONS for k in kinds]
    samples = [phonenumbers.format_number(e, phonenumbers.PhoneNumberFormat.E164) for e in examples if e]
    rng = random.Random(7)
    samples += [f"+1{rng.randint(200, 999)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}" for _ in range(3000)]
    assert len(samples) > 3500
    for e164 in samples:
        region = caller_region.__wrapped__(e164)   # not the cached answer
        country, place, area = as_phonenumbers_says(e164)
        assert (region.country, region.place, region.area_code) == (
            None if country in ("ZZ", "001") else country, place if region.country else "",
            area if region.country else None), e164


def test_business_hours():
    h = Hours.parse("mon-fri 08:00-18:00; sat 09:00-13:00", NY, frozenset({"2026-01-06", "12-25"}))
    assert h.is_open(MONDAY_10) and not h.is_open(MONDAY_20)
    assert h.is_open(SATURDAY_11) and not h.is_open(datetime(2026, 1, 10, 13, 0, tzinfo=NY))
    assert not h.is_open(datetime(2026, 1, 11, 10, 0, tzinfo=NY))             # Sunday
    assert not h.is_open(datetime(2026, 1, 6, 10, 0, tzinfo=NY))              # a holiday (date)
    assert not h.is_open(datetime(2026, 12, 25, 10, 0, tzinfo=NY))            # every year
    assert h.is_open(datetime(2026, 1, 5, 15, 0, tzinfo=timezone.utc))        # 10:00 in New York
    night = Hours.parse("mon-fri 22:00-06:00", timezone.utc)
    assert night.is_open(datetime(2026, 1, 5, 23, 0, tzinfo=timezone.utc))    # Monday night
    assert night.is_open(datetime(2026, 1, 6, 5, 59, tzinfo=timezone.utc))    # ... into Tuesday
    assert night.is_open(datetime(2026, 1, 10, 5, 0, tzinfo=timezone.utc))    # Friday night into Saturday
    assert not night.is_open(datetime(2026, 1, 10, 23, 0, tzinfo=timezone.utc))
    assert Hours.parse("always", NY).is_open(SATURDAY_11)
    assert not Hours.parse("closed", NY).is_open(MONDAY_10)
    assert Hours.parse("daily 00:00-24:00 Europe/London", NY).tz.key == "Europe/London"


@pytest.mark.parametrize("routing,message", [
    ({"rules": [{"name": "x", "vpi": True, "target": "vip"}]}, "routing.rules[0].vpi: unknown rule key"),
    ({"rules": [{"name": "x", "vip": True}]}, "routing.rules[0] (x).target: every rule needs a target"),
    ({"rules": [{"name": "x", "target": "hangup NOW"}]}, "routing.rules[0] (x).target: expected"),
    ({"rules": [{"name": "x", "target": "vip queue!"}]}, "expected '<transfer|callcenter|bridge>"),
    ({"rules": [{"name": "x", "vip": "yes", "target": "vip"}]}, "(x).vip: expected true or false"),
    ({"rules": [{"name": "x", "country": "XX", "target": "vip"}]}, "'XX' is not an ISO 3166 country code"),
    ({"rules": [{"name": "x", "target": "a"}, {"name": "x", "target": "b"}]}, "two rules are named 'x'"),
    ({"rules": ["vip"]}, "routing.rules[0]: expected a table"),
    ({"hours": {"vip": "weekdays 8-18"}}, "routing.hours.vip: 'weekdays' is not a day"),
    ({"hours": {"vip": "mon-fri 08:00-25:00"}}, "'25:00' is not a time of day"),
    ({"hours": {"vip": "mon-fri 08:00-18:00 Mars/Olympus"}}, "unknown time zone 'Mars/Olympus'"),
    ({"hours": {"default": "mon-fri 08:00-18:00"}}, "routing.hours.default: business hours for the default"),
    ({"holidays": ["25/12"]}, "routing.holidays[0]: expected YYYY-MM-DD"),
    ({"timezone": "Nowhere/Town"}, "routing.timezone: unknown time zone"),
    ({"agent_target": "bridge user/1001"}, "routing.agent_target: must contain {agent}"),
    ({"agent_target": "bridge {agent} {queue}"}, "only {agent} may be used"),
    ({"crm_url": "crm.example.com"}, "routing.crm_url: expected an http(s):// URL template"),
    ({"crm_url": "https://crm.example.com/customers"}, "needs {number} or {digits}"),
    ({"crm_url": "postgresql://crm/db"}, "routing.crm_query: a database CRM"),
])
def test_bad_routing_settings_name_the_key(routing, message):
    s = Settings()
    for k, v in routing.items():
        setattr(s.routing, k, v)
    with pytest.raises(ConfigError) as err:
        validate(s)
    assert message in str(err.value)


def test_rules_from_a_toml_file(tmp_path):
    path = tmp_path / "fsguard.toml"
    path.write_text("""
[routing]
timezone = "Europe/London"
after_hours_target = "transfer closed XML queues"
hours = { uk = "mon-fri 09:00-17:30" }

[[routing.rules]]
name = "uk"
country = ["GB"]
target = "uk"

[[routing.rules]]
name = "cards"
dnis = ["+448005550100", "0800*"]
target = "transfer cards XML queues"
""")
    s = load_settings(path, env={})
    t = build_table(s.routing)
    assert [r.name for r in t.rules] == ["uk", "cards"]
    d = t.decide(facts(number=LONDON, now=datetime(2026, 1, 5, 18, 0, tzinfo=timezone.utc)))
    assert d.target == "transfer closed XML queues" and d.after_hours
    with pytest.raises(ConfigError, match="rules are set in the configuration file"):
        load_settings(path, env={"FSGUARD_ROUTING_RULES": "vip"})


def test_circuit_breaker_opens_waits_and_tries_once():
    now = [0.0]
    b = CircuitBreaker(failures=2, cooldown=30, clock=lambda: now[0])
    assert b.allow() and not b.failure() and b.allow()
    assert b.failure() and b.state == "open" and not b.allow()
    now[0] = 31
    assert b.state == "half-open" and b.allow() and not b.allow()   # one trial at a time
    assert b.failure() and b.state == "open"                          # the trial failed: open again
    now[0] = 62
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_ttl_cache_expires_and_is_bounded():
    now = [0.0]
    c = TTLCache(2, clock=lambda: now[0])
    c.put("a", None, 10)
    c.put("b", None, 100)
    assert c.get("a") == (True, None)
    c.put("c", None, 100)                # "b" was used least recently
    assert c.get("b") == (False, None) and c.get("a")[0]
    now[0] = 11
    assert c.get("a") == (False, None) and c.get("c")[0]
