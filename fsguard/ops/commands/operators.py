"""``fsguard operators ...``: the people who may use the console, and their roles.

    fsguard operators add NAME --role viewer|supervisor|admin [--password-stdin | --generate]
    fsguard operators set NAME [--role ROLE] [--password-stdin | --generate] [--disable | --enable] [--unlock]
    fsguard operators remove NAME
    fsguard operators list [--json]

Without ``--password-stdin`` or ``--generate`` the password is asked for on the terminal. A
generated password (a random token) is printed once; only its argon2 hash is stored. The console
is off until the first operator exists. Every change is written to the audit trail.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from fsguard.store import audit
from fsguard.ops import operators
from fsguard.ops.commands._common import CLIError, Context, area_parser, print_json, print_table


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sub = area_parser(subparsers, "operators", help="console operators: add, set, remove, list",
                      description="People who may log in to the console, with their role.", func=cmd_operators)
    add = sub.add_parser("add", help="add an operator")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=operators.ROLES)
    add.add_argument("--json", action="store_true")
    _password_options(add)
    s = sub.add_parser("set", help="change an operator's role or password, disable, enable or unlock")
    s.add_argument("name")
    s.add_argument("--role", choices=operators.ROLES)
    _password_options(s, ask=False)
    state = s.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse logins and end the operator's sessions")
    state.add_argument("--enable", action="store_true")
    s.add_argument("--unlock", action="store_true", help="lift a lock-out after failed logins")
    s.add_argument("--json", action="store_true")
    rm = sub.add_parser("remove", help="remove an operator (their audit lines stay)")
    rm.add_argument("name")
    rm.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", help="every operator with role and last login")
    ls.add_argument("--json", action="store_true")


def _password_options(p: argparse.ArgumentParser, *, ask: bool = True) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    group.add_argument("--generate", action="store_true", help="generate a random password and print it once")
    if not ask:
        group.add_argument("--password", action="store_true", dest="ask_password", help="ask for a new password")


def _password(args: argparse.Namespace, *, required: bool) -> tuple[str | None, bool]:
    """The new password and whether it was generated (to be printed)."""
    if args.generate:
        return operators.new_token(), True
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CLIError("--password-stdin: standard input had no password")
        return line, False
    if not required and not getattr(args, "ask_password", False):
        return None, False
    if not sys.stdin.isatty():
        raise CLIError("no terminal to ask for a password: use --password-stdin or --generate")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise CLIError("the passwords differ")
    return first, False


def cmd_operators(ctx: Context) -> int:
    args = ctx.args
    ctx.require_schema()
    command = args.operators_command
    who = audit.cli_actor()
    try:
        if command == "list":
            with ctx.db.begin() as session:
                rows = [operators.as_dict(o) for o in operators.listing(session)]
            if args.json:
                print_json(rows)
            elif not rows:
                print("no operator: the console is off ('fsguard operators add NAME --role admin')")
            else:
                print_table([[r["name"], r["role"], "disabled" if r["disabled"] else
                              ("locked" if r["locked_until"] else ""), (r["last_login_at"] or "never")[:19]
                              .replace("T", " ")] for r in rows], ["name", "role", "state", "last login (UTC)"])
            return 0
        if command == "add":
            operators.check_name(args.name)
            password, generated = _password(args, required=True)
            assert password is not None
            with ctx.db.begin() as session:
                added = operators.as_dict(operators.add(session, args.name, args.role, password))
                audit.record(session, actor=who, action="operator.add", subject=args.name, via="cli",
                             details={"role": args.role})
            if args.json:   # a generated password is in it: shown once, as in the text
                print_json({"operator": added, **({"password": password} if generated else {})})
                return 0
            print(f"added operator {args.name} ({args.role})")
            if generated:
                print(f"password (shown once): {password}")
            return 0
        if command == "set":
            password, generated = _password(args, required=False)
            disabled = True if args.disable else (False if args.enable else None)
            with ctx.db.begin() as session:
                op = operators.update(session, args.name, role=args.role, password=password, disabled=disabled,
                                      unlock=args.unlock)
                changes = {k: v for k, v in (("role", args.role), ("disabled", disabled),
                                             ("password", "changed" if password else None),
                                             ("unlocked", True if args.unlock else None)) if v is not None}
                audit.record(session, actor=who, action="operator.set", subject=args.name, via="cli", details=changes)
                state = f"{op.role}{', disabled' if op.disabled else ''}"
                data = operators.as_dict(op)
            if args.json:
                print_json({"operator": data, **({"password": password} if generated else {})})
                return 0
            print(f"operator {args.name}: {state}")
            if generated:
                print(f"password (shown once): {password}")
            return 0
        if command == "remove":
            with ctx.db.begin() as session:
                operators.remove(session, args.name)
                audit.record(session, actor=who, action="operator.remove", subject=args.name, via="cli")
            if args.json:
                print_json({"removed": args.name})
                return 0
            print(f"removed operator {args.name}")
            return 0
    except operators.OperatorError as exc:
        raise CLIError(str(exc)) from None
    return 2
