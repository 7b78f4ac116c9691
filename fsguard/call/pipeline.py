"""The chain of stages a call goes through, and the guarantee that it always ends in an instruction.

Each stage looks at the call and returns a Verdict: carry on, challenge the caller, route the call,
or reject it. The pipeline records every verdict (with the stage's reason and what it looked at),
applies shadow mode, and makes sure FreeSWITCH is told what to do with the channel whatever
happens inside fsguard: a bug in a stage, the database going away, a timeout. That last part is
the product's first promise: a call is never stranded.
"""

from __future__ import annotations

import time
from importlib import import_module
from typing import ClassVar

from fsguard.call.call import Call
from fsguard.call.failopen import on_failure
from fsguard.call.ports import AppPort
from fsguard.call.results import CallEnd
from fsguard.call.verdict import FINAL, Outcome, Verdict
from fsguard.config import ConfigError
from fsguard.esl.session import CallGone, ESLError
from fsguard.store.db import DatabaseError


class ShuttingDown(Exception):
    """Raised into a call's greenlet when fsguard stops and the drain time is over."""


class Stage:
    """A step of the chain. Subclasses set ``name`` and implement ``run``; they read like the call.

    Stages are built once per configuration (on start and on reload) and shared by all calls, so
    they keep no per-call state on ``self``: per-call facts go on the Call.
    """

    name: ClassVar[str] = ""
    #: true for a stage that settles CHALLENGE verdicts (verification)
    resolves_challenges: ClassVar[bool] = False

    def __init__(self, app: AppPort) -> None:
        self.app = app
        self.settings = app.settings
        self.db = app.db

    def applies(self, call: Call) -> bool:
        """Whether this stage has anything to say about this call (e.g. inbound only)."""
        return True

    def run(self, call: Call) -> Verdict:
        raise NotImplementedError

    def after_call(self, call: Call, end: CallEnd) -> None:
        """Called once the call is over (hang-up cause and billsec known), outside the hot path,
        for the stages that applied to the call."""


#: stage name -> "module:Class"; a stage is imported only when the configuration names it
STAGES: dict[str, str] = {
    "screening": "fsguard.stages.screening:ScreeningStage",
    "outbound": "fsguard.stages.outbound:OutboundStage",
    "verification": "fsguard.stages.verification:VerificationStage",
    "recording": "fsguard.stages.recording:RecordingStage",
    "routing": "fsguard.stages.routing:RoutingStage",
}


def load_stage(name: str) -> type[Stage]:
    """The stage class ``policy.stages`` names; a name no stage has is a ConfigError (one line
    from ``fsguard serve`` and ``config check``, not a traceback at start-up)."""
    try:
        module, _, cls = STAGES[name].partition(":")
    except KeyError:
        raise ConfigError(f"policy.stages: unknown stage {name!r} (known: {', '.join(STAGES)})") from None
    return getattr(import_module(module), cls)  # type: ignore[no-any-return]


class Decision:
    """What the pipeline concluded for one call: its verdicts, final action and outcome."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        #: the stages that took part (their after_call hooks run at hang-up)
        self.ran: list[Stage] = []
        #: the instruction FreeSWITCH was given, as the call record writes it
        self.action: str | None = None
        self.outcome: str = ""
        self.started = time.perf_counter()
        self.decided: float | None = None

    @property
    def decision_ms(self) -> float | None:
        return None if self.decided is None else (self.decided - self.started) * 1000


class Pipeline:
    """Runs the configured stages over a call and guarantees a final instruction."""

    def __init__(self, app: AppPort, stages: list[Stage]) -> None:
        self.app = app
        self.stages = stages
        self.policy = app.settings.policy

    @classmethod
    def from_settings(cls, app: AppPort) -> Pipeline:
        return cls(app, [load_stage(name)(app) for name in app.settings.policy.stages])

    def decide(self, call: Call) -> Decision:
        """Run the chain and give FreeSWITCH its instruction. Raises CallGone only if the caller left."""
        decision = Decision()
        final: Verdict | None = None
        try:
            final = self._run_stages(call, decision)
        except CallGone:
            decision.outcome = "abandoned"
        except Exception as exc:  # noqa: BLE001 - whatever failed, the call still gets an instruction
            final = self._failure(call, decision, exc, stage="pipeline")
        if decision.outcome != "abandoned":
            try:
                self._instruct(call, decision, final)
            except CallGone:
                decision.outcome = "abandoned"
            except Exception as exc:  # noqa: BLE001 - the instruction itself failed: still one route
                self._instruct_failed(call, decision, exc)
        decision.decided = time.perf_counter()
        return decision

    def _instruct_failed(self, call: Call, decision: Decision, exc: Exception) -> None:
        """Sending the instruction failed (FreeSWITCH refused it, an argument could not be sent):
        drop what was queued with it and send the call's fail-open (or fail-closed) route alone.

        If even that cannot be sent, the socket closes on a channel that had ``resume``: the
        dialplan's fallback takes it."""
        verdict = self._failure(call, decision, exc, stage="instruct")
        decision.outcome = "failed_closed" if self.policy.on_error == "closed" else "failed_open"
        assert verdict.action is not None
        decision.action = str(verdict.action)
        call._pending.clear()
        call.final_action = verdict.action
        try:
            call.session.send_apps([(verdict.action.app, verdict.action.arg)])
        except CallGone:
            decision.outcome = "abandoned"
        except Exception as again:  # noqa: BLE001 - resume was sent: closing hands the call back
            call.log.error("pipeline.fail_open_failed", error=f"{type(again).__name__}: {again}")

    def _run_stages(self, call: Call, decision: Decision) -> Verdict | None:
        remaining = list(self.stages)
        while remaining:
            stage = remaining.pop(0)
            if not stage.applies(call):
                continue
            decision.ran.append(stage)
            started = time.perf_counter()
            risk, risk_reasons = call.risk, len(call.risk_reasons)
            try:
                verdict = stage.run(call)
            except CallGone:
                self._record(decision, stage.name, Verdict(Outcome.ABANDONED, f"caller hung up during {stage.name}",
                                                           "abandoned"), started)
                raise
            except Exception as exc:  # noqa: BLE001
                return self._failure(call, decision, exc, stage=stage.name, started=started)
            enforced = self.policy.enforced(stage.name)
            if not enforced and call.risk != risk:
                # shadow mode: the stage's risk points must not steer the call either (e.g. routing's
                # fraud queue); they are kept in its verdict
                verdict.details.setdefault("risk_not_applied", call.risk - risk)
                call.risk = risk
                del call.risk_reasons[risk_reasons:]
            if not enforced and verdict.outcome in (Outcome.CHALLENGE, Outcome.REJECT):
                verdict.enforced = False
                verdict.reason = f"would {verdict.outcome.value}: {verdict.reason}"
                self._record(decision, stage.name, verdict, started)
                continue
            self._record(decision, stage.name, verdict, started)
            if verdict.outcome is Outcome.VERIFIED:
                call.verified = True
            elif verdict.outcome is Outcome.CHALLENGE:
                call.challenges.extend(verdict.challenge_requests())
                if not any(s.resolves_challenges and s.applies(call) for s in remaining):
                    if self.policy.unverified_action == "reject":
                        return self._record(decision, "pipeline", Verdict.reject(
                            "verification required but no verification stage runs (policy.unverified_action = reject)",
                            "unverified"), started)
            elif verdict.outcome in FINAL:
                return verdict
        return None

    def _record(self, decision: Decision, stage: str, verdict: Verdict, started: float) -> Verdict:
        verdict.stage = verdict.stage or stage
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        decision.verdicts.append(verdict)
        self.app.metrics.verdict(verdict)
        return verdict

    def _failure(self, call: Call, decision: Decision, exc: Exception, *, stage: str,
                 started: float | None = None) -> Verdict:
        """The stage failed: log it, record it, and take the configured fail-open or fail-closed path."""
        if isinstance(exc, DatabaseError):
            kind, code = "database unavailable", "error.database"
            self.app.metrics.db_errors.inc()
        elif isinstance(exc, ESLError):
            kind, code = "event socket error", "error.esl"
            self.app.metrics.esl_errors.labels(kind=type(exc).__name__).inc()
        elif isinstance(exc, ShuttingDown):
            kind, code = "fsguard shutting down", "error.shutdown"
        else:
            kind, code = "internal error", "error.internal"
        call.log.error("stage.failed", stage=stage, error=f"{type(exc).__name__}: {exc}", kind=kind,
                       exc_info=not isinstance(exc, (DatabaseError, ESLError, ShuttingDown)))
        # an agent's outbound call fails open by going out as dialled, not into the inbound queue
        action = on_failure(self.policy, call.direction, call.dnis, self.app.settings.outbound, call.region)
        failing = "failing closed" if self.policy.on_error == "closed" else "failing open"
        verdict = Verdict(Outcome.ERROR, f"{kind} in {stage}: {failing}", code, action=action)
        verdict.details = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        return self._record(decision, stage, verdict, started or time.perf_counter())

    def _instruct(self, call: Call, decision: Decision, final: Verdict | None) -> None:
        """Give FreeSWITCH the final instruction, unless a stage already did (e.g. hung up)."""
        if final is None:
            final = self._record(decision, "pipeline", Verdict.route(
                self.app.settings.routing.default_target, "no stage routed the call: default target", "default"),
                time.perf_counter())
        if final.outcome is Outcome.ERROR:
            decision.outcome = "failed_closed" if self.policy.on_error == "closed" else "failed_open"
        elif final.outcome is Outcome.REJECT:
            decision.outcome = "rejected"
        else:
            decision.outcome = "routed"
        if call.final_action is not None or final.action is None:
            decision.action = None if call.final_action is None else str(call.final_action)
            return
        decision.action = str(final.action)
        call.instruct(final.action)
