"""``fsguard outbound``: numbers agents may not dial, and every attempt to a number.

    fsguard outbound freeze +15557654321 --reason "said not interested (call 3f2a...)" --days 30
    fsguard outbound unfreeze +15557654321 --reason "customer called back, asked for a call"
    fsguard outbound frozen [--json]
    fsguard outbound attempts +15557654321 [--limit 50] [--json]
"""

from __future__ import annotations

from typing import Any

from fsguard.store import audit
from fsguard.ops.commands._common import (CLIError, Context, area_parser, operator_name, positive_int, print_json,
                                          print_table)

#: the longest freeze an operator can set by hand (a typo of --days 7000 should not pass silently)
MAX_DAYS = 3650


def register(subparsers: Any) -> None:
    sub = area_parser(subparsers, "outbound", func=cmd_outbound,
                      help="agents dialling out: frozen numbers and call attempts",
                      description="Numbers agents may not dial (frozen), and every outbound attempt.")

    f = sub.add_parser("freeze", help="stop agents dialling a number",
                       description="Freeze NUMBER: agents hear an announcement and the call is not dialled. "
                                   "Replaces a freeze in force.")
    f.add_argument("number", help="the number, E.164 (+15557654321) or as dialled in node.default_region")
    f.add_argument("--reason", required=True, help="why (shown to operators and in the call records)")
    f.add_argument("--days", type=float, help="how long (default: outbound.freeze_for)")
    f.add_argument("--json", action="store_true", help='print {"frozen": freeze, "replaced": [freezes]}')

    u = sub.add_parser("unfreeze", help="let agents dial a number again",
                       description="Lift the freeze on NUMBER; strikes counted before it no longer count.")
    u.add_argument("number")
    u.add_argument("--reason", default="", help="why it was lifted (kept with the freeze's history)")
    u.add_argument("--json", action="store_true", help='print {"number": N, "lifted": [freezes]}')

    z = sub.add_parser("frozen", help="numbers frozen now")
    z.add_argument("--json", action="store_true")

    a = sub.add_parser("attempts", help="a number's call attempts, freeze state and history")
    a.add_argument("number")
    a.add_argument("--limit", type=positive_int, default=50)
    a.add_argument("--json", action="store_true")


def cmd_outbound(ctx: Context) -> int:
    ctx.require_schema()
    command = ctx.args.outbound_command
    if command == "frozen":
        return _frozen(ctx)
    number = _number(ctx, ctx.args.number)
    if command == "freeze":
        return _freeze(ctx, number)
    if command == "unfreeze":
        return _unfreeze(ctx, number)
    return _attempts(ctx, number)


def _number(ctx: Context, raw: str) -> str:
    from fsguard.rules import numbers

    try:   # the rule every command uses for a typed number (lists, erase, customers)
        return numbers.to_e164(raw, ctx.settings.node.default_region)
    except numbers.InvalidNumber as exc:
        raise CLIError(f"{exc}; give it in E.164, e.g. +15557654321") from None


def _operator() -> str:
    """Who is running the command (the same name every command records)."""
    return operator_name()


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else ""


def _freeze(ctx: Context, number: str) -> int:
    from fsguard.rules import freeze

    reason = " ".join(ctx.args.reason.split())
    if not reason:
        raise CLIError("--reason cannot be empty: say why the number is frozen")
    rules = ctx.settings.outbound
    days = ctx.args.days
    if days is not None and not 0 < days <= MAX_DAYS:
        raise CLIError(f"--days must be more than 0 and at most {MAX_DAYS}, got {days:g}")
    seconds = days * 86400 if days is not None else rules.freeze_seconds
    with ctx.db.begin() as session:
        new, replaced = freeze.freeze(session, number, reason=reason, seconds=seconds, source="operator",
                                        by=_operator())
        audit.record(session, actor=audit.cli_actor(), action="outbound.freeze", subject=number, reason=reason,
                     via="cli", details={"until": new.until.isoformat()})
    if ctx.args.json:
        print_json({"frozen": new.as_dict(), "replaced": [old.as_dict() for old in replaced]})
        return 0
    for old in replaced:
        print(f"replaced freeze #{old.id} ({old.source}, until {_when(old.until)} UTC: {old.reason})")
    print(f"frozen {number} until {_when(new.until)} UTC (freeze #{new.id}): {new.reason}")
    return 0


def _unfreeze(ctx: Context, number: str) -> int:
    from fsguard.rules import freeze

    with ctx.db.begin() as session:
        lifted = freeze.unfreeze(session, number, by=_operator(), reason=" ".join(ctx.args.reason.split()))
        if lifted:
            audit.record(session, actor=audit.cli_actor(), action="outbound.unfreeze", subject=number,
                         reason=ctx.args.reason, via="cli")
    if not lifted:
        raise CLIError(f"{number} is not frozen")
    if ctx.args.json:
        print_json({"number": number, "lifted": [old.as_dict() for old in lifted]})
        return 0
    for old in lifted:
        print(f"unfrozen {number}: lifted freeze #{old.id} ({old.source}, was until {_when(old.until)} UTC: "
              f"{old.reason})")
    return 0


def _frozen(ctx: Context) -> int:
    from fsguard.rules import freeze

    with ctx.db.begin() as session:
        rows = freeze.frozen(session)
    if ctx.args.json:
        print_json([r.as_dict() for r in rows])
        return 0
    if not rows:
        print("no number is frozen")
        return 0
    print_table([[r.number, _when(r.created_at), _when(r.until), r.source, r.created_by, r.reason] for r in rows],
                ["number", "since (UTC)", "until (UTC)", "source", "by", "reason"])
    return 0


def _attempts(ctx: Context, number: str) -> int:
    from fsguard.rules import freeze

    if ctx.args.limit < 1:
        raise CLIError("--limit must be at least 1")
    rules = ctx.settings.outbound
    with ctx.db.begin() as session:
        rows = [freeze.attempt_as_dict(r) for r in freeze.attempts(session, number, ctx.args.limit)]
        frozen = freeze.active_freeze(session, number)
        history = freeze.freezes(session, number)
        counted = freeze.strikes(session, number, rules)
    if ctx.args.json:
        print_json({"number": number, "frozen": frozen.as_dict() if frozen else None, "strikes": counted,
                    "threshold": rules.threshold, "window_seconds": rules.window_seconds,
                    "attempts": rows, "freezes": [f.as_dict() for f in history]})
        return 0
    if frozen is not None:
        print(f"{number}: FROZEN until {_when(frozen.until)} UTC (freeze #{frozen.id}, {frozen.source}"
              f"{' ' + frozen.created_by if frozen.created_by else ''}): {frozen.reason}")
    else:
        print(f"{number}: not frozen; {counted} of {rules.threshold} strikes (rejected or short calls) "
              f"in the last {freeze.human_duration(rules.window_seconds)}")
    if not rows:
        print("no attempts recorded")
    else:
        print()
        print_table([[r["at"][:19].replace("T", " "), r["outcome"],
                      "" if r["talk_seconds"] is None else f"{r['talk_seconds']:.1f}", r["hangup_cause"] or "",
                      "yes" if r["strike"] else "", r["agent"], r["node"], r["call_uuid"] or ""] for r in rows],
                    ["at (UTC)", "outcome", "talk s", "cause", "strike", "agent", "node", "call"])
    past = [f for f in history if frozen is None or f.id != frozen.id]
    if past:
        print()
        print("past freezes:")
        for f in past:
            ended = (f"lifted {_when(f.lifted_at)} by {f.lifted_by or '?'}: {f.lift_reason}" if f.lifted_at
                     else f"expired {_when(f.until)}")
            print(f"  #{f.id} {_when(f.created_at)} {f.source}: {f.reason} ({ended})")
    return 0
