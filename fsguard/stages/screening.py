"""Screening: who is calling, and may they pass.

What happens to an inbound call, top to bottom::

    the caller's number is the network's (P-Asserted-Identity / Caller-ANI), even when withheld
    no number at all, or one that cannot exist        -> screening.anonymous_action / invalid_action
    count the call (one statement: the cluster-wide counter), read the list (in memory)
      on the allow list                               -> passes, whatever else is true
      presenting one of our Do-Not-Originate numbers  -> spoofed: rejected (or challenged)
      blocked at level 6 or more                      -> rejected before answer: never billed
      too many calls in the hour / the day            -> blocked automatically, this call included
      blocked at level 1-5                            -> must verify
    STIR/SHAKEN (the channel's verstat, or the PASSporT checked here)  -> screening.stir_actions
    several signals adding up to screening.challenge_risk points -> must verify

Screening never answers, pre-answers or plays anything: a rejected caller is refused with a SIP
error (or transferred to the entry's announcement) and nothing the caller hears can reveal a
withheld number. What it learned goes to ``call.facts["screening"]``, the risk to ``call.risk``,
and to the channel as ``fsguard_risk`` (points), ``fsguard_risk_signals`` (codes) and
``fsguard_stir`` (A, B, C, failed or none) for the routing stage and the agent's screen.

After the call, a call that ended within ``nuisance_seconds`` counts as call-and-hang-up; enough
of them block the number at a soft level (``after_call``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from fsguard.call.call import Call
from fsguard.call.pipeline import Stage
from fsguard.call.ports import AppPort
from fsguard.call.results import CallEnd
from fsguard.call.verdict import ChallengeRequest, Verdict
from fsguard.config import ConfigError, ScreeningSettings, parse_duration
from fsguard.rules import counters, lists, stirshaken

if TYPE_CHECKING:
    from fsguard.store.models.lists import ListEntry

log = structlog.get_logger("fsguard.screening")

_STRENGTH = {"pass": 0, "challenge": 1, "reject": 2}


@dataclass
class Signal:
    """One thing screening noticed, what it asks for, and the risk points it adds."""

    code: str
    reason: str
    #: pass (noted, adds points), challenge or reject
    action: str = "pass"
    points: int = 0
    #: the instruction for a reject ("hangup CALL_REJECTED", "transfer 9999 XML announcements")
    instruction: str | None = None
    #: a block's level (list entry or automatic block), 0 for other signals
    level: int = 0

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "reason": self.reason, "action": self.action, "points": self.points}
        if self.instruction and self.action == "reject":
            data["instruction"] = self.instruction
        return data


@dataclass
class _Screen:
    """The signals gathered for one call (per call: the stage itself keeps no call state)."""

    signals: list[Signal] = field(default_factory=list)

    def add(self, code: str, reason: str, action: str = "pass", points: int = 0,
            instruction: str | None = None, level: int = 0) -> None:
        self.signals.append(Signal(code, reason, action, points, instruction, level))

    @property
    def points(self) -> int:
        return sum(s.points for s in self.signals)

    def strongest(self) -> Signal | None:
        acting = [s for s in self.signals if s.action != "pass"]
        return max(acting, key=lambda s: _STRENGTH[s.action]) if acting else None


class ScreeningStage(Stage):
    name = "screening"

    def __init__(self, app: AppPort) -> None:
        super().__init__(app)
        cfg: ScreeningSettings = self.settings.screening
        self.cfg = cfg
        self.region = self.settings.node.default_region
        self.hard_action = lists.parse_action(cfg.hard_action) or "hangup CALL_REJECTED"
        soft = cfg.soft_action.strip().lower()
        self.soft_action, self.soft_instruction = (
            (soft, None) if soft in ("challenge", "pass") else ("reject", lists.parse_action(cfg.soft_action)))
        self.flood_ttl = cfg.seconds("flood_ttl")
        self.nuisance_window = cfg.seconds("nuisance_window")
        self.nuisance_ttl = cfg.seconds("nuisance_ttl")
        #: dialled number (stored form) -> its own flood limits
        self.flood_dnis: dict[str, dict[str, Any]] = {
            lists.dnis_key(dnis, self.region): limits for dnis, limits in cfg.flood_dnis.items()}
        self.verifier = self._verifier(cfg)

    def _verifier(self, cfg: ScreeningSettings) -> stirshaken.Verifier | None:
        if not cfg.stir_trust_store:
            return None
        try:
            anchors = stirshaken.load_trust_store(cfg.stir_trust_store)
        except ImportError:
            raise ConfigError("screening.stir_trust_store: verifying PASSporTs needs the 'cryptography' "
                              "package") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"screening.stir_trust_store: {exc}") from None
        return stirshaken.Verifier(anchors, max_age=cfg.stir_max_age, fetch_timeout=cfg.stir_fetch_timeout,
                                   cache_seconds=cfg.seconds("stir_cert_cache"), allow_http=cfg.stir_allow_http,
                                   region=self.region)

    def applies(self, call: Call) -> bool:
        """Screening is about callers reaching us; agents dialling out have the outbound stage."""
        return call.direction == "inbound"

    # ================================================================ the call

    def run(self, call: Call) -> Verdict:
        cfg = self.cfg
        screen = _Screen()
        facts: dict[str, Any] = call.facts.setdefault("screening", {})
        number = call.ani   # the network's number: screening sees through privacy

        if call.privacy and number:
            screen.add("withheld", "the caller withheld their number; screened on the network number",
                       points=cfg.points("withheld"))
        if call.anonymous:
            screen.add("anonymous", "the call has no caller number at all", cfg.anonymous_action,
                       cfg.points("anonymous"), self.hard_action)
        elif not call.ani_valid:
            screen.add("invalid_number", f"the caller number {call.network_number!r} cannot exist",
                       cfg.invalid_action, cfg.points("invalid"), self.hard_action)

        untrusted = self._untrusted_identity(call, number)
        if untrusted is not None:
            screen.add("identity.untrusted", untrusted[1], points=cfg.points("untrusted_identity"))

        dnis = lists.dnis_key(call.dnis, self.region)
        match, counts, auto = self._consult_lists(call, number, dnis, untrusted[0] if untrusted is not None else None)
        entry = match.entry
        facts.update(list=lists.entry_dict(entry) if entry else None, allowed=match.allowed,
                     flood={k: {"hour": c.hour, "day": c.day} for k, c in counts.items()},
                     auto_blocked=list(auto) if auto else None)

        if match.allowed:
            assert entry is not None
            facts.update(signals=[s.code for s in screen.signals], risk=0, outcome="continue")
            self._export(call, 0, ["allowlist"])
            return Verdict.carry_on(f"on the allow list{_because(entry)}", "allowlist", entry=lists.describe(entry),
                                    noticed=[s.as_dict() for s in screen.signals])

        if match.dno is not None:
            where = "as its caller id" if match.dno_on == "presented" else "as its network number"
            screen.add("dno.spoofed", f"the call presents our own do-not-originate number {match.dno.pattern} {where}: "
                                      "spoofed", cfg.dno_action, cfg.points("dno"), self.hard_action)

        if entry is not None and entry.kind == "block":
            self._blocked(screen, entry)
        if match.also is not None:
            self._blocked(screen, match.also, asserted=True)

        if auto is not None:
            code, reason, level = auto
            screen.add(code, reason, *self._level_action(level), level=level)

        stir = self._stir(call, number)
        facts["stir"] = stir.as_dict()
        self._stir_signal(screen, stir)

        return self._verdict(call, screen, facts, stir, entry, counts)

    # ---------------------------------------------------------------- the list and the counters

    def _untrusted_identity(self, call: Call, number: str | None) -> tuple[str, str] | None:
        """(asserted number, reason) when a peer that is not trusted asserts an identity other
        than the caller id screened (screening.trusted_networks / trusted_gateways)."""
        def untrusted() -> str | None:
            if not call.asserted_number or call.identity_trusted:
                return None
            return call.asserted_e164 if call.asserted_e164 not in (None, number) else None

        asserted = call.inputs.fact("screening.asserted", untrusted, keep_empty=False)
        if asserted is None:
            return None
        peer = call.var("sip_network_ip") or "an unknown peer"
        gateway = call.var("sip_gateway_name")
        source = f"{peer} (gateway {gateway})" if gateway else peer
        return asserted, (f"P-Asserted-Identity {asserted} from {source}, not a trusted peer "
                          f"(screening.trusted_networks / trusted_gateways): screened on the caller id "
                          f"{number or 'none'}, and on the asserted number as well")

    def _consult_lists(self, call: Call, number: str | None, dnis: str, also: str | None = None
                       ) -> tuple[lists.Match, dict[str, counters.Counts], tuple[str, str, int] | None]:
        """Count this call (the one statement a decision makes: the count is cluster-wide), read
        the list from the in-process snapshot, and block a flood (written after the decision)."""
        policy = self.app.policy
        if number is None:
            if also is None:
                return lists.Match(), {}, None
            return policy.match_call(None, None, dnis, also=also), {}, None
        keys = ["*", dnis] if dnis in self.flood_dnis and dnis != "*" else ["*"]
        # the list before the count: a block this count's crossing call writes (into this node's
        # snapshot at once) then only ever meets calls counted after that one
        match = policy.match_call(number, call.presented_e164 if call.presented_e164 != number else None, dnis,
                                  also=also)
        counts = call.inputs.fact(
            "screening.flood", lambda: self._count(number, keys),
            encode=lambda found: {k: [c.hour, c.day] for k, c in found.items()},
            decode=lambda stored: {k: counters.Counts(*v) for k, v in stored.items()})
        auto = self._flood(call, number, dnis, counts, match.entry) if not match.allowed and match.dno is None else None
        return match, counts, auto

    def _count(self, number: str, keys: list[str]) -> dict[str, counters.Counts]:
        return counters.count_call(self.db, number, keys, now=time.time())

    def _flood(self, call: Call, number: str, dnis: str, counts: dict[str, counters.Counts],
               entry: ListEntry | None) -> tuple[str, str, int] | None:
        """Too many calls: block the number (source auto; the call writer writes it after the
        decision, this node's snapshot has it at once), and treat this call as blocked."""
        cfg = self.cfg
        checks: list[tuple[str, int, int, str, int, float, str | None]] = []
        total = counts.get("*")
        if total is not None:
            level, ttl = cfg.flood_level, self.flood_ttl
            checks += [("flood.hour", total.hour, cfg.flood_hour, "in the last hour", level, ttl, None),
                       ("flood.day", total.day, cfg.flood_day, "in the last day", level, ttl, None)]
        own = self.flood_dnis.get(dnis)
        if own is not None and dnis in counts:
            level = int(own.get("level", cfg.flood_level))
            ttl_s = parse_duration(own["ttl"], "screening.flood_dnis.ttl") if "ttl" in own else self.flood_ttl
            checks += [("flood.dnis_hour", counts[dnis].hour, int(own.get("hour", 0)), f"to {dnis} in the last hour",
                        level, ttl_s, dnis),
                       ("flood.dnis_day", counts[dnis].day, int(own.get("day", 0)), f"to {dnis} in the last day",
                        level, ttl_s, dnis)]
        for code, seen, limit, window, level, ttl, scope in checks:
            if not limit or seen <= limit:
                continue
            if entry is not None and entry.kind == "block" and entry.level >= level and (
                    entry.dnis == "*" or entry.dnis == scope):
                return None   # already blocked at least this strongly: the list entry speaks for it
            reason = (f"{seen} calls {window} (more than {limit}): blocked automatically at level {level} "
                      f"for {_duration(ttl)}")
            # In shadow mode the block is what the stage WOULD do: writing it would make it bite the
            # day the rule is enforced, for traffic that was only being observed.
            enforced = self.settings.policy.enforced(self.name)
            if enforced and call.inputs.effect(lambda: self.app.policy.auto_block(
                    number, level=level, reason=reason, code=code, ttl_seconds=ttl, dnis=scope,
                    added_by=self.settings.node.id), replayed=None):
                self.app.metrics.auto_blocks.labels(reason=code).inc()
                log.warning("screening.auto_block", code=code, calls=seen, limit=limit, level=level,
                            ttl_seconds=ttl, dnis=scope)
            return code, reason, level
        return None

    def _blocked(self, screen: _Screen, entry: ListEntry, *, asserted: bool = False) -> None:
        because = _because(entry)
        whose = f"the asserted identity {entry.number} is " if asserted else ""
        if entry.level >= lists.HARD_LEVEL:
            screen.add("blocklist.hard", f"{whose}blocked at level {entry.level} (hard){because}", "reject",
                       self.cfg.points("hard_block"), entry.action or self.hard_action)
        elif entry.level > 0:
            screen.add("blocklist.soft", f"{whose}blocked at level {entry.level} (soft){because}",
                       *self._level_action(entry.level), level=entry.level)
        else:
            screen.add("blocklist.pass", f"on the block list at level 0 (pass){because}")

    def _level_action(self, level: int) -> tuple[str, int, str | None]:
        """(action, points, instruction) for a block level: hard rejects, soft follows soft_action."""
        if level >= lists.HARD_LEVEL:
            return "reject", self.cfg.points("hard_block"), self.hard_action
        return self.soft_action, self.cfg.points("soft_block_per_level") * level, self.soft_instruction

    # ---------------------------------------------------------------- STIR/SHAKEN

    def _stir(self, call: Call, number: str | None) -> stirshaken.StirResult:
        """What the network vouches for (a replay reuses what was found then)."""
        return call.inputs.fact("screening.stir", lambda: self._check_stir(call, number),
                                encode=lambda result: result.as_dict(), decode=stirshaken.StirResult.from_dict)

    def _check_stir(self, call: Call, number: str | None) -> stirshaken.StirResult:
        """A verstat on the channel, else the PASSporT checked here."""
        variables = call.variables
        identity = stirshaken.find_identity(variables, self.cfg.stir_identity_variables)
        verstat = stirshaken.read_verstat(variables)
        result: stirshaken.StirResult | None = None
        if verstat is not None:
            result = stirshaken.from_verstat(*verstat, attestation_hint=_attest_hint(identity))
        if (result is None or result.status == "none") and identity:
            if self.verifier is not None:
                result = self.verifier.verify(identity, number)
            elif result is None:
                result = stirshaken.StirResult(
                    "none", None, "", "identity",
                    "an Identity header came with the call but no trust store is configured to verify it "
                    "(screening.stir_trust_store)", {"attestation_claimed": _attest_hint(identity)})
        if verstat is not None:
            call.inputs.note("screening.verstat", {"value": verstat[0], "from": verstat[1]})
        call.inputs.note("screening.identity_header", bool(identity))
        return result or stirshaken.StirResult()

    def _stir_signal(self, screen: _Screen, stir: stirshaken.StirResult) -> None:
        cfg = self.cfg
        outcome = stir.outcome
        action = cfg.stir_action(outcome, stir.failure)
        points = cfg.points(f"stir_{outcome}")
        if stir.status == "passed" and stir.attestation:
            reason = f"STIR/SHAKEN attestation {stir.attestation}: {stir.reason}"
        else:
            reason = f"STIR/SHAKEN: {stir.reason}"
        screen.add(stir.code, reason, action, points, self.hard_action)

    # ---------------------------------------------------------------- the verdict

    def _verdict(self, call: Call, screen: _Screen, facts: dict[str, Any], stir: stirshaken.StirResult,
                 entry: ListEntry | None, counts: dict[str, counters.Counts]) -> Verdict:
        cfg = self.cfg
        for s in screen.signals:
            if s.points:
                call.add_risk(s.points, s.code)
        points = screen.points
        strongest = screen.strongest()
        contributing = [s for s in screen.signals if s.points]
        if strongest is None and cfg.challenge_risk and points >= cfg.challenge_risk and len(contributing) > 1:
            # signals adding up; a single signal is decided by its own action (a "pass" stays a pass)
            adding = ", ".join(f"{s.code} ({s.points})" for s in contributing)
            screen.add("risk", f"risk {points} reached screening.challenge_risk {cfg.challenge_risk}: {adding}",
                       "challenge")
            strongest = screen.signals[-1]
        codes = [s.code for s in screen.signals if s.points or s.action != "pass"]
        facts.update(signals=[s.code for s in screen.signals], risk=points)
        self._export(call, call.risk, codes, (stir.attestation or "passed") if stir.status == "passed" else stir.status)
        facts["outcome"] = strongest.action if strongest else "continue"
        details: dict[str, Any] = {"signals": [s.as_dict() for s in screen.signals], "risk": points,
                                   "flood": {k: {"hour": c.hour, "day": c.day} for k, c in counts.items()},
                                   "stir": stir.as_dict()}
        if entry is not None:
            details["entry"] = lists.describe(entry)
        if strongest is None:
            summary = f"risk {points}" + (f" ({', '.join(codes)})" if codes else "")
            return Verdict.carry_on(f"caller passed screening: {summary}", "pass", **details)
        others = [s.reason for s in screen.signals if s is not strongest and s.action != "pass"]
        reason = strongest.reason + (f"; also: {'; '.join(others)}" if others else "")
        if strongest.action == "reject":
            return Verdict.reject(reason, strongest.code, action=strongest.instruction or self.hard_action, **details)
        requests = tuple(_request(s, stir, points) for s in screen.signals if s.action == "challenge")
        return Verdict.challenge(reason, strongest.code, requests=requests, **details)

    def _export(self, call: Call, risk: int, codes: list[str], stir: str | None = None) -> None:
        """For the routing stage and the agent's screen: never a number, only points and codes."""
        call.export(fsguard_risk=str(risk), fsguard_risk_signals=",".join(codes) or "none")
        if stir:
            call.export(fsguard_stir=stir)

    # ================================================================ after the call

    def after_call(self, call: Call, end: CallEnd) -> None:
        """Call-and-hang-up: a caller whose calls keep ending within seconds is blocked (soft)."""
        cfg = self.cfg
        facts = call.facts.get("screening")
        number = call.ani
        if (not cfg.nuisance_calls or facts is None or call.direction != "inbound" or number is None
                or facts.get("allowed")
                or facts.get("outcome") == "reject" or end.duration is None or end.duration > cfg.nuisance_seconds
                or (call.final_action is not None and call.final_action.hangs_up)):
            return   # not a short call the caller made, or one fsguard itself ended
        # one statement, committed on its own: the count; a transaction only for the rare block
        short = counters.count_short_call(self.db, number, window_seconds=self.nuisance_window, now=time.time())
        if short < cfg.nuisance_calls:
            return
        if not self.settings.policy.enforced(self.name):
            log.info("screening.would_auto_block", code="nuisance", short_calls=short, level=cfg.nuisance_level)
            return
        reason = (f"{short} calls ended within {cfg.nuisance_seconds:g} s in {_duration(self.nuisance_window)} "
                  f"(call-and-hang-up, limit {cfg.nuisance_calls}): blocked automatically at level "
                  f"{cfg.nuisance_level} for {_duration(self.nuisance_ttl)}")
        with self.db.begin() as session:
            blocked = lists.auto_block(session, number, level=cfg.nuisance_level, reason=reason, code="nuisance",
                                       ttl_seconds=self.nuisance_ttl, added_by=self.settings.node.id)
        if blocked:
            self.app.metrics.auto_blocks.labels(reason="nuisance").inc()
            log.warning("screening.auto_block", code="nuisance", short_calls=short, level=cfg.nuisance_level)


def _request(signal: Signal, stir: stirshaken.StirResult, risk: int) -> ChallengeRequest:
    """What a signal that asks for a challenge asks of the verification stage, typed."""
    code = signal.code
    if code == "blocklist.soft":
        return ChallengeRequest("soft_block", f"soft block level {signal.level}", level=signal.level)
    if code.startswith("flood."):
        return ChallengeRequest("soft_block", f"blocked automatically ({code}) at level {signal.level}",
                                level=signal.level)
    if code == "anonymous":
        return ChallengeRequest("anonymous", "no caller number")
    if code == "invalid_number":
        return ChallengeRequest("invalid", "a caller number that cannot exist")
    if code == "dno.spoofed":
        return ChallengeRequest("dno", "presents one of our Do-Not-Originate numbers")
    if code == "risk":
        return ChallengeRequest("risk", f"screening risk {risk}")
    if code == stir.code:
        outcomes = (stir.outcome, stir.failure) if stir.failure else (stir.outcome,)
        return ChallengeRequest("stir", f"STIR/SHAKEN {stir.failure or stir.outcome}", stir=outcomes)
    return ChallengeRequest.other(signal.reason)


def _because(entry: ListEntry) -> str:
    source = f" [{entry.source}{': ' + entry.code if entry.code else ''}]"
    return source + (f": {entry.reason}" if entry.reason else "")


def _attest_hint(identity: str | None) -> str | None:
    """The attestation a PASSporT claims (unverified): completes a verstat that gives no level."""
    if not identity:
        return None
    try:
        claims = stirshaken.parse_identity(identity).claims
    except stirshaken.PassportError:
        return None
    attest = claims.get("attest")
    return attest if attest in ("A", "B", "C") else None


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
