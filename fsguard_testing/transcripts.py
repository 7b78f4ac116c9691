"""Loader for the byte-exact FreeSWITCH captures kept with the tests in ``tests/captures/``.

The top of ``tests/captures/`` holds the first captures (FreeSWITCH 1.10.12 and a scripted
target) and ``fs-1.11/`` those of FreeSWITCH 1.11.1, each with its README, byte for byte as they
were made; ``fs-1.10.12/`` holds the ones :mod:`fsguard_testing.capture` records with fsguard
itself behind a recording proxy. The folder is
found relative to this file, so a clone anywhere has it; a capture that is missing raises
``FileNotFoundError`` (a test that needs it fails, never skips).

Two formats exist and both are parsed into the same :class:`Chunk` list:

* the top folder (FreeSWITCH 1.10.12, a scripted target)::

      >>>> SENT|RECV|TIMEOUT|EOF|CLOSED-BY-TARGET +S.SSSs
      <bytes exactly as they crossed the socket>
      <<<<

  SENT is what the target (our side) wrote, RECV what FreeSWITCH sent.  The bytes are
  the text between the marker line and ``\\n<<<<``; a RECV block may hold several
  frames read at once.  Only the outbound socket is captured, so every chunk has
  ``channel == "outbound"``.

* ``fs-1.11/`` (FreeSWITCH 1.11.1) and ``fs-1.10.12/`` (written by the recording proxy)::

      ----- <<< FROM-FS|>>> TO-FS [outbound|inbound] t=+S.SSSs N bytes -----
      <exactly N raw bytes>
      ----- end -----

  with ``##### NOTE ... #####`` annotations between chunks.  Here the chunk
  boundaries are the real recv()/send() boundaries, so tests can replay them to
  exercise split reads.

Files are read as bytes: some captures hold raw CR, TAB and UTF-8 that must survive
untouched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Direction = Literal["from_fs", "to_fs", "timeout", "eof", "closed_by_target"]

#: Every capture of the repository (``tests/captures`` beside the ``fsguard`` package); bare
#: names (``full.txt``, ``fs-1.11/09c_...txt``, ``fs-1.10.12/routed.txt``) resolve here.
CAPTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "captures"
DEFAULT_DIR = CAPTURES_DIR  # the old name, for code written against it
#: What fsguard itself exchanged with a real FreeSWITCH 1.10.12 (see its README).
FS_1_10_12_DIR = CAPTURES_DIR / "fs-1.10.12"


@dataclass(frozen=True)
class Chunk:
    """One captured read or write (or a timeout / EOF marker, with empty data)."""

    direction: Direction
    channel: str  # "outbound" (the socket application's connection) or "inbound"
    t: float  # seconds since the capture started
    data: bytes

    @property
    def from_fs(self) -> bool:
        return self.direction == "from_fs"


_OLD_MARK = re.compile(rb"^>>>> (SENT|RECV|TIMEOUT|EOF|CLOSED-BY-TARGET) \+([0-9.]+)s\n", re.M)
_OLD_END = b"\n<<<<\n"
_NEW_MARK = re.compile(
    rb"^----- (<<< FROM-FS|>>> TO-FS) \[(outbound|inbound)\] t=\+([0-9.]+)s (\d+) bytes -----\n", re.M
)
_NEW_END = b"\n----- end -----"

_OLD_DIRECTIONS: dict[bytes, Direction] = {
    b"SENT": "to_fs",
    b"RECV": "from_fs",
    b"TIMEOUT": "timeout",
    b"EOF": "eof",
    b"CLOSED-BY-TARGET": "closed_by_target",
}


def resolve(path: str | os.PathLike[str]) -> Path:
    """An existing path, or a name relative to ``tests/captures/``.

    Raises ``FileNotFoundError``: a missing capture is an error, never a reason to skip.
    """
    p = Path(path)
    if p.exists():
        return p
    candidate = CAPTURES_DIR / p
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"no capture {str(path)!r} (looked in {CAPTURES_DIR})")


def load(path: str | os.PathLike[str]) -> list[Chunk]:
    """Parse a capture file of either format into chunks, in file order."""
    raw = resolve(path).read_bytes()
    if _NEW_MARK.search(raw):
        return _load_new(raw)
    return _load_old(raw)


def _load_old(raw: bytes) -> list[Chunk]:
    chunks: list[Chunk] = []
    pos = 0
    while True:
        m = _OLD_MARK.search(raw, pos)
        if not m:
            break
        start = m.end()
        # The block's bytes end right before "\n<<<<\n".  Searching for the marker
        # (rather than the next ">>>>") keeps bytes that merely contain ">>>>" intact.
        end = raw.find(_OLD_END, start - 1)
        if end < 0:
            raise ValueError(f"unterminated block at byte {m.start()}")
        data = raw[start:end] if end >= start else b""
        chunks.append(Chunk(_OLD_DIRECTIONS[m.group(1)], "outbound", float(m.group(2)), data))
        pos = end + len(_OLD_END)
    return chunks


def _load_new(raw: bytes) -> list[Chunk]:
    chunks: list[Chunk] = []
    pos = 0
    while True:
        m = _NEW_MARK.search(raw, pos)
        if not m:
            break
        n = int(m.group(4))
        start = m.end()
        data = raw[start : start + n]
        if len(data) != n or raw[start + n : start + n + len(_NEW_END)] != _NEW_END:
            raise ValueError(f"chunk at byte {m.start()} does not hold {n} bytes")
        direction: Direction = "from_fs" if m.group(1).startswith(b"<<<") else "to_fs"
        chunks.append(Chunk(direction, m.group(2).decode(), float(m.group(3)), data))
        pos = start + n + len(_NEW_END)
    return chunks


def received_bytes(path: str | os.PathLike[str], channel: str = "outbound") -> bytes:
    """Everything FreeSWITCH sent on ``channel``, concatenated: a frame parser's input."""
    return b"".join(c.data for c in load(path) if c.from_fs and c.channel == channel)


def sent_bytes(path: str | os.PathLike[str], channel: str = "outbound") -> bytes:
    """Everything the target wrote to FreeSWITCH on ``channel``, concatenated."""
    return b"".join(c.data for c in load(path) if c.direction == "to_fs" and c.channel == channel)


def connect_reply(path: str | os.PathLike[str]) -> bytes:
    """The exact bytes of the CHANNEL_DATA reply to ``connect`` (ends with the blank line)."""
    stream = received_bytes(path, "outbound")
    if not stream.startswith(b"Event-Name: CHANNEL_DATA\n"):
        raise ValueError(f"{path}: outbound stream does not start with a connect reply")
    end = stream.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{path}: connect reply has no blank line")
    return stream[: end + 2]


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """Split a header block into (name, raw value) pairs the safe way: lines first.

    Values are NOT URL-decoded here: callers decide (see :func:`wire.fs_url_decode`).
    Lines without ``": "`` are kept with an empty value so anomalies stay visible.
    """
    out: list[tuple[str, str]] = []
    for line in block.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        name, sep, value = line.partition(": ")
        out.append((name, value if sep else ""))
    return out


def available() -> list[Path]:
    """Every ESL capture of the repository (top folder, fs-1.11, fs-1.10.12), for parametrised tests.

    Raises ``FileNotFoundError`` when a capture folder is missing or empty, so that a
    parametrised test errors at collection instead of silently running for no file.
    """
    files: list[Path] = []
    for folder in (CAPTURES_DIR, CAPTURES_DIR / "fs-1.11", FS_1_10_12_DIR):
        found = sorted(f for f in folder.glob("*.txt") if not f.name.endswith(".sip.txt"))
        if not found:
            raise FileNotFoundError(f"no captures in {folder}")
        files += found
    return files
