"""``fsguard customers``: the callers routing knows (VIPs, own agents and queues, regions).

    fsguard customers add +12125550123 --name "Ada Lovelace" --account A-1001 --vip --agent 1001@default
    fsguard customers add +447700900123 --account A-1001          # a second number for A-1001
    fsguard customers import customers.csv [--skip-invalid] [--dry-run]
    fsguard customers show [NUMBER | --account A-1001] [--vip] [--json]
    fsguard customers remove NUMBER | --account A-1001

Importing this module also registers the customers eraser with ``fsguard erase``.
"""

from __future__ import annotations

import sys
from typing import Any

from fsguard.store import audit
from fsguard.ops.commands._common import (CLIError, Context, add_skip_invalid, area_parser, count_or_all, open_input,
                                          print_json, print_table, routing_traits)


def register(subparsers: Any) -> None:
    sub = area_parser(subparsers, "customers", func=cmd_customers,
                      help="customers for routing: VIPs, own agents and queues, regions",
                      description="The customers routing looks callers up in (by number).")

    a = sub.add_parser("add", help="add a customer, or update the one owning the numbers / account",
                       description="Add a customer with NUMBER(s), or update the customer these numbers (or "
                                   "--account) belong to: only the options given are changed.")
    a.add_argument("numbers", nargs="*", metavar="NUMBER",
                   help="E.164 (+12125550123) or as dialled in node.default_region")
    a.add_argument("--name")
    a.add_argument("--account", help="the customer's id in your own systems (shown to the agent)")
    vip = a.add_mutually_exclusive_group()
    vip.add_argument("--vip", dest="vip", action="store_true", default=None, help="a VIP customer")
    vip.add_argument("--no-vip", dest="vip", action="store_false", help="not (or no longer) a VIP")
    a.add_argument("--queue", help="own mod_callcenter queue (gold or gold@default); '' to clear")
    a.add_argument("--agent", help="own agent (1001@default), rung with routing.agent_target; '' to clear")
    a.add_argument("--region", help="the customer's region as you name it (EMEA, west); '' to clear")
    a.add_argument("--json", action="store_true")

    i = sub.add_parser("import", help="add or update customers from a CSV file",
                       description="CSV with a header row; columns: number (several separated by ';'), name, "
                                   "account, vip, queue, agent, region. Rows with the same account are one "
                                   "customer. Any bad row: nothing is imported (unless --skip-invalid).")
    i.add_argument("file", help="the CSV file ('-' for standard input)")
    add_skip_invalid(i)
    i.add_argument("--dry-run", action="store_true", help="check the file and say what would change")
    i.add_argument("--json", action="store_true",
                   help='print {"rows", "created", "updated", "numbers", "dry_run", "bad": [...]}')

    s = sub.add_parser("show", help="list customers, or show one by number or account")
    s.add_argument("number", nargs="?", metavar="NUMBER")
    s.add_argument("--account")
    s.add_argument("--vip", action="store_true", help="VIPs only")
    s.add_argument("--limit", type=count_or_all, default=0, help="at most this many (default all)")
    s.add_argument("--json", action="store_true")

    e = sub.add_parser("export", help="write every customer as CSV (the form import reads)",
                       description="One row per customer: numbers (separated by ;), name, account, vip, queue, "
                                   "agent, region. Cells a spreadsheet would run as a formula are written as text.")
    e.add_argument("--output", "-o", help="file to write (default: standard output)")

    r = sub.add_parser("remove", help="remove a number from its customer, or a whole customer",
                       description="Remove NUMBER from its customer (a customer left with no number goes "
                                   "too), or with --account the customer and all their numbers.")
    r.add_argument("number", nargs="?", metavar="NUMBER")
    r.add_argument("--account")
    r.add_argument("--json", action="store_true", help='print {"removed": "what was removed"}')


def cmd_customers(ctx: Context) -> int:
    ctx.require_schema()
    command = ctx.args.customers_command
    return {"add": _add, "import": _import, "show": _show, "remove": _remove, "export": _export}[command](ctx)


def _export(ctx: Context) -> int:
    from fsguard.rules import customers
    from fsguard.rules.spreadsheet import write_rows

    with ctx.db.begin() as session:
        found = customers.listing(session, vip_only=False, limit=None)
    rows = [[";".join(c.numbers), c.name or "", c.account_id or "", "yes" if c.vip else "no", c.queue or "",
             c.agent or "", c.region or ""] for c in found]
    header = ["number", "name", "account", "vip", "queue", "agent", "region"]
    if not ctx.args.output:
        write_rows(sys.stdout, header, rows)
        return 0
    try:
        with open(ctx.args.output, "w", newline="", encoding="utf-8") as out:
            count = write_rows(out, header, rows)
    except OSError as exc:
        raise CLIError(f"cannot write {ctx.args.output}: {exc.strerror or exc}") from None
    print(f"exported {count} customers to {ctx.args.output}")
    return 0


def _numbers(ctx: Context, raw: list[str]) -> list[str]:
    from fsguard.rules.customers import CustomerError, parse_numbers

    try:
        return parse_numbers(raw, ctx.settings.node.default_region)
    except CustomerError as exc:
        raise CLIError(str(exc)) from None


def _add(ctx: Context) -> int:
    from fsguard.rules import customers

    args = ctx.args
    nums = _numbers(ctx, args.numbers)
    given = {"name": args.name, "account_id": args.account, "vip": args.vip, "queue": args.queue,
             "agent": args.agent, "region": args.region}
    try:
        fields = customers.normalise_customer({k: v for k, v in given.items() if v is not None})
        if not nums and not args.account:
            raise customers.CustomerError("give at least one number (or --account to update a customer)")
        with ctx.db.begin() as session:
            saved = customers.save(session, nums, fields, source="cli")
            audit.record(session, actor=audit.cli_actor(), action="customer.save", subject=saved.customer.customer_id,
                         via="cli", details={"created": saved.created, "added_numbers": saved.added_numbers})
    except customers.CustomerError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print_json({**saved.customer.as_dict(), "created": saved.created, "added_numbers": saved.added_numbers})
        return 0
    c = saved.customer
    verb = "added" if saved.created else "updated"
    print(f"{verb} customer {c.customer_id}: {_summary(c)}")
    return 0


def _summary(c: Any) -> str:
    """A saved customer on one line, numbers first: what ``customers add`` just wrote."""
    parts = [", ".join(c.numbers) or "(no numbers)"]
    if c.name:
        parts.append(c.name)
    if c.vip:
        parts.append("VIP")
    return "; ".join(parts + routing_traits(c))


def _import(ctx: Context) -> int:
    from fsguard.rules import customers

    args = ctx.args
    stream = open_input(args.file)

    class Abort(Exception):
        pass

    result = None
    try:
        with stream, ctx.db.begin() as session:
            try:
                result = customers.import_csv(session, stream, ctx.settings.node.default_region,
                                              skip_invalid=args.skip_invalid)
            except customers.CustomerError as exc:
                raise CLIError(f"{args.file}: {exc}") from None
            except UnicodeDecodeError:
                raise CLIError(f"{args.file}: not UTF-8 text (save the CSV as UTF-8)") from None
            if (result.errors and not args.skip_invalid) or args.dry_run:
                raise Abort  # roll back: a bad file or a dry run changes nothing
            audit.record(session, actor=audit.cli_actor(), action="customer.import", subject=f"{result.rows} rows",
                         via="cli", details={"file": args.file, "created": result.created, "updated": result.updated})
    except Abort:
        pass
    assert result is not None
    if args.json and (args.dry_run or not result.errors or args.skip_invalid):
        print_json({"rows": result.rows, "created": result.created, "updated": result.updated,
                    "numbers": result.numbers, "dry_run": bool(args.dry_run), "bad": list(result.errors)})
        return 0
    shown = result.errors[:20]
    for line in shown:
        print(f"  {line}", file=sys.stderr)
    if len(result.errors) > len(shown):
        print(f"  ... and {len(result.errors) - len(shown)} more", file=sys.stderr)
    if result.errors and not args.skip_invalid:
        raise CLIError(f"{args.file}: {len(result.errors)} bad row(s), nothing imported "
                       "(fix them, or import the good rows with --skip-invalid)")
    what = "would import" if args.dry_run else "imported"
    print(f"{what} {result.rows} row(s): {result.created} customer(s) added, {result.updated} updated, "
          f"{result.numbers} number(s) added" + (f"; {len(result.errors)} bad row(s) skipped" if result.errors else ""))
    return 0


def _show(ctx: Context) -> int:
    from fsguard.rules import customers

    args = ctx.args
    with ctx.db.begin() as session:
        if args.number or args.account:
            row = customers.get(session, number=_numbers(ctx, [args.number])[0]) if args.number else \
                customers.get(session, account_id=args.account)
            if row is None:
                what = f"number {args.number}" if args.number else f"account {args.account}"
                raise CLIError(f"no customer with {what}")
            found = [customers.CustomerInfo.from_row(row)]
        else:
            found = customers.listing(session, vip_only=args.vip, limit=args.limit or None)
            total, total_numbers = customers.count(session)
    if args.json:
        print_json([c.as_dict() for c in found])   # one shape: a list, of one when a customer is named
        return 0
    print_table([[c.id, c.account_id, c.name, "yes" if c.vip else "", c.agent, c.queue, c.region,
                  " ".join(c.numbers)] for c in found],
                ["id", "account", "name", "vip", "agent", "queue", "region", "numbers"])
    if not (args.number or args.account):
        print(f"{len(found)} of {total} customer(s), {total_numbers} number(s)")
    return 0


def _remove(ctx: Context) -> int:
    from fsguard.rules import customers

    args = ctx.args
    if bool(args.number) == bool(args.account):
        raise CLIError("give a NUMBER or --account (one of them)")
    with ctx.db.begin() as session:
        if args.number:
            number = _numbers(ctx, [args.number])[0]
            done = customers.remove_number(session, number)
            missing = f"no customer has the number {number}"
        else:
            done = customers.remove_customer(session, args.account)
            missing = f"no customer with account {args.account}"
        if done is not None:
            audit.record(session, actor=audit.cli_actor(), action="customer.remove",
                         subject=args.number or args.account, via="cli", details={"result": done})
    if done is None:
        raise CLIError(missing)
    if args.json:
        print_json({"removed": done})
        return 0
    print(done)
    return 0
