"""``fsguard recordings ...`` and ``fsguard erase NUMBER``; the periodic purge beside ``serve``.

    fsguard recordings list [--number N] [--held] [--expired] [--json]
    fsguard recordings show UUID [--json]
    fsguard recordings hold UUID --reason "case 2026-114"   /  release UUID
    fsguard recordings purge [--dry-run] [--json]
    fsguard recordings pause UUID  /  resume UUID            (mask while card data is spoken)
    fsguard recordings start UUID [--purpose P]  /  stop UUID (on-demand recording)
    fsguard recordings verify [UUID]                          (hash the files again)
    fsguard erase NUMBER [--dry-run] [--json]
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import gevent
import structlog

from fsguard.store import audit
from fsguard.rules import erasure, numbers, recordings
from fsguard.ops.commands._common import (SERVE_HOOKS, CLIError, Context, area_parser, operator_name, positive_int,
                                          print_csv, print_json, print_json_or_text, print_table)
from fsguard.config import parse_duration
from fsguard.rules.numbers import InvalidNumber

log = structlog.get_logger("fsguard.recording")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rs = area_parser(sub, "recordings", func=cmd_recordings, metavar="ACTION",
                     help="recordings: list, show, legal hold, purge, pause/resume, on-demand",
                     description="Recordings made under the recording policy, their retention and legal holds.")

    ls = rs.add_parser("list", help="recent recordings, newest first")
    ls.add_argument("--number", help="only this caller's (or called party's) recordings")
    ls.add_argument("--held", action="store_true", help="only those under legal hold")
    ls.add_argument("--expired", action="store_true", help="only those past their retain-until date")
    ls.add_argument("--status", choices=["recording", "complete", "missing", "unreadable"])
    ls.add_argument("--limit", type=positive_int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--csv", action="store_true", help="CSV for a spreadsheet (cells that look like formulas "
                                                       "are written as text)")

    show = rs.add_parser("show", help="one recording: file, purpose, retention, hold, hash, masked intervals")
    show.add_argument("uuid", help="the call's uuid (or its first 8+ characters)")
    show.add_argument("--json", action="store_true")

    hold = rs.add_parser("hold", help="put a recording under legal hold (no purge, no erasure)")
    hold.add_argument("uuid")
    hold.add_argument("--reason", required=True, help="the case or request it is kept for")
    hold.add_argument("--json", action="store_true", help="print the recording as JSON")
    release = rs.add_parser("release", help="lift a legal hold")
    release.add_argument("uuid")
    release.add_argument("--json", action="store_true", help="print the recording as JSON")

    purge = rs.add_parser("purge", help="delete recordings past their retention (not those under legal hold)")
    purge.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    purge.add_argument("--json", action="store_true")

    for name, text in (("pause", "mask a live recording (card data): silence is recorded until resume"),
                       ("resume", "unmask a paused recording"),
                       ("stop", "stop an on-demand recording")):
        a = rs.add_parser(name, help=text)
        a.add_argument("uuid")
        a.add_argument("--by", help="who asks (an agent id), kept with the request (default: your user name)")
        a.add_argument("--json", action="store_true", help='print {"uuid", "action", "recording"}')
    st = rs.add_parser("start", help="start recording a live call whose rule is on_demand")
    st.add_argument("uuid")
    st.add_argument("--purpose", help="purpose of this recording (default: the rule's)")
    st.add_argument("--by", help="who asks (an agent id), kept with the recording (default: your user name)")
    st.add_argument("--json", action="store_true", help='print {"uuid", "action", "recording"}')

    vf = rs.add_parser("verify", help="hash recordings again and compare with the SHA-256 taken at the end of the call")
    vf.add_argument("uuid", nargs="?")
    vf.add_argument("--json", action="store_true")

    e = sub.add_parser("erase", help="erase a number's personal data on request (recordings, call records, ...)",
                       description="Remove recordings and personal data of NUMBER: call records are anonymised "
                                   "(kept for statistics), anything under legal hold is kept. Prints what was "
                                   "done, what was kept and why.")
    e.add_argument("number", help="the person's number, in any usual form (+44 20 7946 0000, 15551234567...)")
    e.add_argument("--dry-run", action="store_true", help="say what would be erased, change nothing")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_erase)


# ------------------------------------------------------------------ commands


def cmd_recordings(ctx: Context) -> int:
    ctx.require_schema()
    args, settings, db = ctx.args, ctx.settings, ctx.db
    action = args.recordings_command
    try:
        if action == "list":
            rows = recordings.list_recordings(db, number=args.number, held=True if args.held else None,
                                              expired=args.expired, status=args.status, limit=args.limit,
                                              region=settings.node.default_region)
            if args.json:
                print_json(rows)
            elif args.csv:
                columns = list(rows[0]) if rows else ["uuid", "number"]
                print_csv(columns, [[r.get(c) for c in columns] for r in rows])
            else:
                print_table([[r["started_at"][:19].replace("T", " "), r["uuid"], r["number"], r["mode"],
                                  r["purpose"], r["retain_until"][:10], "HOLD" if r["legal_hold"] else "",
                                  r["status"], _duration(r["duration"])] for r in rows],
                                ["started (UTC)", "call", "number", "mode", "purpose", "keep until", "hold",
                                 "status", "length"])
            return 0
        if action == "show":
            data = recordings.show(db, args.uuid)
            print_json_or_text(args.json, data, lambda: describe(data))
            return 0
        if action == "hold":
            data = recordings.hold(db, args.uuid, args.reason)
            audit.record_now(db, actor=audit.cli_actor(), action="recording.hold", subject=data["uuid"],
                             reason=args.reason, via="cli")
            if args.json:
                print_json(data)
                return 0
            print(f"recording of call {data['uuid']} is under legal hold: {data['hold_reason']}")
            return 0
        if action == "release":
            data = recordings.release(db, args.uuid)
            audit.record_now(db, actor=audit.cli_actor(), action="recording.release", subject=data["uuid"], via="cli")
            if args.json:
                print_json(data)
                return 0
            print(f"legal hold lifted on call {data['uuid']}; kept until {data['retain_until'][:10]} "
                  f"({data['purpose']} retention)")
            return 0
        if action == "purge":
            report = recordings.purge(db, settings, dry_run=args.dry_run)
            if not args.dry_run and (report.deleted or report.failed):
                audit.record_now(db, actor=audit.cli_actor(), action="recording.purge",
                                 subject=f"{len(report.deleted)} recordings", via="cli",
                                 details={"deleted": [r["uuid"] for r in report.deleted][:1000],
                                          "failed": len(report.failed)})
            print_json_or_text(args.json, report.as_dict(), lambda: purge_text(report))
            return 0 if report.ok else 1
        if action in ("pause", "resume", "start", "stop"):
            by = args.by or operator_name()
            if action == "start":
                data = recordings.start(db, settings, args.uuid, purpose=args.purpose, by=by)
                if args.json:
                    print_json({"uuid": data["uuid"], "action": action, "recording": data})
                    return 0
                print(f"recording call {data['uuid']} for {data['purpose']} to {data['path']}")
            elif action == "stop":
                data = recordings.stop(db, settings, args.uuid, by=by)
                if args.json:
                    print_json({"uuid": data["uuid"], "action": action, "recording": data})
                    return 0
                print(f"stopped recording call {data['uuid']}: {_duration(data['duration'])}, "
                      f"sha256 {data['sha256'] or '-'} ({data['status']})")
            else:
                result = getattr(recordings, action)(db, settings, args.uuid, by=by)
                if args.json:
                    print_json({"uuid": args.uuid, "action": action,
                                    "recording": result if isinstance(result, dict) else None})
                    return 0
                print(f"recording of call {args.uuid} {'paused (masked)' if action == 'pause' else 'resumed'}")
            return 0
        if action == "verify":
            results = recordings.verify(db, args.uuid)
            print_json_or_text(args.json, results, lambda: verify_text(results))
            return 0 if all(r["ok"] for r in results) else 1
    except recordings.RecordingError as exc:
        raise CLIError(str(exc)) from None
    return 2


def cmd_erase(ctx: Context) -> int:
    ctx.require_schema()
    settings = ctx.settings
    try:
        # the rule every command uses for a typed number: "123" is refused, not erased as +1123
        numbers.to_e164(ctx.args.number, settings.node.default_region)
        report = erasure.erase(ctx.db, ctx.args.number, region=settings.node.default_region, settings=settings,
                               dry_run=ctx.args.dry_run)
        if not ctx.args.dry_run:
            audit.record_now(ctx.db, actor=audit.cli_actor(), action="erasure", subject=ctx.args.number, via="cli",
                             details={"ok": report.ok})
    except InvalidNumber as exc:
        raise CLIError(str(exc)) from None
    print_json_or_text(ctx.args.json, report.as_dict(), report.text)
    return 0 if report.ok else 1


# ------------------------------------------------------------------- texts


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def describe(r: dict[str, Any]) -> str:
    """One recording in words, for ``recordings show``."""
    lines = [f"Recording of call {r['uuid']}",
             f"  file:      {r['path']}",
             f"  status:    {r['status']}" + (f" - {r['error']}" if r["error"] else ""),
             f"  started:   {r['started_at']} by {r['started_by']} ({r['mode']}, {r['rule'] or 'default'}), "
             f"{'stereo' if r['stereo'] else 'mono'}",
             f"  consent:   {'notice played before recording' if r['consent'] else 'no notice played'}",
             f"  ended:     {r['ended_at'] or 'still recording'}",
             f"  party:     {r['number'] or 'unknown'} ({r['direction']})",
             f"  purpose:   {r['purpose']}, kept until {r['retain_until']}"]
    if r["legal_hold"]:
        lines.append(f"  LEGAL HOLD since {r['held_at']}: {r['hold_reason']} (no purge or erasure touches it)")
    lines.append(f"  size:      {r['size_bytes'] if r['size_bytes'] is not None else '-'} bytes, "
                 f"{_duration(r['duration'])}")
    lines.append(f"  sha256:    {r['sha256'] or '-'}")
    if r["masks"]:
        lines.append("  masked (silence recorded):")
        for m in r["masks"]:
            end = f"{m['to_second']:.1f}s" if m["to_second"] is not None else "(still masked)"
            lines.append(f"    {m['from_second']:.1f}s - {end}  requested by {m['requested_by'] or '?'}")
    from fsguard.ops.explain import hits_text

    lines += hits_text(r.get("review"))
    return "\n".join(lines)


def purge_text(report: recordings.PurgeReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"purge at {report.at:%Y-%m-%d %H:%M:%S}Z{' (dry run: nothing deleted)' if report.dry_run else ''}"]
    for d in report.deleted:
        lines.append(f"  {verb} {d['uuid']} ({d['purpose']}, kept until {d['retain_until'][:10]}): {d['note']}")
    for h in report.held:
        lines.append(f"  kept {h['uuid']} (retention ended {h['retain_until'][:10]}): legal hold - {h['hold_reason']}")
    for f in report.failed:
        lines.append(f"  FAILED {f['uuid']}: {f['error']}; its record is kept, the next purge tries again")
    lines.append(f"{len(report.deleted)} {verb}, {len(report.held)} kept under legal hold, {len(report.failed)} failed")
    return "\n".join(lines)


def verify_text(results: list[dict[str, Any]]) -> str:
    """``recordings verify`` in words: a line a recording, then how many are intact."""
    lines = [f"{'ok ' if r['ok'] else 'BAD'} {r['uuid']}  {r['problem'] or r['path']}" for r in results]
    lines.append(f"{sum(r['ok'] for r in results)} of {len(results)} recording(s) intact")
    return "\n".join(lines)


# ------------------------------------------------------------- periodic purge


def periodic_purge(app: Any, server: Any) -> None:
    """``fsguard serve`` purges every ``recording.purge_interval`` and finishes recordings whose
    call end was missed. Every node runs it; purging one recording is idempotent and row-locked."""
    interval = parse_duration(app.settings.recording.purge_interval, "recording.purge_interval")
    if interval <= 0:
        log.info("recording.periodic_purge_off")
        return

    def loop() -> None:
        gevent.sleep(random.uniform(0, min(interval, 60.0)))  # nodes started together do not purge together
        while not server.stopping:
            settings = app.settings  # the one in effect (a reload may have changed the retention)
            try:
                recordings.finalize_stale(app.db, settings)
                report = recordings.purge(app.db, settings)
                if report.failed:
                    log.error("recording.purge_incomplete", failed=[f["uuid"] for f in report.failed])
            except recordings.RecordingError as exc:
                log.error("recording.purge_skipped", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database outage
                log.error("recording.purge_error", error=f"{type(exc).__name__}: {exc}")
            wait = parse_duration(app.settings.recording.purge_interval)
            if wait <= 0:
                log.info("recording.periodic_purge_off", reason="recording.purge_interval set to 0 by a reload")
                return
            gevent.sleep(wait)

    gevent.spawn(loop)


if periodic_purge not in SERVE_HOOKS:
    SERVE_HOOKS.append(periodic_purge)
