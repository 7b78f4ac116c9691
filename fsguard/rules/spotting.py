"""Keyword spotting in one channel of a recording, offline, with pocketsphinx.

pocketsphinx (PyPI ``pocketsphinx`` 5) ships its US English acoustic model and the CMU
pronouncing dictionary inside the package, so nothing is downloaded at run time. Its keyword
search (``kws``) listens for a list of phrases, each with its own detection threshold, against a
phone loop: no language model, no transcript, only "this phrase, from second x to y, with this
score".

Recognition is CPU-bound C code. The review worker never runs it in ``fsguard serve``'s process:
:func:`spot_in_subprocess` starts ``python -m fsguard.rules.spotting`` (a request in JSON on stdin, the
hits in JSON on stdout), so the gevent hub keeps serving calls, a crash in the recogniser cannot
take the daemon down, and a review that hangs is killed after its timeout.

Audio: 16-bit PCM WAV, mono or stereo, at any rate. The acoustic model is a 16 kHz one; a
telephone recording (8 kHz) is upsampled by 2 with linear interpolation. Masked intervals (card
data: FreeSWITCH wrote silence there) are not listened to at all: the decoder stops before them
and starts again after them, and a hit that would overlap one is dropped.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import subprocess
import sys
import tempfile
import wave
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Iterator, Sequence

#: the rate of pocketsphinx's acoustic model
MODEL_RATE = 16000
#: frames per second of pocketsphinx's features (its default frate)
FRAME_RATE = 100
#: audio fed to the decoder per step (seconds); a detection is seen at the end of a step
STEP_SECONDS = 0.25
#: at most this many pronunciations of one phrase are listened for
MAX_VARIANTS = 8
#: two detections of one phrase closer than this are one hit (pronunciation variants fire together)
SAME_HIT_SECONDS = 1.0


class SpottingError(Exception):
    """The recording cannot be listened to (not a WAV, not 16-bit PCM, no such channel...)."""


@dataclass(frozen=True)
class Hit:
    phrase: str
    #: seconds from the start of the file
    second: float
    end_second: float
    #: pocketsphinx's posterior for the detection, 0..1
    score: float


# ------------------------------------------------------------------ dictionary


def model_paths() -> tuple[str, str]:
    """(acoustic model directory, dictionary file) inside the pocketsphinx package."""
    from pocketsphinx import get_model_path

    base = get_model_path()
    return os.path.join(base, "en-us", "en-us"), os.path.join(base, "en-us", "cmudict-en-us.dict")


@lru_cache(maxsize=16)
def pronunciations(words: frozenset[str]) -> dict[str, list[str]]:
    """The pronunciations (``word``, ``word(2)``...) of ``words`` in the packaged dictionary; a word
    it does not know is left out. One pass over the 3 MB file, kept only for these words."""
    _, dictionary = model_paths()
    prons: dict[str, list[str]] = {}
    with open(dictionary, encoding="utf-8") as f:
        for line in f:
            head, _, phones = line.strip().partition(" ")
            word = head.split("(", 1)[0]
            if phones and word in words:
                prons.setdefault(word, []).append(phones.strip())
    return prons


def words_of(phrase: str) -> list[str]:
    return phrase.lower().split()


def unknown_words(phrases: list[str]) -> dict[str, list[str]]:
    """Phrase -> the words of it the dictionary does not know (they cannot be listened for); one
    pass over the dictionary for all the phrases. Phrases whose words are all known are left out."""
    prons = pronunciations(frozenset(w for p in phrases for w in words_of(p)))
    unknown = {p: [w for w in words_of(p) if w not in prons] for p in phrases}
    return {p: words for p, words in unknown.items() if words or not p.strip()}


def variants(phrase: str, prons: dict[str, list[str]]) -> list[list[str]]:
    """Pronunciations of a phrase: every combination of its words' pronunciations, the
    dictionary's first ones first, at most MAX_VARIANTS. pocketsphinx's keyword search listens for
    a word's first pronunciation only, and "interested" alone has four."""
    return [list(combo) for combo in
            itertools.islice(itertools.product(*(prons[w] for w in words_of(phrase))), MAX_VARIANTS)]


# ------------------------------------------------------------------- audio


def _upsample(samples: array.array, rate: int, carry: list[int]) -> array.array:
    """``samples`` at MODEL_RATE. 8 kHz: one interpolated sample between each two (``carry``
    holds the last sample of the previous block so blocks join without a click); other rates:
    linear interpolation at the model's rate."""
    if rate == MODEL_RATE or not samples:
        return samples
    if rate * 2 == MODEL_RATE:
        prev = carry[0] if carry else samples[0]
        out = array.array("h", bytes(4 * len(samples)))
        out[1::2] = samples
        shifted = [prev, *samples[:-1]]
        out[0::2] = array.array("h", [(a + b) >> 1 for a, b in zip(shifted, samples)])
        carry[:] = [samples[-1]]
        return out
    n_out = int(len(samples) * MODEL_RATE / rate)
    step = rate / MODEL_RATE
    last = len(samples) - 1
    out = array.array("h", bytes(2 * n_out))
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        frac = pos - j
        a = samples[j]
        b = samples[j + 1] if j < last else a
        out[i] = int(a + (b - a) * frac)
    return out


def channel_blocks(path: str, channel: int, block_seconds: float = STEP_SECONDS) -> Iterator[tuple[float, bytes]]:
    """(start second, 16 kHz mono PCM) blocks of one channel of a WAV file."""
    try:
        w = wave.open(path, "rb")
    except (wave.Error, EOFError) as exc:
        raise SpottingError(f"{path} is not a PCM WAV file: {exc}") from None
    except OSError as exc:
        raise SpottingError(f"cannot read {path}: {exc.strerror or exc}") from None
    with w:
        nchannels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        if width != 2:
            raise SpottingError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is reviewed")
        if channel >= nchannels:
            raise SpottingError(f"{path} has {nchannels} channel(s), no channel {channel}")
        per_block = max(1, int(rate * block_seconds))
        carry: list[int] = []
        done = 0
        while True:
            raw = w.readframes(per_block)
            if not raw:
                return
            samples = array.array("h", raw)
            if sys.byteorder == "big":
                samples.byteswap()
            mono = samples[channel::nchannels] if nchannels > 1 else samples
            pcm = _upsample(mono, rate, carry)
            if sys.byteorder == "big":
                pcm.byteswap()
            yield done / rate, pcm.tobytes()
            done += len(mono)


def wav_seconds(path: str) -> float:
    try:
        with wave.open(path, "rb") as w:
            return w.getnframes() / w.getframerate() if w.getframerate() else 0.0
    except (wave.Error, EOFError, OSError) as exc:
        raise SpottingError(f"{path} is not a readable WAV file: {exc}") from None


# ------------------------------------------------------------------ spotting


def _decoder(phrases: list[dict[str, Any]], *, phone_loop_penalty: float, beam: float) -> tuple[Any, dict[str, str]]:
    """A pocketsphinx decoder listening for ``phrases``; returns it and variant -> phrase."""
    from pocketsphinx import Decoder

    hmm, dictionary = model_paths()
    decoder = Decoder(hmm=hmm, dict=dictionary, lm=None, samprate=MODEL_RATE, beam=beam,
                      kws_plp=phone_loop_penalty, loglevel="FATAL")
    names: dict[str, str] = {}
    lines = []
    texts = [" ".join(words_of(p["phrase"])) for p in phrases]
    for text, unknown in unknown_words(texts).items():
        raise SpottingError(f"phrase {text!r}: words not in the dictionary: {', '.join(unknown) or '(empty)'}")
    known = pronunciations(frozenset(w for t in texts for w in words_of(t)))
    for p_index, (phrase, text) in enumerate(zip(phrases, texts)):
        for v_index, prons in enumerate(variants(text, known)):
            if v_index == 0:
                variant = text     # the dictionary's first pronunciations: the words themselves
            else:
                tokens = []
                for w_index, phones in enumerate(prons):
                    token = f"fsgw{p_index}x{v_index}x{w_index}"
                    decoder.add_word(token, phones, False)
                    tokens.append(token)
                variant = " ".join(tokens)
            names[variant] = phrase["phrase"]
            lines.append(f"{variant} /{float(phrase['threshold']):g}/\n")
    with tempfile.NamedTemporaryFile("w", suffix=".kws", delete=False, encoding="utf-8") as f:
        f.writelines(lines)
        keyfile = f.name
    try:
        decoder.add_kws("review", keyfile)
    finally:
        os.unlink(keyfile)
    decoder.activate_search("review")
    return decoder, names


def spot(path: str, channel: int, phrases: list[dict[str, Any]], *, skip: Sequence[tuple[float, float]] = (),
         phone_loop_penalty: float = 1e-10, beam: float = 1e-80) -> dict[str, Any]:
    """Listen to one channel of ``path`` for ``phrases`` (each ``{"phrase", "threshold"}``),
    leaving out the ``skip`` intervals (seconds). Returns ``{"hits": [...], "seconds": reviewed}``.
    Blocking and CPU-heavy: the daemon calls :func:`spot_in_subprocess`."""
    decoder, names = _decoder(phrases, phone_loop_penalty=phone_loop_penalty, beam=beam)
    spans = sorted((float(a), float(b)) for a, b in skip)
    found: list[Hit] = []
    reviewed = 0.0
    utt_start: float | None = None     # second at which the running utterance began

    def collect() -> None:
        assert utt_start is not None
        for seg in decoder.seg() or ():
            phrase = names.get(seg.word.strip())
            if phrase is None:
                continue
            start = utt_start + seg.start_frame / FRAME_RATE
            end = utt_start + (seg.end_frame + 1) / FRAME_RATE
            if any(start < b and end > a for a, b in spans):
                continue
            found.append(Hit(phrase, round(start, 2), round(end, 2), round(float(seg.prob), 3)))

    def stop() -> None:
        nonlocal utt_start
        if utt_start is not None:
            decoder.end_utt()
            collect()
            utt_start = None

    for start, pcm in channel_blocks(path, channel):
        length = len(pcm) / 2 / MODEL_RATE
        end = start + length
        if any(start < b and end > a for a, b in spans):
            stop()          # not one sample of a masked interval reaches the recogniser
            continue
        if utt_start is None:
            decoder.start_utt()
            utt_start = start
        # One utterance from mask to mask: the keyword search keeps every detection, and
        # restarting at each one would cut short a longer phrase that overlaps it.
        decoder.process_raw(pcm, False, False)
        reviewed += length
    stop()
    return {"hits": [asdict(h) for h in _merge(found)], "seconds": round(reviewed, 2)}


def _merge(hits: list[Hit]) -> list[Hit]:
    """One hit per phrase and moment: variants of a phrase fire together; the best score stays."""
    merged: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (h.phrase, h.second)):
        last = merged[-1] if merged else None
        if last is not None and last.phrase == hit.phrase and hit.second - last.second < SAME_HIT_SECONDS:
            if hit.score > last.score:
                merged[-1] = Hit(hit.phrase, last.second, max(last.end_second, hit.end_second), hit.score)
            continue
        merged.append(hit)
    return sorted(merged, key=lambda h: h.second)


def spot_in_subprocess(request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`spot` in a child process (``python -m fsguard.rules.spotting``): the caller's process (and
    its gevent hub: ``subprocess`` is gevent's under ``fsguard serve``) only waits for the answer."""
    try:
        proc = subprocess.run([sys.executable, "-m", "fsguard.rules.spotting"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SpottingError(f"the recogniser did not finish within {timeout:.0f}s") from None
    answer: dict[str, Any] = {}
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except ValueError:
        answer = {}
    if proc.returncode != 0 or "hits" not in answer:
        error = answer.get("error") or (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise SpottingError(str(error))
    return answer


def main() -> int:
    """The child's side: one JSON request on stdin, one JSON answer line on stdout."""
    try:
        request = json.loads(sys.stdin.read())
        answer = spot(request["path"], int(request["channel"]), request["phrases"],
                      skip=[tuple(s) for s in request.get("skip", [])],
                      phone_loop_penalty=float(request.get("phone_loop_penalty", 1e-10)),
                      beam=float(request.get("beam", 1e-80)))
    except SpottingError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except (ValueError, KeyError, TypeError) as exc:
        print(json.dumps({"error": f"bad request: {exc}"}))
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
