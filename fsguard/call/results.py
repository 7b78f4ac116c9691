"""What the call's actions come back with, as values: a stage never reads a raw completion event.

``Played`` says whether a sound was played (and FreeSWITCH's word when it was not), ``Collected``
the digits a caller keyed, and ``CallEnd`` how the call ended: hang-up cause, billsec and the
bridge's times, read once from CHANNEL_HANGUP_COMPLETE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: FreeSWITCH's playback result when the file was played (or the caller skipped it with a key)
FILE_PLAYED = "FILE PLAYED"


@dataclass(frozen=True)
class Played:
    """Whether a sound reached the caller; ``reason`` is FreeSWITCH's answer when it did not
    (FILE NOT FOUND, PLAYBACK ERROR, or "no result")."""

    ok: bool
    reason: str | None = None

    @classmethod
    def from_completion(cls, event: Mapping[str, str]) -> Played:
        result = event.get("Application-Response", "")
        return cls(True) if result == FILE_PLAYED else cls(False, result or "no result")


@dataclass(frozen=True)
class Collected:
    """The digits a caller keyed during one collection ('' when none)."""

    digits: str = ""


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class CallEnd:
    """How the call ended, from CHANNEL_HANGUP_COMPLETE (or the hang-up event when that never came).

    ``bridged`` says whether the leg was bridged to a far end that answered: None when the final
    event did not say (no linger), so only the leg's own ``answered`` and ``billsec`` are known.
    Times are FreeSWITCH's, in seconds since the epoch to the microsecond.
    """

    hangup_cause: str | None
    duration: int | None
    billsec: int | None
    answered: bool
    bridged: bool | None = None
    bridged_at: float | None = None
    ended_at: float | None = None
    #: originate_disposition: why a bridge failed (USER_BUSY, NO_ANSWER...), '' when it did not say
    disposition: str = ""

    @classmethod
    def from_event(cls, event: Mapping[str, str], *, hangup_cause: str | None, answered: bool) -> CallEnd:
        """Read the end from the channel's last event; ``answered`` is what the session saw."""
        billsec = _int(event.get("variable_billsec"))
        bridged: bool | None = None
        bridged_at: float | None = None
        if "variable_bridge_uepoch" in event:
            bridge_us = _int(event.get("variable_bridge_uepoch")) or 0
            bridged = bridge_us > 0
            bridged_at = bridge_us / 1e6 if bridged else None
        end_us = _int(event.get("variable_end_uepoch"))
        return cls(hangup_cause=hangup_cause, duration=_int(event.get("variable_duration")), billsec=billsec,
                   answered=answered or bool(billsec), bridged=bridged, bridged_at=bridged_at,
                   ended_at=end_us / 1e6 if end_us else None,
                   disposition=(event.get("variable_originate_disposition") or "").upper())

    @property
    def talk_seconds(self) -> float | None:
        """Seconds of conversation with the far end: end - bridge, else billsec; None if never bridged."""
        if self.bridged is False:
            return None
        if self.bridged and self.bridged_at is not None:
            if self.ended_at is not None and self.ended_at > self.bridged_at:
                return round(self.ended_at - self.bridged_at, 3)
            return float(self.billsec or 0)
        return float(self.billsec or 0) if self.answered else None
