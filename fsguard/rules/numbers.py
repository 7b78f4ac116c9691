"""Telephone numbers: everything fsguard stores or compares is E.164 (``+15551234567``).

phonenumbers does the parsing (it knows every country's numbering plan); parsing is cached
because the same numbers come back all day and a parse costs tens of microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

# A new caller's number goes through a hundred-odd metadata patterns; Python's own regex cache
# keeps 512 patterns for the whole process, so under a flood of new numbers they were compiled
# again and again. phonenumbers' own cache keeps every one once compiled (a few hundred KB).
phonenumbers.enable_pattern_cache()

#: what carriers and phones put in the caller id when there is no number to show
ANONYMOUS_NAMES = frozenset({"", "anonymous", "unknown", "restricted", "private", "unavailable",
                             "withheld", "blocked", "0000000000", "0"})

_URI_NUMBER = re.compile(r"(?:sips?|tel):\+?([^@;>]*)", re.IGNORECASE)


class InvalidNumber(ValueError):
    """A number that cannot be read as a telephone number; the message says why."""


@dataclass(frozen=True, slots=True)
class Number:
    raw: str
    e164: str | None      # None when there is no usable number
    valid: bool           # phonenumbers says the number can exist
    anonymous: bool       # no number at all (withheld at the network, "anonymous", empty)


def is_anonymous(raw: str) -> bool:
    return raw.strip().lower() in ANONYMOUS_NAMES


@lru_cache(maxsize=65536)
def parse(raw: str, region: str = "US") -> Number:
    """Read a number as a switch presents it: ``+1...``, ``1555...``, ``00 44 ...``, ``(555) ...``."""
    text = raw.strip()
    if is_anonymous(text):
        return Number(raw, None, False, True)
    digits = re.sub(r"[\s().\-/]", "", text)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    candidates = [digits]
    if not digits.startswith("+") and digits.isdigit() and len(digits) > 10:
        candidates.append("+" + digits)   # a number with its country code but no plus sign
    best: Number | None = None
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        number = Number(raw, e164, phonenumbers.is_valid_number(parsed), False)
        if number.valid:
            return number
        best = best or number
    return best or Number(raw, None, False, False)


def to_e164(raw: str, region: str = "US") -> str:
    """The E.164 form of a number an operator typed, or InvalidNumber with the reason.

    One rule for every command that takes a number (lists, outbound, erase, customers, ...): a
    number phonenumbers calls valid, or one of a *possible* length for its country (a range newer
    than phonenumbers' metadata, or +1 555, still reaches carriers and callers), never a string
    such as ``123`` that only becomes a number by guessing (``+1123``).
    """
    number = parse(raw, region)
    if number.anonymous:
        raise InvalidNumber(f"{raw!r} is not a number")
    if not number.e164 or not (number.valid or _possible(number.e164)):
        raise InvalidNumber(f"{raw!r} is not a valid telephone number (region {region})")
    return number.e164


def _possible(e164: str) -> bool:
    try:
        return bool(phonenumbers.is_possible_number(phonenumbers.parse(e164)))
    except phonenumbers.NumberParseException:
        return False


def number_from_uri(value: str) -> str:
    """The user part of a SIP or tel URI as found in P-Asserted-Identity or Remote-Party-ID."""
    match = _URI_NUMBER.search(value)
    if not match:
        return value.strip().strip("<>\"")
    user = match.group(1)
    return ("+" + user) if "+" + user in value else user
