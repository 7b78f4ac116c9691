"""``fsguard simulate``: the FreeSWITCH simulator as a tool, to test a policy against a running fsguard.

    fsguard simulate call --ani +15551234567 --dnis 5000 --digits auto
    fsguard simulate traffic --rate 20 --duration 30
"""

from __future__ import annotations

import random
import time
from typing import Any

from fsguard.config import ConfigError, parse_hostport
from fsguard.ops.commands._common import CLIError, Context, print_json, print_table


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="place simulated calls into a running fsguard, as FreeSWITCH would")
    p.add_argument("--target", help="fsguard's Event Socket listener host:port (default: esl.listen)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="real seconds per channel second (1 = real time, 0.1 = ten times faster)")
    ssub = p.add_subparsers(dest="simulate_command", required=True)

    c = ssub.add_parser("call", help="one call, and what happened to it")
    c.add_argument("--ani", default="12125550100",
                   help="caller id number as the carrier sends it (default 12125550100; a 555 area code "
                        "such as 15551234567 is a number that cannot exist, which screening challenges)")
    c.add_argument("--name", default="Test Caller", help="caller id name")
    c.add_argument("--dnis", default="5000", help="dialled number")
    c.add_argument("--digits", default="auto",
                   help="what the caller keys when asked: auto (the code it heard), none, or digits")
    c.add_argument("--privacy", action="store_true", help="the caller withholds their number")
    c.add_argument("--outbound", action="store_true", help="an agent dialling out (fsguard_direction=outbound)")
    c.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="extra channel variable, e.g. sip_verstat=TN-Validation-Failed")
    c.add_argument("--talk", type=float, default=2.0, help="seconds the call lasts once routed")
    c.add_argument("--hangup-after", type=float, help="the caller hangs up after this many seconds")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_call)

    t = ssub.add_parser("traffic", help="a steady stream of calls, then a summary")
    t.add_argument("--rate", type=float, default=10.0, help="calls per second")
    t.add_argument("--duration", type=float, default=10.0, help="seconds of traffic")
    t.add_argument("--numbers", type=int, default=1000,
                   help="how many distinct callers (at most 80000); fewer numbers at a high rate trip the "
                        "flood limits, as they would in life")
    t.add_argument("--dnis", default="5000")
    t.add_argument("--talk", type=float, default=2.0)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_traffic)


def _target(ctx: Context) -> tuple[str, int]:
    try:
        host, port = parse_hostport(ctx.args.target or ctx.settings.esl.listen, "--target")
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host), port


def _simulator(ctx: Context) -> Any:
    from fsguard_testing.fakeswitch import FakeFreeSWITCH

    if ctx.args.time_scale <= 0:
        raise CLIError("--time-scale must be positive")
    return FakeFreeSWITCH(_target(ctx), time_scale=ctx.args.time_scale)


def _variables(pairs: list[str], outbound: bool) -> dict[str, str]:
    variables: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CLIError(f"--var {pair!r}: expected NAME=VALUE")
        variables[name] = value
    if outbound:
        variables["fsguard_direction"] = "outbound"
    return variables


def summary(result: Any) -> dict[str, Any]:
    return {"uuid": result.uuid, "outcome": result.outcome, "route": result.route,
            "hangup_cause": result.hangup_cause, "answered": result.answered, "early_media": result.early_media,
            "billsec": round(result.billsec, 2), "heard": result.heard, "keyed": result.dtmf,
            "exported": result.exported, "violations": result.violations,
            "decision_ms": round(result.decision_latency * 1000, 3) if result.decision_latency is not None else None}


def _words(value: Any) -> str:
    """A value as an operator reads it: lists joined, tables as name=value, no Python reprs."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_words(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_words(v) for v in value)
    return str(value)


def cmd_call(ctx: Context) -> int:
    from fsguard_testing.fakeswitch import Caller

    a = ctx.args
    digits = None if a.digits == "none" else a.digits
    if digits not in (None, "auto") and not all(ch in "0123456789*#" for ch in digits):
        raise CLIError("--digits: expected auto, none or a string of DTMF digits")
    caller = Caller(ani=a.ani, name=a.name, dnis=a.dnis, digits=digits, privacy=a.privacy,
                    variables=_variables(a.var, a.outbound), talk_time=a.talk, hangup_after=a.hangup_after)
    result = _simulator(ctx).call(caller)
    if result.outcome == "refused":
        raise CLIError(f"nothing listens on {_target(ctx)[0]}:{_target(ctx)[1]}: is 'fsguard serve' running?")
    data = summary(result)
    if a.json:
        print_json(data)
        return 0
    for key, value in data.items():
        if value not in (None, [], {}, ""):
            print(f"{key:>13}: {_words(value)}")
    print(f"\nwhy: fsguard calls show {result.uuid}")
    return 0 if not result.violations and result.outcome != "stranded" else 1


#: area codes of the simulated traffic (NANP, all real: the numbers are valid for phonenumbers)
TRAFFIC_AREAS = ("212", "202", "206", "305", "312", "415", "617", "713")


def _traffic_number(i: int) -> str:
    """The i-th caller of the simulated traffic: 1 + a real area code + 555 + four digits (valid
    numbers, so that screening treats them as ordinary callers, not as numbers that cannot exist)."""
    area, line = divmod(i, 10000)
    return f"1{TRAFFIC_AREAS[area % len(TRAFFIC_AREAS)]}555{line:04d}"


def cmd_traffic(ctx: Context) -> int:
    import gevent
    from gevent.pool import Pool

    from fsguard_testing.fakeswitch import Caller

    a = ctx.args
    if a.rate <= 0 or a.duration <= 0:
        raise CLIError("--rate and --duration must be positive")
    if not 1 <= a.numbers <= 10000 * len(TRAFFIC_AREAS):
        raise CLIError(f"--numbers must be from 1 to {10000 * len(TRAFFIC_AREAS)}")
    fs = _simulator(ctx)
    rnd = random.Random(1)
    pool = Pool(10000)
    greenlets = []
    total = int(a.rate * a.duration)
    start = time.monotonic()
    for i in range(total):
        delay = start + i / a.rate - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        number = _traffic_number(rnd.randrange(a.numbers))
        greenlets.append(pool.spawn(fs.call, Caller(ani=number, dnis=a.dnis, digits="auto", talk_time=a.talk)))
    pool.join()
    results = [g.value for g in greenlets if g.successful()]
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome or "?"] = outcomes.get(r.outcome or "?", 0) + 1
    latencies = sorted(r.decision_latency * 1000 for r in results if r.decision_latency is not None)

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else None

    data = {"calls": len(results), "failed_to_run": total - len(results), "outcomes": outcomes,
            "decision_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(latencies[-1], 2) if latencies else None},
            "violations": sum(len(r.violations) for r in results)}
    if a.json:
        print_json(data)
    else:
        print_table([[k, v] for k, v in sorted(outcomes.items())], ["outcome", "calls"])
        print(f"\ndecision latency (connect -> instruction): p50 {data['decision_ms']['p50']} ms, "
              f"p99 {data['decision_ms']['p99']} ms, max {data['decision_ms']['max']} ms")
        print(f"protocol violations: {data['violations']}")
    return 0 if data["violations"] == 0 and "stranded" not in outcomes else 1


