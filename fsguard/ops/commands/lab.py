"""``fsguard lab``: see fsguard decide a scripted morning of calls, in-process, in seconds.

    fsguard lab                     # a throwaway directory, removed afterwards
    fsguard lab --keep /tmp/lab     # keep the policy, database, recordings and log to look at
    fsguard -c /tmp/lab/fsguard.toml calls show UUID

The scenario itself (policy, callers, expected outcomes) is fsguard/ops/lab.py; docs/lab.rst.
"""

from __future__ import annotations

from fsguard.ops.explain import explain
from fsguard.ops.commands._common import CLIError, Context, print_json
import shutil
import sys
from pathlib import Path
from typing import Any


#: real seconds per channel second (fsguard.ops.lab.TIME_SCALE; repeated here so that the CLI does not
#: import the lab, the simulator and the stages for every other command)
DEFAULT_TIME_SCALE = 0.02


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lab", help="run a scripted morning of calls through fsguard and the FreeSWITCH simulator (a demo)",
        description="Start fsguard in this process on a throwaway SQLite database with a demo policy, place a "
                    "scripted morning of simulated calls through it and show what happened to each caller and "
                    "why. Exit status 1 if any call was not decided as the policy says.")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the lab in DIR (fsguard.toml, fsguard.db, recordings/, fsguard.log) to look at it "
                        "afterwards with 'fsguard -c DIR/fsguard.toml calls show UUID'; DIR must not hold a lab "
                        "database already")
    p.add_argument("--json", action="store_true", help="every call as JSON: expected, simulator view, call record")
    p.add_argument("--explain", action="store_true", help="after the table, each call's full story "
                                                          "(as 'fsguard calls show' tells it)")
    p.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                   help=f"real seconds per channel second (default {DEFAULT_TIME_SCALE}: 50 times faster than life)")
    p.set_defaults(func=cmd_lab)


def _directory(keep: str | None) -> tuple[Path, bool]:
    from fsguard.ops import lab

    if not keep:
        return lab.throwaway_directory(), False
    directory = Path(keep).expanduser()
    if directory.exists() and not directory.is_dir():
        raise CLIError(f"--keep {keep}: not a directory")
    if (directory / "fsguard.db").exists():
        raise CLIError(f"--keep {keep}: {directory / 'fsguard.db'} exists; the lab needs a fresh database "
                       "(remove it, or give another directory)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--keep {keep}: cannot create it: {exc.strerror or exc}") from None
    return directory, True


def cmd_lab(ctx: Context) -> int:
    from fsguard.ops import lab
    from fsguard.service import logs
    from fsguard.config import LoggingSettings

    a = ctx.args
    if not 0 < a.time_scale <= 1:
        raise CLIError("--time-scale must be above 0 and at most 1 (1 = real time)")
    directory, kept = _directory(a.keep)
    log_path = directory / "fsguard.log"
    progress = sys.stderr.isatty() and not a.json

    def tell(call: lab.LabCall) -> None:
        if progress:
            mark = "ok" if call.ok else "NOT AS EXPECTED"
            print(f"\r\033[K  call {call.n}: {call.scenario.name} ... {mark}", end="", file=sys.stderr, flush=True)

    with open(log_path, "a", encoding="utf-8") as log_file:
        logs.configure(LoggingSettings(level="info", format="json"), stream=log_file)
        if not a.json:
            print(f"fsguard lab: demo policy {directory / 'fsguard.toml'}, fsguard log {log_path}\n")
        try:
            report = lab.run(directory, time_scale=a.time_scale, on_call=tell)
        except lab.LabError as exc:
            raise CLIError(f"the lab could not run: {exc} (see {log_path})") from None
        finally:
            if progress:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            logs.configure(LoggingSettings(level="warning"))   # the log file is about to close

    keep_it = kept or not report.ok
    if a.json:
        print_json(lab.as_json(report) | {"kept": keep_it})
    else:
        print(lab.table(report))
        if a.explain:
            for call in report.calls:
                if call.record is not None:
                    print(f"\n--- {call.n}. {call.scenario.name} ({call.scenario.story})\n    expected: "
                          f"{call.expect.says}{'' if call.ok else ' -- NOT AS EXPECTED: ' + '; '.join(call.problems)}")
                    print(explain(call.record))
        _closing_words(report, directory, keep_it, kept)
    if not keep_it:
        shutil.rmtree(directory, ignore_errors=True)
    return 0 if report.ok else 1


def _program() -> str:
    """How the user ran fsguard (``.venv/bin/fsguard`` from ``make lab``), for commands to copy."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name != "fsguard":
        return "fsguard"
    found = shutil.which("fsguard")
    if found and Path(found).resolve() == Path(argv0).resolve():
        return "fsguard"
    return argv0


def _closing_words(report: Any, directory: Path, keep_it: bool, kept: bool) -> None:
    config = directory / "fsguard.toml"
    fsguard = _program()
    if keep_it:
        if not kept:
            print(f"\nSome calls were not decided as expected: the lab is kept in {directory} to look into.")
        example = report.calls[0].result.uuid if report.calls else "UUID"
        print(f"\nLook around (the lab's database and policy, in {directory}):\n"
              f"  {fsguard} -c {config} calls                # the morning's calls\n"
              f"  {fsguard} -c {config} calls show {example}\n"
              f"  {fsguard} -c {config} lists show           # the demo lists and the automatic blocks\n"
              f"  {fsguard} -c {config} outbound frozen      # the number the agents froze\n"
              f"  {fsguard} -c {config} recordings list\n"
              f"Try your own calls against the same policy:\n"
              f"  {fsguard} -c {config} serve &\n"
              f"  {fsguard} -c {config} simulate call --ani 13125550121 --dnis 18005550100")
    else:
        print("\nTo look at the calls afterwards (calls show UUID, lists show, outbound frozen...), "
              f"run: {fsguard} lab --keep DIR")
