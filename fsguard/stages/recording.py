"""Recording: who is recorded, after what notice, for what purpose - decided before the call is
routed, so that the whole conversation is kept.

What happens to the caller, top to bottom::

    the first rule that matches the call decides (dialled number, queue, direction)
    off, or outside the sample  -> nothing; the call goes on
    all, or inside the sample   -> the consent notice (if the rule asks for it), then
                                   record_session <recording.dir>/YYYY/MM/DD/<uuid>.wav, stereo
    on_demand                   -> the consent notice (if asked), RECORD_STEREO set; an agent or
                                   a system starts the recording later (fsguard recordings start)

The consent notice is played once the call is answered (``consent_media = "answer"``, the
default): a notice the caller may not have heard is no notice, and early media (SIP 183) is not
passed by every carrier or phone. The price is that the line owner pays for the seconds of the
notice - the queue would answer a moment later anyway. ``consent_media = "early"`` plays it in
early media instead, unbilled, where the carriers are known to pass it. If the notice cannot be
played (file not found...) the call is NOT recorded: recording without the notice the rule asks
for is the one thing this stage must never do. The recording starts only after the notice has
finished, so the notice is not in the file.

On an outbound call (an agent dialling out) the channel here is the agent's: the notice is for
the called party, so it is exported as ``nolocal:execute_on_answer`` and FreeSWITCH plays it to
the called party when they answer.

The recording's row is handed to the call writer before FreeSWITCH is told to record (committed
moments later with the call's other rows, or logged whole if the database never takes it), so no
file ever exists that retention does not know about, and the decision waits for no statement. Sampling is reproducible: the call's uuid decides, so a replay
(or another node) reaches the same answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import structlog

from fsguard.call.call import Call
from fsguard.call.pipeline import Stage
from fsguard.call.ports import AppPort
from fsguard.call.results import CallEnd
from fsguard.call.verdict import Verdict
from fsguard.config import RecordingSettings, packaged_sound
from fsguard.rules import numbers
from fsguard.rules.recordings import (finalize, finalize_queued, party_number, queue_recording, recording_path,
                                      recording_root, retain_until)
from fsguard.store.models import utcnow

log = structlog.get_logger("fsguard.recording")


def in_sample(uuid: str, percent: float) -> bool:
    """Whether a call falls in a ``percent`` sample: decided by the uuid alone, so reproducible."""
    return int(hashlib.sha256(uuid.encode()).hexdigest()[:8], 16) % 10000 < round(percent * 100)


@dataclass(frozen=True)
class Rule:
    """One ``[[recording.rules]]`` table, with the section's defaults filled in."""

    name: str
    mode: str
    purpose: str
    sample_percent: float
    consent: bool
    consent_prompt: str
    consent_media: str
    #: "bridge" (the file starts once the caller is bridged to someone) or "route"
    start: str
    #: dialled numbers: exact (as dialled or E.164) or prefixes ending in "*"
    dnis: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    direction: str | None = None

    def matches(self, call: Call, queue: str) -> bool:
        if self.direction and call.direction != self.direction:
            return False
        if self.queues and queue not in self.queues:
            return False
        if self.dnis:
            dialled = [d for d in (call.dnis, call.dnis_e164) if d]
            return any(d.startswith(p[:-1]) if p.endswith("*") else d == p for p in self.dnis for d in dialled)
        return True


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


class RecordingPolicy:
    """The rules of ``[recording]``, compiled once per configuration."""

    def __init__(self, cfg: RecordingSettings, region: str) -> None:
        defaults: dict[str, Any] = {"mode": cfg.mode, "purpose": cfg.purpose, "sample_percent": cfg.sample_percent,
                    "consent": cfg.consent, "consent_prompt": packaged_sound(cfg.consent_prompt),
                    "consent_media": cfg.consent_media, "start": cfg.start}
        self.rules: list[Rule] = []
        for i, table in enumerate(cfg.rules):
            values = {**defaults, **{k: v for k, v in table.items() if k in defaults}}
            values["consent_prompt"] = packaged_sound(values["consent_prompt"])   # fsguard:NAME -> its path
            dnis: list[str] = []
            for pattern in _strings(table.get("dnis")):
                dnis.append(pattern)
                if not pattern.endswith("*"):
                    parsed = numbers.parse(pattern, region)
                    if parsed.valid and parsed.e164 and parsed.e164 != pattern:
                        dnis.append(parsed.e164)
            self.rules.append(Rule(name=table.get("name") or f"rule {i + 1}", dnis=tuple(dnis),
                                   queues=_strings(table.get("queue")), direction=table.get("direction"),
                                   **values))
        self.default = Rule(name="default", **defaults)

    def rule_for(self, call: Call, queue: str = "") -> Rule:
        return next((r for r in self.rules if r.matches(call, queue)), self.default)


class RecordingStage(Stage):
    name = "recording"

    def __init__(self, app: AppPort) -> None:
        super().__init__(app)
        self.cfg = self.settings.recording
        self.region = self.settings.node.default_region
        self.policy = RecordingPolicy(self.cfg, self.region)
        self.root = recording_root(self.cfg)

    def run(self, call: Call) -> Verdict:
        queue = self._queue(call)
        rule = self.policy.rule_for(call, queue)
        details: dict[str, Any] = {"mode": rule.mode, "rule": rule.name, "purpose": rule.purpose,
                                   "consent_required": rule.consent}
        if queue:
            details["queue"] = queue
        call.facts["recording"] = {"mode": rule.mode, "rule": rule.name, "purpose": rule.purpose, "recorded": False}

        if rule.mode == "off":
            call.export(fsguard_recording="off")
            return Verdict.carry_on(f"not recorded: {rule.name} says off", "recording.off", **details)
        if rule.mode == "sample":
            details["sample_percent"] = rule.sample_percent
            if not in_sample(call.uuid, rule.sample_percent):
                call.export(fsguard_recording="off")
                return Verdict.carry_on(f"not recorded: outside the {rule.sample_percent:g}% sample of {rule.name}",
                                        "recording.sample_skipped", **details)
        try:
            path = recording_path(self.root, call.uuid, utcnow())
        except ValueError as exc:
            log.error("recording.bad_uuid", error=str(exc))
            return Verdict.carry_on(f"not recorded: {exc}", "recording.bad_uuid", **details)

        # The caller is told before anything is recorded.
        if rule.consent:
            details["consent_media"] = "callee_answer" if call.direction == "outbound" else rule.consent_media
            details["consent"] = self.announce(call, rule)
            if not details["consent"]:
                return Verdict.carry_on(f"not recorded: the consent notice {rule.consent_prompt!r} could not be "
                                        f"played ({call.facts['recording'].get('consent_error')})",
                                        "recording.consent_failed", **details)
        else:
            details["consent"] = False

        if rule.mode == "on_demand":
            call.set(RECORD_STEREO="true" if self.cfg.stereo else "false")
            call.export(fsguard_recording="on_demand")
            return Verdict.carry_on(f"recorded on demand only ({rule.name}); consent "
                                    f"{'given before routing' if details['consent'] else 'not required'}",
                                    "recording.on_demand", **details)
        return self.record(call, rule, path, details)

    def announce(self, call: Call, rule: Rule) -> bool:
        """Play the consent notice; True once the caller has heard it.

        A notice FreeSWITCH could not play (FILE NOT FOUND, PLAYBACK ERROR) is logged and the call is
        not recorded. On an outbound call the notice is handed to the called party's leg, played
        when they answer.
        """
        if call.direction == "outbound":
            call.export(**{"nolocal:execute_on_answer": f"playback {rule.consent_prompt}"})
            return True
        if rule.consent_media == "answer" and not call.answered:
            call.answer()
        played = call.play(rule.consent_prompt)
        if not played.ok:
            call.facts["recording"]["consent_error"] = played.reason
            log.error("recording.consent_not_played", prompt=rule.consent_prompt, result=played.reason,
                      rule=rule.name, action="call not recorded")
            return False
        return True

    def record(self, call: Call, rule: Rule, path: str, details: dict[str, Any]) -> Verdict:
        """Queue the recording's row, then start record_session with the variables it reads."""
        started = utcnow()
        until = retain_until(self.cfg, rule.purpose, started)
        details.update(path=path, retain_until=until.isoformat())
        # a replay must not queue the row again (the call has one)
        call.inputs.effect(lambda: queue_recording(
            self.app.writer, call_uuid=call.uuid, path=path, node=self.settings.node.id, direction=call.direction,
            number=party_number(call.direction, call.ani, call.dnis, self.region), mode=rule.mode, rule=rule.name,
            purpose=rule.purpose, consent=bool(details["consent"]), stereo=self.cfg.stereo, started_by="policy",
            status="recording", started_at=started, retain_until=until, legal_hold=False, hold_reason="", error=""),
            replayed=None)
        call.set(recording_follow_transfer="true")
        call.export(fsguard_recording="on")
        call.record(path, stereo=self.cfg.stereo, from_bridge=rule.start == "bridge")
        details["start"] = rule.start
        call.facts["recording"].update(recorded=True, path=path, retain_until=until.isoformat(), start=rule.start)
        return Verdict.carry_on(f"recorded for {rule.purpose} until {until:%Y-%m-%d} ({rule.name}: {rule.mode})",
                                f"recording.{rule.mode}", **details)

    def after_call(self, call: Call, end: CallEnd) -> None:
        """Size, duration and SHA-256 of the file, now that FreeSWITCH has closed it."""
        facts = call.facts.get("recording")
        if not facts:
            return
        abandoned = call.final_action is None
        if facts.get("recorded"):
            # a file that starts at the bridge: a call that never reached anyone has none, and
            # that is no fault (FreeSWITCH's CHANNEL_HANGUP_COMPLETE says whether it was bridged)
            never_bridged = facts.get("start") == "bridge" and end.bridged is False
            call.end_notes[self.name] = finalize_queued(self.app.writer, call.uuid, facts["path"],
                                                        abandoned=abandoned, never_bridged=never_bridged)
        elif facts.get("mode") == "on_demand":   # started (or not) by an agent: look it up
            finalize(self.db, call.uuid, abandoned=abandoned)

    def _queue(self, call: Call) -> str:
        """The queue named by the dialplan (recording starts before routing picks one); recorded
        even when no rule asks: a changed policy may, and replay must know."""
        return call.inputs.fact("recording_queue", lambda: call.var(self.cfg.queue_variable), keep_empty=False)
