"""The statements that reach the database driver, for tests that count what a call costs.

SQLAlchemy's ``before_cursor_execute`` event does not see the calls' hot path
(``Database.statement`` runs on a DB-API connection of its own), so statements are watched where
every path meets: the cursor classes of the two drivers (fsguard's ``GreenCursor`` for SQLite,
``psycopg.Cursor`` for PostgreSQL), patched for the duration of a ``with`` block.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psycopg

from fsguard.store.db import GreenCursor

__all__ = ["DriverStatements", "driver_statements"]


class DriverStatements:
    """The statements seen that ``keep`` kept (it runs in the greenlet that runs the statement)."""

    def __init__(self, keep: Callable[[str], bool] | None = None) -> None:
        self.keep = keep or (lambda _sql: True)
        self.seen: list[str] = []

    def _note(self, sql: Any) -> None:
        text = sql.decode() if isinstance(sql, (bytes, bytearray)) else str(sql)
        if self.keep(text):
            self.seen.append(text)

    def take(self) -> list[str]:
        """The statements seen since the last take."""
        seen, self.seen = self.seen, []
        return seen


@contextmanager
def driver_statements(keep: Callable[[str], bool] | None = None) -> Iterator[DriverStatements]:
    watched = DriverStatements(keep)
    originals: list[tuple[type, str, Any]] = []
    for cls in (GreenCursor, psycopg.Cursor):
        for name in ("execute", "executemany"):
            own = cls.__dict__.get(name)   # None: inherited, deleted again afterwards
            original = own or getattr(cls, name)
            originals.append((cls, name, own))

            def patched(self: Any, query: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                watched._note(query)
                return _original(self, query, *args, **kwargs)

            setattr(cls, name, patched)
    try:
        yield watched
    finally:
        for cls, name, own in originals:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
