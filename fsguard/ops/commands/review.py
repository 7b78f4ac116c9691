"""``fsguard review ...``: keyword review of recorded calls; the review worker beside ``serve``.

    fsguard review run [--limit N] [--json]       review what waits (a timer runs this, or serve does)
    fsguard review list [--all] [--limit N] [--json]
    fsguard review mark ID --reason "..." [--by NAME] [--json]
"""

from __future__ import annotations

import argparse
import getpass
import random
from typing import Any

import gevent
import structlog

from fsguard.rules import review
from fsguard.ops.commands._common import (SERVE_HOOKS, CLIError, Context, area_parser, print_json, print_json_or_text,
                                          print_table)
from fsguard.config import parse_duration

log = structlog.get_logger("fsguard.rules.review")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rv = area_parser(sub, "review", func=cmd_review, metavar="ACTION",
                     help="keyword review of recorded calls: run, list, mark",
                     description="What the other party said in finished recordings ('not interested', "
                                 "'stop calling'...), heard offline, and what the policy did about it.")
    run = rv.add_parser("run", help="review the recordings waiting for it, oldest first, then exit")
    run.add_argument("--limit", type=int, help="review at most this many recordings")
    run.add_argument("--json", action="store_true")
    ls = rv.add_parser("list", help="phrases heard that nobody has marked reviewed yet")
    ls.add_argument("--all", action="store_true", help="include those already marked")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    mk = rv.add_parser("mark", help="mark a hit reviewed (who, when and why are kept)")
    mk.add_argument("id", type=int, help="the hit's id (review list)")
    mk.add_argument("--reason", required=True, help="what the operator found")
    mk.add_argument("--by", default=None, help="who looked (default: the login name)")
    mk.add_argument("--json", action="store_true")


def cmd_review(ctx: Context) -> int:
    ctx.require_schema()
    args, settings, db = ctx.args, ctx.settings, ctx.db
    action = args.review_command
    try:
        if action == "run":
            from fsguard.service import logs

            logs.configure(settings.logging)   # JSON log lines on stderr; stdout is the answer
            outcomes = review.run_pending(db, settings, node=settings.node.id, limit=args.limit)
            data = [{"call_uuid": o.call_uuid, "state": o.state, "seconds": o.seconds, "note": o.note,
                     "hits": o.hits} for o in outcomes]
            print_json_or_text(args.json, data, lambda: run_text(data))
            return 1 if any(o.state == "failed" for o in outcomes) else 0
        if action == "list":
            rows = review.open_hits(db, include_reviewed=args.all, limit=args.limit)
            if args.json:
                print_json(rows)
            else:
                print_table([[r["id"], r["created_at"][:19].replace("T", " "), r["call_uuid"], r["direction"],
                                  r["phrase"], f"{r['second']:.1f}", f"{r['score']:.2f}", r["action"],
                                  r["freeze_id"] or "",
                                  f"{r['reviewed_by']}: {r['review_reason']}" if r["reviewed_at"] else ""]
                                 for r in rows],
                                ["id", "heard (UTC)", "call", "dir", "phrase", "second", "score", "action",
                                 "freeze", "reviewed"])
            return 0
        if action == "mark":
            by = args.by or _login()
            data = review.mark(db, args.id, by=by, reason=args.reason)
            print_json_or_text(args.json, data, lambda: (
                f"hit {data['id']} ({data['phrase']!r} at {data['second']:.1f}s of call {data['call_uuid']}) "
                f"marked reviewed by {data['reviewed_by']}: {data['review_reason']}"))
            return 0
    except review.ReviewError as exc:
        raise CLIError(str(exc)) from None
    return 2


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def run_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing to review"
    lines = []
    for r in rows:
        heard = ", ".join(f"{h['phrase']!r} at {h['second']:.1f}s ({h['action']})" for h in r["hits"]) or "no phrase"
        extra = f" - {r['note']}" if r["note"] else ""
        lines.append(f"{r['state']:8} {r['call_uuid']}  {r['seconds']:.1f}s listened: {heard}{extra}")
    lines.append(f"{len(rows)} recording(s) reviewed")
    return "\n".join(lines)


# ------------------------------------------------------------ worker in serve


def review_worker(app: Any, server: Any) -> None:
    """``fsguard serve`` reviews recordings when ``review.enabled``: one greenlet that waits on the
    recogniser's child process, so calls are never held up by it."""
    if not app.settings.review.enabled:
        return
    try:   # refuse to start with phrases the recogniser cannot hear
        review.Policy.from_settings(app.settings)
    except review.ReviewError as exc:
        raise CLIError(str(exc)) from None

    def loop() -> None:
        gevent.sleep(random.uniform(0, 5))
        while not server.stopping:
            settings = app.settings
            try:
                review.run_pending(app.db, settings, node=settings.node.id, metrics=app.metrics,
                                   should_stop=lambda: server.stopping)
            except Exception as exc:  # noqa: BLE001 - the worker must survive a database outage
                log.error("review.worker_error", error=f"{type(exc).__name__}: {exc}")
            gevent.sleep(parse_duration(app.settings.review.interval))

    gevent.spawn(loop)


if review_worker not in SERVE_HOOKS:
    SERVE_HOOKS.append(review_worker)
