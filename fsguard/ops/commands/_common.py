"""What the ``fsguard`` commands share: the context a command runs in, CLIError, the output
helpers (JSON, tables, CSV), argument types, the parser skeleton of an area, the input file of an
import, a customer in words, and the hooks ``serve`` runs beside the listener.

fsguard.ops.cli (the entry point, which finds the areas) and every area import this module; it
imports neither. The leading underscore is what keeps fsguard.ops.cli from taking it for an area:
it has no ``register()`` and adds no subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from fsguard.config import Settings
from fsguard.rules.checks import load_settings

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


#: called with (app, server) before serving; other areas (admin HTTP, systemd, purge) add theirs
SERVE_HOOKS: list[Callable[[Any, Any], None]] = []




def area_parser(subparsers: Any, name: str, *, help: str, description: str,
                func: Callable[[Context], int] | None = None,
                metavar: str = "COMMAND") -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Add ``fsguard NAME COMMAND ...`` and return the subparsers its commands are added to.

    Every area has the same skeleton (the command is required and stored as ``NAME_command``);
    ``func`` handles all its commands, or is left out when each command sets its own.
    """
    p = subparsers.add_parser(name, help=help, description=description)
    if func is not None:
        p.set_defaults(func=func)
    return p.add_subparsers(dest=f"{name}_command", metavar=metavar, required=True)


def open_input(path: str) -> TextIO:
    """The file an import reads, ``-`` being standard input; one that cannot be opened is a CLIError.

    ``utf-8-sig`` because spreadsheets save CSV with a byte order mark, ``newline=""`` because the
    csv module must see the line ends itself (a quoted cell may hold one).
    """
    if path == "-":
        return sys.stdin
    try:
        return open(Path(path), newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None


def routing_traits(customer: Any) -> list[str]:
    """What routing acts on for a customer (own agent, own queue, region), only the ones set.

    ``customers`` and ``route explain`` both describe customers with it, so that an operator
    reads the same words in both.
    """
    traits = []
    if customer.agent:
        traits.append(f"own agent {customer.agent}")
    if customer.queue:
        traits.append(f"own queue {customer.queue}")
    if customer.region:
        traits.append(f"region {customer.region}")
    return traits
