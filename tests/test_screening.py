"""Screening end to end: the simulator plays FreeSWITCH over real TCP, on SQLite and PostgreSQL.

Every rule of the screening stage is exercised through the socket: lists with levels, prefixes
and dialled numbers, expiry, flood blocking at call time (one node and two nodes sharing the
database), call-and-hang-up, withheld and anonymous callers, invalid numbers, Do-Not-Originate,
STIR/SHAKEN (the channel's verstat, and PASSporTs checked by fsguard), and the risk export.

Unless a test says otherwise, a challenged caller is refused (policy.unverified_action = reject,
no verification stage), so a challenge is visible on the wire as an unanswered CALL_REJECTED.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import gevent
import pytest
from sqlalchemy import func, select, update

from fsguard.rules import changes, counters, lists
from fsguard.store import records
from fsguard.ops import replay
from fsguard.store.db import Database
from fsguard.store.models import CallRecord, utcnow
from fsguard.store.models.lists import CallCounter, ListEntry
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH, SimResult
from fsguard_testing.statements import driver_statements
from test_stirshaken import Pki  # the throwaway STI PKI (tests/ is on sys.path under pytest)

CALLER = "+12125550147"
OTHER = "+13125550100"
TOLL_FREE = "+18005550100"
PREMIUM_LINE = "+18885550199"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@dataclass
class Line:
    """One fsguard node and a FreeSWITCH dialling into it."""

    guard: Any
    fs: FakeFreeSWITCH
    db: Database

    @property
    def stage(self) -> Any:
        return next(s for s in self.guard.app.pipeline.stages if s.name == "screening")

    def settle(self) -> None:
        app, server = self.guard.app, self.guard.server
        with gevent.Timeout(5, AssertionError("fsguard did not let go of its calls")):
            while app.deciding or app.held or server.active:
                gevent.sleep(0.005)

    def call(self, ani: str = CALLER, dnis: str = TOLL_FREE, **kwargs: Any) -> SimResult:
        result = self.fs.call(Caller(ani=ani, dnis=dnis, **kwargs))
        self.settle()
        assert not result.violations, result.violations
        return result

    def verdict(self, result: SimResult) -> Any:
        call = records.find_call(self.db, result.uuid)
        assert call is not None, "the call was not recorded"
        return next(v for v in call.verdicts if v.stage == "screening")


@pytest.fixture
def start_line(settings, start_guard, db) -> Callable[..., Line]:
    """Start a node with screening alone (a call that passes goes to routing.default_target, so these
    tests do not depend on the routing table); keyword arguments are screening settings."""
    settings.policy.stages = ["screening"]
    settings.policy.unverified_action = "reject"
    settings.screening.nuisance_calls = 0   # switched on by the nuisance tests only
    # the simulated carrier's network (the simulator's sip_network_ip): its P-Asserted-Identity is believed
    settings.screening.trusted_networks = ["192.0.2.0/24"]

    def start(database: Database | None = None, time_scale: float = 0.005, **screening: Any) -> Line:
        for key, value in screening.items():
            setattr(settings.screening, key, value)
        settings.validate()
        guard = start_guard(settings, database)
        return Line(guard, FakeFreeSWITCH(guard.address, time_scale=time_scale), database or db)
    return start


@pytest.fixture
def line(start_line) -> Line:
    return start_line()


def put(db: Database, number: str, kind: str, level: int | None = None, **kwargs: Any) -> None:
    with db.begin() as session:
        lists.add(session, lists.make_spec(number, kind=kind, level=level, **kwargs))


def refused_unanswered(result: SimResult, cause: str = "CALL_REJECTED") -> None:
    """Rejected before answer: no answer, no early media, nothing billed, the cause given."""
    assert result.outcome == "hungup", result
    assert result.hangup_cause == cause
    assert not result.answered and not result.early_media and result.billsec == 0
    apps = [name for name, _ in result.apps]
    assert "answer" not in apps and "pre_answer" not in apps and "playback" not in apps


def routed(result: SimResult) -> None:
    assert result.outcome == "routed", result
    assert result.route == "transfer default XML queues"


# ================================================================== lists and levels


def test_a_caller_not_on_any_list_passes_and_the_risk_is_exported(line):
    result = line.call()
    routed(result)
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("continue", "pass")
    assert result.exported["fsguard_risk"] == "10"                    # no STIR/SHAKEN information: 10 points
    assert result.exported["fsguard_risk_signals"] == "stir.none"
    assert result.exported["fsguard_stir"] == "none"
    assert {s["code"] for s in v.details["signals"]} == {"stir.none"}
    assert v.details["flood"] == {"*": {"hour": 1, "day": 1}}


@pytest.mark.parametrize("action, cause, route", [
    (None, "CALL_REJECTED", None),
    ("busy", "USER_BUSY", None),
    ("transfer:9999 XML announcements", None, "transfer 9999 XML announcements"),
])
def test_a_hard_block_is_refused_before_answer_with_the_entrys_action(line, db, action, cause, route):
    put(db, "+1 (212) 555-0147", "block", 7, reason="abusive caller", action=action)
    result = line.call()
    if route is None:
        refused_unanswered(result, cause)
    else:   # the announcement extension answers on its own; fsguard itself neither answers nor plays
        assert result.route == route
        assert not {"answer", "pre_answer", "playback"} & {a for a, _ in result.apps}
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("reject", "blocklist.hard")
    assert "level 7" in v.reason and "abusive caller" in v.reason
    call = records.find_call(db, result.uuid)
    assert call.outcome == "rejected" and call.answered is (route is not None)


def test_the_default_hard_action_is_configurable(start_line, db):
    line = start_line(hard_action="busy")
    put(db, CALLER, "block", 9)
    refused_unanswered(line.call(), "USER_BUSY")


def test_a_soft_block_asks_for_verification(line, db):
    put(db, CALLER, "block", 3, reason="complaints")
    result = line.call()
    refused_unanswered(result)   # no verification stage and unverified_action = reject
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("challenge", "blocklist.soft")
    call = records.find_call(db, result.uuid)
    assert [x.code for x in call.verdicts] == ["blocklist.soft", "unverified"]
    assert call.risk == 3 * 10 + 10


def test_a_soft_block_without_a_verification_stage_follows_soft_action(start_line, db):
    line = start_line(soft_action="busy")
    put(db, CALLER, "block", 2)
    refused_unanswered(line.call(), "USER_BUSY")


def test_a_soft_block_is_routed_when_unverified_callers_are_routed(start_line, settings, db):
    settings.policy.unverified_action = "route"
    line = start_line()
    put(db, CALLER, "block", 4)
    result = line.call()
    routed(result)
    assert line.verdict(result).outcome == "challenge"
    assert result.exported["fsguard_risk"] == str(4 * 10 + 10)


def test_level_zero_passes(line, db):
    put(db, CALLER, "block", 0, reason="known, fine")
    result = line.call()
    routed(result)
    assert "blocklist.pass" in [s["code"] for s in line.verdict(result).details["signals"]]


def test_a_prefix_covers_a_range_and_the_most_specific_entry_wins(line, db):
    put(db, "+1900*", "block", 8, reason="premium-rate range")
    put(db, "+1 900 555 0123", "allow", reason="our supplier")
    put(db, "+1900555*", "block", 2, reason="narrower range, softer")
    assert line.verdict(line.call("+19004440000")).code == "blocklist.hard"
    assert line.verdict(line.call("+19005550999")).code == "blocklist.soft"
    result = line.call("+19005550123")
    routed(result)
    assert line.verdict(result).code == "allowlist"


def test_an_entry_for_one_dialled_number_applies_to_that_number_only(line, db):
    put(db, CALLER, "block", 7, dnis=PREMIUM_LINE, reason="abuses the premium line")
    refused_unanswered(line.call(dnis="1 888 555 0199"))     # the dialled number in another form
    routed(line.call(dnis=TOLL_FREE))


def test_a_dialled_number_entry_beats_a_global_one(line, db):
    put(db, CALLER, "block", 7)
    put(db, CALLER, "allow", dnis=PREMIUM_LINE, reason="may reach the premium line")
    routed(line.call(dnis=PREMIUM_LINE))
    refused_unanswered(line.call(dnis=TOLL_FREE))


def test_expired_entries_no_longer_apply(line, db):
    put(db, CALLER, "block", 9, expires="1h")
    refused_unanswered(line.call())
    with db.begin() as session:
        session.execute(update(ListEntry).values(expires_at=utcnow() - timedelta(seconds=1)))
        changes.changed(session, "list", [CALLER])   # a write by hand says what it changed
    routed(line.call())


def test_the_allow_list_wins_over_everything(start_line, db):
    line = start_line(flood_hour=1, invalid_action="reject", stir_actions={"failed": "reject"})
    put(db, CALLER, "allow", reason="head office")
    put(db, "+1212*", "block", 9)
    failed = {"sip_verstat": "TN-Validation-Failed"}
    for _ in range(3):   # flooding, in a blocked range, failing STIR/SHAKEN, withheld: still allowed
        result = line.call(variables=failed, privacy=True)
        routed(result)
        v = line.verdict(result)
        assert (v.outcome, v.code) == ("continue", "allowlist") and "head office" in v.reason
        assert result.exported["fsguard_risk"] == "0"
    with db.begin() as session:   # ... and never blocked automatically
        assert session.scalar(select(func.count()).select_from(ListEntry).where(ListEntry.source == "auto")) == 0


# ================================================================== flood blocking at call time


def test_a_flood_is_blocked_at_the_call_that_crosses_the_limit(start_line, db):
    line = start_line(flood_hour=3, flood_day=100)
    for _ in range(3):
        routed(line.call())
    crossing = line.call()
    refused_unanswered(crossing)
    v = line.verdict(crossing)
    assert (v.outcome, v.code) == ("challenge", "flood.hour")
    assert "4 calls in the last hour (more than 3)" in v.reason
    with db.begin() as session:
        entry = lists.lookup(session, CALLER, None)
        assert (entry.kind, entry.level, entry.source, entry.code) == ("block", 3, "auto", "flood.hour")
        assert timedelta(hours=23, minutes=59) < entry.expires_at - utcnow() <= timedelta(hours=24)
    later = line.call()
    refused_unanswered(later)
    assert line.verdict(later).code == "blocklist.soft"
    assert line.guard.app.metrics.auto_blocks.labels(reason="flood.hour")._value.get() == 1
    routed(line.call(OTHER))   # another caller is not affected


def test_the_day_limit_counts_the_earlier_hours(start_line, db):
    line = start_line(flood_hour=100, flood_day=4)
    earlier = time.time() - 3 * 3600
    with db.begin() as session:
        for _ in range(3):
            counters.count_call(session, CALLER, ["*"], now=earlier)
    routed(line.call())
    crossing = line.call()
    refused_unanswered(crossing)
    assert line.verdict(crossing).code == "flood.day"


def test_a_flood_level_and_ttl_are_configurable(start_line, db):
    line = start_line(flood_hour=1, flood_level=7, flood_ttl="2h")
    routed(line.call())
    refused_unanswered(line.call())   # level 7 is hard: rejected outright
    with db.begin() as session:
        entry = lists.lookup(session, CALLER, None)
        assert entry.level == 7 and entry.expires_at - utcnow() <= timedelta(hours=2)


def test_a_dialled_number_can_have_its_own_flood_limits(start_line, db):
    line = start_line(flood_hour=100, flood_dnis={"1-888-555-0199": {"hour": 2, "day": 5}})
    for _ in range(2):
        routed(line.call(dnis=PREMIUM_LINE))
    crossing = line.call(dnis=PREMIUM_LINE)
    refused_unanswered(crossing)
    assert line.verdict(crossing).code == "flood.dnis_hour"
    routed(line.call(dnis=TOLL_FREE))   # the block is for the premium line only
    with db.begin() as session:
        entry = session.scalars(select(ListEntry)).one()
        assert (entry.dnis, entry.source) == (PREMIUM_LINE, "auto")


def test_two_nodes_sharing_the_database_block_a_flood_at_exactly_the_same_count(start_line, settings, db):
    """Concurrent floods hitting two fsguard nodes: the 11th call is the first one blocked, whichever
    node takes it. Each node has its own pool (a second Database) like a second machine would."""
    second_db = Database(settings.database)
    try:
        node_a = start_line(flood_hour=10, flood_day=1000)
        node_b = start_line(database=second_db)
        calls = 24
        greenlets = [(node_a if i % 2 else node_b).fs.spawn(Caller(ani=CALLER, dnis=TOLL_FREE, talk_time=5.0))
                     for i in range(calls)]
        results = [g.get() for g in gevent.joinall(greenlets, raise_error=True)]
        node_a.settle()
        node_b.settle()
        assert all(not r.violations for r in results)
        passed = [r for r in results if r.outcome == "routed"]
        refused = [r for r in results if r.outcome == "hungup"]
        assert len(passed) == 10 and len(refused) == calls - 10
        for r in refused:
            refused_unanswered(r)
        assert {r.target[1] for r in passed + refused} == {node_a.guard.address[1], node_b.guard.address[1]}
        assert node_a.fs.peak > 1 and node_b.fs.peak > 1   # the calls really overlapped on both nodes
        codes = [node_a.verdict(r).code for r in refused]
        assert set(codes) <= {"flood.hour", "blocklist.soft"} and "flood.hour" in codes
        hours = sorted(node_a.verdict(r).details["flood"]["*"]["hour"] for r in results)
        assert hours == list(range(1, calls + 1))   # every call got its own count: none lost, none twice
        with db.begin() as session:
            assert session.scalar(select(func.sum(CallCounter.calls)).where(CallCounter.number == CALLER)) == calls
            entries = list(session.scalars(select(ListEntry)))
            assert [(e.number, e.source, e.level) for e in entries] == [(CALLER, "auto", 3)]
    finally:
        second_db.dispose()


def test_the_counter_is_the_one_statement_a_screened_call_makes_and_the_list_is_read_from_memory(line, db):
    with driver_statements(lambda sql: "list_entries" in sql or "call_counters" in sql) as watched:
        routed(line.call())
    statements = watched.take()
    assert len(statements) == 1, statements
    assert statements[0].startswith("INSERT INTO call_counters") and "RETURNING" in statements[0]


# ================================================================== call-and-hang-up


# A slower channel clock here (50 channel seconds per real second): call durations are whole
# channel seconds, and fsguard's own decision time must not make a short call look long.


def test_callers_that_keep_hanging_up_within_seconds_are_blocked(start_line, db):
    line = start_line(nuisance_calls=3, nuisance_seconds=5, nuisance_level=2, time_scale=0.02)
    for _ in range(3):
        routed(line.call(talk_time=1.0))
    result = line.call()
    refused_unanswered(result)
    assert line.verdict(result).code == "blocklist.soft"
    with db.begin() as session:
        entry = lists.lookup(session, CALLER, None)
        assert (entry.level, entry.source, entry.code) == (2, "auto", "nuisance")
        assert "3 calls ended within 5 s" in entry.reason
    assert line.guard.app.metrics.auto_blocks.labels(reason="nuisance")._value.get() == 1


def test_real_conversations_and_refused_calls_are_not_nuisance(start_line, db):
    line = start_line(nuisance_calls=2, nuisance_seconds=5, time_scale=0.02)
    for _ in range(2):
        routed(line.call(talk_time=20.0))
    put(db, OTHER, "block", 7)
    for _ in range(3):
        refused_unanswered(line.call(OTHER))   # short, but fsguard ended them
    with db.begin() as session:
        assert session.scalar(select(func.count()).select_from(ListEntry).where(ListEntry.source == "auto")) == 0


# ================================================================== withheld, anonymous, invalid


def test_a_withheld_number_is_screened_on_the_network_number_and_never_revealed(line, db):
    put(db, CALLER, "block", 7, reason="abusive")
    pai = f"<sip:{CALLER}@carrier.example;user=phone>"
    result = line.call(ani="anonymous", name="Anonymous", privacy=True,
                       variables={"sip_P-Asserted-Identity": pai, "sip_Privacy": "id"})
    refused_unanswered(result)
    v = line.verdict(result)
    assert v.code == "blocklist.hard"
    assert "withheld" in [s["code"] for s in v.details["signals"]]
    assert result.heard == []
    sent = " ".join(result.commands) + " ".join(f"{k}={val}" for k, val in result.exported.items())
    assert "2125550147" not in sent   # nothing sent to the channel carries the hidden number
    assert records.find_call(db, result.uuid).ani == CALLER   # the operator's record does


def test_a_withheld_caller_id_with_a_network_ani_uses_the_ani(line, db):
    put(db, CALLER, "block", 3)
    result = line.call(ani="anonymous", network_ani=CALLER, privacy=True)
    assert line.verdict(result).code == "blocklist.soft"


@pytest.mark.parametrize("policy", ["pass", "challenge", "reject"])
def test_a_call_with_no_number_at_all_follows_the_anonymous_policy(start_line, policy):
    line = start_line(anonymous_action=policy)
    result = line.call(ani="anonymous", network_ani="anonymous", privacy=True)
    v = line.verdict(result)
    if policy == "pass":
        routed(result)
        assert "anonymous" in [s["code"] for s in v.details["signals"]]
    else:
        refused_unanswered(result)
        assert (v.outcome, v.code) == (policy, "anonymous")


@pytest.mark.parametrize("policy", ["pass", "challenge", "reject"])
def test_a_number_that_cannot_exist_follows_the_invalid_policy(start_line, policy):
    line = start_line(invalid_action=policy)
    result = line.call(ani="12345")
    v = line.verdict(result)
    if policy == "pass":
        routed(result)
    else:
        refused_unanswered(result)
        assert (v.outcome, v.code) == (policy, "invalid_number")
        assert "'12345' cannot exist" in v.reason


# ================================================================== Do-Not-Originate


def test_a_call_presenting_our_own_inbound_only_number_is_spoofed(line, db):
    put(db, TOLL_FREE, "dno", reason="our toll-free line, inbound only")
    result = line.call(ani=TOLL_FREE)
    refused_unanswered(result)
    assert line.verdict(result).code == "dno.spoofed"
    # a genuine network number but our DNO number as the caller id: spoofed all the same
    result = line.call(ani="1-800-555-0100", network_ani=OTHER)
    refused_unanswered(result)
    v = line.verdict(result)
    assert v.code == "dno.spoofed" and "as its caller id" in v.reason


def test_dno_can_challenge_instead(start_line, db):
    line = start_line(dno_action="challenge")
    put(db, "+1800555*", "dno")
    result = line.call(ani=TOLL_FREE)
    refused_unanswered(result)
    assert (line.verdict(result).outcome, line.verdict(result).code) == ("challenge", "dno.spoofed")


# ================================================================== STIR/SHAKEN


def test_freeswitch_verstat_a_passes_without_risk(line):
    result = line.call(variables={"sip_verstat_detailed": "TN-Validation-Passed-A",
                                  "sip_verstat": "TN-Validation-Passed"})
    routed(result)
    v = line.verdict(result)
    assert v.code == "pass" and v.details["stir"]["attestation"] == "A"
    assert result.exported["fsguard_stir"] == "A" and result.exported["fsguard_risk"] == "0"
    stored = records.find_call(line.db, result.uuid).inputs["screening"]
    assert stored["verstat"] == {"value": "TN-Validation-Passed-A", "from": "sip_verstat_detailed"}


def test_the_carriers_failed_verification_is_challenged(line):
    pai = f"<sip:{CALLER};verstat=TN-Validation-Failed@carrier.example;user=phone>"
    result = line.call(variables={"sip_P-Asserted-Identity": pai})
    refused_unanswered(result)
    assert line.verdict(result).code == "stir.carrier_failed"


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
def stir_line(start_line, pki, tmp_path) -> Callable[..., Line]:
    """A node that verifies PASSporTs against the test STI-CA; certificates come from pki.fetcher."""
    def start(**screening: Any) -> Line:
        line = start_line(stir_trust_store=str(pki.trust_store(tmp_path)), **screening)
        line.stage.verifier.fetcher = pki.fetcher
        return line
    return start


@pytest.mark.parametrize("attest, risk", [("A", 0), ("B", 20), ("C", 40)])
def test_a_valid_passport_passes_with_its_attestation(stir_line, pki, attest, risk):
    line = stir_line()
    result = line.call(variables={"sip_identity": pki.identity(attest=attest)})
    routed(result)
    v = line.verdict(result)
    assert v.code == "pass" and v.details["stir"]["source"] == "identity"
    assert f"stir.{attest}" in [s["code"] for s in v.details["signals"]]
    assert result.exported["fsguard_stir"] == attest and result.exported["fsguard_risk"] == str(risk)


def test_attestation_c_is_challenged_when_other_signals_add_up(stir_line, pki):
    line = stir_line()
    pai = f"<sip:{CALLER}@carrier.example>"
    result = line.call(ani="anonymous", privacy=True,
                       variables={"sip_h_Identity": pki.identity(attest="C"), "sip_P-Asserted-Identity": pai})
    refused_unanswered(result)
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("challenge", "risk")
    assert "stir.C (40)" in v.reason and "withheld (10)" in v.reason


@pytest.mark.parametrize("case, code", [
    ("bad signature", "stir.bad_signature"),
    ("stale iat", "stir.stale_iat"),
    ("tn mismatch", "stir.tn_mismatch"),
    ("untrusted certificate", "stir.untrusted_cert"),
])
def test_each_failed_passport_is_challenged_with_its_own_reason(stir_line, pki, case, code):
    line = stir_line()
    identity = {
        "bad signature": lambda: pki.identity(key=Pki("Forger").key),
        "stale iat": lambda: pki.identity(iat=int(time.time()) - 600),
        "tn mismatch": lambda: pki.identity(orig_tn="13125550100"),
        "untrusted certificate": lambda: rogue_identity(pki),
    }[case]()
    result = line.call(variables={"sip_identity": identity})
    refused_unanswered(result)
    v = line.verdict(result)
    assert (v.outcome, v.code) == ("challenge", code)
    assert v.details["stir"]["failure"] == code.split(".", 1)[1]
    assert result.exported["fsguard_stir"] == "failed"
    stored = records.find_call(line.db, result.uuid).inputs["screening"]
    assert stored["stir"]["failure"] == code.split(".", 1)[1] and stored["identity_header"] is True


def rogue_identity(pki: Pki) -> str:
    """A PASSporT from a CA the trust store does not hold, served at an x5u of its own."""
    rogue = Pki("Rogue CA")
    url = "https://rogue.example.test/cert.pem"
    pki.repository[url] = rogue.repository[rogue.url]
    return rogue.identity(x5u=url)


def test_stir_outcomes_map_to_configured_actions(stir_line, pki):
    line = stir_line(stir_actions={"failed": "reject", "stale_iat": "pass", "C": "challenge"})
    refused_unanswered(line.call(variables={"sip_identity": pki.identity(orig_tn="13125550100")}))
    routed(line.call(variables={"sip_identity": pki.identity(iat=int(time.time()) - 600)}))
    result = line.call(variables={"sip_identity": pki.identity(attest="C")})
    refused_unanswered(result)
    assert (line.verdict(result).outcome, line.verdict(result).code) == ("challenge", "stir.C")
    assert pki.fetched == [pki.url]   # one fetch for all these calls: the certificate is cached


def test_an_identity_header_without_a_trust_store_is_recorded_not_trusted(line, pki):
    result = line.call(variables={"sip_identity": pki.identity(attest="A")})
    routed(result)
    stir = line.verdict(result).details["stir"]
    assert stir["status"] == "none" and "no trust store" in stir["reason"]
    assert stir["details"]["attestation_claimed"] == "A"


# ================================================================== shadow mode, replay


def test_in_shadow_mode_screening_records_what_it_would_do(start_line, settings, db):
    settings.policy.enforce_stages = {"screening": False}
    line = start_line()
    put(db, CALLER, "block", 9)
    result = line.call()
    routed(result)
    v = line.verdict(result)
    assert v.enforced is False and v.reason.startswith("would reject:")


def test_replay_decides_again_from_the_stored_stir_outcome_and_flood_counts(stir_line, pki, settings, db):
    line = stir_line()
    result = line.call(variables={"sip_identity": pki.identity(iat=int(time.time()) - 600)})
    refused_unanswered(result)
    settings.screening.stir_actions = {"stale_iat": "pass"}   # the policy change being tried
    report = replay.replay(db, settings)
    assert report.calls == 1 and report.changed == 1
    settings.screening.stir_actions = {}
    assert replay.replay(db, settings).changed == 0
    with db.begin() as session:   # the replay counted nothing
        assert session.scalar(select(func.sum(CallCounter.calls))) == 1


# ================================================================== the list's rules, directly


def test_auto_block_never_overrides_allow_or_lowers_a_stronger_block(db):
    now = utcnow()
    with db.begin() as session:
        lists.add(session, lists.make_spec("+1212555*", kind="allow"))
        lists.add(session, lists.make_spec("+1312*", kind="block", level=8))
        lists.add(session, lists.make_spec(TOLL_FREE, kind="dno"))
        assert not lists.auto_block(session, CALLER, level=3, reason="r", code="flood.hour", ttl_seconds=60, now=now)
        assert not lists.auto_block(session, OTHER, level=3, reason="r", code="flood.hour", ttl_seconds=60, now=now)
        assert not lists.auto_block(session, TOLL_FREE, level=3, reason="r", code="flood.hour", ttl_seconds=60)
        assert lists.lookup(session, OTHER, None).level == 8
        assert lists.lookup(session, CALLER, None).kind == "allow"


def test_auto_block_raises_refreshes_and_reports_what_it_did(db):
    now = utcnow()
    number = "+14155550123"
    with db.begin() as session:
        lists.add(session, lists.make_spec(number, kind="block", level=2, reason="complaints"))
        assert lists.auto_block(session, number, level=3, reason="flood", code="flood.hour", ttl_seconds=60, now=now)
        entry = lists.lookup(session, number, None, now=now)
        assert (entry.level, entry.source, entry.code) == (3, "auto", "flood.hour")
        assert entry.reason == "flood (replaced block level 2: complaints)"
        # the same block again: nothing to do; a later expiry: refreshed; a lower level: never
        assert not lists.auto_block(session, number, level=3, reason="f", code="flood.hour", ttl_seconds=60, now=now)
        assert lists.auto_block(session, number, level=3, reason="f", code="flood.day", ttl_seconds=120, now=now)
        assert not lists.auto_block(session, number, level=2, reason="f", code="nuisance", ttl_seconds=999, now=now)
        assert lists.lookup(session, number, None, now=now).level == 3
        # expired: a new block starts afresh
        later = now + timedelta(seconds=300)
        assert lists.auto_block(session, number, level=2, reason="again", code="nuisance", ttl_seconds=60, now=later)
        entry = lists.lookup(session, number, None, now=later)
        assert (entry.level, entry.reason) == (2, "again")


def test_an_allow_added_later_beats_an_automatic_block_even_when_less_specific(db):
    with db.begin() as session:
        assert lists.auto_block(session, CALLER, level=4, reason="flood", code="flood.hour", ttl_seconds=600)
        lists.add(session, lists.make_spec("+1212*", kind="allow", reason="our region's partners"))
        assert lists.lookup(session, CALLER, None).kind == "allow"
        lists.add(session, lists.make_spec(CALLER, kind="block", level=7, reason="this one, really"))
        assert lists.lookup(session, CALLER, None).level == 7   # an operator's specific block does win


@pytest.mark.parametrize("key, value, message", [
    ("hard_action", "explode", "screening.hard_action: expected reject|busy"),
    ("soft_action", "transfer:", "screening.soft_action"),
    ("anonymous_action", "maybe", "screening.anonymous_action: expected pass, challenge or reject"),
    ("dno_action", "pass", "screening.dno_action: expected reject or challenge"),
    ("flood_level", 0, "screening.flood_level: expected a block level from 1 to 99"),
    ("flood_ttl", "soon", "screening.flood_ttl: expected a duration"),
    ("flood_dnis", {"+18005550100": {"hour": 3, "minute": 1}}, "screening.flood_dnis.+18005550100"),
    ("risk_points", {"stir_D": 10}, "screening.risk_points: unknown signal(s) stir_D"),
    ("stir_actions", {"stale": "pass"}, "screening.stir_actions.stale: unknown outcome"),
    ("stir_actions", {"C": "block"}, "screening.stir_actions.C: expected pass, challenge or reject"),
    ("stir_trust_store", "/nonexistent/ca.pem", "screening.stir_trust_store: /nonexistent/ca.pem does not exist"),
])
def test_bad_screening_settings_name_the_key(key, value, message):
    from fsguard.config import ConfigError, Settings
    from fsguard.rules.checks import validate

    settings = Settings()
    setattr(settings.screening, key, value)
    with pytest.raises(ConfigError) as raised:
        validate(settings)
    assert message in str(raised.value)


def test_screening_settings_from_toml_and_environment(tmp_path):
    from fsguard.config import load_settings

    path = tmp_path / "fsguard.toml"
    path.write_text('[screening]\nflood_hour = 5\nstir_actions = { C = "challenge" }\n'
                    '[screening.flood_dnis]\n"+18885550199" = { hour = 2, day = 4 }\n')
    s = load_settings(path, env={"FSGUARD_SCREENING_FLOOD_DAY": "12", "FSGUARD_SCREENING_RISK_POINTS": "withheld=0"})
    cfg = s.screening
    assert (cfg.flood_hour, cfg.flood_day, cfg.flood_dnis) == (5, 12, {"+18885550199": {"hour": 2, "day": 4}})
    assert cfg.stir_action("C") == "challenge" and cfg.stir_action("failed", "bad_signature") == "challenge"
    assert cfg.points("withheld") == 0 and cfg.points("stir_C") == 40


def test_the_routing_stage_sees_screenings_risk(start_line, settings, db):
    """With the routing stage after screening (the usual chain), routing decides on call.risk."""
    settings.policy.unverified_action = "route"
    settings.policy.stages = ["screening", "routing"]
    line = start_line()
    put(db, CALLER, "block", 4, reason="complaints")
    result = line.call()
    assert result.outcome == "routed"
    call = records.find_call(db, result.uuid)
    routing = next(v for v in call.verdicts if v.stage == "routing")
    assert call.risk == 4 * 10 + 10 and routing.details["risk"] == call.risk
    assert result.exported["fsguard_risk"] == str(call.risk)
