"""The real-FreeSWITCH benchmark's bookkeeping (bench/realfs.py): how FreeSWITCH's events turn into
decided, fell back and stranded calls and a latency by FreeSWITCH's clock. The benchmark itself
needs a FreeSWITCH and minutes; what it concludes from the events is checked here, on event
bodies serialised as FreeSWITCH serialises them (URL-encoded values)."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def realfs():
    sys.path.insert(0, str(BENCH))
    try:
        import realfs as module
        yield module
    finally:
        sys.path.remove(str(BENCH))


def body(**headers: str) -> bytes:
    return "".join(f"{k.replace('_', '-') if not k.startswith('variable') else k}: {quote(v, safe='')}\n"
                   for k, v in headers.items()).encode() + b"\n"


def execute(uuid: str, a_leg: str, app: str, data: str, stamp: int) -> bytes:
    return body(Event_Name="CHANNEL_EXECUTE", Unique_ID=uuid, Event_Date_Timestamp=str(stamp), Application=app,
                Application_Data=data, variable_other_loopback_leg_uuid=a_leg)


def collector(realfs):
    c = realfs.Collector.__new__(realfs.Collector)
    c.calls, c.b_to_a, c.events, c.every_application = {}, {}, 0, True
    return c


def test_a_call_routed_by_the_target_is_decided_with_the_latency_by_freeswitchs_clock(realfs):
    c = collector(realfs)
    c.place("a1")
    c._event(execute("b1", "a1", "socket", "127.0.0.1:8084 async full", 1_000_000))
    c._event(execute("b1", "a1", "multiset", "^^|x=1|y=2", 1_020_000))
    c._event(execute("b1", "a1", "transfer", "default XML queues", 1_040_000))
    c._event(execute("b1", "a1", "callcenter", "support@default", 1_060_000))  # the queue's dialplan
    c._event(body(Event_Name="CHANNEL_HANGUP_COMPLETE", Unique_ID="b1", variable_hangup_cause="NORMAL_CLEARING"))
    c._event(body(Event_Name="CHANNEL_HANGUP_COMPLETE", Unique_ID="a1"))

    phase = realfs.Phase("t", 1, 1, 2.0, seen=c.calls)
    s = phase.summary()
    assert (s["decided"], s["fell_back"], s["stranded"]) == (1, 0, 0)
    assert s["latency_ms"]["p50"] == 40.0 and s["apps_per_call"] == 2 and s["routes"] == {"transfer": 1}
    assert s["not_ended"] == 0 and s["ok"]


def test_the_dialplans_fallback_is_not_a_decision_and_a_silent_socket_is_stranded(realfs):
    c = collector(realfs)
    for a in ("a1", "a2", "a3"):
        c.place(a)
    c._event(execute("b1", "a1", "socket", "t", 1_000_000))
    c._event(execute("b1", "a1", "transfer", "fallback XML queues", 1_020_000))
    c._event(execute("b2", "a2", "socket", "t", 1_000_000))
    c._event(execute("b3", "a3", "socket", "t", 1_000_000))
    c._event(execute("b3", "a3", "hangup", "CALL_REJECTED", 3_000_000))  # decided, but after 2 s
    c._event(execute("zz", "not-ours", "socket", "t", 1_000_000))  # a call the bench did not place

    s = realfs.Phase("t", 1, 3, 2.0, seen=c.calls).summary()
    assert (s["decided"], s["fell_back"], s["stranded"], s["calls"]) == (1, 1, 1, 3)
    assert s["decided_within_1s"] == 0 and not s["ok"]
    assert {u["a_leg"] for u in s["undecided"]} == {"a1", "a2"}


def test_a_caller_who_hangs_up_during_the_challenge_is_abandoned_not_stranded(realfs):
    """A challenged call (``pre_answer`` after ``socket``) whose caller hung up before the route
    is an outcome when fsguard's own record says ``abandoned``; without that record it is still
    counted stranded. Its route, when it comes, waits on the caller: not a latency."""
    c = collector(realfs)
    for a in ("a1", "a2", "a3"):
        c.place(a)
    for b, a in (("b1", "a1"), ("b2", "a2"), ("b3", "a3")):
        c._event(execute(b, a, "socket", "t", 1_000_000))
        c._event(execute(b, a, "pre_answer", "", 1_010_000))
    c._event(execute("b3", "a3", "transfer", "default XML queues", 9_000_000))   # keyed in after 8 s

    phase = realfs.Phase("t", 1, 3, 2.0, seen=c.calls, recorded_outcomes={"b1": "abandoned", "b2": "routed"})
    s = phase.summary()
    assert (s["challenged"], s["abandoned_in_challenge"], s["stranded"], s["decided"]) == (3, 1, 1, 1)
    assert s["latency_ms"]["p50"] is None and not s["ok"]   # b2: fsguard says routed, FreeSWITCH saw no route
    phase.recorded_outcomes = {"b1": "abandoned", "b2": "abandoned"}
    assert phase.summary()["ok"]


def test_show_channels_count_is_read_from_freeswitchs_answer(realfs):
    class Conn:
        def __init__(self, answer: str) -> None:
            self.answer = answer

        def api(self, command: str) -> str:
            assert command == "show channels count"
            return self.answer

    assert realfs.channels_up(Conn("\n0 total.\n")) == 0
    assert realfs.channels_up(Conn("\n1222 total.\n")) == 1222
    with pytest.raises(RuntimeError):
        realfs.channels_up(Conn("-ERR no reply\n"))


def test_each_rounds_cpu_ratio_is_taken_against_the_anchor_of_the_same_round_and_rate(realfs):
    def phase(target: str, rnd: int, rate: float, own: float, fs: float) -> dict:
        return {"target": target, "round": rnd, "rate": rate, "target_cpu_ms_per_call": own, "fs_cpu_ms_per_call": fs}

    phases = [phase("greenswitch", 1, 30, 0.5, 10.0), phase("fsguard", 1, 30, 2.0, 11.0),
              phase("greenswitch", 2, 30, 1.0, 20.0), phase("fsguard", 2, 30, 3.0, 20.0),
              phase("greenswitch", 3, 30, 0.4, 10.0), phase("fsguard", 3, 30, 2.0, 12.0),
              phase("fsguard", 4, 30, 9.0, 90.0)]   # no anchor in round 4: not a ratio
    assert realfs.cpu_ratios(phases) == [
        "CPU per call, fsguard / greenswitch at 30 cps: own 4.00x [4.00, 3.00, 5.00], "
        "FreeSWITCH 1.10x [1.10, 1.00, 1.20]"]
    table = realfs.table({"phases": [{**p, "calls": 1, "decided": 1, "decided_within_1s": 1, "fell_back": 0,
                                      "stranded": 0, "still_up_channels": 0, "latency_ms": {"p50": 1, "p99": 2},
                                      "events_per_call": 0, "others_pct_of_a_core": 0} for p in phases[:2]]})
    assert table.splitlines()[0].split()[:2] == ["target", "rate"]   # one round: no round column
    assert table.splitlines()[-1].startswith("CPU per call, fsguard / greenswitch at 30 cps: own 4.00x")
