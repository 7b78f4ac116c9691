"""``fsguard replay``: what a changed policy would have done to the calls already taken.

    fsguard replay --since 7d --config /etc/fsguard/new.toml
    fsguard replay --since 2026-11-01 --until 2026-11-08 --limit 100000 --json

The stored calls are read from the database of the running configuration (``fsguard -c
/etc/fsguard/fsguard.toml``, or the default); ``--config`` names the changed configuration whose
policy is replayed (its database and listener settings are not used). Nothing is written.
"""

from __future__ import annotations

from fsguard.ops.commands._common import CLIError, Context, positive_int, print_json_or_text
import argparse
import sys



def cmd_replay(ctx: Context) -> int:
    from fsguard.service import logs
    from fsguard.ops import replay
    from fsguard.ops.when import parse_when
    from fsguard.config import LoggingSettings
    from fsguard.rules.checks import load_settings

    args = ctx.args
    ctx.require_schema()
    # stages log per call; replaying a million calls must not print a million lines
    logs.configure(LoggingSettings(level="debug" if args.verbose else "critical",
                                   format=ctx.settings.logging.format))
    policy = load_settings(args.policy_config) if args.policy_config else ctx.settings
    since = parse_when(args.since, "--since", error=CLIError) if args.since else None
    until = parse_when(args.until, "--until", error=CLIError) if args.until else None
    if since and until and until <= since:
        raise CLIError("--until must be after --since")
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit: expected a positive number of calls")
    total = replay.count_calls(ctx.db, since, until)
    if args.limit is not None:
        total = min(total, args.limit)
    if total == 0:
        raise CLIError("no stored calls in that period" + (f" (since {since:%Y-%m-%d %H:%M} UTC)" if since else ""))
    bar = replay.ProgressBar(total) if sys.stderr.isatty() and not args.no_progress else None
    try:
        report = replay.replay(ctx.db, policy, since=since, until=until, limit=args.limit,
                               policy_name=str(policy.source or "the current configuration"), progress=bar)
    except ValueError as exc:   # an unknown stage in the new policy
        raise CLIError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    print_json_or_text(args.json, report.as_dict(), lambda: str(report))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("replay", help="re-decide stored calls under a changed policy and count the differences",
                       description="Re-evaluate stored calls against a changed policy (nothing is written) and "
                                   "print, per stage and rule, how many calls would have been decided differently.")
    p.add_argument("--since", default="7d", help="a duration back from now (7d, 12h) or an ISO date (default 7d)")
    p.add_argument("--until", help="end of the period (a duration back from now or an ISO date; default now)")
    p.add_argument("--config", dest="policy_config", metavar="NEW.toml",
                   help="the changed configuration to replay (default: the current one)")
    p.add_argument("--limit", type=positive_int, help="replay at most N calls (the oldest first)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")
    p.add_argument("--verbose", action="store_true", help="show the stages' log lines")
    p.set_defaults(func=cmd_replay)
