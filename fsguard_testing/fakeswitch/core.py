"""What every part of the fake FreeSWITCH shares, as FreeSWITCH's core has it.

The media tick its park loop runs on, the hang-up causes (``switch_call_cause_t``) and the core's
string helpers that read application arguments: ``atoi``, ``switch_true`` and
``switch_separate_string`` (:func:`split_args`).
"""

from __future__ import annotations

import re

#: One media frame: the park loop of an async socket runs queued applications per tick.
TICK = 0.02

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


def cause_name(text: str) -> str | None:
    """Normalise a hang-up cause given as a name or a Q.850 number; None if unknown."""
    text = text.strip().upper()
    if text in Q850:
        return text
    if text.isdigit() and int(text) in _CAUSE_BY_NUMBER:
        return _CAUSE_BY_NUMBER[int(text)]
    return None


def atoi(text: str) -> int:
    """C's atoi(), which FreeSWITCH reads numbers with: the leading integer, 0 when there is none."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def switch_true(text: str) -> bool:
    """switch_true(): the words FreeSWITCH takes for yes in a variable or a header."""
    return text.strip().lower() in ("true", "yes", "on", "1", "enabled", "active", "allow")


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
