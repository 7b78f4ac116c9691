"""What several ``fsguard`` areas share: the parser skeleton, the input file of an import, a customer in words.

The leading underscore is what keeps fsguard.ops.cli from taking this module for an area: it has no
``register()`` and adds no subcommand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from fsguard.ops.cli import CLIError, Context


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
