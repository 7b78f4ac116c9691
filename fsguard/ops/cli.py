"""The ``fsguard`` command.

Each area adds its subcommands from a module in fsguard/ops/commands/ (``register(subparsers)``),
so this file stays the entry point and the core commands: serve, db, calls.
A command that fails for a reason the user can fix raises CLIError: one line, exit 1, no traceback.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from importlib import import_module  # noqa: E402
from typing import Any, Callable  # noqa: E402

import structlog  # noqa: E402

from fsguard import __version__  # noqa: E402
from fsguard.config import ConfigError, Settings  # noqa: E402
from fsguard.rules.checks import load_settings  # noqa: E402

def command_modules() -> list[str]:
    """Every module in fsguard/ops/commands/ adds its subcommands with ``register(subparsers)``;
    one whose name starts with ``_`` holds helpers the others share and is not an area."""
    import pkgutil

    import fsguard.ops.commands

    return sorted(f"fsguard.ops.commands.{m.name}" for m in pkgutil.iter_modules(fsguard.ops.commands.__path__)
                  if not m.name.startswith("_"))


class _CurrentStderr:
    """``sys.stderr`` as it is when a log line is written, not when logging was configured
    (``fsguard.ops.cli.main`` run in-process, by tests, sees sys.stderr swapped between runs)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


STDERR = _CurrentStderr()


class CLIError(Exception):
    """A problem the user can fix; printed as one line."""


class Context:
    """What a command needs: the settings and, on first use, the database."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._settings: Settings | None = None
        self._db: Any = None
        #: only ``db upgrade`` may create a SQLite file; any other command on a missing one is told to run it
        self.creates_database = False

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from fsguard.service import logs

            self._settings = load_settings(self.args.config)
            logs.configure(self._settings.logging, stream=STDERR)
        return self._settings

    @property
    def db(self) -> Any:
        if self._db is None:
            from fsguard.store.db import Database

            self._check_sqlite_file()
            self._db = Database(self.settings.database)
        return self._db

    def _check_sqlite_file(self) -> None:
        """A SQLite file is created by ``db upgrade`` only, and only in a directory that exists:
        a command run with the wrong settings must not leave an empty database (or directories
        owned by whoever ran it) behind and then complain about its schema."""
        path = self.settings.database.sqlite_path
        if path is None or path.exists():
            return
        if not self.creates_database:
            raise CLIError(f"no database at {path} (database.url): create it with 'fsguard db upgrade', "
                           "or point database.url / FSGUARD_DATABASE_URL at the existing one")
        if not path.parent.is_dir():
            raise CLIError(f"cannot create the database {path}: the directory {path.parent} does not exist "
                           "(create it, owned by the user fsguard runs as)")

    def require_schema(self) -> None:
        """Refuse to work on a database whose schema is not the one this fsguard expects."""
        from sqlalchemy.exc import SQLAlchemyError

        from fsguard.store import migrate

        try:
            current, head = migrate.current(self.db), migrate.head()
        except SQLAlchemyError as exc:
            raise CLIError(f"cannot reach the database ({self.db.url.render_as_string(hide_password=True)}): "
                           f"{str(exc).splitlines()[0]}") from None
        if current != head:
            raise CLIError(f"the database schema is at {current or 'nothing'}, this fsguard needs {head}: "
                           "run 'fsguard db upgrade'")

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


def operator_name() -> str:
    """Who runs the command, for the records it writes (``added_by``, ``created_by``, ``--by``):
    the sudo user if any, else the login name (from the environment or the password database,
    so that it is known under cron and systemd too)."""
    import getpass

    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def add_skip_invalid(parser: argparse.ArgumentParser) -> None:
    """The one name of "import the good rows and report the bad ones" (``--skip-invalid``); the
    older ``--skip-bad`` of ``lists import`` still works, unlisted."""
    parser.add_argument("--skip-invalid", dest="skip_invalid", action="store_true",
                        help="import the good rows and report the bad ones (default: a bad row stops the import)")
    parser.add_argument("--skip-bad", dest="skip_invalid", action="store_true", help=argparse.SUPPRESS)


def _whole_number(text: str, minimum: int, below: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{below}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts such as ``--limit``: a whole number of at least 1."""
    return _whole_number(text, 1, "must be at least 1")


def count_or_all(text: str) -> int:
    """An argparse type for a ``--limit`` whose 0 means "all": a whole number of 0 or more."""
    return _whole_number(text, 0, "must be 0 (all) or more")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_json_or_text(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    """A command's answer: ``data`` as JSON for scripts (``--json``), else ``text()`` for people.

    One call, so that every command with ``--json`` prints exactly one of the two; ``text`` is
    called only when it is printed (the words may need more of the data than the JSON does).
    """
    if as_json:
        print_json(data)
    else:
        print(text())


def print_csv(headers: list[str], rows: list[list[Any]]) -> None:
    """Rows as CSV on stdout for a spreadsheet: a cell that would run as a formula is text."""
    from fsguard.rules.spreadsheet import write_rows

    write_rows(sys.stdout, headers, ([json.dumps(c) if isinstance(c, (dict, list)) else c for c in row]
                                     for row in rows))


def print_table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


#: the shortest uuid prefix ``calls show`` and ``lists add --from-call`` accept
MIN_UUID_PREFIX = 6


def find_call(ctx: Context, text: str) -> Any:
    """The call a uuid or a unique prefix of at least MIN_UUID_PREFIX characters names.

    A prefix several calls share is refused with the candidates listed: acting on one of them
    (blocking its caller) because it sorted first would be acting on a guess.
    """
    from sqlalchemy import select

    from fsguard.store.models import CallRecord

    uuid = text.strip().lower()
    with ctx.db.begin() as session:
        call = session.get(CallRecord, uuid)
        if call is not None:
            return call
        if len(uuid) < MIN_UUID_PREFIX:
            raise CLIError(f"no call {uuid}: give the whole uuid or at least its first {MIN_UUID_PREFIX} characters")
        found = list(session.scalars(select(CallRecord).where(CallRecord.uuid.startswith(uuid))
                                     .order_by(CallRecord.started_at.desc()).limit(11)))
    if not found:
        raise CLIError(f"no call {uuid}")
    if len(found) > 1:
        shown = "; ".join(f"{c.uuid} ({f'{c.started_at:%Y-%m-%d %H:%M:%S}' if c.started_at else 'start unknown'}, from {c.ani or c.ani_raw or 'anonymous'})"
                          for c in found[:10])
        more = " and more" if len(found) > 10 else ""
        raise CLIError(f"{uuid!r} matches {len(found) if not more else 'more than 10'} calls: {shown}{more}; "
                       "give more of the uuid")
    return found[0]


# ------------------------------------------------------------------ serve


def cmd_serve(ctx: Context) -> int:
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
    ctx.require_schema()
    app = App(settings, db=ctx.db)
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


#: called with (app, server) before serving; other areas (admin HTTP, systemd, purge) add theirs
SERVE_HOOKS: list[Callable[[Any, Any], None]] = []


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
        from fsguard.ops.commands.review import hits_text
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
    from fsguard.ops.admin import parse_when
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


def why(call: dict[str, Any]) -> str:
    """The short answer to "why was this call decided so": the code of the verdict that decided
    it (the last one that did more than let the call through), with its stage."""
    deciding = [v for v in call["verdicts"] if v["outcome"] != "continue"]
    if not deciding:
        return ""
    verdict = next((v for v in deciding if v["outcome"] in ("reject", "error", "abandoned")), deciding[-1])
    label = verdict["code"] or verdict["outcome"]
    return label if label.startswith(verdict["stage"]) else f"{verdict['stage']}: {label}"


def explain(call: dict[str, Any]) -> str:
    """A call's story in words an operator can forward."""
    inputs = call.get("inputs") or {}
    caller = call["ani"] or (f"{call['ani_raw']!r} (no usable number)" if call["ani_raw"] else "anonymous")
    lines = [f"Call {call['uuid']}",
             f"  {call['direction']} call from {caller} to {call['dnis']}, started {call['started_at']}"
             f" on node {call['node']}"]
    if inputs.get("privacy"):
        lines.append("  the caller withheld their number (privacy); fsguard screened the network number")
    if inputs.get("presented") and inputs.get("network") and inputs["presented"] != inputs["network"]:
        lines.append(f"  caller id shown: {inputs['presented']}; network number: {inputs['network']}")
    lines.append("")
    for i, v in enumerate(call["verdicts"], 1):
        shadow = "" if v["enforced"] else " [shadow mode: not enforced]"
        code = f" {v['code']}" if v.get("code") else ""
        lines.append(f"  {i}. {v['stage']}: {v['outcome']}{code}{shadow} ({v['elapsed_ms']:.1f} ms)")
        if v["reason"]:
            lines.append(f"     {v['reason']}")
        lines += _explain_details(v.get("details") or {}, "     ")
    lines.append("")
    decided = f" after {call['decision_ms']:.1f} ms" if call.get("decision_ms") is not None else ""
    lines.append(f"  Outcome: {call['outcome'] or 'unknown'}{decided}; FreeSWITCH was told: {call['action'] or 'nothing'}")
    if call.get("ended_at"):
        lines.append(f"  Ended {call['ended_at']}: {call['hangup_cause']}, billed {call['billsec']} s")
    else:
        lines.append("  The call has not ended (or its end was not seen).")
    return "\n".join(lines)


def _explain_details(details: dict[str, Any], indent: str) -> list[str]:
    """A verdict's inputs one per line, nested ones indented, empty ones left out."""
    empty = (None, "", [], {})
    lines: list[str] = []
    for key, value in details.items():
        if value in empty:
            continue
        if isinstance(value, dict):
            lines.append(f"{indent}- {key}:")
            lines += _explain_details(value, indent + "  ")
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            lines.append(f"{indent}- {key}:")
            lines += [f"{indent}  * " + ", ".join(f"{k} {v}" for k, v in item.items() if v not in empty)
                      for item in value]
        elif isinstance(value, list):
            lines.append(f"{indent}- {key}: {', '.join(str(item) for item in value)}")
        else:
            lines.append(f"{indent}- {key}: {value}")
    return lines


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
