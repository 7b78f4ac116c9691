"""Where a caller's number is: country, US state or Canadian province, place and area code.

Read from the numbering plan (phonenumbers' geocoding data), never from the network: routing
rules with ``country``, ``area_code`` or ``region`` conditions use it, and the agent's screen
shows its label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import phonenumbers

__all__ = ["Region", "caller_region", "US_STATES", "CA_PROVINCES"]


def _geocoder() -> Any:
    """phonenumbers' geocoder, imported on first use: its place names take 0.4 s to load, which
    every ``fsguard`` command would pay at start. A serving process loads it before its first
    call (:func:`load`)."""
    from phonenumbers import geocoder

    return geocoder


def load() -> None:
    """Load the geocoder now (``fsguard serve``, before the first call and before freezing the heap)."""
    _geocoder()

US_STATES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California", "CO": "Colorado",
    "CT": "Connecticut", "DE": "Delaware", "DC": "Washington D.C.", "FL": "Florida", "GA": "Georgia",
    "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa", "KS": "Kansas",
    "KY": "Kentucky", "LA": "Louisiana", "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts",
    "MI": "Michigan", "MN": "Minnesota", "MS": "Mississippi", "MO": "Missouri", "MT": "Montana",
    "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire", "NJ": "New Jersey", "NM": "New Mexico",
    "NY": "New York", "NC": "North Carolina", "ND": "North Dakota", "OH": "Ohio", "OK": "Oklahoma",
    "OR": "Oregon", "PA": "Pennsylvania", "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota",
    "TN": "Tennessee", "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington State",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
}
CA_PROVINCES = {
    "AB": "Alberta", "BC": "British Columbia", "MB": "Manitoba", "NB": "New Brunswick",
    "NL": "Newfoundland and Labrador", "NS": "Nova Scotia", "NT": "Northwest Territories", "NU": "Nunavut",
    "ON": "Ontario", "PE": "Prince Edward Island", "QC": "Quebec", "SK": "Saskatchewan", "YT": "Yukon",
}
_SUBDIVISIONS = {"US": US_STATES, "CA": CA_PROVINCES}
# phonenumbers' geocoder names a few of them differently from the lists above
_ALIASES = {"washington": "WA", "washington d.c.": "DC", "washington dc": "DC", "district of columbia": "DC",
            "québec": "QC", "newfoundland": "NL"}


@dataclass(frozen=True)
class Region:
    """Where a number is, as far as its numbering plan says (phonenumbers' geocoding data).

    ``subdivision`` (``US-CA``, ``CA-ON``) is known for North American numbers whose geocoding
    names a state or province; elsewhere ``place`` is the geocoder's description (``London``).
    A mobile or non-geographic number has a country and nothing more.
    """

    country: str | None = None
    subdivision: str | None = None
    place: str = ""
    area_code: str | None = None

    def labels(self) -> set[str]:
        """The names a ``region`` condition may use for this number, lower-cased."""
        out: set[str] = set()
        if self.subdivision:
            country, _, code = self.subdivision.partition("-")
            out.add(self.subdivision.lower())
            out.add(_SUBDIVISIONS.get(country, {}).get(code, "").lower())
        if self.place:
            out.add(self.place.lower())
            out.add(self.place.split(",")[0].strip().lower())
        out.discard("")
        return out

    @property
    def label(self) -> str:
        """One short name for the agent's screen and the CDR: ``US-CA``, else ``GB London``, else ``GB``."""
        if self.subdivision:
            return self.subdivision
        if self.country and self.place:
            return f"{self.country} {self.place}"
        return self.country or ""

    def as_dict(self) -> dict[str, Any]:
        return {"country": self.country, "subdivision": self.subdivision, "place": self.place,
                "area_code": self.area_code}


def _subdivision(country: str | None, place: str) -> str | None:
    table = _SUBDIVISIONS.get(country or "")
    if not table or not place:
        return None
    last = place.rsplit(",", 1)[-1].strip()
    if last.upper() in table and (last.isupper() or "," in place):
        return f"{country}-{last.upper()}"
    lowered = place.strip().lower()
    for code, name in table.items():
        if name.lower() == lowered:
            return f"{country}-{code}"
    alias = _ALIASES.get(lowered)
    return f"{country}-{alias}" if alias and alias in table else None


@lru_cache(maxsize=65536)
def caller_region(e164: str | None) -> Region:
    """The region of a caller's number (cached per number: the same callers come back all day)."""
    if not e164:
        return Region()
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return Region()
    country = phonenumbers.region_code_for_number(parsed)
    if country in (None, "ZZ", "001"):
        return Region()
    # The number's type, worked out once: phonenumbers' is_valid_number, description_for_number
    # and length_of_geographical_area_code each work it out again (a walk over the country's
    # number patterns), and a new caller's region cost 250 us of CPU through the switch.
    kind = phonenumbers.number_type(parsed)   # UNKNOWN: not a valid number
    geographic = phonenumbers.is_number_type_geographical(kind, parsed.country_code)
    place = _geocoder().description_for_valid_number(parsed, "en") if geographic else ""
    if place and place.lower() == _country_name(country):
        place = ""  # the geocoder only knew the country: not a place
    national = phonenumbers.national_significant_number(parsed)
    if not geographic:
        area = None
    elif parsed.country_code == 1:
        area = national[:3]   # the North American plan: every geographic number's area code is 3 digits
    else:
        length = phonenumbers.length_of_geographical_area_code(parsed)
        area = national[:length] if length else None
    return Region(country=country, subdivision=_subdivision(country, place), place=place, area_code=area)


@lru_cache(maxsize=512)
def _country_name(code: str) -> str:
    example = phonenumbers.example_number(code)
    return _geocoder().country_name_for_number(example, "en").lower() if example else ""
