"""Outbound: an agent dials out through fsguard; a frozen number is not dialled.

What happens to the agent's call, top to bottom::

    the dialled number, in E.164        (call.dnis read with node.default_region)
    frozen?  -> the agent hears outbound.announcement, the leg is hung up (OUTGOING_CALL_BARRED)
    else     -> dialled: ``outbound.dial_target`` (bridge sofia/gateway/carrier/{number})
    ... the call ends ...
    after_call: the attempt is written down with its outcome, and the freeze rule is applied

This stage ROUTES the call itself (it owns the dial): the routing stage is about inbound queues
and knows nothing of gateways, and a ``carry on`` would let the chain's default target send an
agent into the inbound queue. Consequence: a stage that must act on outbound calls before the dial
(recording) has to come BEFORE ``outbound`` in ``policy.stages``.

The announcement is played in early media: ``playback`` pre-answers the agent's leg itself (SIP
183), so the agent hears it without the leg being answered, and the agent's CDR shows an
unanswered call refused with OUTGOING_CALL_BARRED (Q.850 52, SIP 403) rather than a billed call.
``outbound.announce_answered = true`` answers first, for phones or trunks that drop early media.

Shadow mode (``policy.enforce_stages.outbound = false``): a frozen number is dialled anyway and the
verdict, recorded as not enforced, says it would not have been; the attempt counts as usual, and
a number already frozen gathers no strikes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from fsguard.call.call import Call
from fsguard.call.failopen import PLAIN_DIGITS
from fsguard.call.instructions import Hangup, Instruction
from fsguard.call.pipeline import Stage
from fsguard.call.results import CallEnd
from fsguard.call.verdict import Verdict
from fsguard.rules import freeze
from fsguard.store.db import DatabaseError

log = structlog.get_logger("fsguard.rules.freeze")

#: a dialled string that may go into a dial string as it is (no gateway/URI syntax)


class OutboundStage(Stage):
    name = "outbound"

    def applies(self, call: Call) -> bool:
        return call.direction == "outbound"

    def run(self, call: Call) -> Verdict:
        rules = self.settings.outbound
        number = freeze.dialled_number(call.dnis, call.region)
        facts: dict[str, Any] = {"number": number, "dnis": call.dnis, "freeze": None, "prevented": False,
                                 "target": None, "checked": False}
        call.facts["outbound"] = facts
        if number is None:
            return self._unreadable(call, facts)

        target = rules.dial(*freeze.dial_parts(number))
        try:
            in_force = self._freeze_on(call, number)
        except DatabaseError as exc:
            if self.settings.policy.on_error != "open":
                raise
            # Failing open for an agent's call means dialling it (policy.fail_open_route is inbound's).
            self.app.metrics.db_errors.inc()
            log.error("outbound.freeze_check_failed", number=number, error=str(exc).splitlines()[0])
            facts["target"] = target
            return Verdict.route(target, f"database unavailable: {number} dialled without the freeze check",
                                 "outbound.unchecked", number=number, error=str(exc).splitlines()[0][:300])
        facts["checked"] = True

        if in_force is None:
            facts["target"] = target
            return Verdict.route(target, f"{number} is not frozen: dialled", "outbound.dial", number=number)

        facts["freeze"] = in_force.as_dict()
        by = "freeze rule" if in_force.source == "auto" else "operator " + in_force.created_by
        why = f"{number} is frozen until {in_force.until:%Y-%m-%d %H:%M} UTC ({by}: {in_force.reason})"
        details = {"number": number, "freeze_id": in_force.id, "until": in_force.until.isoformat(),
                   "source": in_force.source, "freeze_reason": in_force.reason}
        if not self.settings.policy.enforced(self.name):
            facts["target"] = target
            verdict = Verdict.route(target, f"would not dial: {why}; shadow mode, dialled", "outbound.frozen",
                                    **details)
            verdict.enforced = False
            return verdict

        facts["prevented"] = True
        self._announce(call)
        return Verdict.reject(f"not dialled: {why}", "outbound.frozen", action=Hangup(rules.frozen_cause), **details)

    # --------------------------------------------------------------- steps

    def _freeze_on(self, call: Call, number: str) -> freeze.Freeze | None:
        """The freeze in force on the number, from memory (a replay reuses the recorded answer)."""
        return call.inputs.fact("outbound_freeze", lambda: self.app.policy.freeze_on(number),
                                encode=lambda f: f.as_dict() if f else None,
                                decode=lambda data: _freeze_from(data) if data else None)

    def _announce(self, call: Call) -> None:
        """Tell the agent why the call does not go out."""
        rules = self.settings.outbound
        if not rules.announcement:
            return
        if rules.announce_answered:
            call.answer()
        call.play(rules.announcement)  # playback pre-answers (183) a leg that is not answered yet

    def _unreadable(self, call: Call, facts: dict[str, Any]) -> Verdict:
        """A dialled string fsguard cannot read as a number cannot have been frozen.

        Plain digits are dialled as they are (the carrier decides); anything else (letters, URI
        syntax) is refused rather than put into a dial string.
        """
        dnis = call.dnis.strip()
        if PLAIN_DIGITS.match(dnis):
            target = self.settings.outbound.dial(dnis, dnis.lstrip("+"), dnis.lstrip("+"))
            facts["target"] = target
            log.warning("outbound.unreadable_number", dnis=dnis, action="dialled unchecked")
            return Verdict.route(target, f"{dnis!r} is not a telephone number fsguard can read: dialled without "
                                         "the freeze check", "outbound.unchecked", dnis=dnis)
        log.warning("outbound.invalid_number", dnis=dnis, action="refused")
        return Verdict.reject(f"the dialled number {dnis!r} is not a telephone number", "outbound.invalid_number",
                              action=Hangup("INVALID_NUMBER_FORMAT"), dnis=dnis)

    # ----------------------------------------------------------- after call

    def after_call(self, call: Call, end: CallEnd) -> None:
        """Write the attempt down and apply the freeze rule (off the hot path, one transaction)."""
        facts = call.facts.get("outbound")
        if not facts or not facts.get("number"):
            return
        number, node = facts["number"], self.settings.node.id
        agent = call.presented_number or call.network_number
        if facts.get("prevented"):
            with self.db.begin() as session:
                attempt_id = freeze.record_prevented(session, number, (facts.get("freeze") or {}).get("id"),
                                                     call_uuid=call.uuid, node=node, agent=agent)
            facts["attempt"] = {"id": attempt_id, "outcome": "prevented", "strike": False}
            log.info("outbound.prevented", number=number)
            return
        if not facts.get("target") or call.final_action != Instruction.parse(facts["target"]):
            return  # never dialled (the agent hung up first, or the chain ended elsewhere)

        answered, talk, cause = far_end(end)
        rules = self.settings.outbound
        outcome = freeze.classify(answered=answered, talk_seconds=talk, cause=cause, rules=rules)
        with self.db.begin() as session:
            result = freeze.record_attempt(session, number, outcome=outcome, rules=rules, call_uuid=call.uuid,
                                           node=node, agent=agent, hangup_cause=cause, talk_seconds=talk)
        facts["attempt"] = {**result.as_dict(), "talk_seconds": talk, "hangup_cause": cause}
        log.info("outbound.attempt", number=number, outcome=outcome, talk_seconds=talk, hangup_cause=cause,
                 strike=result.strike, strikes=result.strikes)
        if result.froze is not None:
            self.app.metrics.auto_blocks.labels(reason="outbound.freeze").inc()
            log.warning("outbound.frozen", number=number, until=result.froze.until.isoformat(),
                        reason=result.froze.reason)


def far_end(end: CallEnd) -> tuple[bool, float | None, str | None]:
    """(answered by the far end, seconds of conversation, cause) from the call's end.

    The bridge times say whether the called person answered even when the agent's leg was
    answered earlier (a dialplan that answers before the socket): a leg that was never bridged
    has no bridge time, and end - bridge is the conversation, to the microsecond. Without the
    final event (no linger) the leg's own answered flag and billsec are the best there is.
    """
    talk = end.talk_seconds
    if talk is not None:
        return True, talk, end.hangup_cause
    failed = end.disposition and end.disposition not in ("SUCCESS", "ANSWER")
    return False, None, end.disposition if failed else end.hangup_cause


def _freeze_from(data: dict[str, Any]) -> freeze.Freeze:
    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(data[key]) if data.get(key) else None

    return freeze.Freeze(id=data["id"], number=data["number"], created_at=when("created_at"),  # type: ignore[arg-type]
                         until=when("until"), source=data.get("source", ""),  # type: ignore[arg-type]
                         reason=data.get("reason", ""), created_by=data.get("created_by", ""))
