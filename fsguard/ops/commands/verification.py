"""``fsguard challenges``: the verification challenges callers were put through.

    fsguard challenges                           the latest challenges, all numbers
    fsguard challenges +12125550147              one number's challenges, and whether it is blocked
    fsguard challenges --failed --since 24h      failures only, in the last day
    fsguard challenges +12125550147 --json
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fsguard.config import ConfigError, parse_duration
from fsguard.ops.commands._common import CLIError, Context, positive_int, print_json, print_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "challenges", help="verification challenges: who was challenged, why, and how it ended",
        description="The IVR challenges callers were put through (newest first), with the failures that count "
                    "towards escalation to a hard block.")
    p.add_argument("number", nargs="?", help="only this caller number (E.164, or national in node.default_region)")
    p.add_argument("--failed", action="store_true", help="only challenges the caller failed (wrong code, no code)")
    p.add_argument("--since", help="only this recent: 90m, 24h, 7d")
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_challenges)


def cmd_challenges(ctx: Context) -> int:
    from sqlalchemy import select

    from fsguard.rules import numbers
    from fsguard.store.models.base import utcnow
    from fsguard.store.models.challenges import Challenge

    ctx.require_schema()
    args, cfg = ctx.args, ctx.settings.verification
    if args.limit < 1:
        raise CLIError("--limit must be at least 1")
    stmt = select(Challenge).order_by(Challenge.started_at.desc(), Challenge.id.desc()).limit(args.limit)
    number = None
    if args.number:
        try:
            number = numbers.to_e164(args.number, ctx.settings.node.default_region)
        except numbers.InvalidNumber as exc:
            raise CLIError(str(exc)) from None
        stmt = stmt.where(Challenge.number == number)
    if args.failed:
        stmt = stmt.where(Challenge.outcome.in_(["wrong", "no_input"]))
    if args.since:
        try:
            seconds = parse_duration(args.since, "--since")
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
        stmt = stmt.where(Challenge.started_at >= utcnow() - timedelta(seconds=seconds))
    with ctx.db.begin() as session:
        rows = [c.as_dict() for c in session.scalars(stmt)]
        status = _number_status(session, number, cfg) if number else None
    if args.json:
        print_json({"number": number, **(status or {}), "challenges": rows} if number else rows)
        return 0
    if status:
        print(f"{number}: {status['failures']} failed challenge(s) in the last {cfg.escalate_window} "
              f"(blocked automatically at {cfg.escalate_after}); list: {status['list'] or 'no entry'}")
        print()
    if not rows:
        print("no challenges" + (f" for {number}" if number else ""))
        return 0
    print_table([[r["started_at"][:19].replace("T", " "), r["number"] or "(none)", r["outcome"], r["attempts"],
                  "yes" if r["early"] else "", "" if r["answered_seconds"] is None else f"{r['answered_seconds']:.1f}",
                  "yes" if r["escalated"] else "", r["call_uuid"], r["detail"]] for r in rows],
                ["started (UTC)", "number", "outcome", "tries", "early", "answered s", "escalated", "call",
                 "what happened"])
    return 0


def _number_status(session: Any, number: str, cfg: Any) -> dict[str, Any]:
    from sqlalchemy import func, select

    from fsguard.rules import lists
    from fsguard.store.models.base import utcnow
    from fsguard.store.models.challenges import Challenge

    since = utcnow() - timedelta(seconds=cfg.seconds("escalate_window"))
    failures = session.scalar(select(func.count()).select_from(Challenge).where(
        Challenge.number == number, Challenge.started_at >= since,
        Challenge.outcome.in_(cfg.escalate_outcomes))) or 0
    entry = lists.lookup(session, number, None)
    return {"failures": failures, "list": lists.describe(entry) if entry is not None else None}
