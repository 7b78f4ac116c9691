"""A FreeSWITCH simulator for the outbound Event Socket: plays mod_event_socket + the core.

For every simulated channel the simulator opens a TCP connection to the target, exactly
as ``<action application="socket" data="host:port async full"/>`` does, and then behaves
as FreeSWITCH would, byte for byte where it matters (checked against the captures in
``tests/captures/`` and against mod_event_socket.c; tests/test_simulator_matches_freeswitch.py
runs fsguard on the simulator and on a real FreeSWITCH 1.10.12's recordings and compares them):

* the first command must be ``connect``; its reply is the channel's CHANNEL_DATA
  serialised like an event, values URL-encoded without double encoding (wire.py);
* a first command other than ``connect`` is processed but never answered (capture 12);
  the channel waits in the socket application until ``connect`` arrives;
* ``sendmsg`` execute is answered ``+OK`` at once (async mode) and the application is
  queued; the park loop runs it on the next 20 ms media tick, and whatever is queued behind it
  right after it, on the same tick; CHANNEL_EXECUTE / CHANNEL_EXECUTE_COMPLETE carry the
  sendmsg's ``Event-UUID`` as ``Application-UUID``;
* empty caller-profile fields are left out of events (no caller id name: no
  ``Caller-Caller-ID-Name``); ``transfer`` gives the channel a second profile (index 2,
  Transfer-Source, RDNIS) and the transfer variables;
* after ``myevents`` every channel event carries all channel variables (2-5 KB), sent as
  ``Content-Length`` + ``Content-Type: text/event-plain`` (or ``text/event-json``) and the
  body, sometimes in two writes as FreeSWITCH does (header block, then body);
* ``getvar`` answers the RAW value; the linger notice's ``Channel-Name`` is RAW too;
* hang-up with ``linger``: CHANNEL_HANGUP, the running application's completion,
  CHANNEL_UNPARK, the socket application's completion, CHANNEL_STATE x2,
  CHANNEL_HANGUP_COMPLETE (billing variables) and the ``Content-Disposition: linger``
  notice; then the socket stays open until ``exit`` (or ``linger N`` expires);
* without ``linger`` a caller hang-up gives CHANNEL_HANGUP, the disconnect notice and
  EOF (capture 03c);
* a target that closes (or sends ``exit``) before any application ran and without
  ``resume`` leaves the ringing channel stuck in the socket application: "stranded".

Known simplifications: queued applications run one after the other, as with
``event-lock: true``.  Real FreeSWITCH without event-lock runs an execute queued behind a
media application (playback, say, play_and_get_digits, sleep...) NESTED inside that
application's loop; the simulator records that as a violation when the queued application
is itself a media application, and runs ``break`` nested (it stops the app ahead) as
FreeSWITCH does.  Events FreeSWITCH would send that no target relies on (CHANNEL_CREATE,
PRIVATE_COMMAND, CHANNEL_DESTROY...) are not sent; XML event format is not simulated.

What the caller does is described by :class:`Caller`; what happened is returned as a
:class:`SimResult`.  One greenlet per channel does everything: it reads the target's
commands with a socket timeout equal to the time of the next scheduled channel event
(a playback ending, a caller's key press, a hang-up), so there are no polling sleeps and
no extra timer greenlets.  All channel timings are in *channel seconds*; ``time_scale``
real seconds pass per channel second (0.01: a hundred times faster than life).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import re
import socket as _stdsocket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from uuid import uuid4

import gevent
import gevent.pool
from gevent import socket as gsocket

from fsguard_testing import wire

__all__ = ["Caller", "SimResult", "FakeFreeSWITCH", "CALLER_CONTROLLED_VARIABLES", "Q850"]

#: One media frame: the park loop of an async socket runs queued applications per tick.
TICK = 0.02
#: FreeSWITCH waits this long (seconds) for the first command before giving up (read_packet(25)).
FIRST_PACKET_TIMEOUT = 25.0
#: A command block larger than this with no terminating blank line is treated as garbage.
MAX_COMMAND_BYTES = 256 * 1024

#: Events enabled by ``myevents`` (mod_event_socket.c parse_command).
MYEVENTS = frozenset(
    {
        "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA",
        "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
        "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING",
        "CHANNEL_PARK", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE",
        "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK", "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
    }
)

#: (Event-Calling-File, Event-Calling-Function, Event-Calling-Line-Number) as in FreeSWITCH 1.10.12.
CALLING: dict[str, tuple[str, str, str]] = {
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", "2021"),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", "2944"),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", "2967"),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", "3846"),
    "CHANNEL_PROGRESS_MEDIA": ("switch_channel.c", "switch_channel_perform_mark_pre_answered", "3560"),
    "CHANNEL_PROGRESS": ("switch_channel.c", "switch_channel_perform_mark_ring_ready_value", "3374"),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", "3445"),
    "CHANNEL_HANGUP_COMPLETE": ("switch_core_state_machine.c", "switch_core_session_reporting_state", "943"),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", "1002"),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", "1213"),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", "2408"),
    "CHANNEL_BRIDGE": ("switch_ivr_bridge.c", "audio_bridge_on_exchange_media", "1530"),
    "CHANNEL_UNBRIDGE": ("switch_ivr_bridge.c", "audio_bridge_on_exchange_media", "1622"),
    "DTMF": ("switch_channel.c", "switch_channel_dequeue_dtmf", "677"),
    "RECORD_START": ("switch_ivr_async.c", "record_callback", "1390"),
    "RECORD_STOP": ("switch_ivr_async.c", "record_callback", "1530"),
    "BACKGROUND_JOB": ("mod_event_socket.c", "api_exec", "1572"),
}

STATE_NUMBERS = {"CS_ROUTING": 2, "CS_EXECUTE": 4, "CS_HANGUP": 10, "CS_REPORTING": 11}

#: switch_call_cause_t values (hangup_cause_q850).
Q850: dict[str, int] = {
    "UNSPECIFIED": 0, "UNALLOCATED_NUMBER": 1, "NO_ROUTE_TRANSIT_NET": 2, "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6, "CALL_AWARDED_DELIVERED": 7, "NORMAL_CLEARING": 16, "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18, "NO_ANSWER": 19, "SUBSCRIBER_ABSENT": 20, "CALL_REJECTED": 21,
    "NUMBER_CHANGED": 22, "REDIRECTION_TO_NEW_DESTINATION": 23, "EXCHANGE_ROUTING_ERROR": 25,
    "DESTINATION_OUT_OF_ORDER": 27, "INVALID_NUMBER_FORMAT": 28, "FACILITY_REJECTED": 29,
    "RESPONSE_TO_STATUS_ENQUIRY": 30, "NORMAL_UNSPECIFIED": 31, "NORMAL_CIRCUIT_CONGESTION": 34,
    "NETWORK_OUT_OF_ORDER": 38, "NORMAL_TEMPORARY_FAILURE": 41, "SWITCH_CONGESTION": 42,
    "REQUESTED_CHAN_UNAVAIL": 44, "OUTGOING_CALL_BARRED": 52, "INCOMING_CALL_BARRED": 54,
    "BEARERCAPABILITY_NOTAUTH": 57, "BEARERCAPABILITY_NOTAVAIL": 58, "SERVICE_UNAVAILABLE": 63,
    "INCOMPATIBLE_DESTINATION": 88, "INVALID_MSG_UNSPECIFIED": 95, "MANDATORY_IE_MISSING": 96,
    "RECOVERY_ON_TIMER_EXPIRE": 102, "PROTOCOL_ERROR": 111, "INTERWORKING": 127, "SUCCESS": 142,
    "ORIGINATOR_CANCEL": 487, "CRASH": 500, "SYSTEM_SHUTDOWN": 501, "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503, "BLIND_TRANSFER": 600, "ATTENDED_TRANSFER": 601, "ALLOTTED_TIMEOUT": 602,
    "USER_CHALLENGE": 603, "MEDIA_TIMEOUT": 604, "PICKED_OFF": 605, "USER_NOT_REGISTERED": 606,
    "PROGRESS_TIMEOUT": 607, "GATEWAY_DOWN": 609,
}
_CAUSE_BY_NUMBER = {v: k for k, v in Q850.items()}

#: SIP response codes of the ``respond`` application -> hang-up cause (sofia_glue_sip_cause_to_freeswitch).
SIP_CAUSES = {
    400: "NORMAL_TEMPORARY_FAILURE", 401: "CALL_REJECTED", 402: "CALL_REJECTED", 403: "CALL_REJECTED",
    404: "UNALLOCATED_NUMBER", 405: "SERVICE_UNAVAILABLE", 407: "CALL_REJECTED", 408: "RECOVERY_ON_TIMER_EXPIRE",
    410: "NUMBER_CHANGED", 480: "NO_USER_RESPONSE", 484: "INVALID_NUMBER_FORMAT", 486: "USER_BUSY",
    487: "ORIGINATOR_CANCEL", 488: "INCOMPATIBLE_DESTINATION", 500: "NORMAL_TEMPORARY_FAILURE",
    502: "NETWORK_OUT_OF_ORDER", 503: "NORMAL_TEMPORARY_FAILURE", 504: "RECOVERY_ON_TIMER_EXPIRE",
    600: "USER_BUSY", 603: "CALL_REJECTED", 604: "NO_ROUTE_DESTINATION", 606: "INCOMPATIBLE_DESTINATION",
}

#: Variables whose value a caller controls (SIP From, display name...): ``getvar`` of these
#: returns raw, possibly CR/LF-bearing text (captures 09a/09b/14d).
CALLER_CONTROLLED_VARIABLES = frozenset(
    {
        "caller_id_name", "caller_id_number", "effective_caller_id_name", "effective_caller_id_number",
        "ani", "aniii", "channel_name", "chan_name", "origination_caller_id_name",
        "origination_caller_id_number", "username", "caller_id", "sip_user_agent",
        "sip_from_display", "sip_from_user", "sip_from_user_stripped", "sip_from_uri", "sip_full_from",
        "sip_contact_user", "sip_contact_uri", "sip_full_via", "sip_full_to", "sip_to_user",
        "sip_req_user", "sip_req_uri", "sip_call_id", "switch_r_sdp",
    }
)
_CALLER_CONTROLLED_PREFIXES = ("sip_h_", "sip_i_", "sip_p-", "sip_from_", "sip_full_", "sip_contact_", "sip_via_")

#: Applications the simulator knows; anything else is "Invalid Application" (capture badapp.txt).
_NOOP_APPS = frozenset(
    {
        "log", "info", "event", "ring_ready", "set_user", "hash", "limit", "db", "push", "unshift",
        "set_global", "set_profile_var", "privacy", "stop_record_session", "displace_session",
        "stop_displace_session", "bind_meta_app", "bind_digit_action", "clear_digit_action",
        "start_dtmf", "stop_dtmf", "start_dtmf_generate", "stop_dtmf_generate", "send_display",
        "redirect", "deflect", "wait_for_answer", "set_zombie_exec", "verbose_events", "socket",
        "break", "lua", "javascript", "python", "presence", "chat", "send_dtmf", "flush_dtmf",
        "detect_speech", "play_fsv", "record_fsv", "sched_broadcast", "sched_cancel", "sched_transfer",
        "set_audio_level", "soft_hold", "hold", "unhold", "mkdir", "rename", "system", "bgsystem",
        "jitterbuffer", "media_reset", "three_way", "strftime", "enable_heartbeat", "enable_keepalive",
        "unbind_meta_app", "capture", "cng_plc", "check_acl", "eval", "export_vars",
    }
)
#: Applications that stop on CF_BREAK (uuid_break, or the break application run from their loop).
_BREAKABLE_APPS = frozenset(
    {"playback", "endless_playback", "say", "phrase", "speak", "sleep", "play_and_get_digits", "read", "echo"}
)
#: Applications whose loop parses queued events: without event-lock, an execute queued behind
#: them runs NESTED inside them (switch_ivr_parse_all_events), not after them.
_EVENT_PARSING_APPS = _BREAKABLE_APPS | {"park"}
_ROUTING_APPS = frozenset({"transfer", "callcenter", "bridge", "fifo", "conference", "voicemail", "valet_park"})

_DIGIT_FILE = re.compile(r"(?:^|/)digits/(?:[^/]+/)*([0-9])(?:\.[A-Za-z0-9]+)?\Z")
_CMD_END = re.compile(rb"\n\r*\n")
_SAY_METHODS_WITH_DIGITS = ("iterated", "pronounced")

Outcome = str  # "routed" | "hungup" | "caller_hangup" | "fallback" | "stranded" | "refused" | "protocol_error"


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


@dataclass
class SimResult:
    """What happened to one simulated channel."""

    uuid: str
    outcome: Outcome | None = None
    route: str | None = None  # "transfer default XML queues", "callcenter support@default", "bridge ..."
    hangup_cause: str | None = None
    hangup_by: str | None = None  # "target" | "caller" | "far_end" | "freeswitch"
    answered: bool = False
    early_media: bool = False
    billsec: float = 0.0  # channel seconds from answer to hang-up
    heard: list[str] = field(default_factory=list)
    dtmf: str = ""  # digits the caller keyed (that FreeSWITCH collected)
    apps: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    late_commands: list[str] = field(default_factory=list)  # received after the channel hung up
    variables: dict[str, str] = field(default_factory=dict)
    exported: dict[str, str] = field(default_factory=dict)
    recordings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    event_names: list[str] = field(default_factory=list)
    events_sent: int = 0
    bytes_sent: int = 0
    target: tuple[str, int] | None = None
    linger: int | None = None  # what the target asked for: -1 (linger), N, or None
    started_at: float | None = None  # monotonic timestamps
    connected_at: float | None = None  # TCP connected
    connect_reply_at: float | None = None  # CHANNEL_DATA sent
    decided_at: float | None = None  # first routing / hang-up command received
    ended_at: float | None = None

    @property
    def decision_latency(self) -> float | None:
        """Real seconds from TCP connect to the first routing or hang-up command."""
        if self.decided_at is None or self.connected_at is None:
            return None
        return self.decided_at - self.connected_at

    @property
    def ok(self) -> bool:
        """No protocol violations and not a failure outcome."""
        return not self.violations and self.outcome not in ("stranded", "protocol_error", None)


_PROFILE_FIELDS_SOFIA = (
    "Direction", "Logical-Direction", "Username", "Dialplan", "Caller-ID-Name", "Caller-ID-Number",
    "Orig-Caller-ID-Name", "Orig-Caller-ID-Number", "Network-Addr",
)
_PROFILE_FIELDS_LOOPBACK = (
    "Direction", "Logical-Direction", "Dialplan", "Caller-ID-Name", "Caller-ID-Number", "Orig-Caller-ID-Name",
    "Orig-Caller-ID-Number", "Callee-ID-Name", "Callee-ID-Number",
)
_PROFILE_FIELDS_COMMON = (
    "ANI", "Destination-Number", "Unique-ID", "Source", "Transfer-Source", "Context", "RDNIS", "Channel-Name",
    "Profile-Index",
    "Profile-Created-Time", "Channel-Created-Time", "Channel-Answered-Time", "Channel-Progress-Time",
    "Channel-Progress-Media-Time", "Channel-Hangup-Time", "Channel-Transfer-Time", "Channel-Resurrect-Time",
    "Channel-Bridged-Time", "Channel-Last-Hold", "Channel-Hold-Accum", "Screen-Bit", "Privacy-Hide-Name",
    "Privacy-Hide-Number",
)


@lru_cache(maxsize=8)
def _profile_names(prefix: str, sofia: bool) -> tuple[str, ...]:
    fields = (_PROFILE_FIELDS_SOFIA if sofia else _PROFILE_FIELDS_LOOPBACK) + _PROFILE_FIELDS_COMMON
    return tuple(f"{prefix}-{f}" for f in fields)


def cause_name(text: str) -> str | None:
    """Normalise a hang-up cause given as a name or a Q.850 number; None if unknown."""
    text = text.strip().upper()
    if text in Q850:
        return text
    if text.isdigit() and int(text) in _CAUSE_BY_NUMBER:
        return _CAUSE_BY_NUMBER[int(text)]
    return None


def is_caller_controlled(name: str, value: str | None = None) -> bool:
    """Is ``name`` a variable the caller can put arbitrary text into?"""
    lname = name.lower()
    if lname in CALLER_CONTROLLED_VARIABLES or lname.startswith(_CALLER_CONTROLLED_PREFIXES):
        return True
    return value is not None and ("\r" in value or "\n" in value)


def split_args(text: str) -> list[str]:
    """Split an application argument on spaces like switch_separate_string (quotes kept together)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            # cleanup_separated_string: only \' \" \<space> \\ and \n \r \t \s are escapes;
            # any other backslash stays (so a regexp like \d+ survives).
            nxt = text[i + 1]
            if nxt in "'\" \\":
                cur.append(nxt)
            elif nxt in "nrts":
                cur.append({"n": "\n", "r": "\r", "t": "\t", "s": " "}[nxt])
            else:
                cur.append(ch + nxt)
            i += 2
            continue
        if ch == "'":
            quoted = not quoted
        elif ch == " " and not quoted:
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
        i += 1
    if cur:
        out.append("".join(cur))
    return out


# --------------------------------------------------------------------------- commands


@dataclass
class _Command:
    """One command frame read the way read_packet() does."""

    line: str  # first line (the command)
    headers: list[tuple[str, str]]
    body: bytes
    raw: str
    malformed_lines: int = 0
    has_cr: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def count(self, name: str) -> int:
        lname = name.lower()
        return sum(1 for k, _ in self.headers if k.lower() == lname)


def _parse_command(block: bytes, body: bytes) -> _Command:
    text = block.decode("utf-8", "surrogateescape")
    lines = re.split(r"[\r\n]+", text)
    headers: list[tuple[str, str]] = []
    malformed = 0
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            malformed += 1
            continue
        headers.append((name, value.lstrip(" ")))
    return _Command(lines[0], headers, body, text, malformed, "\r" in text.rstrip("\r\n"))


# --------------------------------------------------------------------------- apps


@dataclass
class _AppRun:
    """An application queued by sendmsg or running on the channel."""

    name: str
    arg: str
    event_uuid: str
    loops: int = 1
    gen: Iterator[float] | None = None
    on_abort: Callable[[], None] | None = None  # sets the variables of an interrupted run
    on_break: Callable[[], None] | None = None  # the same for a run stopped by uuid_break / break
    after_complete: Callable[[], None] | None = None  # e.g. transfer: the channel leaves the socket app
    reply: Callable[[str], None] | None = None  # static mode: the sendmsg reply waits for the app
    event_lock: bool = False  # "event-lock: true": no queued event runs nested inside this app
    pending_break: _AppRun | None = None  # a "break" queued behind it: runs at its first frame


@dataclass(order=True)
class _Timer:
    due: float  # monotonic
    seq: int
    ch_time: float = field(compare=False)
    fn: Callable[..., None] = field(compare=False)
    args: tuple = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)


class _Channel:
    """One simulated channel: its state, its socket, and the loop that drives both."""

    def __init__(self, sim: FakeFreeSWITCH, caller: Caller) -> None:
        self.sim = sim
        self.caller = caller
        self.ts = sim.time_scale
        self.result = SimResult(uuid=caller.uuid)
        self.rng = random.Random(sim._rng.random())
        self.sock: gsocket.socket | None = None
        self.t0 = 0.0
        self.epoch0 = 0.0
        self.clock = 0.0  # channel seconds (virtual)
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._rx = bytearray()
        self._out: list[bytes] = []
        self._splits: list[int] = []
        self._out_len = 0
        self.finished = False

        # protocol state
        self.got_first_packet = False
        self.connected = False
        self.parked = False
        self.resume = False
        self.exited = False
        self.subscribed: set[str] = set()
        self.all_events = False
        self.event_format = "plain"
        self.linger: int | None = None
        self.socket_gone = False
        self.read_paused = False
        self.in_socket_app = True
        self.queue: deque[_AppRun] = deque()
        self.current: _AppRun | None = None
        self.app_ran = False
        self.start_timer: _Timer | None = None
        self.first_packet_timer: _Timer | None = None
        self.socket_app_uuid = str(uuid4())  # the socket application's own Application-UUID
        self._last_digits = ""

        # channel state
        self.uuid = caller.uuid
        self.state = "CS_EXECUTE"
        self.state_number = 4
        self.call_state = "RINGING"
        self.answer_state = "ringing"
        self.answered_t: float | None = None
        self.early_t: float | None = None
        self.progress_t: float | None = None
        self.hangup_t: float | None = None
        self.transfer_t: float | None = None
        self.record_started: float | None = None  # record_session's media bug, until the hang-up
        self.bridged_t: float | None = None
        self.hung_up = False
        self.cause: str | None = None
        self.routed = False
        self.heard_code = ""
        self.digit_run_open = False
        self.collected_digits = ""
        self.last_app: tuple[str, str] | None = None
        self.vars: dict[str, str | list[str]] = {}
        self.profile: dict[str, str] = {}
        self._vars_bytes: bytes | None = None  # serialised variable block, until a variable changes
        self._profile_cache: tuple[tuple, bytes] | None = None
        self.channel_name = ""
        self.source = "mod_sofia"
        self.sofia = True
        self.read_codec = ("PCMU", "8000", "64000")
        self.created_us = 0
        self._last_status = "failure"

    # ------------------------------------------------------------------ clock & timers

    def _real_now_ch(self) -> float:
        return (time.monotonic() - self.t0) / self.ts

    def _sync_clock(self) -> None:
        self.clock = max(self.clock, self._real_now_ch())

    def _at(self, ch_time: float, fn: Callable[..., None], *args: object) -> _Timer:
        t = _Timer(self.t0 + ch_time * self.ts, next(self._seq), ch_time, fn, args)
        heapq.heappush(self._timers, t)
        return t

    def _after(self, delay: float, fn: Callable[..., None], *args: object) -> _Timer:
        return self._at(self.clock + max(0.0, delay), fn, *args)

    def _after_real(self, seconds: float, fn: Callable[..., None], *args: object) -> _Timer:
        """A timer for waits on the TARGET (never shorter than sim.min_real_timeout real seconds)."""
        due = time.monotonic() + seconds
        t = _Timer(due, next(self._seq), (due - self.t0) / self.ts, fn, args)
        heapq.heappush(self._timers, t)
        return t

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].due <= now and not self.finished:
            t = heapq.heappop(self._timers)
            if t.cancelled:
                continue
            self.clock = max(self.clock, t.ch_time)
            t.fn(*t.args)
            self._flush()

    def _us(self, ch: float | None = None) -> int:
        return int(round((self.epoch0 + (self.clock if ch is None else ch)) * 1_000_000))

    # ------------------------------------------------------------------ main loop

    def run(self) -> SimResult:
        r = self.result
        r.started_at = time.monotonic()
        try:
            if not self._connect():
                r.outcome = "refused"
                return r
            self._setup_channel()
            if self.caller.hangup_after is not None:
                self._at(self.caller.hangup_after, self._caller_hangup)
            self.first_packet_timer = self._after_real(
                self.sim.target_wait(FIRST_PACKET_TIMEOUT), self._first_packet_timeout
            )
            self._after_real(self.sim.target_wait(self.sim.max_call_time), self._call_cap)
            self._loop()
        except Exception as exc:  # never let a simulator bug hang or kill the caller's test silently
            r.violations.append(f"simulator error: {exc!r}")
            if r.outcome is None:
                r.outcome = "protocol_error"
            raise
        finally:
            self._close_socket()
            self._finalize()
        return r

    def _connect(self) -> bool:
        for host, port in self.sim.targets:
            try:
                sock = gsocket.create_connection((host, port), timeout=self.sim.connect_timeout)
            except OSError:
                continue
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
            self.sock = sock
            self.result.target = (host, port)
            self.t0 = time.monotonic()
            self.epoch0 = time.time()
            self.result.connected_at = self.t0
            return True
        return False

    def _loop(self) -> None:
        while not self.finished:
            self._run_due_timers()
            self._flush()
            if self.finished:
                break
            wait = (self._timers[0].due - time.monotonic()) if self._timers else None
            if self.sock is None or self.read_paused:
                if wait is None:
                    self._end()
                    break
                gevent.sleep(max(0.0, wait))
                continue
            self.sock.settimeout(max(wait, 0.0001) if wait is not None else self.sim.target_wait(60.0))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, _stdsocket.timeout):
                continue
            except OSError:
                data = b""
            if not data:
                self._on_target_eof()
            else:
                self._sync_clock()
                self._rx += data
                self._process_rx()
            self._flush()

    def _end(self) -> None:
        self.finished = True

    # ------------------------------------------------------------------ output

    def _send(self, data: bytes, split_at: int | None = None) -> None:
        if self.sock is None:
            return
        if split_at is not None:
            self._splits.append(self._out_len + split_at)
        self._out.append(data)
        self._out_len += len(data)

    def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        splits = self._splits
        self._out, self._splits, self._out_len = [], [], 0
        if self.sock is None:
            return
        try:
            self.sock.settimeout(self.sim.target_wait(30.0))
            if splits and self.rng.random() < self.sim.split_events:
                # FreeSWITCH writes an event's header block and body with two send()s;
                # give the target a chance to see them in two reads.
                cut = self.rng.choice(splits)
                self.sock.sendall(data[:cut])
                # sleep(0) would resume us before the hub polls the target's socket; a
                # short timer lets a target in this process read the first part alone.
                gevent.sleep(0.0002)
                if self.sock is None:
                    return
                self.sock.sendall(data[cut:])
            else:
                self.sock.sendall(data)
            self.result.bytes_sent += len(data)
        except (TimeoutError, _stdsocket.timeout):
            self.result.violations.append("target stopped reading (send timed out)")
            self._on_target_eof()
        except OSError:
            self._on_target_eof()

    def _reply(self, text: str | bytes) -> None:
        self._send(wire.command_reply(text))

    # ------------------------------------------------------------------ channel model

    def _setup_channel(self) -> None:
        c = self.caller
        created = c.created_us if c.created_us is not None else self._us(0.0)
        self.created_us = created
        if c.channel_data_raw is not None:
            self._adopt_channel_data(c.channel_data_raw)
            return
        sofia = c.endpoint != "loopback"
        ani = c.ani
        if c.channel_name is not None:
            chan = c.channel_name
        elif sofia:
            chan = f"sofia/lab/{ani}@{c.network_addr}"
        else:
            chan = f"loopback/{c.dnis}-b"
        self.channel_name = chan
        self.read_codec = ("PCMU", "8000", "64000") if sofia else ("L16", "8000", "128000")
        self.source = "mod_sofia" if sofia else "mod_loopback"
        self.sofia = sofia
        self.profile = {
            "Caller-ID-Name": c.name,
            "Caller-ID-Number": ani,
            "ANI": c.network_ani if c.network_ani is not None else ani,
            "Destination-Number": c.dnis,
            "Context": c.context,
        }
        self.vars = self._initial_variables()
        self._vars_bytes = None

    def _initial_variables(self) -> dict[str, str | list[str]]:
        c, sim = self.caller, self.sim
        session_id = str(c.session_id if c.session_id is not None else next(sim._session_ids))
        v: dict[str, str | list[str]] = {"direction": "inbound", "uuid": self.uuid, "session_id": session_id}
        if self.sofia:
            user = c.sip_from_user if c.sip_from_user is not None else c.ani
            host = c.network_addr
            tag = f"{self.rng.getrandbits(32):08x}"
            v.update(
                {
                    "sip_from_user": user,
                    "sip_from_uri": f"{user}@{host}",
                    "sip_from_host": host,
                    "video_media_flow": "disabled",
                    "text_media_flow": "disabled",
                    "channel_name": self.channel_name,
                    "sip_call_id": f"{self.rng.getrandbits(64):016x}@{host}",
                    "sip_local_network_addr": sim.ipv4,
                    "sip_network_ip": host,
                    "sip_network_port": "5060",
                    "sip_invite_stamp": str(self.created_us),
                    "sip_received_ip": host,
                    "sip_received_port": "5060",
                    "sip_via_protocol": "udp",
                    "sip_from_user_stripped": user,
                    "sip_from_tag": tag,
                    "sofia_profile_name": "lab",
                    "sofia_profile_url": f"sip:mod_sofia@{sim.ipv4}:5060",
                    "recovery_profile_name": "lab",
                }
            )
            v.update(c.variables)
            v["sip_full_via"] = f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{self.rng.getrandbits(32):08x};rport=5060"
            if c.name:
                v["sip_from_display"] = c.name
                v["sip_full_from"] = f'"{c.name}" <sip:{user}@{host}>;tag={tag}'
            else:
                v["sip_full_from"] = f"<sip:{user}@{host}>;tag={tag}"
            dnis, me = c.dnis, f"{sim.ipv4}:5060"
            v.update(
                {
                    "sip_full_to": f"<sip:{dnis}@{me}>",
                    "sip_req_user": dnis,
                    "sip_req_port": "5060",
                    "sip_req_uri": f"{dnis}@{me}",
                    "sip_req_host": sim.ipv4,
                    "sip_to_user": dnis,
                    "sip_to_port": "5060",
                    "sip_to_uri": f"{dnis}@{me}",
                    "sip_to_host": sim.ipv4,
                    "sip_contact_user": user,
                    "sip_contact_port": "5060",
                    "sip_contact_uri": f"{user}@{host}:5060",
                    "sip_contact_host": host,
                    "sip_via_host": host,
                    "sip_via_port": "5060",
                    "sip_via_rport": "5060",
                    "max_forwards": "70",
                    "switch_r_sdp": (
                        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
                    ),
                    "ep_codec_string": "CORE_PCM_MODULE.PCMU@8000h@20i@64000b",
                    "rtp_use_codec_string": "PCMU,PCMA",
                    "remote_video_media_flow": "inactive",
                    "remote_text_media_flow": "inactive",
                    "remote_audio_media_flow": "sendrecv",
                    "audio_media_flow": "sendrecv",
                    "remote_media_ip": host,
                    "remote_media_port": "40000",
                    "rtp_audio_recv_pt": "0",
                    "rtp_use_codec_name": "PCMU",
                    "rtp_use_codec_rate": "8000",
                    "rtp_use_codec_ptime": "20",
                    "rtp_use_codec_channels": "1",
                    "rtp_last_audio_codec_string": "PCMU@8000h@20i@1c",
                    "read_codec": "PCMU",
                    "original_read_codec": "PCMU",
                    "read_rate": "8000",
                    "original_read_rate": "8000",
                    "write_codec": "PCMU",
                    "write_rate": "8000",
                    "dtmf_type": "rfc2833",
                    "endpoint_disposition": "RECEIVED",
                }
            )
        else:
            v.update(
                {
                    "channel_name": self.channel_name,
                    "read_codec": "L16",
                    "read_rate": "8000",
                    "write_codec": "L16",
                    "write_rate": "8000",
                    "origination_caller_id_number": c.ani,
                    **({"origination_caller_id_name": c.name} if c.name else {}),
                    "other_loopback_leg_uuid": c.loopback_leg_uuid or str(uuid4()),
                    "loopback_leg": "B",
                }
            )
            v.update(c.variables)
        v["DP_MATCH"] = [c.dnis, c.dnis]
        v["call_uuid"] = self.uuid
        v["current_application_data"] = sim.socket_data
        v["current_application"] = "socket"
        v["socket_host"] = self.result.target[0] if self.result.target else "127.0.0.1"
        return v

    def _adopt_channel_data(self, raw: bytes) -> None:
        """Use a captured CHANNEL_DATA verbatim, and take the channel's identity from it."""
        ev = wire.Event.from_plain(raw)
        get = lambda k, d="": str(ev.get(k, d))  # noqa: E731
        self.uuid = get("Unique-ID", self.uuid)
        self.result.uuid = self.uuid
        self.channel_name = get("Channel-Name", "loopback/unknown")
        self.source = get("Caller-Source", "mod_loopback")
        self.sofia = self.source == "mod_sofia"
        self.read_codec = (get("Channel-Read-Codec-Name", "L16"), get("Channel-Read-Codec-Rate", "8000"),
                           get("Channel-Read-Codec-Bit-Rate", "128000"))
        self.profile = {
            "Caller-ID-Name": get("Caller-Caller-ID-Name"),
            "Caller-ID-Number": get("Caller-Caller-ID-Number"),
            "ANI": get("Caller-ANI"),
            "Destination-Number": get("Caller-Destination-Number"),
            "Context": get("Caller-Context"),
        }
        created = get("Caller-Channel-Created-Time")
        if created.isdigit():
            self.created_us = int(created)
        self.vars = {k[len("variable_"):]: v for k, v in ev.headers if k.startswith("variable_")}
        self._vars_bytes = None

    def _setvar(self, name: str, value: str | list[str] | None) -> None:
        """Set a channel variable the way FreeSWITCH does: re-setting moves it to the end."""
        self.vars.pop(name, None)
        if value is not None and value != "":
            self.vars[name] = value
        self._vars_bytes = None

    def getvar(self, name: str) -> str:
        """switch_channel_get_variable: variables first, then the caller profile."""
        v = self.vars.get(name)
        if v is not None:
            return v if isinstance(v, str) else wire.serialize_value(v)
        profile_names = {
            "caller_id_name": "Caller-ID-Name",
            "caller_id_number": "Caller-ID-Number",
            "ani": "ANI",
            "destination_number": "Destination-Number",
            "context": "Context",
        }
        if name in profile_names:
            return self.profile.get(profile_names[name], "")
        if name == "uuid":
            return self.uuid
        if name in ("channel_name", "chan_name"):
            return self.channel_name
        return ""

    def _profile_block(self, prefix: str) -> list[tuple[str, str]]:
        """The caller profile as ``<prefix>-Name`` headers (switch_caller_profile_event_set_data).

        Like FreeSWITCH, a string field that is empty is left out (a caller without a caller id
        name has no ``Caller-Caller-ID-Name`` at all: fs-1.10.12 captures). After a transfer the
        channel runs on a new profile: index 2, Transfer-Source, RDNIS, the transfer's dialplan
        name, and a Channel-Transfer-Time of 0 (the old profile's time is not reported).
        """
        c, p = self.caller, self.profile
        hide = "true" if c.privacy else "false"
        name, number, created = p["Caller-ID-Name"], p["Caller-ID-Number"], str(self.created_us)
        values = ["inbound", "inbound"]
        if self.sofia:
            values += [c.sip_from_user if c.sip_from_user is not None else c.ani, p.get("Dialplan", "XML"), name,
                       number, name, number, c.network_addr]
        else:
            values += [p.get("Dialplan", "xml"), name, number, name, number, "Outbound Call", c.context]
        values += [
            p["ANI"], p["Destination-Number"], self.uuid, self.source, p.get("Transfer-Source", ""), p["Context"],
            p.get("RDNIS", ""), self.channel_name, p.get("Profile-Index", "1"),
            created, created, self._time_us(self.answered_t), self._time_us(self.progress_t),
            self._time_us(self.early_t), self._time_us(self.hangup_t if self.state == "CS_REPORTING" else None),
            "0", "0", self._time_us(self.bridged_t), "0", "0", "true", hide, hide,
        ]
        return [(k, v) for k, v in zip(_profile_names(prefix, self.sofia), values) if v != ""]

    def _time_us(self, ch: float | None) -> str:
        return "0" if ch is None else str(self._us(ch))

    def _channel_block(self) -> list[tuple[str, str]]:
        h = [
            ("Channel-State", self.state),
            ("Channel-Call-State", self.call_state),
            ("Channel-State-Number", str(self.state_number)),
            ("Channel-Name", self.channel_name),
            ("Unique-ID", self.uuid),
            ("Call-Direction", "inbound"),
            ("Presence-Call-Direction", "inbound"),
            ("Channel-HIT-Dialplan", "true"),
            ("Channel-Call-UUID", self.uuid),
            ("Answer-State", self.answer_state),
        ]
        if self.hung_up and self.cause:
            h.append(("Hangup-Cause", self.cause))
        name, rate, bits = self.read_codec
        h += [
            ("Channel-Read-Codec-Name", name),
            ("Channel-Read-Codec-Rate", rate),
            ("Channel-Read-Codec-Bit-Rate", bits),
            ("Channel-Write-Codec-Name", name),
            ("Channel-Write-Codec-Rate", rate),
            ("Channel-Write-Codec-Bit-Rate", bits),
        ]
        return h

    def _base_headers(self, name: str) -> list[tuple[str, str | list[str]]]:
        sim = self.sim
        us = self._us()
        secs = us / 1_000_000
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
        gmt = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(secs))
        file, func, line = CALLING.get(name, ("switch_channel.c", "switch_channel_event_set_data", "0"))
        return [
            ("Event-Name", name),
            ("Core-UUID", sim.core_uuid),
            ("FreeSWITCH-Hostname", sim.hostname),
            ("FreeSWITCH-Switchname", sim.hostname),
            ("FreeSWITCH-IPv4", sim.ipv4),
            ("FreeSWITCH-IPv6", sim.ipv6),
            ("Event-Date-Local", local),
            ("Event-Date-GMT", gmt),
            ("Event-Date-Timestamp", str(us)),
            ("Event-Calling-File", file),
            ("Event-Calling-Function", func),
            ("Event-Calling-Line-Number", line),
            ("Event-Sequence", str(next(sim._event_seq))),
        ]

    def build_event(
        self,
        name: str,
        *,
        pre: Iterable[tuple[str, str]] = (),
        post: Iterable[tuple[str, str]] = (),
        with_vars: bool = True,
    ) -> list[tuple[str, str | list[str]]]:
        """The header list of a channel event, in FreeSWITCH's order."""
        h = self._base_headers(name)
        h.extend(pre)
        h.extend(self._channel_block())
        h.extend(self._profile_block("Caller"))
        if with_vars:
            h.extend(("variable_" + k, v) for k, v in self.vars.items())
        h.extend(post)
        return h

    def connect_reply(self) -> bytes:
        """The CHANNEL_DATA reply to ``connect`` (always the plain serialisation)."""
        if self.caller.channel_data_raw is not None:
            return self.caller.channel_data_raw
        h = self._base_headers("CHANNEL_DATA")
        h.extend(self._profile_block("Channel"))
        h.extend(self._channel_block())
        h.extend(self._profile_block("Caller"))
        h.extend(("variable_" + k, v) for k, v in self.vars.items())
        h += [
            ("Content-Type", "command/reply"),
            ("Reply-Text", "+OK\n"),
            ("Socket-Mode", "async" if self.sim.mode == "async" else "static"),
            ("Control", "full"),
        ]
        return wire.serialize_event(h)

    def _wants(self, name: str) -> bool:
        return self.sock is not None and (self.all_events or name in self.subscribed)

    def _plain_event(
        self, name: str, pre: Iterable[tuple[str, str]], post: Iterable[tuple[str, str]], with_vars: bool
    ) -> bytes:
        """build_event() + serialize_event(), reusing the serialised profile and variables.

        Every channel event repeats ~100 unchanged headers; serialising them once per change
        instead of once per event keeps the simulator light under load.
        """
        head = self._base_headers(name)
        head.extend(pre)
        head.extend(self._channel_block())
        times = (self.answered_t, self.progress_t, self.early_t, self.state == "CS_REPORTING", self.bridged_t,
                 tuple(self.profile.items()))
        if self._profile_cache is None or self._profile_cache[0] != times:
            self._profile_cache = (times, wire.serialize_headers(self._profile_block("Caller")))
        parts = [wire.serialize_headers(head), self._profile_cache[1]]
        if with_vars:
            if self._vars_bytes is None:
                self._vars_bytes = wire.serialize_headers([("variable_" + k, v) for k, v in self.vars.items()])
            parts.append(self._vars_bytes)
        parts.append(wire.serialize_headers(list(post)))
        parts.append(b"\n")
        return b"".join(parts)

    def emit(
        self,
        name: str,
        *,
        pre: Iterable[tuple[str, str]] = (),
        post: Iterable[tuple[str, str]] = (),
        with_vars: bool = True,
        body: str | None = None,
    ) -> None:
        """Fire a channel event; it goes on the wire if the target subscribed to it."""
        if not self._wants(name):
            return
        if self.event_format == "plain" and body is None:
            payload = self._plain_event(name, pre, post, with_vars)
            head = wire.frame_for_payload(payload, "plain")
        else:
            headers = self.build_event(name, pre=pre, post=post, with_vars=with_vars)
            head, payload = wire.event_frame_parts(headers, self.event_format, body)
        self._send(head + payload, split_at=len(head))
        self.result.events_sent += 1
        self.result.event_names.append(name)

    # ------------------------------------------------------------------ reading commands

    def _process_rx(self) -> None:
        while self._rx and not self.finished and self.sock is not None and not self.read_paused:
            # read_packet() drops CR/LF before a command ("bah").
            i = 0
            while i < len(self._rx) and self._rx[i] in (0x0D, 0x0A):
                i += 1
            if i:
                del self._rx[:i]
                continue
            m = _CMD_END.search(self._rx)
            if m is None:
                if len(self._rx) > MAX_COMMAND_BYTES:
                    self._garbage(f"no command terminator in {len(self._rx)} bytes")
                return
            block = bytes(self._rx[: m.start()])
            end = m.end()
            clen = 0
            for line in re.split(rb"[\r\n]+", block)[1:]:
                name, sep, value = line.partition(b":")
                if sep and name.strip().lower() == b"content-length":
                    digits = re.match(rb"\s*(\d+)", value)
                    clen = int(digits.group(1)) if digits else 0
            if clen > MAX_COMMAND_BYTES * 40:
                self._garbage(f"absurd Content-Length {clen}")
                return
            if len(self._rx) < end + clen:
                return
            body = bytes(self._rx[end : end + clen])
            del self._rx[: end + clen]
            self._handle(_parse_command(block, body))

    def _garbage(self, why: str) -> None:
        self.result.violations.append(f"garbage from target: {why}")
        self._rx.clear()
        if not self.hung_up:
            self._hangup("PROTOCOL_ERROR", by="freeswitch")
        self._fs_close()

    # ------------------------------------------------------------------ command dispatch

    def _handle(self, cmd: _Command) -> None:
        r = self.result
        r.commands.append(cmd.raw)
        line = cmd.line
        low = line.lower()
        if self.exited:
            r.violations.append(f"command after exit: {line!r}")
            return
        if self.hung_up:
            r.late_commands.append(cmd.raw)
        if not self.connected and not low.startswith("connect"):
            r.violations.append(f"command before connect: {line!r}")
        if not self.got_first_packet:
            self.got_first_packet = True
            if self.first_packet_timer:
                self.first_packet_timer.cancelled = True
            if not low.startswith("connect"):
                # listener_run() parses the first packet but never sends its reply (capture 12).
                self._dispatch(cmd, low, reply=False)
                return
        self._dispatch(cmd, low, reply=True)

    def _dispatch(self, cmd: _Command, low: str, *, reply: bool) -> None:
        send = self._reply if reply else (lambda text: None)
        line = cmd.line
        if low.startswith("exit") or low.startswith("..."):
            send("+OK bye")
            self.exited = True
            self._fs_close()
            return
        if low.startswith("filter "):
            parts = line[7:].strip().split(" ", 1)
            send(f"+OK filter added. [{parts[0]}]=[{parts[1] if len(parts) > 1 else ''}]")
            return
        if low.startswith("resume"):
            self.resume = True
            self._setvar("socket_resume", "true")
            send("+OK")
            return
        if low.startswith("connect"):
            self._on_connect()
            return
        if low.startswith("getvar"):
            name = line.split(" ", 1)[1] if " " in line else ""
            value = self.getvar(name) if name else ""
            if name and is_caller_controlled(name, value):
                self.result.violations.append(f"getvar of caller-controlled variable {name!r} (reply is raw)")
            send(value[:511])
            return
        if low.startswith("myevents"):
            if self.subscribed >= MYEVENTS:
                send("-ERR aready enabled.")
                return
            self.subscribed |= MYEVENTS
            if "json" in line or "JSON" in line:
                self.event_format = "json"
            elif "xml" in line or "XML" in line:
                self.result.violations.append("xml event format is not simulated; sending plain")
            send("+OK Events Enabled")
            return
        if low.startswith("divert_events"):
            on = line[13:].strip().lower() == "on"
            send("+OK events diverted" if on else "+OK events not diverted")
            return
        if low.startswith("sendmsg"):
            self._sendmsg(cmd, send)
            return
        if low.startswith("sendevent"):
            send(f"+OK {uuid4()}")
            return
        if low.startswith("api "):
            if reply:
                self._send(wire.api_response(self._api(line[4:].strip())))
            else:
                self._api(line[4:].strip())
            return
        if low.startswith("bgapi "):
            job = cmd.header("Job-UUID") or str(uuid4())
            result = self._api(line[6:].strip())
            if reply:
                self._send(f"Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n".encode())
            if self._wants("BACKGROUND_JOB"):
                cmd_name, _, cmd_arg = line[6:].strip().partition(" ")
                post = [("Job-UUID", job), ("Job-Command", cmd_name)] + ([("Job-Command-Arg", cmd_arg)] if cmd_arg else [])
                headers = self._base_headers("BACKGROUND_JOB") + post
                head, payload = wire.event_frame_parts(headers, self.event_format, result)
                self._send(head + payload, split_at=len(head))
                self.result.events_sent += 1
                self.result.event_names.append("BACKGROUND_JOB")
            return
        if low.startswith("log"):
            send("+OK log level  [7]")
            return
        if low.startswith("linger"):
            rest = line[6:]
            if rest.startswith(" ") and rest[1:]:
                n = _atoi(rest[1:])
                self.linger = n
                send(f"+OK will linger {n} seconds")
            else:
                self.linger = -1
                send("+OK will linger")
            self.result.linger = self.linger
            return
        if low.startswith("nolinger"):
            self.linger = None
            self.result.linger = None
            send("+OK will not linger")
            return
        if low.startswith("nolog"):
            send("-ERR not loging")
            return
        if low.startswith("event"):
            self._event_cmd(line, send)
            return
        if low.startswith("nixevent"):
            names = line.split()[1:]
            if not names:
                send("-ERR no keywords supplied")
                return
            for n in names:
                if n.upper() == "ALL":
                    self.subscribed.clear()
                    self.all_events = False
                else:
                    self.subscribed.discard(n.upper())
            send("+OK events nixed")
            return
        if low.startswith("noevents"):
            if self.subscribed or self.all_events:
                self.subscribed.clear()
                self.all_events = False
                send("+OK no longer listening for events")
            else:
                send("-ERR not listening for events")
            return
        self.result.violations.append(f"unknown command {line!r}")
        send("-ERR command not found")

    def _event_cmd(self, line: str, send: Callable[[str], None]) -> None:
        words = line.split()[1:]
        if words and words[0].lower() in ("plain", "json", "xml"):
            fmt = words.pop(0).lower()
            self.event_format = "json" if fmt == "json" else "plain"
        keys = 0
        custom = False
        for w in words:
            if custom:
                continue
            if w.upper() == "ALL":
                self.all_events = True
                keys += 1
            elif w.upper() == "CUSTOM":
                custom = True
                keys += 1
            elif re.fullmatch(r"[A-Z_]+", w.upper()):
                self.subscribed.add(w.upper())
                keys += 1
        if not keys:
            send("-ERR no keywords supplied")
            return
        send(f"+OK event listener enabled {self.event_format}")

    # ------------------------------------------------------------------ connect / park

    def _on_connect(self) -> None:
        first = not self.connected
        self.connected = True
        self._send(self.connect_reply())
        if first:
            self.result.connect_reply_at = time.monotonic()
            if self.sim.mode == "async":
                self._after(TICK, self._park)
            else:
                self.parked = True

    def _park(self) -> None:
        if self.hung_up or self.parked:
            return
        self.parked = True
        self.emit("CHANNEL_PARK")
        self._schedule_start()

    def _first_packet_timeout(self) -> None:
        """read_packet(25) gave up: FreeSWITCH closes; the channel stays parked, ringing."""
        if self.got_first_packet or self.finished:
            return
        self.result.violations.append(f"no command within {FIRST_PACKET_TIMEOUT:g} s of connecting")
        self._fs_close()

    def _call_cap(self) -> None:
        if self.finished:
            return
        self.result.violations.append(f"call did not end within {self.sim.max_call_time:g} channel seconds")
        if self.result.outcome is None:
            self.result.outcome = "protocol_error"
        self._fs_close(final=True)
        self._end()

    # ------------------------------------------------------------------ sendmsg

    def _sendmsg(self, cmd: _Command, send: Callable[[str], None]) -> None:
        r = self.result
        target_uuid = cmd.line[7:].strip() or (cmd.header("session-id") or "")
        if target_uuid and target_uuid != self.uuid:
            send(f"-ERR invalid session id [{target_uuid}]")
            return
        if cmd.malformed_lines:
            r.violations.append("sendmsg has a line without ':' (CR/LF inside a value?)")
        if cmd.has_cr:
            r.violations.append("sendmsg contains a bare CR (CR/LF inside a value?)")
        for name in ("call-command", "execute-app-name", "execute-app-arg", "hangup-cause", "Event-UUID"):
            if cmd.count(name) > 1:
                r.violations.append(f"sendmsg repeats {name!r} (CR/LF inside a value?)")
        call_command = (cmd.header("call-command") or "").strip().lower()
        if call_command == "execute":
            self._sendmsg_execute(cmd, send)
            return
        if call_command == "hangup":
            cause_text = cmd.header("hangup-cause") or "NORMAL_CLEARING"
            cause = cause_name(cause_text)
            if cause is None:
                r.violations.append(f"unknown hangup cause {cause_text!r}")
                cause = "NORMAL_CLEARING"
            send("+OK")
            self._decided()
            if not self.hung_up:
                self._hangup(cause, by="target")
            return
        if call_command not in ("unicast", "nomedia", "xferext", "sleep"):
            r.violations.append(f"sendmsg with unknown call-command {call_command!r}")
        send("+OK")

    def _sendmsg_execute(self, cmd: _Command, send: Callable[[str], None]) -> None:
        r = self.result
        app = (cmd.header("execute-app-name") or "").strip()
        arg = cmd.header("execute-app-arg")
        if arg is None and cmd.body:
            arg = cmd.body.decode("utf-8", "surrogateescape")
        arg = arg or ""
        if "\r" in arg or "\n" in arg:
            r.violations.append(f"application argument of {app!r} contains CR/LF")
        loops = _atoi(cmd.header("loops") or "1") or 1
        event_uuid = cmd.header("Event-UUID") or str(uuid4())
        if app.lower() in _ROUTING_APPS or app.lower() in ("hangup", "respond"):
            self._decided()
        if not app:
            r.violations.append("sendmsg execute without execute-app-name")
            send("+OK")
            return
        run = _AppRun(app, arg, event_uuid, loops)
        if self.hung_up:
            send("+OK")  # FreeSWITCH queues it on a dead channel; nothing runs (caller_hangup.txt)
            return
        if self.routed and not self.in_socket_app:
            r.violations.append(f"execute {app!r} after the call left the socket application (routed)")
            send("+OK")
            return
        run.event_lock = _true(cmd.header("event-lock") or "")
        ahead = self.queue[-1] if self.queue else self.current
        if ahead is not None and not ahead.event_lock and self.sim.mode == "async":
            ahead_name = ahead.name.lower()
            if app.lower() == "break" and ahead_name in _BREAKABLE_APPS:
                # The app ahead parses queued events in its loop and so runs "break" nested,
                # at its next frame, instead of after itself.
                send("+OK")
                if ahead is self.current:
                    self._after(TICK, self._nested_break, run, ahead)
                else:
                    ahead.pending_break = run
                return
            if ahead_name in _EVENT_PARSING_APPS and app.lower() in _EVENT_PARSING_APPS:
                r.violations.append(
                    f"execute {app!r} queued behind {ahead.name!r} without event-lock: FreeSWITCH would run it "
                    f"nested inside {ahead.name!r} (the simulator runs it after)"
                )
        if self.sim.mode != "async":
            run.reply = send
            self.queue.append(run)
            # static mode: the reply (and reading the next command) waits for the app
            self.read_paused = self.parked
            self._schedule_start(immediate=True)
            return
        send("+OK")
        self.queue.append(run)
        self._schedule_start()

    def _decided(self) -> None:
        if self.result.decided_at is None:
            self.result.decided_at = time.monotonic()

    # ------------------------------------------------------------------ application runner

    def _schedule_start(self, immediate: bool = False) -> None:
        if self.current or not self.queue or self.hung_up or not self.parked:
            return
        if self.start_timer and not self.start_timer.cancelled:
            return
        self.start_timer = self._after(0.0 if immediate else TICK, self._start_next_app)

    def _start_next_app(self) -> None:
        self.start_timer = None
        if self.current or self.hung_up or not self.queue:
            return
        run = self.queue.popleft()
        name = run.name.lower()
        handler = getattr(self, f"_app_{name}", None)
        known = handler is not None or name in _NOOP_APPS
        if not known or name in {a.lower() for a in self.caller.unknown_apps}:
            # switch_core_session_execute_application: "Invalid Application" -> the channel is
            # hung up, no CHANNEL_EXECUTE(_COMPLETE) for it (badapp.txt).
            self.result.violations.append(f"unknown application {run.name!r}")
            self._hangup("DESTINATION_OUT_OF_ORDER", by="freeswitch")
            self._sync_done(run)
            return
        self.current = run
        self.app_ran = True
        self.result.apps.append((run.name, run.arg))
        self.last_app = (run.name, run.arg)
        self._setvar("current_application_response", None)
        self._setvar("current_loop", "1")
        self._setvar("total_loops", str(run.loops))
        self._setvar("current_application", run.name)
        self._setvar("current_application_data", run.arg or None)
        post = [("Application", run.name)]
        if run.arg:
            post.append(("Application-Data", run.arg))
        post.append(("Application-UUID", run.event_uuid))
        self.emit("CHANNEL_EXECUTE", post=post)
        self._setvar("current_application_data", run.arg or None)
        self._setvar("current_application", run.name)
        if run.pending_break is not None:
            self._after(TICK, self._nested_break, run.pending_break, run)
        run.gen = handler(run) if handler is not None else iter(())
        self._step(run)

    def _step(self, run: _AppRun) -> None:
        if self.current is not run or run.gen is None:
            return
        try:
            delay = next(run.gen)
        except StopIteration:
            if self.current is run:
                self._complete(run)
            return
        if self.current is not run:  # aborted (hang-up) while this step ran
            run.gen.close()
            return
        self._after(delay, self._step, run)

    def _complete(self, run: _AppRun, aborted: bool = False) -> None:
        self.current = None
        response = self.vars.get("current_application_response")
        post = [("Application", run.name)]
        if run.arg:
            post.append(("Application-Data", run.arg))
        post += [("Application-Response", response if isinstance(response, str) else "_none_"),
                 ("Application-UUID", run.event_uuid)]
        self.emit("CHANNEL_EXECUTE_COMPLETE", post=post)
        self._setvar("current_loop", None)
        self._setvar("total_loops", None)
        self._sync_done(run)
        if run.after_complete and not aborted:
            run.after_complete()
        if self.socket_gone and not self.queue and not self.hung_up and not self.routed:
            self._decide_after_close()
            return
        # switch_ivr_parse_all_events runs every queued execute back to back: the next one starts
        # now, on the same media tick, not on the next (fs-1.10.12: eleven routing apps, one tick)
        self._schedule_start(immediate=True)

    def _sync_done(self, run: _AppRun) -> None:
        if run.reply is not None:
            run.reply("+OK")
            run.reply = None
            self.read_paused = False

    def _break_current(self, flush: bool = False, stop: bool = True) -> None:
        """CF_BREAK: the running media application stops now (uuid_break, break).

        ``flush`` (``uuid_break <uuid> all``) also drops the queued sendmsg applications,
        as switch_core_session_flush_private_events() does.
        """
        if flush:
            for queued in self.queue:
                self._sync_done(queued)
            self.queue.clear()
        run = self.current
        if not stop or run is None or run.name.lower() not in _BREAKABLE_APPS:
            return
        if run.on_break:
            run.on_break()
        self._complete(run)
        if run.gen is not None and not getattr(run.gen, "gi_running", False):
            run.gen.close()

    def _nested_break(self, run: _AppRun, victim: _AppRun) -> None:
        """``break`` sent while a media app runs: its loop executes it at once (nested)."""
        if self.hung_up or self.current is not victim:
            return  # the app ended first; FreeSWITCH would run break as an ordinary no-op
        post = [("Application", run.name)] + ([("Application-Data", run.arg)] if run.arg else [])
        self.result.apps.append((run.name, run.arg))
        self.emit("CHANNEL_EXECUTE", post=post + [("Application-UUID", run.event_uuid)])
        self.emit("CHANNEL_EXECUTE_COMPLETE",
                  post=post + [("Application-Response", "_none_"), ("Application-UUID", run.event_uuid)])
        self._break_current(flush=run.arg.strip().lower() == "all")

    def _abort_current(self) -> None:
        """The channel went down while an application ran: it completes now."""
        run = self.current
        if run is None:
            return
        if run.on_abort:
            run.on_abort()
        self._complete(run, aborted=True)
        if run.gen is not None and not getattr(run.gen, "gi_running", False):
            run.gen.close()

    # ------------------------------------------------------------------ media helpers

    def _pre_answer(self) -> None:
        if self.answered_t is not None or self.early_t is not None or self.hung_up:
            return
        self.early_t = self.clock
        self.answer_state = "early"
        self._setvar("endpoint_disposition", "EARLY MEDIA")
        self.emit("CHANNEL_PROGRESS_MEDIA")
        self.call_state = "EARLY"

    def _answer(self) -> None:
        if self.answered_t is not None or self.hung_up:
            return
        self.answered_t = self.clock
        self.answer_state = "answered"
        self.emit("CHANNEL_ANSWER")
        # switch_channel_perform_mark_answered sets it after firing the event (fs-1.10.12 captures)
        self._setvar("endpoint_disposition", "ANSWER")
        self.call_state = "ACTIVE"

    def _hear(self, item: str) -> None:
        """The caller hears ``item``: track the code it would key with digits="auto"."""
        self.result.heard.append(item)
        m = _DIGIT_FILE.search(item)
        if m:
            if self.digit_run_open:
                self.heard_code += m.group(1)
            else:
                self.heard_code = m.group(1)
                self.digit_run_open = True
        else:
            self.digit_run_open = False

    def _files(self, arg: str) -> list[str]:
        arg = arg.strip()
        while arg.startswith("{") and "}" in arg:
            arg = arg[arg.index("}") + 1 :]
        if arg.startswith("file_string://"):
            return [f for f in arg[len("file_string://") :].split("!") if f]
        return [arg] if arg else []

    def _duration(self, item: str) -> float:
        for table in (self.caller.playback_durations, self.sim.playback_durations):
            if item in table:
                return table[item]
        if item.startswith("silence_stream://"):
            ms = _atoi(item[len("silence_stream://") :])
            return ms / 1000 if ms > 0 else self.sim.playback_duration
        m = re.match(r"tone_stream://%\((\d+),(\d+)", item)
        if m:
            return (int(m.group(1)) + int(m.group(2))) / 1000
        return self.sim.playback_duration

    def _play(self, items: list[str]) -> Iterator[float]:
        """Play files in order; the caller hears each as it starts."""
        total = 0.0
        for item in items:
            if self.hung_up:
                return
            self._hear(item)
            d = self._duration(item)
            total += d
            yield d
        ms = int(total * 1000)
        self._setvar("playback_last_offset_pos", str(ms * 8))
        self._setvar("playback_seconds", str(ms // 1000))
        self._setvar("playback_ms", str(ms))
        self._setvar("playback_samples", str(ms * 8))

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

    def _collect(
        self, prompt: list[str], min_d: int, max_d: int, timeout: float, terminators: str, digit_timeout: float
    ) -> Iterator[float]:
        """One read attempt: play the prompt (a key press interrupts it) and collect keys.

        ``timeout`` runs from the end of the prompt to the first key, ``digit_timeout``
        between keys.  Sets ``self._last_digits`` and ``self._last_status``: "success",
        "timeout" (no key) or "failure" (too few keys).
        """
        start = self.clock
        keys = self._caller_keys()
        presses = [(start + self.caller.digit_delay + i * self.caller.inter_digit, k) for i, k in enumerate(keys)]
        t = start
        for item in prompt:
            if presses and presses[0][0] <= t:
                break  # barge-in: the rest of the prompt is not played
            self._hear(item)
            t += self._duration(item)
        prompt_end = min(t, presses[0][0]) if presses else t
        got = ""
        complete = False
        deadline = prompt_end + timeout
        self._last_digits, self._last_status = "", "failure"
        for when, key in presses:
            if when > deadline:
                break
            if when > self.clock:
                yield when - self.clock
            if self.hung_up:
                return
            self._dtmf(key)
            if key in terminators:
                complete = True
                break
            got += key
            if len(got) >= max_d:
                complete = True
                break
            deadline = max(when, prompt_end) + digit_timeout
        if not complete and deadline > self.clock:
            yield deadline - self.clock  # the caller stopped keying: wait out the timeout
            if self.hung_up:
                return
        self._last_digits = got
        if len(got) >= min_d and (got or min_d == 0):
            self._last_status = "success"
        else:
            self._last_status = "timeout" if not got else "failure"

    # ------------------------------------------------------------------ applications

    def _app_answer(self, run: _AppRun) -> Iterator[float]:
        self._answer()
        return
        yield 0.0

    def _app_pre_answer(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()
        return
        yield 0.0

    def _app_ring_ready(self, run: _AppRun) -> Iterator[float]:
        if self.progress_t is None and self.answered_t is None:
            self.progress_t = self.clock
            self.emit("CHANNEL_PROGRESS")
        return
        yield 0.0

    def _app_respond(self, run: _AppRun) -> Iterator[float]:
        code = _atoi(run.arg)
        if code == 183:
            self._pre_answer()
        elif code in (180, 181, 182):
            if self.progress_t is None:
                self.progress_t = self.clock
                self.emit("CHANNEL_PROGRESS")
        elif code == 200:
            self._answer()
        elif code >= 300:
            self._hangup(SIP_CAUSES.get(code, "NORMAL_UNSPECIFIED"), by="target")
        return
        yield 0.0

    def _app_playback(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()  # switch_ivr_play_file() pre-answers (verified in source)
        run.on_abort = lambda: self._setvar("current_application_response", "PLAYBACK ERROR")
        run.on_break = lambda: self._setvar("current_application_response", "FILE PLAYED")
        yield from self._play(self._files(run.arg))
        self._setvar("current_application_response", "FILE PLAYED")

    def _app_endless_playback(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()
        files = self._files(run.arg)
        while files and not self.hung_up:
            yield from self._play(files)

    def _app_phrase(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()
        yield from self._play(["phrase:" + run.arg])

    def _app_speak(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()
        yield from self._play(["speak:" + run.arg])

    def _app_say(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()
        item = "say:" + run.arg
        self._hear(item)
        parts = run.arg.split(" ", 3)
        if len(parts) == 4:
            method, text = parts[2].lower(), parts[3]
            first, _, rest = text.partition(" ")
            if first.lower() in ("masculine", "feminine", "neuter") and rest:
                text = rest
            digits = re.sub(r"\D", "", text)
            if method in _SAY_METHODS_WITH_DIGITS and digits:
                self.heard_code = digits
        self.digit_run_open = False
        words = len(re.sub(r"\D", "", run.arg)) or len(run.arg.split())
        known = item in self.caller.playback_durations or item in self.sim.playback_durations
        yield self._duration(item) if known else max(0.2, 0.3 * words)

    def _app_play_and_get_digits(self, run: _AppRun) -> Iterator[float]:
        args = split_args(run.arg)
        if len(args) < 9:
            self.result.violations.append(f"play_and_get_digits needs 9+ arguments, got {run.arg!r}")
            return
        min_d, max_d, tries = _atoi(args[0]), _atoi(args[1]), max(1, _atoi(args[2]))
        timeout = _atoi(args[3]) / 1000
        terminators = args[4] if args[4] not in ("none", "''") else ""
        prompt, invalid, var, regex = args[5], args[6], args[7], args[8]
        digit_timeout = _atoi(args[9]) / 1000 if len(args) > 9 and _atoi(args[9]) > 0 else timeout
        try:
            pattern = re.compile(regex) if regex else None
        except re.error:
            self.result.violations.append(f"play_and_get_digits regexp does not compile: {regex!r}")
            pattern = None
        self._pre_answer()

        def aborted() -> None:
            self._setvar("read_result", "failure")

        run.on_abort = run.on_break = aborted
        status = "failure"
        for attempt in range(tries):
            self._setvar(var, None)
            yield from self._collect(self._files(prompt), min_d, max_d, timeout, terminators, digit_timeout)
            if self.hung_up:
                return
            got, status = self._last_digits, self._last_status
            if status == "success" and (pattern is None or pattern.search(got)):
                self._setvar("read_result", "success")
                self._setvar(var, got)
                return
            if status == "success":
                status = "failure"
            self._setvar("read_result", status)
            if invalid and invalid not in ("''", "silence_stream://0"):
                yield from self._play(self._files(invalid))
            elif attempt + 1 < tries:
                yield TICK
        self._setvar("read_result", status)

    def _app_read(self, run: _AppRun) -> Iterator[float]:
        args = split_args(run.arg)
        if len(args) < 6:
            self.result.violations.append(f"read needs 6+ arguments, got {run.arg!r}")
            return
        min_d, max_d, prompt, var = _atoi(args[0]), _atoi(args[1]), args[2], args[3]
        timeout = _atoi(args[4]) / 1000
        terminators = args[5]
        digit_timeout = _atoi(args[6]) / 1000 if len(args) > 6 and _atoi(args[6]) > 0 else timeout
        self._pre_answer()
        run.on_abort = run.on_break = lambda: self._setvar("read_result", "failure")
        yield from self._collect(self._files(prompt), min_d, max_d, timeout, terminators, digit_timeout)
        if self.hung_up:
            return
        self._setvar("read_result", self._last_status)
        self._setvar(var, self._last_digits or None)

    def _app_sleep(self, run: _AppRun) -> Iterator[float]:
        yield _atoi(run.arg) / 1000

    def _app_set(self, run: _AppRun) -> Iterator[float]:
        name, sep, value = run.arg.partition("=")
        if sep and name:
            self._setvar(name.strip(), value)
        return
        yield 0.0

    def _app_unset(self, run: _AppRun) -> Iterator[float]:
        self._setvar(run.arg.strip(), None)
        return
        yield 0.0

    def _app_multiset(self, run: _AppRun) -> Iterator[float]:
        text, delim = run.arg, " "
        if text.startswith("^^") and len(text) > 2:
            delim, text = text[2], text[3:]
        values = {}
        for item in text.split(delim):
            name, sep, value = item.partition("=")
            if sep and name:
                self._setvar(name.strip(), value)
                values[name.strip()] = value
        # the variables named in export_vars go to a bridged leg, as ``export`` sends them
        listed = values.get("export_vars")
        for name in (listed.split(",") if listed else []):
            if name in values:
                self.result.exported[name] = values[name]
        return
        yield 0.0

    def _app_export(self, run: _AppRun) -> Iterator[float]:
        text = run.arg
        local = True
        if text.startswith("nolocal:"):
            local, text = False, text[len("nolocal:") :]
        name, sep, value = text.partition("=")
        if sep and name:
            name = name.strip()
            self.result.exported[name] = value  # what the target asked for
            if not value:
                # switch_channel_export_variable with no value: the variable is unset and not
                # added to export_vars (fs-1.10.12: ``export fsguard_customer_id=``)
                self._setvar(name, None)
                return
            if local:
                self._setvar(name, value)
            # appended each time, repeats included (fs-1.10.12: fsguard_risk twice)
            current = self.vars.get("export_vars")
            self._setvar("export_vars", f"{current},{name}" if isinstance(current, str) and current else name)
        return
        yield 0.0

    def _app_record_session(self, run: _AppRun) -> Iterator[float]:
        self._pre_answer()  # a media bug needs media
        path = run.arg.strip()
        self.result.recordings.append(path)
        if self.record_started is None:
            self.record_started = self.clock
        self.emit("RECORD_START", post=[("Record-File-Path", path)])
        return
        yield 0.0

    def _app_sched_hangup(self, run: _AppRun) -> Iterator[float]:
        args = run.arg.split()
        if args:
            secs = _atoi(args[0].lstrip("+"))
            cause = cause_name(args[1]) if len(args) > 1 else "ALLOTTED_TIMEOUT"
            self._after(secs, lambda: self._hangup(cause or "ALLOTTED_TIMEOUT", by="target"))
        return
        yield 0.0

    def _app_hangup(self, run: _AppRun) -> Iterator[float]:
        text = run.arg.strip() or "NORMAL_CLEARING"
        cause = cause_name(text)
        if cause is None:
            self.result.violations.append(f"unknown hangup cause {text!r}")
            cause = "NORMAL_CLEARING"
        self._hangup(cause, by="target")
        return
        yield 0.0

    def _app_park(self, run: _AppRun) -> Iterator[float]:
        while not self.hung_up:
            yield 3600.0

    def _app_echo(self, run: _AppRun) -> Iterator[float]:
        self._answer()
        while not self.hung_up:
            yield 3600.0

    def _route(self, route: str) -> None:
        self.routed = True
        self.result.route = route
        if self.result.outcome is None:
            self.result.outcome = "routed"

    def _app_transfer(self, run: _AppRun) -> Iterator[float]:
        args = run.arg.split()
        while args and args[0].startswith("-"):
            args.pop(0)
        ext = args[0] if args else ""
        dp = args[1] if len(args) > 1 else "XML"
        ctx = args[2] if len(args) > 2 else self.profile.get("Context", self.caller.context)
        self._route(f"transfer {ext} {dp} {ctx}")
        self._transfer_profile(ext, dp, ctx)
        run.after_complete = self._after_transfer
        return
        yield 0.0

    def _transfer_profile(self, ext: str, dialplan: str, context: str) -> None:
        """switch_ivr_session_transfer: a new caller profile and the transfer variables, before the
        transfer's own CHANNEL_EXECUTE_COMPLETE (shared/transfer.txt, fs-1.10.12/routed.all-events.txt)."""
        self.transfer_t = self.clock
        p = self.profile
        source = f"{int(self._us() // 1_000_000)}:{uuid4()}:bl_xfer:{ext}/{context}/{dialplan}"
        p["RDNIS"] = p.get("RDNIS") or p["Destination-Number"]
        p["Transfer-Source"] = source
        p["Dialplan"] = dialplan
        p["Profile-Index"] = str(int(p.get("Profile-Index", "1")) + 1)
        p["Destination-Number"] = ext
        p["Context"] = context
        forwards = _atoi(str(self.vars.get("max_forwards", ""))) - 1 if self.vars.get("max_forwards") else 70
        self._setvar("max_forwards", str(forwards))
        history = self.vars.get("transfer_history")
        self._setvar("transfer_history", [*([history] if isinstance(history, str) else history or []), source]
                     if history else source)
        self._setvar("transfer_source", source)
        self.state_number = 2  # the state machine goes back to CS_ROUTING

    def _after_transfer(self) -> None:
        """The channel leaves the socket application; events keep coming (transfer.txt)."""
        self.emit("CHANNEL_UNPARK")
        self._complete_socket_app()
        # FreeSWITCH reports the call state RINGING in this CHANNEL_STATE (transfer.txt, fs-1.10.12)
        call_state, self.call_state = self.call_state, "RINGING"
        self.state, self.state_number = "CS_ROUTING", 2
        self.emit("CHANNEL_STATE", with_vars=False)
        self.call_state = call_state
        self.state, self.state_number = "CS_EXECUTE", 4
        self.emit("CHANNEL_STATE", with_vars=False)
        self.queue.clear()
        self._answer()  # the queue extension answers the caller
        self._after(self.caller.talk_time, self._talk_over, "caller")

    def _app_callcenter(self, run: _AppRun) -> Iterator[float]:
        self._route(f"{run.name} {run.arg.strip()}")
        if run.name.lower() == "callcenter":
            self._setvar("cc_queue", run.arg.strip())
        self._answer()  # mod_callcenter (fifo, conference...) answers the caller
        end = self.clock + self.caller.talk_time
        while not self.hung_up and self.clock < end:
            yield end - self.clock
        if not self.hung_up:
            self._hangup("NORMAL_CLEARING", by="caller")

    _app_fifo = _app_callcenter
    _app_conference = _app_callcenter
    _app_voicemail = _app_callcenter
    _app_valet_park = _app_callcenter

    def _app_bridge(self, run: _AppRun) -> Iterator[float]:
        c = self.caller
        self._route(f"bridge {run.arg.strip()}")
        yield max(0.0, c.ring_time)
        if self.hung_up:
            return
        if not c.answered_by_far_end:
            cause = cause_name(c.far_end_cause) or "NO_ANSWER"
            if cause == "NORMAL_CLEARING":
                cause = "NO_ANSWER"
            self._setvar("originate_disposition", cause)
            self._setvar("originate_failed_cause", cause)
            self._setvar("DIALSTATUS", {"USER_BUSY": "BUSY", "NO_ANSWER": "NOANSWER"}.get(cause, cause))
            if _true(str(self.vars.get("continue_on_fail", ""))):
                return
            self._hangup(cause, by="far_end")
            return
        other = str(uuid4())
        self._answer()
        self.bridged_t = self.clock
        self._setvar("bridge_to", other)
        self._setvar("last_bridge_to", other)
        self.emit("CHANNEL_BRIDGE", post=[("Bridge-A-Unique-ID", self.uuid), ("Bridge-B-Unique-ID", other)])
        yield max(0.0, c.talk_time)
        if self.hung_up:
            return
        cause = cause_name(c.far_end_cause) or "NORMAL_CLEARING"
        self._setvar("last_bridge_hangup_cause", cause)
        self._setvar("bridge_hangup_cause", cause)
        self.emit("CHANNEL_UNBRIDGE", post=[("Bridge-A-Unique-ID", self.uuid), ("Bridge-B-Unique-ID", other)])
        self._hangup(cause, by="far_end")

    # ------------------------------------------------------------------ api

    def _api(self, text: str) -> str:
        cmd, _, arg = text.partition(" ")
        lc = cmd.lower()
        args = arg.split()
        if lc == "status":
            return (
                "UP 0 years, 0 days, 0 hours, 1 minute, 0 seconds, 0 milliseconds, 0 microseconds\n"
                "FreeSWITCH (Version 1.10.12-release  64bit) is ready\n"
                f"{self.sim.calls_started} session(s) since startup\n"
                f"{self.sim.active} session(s) - peak {self.sim.peak}, last 5min {self.sim.peak} \n"
                "0 session(s) per Sec out of max 1000, peak 2, last 5min 2 \n"
                "4000 session(s) max\nmin idle cpu 0.00/99.00\nCurrent Stack Size/Max 240K/8192K\n"
            )
        if lc == "hostname":
            return self.sim.hostname
        if lc in ("eval", "expand", "echo"):
            return arg
        if lc.startswith("uuid_"):
            if not args or args[0] != self.uuid:
                return "-ERR No such channel!\n"
            if lc == "uuid_exists":
                return "false" if self.hung_up else "true"
            if self.hung_up:
                return "-ERR No such channel!\n"
            if lc == "uuid_getvar" and len(args) > 1:
                value = self.getvar(args[1])
                if is_caller_controlled(args[1], value):
                    self.result.violations.append(f"uuid_getvar of caller-controlled variable {args[1]!r} (reply is raw)")
                return value or "_undef_"
            if lc == "uuid_setvar" and len(args) > 1:
                self._setvar(args[1], arg.split(" ", 2)[2] if len(args) > 2 else None)
                return "+OK"
            if lc == "uuid_kill":
                self._decided()
                cause = cause_name(args[1]) if len(args) > 1 else None
                self._hangup(cause or "NORMAL_CLEARING", by="target")
                return "+OK"
            if lc == "uuid_transfer" and len(args) > 1:
                self._decided()
                dp = args[2] if len(args) > 2 else "XML"
                ctx = args[3] if len(args) > 3 else self.profile.get("Context", "default")
                self._route(f"transfer {args[1]} {dp} {ctx}")
                self._transfer_profile(args[1], dp, ctx)
                if self.current:
                    self._abort_current()
                self._after_transfer()
                return "+OK"
            if lc == "uuid_record" and len(args) > 2:
                if args[1] == "start":
                    self.result.recordings.append(args[2])
                return "+OK Success"
            if lc == "uuid_break":
                # The queued events are flushed at once; the running app sees CF_BREAK on
                # its next frame, after this reply has gone out.
                if len(args) > 1 and args[1].lower() == "all":
                    self._break_current(flush=True, stop=False)
                self._after(TICK, self._break_current)
                return "+OK"
            if lc == "uuid_broadcast" and len(args) > 1:
                self._hear(args[1])
                return "+OK Message sent successfully"
            if lc == "uuid_dump":
                return "\n".join(f"{k}: {v}" for k, v in self.vars.items())
            if lc in ("uuid_answer", "uuid_pre_answer"):
                (self._answer if lc == "uuid_answer" else self._pre_answer)()
                return "+OK"
        return f"-ERR {cmd} Command not found!\n"

    # ------------------------------------------------------------------ hang-up

    def _caller_hangup(self) -> None:
        if self.hung_up or self.finished:
            return
        cause = "NORMAL_CLEARING" if self.answered_t is not None else "ORIGINATOR_CANCEL"
        self._hangup(cause, by="caller")

    def _talk_over(self, by: str) -> None:
        if not self.hung_up:
            self._hangup("NORMAL_CLEARING", by=by)

    def _complete_socket_app(self) -> None:
        if not self.in_socket_app:
            return
        self.in_socket_app = False
        self.emit(
            "CHANNEL_EXECUTE_COMPLETE",
            post=[
                ("Application", "socket"),
                ("Application-Data", self.sim.socket_data),
                ("Application-Response", "_none_"),
                ("Application-UUID", self.socket_app_uuid),
            ],
        )

    def _hangup(self, cause: str, *, by: str) -> None:
        """The channel goes down: events in FreeSWITCH's order, then linger or close."""
        if self.hung_up:
            return
        r = self.result
        self.hung_up = True
        self.hangup_t = self.clock
        self.cause = cause
        r.hangup_cause = cause
        r.hangup_by = by
        if r.outcome is None:
            r.outcome = {"target": "hungup", "caller": "caller_hangup", "far_end": "routed"}.get(by, "protocol_error")
        self.answer_state = "hangup"
        self.state_number = 10
        for queued in self.queue:
            self._sync_done(queued)  # static mode: release a reply waiting on a queued app
        self.queue.clear()
        lingering = self.linger is not None and self.connected
        notice_sent = False
        place = self.sim.linger_notice
        if place == "auto":
            if self.sim.linger_race or by == "freeswitch":
                place = "before_hangup"  # badapp.txt, fs-1.11/03d
            else:
                place = "after_hangup" if by in ("caller", "far_end") else "last"  # caller_hangup.txt
        if lingering and place == "before_hangup":
            self._linger_notice()
            notice_sent = True
        self.emit("CHANNEL_HANGUP")
        if lingering and not notice_sent and place == "after_hangup":
            self._linger_notice()
            notice_sent = True
        # Without linger a caller hang-up closes the socket at once (03c); a hang-up the
        # target asked for still flushes the final events first (09b, 12).
        if lingering or by == "target" or not self.connected:
            if self.current:
                self._abort_current()
            if self.in_socket_app and self.connected:
                if self.sim.mode == "async":
                    self.emit("CHANNEL_UNPARK")  # the socket application's park loop ends
                self._complete_socket_app()
            self.state = "CS_HANGUP"
            self.emit("CHANNEL_STATE", with_vars=False)
            self.state, self.state_number, self.call_state = "CS_REPORTING", 11, "HANGUP"
            self.emit("CHANNEL_STATE", with_vars=False)
            self._billing_variables()
            self.emit("CHANNEL_HANGUP_COMPLETE", pre=[("Hangup-Cause", cause)])
        else:
            self.current = None
            self.state, self.state_number, self.call_state = "CS_REPORTING", 11, "HANGUP"
            self._billing_variables()
        if self.sock is None:
            self._end()
            return
        if lingering:
            if not notice_sent:
                self._linger_notice()
            if self.linger is not None and self.linger >= 0:
                self._after(self.linger, self._linger_timeout)
            else:
                wait = self.sim.linger_timeout
                if wait is not None:
                    self._after(wait, self._linger_timeout)
                else:
                    self._after_real(self.sim.target_wait(30.0), self._linger_forever)
        else:
            self._fs_close()

    def _linger_notice(self) -> None:
        linger = self.linger if self.linger is not None else -1
        self._send(wire.linger_notice(self.uuid, self.channel_name, linger))

    def _linger_timeout(self) -> None:
        if not self.finished and self.sock is not None:
            self._fs_close()

    def _linger_forever(self) -> None:
        if self.finished or self.sock is None:
            return
        self.result.violations.append("target held the lingering socket open after hang-up and never sent exit")
        self._fs_close()

    def _billing_variables(self) -> None:
        end = self.hangup_t if self.hangup_t is not None else self.clock
        start = 0.0

        def stamp(t: float) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._us(t) / 1_000_000))

        def us(t: float | None) -> int:
            return 0 if t is None else self._us(t)

        answered = self.answered_t
        set_ = self._setvar
        if self.record_started is not None:
            # the media bug closes at the hang-up: 8 kHz, 16 bit, two channels with RECORD_STEREO
            ms = int((end - self.record_started) * 1000)
            channels = 2 if _true(str(self.vars.get("RECORD_STEREO", ""))) else 1
            set_("record_file_size", str(44 + ms * 8 * 2 * channels))
            set_("record_samples", str(ms * 8))
            set_("record_seconds", str(ms // 1000))
            set_("record_ms", str(ms))
            set_("record_completion_cause", "success-silence")  # the lab's callers are silent
        set_("hangup_cause", self.cause)
        set_("hangup_cause_q850", str(Q850.get(self.cause or "", 0)))
        set_("digits_dialed", self.collected_digits or "none")
        set_("start_stamp", stamp(start))
        set_("profile_start_stamp", stamp(start))
        if answered is not None:
            set_("answer_stamp", stamp(answered))
        if self.early_t is not None:
            set_("progress_media_stamp", stamp(self.early_t))
        set_("end_stamp", stamp(end))
        for name, t in (
            ("start", start), ("profile_start", start), ("answer", answered), ("bridge", self.bridged_t),
            ("last_hold", None), ("hold_accum", None), ("resurrect", None), ("progress", self.progress_t),
            ("progress_media", self.early_t), ("end", end),
        ):
            if name == "hold_accum":
                set_("hold_accum_seconds", "0")
                set_("hold_accum_usec", "0")
                set_("hold_accum_ms", "0")
                continue
            set_(f"{name}_epoch", str(us(t) // 1_000_000))
            set_(f"{name}_uepoch", str(us(t)))
        if self.last_app:
            set_("last_app", self.last_app[0])
            set_("last_arg", self.last_app[1] or None)
        set_("caller_id", f'"{self.profile.get("Caller-ID-Name", "")}" <{self.profile.get("Caller-ID-Number", "")}>')
        dur = end - start
        bill = end - answered if answered is not None else 0.0
        answer_in = answered - start if answered is not None else 0.0
        progress_in = self.progress_t - start if self.progress_t is not None else 0.0
        media_in = self.early_t - start if self.early_t is not None else 0.0
        # flow_billsec runs from the start like duration, but only for a call that was answered
        values = {"duration": dur, "billsec": bill, "progresssec": progress_in, "answersec": answer_in,
                  "waitsec": 0.0, "progress_mediasec": media_in, "flow_billsec": dur if answered is not None else 0.0}
        for name, secs in values.items():
            set_(name, str(int(secs)))
        for name, secs in values.items():
            base = "mduration" if name == "duration" else name[:-3] + "msec"
            set_(base, str(int(secs * 1000)))
        for name, secs in values.items():
            base = "uduration" if name == "duration" else name[:-3] + "usec"
            set_(base, str(int(secs * 1_000_000)))
        if not self.sofia:
            set_("is_loopback", "1")  # mod_loopback marks its legs at the end (fs-1.10.12 captures)
        else:
            # mod_sofia says how the SIP dialog ended (fs-1.10.12/hard_block_sip: send_refuse)
            ours = self.result.hangup_by != "caller"
            set_("sip_hangup_disposition", ("send_bye" if ours else "recv_bye") if answered is not None
                 else ("send_refuse" if ours else "recv_cancel"))

    # ------------------------------------------------------------------ closing

    def _fs_close(self, final: bool = False) -> None:
        """FreeSWITCH ends the session's socket: goodbye notice, FIN, then gone."""
        if self.sock is None:
            return
        self._send(wire.disconnect_notice(self.uuid))
        self._flush()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(_stdsocket.SHUT_WR)
            except OSError:
                pass
            if self.exited:
                self._drain_after_exit(sock)
        self._close_socket()
        if not final:
            self._after_socket_gone()

    def _drain_after_exit(self, sock: gsocket.socket) -> None:
        """Anything the target writes after ``exit`` is a bug: read it for a moment."""
        deadline = time.monotonic() + self.sim.exit_grace
        buf = bytes(self._rx)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except (TimeoutError, _stdsocket.timeout, OSError):
                break
            if not data:
                break
            buf += data
        for m in re.finditer(rb"([^\r\n][^\n]*)\n", buf.lstrip(b"\r\n")):
            self.result.violations.append(f"command after exit: {m.group(1)[:60].decode('utf-8', 'replace')!r}")
            break

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        self._out.clear()
        self._splits.clear()
        self._out_len = 0
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _on_target_eof(self) -> None:
        if self.sock is None:
            return
        self._close_socket()
        self._after_socket_gone()

    def _after_socket_gone(self) -> None:
        """The target is gone (closed, exit, or FreeSWITCH closed): what happens to the call?"""
        if self.socket_gone:
            return
        self.socket_gone = True
        self.read_paused = False
        if self.finished:
            return
        if self.hung_up:
            self._end()
            return
        if not self.connected:
            self._stranded("the socket closed before connect; the channel stays parked in the socket application")
            return
        if self.current or self.queue:
            # socket_function() runs the queued applications (switch_ivr_parse_all_events)
            # after the park ends; decide once they are done (see _complete).
            if not self.parked:
                self._park()
            return
        if self.routed:
            return  # the call goes on elsewhere until it ends
        self._decide_after_close()

    def _decide_after_close(self) -> None:
        r = self.result
        if self.sim.mode != "async" or self.resume or self.app_ran:
            if r.outcome is None:
                r.outcome = "fallback"
            self._end()
        else:
            self._stranded("closed without any instruction: the ringing channel is left in the socket application")

    def _stranded(self, why: str) -> None:
        self.result.violations.append(why)
        if self.result.outcome is None:
            self.result.outcome = "stranded"
        self._end()

    def _finalize(self) -> None:
        r = self.result
        r.ended_at = time.monotonic()
        r.answered = self.answered_t is not None
        r.early_media = self.early_t is not None
        end = self.hangup_t if self.hangup_t is not None else self.clock
        r.billsec = max(0.0, end - self.answered_t) if self.answered_t is not None else 0.0
        r.variables = {k: (v if isinstance(v, str) else wire.serialize_value(v)) for k, v in self.vars.items()}
        if r.outcome is None:
            r.outcome = "protocol_error"


def _atoi(text: str) -> int:
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def _true(text: str) -> bool:
    return text.strip().lower() in ("true", "yes", "on", "1", "enabled", "active", "allow")


class FakeFreeSWITCH:
    """A FreeSWITCH that dials into a target for each simulated channel.

    ``targets`` are tried in order like ``socket h1:p1|h2:p2`` (connection refused: next).
    """

    def __init__(
        self,
        targets: list[tuple[str, int]] | tuple[str, int],
        *,
        time_scale: float = 0.01,
        mode: str = "async",
        linger_race: bool = False,
        linger_notice: str = "auto",
        linger_timeout: float | None = None,
        max_call_time: float = 120.0,
        min_real_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        exit_grace: float = 0.05,
        split_events: float = 0.25,
        playback_duration: float = 0.2,
        playback_durations: dict[str, float] | None = None,
        hostname: str = "vm",
        core_uuid: str | None = None,
        ipv4: str = "192.0.2.2",
        ipv6: str = "fd00::2",
        seed: int | None = None,
        first_event_sequence: int = 400,
    ) -> None:
        """
        time_scale: real seconds per channel second.
        mode: "async" (``async full``) or "full" (static ``full``: sendmsg replies after the app).
        linger_race: send the linger notice BEFORE CHANNEL_HANGUP (seen under load, 03d).
        linger_notice: where the linger notice goes among the hang-up events, a race in
            FreeSWITCH: "before_hangup" (03d), "after_hangup" (caller_hangup.txt), "last" (after
            CHANNEL_HANGUP_COMPLETE: most fs-1.10.12 captures), or "auto": before with
            ``linger_race``, after CHANNEL_HANGUP for a caller's or far end's hang-up, else last.
        linger_timeout: channel seconds to keep a ``linger`` (forever) socket open after the
            hang-up before closing it ourselves; None: wait for ``exit`` up to 30 channel
            seconds (at least ``min_real_timeout`` real seconds) and record a violation.
        max_call_time: cap on a call, channel seconds (never below ``min_real_timeout`` real s).
        min_real_timeout: floor, in real seconds, of every wait on the target, so that a
            loaded target is not failed because the channel clock runs fast.
        split_events: probability that a write is split between an event's header block and
            its body (FreeSWITCH sends them with two send() calls).
        """
        if isinstance(targets, tuple):
            targets = [targets]
        if not targets:
            raise ValueError("at least one target is needed")
        if mode not in ("async", "full"):
            raise ValueError("mode must be 'async' or 'full'")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.targets = [(str(h), int(p)) for h, p in targets]
        self.time_scale = time_scale
        self.mode = mode
        self.linger_race = linger_race
        if linger_notice not in ("auto", "before_hangup", "after_hangup", "last"):
            raise ValueError("linger_notice must be auto, before_hangup, after_hangup or last")
        self.linger_notice = linger_notice
        self.linger_timeout = linger_timeout
        self.max_call_time = max_call_time
        self.min_real_timeout = min_real_timeout
        self.connect_timeout = connect_timeout
        self.exit_grace = exit_grace
        self.split_events = split_events
        self.playback_duration = playback_duration
        self.playback_durations = dict(playback_durations or {})
        self.hostname = hostname
        self.core_uuid = core_uuid or str(uuid4())
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self._rng = random.Random(seed)
        self._event_seq = itertools.count(first_event_sequence)
        self._session_ids = itertools.count(1)
        self.socket_data = "|".join(f"{h}:{p}" for h, p in self.targets) + (" async full" if mode == "async" else " full")
        self.calls_started = 0
        self.active = 0
        self.peak = 0

    def target_wait(self, channel_seconds: float) -> float:
        """Real seconds to wait on the target for something FreeSWITCH waits ``channel_seconds`` for."""
        return max(channel_seconds * self.time_scale, self.min_real_timeout)

    def _make_caller(self, caller: Caller | None, fields: dict[str, object]) -> Caller:
        if caller is None:
            return Caller(**fields)  # type: ignore[arg-type]
        return dataclasses.replace(caller, **fields) if fields else caller

    def call(self, caller: Caller | None = None, **caller_fields: object) -> SimResult:
        """Run one call to completion, blocking the calling greenlet."""
        c = self._make_caller(caller, caller_fields)
        self.calls_started += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return _Channel(self, c).run()
        finally:
            self.active -= 1

    def spawn(self, caller: Caller | None = None, **caller_fields: object) -> gevent.Greenlet:
        """Start a call in its own greenlet; ``.get()`` returns the SimResult."""
        return gevent.spawn(self.call, self._make_caller(caller, caller_fields))

    def run_many(self, callers: Iterable[Caller], concurrency: int) -> list[SimResult]:
        """Run calls with at most ``concurrency`` channels up at once; results in input order."""
        pool = gevent.pool.Pool(max(1, concurrency))
        greenlets = [pool.spawn(self.call, c) for c in callers]
        gevent.joinall(greenlets, raise_error=True)
        return [g.get() for g in greenlets]

    def connect_reply_for(
        self,
        caller: Caller,
        *,
        at_us: int | None = None,
        event_sequence: int | None = None,
        socket_host: str = "127.0.0.1",
    ) -> bytes:
        """The CHANNEL_DATA bytes this simulator would send for ``caller`` (for tests).

        ``at_us`` fixes the channel creation / event time and ``event_sequence`` the
        Event-Sequence, so that a captured reply can be reproduced byte for byte.
        """
        at_us = at_us if at_us is not None else int(time.time() * 1_000_000)
        if caller.created_us is None:
            caller = dataclasses.replace(caller, created_us=at_us)
        ch = _Channel(self, caller)
        ch.result.target = (socket_host, 0)
        ch.epoch0 = at_us / 1_000_000
        saved = self._event_seq
        if event_sequence is not None:
            self._event_seq = itertools.count(event_sequence)
        try:
            ch._setup_channel()
            return ch.connect_reply()
        finally:
            self._event_seq = saved
