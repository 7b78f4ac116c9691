"""Routing: where an inbound call goes once it may pass, and what the agent learns about it.

What happens to the caller, top to bottom::

    who is it?     the customer table (held in memory), else the CRM (timeout, cache, breaker)
    where from?    the number's country, area code and place (phonenumbers' geocoding), or the
                   region on the customer record
    which rule?    the routing table, first match wins: fraud team for risky callers, VIPs to
                   their own agent or the VIP queue, region, dialled number... else the default
    open?          a queue outside its business hours sends the call to the after-hours target
    tell the agent fsguard_customer_id, fsguard_vip, fsguard_verified, fsguard_risk and
                   fsguard_region are exported (agent's leg, CDR); for mod_callcenter they are
                   listed in cc_export_vars, and VIPs get cc_base_score (queue priority)
    route          the variables and the route go to FreeSWITCH in one write

Nothing about the customer is ever played to the caller: what fsguard learned goes to the
agent's screen and the CDR only.

A customer with an own agent is rung with ``routing.agent_target`` for ``routing.agent_timeout``
seconds; if the agent does not answer, the call goes on to the customer's queue (or to what the
table says without the agent). Both steps are one instruction (an inline dialplan), so
FreeSWITCH moves on by itself (see routing_table.one_after_another).

Facts left for other stages and for the record: ``call.facts["customer"]`` (the customer as a
dict, or None), ``call.facts["routing"]`` (rule, target, region, CRM outcome). What the CRM said
and the time the call was routed at come through the input port (``crm_customer``,
``routed_at``): a replay never asks the CRM again, and reads business hours at the time it was routed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from fsguard.call.call import Call
from fsguard.call.pipeline import Stage
from fsguard.call.ports import AppPort
from fsguard.call.verdict import Verdict
from fsguard.rules import customers
from fsguard.rules.crm import Lookup, crm_for
from fsguard.rules.customers import CustomerInfo
from fsguard.rules.regions import caller_region
from fsguard.rules.routing import RouteDecision, RouteFacts, build_table
from fsguard.store.db import DatabaseError

log = structlog.get_logger("fsguard.routing")

#: the channel variables exported for the agent's screen and the CDR (and listed in cc_export_vars)
EXPORTS = ("fsguard_customer_id", "fsguard_vip", "fsguard_verified", "fsguard_risk", "fsguard_region",
           "fsguard_route_rule")


class RoutingStage(Stage):
    name = "routing"

    def __init__(self, app: AppPort) -> None:
        super().__init__(app)
        self.rules = self.settings.routing
        self.table = build_table(self.rules)
        self.crm = crm_for(self.rules)

    def applies(self, call: Call) -> bool:
        """Inbound calls: an agent's outbound call is dialled by the outbound stage, not queued."""
        return call.direction == "inbound"

    def run(self, call: Call) -> Verdict:
        found = self.look_up(call)
        customer = found.customer
        # the time business hours are read at (recorded only when the table has hours: a replay reads them at it)
        now = call.inputs.now("routed_at" if self.table.hours else None)
        facts = facts_for(call.ani, call.dnis, call.dnis_e164, customer, verified=call.verified, risk=call.risk,
                          now=now)
        decision = self.table.decide(facts)

        call.facts["customer"] = customer.as_dict() if customer else None
        call.facts["routing"] = {"rule": decision.rule, "target": decision.target, "queue": decision.queue,
                                 "after_hours": decision.after_hours, "region": facts.region.as_dict(),
                                 "region_label": facts.region_label, "crm": found.crm}
        self.tell_the_agent(call, customer, facts, decision)
        if decision.agent is not None:
            self.ring_own_agent_first(call)
        return Verdict.route(decision.target, self.reason(decision, found), decision.code,
                             **details(decision, facts, found))

    # --------------------------------------------------------------- steps

    def look_up(self, call: Call) -> Lookup:
        """The customer table first, then the CRM; a failure of either leaves the caller unknown."""
        if not call.ani:
            return Lookup(None, "not asked (no caller number)")
        local: CustomerInfo | None = None
        local_error: str | None = None
        try:
            local = self.app.policy.customer(call.ani)   # in memory (fsguard.rules.snapshot)
        except DatabaseError as exc:
            if self.settings.policy.on_error != "open":
                raise
            local_error = str(exc).splitlines()[0][:300]
            self.app.metrics.db_errors.inc()
            log.error("routing.customer_lookup_failed", error=local_error, action="routed without customer data")
        if local is not None:
            return Lookup(local, "not asked" if self.crm else "not configured")
        number = call.ani
        found = call.inputs.fact(
            "crm_customer", lambda: self.ask_crm(number, call.ani_valid),
            encode=lambda lookup: lookup.customer.routing_inputs() if lookup.customer else None,
            decode=lambda stored: Lookup(CustomerInfo.from_inputs(stored, number) if isinstance(stored, dict)
                                         else None, "not asked (replay)"),
            offline=Lookup(None, "not asked (replay)"), keep_empty=False)
        found.local_error = local_error
        return found

    def ask_crm(self, number: str, valid: bool) -> Lookup:
        """The CRM's answer for a number the customer table does not know."""
        if self.crm is None:
            return Lookup(None, "not configured")
        if not valid:
            return Lookup(None, "not asked (not a valid number)")
        return self.crm.lookup(number)

    def tell_the_agent(self, call: Call, customer: CustomerInfo | None, facts: RouteFacts,
                       decision: RouteDecision) -> None:
        """Export what was learned (queued: it travels with the route). Never played to the caller."""
        values = agent_variables(customer, facts, decision, verified=call.verified, risk=call.risk)
        call.export(**{k: _safe(v) for k, v in values.items()})
        # listed for mod_callcenter even when the target is a dialplan transfer: the default target
        # (transfer default XML queues) reaches a queue too, and its agent must see the same
        listed = _safe(call.var("cc_export_vars"))
        names = [n for n in listed.split(",") if n and n not in EXPORTS] + list(EXPORTS)
        call.set(cc_export_vars=",".join(names))
        if facts.vip and self.rules.vip_base_score:
            call.set(cc_base_score=str(self.rules.vip_base_score))

    def ring_own_agent_first(self, call: Call) -> None:
        """The own agent rings for ``agent_timeout`` seconds; the route (an inline dialplan: bridge,
        then the fallback) goes on to the fallback only if nobody answered: ``continue_on_fail``
        lets a failed bridge fall through, ``hangup_after_bridge`` ends the call after a conversation.
        """
        call.set(continue_on_fail="true", hangup_after_bridge="true",
                 call_timeout=str(max(1, round(self.rules.agent_timeout))))

    @staticmethod
    def reason(decision: RouteDecision, found: Lookup) -> str:
        notes = []
        if found.crm in ("timeout", "error", "circuit open"):
            notes.append(f"CRM {found.crm}: routed without it")
        if found.local_error:
            notes.append("customer table unavailable: routed without it")
        return decision.reason + (f" [{'; '.join(notes)}]" if notes else "")


def facts_for(number: str | None, dnis: str, dnis_e164: str | None, customer: CustomerInfo | None, *,
              verified: bool | None, risk: int, now: datetime) -> RouteFacts:
    """What the routing table decides on (shared by the stage and ``fsguard route explain``)."""
    return RouteFacts(number=number, dnis=dnis, dnis_e164=dnis_e164, known=customer is not None,
                      vip=bool(customer and customer.vip), verified=verified, risk=risk,
                      region=caller_region(number), customer_region=customer.region if customer else None,
                      customer_queue=customer.queue if customer else None,
                      customer_agent=customer.agent if customer else None, now=now)


def details(decision: RouteDecision, facts: RouteFacts, found: Lookup) -> dict[str, Any]:
    """The inputs that mattered, for the verdict record (no customer name: the id says who).

    The target itself is the verdict's action.
    """
    customer = found.customer
    out: dict[str, Any] = {
        "rule": decision.rule,
        "customer": customer.customer_id if customer else None,
        "customer_source": customer.source if customer else None,
        "vip": facts.vip, "verified": facts.verified, "risk": facts.risk,
        "region": facts.region_label or None, "area_code": facts.region.area_code,
        "crm": found.crm,
    }
    if found.crm_error:
        out["crm_error"] = found.crm_error
    if found.crm_ms is not None:
        out["crm_ms"] = found.crm_ms
    if found.local_error:
        out["customer_lookup_error"] = found.local_error
    if decision.after_hours:
        out["after_hours"] = True
    if decision.agent:
        out["agent"] = decision.agent
    if decision.fallback:
        out["fallback"] = decision.fallback
    skipped = [f"{t.rule}: {'; '.join(t.why)}" for t in decision.trace if not t.matched]
    if skipped:
        out["passed_over"] = skipped
    return out


def agent_variables(customer: CustomerInfo | None, facts: RouteFacts, decision: RouteDecision, *,
                    verified: bool | None, risk: int) -> dict[str, str]:
    """What the agent's screen learns about the caller (``fsguard route`` shows the same)."""
    return {
        "fsguard_customer_id": customer.customer_id if customer else "",
        "fsguard_vip": "true" if facts.vip else "false",
        "fsguard_verified": verified_text(verified),
        "fsguard_risk": str(risk),
        "fsguard_region": facts.region_label,
        "fsguard_route_rule": decision.rule or "default",
    }


def verified_text(verified: bool | None) -> str:
    """``true`` (passed verification), ``false`` (failed it) or ``unknown`` (not asked)."""
    return "unknown" if verified is None else ("true" if verified else "false")


def _safe(value: str) -> str:
    """A channel variable value: one line, no control characters (it goes into an ESL header)."""
    return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in str(value)).strip()[:256]
