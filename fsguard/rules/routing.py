"""The routing table: which rule sends a caller where, and why. Pure: no database, no channel.

The table is configuration (``[[routing.rules]]``). Rules are tried in order and the first whose
conditions all hold wins; if none does, the call goes to ``routing.default_target``. Every rule
that was passed over says why, so ``fsguard route explain`` and the call record can answer "why
did this caller reach that queue?" in words::

    [[routing.rules]]
    name = "fraud"
    risk_at_least = 50          # screening's risk points
    target = "fraud"            # a bare name is a mod_callcenter queue: callcenter fraud@default

    [[routing.rules]]
    name = "vip"
    vip = true
    target = "vip"

Conditions (all optional; a rule without any matches every caller):

``vip``, ``known``, ``verified`` (true/false), ``risk_at_least``, ``risk_below``, ``dnis`` (dialled
numbers, ``*`` at the end for a prefix), ``country`` (ISO codes of the caller's number),
``area_code`` (the geographic area code of the caller's number), ``region`` (the customer's
region, or the number's: ``US-CA``, ``California``, ``London``...), ``customer_preference`` (the
customer record names an agent or a queue).

A target is a queue name (``vip`` -> ``callcenter vip@<routing.domain>``), ``customer`` (the
customer's own agent, else their own queue; the rule only matches a caller who has one), or a
full instruction ``transfer ...`` / ``callcenter ...`` / ``bridge ...``. A queue with business
hours (``routing.hours``) that is closed sends the call to the rule's ``after_hours`` target or
``routing.after_hours_target``; with neither, the rule is passed over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import phonenumbers

from fsguard.config import ConfigError, validate_target
from fsguard.rules.hours import Hours, parse_holidays, zone
from fsguard.rules.regions import Region

if TYPE_CHECKING:
    from fsguard.config import RoutingSettings

__all__ = ["Rule", "RouteFacts", "RouteDecision", "RuleTrace", "RoutingTable", "build_table", "queue_target",
           "one_after_another", "CUSTOMER"]

#: the target that means "the caller's own agent, else their own queue"
CUSTOMER = "customer"
#: what a queue or agent name may contain (it goes into a dial string: nothing else gets in)
NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-]{1,64}(@[A-Za-z0-9_.\-]{1,64})?\Z")

# -------------------------------------------------------------------- facts


@dataclass(frozen=True)
class RouteFacts:
    """Everything a routing decision looks at, gathered by the stage (or ``route explain``)."""

    number: str | None = None
    dnis: str = ""
    dnis_e164: str | None = None
    known: bool = False
    vip: bool = False
    verified: bool | None = None
    risk: int = 0
    region: Region = field(default_factory=Region)
    #: the region named on the customer record, if any
    customer_region: str | None = None
    customer_queue: str | None = None
    customer_agent: str | None = None
    #: when the call is routed (aware); business hours are read against it
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def region_label(self) -> str:
        return self.customer_region or self.region.label


def queue_target(name: str, domain: str) -> str:
    """``vip`` -> ``callcenter vip@default``; ``vip@sales`` stays in its own domain."""
    return f"callcenter {name if '@' in name else f'{name}@{domain}'}"


def _queue_of(target: str) -> str | None:
    app, _, arg = target.partition(" ")
    return arg.strip() if app == "callcenter" else None


# -------------------------------------------------------------------- rules


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"{key}: expected a string or a list of strings, got {value!r}")
    return [str(v).strip() for v in value if str(v).strip()]


def _as_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class Rule:
    """One line of the routing table: conditions (all must hold) and where the call goes."""

    name: str
    target: str
    after_hours: str | None = None
    vip: bool | None = None
    known: bool | None = None
    verified: bool | None = None
    risk_at_least: int | None = None
    risk_below: int | None = None
    dnis: tuple[str, ...] = ()
    country: tuple[str, ...] = ()
    area_code: tuple[str, ...] = ()
    region: tuple[str, ...] = ()
    customer_preference: bool | None = None

    CONDITIONS = ("vip", "known", "verified", "risk_at_least", "risk_below", "dnis", "country", "area_code",
                  "region", "customer_preference")

    @classmethod
    def parse(cls, data: Any, index: int, domain: str) -> Rule:
        key = f"routing.rules[{index}]"
        if not isinstance(data, dict):
            raise ConfigError(f"{key}: expected a table like {{ name = \"vip\", vip = true, target = \"vip\" }}, "
                              f"got {data!r} (rules are set in the configuration file, not the environment)")
        known_keys = {"name", "target", "after_hours", *cls.CONDITIONS}
        for k in data:
            if k not in known_keys:
                raise ConfigError(f"{key}.{k}: unknown rule key (conditions: {', '.join(cls.CONDITIONS)}; "
                                  "also name, target, after_hours)")
        name = str(data.get("name") or f"rule {index + 1}").strip()
        key = f"routing.rules[{index}] ({name})"
        if "target" not in data or not isinstance(data["target"], str) or not data["target"].strip():
            raise ConfigError(f"{key}.target: every rule needs a target (a queue name, \"customer\", "
                              "or 'transfer|callcenter|bridge <argument>')")
        fields: dict[str, Any] = {"name": name, "target": _target(data["target"], domain, f"{key}.target",
                                                                   allow_customer=True)}
        if data.get("after_hours"):
            fields["after_hours"] = _target(str(data["after_hours"]), domain, f"{key}.after_hours")
        for flag in ("vip", "known", "verified", "customer_preference"):
            if flag in data:
                fields[flag] = _as_bool(data[flag], f"{key}.{flag}")
        for bound in ("risk_at_least", "risk_below"):
            if bound in data:
                fields[bound] = _as_int(data[bound], f"{key}.{bound}")
        if "dnis" in data:
            fields["dnis"] = tuple(_as_list(data["dnis"], f"{key}.dnis"))
        if "country" in data:
            countries = tuple(c.upper() for c in _as_list(data["country"], f"{key}.country"))
            for c in countries:
                if c not in phonenumbers.SUPPORTED_REGIONS:
                    raise ConfigError(f"{key}.country: {c!r} is not an ISO 3166 country code (US, GB, FR...)")
            fields["country"] = countries
        if "area_code" in data:
            codes = tuple(a.lstrip("+") for a in _as_list(data["area_code"], f"{key}.area_code"))
            if not all(c.isdigit() for c in codes):
                raise ConfigError(f"{key}.area_code: area codes are digits, got {data['area_code']!r}")
            fields["area_code"] = codes
        if "region" in data:
            fields["region"] = tuple(_as_list(data["region"], f"{key}.region"))
        if fields["target"] == CUSTOMER:
            if fields.get("customer_preference") is False:
                raise ConfigError(f"{key}: target \"customer\" cannot go with customer_preference = false")
            fields["customer_preference"] = True
        return cls(**fields)

    # ------------------------------------------------------------ matching

    def check(self, f: RouteFacts) -> tuple[bool, list[str]]:
        """(matched, words): what held, or the first condition that did not."""
        held: list[str] = []

        def miss(why: str) -> tuple[bool, list[str]]:
            return False, [why]

        if self.vip is not None:
            if f.vip != self.vip:
                return miss("caller is not a VIP" if self.vip else "caller is a VIP")
            held.append("VIP customer" if self.vip else "not a VIP")
        if self.known is not None:
            if f.known != self.known:
                return miss("caller is not a known customer" if self.known else "caller is a known customer")
            held.append("known customer" if self.known else "unknown caller")
        if self.verified is not None:
            is_verified = f.verified is True
            if is_verified != self.verified:
                return miss("caller was not verified" if self.verified else "caller was verified")
            held.append("verified" if self.verified else "not verified")
        if self.risk_at_least is not None:
            if f.risk < self.risk_at_least:
                return miss(f"risk {f.risk} below {self.risk_at_least}")
            held.append(f"risk {f.risk} at or above {self.risk_at_least}")
        if self.risk_below is not None:
            if f.risk >= self.risk_below:
                return miss(f"risk {f.risk} not below {self.risk_below}")
            held.append(f"risk {f.risk} below {self.risk_below}")
        if self.dnis:
            hit = _dnis_match(self.dnis, f.dnis, f.dnis_e164)
            if hit is None:
                return miss(f"dialled number {f.dnis} not in {', '.join(self.dnis)}")
            held.append(f"dialled {f.dnis} ({hit})")
        if self.country:
            if f.region.country not in self.country:
                return miss(f"caller's country {f.region.country or 'unknown'} not in {', '.join(self.country)}")
            held.append(f"caller's country {f.region.country}")
        if self.area_code:
            if f.region.area_code not in self.area_code:
                return miss(f"area code {f.region.area_code or 'unknown'} not in {', '.join(self.area_code)}")
            held.append(f"area code {f.region.area_code}")
        if self.region:
            labels = f.region.labels()
            if f.customer_region:
                labels.add(f.customer_region.lower())
            hits = [r for r in self.region if r.lower() in labels]
            if not hits:
                return miss(f"caller's region {f.region_label or 'unknown'} not in {', '.join(self.region)}")
            held.append(f"caller's region {f.region_label} ({hits[0]})")
        if self.customer_preference is not None:
            has = bool(f.customer_agent or f.customer_queue)
            if has != self.customer_preference:
                return miss("customer has no own agent or queue" if self.customer_preference
                            else "customer has an own agent or queue")
            if self.customer_preference:
                own = f"agent {f.customer_agent}" if f.customer_agent else f"queue {f.customer_queue}"
                held.append(f"customer's own {own}")
        return True, held or ["no conditions: every caller"]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "target": self.target}
        if self.after_hours:
            out["after_hours"] = self.after_hours
        for c in self.CONDITIONS:
            value = getattr(self, c)
            if value not in (None, ()):
                out[c] = list(value) if isinstance(value, tuple) else value
        return out


def _dnis_match(patterns: tuple[str, ...], dnis: str, dnis_e164: str | None) -> str | None:
    """The pattern that matches the dialled number: as dialled, in E.164, or national (``8005550100``)."""
    candidates = {c.lstrip("+") for c in (dnis, dnis_e164, _national(dnis_e164)) if c}
    for p in patterns:
        bare = p.lstrip("+")
        if bare.endswith("*"):
            if any(c.startswith(bare[:-1]) for c in candidates):
                return p
        elif bare in candidates:
            return p
    return None


@lru_cache(maxsize=4096)
def _national(e164: str | None) -> str | None:
    if not e164:
        return None
    try:
        return phonenumbers.national_significant_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None


def _target(text: str, domain: str, key: str, *, allow_customer: bool = False) -> str:
    text = text.strip()
    if text == CUSTOMER:
        if not allow_customer:
            raise ConfigError(f"{key}: \"customer\" is only a rule's target")
        return CUSTOMER
    if " " not in text:
        if not NAME_RE.match(text):
            raise ConfigError(f"{key}: {text!r} is not a queue name (letters, digits, . _ - and @domain)")
        return queue_target(text, domain)
    validate_target(text, key)
    return text


# ----------------------------------------------------------------- decision


@dataclass
class RuleTrace:
    """What one rule made of the caller, in words."""

    rule: str
    matched: bool
    why: list[str]
    target: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "matched": self.matched, "why": self.why, "target": self.target}


@dataclass
class RouteDecision:
    """Where the call goes and why."""

    target: str
    #: the rule that won, None for the default target
    rule: str | None
    code: str
    reason: str
    #: the mod_callcenter queue the call joins (``vip@default``; for an own agent, the fallback's)
    queue: str | None = None
    #: the customer's own agent, when the target rings them first
    agent: str | None = None
    #: where the call goes if the customer's own agent does not answer (part of ``target``)
    fallback: str | None = None
    after_hours: bool = False
    trace: list[RuleTrace] = field(default_factory=list)


def one_after_another(first: str, then: str) -> str:
    """One instruction that runs ``first`` and, if it returns (a bridge nobody answered), ``then``.

    An inline dialplan (``transfer 'm:^:bridge:user/1001^callcenter:vip@default' inline``): the
    channel runs the steps in order by itself. Sending the fallback as a second application
    behind the bridge would not do: FreeSWITCH parses queued events inside a running bridge, so
    the fallback would run in the middle of the conversation, not after it.
    """
    steps = "^".join(f"{app}:{arg}" for app, _, arg in (t.partition(" ") for t in (first, then)))
    dest = f"m:^:{steps}"
    return f"transfer {dest if ' ' not in dest else repr(dest)} inline"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "rule"


class RoutingTable:
    """The parsed ``[routing]`` section: rules, hours, targets. Built once per configuration."""

    def __init__(self, rules: list[Rule], *, default_target: str, domain: str, hours: dict[str, Hours],
                 after_hours_target: str | None, agent_target: str) -> None:
        self.rules = rules
        self.default_target = default_target
        self.domain = domain
        self.hours = hours
        self.after_hours_target = after_hours_target
        self.agent_target = agent_target

    def hours_for(self, queue: str | None) -> Hours | None:
        """The business hours of a queue (``vip@default`` or ``vip``), or ``default`` for the default target."""
        if queue is None:
            return None
        if queue in self.hours:
            return self.hours[queue]
        name, _, dom = queue.partition("@")
        return self.hours.get(name) if dom in ("", self.domain) else None

    def decide(self, facts: RouteFacts) -> RouteDecision:
        """The first rule that holds, with the trace of every rule tried before it."""
        return self._decide(facts, 0, [])

    def _decide(self, f: RouteFacts, start: int, trace: list[RuleTrace]) -> RouteDecision:
        for i in range(start, len(self.rules)):
            rule = self.rules[i]
            matched, why = rule.check(f)
            if not matched:
                trace.append(RuleTrace(rule.name, False, why))
                continue
            target, agent = self._resolve(rule, f)
            queue = _queue_of(target)
            hours = self.hours_for(queue) if agent is None else None
            if hours is not None and not hours.is_open(f.now):
                closed = f"queue {queue} is closed ({hours.describe(f.now)})"
                after = rule.after_hours or self.after_hours_target
                if not after:
                    trace.append(RuleTrace(rule.name, False, why + [f"but {closed}: no after-hours target, "
                                                                    "next rule"]))
                    continue
                trace.append(RuleTrace(rule.name, True, why + [f"but {closed}"], after))
                return RouteDecision(after, rule.name, f"after_hours.{_slug(rule.name)}",
                                     f"rule {rule.name!r} ({'; '.join(why)}) chose {queue}, which is closed "
                                     f"({hours.describe(f.now)}): after-hours target {after}",
                                     queue=_queue_of(after), after_hours=True, trace=trace)
            if agent is not None:
                fallback = self._agent_fallback(f, i)
                trace.append(RuleTrace(rule.name, True, why, target))
                return RouteDecision(one_after_another(target, fallback), rule.name, f"rule.{_slug(rule.name)}",
                                     f"rule {rule.name!r} ({'; '.join(why)}): ring the customer's own agent "
                                     f"({target}); if they do not answer: {fallback}",
                                     queue=_queue_of(fallback), agent=agent, fallback=fallback, trace=trace)
            trace.append(RuleTrace(rule.name, True, why, target))
            return RouteDecision(target, rule.name, f"rule.{_slug(rule.name)}",
                                 f"rule {rule.name!r} ({'; '.join(why)}): {target}", queue=queue, trace=trace)
        return self._default(f, trace)

    def _default(self, f: RouteFacts, trace: list[RuleTrace]) -> RouteDecision:
        target = self.default_target
        hours = self.hours.get("default")
        lead = "no routing rule matched" if self.rules else "no routing rules"
        if hours is not None and not hours.is_open(f.now) and self.after_hours_target:
            return RouteDecision(self.after_hours_target, None, "after_hours.default",
                                 f"{lead}; the default target is closed ({hours.describe(f.now)}): "
                                 f"after-hours target {self.after_hours_target}",
                                 queue=_queue_of(self.after_hours_target), after_hours=True, trace=trace)
        return RouteDecision(target, None, "default", f"{lead}: default target {target}", queue=_queue_of(target),
                             trace=trace)

    def _resolve(self, rule: Rule, f: RouteFacts) -> tuple[str, str | None]:
        """(instruction, agent) for the rule's target; ``customer`` becomes their agent or queue."""
        if rule.target != CUSTOMER:
            return rule.target, None
        if f.customer_agent:
            return self.agent_target.format(agent=f.customer_agent), f.customer_agent
        return queue_target(str(f.customer_queue), self.domain), None

    def _agent_fallback(self, f: RouteFacts, index: int) -> str:
        """The customer's own queue if they have one, else what the table says without their agent."""
        rest = self._decide(replace(f, customer_agent=None), index, [])
        return rest.target

    def describe(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.rules]


def build_table(settings: RoutingSettings) -> RoutingTable:
    """Parse and check the ``[routing]`` section; raises ConfigError naming the bad key."""
    domain = settings.domain.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", domain):
        raise ConfigError(f"routing.domain: {settings.domain!r} is not a mod_callcenter domain name")
    if not isinstance(settings.rules, list):
        raise ConfigError("routing.rules: expected a list of tables ([[routing.rules]])")
    rules = [Rule.parse(data, i, domain) for i, data in enumerate(settings.rules)]
    names = [r.name for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"routing.rules: two rules are named {name!r}; rule names must differ")
    tz = zone(settings.timezone.strip() or "UTC", "routing.timezone")
    holidays = parse_holidays(settings.holidays)
    hours = {q.strip(): Hours.parse(spec, tz, holidays, key=f"routing.hours.{q}") for q, spec in settings.hours.items()}
    after = _target(settings.after_hours_target, domain, "routing.after_hours_target") \
        if settings.after_hours_target.strip() else None
    if "default" in hours and after is None:
        raise ConfigError("routing.hours.default: business hours for the default target need "
                          "routing.after_hours_target (where calls go when it is closed)")
    if "{agent}" not in settings.agent_target:
        raise ConfigError(f"routing.agent_target: must contain {{agent}}, got {settings.agent_target!r}")
    try:
        sample = settings.agent_target.format(agent="1001@default")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"routing.agent_target: only {{agent}} may be used, got {settings.agent_target!r}") from None
    validate_target(sample, "routing.agent_target")
    if " " in sample.strip().partition(" ")[2] or any(c in sample for c in "^'"):
        raise ConfigError(f"routing.agent_target: the argument cannot contain spaces, ^ or ' (it becomes one step "
                          f"of an inline dialplan), got {settings.agent_target!r}")
    return RoutingTable(rules, default_target=settings.default_target.strip(), domain=domain, hours=hours,
                        after_hours_target=after, agent_target=settings.agent_target.strip())
