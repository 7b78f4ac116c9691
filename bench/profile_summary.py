"""Where fsguard's time goes: a py-spy raw profile folded into the categories an engineer tunes.

``py-spy record -f raw`` writes one line per distinct stack: ``frame;frame;...;leaf COUNT``, each
frame ``function (file:line)``. Each sample is charged to the innermost frame that belongs to a
category (so ``unquote`` called by ``parse_headers`` is frame parsing, SQLAlchemy called by a stage
is the database), and what matches none is "other Python".

    python bench/profile_summary.py bench/results/profile-raw.txt
"""

from __future__ import annotations

import collections
import json
import re
import sys
from typing import Any

#: (category, pattern on "function (file:line)"), tried on each frame from the leaf up
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("event and frame parsing", re.compile(
        r"(parse_headers|parse_event_plain|parse_event_json|plain_header|PlainEvent|_parsed|FrameReader|frames|feed"
        r"|match_notice|raw_value) \(fsguard/esl/protocol\.py"
        r"|urllib/parse\.py|json/decoder\.py|^loads \(json/")),
    ("database", re.compile(r"sqlalchemy/|psycopg|sqlite3|fsguard/store/")),
    ("logging", re.compile(r"structlog/|logging/__init__\.py|fsguard/service/logs\.py|json/encoder\.py|^dumps \(json/")),
    ("metrics", re.compile(r"prometheus_client/|fsguard/service/metrics\.py")),
    ("socket I/O and the gevent hub", re.compile(r"gevent/|socket\.py|selectors")),
    ("commands written (sendmsg, uuid4)", re.compile(
        r"fsguard/esl/protocol\.py|(_write|send|send_apps|_sendmsg|command|reply|api) \(fsguard/esl/|uuid\.py")),
    ("the Event Socket session (reading, waiting)", re.compile(r"fsguard/esl/")),
    ("stages and their rules (their own Python)", re.compile(r"fsguard/stages/|fsguard/rules/")),
    ("the call (Call, pipeline, results)", re.compile(r"fsguard/call/|phonenumbers/")),
    ("service (server, app, ends)", re.compile(r"fsguard/service/")),
]


#: leaves that are a thread waiting, not work (py-spy counts a thread blocked in a lock as active)
IDLE = re.compile(r"acquire_with_timeout \(gevent/_threading\.py|_Condition\.wait \(gevent/_threading\.py")


#: frames that run once FreeSWITCH has its instruction: the call's record, its end, after_call hooks
AFTER_DECISION = re.compile(r"fsguard/store/records\.py|fsguard/store/writer\.py|after_call|_end \(|record_end|finalize")


def summarise(raw: str, top: int = 15) -> dict[str, Any]:
    totals: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if frames and IDLE.search(frames[-1]):
            continue  # a gevent thread-pool worker waiting for work: another thread, idle
        samples += n
        category = "other Python"
        for frame in reversed(frames):
            hit = next((name for name, pattern in CATEGORIES if pattern.search(frame)), None)
            if hit:
                category = hit
                break
        if category == "database":
            after = any(AFTER_DECISION.search(f) for f in frames)
            category = "database: writing the call down (after the decision)" if after else \
                "database: stage queries (in the decision)"
        totals[category] += n
        if frames:
            self_time[_short(frames[-1])] += n
        for f in {_short(f) for f in frames if "fsguard/" in f}:
            inclusive[f] += n
    pct = {k: round(100 * v / samples, 1) for k, v in totals.most_common()} if samples else {}
    return {
        "samples": samples,
        "categories": pct,
        "top_self": [(f, round(100 * v / samples, 1)) for f, v in self_time.most_common(top)] if samples else [],
        "top_fsguard_inclusive": [(f, round(100 * v / samples, 1)) for f, v in inclusive.most_common(top)]
        if samples else [],
    }


def _short(frame: str) -> str:
    """``parse_headers (fsguard/esl/session.py:113)`` -> ``parse_headers (fsguard/esl/session.py)``: lines merged."""
    return re.sub(r":\d+\)$", ")", frame)


def main() -> None:
    with open(sys.argv[1]) as f:
        print(json.dumps(summarise(f.read()), indent=2))


if __name__ == "__main__":
    main()
