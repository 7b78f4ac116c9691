"""``fsguard route``: which routing rule would win for a caller, and why.

    fsguard route explain +12125550123 [--dnis 8005550100] [--risk 60] [--verified]
                          [--at "2026-01-05 19:30"] [--no-crm] [--json]
    fsguard route table [--json]

``explain`` looks the caller up exactly as a call would (customer table, then the CRM unless
``--no-crm``), reads the routing table top to bottom and prints every rule's verdict on the
caller, the winner, and the variables the agent's leg would get. Risk and verification come
from the stages before routing on a live call; give them with ``--risk`` and ``--verified``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fsguard.ops.commands._common import CLIError, Context, area_parser, print_json, print_table, routing_traits


def register(subparsers: Any) -> None:
    sub = area_parser(subparsers, "route", func=cmd_route,
                      help="the routing table: which rule would win for a caller, and why",
                      description="Explain the routing decision for a caller, or print the table.")
    e = sub.add_parser("explain", help="which rule would route NUMBER, and why",
                       description="Look NUMBER up like a call would and walk the routing table.")
    e.add_argument("number", metavar="NUMBER", help="the caller, E.164 or as dialled in node.default_region")
    e.add_argument("--dnis", default="", help="the dialled number (for dnis rules)")
    e.add_argument("--risk", type=int, default=0, help="risk points given by screening (default 0)")
    ver = e.add_mutually_exclusive_group()
    ver.add_argument("--verified", dest="verified", action="store_true", default=None,
                     help="the caller passed verification")
    ver.add_argument("--not-verified", dest="verified", action="store_false", help="the caller failed verification")
    e.add_argument("--at", help="when the call comes: 'YYYY-MM-DD HH:MM' in routing.timezone, or ISO with an "
                                "offset (default now)")
    e.add_argument("--no-crm", action="store_true", help="do not ask the CRM (customer table only)")
    e.add_argument("--json", action="store_true")
    t = sub.add_parser("table", help="the routing table in effect, with business hours")
    t.add_argument("--json", action="store_true")


def _table(ctx: Context) -> Any:
    from fsguard.rules.routing import build_table

    return build_table(ctx.settings.routing)


def _zone(ctx: Context) -> Any:
    from zoneinfo import ZoneInfo

    zone = ctx.settings.routing.timezone.strip() or "UTC"
    return timezone.utc if zone.upper() == "UTC" else ZoneInfo(zone)


def _when(ctx: Context, text: str | None) -> datetime:
    if not text:
        return datetime.now(timezone.utc)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CLIError(f"--at: expected 'YYYY-MM-DD HH:MM' (or ISO 8601), got {text!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=_zone(ctx))
    return at


def cmd_route(ctx: Context) -> int:
    if ctx.args.route_command == "table":
        return _print_table(ctx)
    return _explain(ctx)


def _explain(ctx: Context) -> int:
    from fsguard.rules import customers, numbers
    from fsguard.rules.crm import Lookup, crm_for
    from fsguard.stages.routing import EXPORTS, agent_variables, details, facts_for

    args = ctx.args
    region = ctx.settings.node.default_region
    try:
        number = numbers.to_e164(args.number, region)
    except numbers.InvalidNumber as exc:
        raise CLIError(str(exc)) from None
    table = _table(ctx)
    ctx.require_schema()
    with ctx.db.begin() as session:
        local = customers.find(session, number)
    crm = crm_for(ctx.settings.routing)
    if local is not None:
        found = Lookup(local, "not asked" if crm else "not configured")
    elif crm is None:
        found = Lookup(None, "not configured")
    elif args.no_crm:
        found = Lookup(None, "not asked (--no-crm)")
    else:
        found = crm.lookup(number)
    dialled = numbers.parse(args.dnis, region) if args.dnis else None
    facts = facts_for(number, args.dnis, dialled.e164 if dialled and dialled.valid else None, found.customer,
                      verified=args.verified, risk=args.risk, now=_when(ctx, args.at))
    decision = table.decide(facts)
    customer = found.customer
    exported = agent_variables(customer, facts, decision, verified=args.verified, risk=args.risk)
    if decision.queue is not None:
        exported["cc_export_vars"] = ",".join(EXPORTS)
        if facts.vip and ctx.settings.routing.vip_base_score:
            exported["cc_base_score"] = str(ctx.settings.routing.vip_base_score)
    tried = {t.rule: t for t in decision.trace}
    if args.json:
        print_json({"number": number, "dnis": args.dnis, "at": facts.now.isoformat(),
                    "customer": customer.as_dict() if customer else None, "crm": found.crm,
                    "crm_error": found.crm_error, "region": facts.region.as_dict(), "region_label": facts.region_label,
                    "rules": [{**r.as_dict(), **({"matched": tried[r.name].matched, "why": tried[r.name].why}
                                                 if r.name in tried else {"matched": None, "why": ["not tried"]})}
                              for r in table.rules],
                    "target": decision.target, "rule": decision.rule, "code": decision.code,
                    "reason": decision.reason, "after_hours": decision.after_hours, "fallback": decision.fallback,
                    "exported": exported, "details": details(decision, facts, found)})
        return 0
    r = facts.region
    where = ", ".join(x for x in (r.country, r.place) if x) + (f" ({r.subdivision})" if r.subdivision else "")
    at = facts.now.astimezone(_zone(ctx))
    print(f"Caller {number}" + (f" dialling {args.dnis}" if args.dnis else "")
          + f" at {at:%a %Y-%m-%d %H:%M} ({getattr(at.tzinfo, 'key', None) or at.tzname()})")
    if customer:
        print(f"  customer {customer.customer_id} ({'fsguard table' if customer.source == 'local' else 'CRM'}): "
              f"{_describe(customer)}")
    else:
        print("  not a known customer")
    print(f"  CRM: {found.crm}" + (f" ({found.crm_error})" if found.crm_error else ""))
    print(f"  number: {where or 'no region known'}" + (f", area code {r.area_code}" if r.area_code else "")
          + (f"; routing region {facts.region_label}" if facts.region_label else ""))
    print(f"  risk {args.risk}; verified: {exported['fsguard_verified']}")
    print("")
    rows = []
    for i, rule in enumerate(table.rules, 1):
        t = tried.get(rule.name)
        verdict = "not tried" if t is None else ("WINS" if t.matched and rule.name == decision.rule else
                                                 "matches" if t.matched else "no")
        rows.append([i, rule.name, verdict, "; ".join(t.why) if t else "an earlier rule won"])
    if rows:
        print_table(rows, ["#", "rule", "verdict", "why"])
    else:
        print("  (the routing table has no rules)")
    print("")
    print(f"Route: {decision.target}")
    print(f"  {decision.reason}")
    print("Exported to the agent's leg and the CDR: " + " ".join(f"{k}={v}" for k, v in exported.items()))
    return 0


def _describe(c: Any) -> str:
    """The caller's customer record as routing reads it: VIP or not is said either way."""
    return "; ".join([c.name or "(no name)", "VIP" if c.vip else "not VIP"] + routing_traits(c))


def _print_table(ctx: Context) -> int:
    table = _table(ctx)
    now = datetime.now(timezone.utc)
    if ctx.args.json:
        print_json({"rules": table.describe(), "default_target": table.default_target, "domain": table.domain,
                    "after_hours_target": table.after_hours_target,
                    "hours": {q: {"spec": h.spec, "open_now": h.is_open(now)} for q, h in table.hours.items()}})
        return 0
    conditions = ("vip", "known", "verified", "risk_at_least", "risk_below", "dnis", "country", "area_code",
                  "region", "customer_preference")
    rows = []
    for i, rule in enumerate(table.rules, 1):
        data = rule.as_dict()
        when = ", ".join(f"{k}={_show(data[k])}" for k in conditions if k in data) or "every caller"
        rows.append([i, rule.name, when, rule.target + (f" (after hours: {rule.after_hours})" if rule.after_hours
                                                        else "")])
    rows.append(["", "(default)", "no rule matched", table.default_target])
    print_table(rows, ["#", "rule", "when", "target"])
    if table.hours:
        print("")
        print_table([[q, h.describe(), "open" if h.is_open(now) else "closed"] for q, h in table.hours.items()],
                    ["queue", "business hours", "now"])
        print(f"closed queues go to: {table.after_hours_target or 'the next rule (no routing.after_hours_target)'}")
    return 0


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return str(value)
