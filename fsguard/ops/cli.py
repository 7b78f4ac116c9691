"""The ``fsguard`` command.

Each area adds its subcommands from a module in fsguard/ops/commands/ (``register(subparsers)``),
so this file stays the entry point and the core commands: serve, db, calls. What the commands
share (the context, CLIError, the output helpers) is in fsguard/ops/commands/_common.py.
A command that fails for a reason the user can fix raises CLIError: one line, exit 1, no traceback.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from importlib import import_module  # noqa: E402
from typing import Any  # noqa: E402

import structlog  # noqa: E402

from fsguard import __version__  # noqa: E402
from fsguard.config import ConfigError  # noqa: E402
from fsguard.ops.commands._common import (MIN_UUID_PREFIX, SERVE_HOOKS, STDERR, CLIError, Context,  # noqa: E402
                                          find_call, positive_int, print_csv, print_json, print_json_or_text,
                                          print_table)
from fsguard.ops.explain import explain, hits_text, why  # noqa: E402
from fsguard.ops.when import parse_when  # noqa: E402
from fsguard.rules.checks import load_settings  # noqa: E402

def command_modules() -> list[str]:
    """Every module in fsguard/ops/commands/ adds its subcommands with ``register(subparsers)``;
    one whose name starts with ``_`` holds helpers the others share and is not an area."""
    import pkgutil

    import fsguard.ops.commands

    return sorted(f"fsguard.ops.commands.{m.name}" for m in pkgutil.iter_modules(fsguard.ops.commands.__path__)
                  if not m.name.startswith("_"))


# ------------------------------------------------------------------ serve


def cmd_serve(ctx: Context) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from fsguard.call.pipeline import load_stage
    from fsguard.service import logs
    from fsguard.service.app import App
    from fsguard.service.server import CallServer

    settings = ctx.settings
    if ctx.args.listen:
        settings.esl.listen = ctx.args.listen
    logs.configure(settings.logging, stream=STDERR)
    from fsguard.config import unknown_variables

    for var in unknown_variables():
        structlog.get_logger("fsguard.config").warning("config.unknown_variable", variable=var,
                                                       note="names no setting; ignored")
    try:
        for name in settings.policy.stages:
            load_stage(name)   # before the database is opened; exit 1, as ``config check`` says it
    except ConfigError as exc:
        raise CLIError(f"configuration error: {exc}") from None
    ctx.require_schema()
    app = App(settings, db=ctx.db)
    try:
        app.policy.load()   # before the first call: decisions are made from it
    except SQLAlchemyError as exc:
        raise CLIError(f"database: cannot load the policy (lists, customers, freezes): "
                       f"{str(exc).splitlines()[0]}") from None
    server = CallServer(app)
    try:
        server.server.init_socket()   # bind now: a port in use is one line, before anything else starts
    except OSError as exc:
        raise CLIError(f"esl.listen {settings.esl.listen}: cannot listen: {exc.strerror or exc}") from None
    server.on_reload = lambda: load_settings(ctx.args.config)
    for hook in SERVE_HOOKS:
        hook(app, server)
    server.serve_forever()
    return 0


# --------------------------------------------------------------------- db


def cmd_db(ctx: Context) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from fsguard.store import migrate

    args = ctx.args
    ctx.creates_database = args.db_command == "upgrade"
    try:
        if args.db_command == "upgrade":
            before = migrate.current(ctx.db)
            migrate.upgrade(ctx.db, args.revision)
            after, head = migrate.current(ctx.db), migrate.head()
            data = {"before": before, "after": after, "head": head, "changed": before != after}
            print_json_or_text(args.json, data, lambda: (
                f"migrated the database from {before or 'empty'} to {after} (head {head})" if before != after
                else f"the database is already at {after}{' (head)' if after == head else f' (head is {head})'}; "
                     "nothing to do"))
        elif args.db_command == "downgrade":
            if args.revision == "base" and not args.yes:
                raise CLIError("'db downgrade base' drops every table and all of fsguard's data: "
                               "add --yes if that is what you want")
            before = migrate.current(ctx.db)
            migrate.downgrade(ctx.db, args.revision)
            after = migrate.current(ctx.db)
            data = {"before": before, "after": after, "head": migrate.head(), "changed": before != after}
            print_json_or_text(args.json, data, lambda: (
                f"downgraded the database from {before or 'empty'} to {after or 'base (empty)'}" if before != after
                else f"the database is already at {after or 'base (empty)'}; nothing to do"))
        elif args.db_command == "current":
            current, head = migrate.current(ctx.db), migrate.head()
            print_json_or_text(args.json, {"current": current, "head": head, "at_head": current == head},
                               lambda: f"{current or 'none'}"
                                       f"{' (head)' if current == head else f' (head is {head})'}")
        else:
            return 2
    except migrate.CommandError as exc:
        raise CLIError(f"db {args.db_command}: {str(exc).splitlines()[0]}") from None
    except SQLAlchemyError as exc:
        raise CLIError(f"database error: {str(exc).splitlines()[0]}") from None
    return 0


# ------------------------------------------------------------------ calls


def cmd_calls(ctx: Context) -> int:
    from fsguard.store import records

    ctx.require_schema()
    if ctx.args.calls_command == "show":
        data = records.call_as_dict(records.find_call(ctx.db, find_call(ctx, ctx.args.uuid).uuid))
        from fsguard.rules.review import call_review

        data["review"] = call_review(ctx.db, data["uuid"])
        print_json_or_text(ctx.args.json, data, lambda: "\n".join([explain(data), *hits_text(data["review"])]))
        return 0
    calls = [records.call_as_dict(c) for c in _find_calls(ctx)]
    if ctx.args.json:
        print_json(calls)
        return 0
    if ctx.args.csv:
        print_csv(["started_at", "uuid", "ani", "ani_raw", "caller_name", "dnis", "direction", "outcome", "why",
                   "action", "hangup_cause", "billsec", "risk", "node"],
                  [[c["started_at"], c["uuid"], c["ani"], c["ani_raw"], c["caller_name"], c["dnis"], c["direction"],
                    c["outcome"], why(c), c["action"], c["hangup_cause"], c["billsec"], c["risk"], c["node"]]
                   for c in calls])
        return 0
    print_table([[c["started_at"][:19].replace("T", " ") if c["started_at"] else "", c["uuid"], c["ani"] or c["ani_raw"],
                  c["dnis"], c["direction"], c["outcome"], why(c), c["hangup_cause"], c["billsec"]]
                 for c in calls],
                ["started (UTC)", "uuid", "caller", "dialled", "dir", "outcome", "why", "cause", "billsec"])
    return 0


#: what a stored call's outcome can be (calls refused over capacity or at shutdown are not stored)
CALL_OUTCOMES = ("routed", "rejected", "abandoned", "failed_open", "failed_closed")


def _find_calls(ctx: Context) -> list[Any]:
    """The calls matching ``fsguard calls``' filters, newest first."""
    from sqlalchemy import or_, select

    from fsguard.rules import numbers
    from fsguard.store.models import CallRecord, StageVerdict

    args = ctx.args
    query = select(CallRecord).order_by(CallRecord.started_at.desc()).limit(args.limit)
    if args.since:
        query = query.where(CallRecord.started_at >= parse_when(args.since, "--since", error=CLIError))
    if args.until:
        query = query.where(CallRecord.started_at < parse_when(args.until, "--until", error=CLIError))
    region = ctx.settings.node.default_region
    if args.ani:
        parsed = numbers.parse(args.ani, region)
        forms = {args.ani.strip()} | ({parsed.e164} if parsed.e164 else set())
        query = query.where(or_(CallRecord.ani.in_(forms), CallRecord.ani_raw.in_(forms)))
    if args.dnis:
        parsed = numbers.parse(args.dnis, region)
        forms = {args.dnis.strip()}
        if parsed.e164:   # FreeSWITCH hands the dialled number over in whatever form the carrier sent
            forms |= {parsed.e164, parsed.e164.lstrip("+")}
        query = query.where(CallRecord.dnis.in_(forms))
    if args.outcome:
        query = query.where(CallRecord.outcome == args.outcome)
    if args.stage or args.code:
        verdict = select(StageVerdict.call_uuid)
        if args.stage:
            # the calls this stage decided something about (not those it only let through)
            verdict = verdict.where(StageVerdict.stage == args.stage, StageVerdict.outcome != "continue")
        if args.code:
            code = args.code.strip()
            verdict = verdict.where(StageVerdict.code.startswith(code[:-1], autoescape=True) if code.endswith("*")
                                    else StageVerdict.code == code)
        query = query.where(CallRecord.uuid.in_(verdict))
    with ctx.db.begin() as session:
        return list(session.scalars(query))


# ------------------------------------------------------------------- main


def _stage_names() -> list[str]:
    from fsguard.call.pipeline import STAGES

    return list(STAGES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsguard", description="Call guard for FreeSWITCH.")
    parser.add_argument("--config", "-c", help="TOML settings file (default /etc/fsguard/fsguard.toml if present)")
    parser.add_argument("--version", action="version", version=f"fsguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="take calls from FreeSWITCH")
    p.add_argument("--listen", help="host:port for the Event Socket listener (overrides esl.listen)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("db", help="database schema: upgrade, downgrade, current")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="migrate to the latest schema (or REVISION); creates a SQLite file")
    up.add_argument("revision", nargs="?", default="head")
    up.add_argument("--json", action="store_true")
    down = dbsub.add_parser("downgrade", help="step back one migration (or to REVISION; 'base' needs --yes)")
    down.add_argument("revision", nargs="?", default="-1")
    down.add_argument("--yes", action="store_true", help="confirm a downgrade to base, which drops all data")
    down.add_argument("--json", action="store_true")
    dbsub.add_parser("current", help="show the schema revision").add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("calls", help="recent calls, and why each was decided as it was",
                       description="Recent calls, newest first, with the verdict that decided each one "
                                   "('why'); the filters combine.")
    p.add_argument("--limit", type=positive_int, default=20, help="at most this many calls (default 20)")
    p.add_argument("--since", metavar="WHEN", help="calls since a duration ago (2h, 7d) or an ISO date/time (UTC)")
    p.add_argument("--until", metavar="WHEN", help="calls before a duration ago or an ISO date/time (UTC)")
    p.add_argument("--ani", metavar="NUMBER", help="calls from this number (any usual form, or as presented)")
    p.add_argument("--dnis", metavar="NUMBER", help="calls to this dialled number")
    p.add_argument("--outcome", choices=CALL_OUTCOMES, help="calls with this outcome")
    p.add_argument("--stage", choices=sorted(_stage_names()),
                   help="calls this stage decided something about (challenged, rejected, routed ...)")
    p.add_argument("--code", help="calls with a verdict of this code (blocklist.hard), or codes starting "
                                  "with a prefix given with a trailing * (flood.*)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--csv", action="store_true",
                   help="CSV for a spreadsheet (cells that look like formulas are written as text)")
    csub = p.add_subparsers(dest="calls_command")
    show = csub.add_parser("show", help="every stage's verdict for one call")
    show.add_argument("uuid", help=f"the call's uuid, or a prefix of at least {MIN_UUID_PREFIX} characters that "
                                   "no other call shares")
    show.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calls)

    for name in command_modules():
        import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fsguard.service import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    # every command logs like serve: to stderr, so that stdout holds only the command's answer
    logs.configure(stream=STDERR)
    ctx = Context(args)
    try:
        return int(args.func(ctx) or 0)
    except BrokenPipeError:
        # the reader went away (`fsguard lists show --json | head`): stop quietly, as cat does,
        # and keep the interpreter from failing again when it flushes stdout at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except ConfigError as exc:
        print(f"fsguard: configuration error: {exc}", file=sys.stderr)
        return 2
    except CLIError as exc:
        print(f"fsguard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            print(f"fsguard: database error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        raise
    finally:
        ctx.close()


if __name__ == "__main__":
    raise SystemExit(main())
