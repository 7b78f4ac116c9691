"""``fsguard lists``: the allow, block and Do-Not-Originate lists.

    fsguard lists add +1 212 555 0147 --block 7 --reason "abusive caller" --expires 30d
    fsguard lists add +1900* --block 8 --action busy --reason "premium-rate range"
    fsguard lists add --from-call 3f2c9a... --block 7        # the caller of a recorded call
    fsguard lists add +18005550100 --dno                     # our own inbound-only number
    fsguard lists add +442079460000 --allow --reason "head office"
    fsguard lists show [NUMBER] [--json]
    fsguard lists remove NUMBER [--dnis D]
    fsguard lists import blocklist.csv [--skip-invalid] [--dry-run]
    fsguard lists export > lists.csv
    fsguard lists purge

Also here, when the module is imported: the purge job that runs beside ``fsguard serve``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import structlog

from fsguard.store import audit
from fsguard.rules import counters, lists
from fsguard.ops.commands._common import (MIN_UUID_PREFIX, SERVE_HOOKS, CLIError, Context, add_skip_invalid,
                                          area_parser, count_or_all, find_call, open_input, operator_name, print_json,
                                          print_table)

log = structlog.get_logger("fsguard.screening")

#: how often the purge job runs beside ``fsguard serve`` (seconds)
PURGE_EVERY = 900.0


def register(subparsers: Any) -> None:
    sub = area_parser(subparsers, "lists", help="allow / block / do-not-originate lists",
                      description="The lists screening reads: allow, block (levels 0-5 soft, 6+ hard) "
                                  "and do-not-originate (our own inbound-only numbers).")

    add = sub.add_parser("add", help="add or replace an entry",
                         description="Numbers in any usual form are stored in E.164; a prefix ends with * (+1900*).")
    add.add_argument("number", nargs="?", help="number or prefix (+12125550147, 0044 20 7946 0000, +1900*)")
    add.add_argument("--from-call", metavar="UUID", help="the caller of this recorded call (instead of NUMBER): its "
                     f"uuid or a prefix of at least {MIN_UUID_PREFIX} characters no other call shares")
    _kind_options(add, required=True)
    _entry_options(add)
    add.add_argument("--json", action="store_true", help="print the entry as JSON")
    add.set_defaults(func=cmd_add)

    rm = sub.add_parser("remove", help="remove the entries of a number or prefix")
    rm.add_argument("number")
    rm.add_argument("--dnis", help="only the entry for this dialled number")
    rm.add_argument("--kind", choices=lists.KINDS, help="only an entry of this kind")
    rm.add_argument("--json", action="store_true", help='print {"removed": [entries]}')
    rm.set_defaults(func=cmd_remove)

    show = sub.add_parser("show", help="the entries covering a number, or every entry")
    show.add_argument("number", nargs="?")
    show.add_argument("--dnis", help="which entry applies to calls to this dialled number")
    show.add_argument("--kind", choices=lists.KINDS)
    show.add_argument("--source", help="only entries from this source (auto, cli, import)")
    show.add_argument("--all", action="store_true", help="include expired entries")
    show.add_argument("--limit", type=count_or_all, default=0, help="at most this many entries")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    imp = sub.add_parser("import", help="import entries from a CSV file",
                         description="Columns: number,kind,level,reason,expires,dnis,action (a header row names "
                                     "them; without one this order is assumed). Every row is checked first; if any "
                                     "is bad nothing is written, unless --skip-invalid. Options fill empty cells.")
    imp.add_argument("file", help="CSV file ('-' for standard input)")
    add_skip_invalid(imp)
    imp.add_argument("--dry-run", action="store_true", help="check the file, write nothing")
    imp.add_argument("--json", action="store_true",
                     help='print {"rows", "imported", "dry_run", "bad": [{"line", "problem"}], "warnings"}')
    _kind_options(imp, required=False)
    _entry_options(imp)
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="write the list as CSV (the form import reads)")
    exp.add_argument("--output", "-o", help="file to write (default: standard output)")
    exp.add_argument("--kind", choices=lists.KINDS)
    exp.add_argument("--all", action="store_true", help="include expired entries")
    exp.set_defaults(func=cmd_export)

    purge = sub.add_parser("purge", help="drop old call counters and long-expired entries now")
    purge.add_argument("--json", action="store_true", help='print {"counters": N, "entries": N}')
    purge.set_defaults(func=cmd_purge)


def _kind_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--allow", action="store_true", help="always let this caller through")
    group.add_argument("--block", type=int, metavar="LEVEL", help="0 pass, 1-5 soft (must verify), 6+ hard (rejected)")
    group.add_argument("--dno", action="store_true",
                       help="our own inbound-only number: a call presenting it is spoofed")


def _entry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default=None, help="why (shown to operators in every verdict)")
    p.add_argument("--expires", metavar="WHEN", help="30d, 12h, or a date (2026-12-31); default: never")
    p.add_argument("--dnis", help="only for calls to this dialled number")
    p.add_argument("--action", help="for a hard block: reject (default), busy, transfer:TARGET")


def _kind(args: argparse.Namespace) -> tuple[str | None, int | None]:
    if args.allow:
        return "allow", None
    if args.dno:
        return "dno", None
    if args.block is not None:
        return "block", args.block
    return None, None


def _region(ctx: Context) -> str:
    return ctx.settings.node.default_region


# ------------------------------------------------------------------ add / remove


def cmd_add(ctx: Context) -> int:
    args = ctx.args
    ctx.require_schema()
    if bool(args.number) == bool(args.from_call):
        raise CLIError("give a NUMBER or --from-call UUID (one of them)")
    reason = args.reason
    number = args.number
    note = None
    if args.from_call:
        number, reason, note = _caller_of(ctx, args.from_call, reason)
    kind, level = _kind(args)
    try:
        spec = lists.make_spec(number, kind=kind or "", level=level, dnis=args.dnis, reason=reason or "",
                               expires=args.expires, action=args.action, source="cli", added_by=operator_name(),
                               region=_region(ctx))
    except lists.ListError as exc:
        raise CLIError(str(exc)) from None
    with ctx.db.begin() as session:
        entry, replaced = lists.add(session, spec)
        data = lists.entry_dict(entry)
        audit.record(session, actor=audit.cli_actor(), action="list.add", subject=data["number"], reason=spec.reason,
                     via="cli", details={"entry": lists.describe(data), "from_call": args.from_call})
    if args.json:
        print_json({"entry": data, "replaced": replaced, "from_call": note})
        return 0
    if note:
        print(note)
    print(f"added: {lists.describe(data)}")
    if replaced:
        print(f"  replaced: {lists.describe(replaced)}")
    if spec.kind == "block" and spec.level < lists.HARD_LEVEL and spec.level > 0:
        print("  soft block: the caller must pass verification (screening.soft_action)")
    return 0


def _caller_of(ctx: Context, uuid: str, reason: str | None) -> tuple[str, str, str]:
    """The network number of a recorded call's caller (even if it was withheld), a default reason, and a note."""
    from fsguard.store import records

    call = records.find_call(ctx.db, find_call(ctx, uuid).uuid)   # refuses an ambiguous prefix
    if not call.ani:
        raise CLIError(f"call {call.uuid} has no caller number to block (anonymous or unreadable: {call.ani_raw!r})")
    withheld = " (the caller had withheld the number)" if (call.inputs or {}).get("privacy") else ""
    note = f"the caller of call {call.uuid} is {call.ani}{withheld}"
    return call.ani, reason if reason is not None else f"caller of call {call.uuid}", note


def cmd_remove(ctx: Context) -> int:
    args = ctx.args
    ctx.require_schema()
    region = _region(ctx)
    try:
        number, is_prefix = lists.parse_pattern(args.number, region)
        dnis = lists.operator_dnis(args.dnis, region) if args.dnis else None
    except lists.ListError as exc:
        raise CLIError(str(exc)) from None
    with ctx.db.begin() as session:
        gone = lists.remove(session, number, is_prefix, dnis=dnis, kind=args.kind)
        covering = [] if gone or is_prefix else lists.entries_for(session, number)
        if gone:
            audit.record(session, actor=audit.cli_actor(), action="list.remove",
                         subject=number + ("*" if is_prefix else ""), via="cli",
                         details={"removed": [lists.describe(e) for e in gone]})
    if not gone:
        hint = ""
        if covering:
            hint = "; it is covered by " + ", ".join(e.pattern for e in covering) + " (remove that prefix instead)"
        raise CLIError(f"no entry for {number}{'*' if is_prefix else ''}{' for ' + dnis if dnis else ''}{hint}")
    if args.json:
        print_json({"removed": gone})
        return 0
    for entry in gone:
        print(f"removed: {lists.describe(entry)}")
    return 0


# ------------------------------------------------------------------ show


def cmd_show(ctx: Context) -> int:
    args = ctx.args
    ctx.require_schema()
    region = _region(ctx)
    if args.number:
        return _show_number(ctx, region)
    with ctx.db.begin() as session:
        rows = [lists.entry_dict(e) for e in lists.all_entries(session, kind=args.kind, source=args.source,
                                                                include_expired=args.all, limit=args.limit or None)]
    if args.json:
        print_json({"number": None, "dnis": None, "applies": None, "entries": rows, "counts": {}})
        return 0
    if not rows:
        print("the list is empty" if not (args.kind or args.source) else "no matching entries")
        return 0
    print_table([[r["number"], r["kind"], "" if r["level"] is None else r["level"], r["action"],
                  "all" if r["dnis"] == "*" else r["dnis"], (r["expires_at"] or "never")[:19].replace("T", " "),
                  r["source"], r["reason"]] for r in rows],   # the whole reason: it is why
                ["number", "kind", "level", "action", "dialled", "expires (UTC)", "source", "reason"])
    return 0


def _show_number(ctx: Context, region: str) -> int:
    args = ctx.args
    try:
        number, is_prefix = lists.parse_pattern(args.number, region)
        dnis = lists.operator_dnis(args.dnis, region) if args.dnis else lists.ANY_DNIS
    except lists.ListError as exc:
        raise CLIError(str(exc)) from None
    with ctx.db.begin() as session:
        if is_prefix:
            covering = [e for e in lists.all_entries(session, include_expired=args.all)
                        if e.number.startswith(number)]
            applies = None
        else:
            covering = lists.entries_for(session, number, include_expired=args.all)
            applies = lists.lookup(session, number, dnis)
        counts = {} if is_prefix else counters.recent_counts(session, number, now=time.time())
        rows = [lists.entry_dict(e) for e in covering]
        applied = lists.entry_dict(applies) if applies is not None else None
    if args.json:
        print_json({"number": number + ("*" if is_prefix else ""), "dnis": dnis, "applies": applied,
                    "entries": rows, "counts": counts})
        return 0
    label = number + ("*" if is_prefix else "")
    if not rows:
        print(f"{label}: no entry" + ("" if is_prefix else " (calls are screened by the other rules)"))
    else:
        if not is_prefix:
            scope = "calls to any dialled number" if dnis == lists.ANY_DNIS else f"calls to {dnis}"
            print(f"{label}, {scope}: " + (lists.describe(applied) if applied else "no entry applies"))
        print("entries:" if not is_prefix else f"entries under {label}:")
        for row in rows:
            print(f"  {lists.describe(row)}")
    if counts:
        for key, c in sorted(counts.items()):
            scope = "all dialled numbers" if key == lists.ANY_DNIS else key
            print(f"calls ({scope}): {c['hour']} in the last hour, {c['day']} in the last day, "
                  f"{c['short_day']} ended within seconds")
    return 0


# ------------------------------------------------------------------ import / export


def cmd_import(ctx: Context) -> int:
    args = ctx.args
    ctx.require_schema()
    kind, level = _kind(args)
    defaults = {"kind": kind, "level": level, "reason": args.reason, "expires": args.expires, "dnis": args.dnis,
                "action": args.action}
    defaults = {k: v for k, v in defaults.items() if v not in (None, "")}
    progress = _Progress()
    handle = open_input(args.file)
    try:
        with handle:
            report = lists.read_csv(handle, defaults=defaults, region=_region(ctx), added_by=operator_name(),
                                    progress=progress)
    except UnicodeDecodeError:
        raise CLIError(f"{args.file} is not UTF-8 text") from None
    progress.done()
    if args.json and (args.dry_run or not report.errors or args.skip_invalid):
        written = 0
        if not args.dry_run:
            with ctx.db.begin() as session:
                written = lists.import_entries(session, report.specs, progress=progress)
            progress.done()
        print_json({"rows": report.rows, "imported": written, "would_import": len(report.specs),
                    "dry_run": bool(args.dry_run),
                    "bad": [{"line": line, "problem": message} for line, message in report.errors],
                    "warnings": [{"line": line, "problem": message} for line, message in report.warnings]})
        return 0
    for line, message in report.errors[:50]:
        print(f"line {line}: {message}", file=sys.stderr)
    if len(report.errors) > 50:
        print(f"... and {len(report.errors) - 50} more bad rows", file=sys.stderr)
    for line, message in report.warnings[:20]:
        print(f"line {line}: warning: {message}", file=sys.stderr)
    if report.errors and not args.skip_invalid:
        raise CLIError(f"{len(report.errors)} bad row(s) of {report.rows}; nothing was written "
                       "(fix them, or use --skip-invalid to import the good rows)")
    if args.dry_run:
        print(f"{len(report.specs)} entries would be imported"
              + (f", {len(report.errors)} bad rows skipped" if report.errors else "") + " (dry run: nothing written)")
        return 0
    with ctx.db.begin() as session:
        written = lists.import_entries(session, report.specs, progress=progress)
        audit.record(session, actor=audit.cli_actor(), action="list.import", subject=f"{written} entries", via="cli",
                     reason=args.reason or "", details={"file": args.file, "rows": report.rows,
                                                         "bad_rows": len(report.errors)})
    progress.done()
    skipped = f"; {len(report.errors)} bad row(s) skipped" if report.errors else ""
    print(f"imported {written} entries from {report.rows} rows{skipped}")
    return 0


class _Progress:
    """Progress of a large import (lists.read_csv and import_entries report every 10,000 rows),
    as tqdm bars on standard error, and only on a terminal: a script or a log gets the result
    line alone. tqdm draws, throttles and sizes the bar (rows, rate, elapsed) on any terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.bar: Any = None
        self.what = ""

    def __call__(self, what: str, count: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or what != self.what:
            self.done()
            self.what = what
            self.bar = tqdm(desc=what, unit=" rows", unit_scale=True, file=sys.stderr, leave=True)
        self.bar.update(count - self.bar.n)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_export(ctx: Context) -> int:
    args = ctx.args
    ctx.require_schema()
    try:
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    count = -1
    try:
        with ctx.db.begin() as session:
            for chunk in lists.csv_text(lists.export_rows(session, include_expired=args.all, kind=args.kind)):
                out.write(chunk)
                count += 1
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"exported {count} entries to {args.output}")
    return 0


def cmd_purge(ctx: Context) -> int:
    ctx.require_schema()
    counter_rows, entries = _purge(ctx.db, ctx.settings)
    if ctx.args.json:
        print_json({"counters": counter_rows, "entries": entries})
        return 0
    print(f"purged {counter_rows} call counter rows and {entries} expired entries")
    return 0


# ------------------------------------------------------------------ beside the server


def _purge(db: Any, settings: Any) -> tuple[int, int]:
    cfg = settings.screening
    keep = max(counters.DAY, cfg.seconds("nuisance_window")) + counters.BUCKET_SECONDS
    with db.begin() as session:
        return (counters.purge(session, keep_seconds=keep),
                lists.purge_expired(session, expired_seconds=cfg.seconds("expired_retention")))


def _purge_job(app: Any, server: Any) -> None:
    """Every 15 minutes: drop counter buckets no window needs and entries long expired."""
    import gevent

    from fsguard.store.db import DatabaseError

    def loop() -> None:
        while True:
            gevent.sleep(PURGE_EVERY)
            try:
                counter_rows, entries = _purge(app.db, app.settings)
                if counter_rows or entries:
                    log.info("screening.purged", counters=counter_rows, entries=entries)
            except DatabaseError as exc:
                log.error("screening.purge_failed", error=str(exc).splitlines()[0])

    gevent.spawn(loop)

if _purge_job not in SERVE_HOOKS:
    SERVE_HOOKS.append(_purge_job)
