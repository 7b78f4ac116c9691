"""How many seconds of recorded audio one core reviews per second (docs/review.rst).

Builds a stereo 8 kHz WAV of MINUTES minutes the way FreeSWITCH records an agent's outbound call
(agent left, called person right), with espeak-ng speech on both channels (a sentence every few
seconds, an opt-out phrase now and then), and times fsguard's review of the called person's channel
with the default phrases: once in-process (the recogniser alone) and once the way the worker runs
it (a child process per recording). Needs espeak-ng and sox (``make install``).

    .venv/bin/python bench/review.py [--minutes 5] [--voice en-us+f1]
"""

from __future__ import annotations

import argparse
import array
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fsguard.rules import spotting  # noqa: E402
from fsguard.config import DEFAULT_REVIEW_PHRASES  # noqa: E402

RATE = 8000
AGENT = ["Hello, this is Anna from the energy company, how are you today",
         "We have a new tariff that could save you money on your bill",
         "Can I ask who your current supplier is"]
CUSTOMER = ["The weather is lovely today and the garden looks green",
            "I would like to pay my bill and update my address please",
            "I am not interested, please stop calling me",
            "Could you tell me more about the interest rate on the savings account"]


def say(text: str, voice: str, work: str) -> array.array:
    raw, low = os.path.join(work, "raw.wav"), os.path.join(work, "low.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text], check=True)
    subprocess.run(["sox", "-q", raw, "-r", str(RATE), "-c", "1", "-b", "16", low], check=True)
    with wave.open(low) as w:
        return array.array("h", w.readframes(w.getnframes()))


def build(path: str, minutes: float, voice: str, work: str) -> tuple[float, int]:
    """The call: turns of agent and customer speech with pauses; returns (seconds, opt-outs spoken)."""
    agent = [say(t, voice, work) for t in AGENT]
    customer = [say(t, voice, work) for t in CUSTOMER]
    n = int(minutes * 60 * RATE)
    left, right = array.array("h", bytes(2 * n)), array.array("h", bytes(2 * n))
    at, turn, optouts = int(0.5 * RATE), 0, 0
    while at < n:
        a = agent[turn % len(agent)]
        left[at:at + len(a)] = a[: max(0, n - at)]
        at += len(a) + RATE // 2
        c = customer[turn % len(customer)]
        if at + len(c) <= n:
            right[at:at + len(c)] = c
            optouts += CUSTOMER[turn % len(CUSTOMER)].startswith("I am not interested")
        at += len(c) + RATE
        turn += 1
    frames = array.array("h", bytes(4 * n))
    frames[0::2], frames[1::2] = left, right
    with wave.open(path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames.tobytes())
    return n / RATE, optouts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--voice", default="en-us+f1")
    args = parser.parse_args()
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: make install", file=sys.stderr)
            return 1
    phrases = [{"phrase": p["phrase"], "threshold": p["threshold"]} for p in DEFAULT_REVIEW_PHRASES]
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "call.wav")
        seconds, optouts = build(path, args.minutes, args.voice, work)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = spotting.spot(path, 1, phrases)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        wall1 = time.perf_counter()
        child = spotting.spot_in_subprocess({"path": path, "channel": 1, "phrases": phrases}, timeout=3600)
        wall_child = time.perf_counter() - wall1
    heard = sum(h["phrase"] == "not interested" for h in result["hits"])
    if os.environ.get("BENCH_DEBUG"):
        print([(h["phrase"], h["second"], h["score"]) for h in result["hits"]])
    print(f"audio: {seconds:.0f} s stereo 8 kHz, {len(phrases)} phrases, customer channel")
    print(f"in-process: {cpu:.2f} s CPU, {wall:.2f} s wall -> {seconds / cpu:.1f} s of audio per CPU second")
    print(f"child process (as the worker runs it): {wall_child:.2f} s wall -> {seconds / wall_child:.1f} s of audio "
          "per second")
    print(f"'not interested' spoken {optouts} times, heard {heard} times; all hits: "
          f"{sorted({h['phrase'] for h in result['hits']})} ({len(result['hits'])}), child: {len(child['hits'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
