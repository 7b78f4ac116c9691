"""Where a call goes when fsguard lets go of it without a decision: the fail-open policy, in one place.

A stage failing, the database gone, over capacity, shutting down: the call still gets an
instruction. An inbound call goes to ``policy.fail_open_route`` (the queue); an agent's outbound
call goes where it was going (``policy.fail_open_route_outbound``, by default dialled as the
outbound stage dials). With ``policy.on_error = "closed"`` a failure hangs up instead; capacity
and shutdown always fail open.
"""

from __future__ import annotations

import re

from fsguard.call.instructions import Hangup, Instruction
from fsguard.config import OutboundSettings, PolicySettings
from fsguard.rules.freeze import dial_parts, dialled_number

#: a dialled string that may go into a dial string as it is (no gateway/URI syntax); the outbound
#: stage dials such a string unchecked when it is not a number it can read
PLAIN_DIGITS = re.compile(r"^\+?[0-9]{1,20}\Z")


def fail_open_for(policy: PolicySettings, direction: str, dnis: str, outbound: OutboundSettings,
                  region: str = "US") -> Instruction:
    """The instruction for a call fsguard lets go of without a decision (a failure, over
    capacity, shutdown): ``fail_open_route`` for an inbound call; for an agent's outbound call
    (``direction`` as :func:`fsguard.call.call.direction_of` says) the dialled number ``dnis``,
    dialled with ``fail_open_route_outbound`` - the agent's call goes where it was going, not
    into the inbound queue.

    The number goes into the dial string the way the outbound stage puts it there: in E.164
    when it can be read (``region`` for national numbers), plain digits as they are; any other
    dialled string (letters, URI syntax) never reaches a dial string: ``hangup
    INVALID_NUMBER_FORMAT``, what the outbound stage answers to it too.
    """
    if direction != "outbound":
        return Instruction.parse(policy.fail_open_route)
    template = outbound.dial_target if policy.fail_open_route_outbound == "dial" else policy.fail_open_route_outbound
    number, plain = dialled_number(dnis, region), dnis.strip()
    if number is not None:
        parts = dial_parts(number)
    elif PLAIN_DIGITS.match(plain):
        parts = (plain, plain.lstrip("+"), plain.lstrip("+"))
    elif template.format(number="", digits="", national="") == template.format(number="1", digits="1", national="1"):
        parts = ("", "", "")  # a route that does not name the number: nothing unsafe goes into it
    else:
        return Hangup("INVALID_NUMBER_FORMAT")
    return Instruction.parse(template.format(number=parts[0], digits=parts[1], national=parts[2]))


def on_failure(policy: PolicySettings, direction: str, dnis: str, outbound: OutboundSettings,
               region: str = "US") -> Instruction:
    """The instruction after fsguard itself failed: fail-open's route, or fail-closed's hang-up."""
    if policy.on_error == "closed":
        return Hangup(policy.fail_closed_cause)
    return fail_open_for(policy, direction, dnis, outbound, region)
