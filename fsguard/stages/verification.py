"""Verification: a challenged caller proves they are a person before the line owner pays.

What happens to a challenged caller, top to bottom::

    pre_answer                         SIP 183, early media: the caller hears us, nobody pays
    "Please enter the number: 4 2 ... 4 2"   keys pressed while this plays count
    keyed the code already             -> verified, the call was never answered
    answer                             billing starts, but the carrier does not bill a call
                                       shorter than its guard interval (verification.guard_interval)
    a beep; collect the digits         a window guard_interval - guard_margin long, all tries included
    the right code                     -> verified: the chain goes on (routing)
    wrong / nothing, no time to retry  -> hung up at once, inside the guard interval: never billed
    failed escalate_after times        -> the number is blocked hard (source auto): from then on
                                          screening rejects it before the answer

The code (``code_length`` random digits from :mod:`secrets`, never the code the number's previous
challenge had) is only ever spoken: digit files or ``say`` in the early media. It is not set as a
variable nor passed to play_and_get_digits as its regex, so nothing but the caller's ears carries it.

**The window is kept by FreeSWITCH's clock.** Each try is one ``play_and_get_digits`` whose
timeouts are computed from what is left of the window, measured from ``Caller-Channel-Answered-
Time`` to the ``Event-Date-Timestamp`` of the last event of the channel (both FreeSWITCH's own
clock, which is the one that bills), minus a small allowance for fsguard's round trips. Only sounds
whose length fsguard knows are played after the answer (tone_stream, silence_stream, or files
listed in ``verification.sound_seconds``): so a try's worst case is known before it starts, and a
retry is offered only when its worst case still fits. Whatever the caller does, fsguard's hang-up
leaves before ``answer + guard_interval - guard_margin``.

**Keys pressed during the announcement count.** FreeSWITCH's ``playback`` takes them out of the
channel's queue (they would be lost to the digit collection that follows) but reports each as a
DTMF event, which the session keeps: if the last keys are the code, the caller passes without the
call ever being answered; if they are the start of the code, the caller finishes it after the
answer (keying the whole code again works too). Keys pressed while the entry prompt plays are
play_and_get_digits' own (they interrupt the prompt and count).

What the stage learned goes to ``call.facts["verification"]``; each challenge is written down
(table ``challenges``) after the caller has been hung up or let through, never while the caller
waits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import func, select

from fsguard.call.call import Call, CallGone
from fsguard.call.clock import ChannelClock
from fsguard.call.instructions import Hangup
from fsguard.call.pipeline import Stage
from fsguard.call.ports import AppPort
from fsguard.call.verdict import ChallengeRequest, Verdict
from fsguard.config import VerificationSettings, sound_seconds
from fsguard.rules import lists
from fsguard.store.db import DatabaseError
from fsguard.store.models.base import utcnow
from fsguard.store.models.challenges import Challenge

log = structlog.get_logger("fsguard.verification")

#: seconds of the window kept for fsguard's own round trips (starting the next try, the hang-up)
ROUND_TRIP_ALLOWANCE = 0.25
#: the play_and_get_digits "invalid" sound: a 1 ms silence, i.e. none (silence_stream://0 is endless)
NO_SOUND = "silence_stream://1"
#: the channel variable play_and_get_digits puts the keyed digits into
DIGITS_VARIABLE = "fsguard_verification_digits"


# ---------------------------------------------------------------- the code


def new_code(length: int, avoid: str | None = None) -> str:
    """A random code of ``length`` digits (secrets: not guessable from earlier codes), never ``avoid``
    (the code the number's previous challenge used: a code is good for one challenge only)."""
    while True:
        code = "".join(secrets.choice("0123456789") for _ in range(length))
        if code != avoid or length == 0:
            return code


def judge_early(code: str, keyed: str) -> tuple[str, str]:
    """What keys pressed during the announcement amount to: ``("right", code)``, ``("partial",
    prefix)`` (they end with the start of the code), ``("none", "")`` or ``("wrong", keyed)``.

    Only the last ``len(code)`` keys can be the code: keying 0000..9999 during the announcement is
    still one guess.
    """
    if not keyed:
        return "none", ""
    if keyed.endswith(code):
        return "right", code
    for size in range(min(len(keyed), len(code) - 1), 0, -1):
        if code.startswith(keyed[-size:]):
            return "partial", keyed[-size:]
    return "wrong", keyed


def announcement(cfg: VerificationSettings, code: str) -> list[tuple[str, str]]:
    """What speaks the intro and the code in early media: ``[("playback", sound) | ("say", code)]``.

    With digit files the whole announcement is one ``playback`` of a file_string (one round trip,
    no gap between the parts); with ``say`` the intro and pauses are playbacks around ``say``.
    """
    intro = [p for p in cfg.intro.split("!") if p]
    if cfg.code_voice == "digits":
        parts = list(intro)
        for i in range(cfg.code_repeats):
            if i:
                parts.append(cfg.repeat_pause)
            parts.extend(cfg.digit_sound.format(digit=d) for d in code)
        return [("playback", _file_string(parts))]
    apps: list[tuple[str, str]] = [("playback", _file_string(intro))] if intro else []
    for i in range(cfg.code_repeats):
        if i:
            apps.append(("playback", cfg.repeat_pause))
        apps.append(("say", code))
    return apps


def _file_string(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "file_string://" + "!".join(parts)


# ---------------------------------------------------------------- one challenge


@dataclass
class Try:
    """One digit collection after the answer, sized to fit what is left of the window."""

    prompt: str
    prompt_seconds: float
    min_digits: int
    max_digits: int
    first_timeout: float


@dataclass
class ChallengeRun:
    """What happened in one challenge (per call: the stage keeps no call state on itself)."""

    code: str
    triggers: list[str]
    started_at: Any = field(default_factory=utcnow)
    outcome: str = ""
    entered: list[str] = field(default_factory=list)
    attempts: int = 0
    early: bool = False
    answered: bool = False
    answered_seconds: float | None = None
    escalated: bool = False
    #: failed challenges of the number within the escalation window, this one included
    failures: int = 0
    detail: str = ""


class VerificationStage(Stage):
    name = "verification"
    resolves_challenges = True

    def __init__(self, app: AppPort) -> None:
        super().__init__(app)
        cfg: VerificationSettings = self.settings.verification
        self.cfg = cfg
        self.entry_seconds = sound_seconds(cfg.entry_prompt, cfg.sound_seconds) or 0.0
        self.retry_seconds = sound_seconds(cfg.retry_prompt, cfg.sound_seconds) or 0.0
        self.escalate_window = cfg.seconds("escalate_window")
        self.escalate_ttl = cfg.seconds("escalate_ttl")

    # ================================================================ who is challenged

    def applies(self, call: Call) -> bool:
        """Inbound callers some stage asked to challenge (by a trigger this stage takes), or whose
        risk reached verification.risk_threshold."""
        return call.direction == "inbound" and bool(self.triggers(call))

    def triggers(self, call: Call) -> list[str]:
        """Why this caller is challenged, in words (empty: not challenged by this stage)."""
        cfg = self.cfg
        found = [label for kind, label in self._asked(call) if kind in cfg.triggers]
        if cfg.risk_threshold and call.risk >= cfg.risk_threshold:
            found.append(f"risk {call.risk} reached verification.risk_threshold {cfg.risk_threshold}")
        return found

    def _asked(self, call: Call) -> list[tuple[str, str]]:
        """The challenges asked of this call as (trigger, label): typed requests (screening's) this
        stage takes, and any stage's bare reasons together as "other"."""
        asked = [(r.trigger, r.label) for r in call.challenges if r.trigger != "other" and self._takes(r)]
        others = [r.label for r in call.challenges if r.trigger == "other"]
        if others:
            asked.append(("other", "; ".join(others)))
        return asked

    def _takes(self, request: ChallengeRequest) -> bool:
        """Whether this stage's filters let a request through (block level, STIR/SHAKEN outcomes)."""
        cfg = self.cfg
        if request.trigger == "soft_block":
            return request.level >= cfg.min_block_level
        if request.trigger == "stir":
            return any(outcome in cfg.stir_outcomes for outcome in request.stir)
        return True

    # ================================================================ the call

    def run(self, call: Call) -> Verdict:
        cfg = self.cfg
        why = self.triggers(call)
        facts: dict[str, Any] = call.facts.setdefault("verification", {})
        facts.update(triggers=why, guard_interval=cfg.guard_interval, window=cfg.window)
        # what the caller did: asked now, or (fsguard replay) the outcome stored with the call
        return call.inputs.fact("verified", lambda: self._ask(call, why, facts), record=False,
                                decode=lambda stored: self._replayed(stored, why, facts))

    def _ask(self, call: Call, why: list[str], facts: dict[str, Any]) -> Verdict:
        cfg = self.cfg
        if not self.settings.policy.enforced(self.name):
            facts["outcome"] = "not_challenged"
            return Verdict.challenge(f"{'; '.join(why)} (shadow mode: not prompted)", "verification.shadow",
                                     triggers=why)

        challenge = ChallengeRun(new_code(cfg.code_length, self._previous_code(call.ani)), why)
        try:
            verdict = self._challenge(call, challenge)
        except CallGone:
            challenge.outcome = "abandoned"
            challenge.detail = ("the caller hung up " + ("after the answer, while keying" if challenge.answered
                                                         else "during the announcement, before the answer"))
            facts.update(outcome="abandoned", attempts=challenge.attempts, answered=challenge.answered)
            self._write_down(call, challenge)
            raise
        self._write_down(call, challenge)
        facts.update(outcome=challenge.outcome, attempts=challenge.attempts, early=challenge.early,
                     answered=challenge.answered, answered_seconds=challenge.answered_seconds,
                     escalated=challenge.escalated)
        if challenge.escalated:
            verdict.reason += (f"; {challenge.failures} failed challenges within {cfg.escalate_window}: the number "
                               f"is now blocked at level {cfg.escalate_level} for {cfg.escalate_ttl} (source auto)")
            verdict.details.update(escalated=True, failures=challenge.failures)
        return verdict

    def _challenge(self, call: Call, ch: ChallengeRun) -> Verdict:
        """The challenge as the caller lives it. Raises CallGone if the caller hangs up."""
        cfg, code = self.cfg, ch.code
        clock = call.clock
        keys_before = len(call.dtmf)
        call.pre_answer()
        for app, arg in announcement(cfg, code):
            if app == "say":
                call.say(arg, lang=cfg.say_language, kind="number", method=cfg.say_method)
            else:
                call.play(arg)
        keyed = "".join(d for d in call.dtmf[keys_before:] if d.isdigit())
        early, prefix = judge_early(code, keyed)
        if early != "none":
            ch.early = True
        tries_left = cfg.attempts
        if early == "right":
            ch.entered.append(keyed)
            ch.attempts = 1
            return self._passed(call, ch, "keyed the code while it was announced; the call was never answered")
        if early == "wrong":
            ch.entered.append(keyed)
            ch.attempts = 1
            tries_left -= 1
            if not tries_left:
                return self._failed(call, ch, "wrong")

        call.answer()
        ch.answered = True
        first = True
        while tries_left:
            attempt = self._plan(clock, code, prefix, first and early != "wrong")
            if attempt is None:
                break
            digits = call.collect(min_digits=attempt.min_digits, max_digits=attempt.max_digits, tries=1,
                                  timeout=attempt.first_timeout, digit_timeout=cfg.inter_digit_timeout,
                                  prompt=attempt.prompt, invalid=NO_SOUND, terminators="#", regex="\\d+",
                                  variable=DIGITS_VARIABLE).digits
            ch.attempts += 1
            ch.entered.append(digits)
            if digits and (digits == code or prefix + digits == code):
                ch.answered_seconds = round(clock.since_answer(), 3)
                return self._passed(call, ch, f"keyed the code on try {ch.attempts} "
                                              f"{ch.answered_seconds:.1f} s after the answer")
            tries_left -= 1
            prefix = ""
            first = False
        ch.answered_seconds = round(clock.since_answer(), 3)
        return self._failed(call, ch, "wrong" if any(ch.entered) else "no_input")

    def _plan(self, clock: ChannelClock, code: str, prefix: str, first: bool) -> Try | None:
        """The next try, its timeouts cut to what is left of the window; None if it cannot fit."""
        cfg = self.cfg
        if first:
            prompt, prompt_seconds = cfg.entry_prompt, self.entry_seconds
        else:
            prompt = _file_string([*_parts(cfg.retry_prompt), *_parts(cfg.entry_prompt)])
            prompt_seconds = self.retry_seconds + self.entry_seconds
        left = cfg.window - clock.since_answer() - ROUND_TRIP_ALLOWANCE
        fixed = prompt_seconds + (len(code) - 1) * cfg.inter_digit_timeout
        first_timeout = min(cfg.first_digit_timeout, left - fixed)
        if first_timeout < cfg.min_first_digit:
            log.info("verification.no_time_for_try", left=round(left, 3), needs=round(fixed + cfg.min_first_digit, 3))
            return None
        return Try(prompt, prompt_seconds, max(1, len(code) - len(prefix)), len(code), round(first_timeout, 3))

    def _passed(self, call: Call, ch: ChallengeRun, how: str) -> Verdict:
        ch.outcome = "passed"
        ch.detail = how
        log.info("verification.passed", attempts=ch.attempts, early=ch.early, answered=ch.answered)
        return Verdict.verified(f"the caller {how} ({'; '.join(ch.triggers)})", "verification.passed",
                                **self._details(ch))

    def _failed(self, call: Call, ch: ChallengeRun, outcome: str) -> Verdict:
        """Hang up now, inside the guard interval, then say why."""
        cfg = self.cfg
        try:
            call.hangup(cfg.fail_cause)
        except CallGone:
            pass   # the caller left at the same moment: the call is over either way
        call.verified = False
        ch.outcome = outcome
        what = {"wrong": f"keyed a wrong code ({', '.join(repr(e) for e in ch.entered if e)})",
                "no_input": "keyed nothing"}[outcome]
        if not ch.attempts:
            what = "had no time left to key the code (the answer came too late in the window)"
        if ch.answered:
            when = (f"hung up {ch.answered_seconds:.1f} s after the answer, inside the {cfg.guard_interval:g} s "
                    "unbilled guard interval")
        else:
            when = "hung up before the answer"
        ch.detail = f"{what} in {ch.attempts} tr{'y' if ch.attempts == 1 else 'ies'}; {when}"
        log.info("verification.failed", outcome=outcome, attempts=ch.attempts, answered=ch.answered,
                 answered_seconds=ch.answered_seconds)
        return Verdict.reject(f"the caller {ch.detail} ({'; '.join(ch.triggers)})", "verification.failed",
                              action=None, outcome=outcome, **self._details(ch))

    def _details(self, ch: ChallengeRun) -> dict[str, Any]:
        return {"triggers": ch.triggers, "code_played": ch.code, "entered": ch.entered, "attempts": ch.attempts,
                "early": ch.early, "answered": ch.answered, "answered_seconds": ch.answered_seconds,
                "guard_interval": self.cfg.guard_interval, "window": self.cfg.window}

    def _replayed(self, stored: bool | None, why: list[str], facts: dict[str, Any]) -> Verdict:
        """``fsguard replay``: nobody is prompted; the stored outcome of the call stands in."""
        facts["outcome"] = {True: "passed", False: "failed"}.get(stored, "unknown")
        if stored is True:
            return Verdict.verified(f"passed the challenge when the call was taken ({'; '.join(why)})",
                                    "verification.passed", triggers=why, replayed=True)
        if stored is False:
            return Verdict.reject(f"failed the challenge when the call was taken ({'; '.join(why)})",
                                  "verification.failed", action=Hangup(self.cfg.fail_cause), triggers=why,
                                  replayed=True)
        return Verdict.carry_on(f"would challenge the caller ({'; '.join(why)}); the call was not challenged "
                                "when it was taken, so there is no outcome to reuse", "verification.not_replayed",
                                triggers=why, replayed=True)

    # ================================================================ the database

    def _previous_code(self, number: str | None) -> str | None:
        """The code of the number's last challenge (one indexed query), so it is not drawn again."""
        if number is None:
            return None
        try:
            with self.db.begin() as session:
                return session.scalar(select(Challenge.code).where(Challenge.number == number)
                                      .order_by(Challenge.started_at.desc(), Challenge.id.desc()).limit(1))
        except DatabaseError as exc:
            self.app.metrics.db_errors.inc()
            log.warning("verification.history_unavailable", error=str(exc).splitlines()[0])
            return None

    def _write_down(self, call: Call, ch: ChallengeRun) -> None:
        """Record the challenge and, for a failure, escalate: one short transaction, after the caller
        was hung up or let through. A database problem is logged; it never touches the call."""
        cfg = self.cfg
        number = call.ani
        try:
            with self.db.begin() as session:
                row = Challenge(call_uuid=call.uuid, node=self.settings.node.id, number=number, dnis=call.dnis,
                                started_at=ch.started_at, ended_at=utcnow(), triggers=ch.triggers, code=ch.code,
                                entered=ch.entered, outcome=ch.outcome, attempts=ch.attempts, early=ch.early,
                                answered=ch.answered, answered_seconds=ch.answered_seconds, escalated=False,
                                detail=ch.detail[:1000])
                session.add(row)
                session.flush()
                if number and cfg.escalate_after and ch.outcome in cfg.escalate_outcomes:
                    row.escalated = ch.escalated = self._escalate(session, number, ch)
                call.facts.setdefault("verification", {})["challenge_id"] = row.id
        except DatabaseError as exc:
            self.app.metrics.db_errors.inc()
            log.error("verification.write_failed", error=str(exc).splitlines()[0], outcome=ch.outcome)

    def _escalate(self, session: Any, number: str, ch: ChallengeRun) -> bool:
        """Count the number's failures in the window (this one included); block it hard at the limit."""
        cfg = self.cfg
        since = utcnow() - timedelta(seconds=self.escalate_window)
        failures = ch.failures = session.scalar(select(func.count()).select_from(Challenge).where(
            Challenge.number == number, Challenge.started_at >= since,
            Challenge.outcome.in_(cfg.escalate_outcomes))) or 0
        if failures < cfg.escalate_after:
            return False
        reason = (f"failed {failures} verification challenges within {cfg.escalate_window} "
                  f"(limit {cfg.escalate_after}): blocked automatically at level {cfg.escalate_level} "
                  f"for {cfg.escalate_ttl}")
        blocked = lists.auto_block(session, number, level=cfg.escalate_level, reason=reason,
                                   code="verification.failed", ttl_seconds=self.escalate_ttl,
                                   added_by=self.settings.node.id)
        if blocked:
            self.app.metrics.auto_blocks.labels(reason="verification.failed").inc()
            log.warning("verification.auto_block", failures=failures, level=cfg.escalate_level,
                        ttl=cfg.escalate_ttl)
        else:
            log.info("verification.auto_block_skipped", failures=failures,
                     why="the number is on the allow list or already blocked at least as strongly")
        return bool(blocked)


def _parts(sound: str) -> list[str]:
    if sound.startswith("file_string://"):
        return [p for p in sound[len("file_string://"):].split("!") if p]
    return [sound]
