"""``fsguard audit``: the trail of every change made through the CLI, the API or the console.

    fsguard audit [--since 7d] [--actor NAME] [--action list] [--subject +12025550143] [--via console]
                  [--limit 50] [--json]
"""

from __future__ import annotations

import argparse

from fsguard.store import audit
from fsguard.config import ConfigError
from fsguard.ops.commands._common import CLIError, Context, print_json, print_table


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("audit", help="who changed what, when, through what and why",
                              description="The audit trail, newest first.")
    p.add_argument("--since", help="7d, 12h, or a date (2026-11-20)")
    p.add_argument("--actor", help="an operator's name, api:NAME, or a Unix user")
    p.add_argument("--action", help="list, list.add, recording.hold, outbound, operator, policy.reload, ...")
    p.add_argument("--subject", help="a number, a call uuid, an operator's name")
    p.add_argument("--via", choices=audit.VIAS)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def cmd_audit(ctx: Context) -> int:
    from fsguard.ops.when import parse_when

    args = ctx.args
    if not 1 <= args.limit <= 100_000:
        raise CLIError(f"--limit: expected 1 to 100000, got {args.limit}")
    try:
        since = parse_when(args.since, "--since") if args.since else None
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    ctx.require_schema()
    with ctx.db.begin() as session:
        rows = [audit.as_dict(e) for e in audit.entries(session, since=since, actor=args.actor, action=args.action,
                                                        subject=args.subject, via=args.via, limit=args.limit)]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("nothing in the audit trail" + (" matches" if any((args.since, args.actor, args.action, args.subject,
                                                                  args.via)) else ""))
        return 0
    print_table([[r["at"][:19].replace("T", " "), r["actor"], r["via"], r["action"], r["subject"], r["reason"][:60]]
                 for r in rows], ["when (UTC)", "who", "via", "action", "subject", "why"])
    return 0
