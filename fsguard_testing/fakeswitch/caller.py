"""The caller: who is on a simulated channel and what they do.

A :class:`Caller` describes the channel (SIP or loopback, its numbers and variables) and the
person on it: the keys they press (``digits="auto"``: the code they heard read out), when they
hang up, how long a routed call lasts, whether a bridged far end answers.
:class:`CallerBehaviour` plays that person on the channel: they hear the prompts, key digits
and hang up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from uuid import uuid4

#: A digit read out (``.../digits/4.wav``): the caller hears one digit of the code it keys back.
DIGIT_FILE = re.compile(r"(?:^|/)digits/(?:[^/]+/)*([0-9])(?:\.[A-Za-z0-9]+)?\Z")


@dataclass
class Caller:
    """What one simulated channel is and what its caller does.

    Timings are channel seconds.  The defaults describe a SIP call (mod_sofia) from
    15551234567 to 5000 in context ``public``; ``endpoint="loopback"`` reproduces the
    loopback-originated calls of most captures instead.
    """

    ani: str = "15551234567"  # Caller-Caller-ID-Number as FreeSWITCH reports it
    name: str = "Test Caller"  # Caller-Caller-ID-Name (may contain anything: %, CR, LF, UTF-8)
    dnis: str = "5000"  # Caller-Destination-Number
    network_ani: str | None = None  # Caller-ANI if it differs from ani
    context: str = "public"
    privacy: bool = False  # Caller-Privacy-Hide-Name/Number true
    variables: dict[str, str] = field(default_factory=dict)  # extra channel variables (sip_h_Identity, ...)
    uuid: str = field(default_factory=lambda: str(uuid4()))
    digits: str | None = None  # None: keys nothing; "42": those digits; "auto": the code it heard
    digit_delay: float = 0.5  # after a prompt starts, before the first key press
    inter_digit: float = 0.25  # between key presses
    hangup_after: float | None = None  # abandon: hang up this long after reaching the socket app
    talk_time: float = 1.0  # once routed, how long the call lasts before it ends
    answered_by_far_end: bool = True  # bridge: does the far end answer
    far_end_cause: str = "NORMAL_CLEARING"  # bridge failure cause (or the far end's hang-up cause)
    ring_time: float = 0.5  # bridge: how long the far end rings
    channel_data_raw: bytes | None = None  # send these exact bytes as the connect reply
    endpoint: str = "sofia"  # "sofia" or "loopback"
    channel_name: str | None = None  # default sofia/lab/<RAW ani>@<network_addr> (raw, as FreeSWITCH)
    network_addr: str = "192.0.2.10"
    sip_from_user: str | None = None  # default: ani
    unknown_apps: frozenset[str] = frozenset()  # applications this FreeSWITCH does not have
    playback_durations: dict[str, float] = field(default_factory=dict)  # file -> channel seconds
    dtmf_source: str = "RTP"
    session_id: int | None = None
    created_us: int | None = None  # Caller-Channel-Created-Time (microseconds since the epoch)
    loopback_leg_uuid: str | None = None


class CallerBehaviour:
    """The scripted caller on the channel (a part of :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def __init__(self) -> None:
        super().__init__()
        self.heard_code = ""  # the digits the caller heard read out: what digits="auto" keys
        self.digit_run_open = False  # the last thing heard was a digit: the next one extends the code
        self.collected_digits = ""  # every key FreeSWITCH collected (digits_dialed)

    def _hear(self, item: str) -> None:
        """The caller hears ``item``: track the code it would key with digits="auto"."""
        self.result.heard.append(item)
        m = DIGIT_FILE.search(item)
        if m:
            if self.digit_run_open:
                self.heard_code += m.group(1)
            else:
                self.heard_code = m.group(1)
                self.digit_run_open = True
        else:
            self.digit_run_open = False

    def _caller_keys(self) -> str:
        d = self.caller.digits
        if d is None:
            return ""
        if d == "auto":
            return self.heard_code
        return d

    def _dtmf(self, digit: str) -> None:
        self.collected_digits += digit
        self.result.dtmf += digit
        self.emit(
            "DTMF",
            post=[("DTMF-Digit", digit), ("DTMF-Duration", "2000"), ("DTMF-Source", self.caller.dtmf_source)],
            with_vars=False,
        )

    def _caller_hangup(self) -> None:
        if self.hung_up or self.finished:
            return
        cause = "NORMAL_CLEARING" if self.answered_t is not None else "ORIGINATOR_CANCEL"
        self._hangup(cause, by="caller")

    def _talk_over(self, by: str) -> None:
        if not self.hung_up:
            self._hangup("NORMAL_CLEARING", by=by)
