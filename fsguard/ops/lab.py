"""The local lab: fsguard deciding a scripted morning of calls, in a minute, with nothing installed.

``fsguard lab`` (``make lab``) writes a demo policy (``fsguard.toml``) into a throwaway directory,
migrates a fresh SQLite database there, seeds the lists and the customer table through the same
functions the ``fsguard lists`` and ``fsguard customers`` commands use, starts fsguard IN THIS
PROCESS (the App and its CallServer on an ephemeral port, exactly as ``fsguard serve`` runs them)
and lets the FreeSWITCH simulator place the morning's calls through real TCP, one after the other:

    ordinary callers, a VIP, a soft-blocked caller who passes the challenge and one who fails,
    a withheld number, a call with no number at all, a spoofed Do-Not-Originate caller, a failed
    STIR/SHAKEN caller, a flood from one number, agents re-dialling a number until it freezes.

Every call has the outcome the policy says it must have (:class:`Expect`); the lab reads the call
back from the database and prints what happened to each caller and why, with the verdict reasons
``fsguard calls show`` explains. It fails (exit status 1) if any call was not decided as expected,
which is what ``tests/test_lab.py`` asserts on SQLite and PostgreSQL.

Nothing here is a shortcut around the product: the policy is TOML read by ``load_settings``, the
stages are the real ones, the simulator speaks the Event Socket protocol byte for byte. The only
addition to the simulator is that it writes a (silent) WAV file where ``record_session`` is told to
record, as FreeSWITCH would, so the recordings are complete rather than "missing", and that its
queues have agents: a caller a queue takes is bridged to one (and the recording starts then).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import textwrap
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import gevent

from fsguard.rules import customers, lists
from fsguard.store import migrate, records
from fsguard.service.app import App
from fsguard.config import Settings
from fsguard.rules.checks import load_settings
from fsguard.store.db import Database
from fsguard.service.server import CallServer
from fsguard_testing.fakeswitch import Caller, Channel, FakeFreeSWITCH, SimResult

__all__ = ["Expect", "Step", "Scenario", "LabCall", "LabReport", "LabError", "DEMO_POLICY", "OUR_LINE",
           "demo_policy", "demo_settings", "seed", "morning", "run", "table"]

#: real seconds per channel second: 50 times faster than life, and still slow enough that fsguard's
#: own round trips (a millisecond or two) stay a small part of a channel second, as in life (the
#: verification window is kept by the channel's clock)
TIME_SCALE = 0.02

# --------------------------------------------------------------------------- the cast

#: the line the callers dial (a toll-free number, as the carrier delivers it) and our own
#: inbound-only number: a call PRESENTING it as caller id is spoofed (Do-Not-Originate)
OUR_LINE = "+18005550100"
DIALLED = "18005550100"

ORDINARY = "+12125550101"      # nobody we know, from New York
CUSTOMER = "+14155550102"      # a customer (account A-1002), not a VIP, from San Francisco
VIP = "+12125550111"           # a VIP customer (account A-1001)
SOFT_PASS = "+13125550121"     # soft-blocked at level 2: must verify, and can
SOFT_FAIL = "+13125550122"     # soft-blocked at level 4: a robot, keys nothing
WITHHELD = "+16175550131"      # withholds their number (privacy); the network still gives it
STIR_FAILED = "+17135550141"   # the carrier's STIR/SHAKEN verification failed; a person all the same
FLOODER = "+13055550151"       # calls again and again
AGENT = "1001"                 # an agent's extension
REDIALLED = "+13055550161"     # the number agents keep dialling; it does not want the call

#: what a carrier that verified the caller id (attestation A) puts on the channel
ATTESTED = {"sip_verstat": "TN-Validation-Passed-A"}
#: the route of an agent's call, from outbound.dial_target
DIAL_TARGET = "bridge sofia/gateway/carrier/{number}"

DEMO_POLICY = """\
# fsguard lab: the demo policy. `fsguard lab` writes this file and runs the morning against it.
# Every key is documented in docs/*.rst; anything not set here keeps its default.

[node]
id = "lab"

[esl]
# `fsguard -c {dir}/fsguard.toml serve` would listen here; the lab itself takes an ephemeral port
listen = "127.0.0.1:8084"

[database]
url = "sqlite:///{dir}/fsguard.db"

[logging]
level = "info"

[policy]
# inbound calls: screening -> verification -> recording -> routing;
# agents' calls: recording -> outbound (screening, verification and routing are inbound only)
stages = ["screening", "verification", "recording", "outbound", "routing"]
enforce = true

[screening]
# a flood: more than 5 calls in an hour from one number blocks it (soft, level 3) for a day
flood_hour = 5
flood_day = 20
flood_level = 3
flood_ttl = "24h"
# withheld numbers are screened on the network number; a call with no number at all must verify
anonymous_action = "challenge"
# the carrier's network (the lab's calls come from 192.0.2.10): only its P-Asserted-Identity is believed
trusted_networks = ["192.0.2.0/24"]
# a caller presenting our own Do-Not-Originate number is spoofed
dno_action = "reject"
# a failed STIR/SHAKEN verification must verify (risk 50: the fraud team takes them)
stir_actions = {{ failed = "challenge" }}

[verification]
# the code is spoken in early media (unbilled); a caller who does not key it is hung up
# within the carrier's 5 s unbilled guard interval
guard_interval = 5.0
code_length = 2
# three failed challenges within a day block the number hard (level 6, rejected unanswered)
escalate_after = 3
escalate_level = 6

[recording]
dir = "{dir}/recordings"
mode = "all"
purpose = "evidence"
consent = true
# a stock FreeSWITCH sound ("Recording started."), so that a real FreeSWITCH run with this file
# records; a site records its own legal wording (docs/recording.rst)
consent_prompt = "ivr/ivr-recording_started.wav"

[[recording.rules]]
name = "agents' calls"
direction = "outbound"
mode = "all"
purpose = "training"

[routing]
default_target = "transfer default XML queues"

[[routing.rules]]
name = "fraud"
risk_at_least = 50
target = "fraud"

[[routing.rules]]
name = "vip own agent"
vip = true
target = "customer"

[[routing.rules]]
name = "vip"
vip = true
target = "vip"

[[routing.rules]]
name = "own queue"
known = true
target = "customer"

[outbound]
# three rejected or short (< 15 s) calls to one number within a day freeze it for 7 days
threshold = 3
window = "1d"
short_call = "15s"
freeze_for = "7d"
dial_target = "bridge sofia/gateway/carrier/{{number}}"
"""


class LabError(Exception):
    """The lab could not run (not: a call was decided otherwise than expected)."""


# --------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class Expect:
    """What the policy says must happen to one call."""

    #: in words, for the table
    says: str
    #: the simulator's outcome: "routed" (FreeSWITCH got a route) or "hungup" (fsguard hung up)
    outcome: str
    #: the route FreeSWITCH was given, when routed
    route: str | None = None
    #: the hang-up cause fsguard gave, when hung up
    cause: str | None = None
    #: verdict codes that must be in the stored call record: the decision was made for that reason
    codes: tuple[str, ...] = ()
    #: False: the call must cost nothing (never answered, or hung up inside the guard interval)
    billed: bool | None = None


@dataclass(frozen=True)
class Step:
    caller: Caller
    expect: Expect


@dataclass
class Scenario:
    name: str
    #: the caller as the table shows it
    who: str
    #: what this scenario demonstrates
    story: str
    steps: list[Step]


@dataclass
class LabCall:
    """One call of the morning: what was expected, what the simulated FreeSWITCH saw, what fsguard wrote down."""

    n: int
    scenario: Scenario
    step: int
    expect: Expect
    result: SimResult
    record: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class LabReport:
    directory: Path
    policy: Path
    database_url: str
    guard_interval: float
    calls: list[LabCall]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.calls)

    @property
    def failures(self) -> list[LabCall]:
        return [c for c in self.calls if not c.ok]


def _caller(ani: str, *, name: str = "", digits: str | None = "auto", talk: float = 12.0,
            variables: dict[str, str] | None = None, **fields: Any) -> Caller:
    """A SIP caller dialling our line; keys the code it hears when asked (``digits="auto"``)."""
    return Caller(ani=ani.lstrip("+"), name=name or "Caller", dnis=DIALLED, digits=digits, talk_time=talk,
                  variables={**ATTESTED, **(variables or {})}, **fields)


def _agent_dials(number: str, talk: float) -> Caller:
    """Agent 1001 dials out (the dialplan's fsguard-outbound extension sets fsguard_direction)."""
    return Caller(ani=AGENT, name="Agent 1001", dnis=number, context="default",
                  variables={"fsguard_direction": "outbound"}, answered_by_far_end=True, ring_time=2.0,
                  talk_time=talk)


def _routed(says: str, route: str, *codes: str) -> Expect:
    return Expect(says, "routed", route=route, codes=codes)


def _refused(says: str, cause: str, *codes: str) -> Expect:
    return Expect(says, "hungup", cause=cause, codes=codes, billed=False)


DEFAULT_QUEUE = "transfer default XML queues"


def morning() -> list[Scenario]:
    """The scripted morning, in the order the calls come in. Each step says what must happen."""
    flood = [Step(_caller(FLOODER, name="Dialer", digits=None, talk=10.0),
                  _routed(f"call {i} of the hour: passes, default queue", DEFAULT_QUEUE, "pass"))
             for i in range(1, 6)]
    flood += [
        Step(_caller(FLOODER, name="Dialer", digits=None),
             _refused("6th call in an hour: blocked (soft) on the spot, challenged, keys nothing: hung up unbilled",
                      "CALL_REJECTED", "flood.hour", "verification.failed")),
        Step(_caller(FLOODER, name="Dialer", digits=None),
             _refused("soft-blocked: challenged again, fails again", "CALL_REJECTED", "blocklist.soft",
                      "verification.failed")),
        Step(_caller(FLOODER, name="Dialer", digits=None),
             _refused("3rd failed challenge: the number is now blocked hard", "CALL_REJECTED", "blocklist.soft",
                      "verification.failed")),
        Step(_caller(FLOODER, name="Dialer", digits=None),
             _refused("hard-blocked: rejected before the answer", "CALL_REJECTED", "blocklist.hard")),
    ]
    agents = [Step(_agent_dials(REDIALLED, talk=4.0),
                   _routed(f"attempt {i}: dialled; the called person hangs up after 4 s (a strike)",
                           DIAL_TARGET.format(number=REDIALLED), "outbound.dial"))
              for i in range(1, 4)]
    agents.append(Step(_agent_dials(REDIALLED, talk=4.0),
                       _refused("frozen after 3 strikes: not dialled, the agent hears why",
                                "OUTGOING_CALL_BARRED", "outbound.frozen")))
    return [
        Scenario("ordinary caller", ORDINARY, "someone we do not know, caller id attested A",
                 [Step(_caller(ORDINARY, name="J Smith"),
                       _routed("passes screening; no rule: the default queue", DEFAULT_QUEUE, "pass", "default"))]),
        Scenario("ordinary customer", CUSTOMER, "a known customer (not a VIP): the agent sees the account",
                 [Step(_caller(CUSTOMER, name="M Jones"),
                       _routed("passes; known, no own queue: the default queue", DEFAULT_QUEUE, "pass", "default"))]),
        Scenario("VIP", VIP, "a VIP customer goes to the VIP queue, served first",
                 [Step(_caller(VIP, name="A Lovelace"),
                       _routed("the VIP queue", "callcenter vip@default", "rule.vip"))]),
        Scenario("soft-blocked, verifies", SOFT_PASS, "on the block list at level 2: must prove they are a person",
                 [Step(_caller(SOFT_PASS, name="K Brown"),
                       _routed("challenged; keys the code it heard: the default queue", DEFAULT_QUEUE,
                               "blocklist.soft", "verification.passed"))]),
        Scenario("soft-blocked, fails", SOFT_FAIL, "on the block list at level 4: a robot that keys nothing",
                 [Step(_caller(SOFT_FAIL, name="Robocall", digits=None),
                       _refused("challenged; keys nothing: hung up inside the unbilled guard interval",
                                "CALL_REJECTED", "blocklist.soft", "verification.failed"))]),
        Scenario("withheld number", "withheld", "privacy on (*67): screened on the network's number",
                 [Step(Caller(ani="anonymous", name="Anonymous", dnis=DIALLED, privacy=True, talk_time=12.0,
                              variables={**ATTESTED, "sip_Privacy": "id",
                                         "sip_P-Asserted-Identity": f"<sip:{WITHHELD}@198.51.100.7;user=phone>"}),
                       _routed("passes on the network number; the default queue", DEFAULT_QUEUE, "pass"))]),
        Scenario("no number at all", "anonymous", "no caller number, not even the network's: must verify",
                 [Step(Caller(ani="anonymous", name="Anonymous", dnis=DIALLED, privacy=True, digits="auto",
                              talk_time=12.0),
                       _routed("challenged; keys the code: the default queue", DEFAULT_QUEUE, "anonymous",
                               "verification.passed"))]),
        Scenario("spoofed DNO", OUR_LINE, "presents our own inbound-only toll-free number as caller id",
                 [Step(_caller(OUR_LINE, name="Bank Security", variables={"sip_verstat": "No-TN-Validation"}),
                       _refused("spoofed: rejected before the answer", "CALL_REJECTED", "dno.spoofed"))]),
        Scenario("STIR/SHAKEN failed", STIR_FAILED, "the carrier could not verify the caller id",
                 [Step(_caller(STIR_FAILED, name="T Garcia", variables={"sip_verstat": "TN-Validation-Failed"}),
                       _routed("challenged; keys the code; risk 50: the fraud team", "callcenter fraud@default",
                               "stir.carrier_failed", "verification.passed", "rule.fraud"))]),
        Scenario("flood", FLOODER, "one number calling again and again (screening.flood_hour = 5)", flood),
        Scenario("agents re-dialling", f"{AGENT} -> {REDIALLED}",
                 "agents keep calling a number that hangs up on them (outbound.threshold = 3)", agents),
    ]


# --------------------------------------------------------------------------- the policy and the data


def demo_policy(directory: Path) -> str:
    """The demo policy's TOML, for a lab kept in ``directory``."""
    return DEMO_POLICY.format(dir=directory.resolve().as_posix())


def demo_settings(directory: Path, database_url: str | None = None) -> Settings:
    """Write ``directory/fsguard.toml`` and read it back as any fsguard would (validated).

    The environment is NOT read: a shell with ``FSGUARD_DATABASE_URL`` pointing at production
    must not send the lab's calls there.
    """
    path = directory / "fsguard.toml"
    path.write_text(demo_policy(directory), encoding="utf-8")
    settings = load_settings(path, env={})
    if database_url:
        settings.database.url = database_url
    settings.esl.listen = "127.0.0.1:0"
    settings.http.enabled = False
    return settings


def seed(db: Database, settings: Settings) -> None:
    """The lists and customers the morning needs, written as ``fsguard lists add`` and
    ``fsguard customers add`` write them."""
    region = settings.node.default_region
    entries = [
        lists.make_spec(OUR_LINE, kind="dno", reason="our toll-free line: inbound only, never a caller id",
                        region=region, source="lab"),
        lists.make_spec(SOFT_PASS, kind="block", level=2, reason="agent report: asked odd questions about an account",
                        region=region, source="lab"),
        lists.make_spec(SOFT_FAIL, kind="block", level=4, reason="robocall complaints", region=region, source="lab"),
    ]
    with db.begin() as session:
        for spec in entries:
            lists.add(session, spec)
        for numbers_, fields in (
                ([VIP], {"account_id": "A-1001", "name": "Ada Lovelace", "vip": True, "region": "US-NY"}),
                ([CUSTOMER], {"account_id": "A-1002", "name": "Mary Jones", "vip": False})):
            customers.save(session, customers.parse_numbers(numbers_, region),
                           customers.normalise_customer(fields), source="lab")


# --------------------------------------------------------------------------- the simulator


class _LabChannel(Channel):
    """A simulated channel that writes the recording FreeSWITCH would write (one second of
    silence), in a switch whose queues have agents: a caller the queue takes is bridged to one
    (CHANNEL_BRIDGE, and the ``execute_on_pre_bridge*`` applications: recording.start = "bridge")."""

    def _after_transfer(self) -> None:
        super()._after_transfer()
        self._agent_answers()

    def _app_callcenter(self, run: Any) -> Iterator[float]:
        steps = super()._app_callcenter(run)
        for delay in steps:   # the queue has answered the caller: an agent takes the call
            self._agent_answers()
            yield delay

    def _agent_answers(self) -> None:
        if not self.hung_up and self.bridged_t is None:
            self.bridged_t = self.clock
            self.emit("CHANNEL_BRIDGE", post=[("Bridge-A-Unique-ID", self.uuid), ("Bridge-B-Unique-ID", str(uuid4()))])
            self._execute_on("execute_on_pre_bridge")

    def _app_record_session(self, run: Any) -> Iterator[float]:
        yield from super()._app_record_session(run)
        path = run.arg.strip().split(" ", 1)[0]
        if path and not self.hung_up:
            _write_silence(path, stereo=str(self.vars.get("RECORD_STEREO", "")).lower() == "true")


def _write_silence(path: str, stereo: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = 2 if stereo else 1
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * channels * 8000)


class LabFreeSWITCH(FakeFreeSWITCH):
    """The simulator, with channels that write their recordings."""

    channel_class = _LabChannel


# --------------------------------------------------------------------------- running it


def _settle(app: App, server: CallServer, timeout: float = 10.0) -> None:
    """Wait until fsguard is done with every call: decision and end written, after_call run.

    The morning depends on it: the outbound freeze and the nuisance rule are decided after a call.
    """
    with gevent.Timeout(timeout, LabError(f"fsguard still held calls {timeout:g} s after they ended")):
        while app.deciding or app.held or server.active:
            gevent.sleep(0.005)


def check(expect: Expect, result: SimResult, record: dict[str, Any] | None, guard_interval: float) -> list[str]:
    """Everything about one call that is not as the policy says; empty when it is."""
    problems = [f"protocol violation: {v}" for v in result.violations]
    if result.outcome != expect.outcome:
        problems.append(f"expected {expect.outcome}, FreeSWITCH saw {result.outcome}")
    if expect.route is not None and result.route != expect.route:
        problems.append(f"expected the route {expect.route!r}, got {result.route!r}")
    if expect.cause is not None and result.hangup_cause != expect.cause:
        problems.append(f"expected the hang-up cause {expect.cause}, got {result.hangup_cause}")
    if expect.billed is False and _billed(result, guard_interval):
        problems.append(f"expected no charge, but the call was answered for {result.billsec:.1f} s "
                        f"(guard interval {guard_interval:g} s)")
    if record is None:
        problems.append("fsguard did not write the call down")
        return problems
    codes = [v["code"] for v in record["verdicts"]]
    missing = [c for c in expect.codes if c not in codes]
    if missing:
        problems.append(f"expected the verdict code(s) {', '.join(missing)}; "
                        f"the record has {', '.join(codes) or 'none'}")
    return problems


def _billed(result: SimResult, guard_interval: float) -> bool:
    return result.answered and result.billsec >= guard_interval


def run(directory: Path, *, database_url: str | None = None, time_scale: float = TIME_SCALE,
        on_call: Callable[[LabCall], None] | None = None, scenarios: list[Scenario] | None = None) -> LabReport:
    """Run the morning against fsguard in this process; the database and policy stay in ``directory``.

    ``database_url``: an empty, migrated (or migratable) database to use instead of the SQLite file
    (tests run the lab on PostgreSQL too). ``on_call`` is told about each call as it is decided.
    """
    directory.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(directory, database_url)
    db = Database(settings.database)
    try:
        migrate.upgrade(db)
        seed(db, settings)
        app = App(settings, db=db)
        server = CallServer(app)
        server.start()
        try:
            fs = LabFreeSWITCH(server.address, time_scale=time_scale, max_call_time=600.0)
            calls = _play(app, server, fs, scenarios or morning(), settings, on_call)
        finally:
            server.stop(drain=1.0)
    finally:
        db.dispose()
    return LabReport(directory, directory / "fsguard.toml", settings.database.url,
                     settings.verification.guard_interval, calls)


def _play(app: App, server: CallServer, fs: FakeFreeSWITCH, scenarios: list[Scenario], settings: Settings,
          on_call: Callable[[LabCall], None] | None) -> list[LabCall]:
    calls: list[LabCall] = []
    guard_interval = settings.verification.guard_interval
    for scenario in scenarios:
        for i, step in enumerate(scenario.steps, 1):
            result = fs.call(step.caller)
            if result.outcome == "refused":
                raise LabError(f"fsguard did not take the call at {server.address[0]}:{server.address[1]}")
            _settle(app, server)
            stored = records.find_call(app.db, result.uuid)
            record = records.call_as_dict(stored) if stored is not None else None
            call = LabCall(len(calls) + 1, scenario, i, step.expect, result, record,
                           check(step.expect, result, record, guard_interval))
            calls.append(call)
            if on_call:
                on_call(call)
    return calls


# --------------------------------------------------------------------------- the table


def happened(call: LabCall, guard_interval: float) -> str:
    """What FreeSWITCH was told and what it cost, in a few words."""
    r = call.result
    if r.outcome == "routed":
        text = f"routed: {r.route}"
        text += f"; answered, {r.billsec:.0f} s" if r.answered else "; not answered"
    elif r.outcome == "hungup" and r.hangup_by == "target":
        if not r.answered:
            text = f"hung up {r.hangup_cause} before the answer: not billed"
        elif r.billsec < guard_interval:
            text = (f"hung up {r.hangup_cause} {r.billsec:.1f} s after the answer: inside the "
                    f"{guard_interval:g} s guard interval, not billed")
        else:
            text = f"hung up {r.hangup_cause} after {r.billsec:.1f} s: billed"
    else:
        text = f"{r.outcome}: {r.hangup_cause or r.route or ''}".rstrip(": ")
    if call.record and any(v["code"] in ("recording.all", "recording.sample") for v in call.record["verdicts"]):
        text += "; recorded"
    return text


def why(record: dict[str, Any] | None) -> list[str]:
    """The verdict reasons that decided the call (as ``fsguard calls show`` lists them)."""
    if record is None:
        return ["(no call record)"]
    lines = []
    for v in record["verdicts"]:
        if v["stage"] == "recording" and v["outcome"] == "continue":
            continue   # shown as "recorded" beside what happened
        if v["outcome"] == "continue" and v["code"] == "pass" and not record.get("risk"):
            continue   # nothing noticed
        shadow = "" if v["enforced"] else " [shadow]"
        customer = (v.get("details") or {}).get("customer") if v["stage"] == "routing" else None
        lines.append(f"{v['stage']}{shadow}: {v['reason']}" + (f" (customer {customer})" if customer else ""))
    return lines or [f"{record['outcome']}: {record['action']}"]


class _Wrapper(textwrap.TextWrapper):
    """Wraps at spaces and after a "/" (dial strings: sofia/gateway/carrier/+1...)."""

    wordsep_simple_re = re.compile(r"(\s+|(?<=/)(?=\S))")


def _wrap(text: str, width: int) -> list[str]:
    return _Wrapper(width, break_long_words=True, break_on_hyphens=False).wrap(text) or [""]


def table(report: LabReport, width: int | None = None) -> str:
    """The morning as a table: each caller, what happened and why; a failed expectation is marked."""
    width = max(110, width or shutil.get_terminal_size((140, 40)).columns)
    cols = {"n": 3, "caller": 15, "scenario": 24, "happened": 34}
    why_width = width - sum(cols.values()) - 2 * len(cols)
    head = ["#", "caller", "scenario", "what happened", "why (fsguard calls show UUID)"]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, [*cols.values(), why_width])).rstrip(),
             "-" * width]
    for call in report.calls:
        steps = len(call.scenario.steps)
        label = call.scenario.name if steps == 1 else f"{call.scenario.name} {call.step}/{steps}"
        mark = "ok" if call.ok else "NOT AS EXPECTED"
        cells = [
            [str(call.n)],
            _wrap(call.scenario.who, cols["caller"]),
            _wrap(label, cols["scenario"]) + _wrap(mark, cols["scenario"]),
            _wrap(happened(call, report.guard_interval), cols["happened"]),
            [piece for reason in why(call.record) for piece in _wrap(reason, why_width)],
        ]
        for problem in call.problems:
            cells[4] += _wrap(f"!! expected: {call.expect.says}; {problem}", why_width)
        height = max(len(c) for c in cells)
        for row in range(height):
            parts = [(c[row] if row < len(c) else "").ljust(w) for c, w in zip(cells, [*cols.values(), why_width])]
            lines.append("  ".join(parts).rstrip())
        lines.append("")
    good = sum(c.ok for c in report.calls)
    lines.append(f"{good} of {len(report.calls)} calls decided as the policy says"
                 + ("" if report.ok else f"; {len(report.calls) - good} NOT"))
    return "\n".join(lines)


def as_json(report: LabReport) -> dict[str, Any]:
    from fsguard.ops.commands.simulate import summary

    return {"ok": report.ok, "directory": str(report.directory), "policy": str(report.policy),
            "calls": [{"n": c.n, "scenario": c.scenario.name, "story": c.scenario.story, "step": c.step,
                       "caller": c.scenario.who,
                       "expected": {"says": c.expect.says, "outcome": c.expect.outcome, "route": c.expect.route,
                                    "cause": c.expect.cause, "codes": list(c.expect.codes),
                                    "billed": c.expect.billed},
                       "as_expected": c.ok, "problems": c.problems, "happened": happened(c, report.guard_interval),
                       "why": why(c.record), "simulator": summary(c.result), "record": c.record}
                      for c in report.calls]}


def throwaway_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="fsguard-lab-"))
