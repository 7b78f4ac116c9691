"""What FreeSWITCH is told to do with a channel at the end of the chain, as a value.

An instruction is one dialplan application and its argument (``transfer default XML queues``,
``hangup CALL_REJECTED``); it is read once from the configured text (:meth:`Instruction.parse`) and
written back the same way (``str``) for the call record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instruction:
    """``app arg``: the application FreeSWITCH runs next on the channel."""

    app: str
    arg: str = ""

    @classmethod
    def parse(cls, text: str) -> Instruction:
        """``"transfer 9999 XML announcements"`` -> Instruction("transfer", "9999 XML announcements")."""
        app, _, arg = text.strip().partition(" ")
        return Hangup(arg or "NORMAL_CLEARING") if app == "hangup" else Route(app, arg)

    @property
    def hangs_up(self) -> bool:
        return self.app == "hangup"

    def __str__(self) -> str:
        return f"{self.app} {self.arg}" if self.arg else self.app


@dataclass(frozen=True)
class Route(Instruction):
    """Send the call on: ``transfer``, ``callcenter`` or ``bridge``."""


@dataclass(frozen=True, init=False)
class Hangup(Instruction):
    """Hang up with a cause FreeSWITCH sends back to the carrier."""

    def __init__(self, cause: str = "NORMAL_CLEARING") -> None:
        object.__setattr__(self, "app", "hangup")
        object.__setattr__(self, "arg", cause)

    @property
    def cause(self) -> str:
        return self.arg
