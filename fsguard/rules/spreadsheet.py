"""CSV cells that a spreadsheet opens as text, never as a formula (CSV/formula injection).

A caller controls some of what fsguard stores (a caller id name, text an operator copied from a
complaint into a reason); Excel, LibreOffice and Google Sheets run a cell that starts with ``=``,
``+``, ``-`` or ``@`` (or a tab or carriage return before one) as a formula: ``=HYPERLINK(...)``
leaks data, ``=cmd|' /C calc'!A0`` runs a program on the reader's machine. Every CSV fsguard
writes goes through :func:`safe_cell`, which prefixes such a cell with ``'`` (the OWASP advice:
the spreadsheet shows the text and does not evaluate it), and every CSV fsguard reads goes
through :func:`unescape_cell`, so that an export imported again is what was exported.

A plain number keeps its sign: ``+12125550147`` is how fsguard writes every telephone number and
a spreadsheet reads it as a number, not as a formula that does anything.
"""

from __future__ import annotations

import csv
import re
from typing import Any, Iterable, TextIO

#: what makes a spreadsheet treat a cell as a formula
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9][0-9 .]*")


def looks_like_formula(text: str) -> bool:
    """True for a cell a spreadsheet would evaluate (``=1+1``, ``+SUM(1+1)``, ``@SUM(A1)``)."""
    return bool(text) and text[0] in FORMULA_START and not _PLAIN_NUMBER.fullmatch(text)


def safe_cell(value: Any) -> str:
    """The cell as text a spreadsheet shows and never runs."""
    text = "" if value is None else str(value)
    return "'" + text if looks_like_formula(text) else text


def unescape_cell(text: str) -> str:
    """The value :func:`safe_cell` wrote (the ``'`` it added removed)."""
    return text[1:] if text.startswith("'") and looks_like_formula(text[1:]) else text


def write_rows(stream: TextIO, header: list[str] | None, rows: Iterable[Iterable[Any]]) -> int:
    """Write a CSV of safe cells; returns the number of rows after the header."""
    writer = csv.writer(stream, lineterminator="\n")
    if header:
        writer.writerow([safe_cell(h) for h in header])
    count = 0
    for row in rows:
        writer.writerow([safe_cell(c) for c in row])
        count += 1
    return count
