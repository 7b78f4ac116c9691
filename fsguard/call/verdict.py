"""What a stage says about a call: a Verdict, and for a challenge the typed requests that asked for it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from fsguard.call.instructions import Hangup, Instruction


class Outcome(str, enum.Enum):
    CONTINUE = "continue"     # nothing to object to; next stage
    CHALLENGE = "challenge"   # the caller must prove they are a person (verification stage)
    VERIFIED = "verified"     # the caller passed the challenge
    ROUTE = "route"           # send the call to a target; the chain ends
    REJECT = "reject"         # refuse the call; the chain ends
    ABANDONED = "abandoned"   # the caller hung up while this stage worked
    ERROR = "error"           # the stage failed; the call takes the fail-open (or closed) path


FINAL = (Outcome.ROUTE, Outcome.REJECT)


@dataclass(frozen=True)
class ChallengeRequest:
    """Why a stage asks the caller to prove they are a person, as the challenging stage takes it.

    ``trigger`` is the kind of reason (the names ``verification.triggers`` lists: soft_block,
    anonymous, invalid, dno, stir, risk; ``other`` for a stage that gives only its reason), ``label``
    the words an operator reads. A block's ``level`` and STIR/SHAKEN's ``stir`` outcomes travel
    with it, so the challenging stage filters on them without knowing how they were found.
    """

    trigger: str
    label: str
    #: soft_block: the block level (list entry or automatic block)
    level: int = 0
    #: stir: the verification outcome and, when it failed, the failure ("A", "failed", "invalid_signature")
    stir: tuple[str, ...] = ()

    @classmethod
    def other(cls, reason: str) -> ChallengeRequest:
        return cls("other", reason)


@dataclass
class Verdict:
    """A stage's decision about a call, with the reason an operator will read."""

    outcome: Outcome
    reason: str = ""
    #: short machine-readable code for counting and replay ("blocklist.hard", "flood.hour")
    code: str = ""
    #: the instruction for ROUTE / REJECT, e.g. Hangup("CALL_REJECTED").
    #: None on a REJECT means the stage already acted on the channel itself (e.g. hung up).
    action: Instruction | None = None
    details: dict[str, Any] = field(default_factory=dict)
    stage: str = ""
    enforced: bool = True
    elapsed_ms: float = 0.0
    #: CHALLENGE: why, typed (none: the reason is the request)
    requests: tuple[ChallengeRequest, ...] = ()

    @classmethod
    def carry_on(cls, reason: str = "", code: str = "", **details: Any) -> Verdict:
        return cls(Outcome.CONTINUE, reason, code, details=details)

    @classmethod
    def challenge(cls, reason: str, code: str = "", *, requests: tuple[ChallengeRequest, ...] = (),
                  **details: Any) -> Verdict:
        return cls(Outcome.CHALLENGE, reason, code, details=details, requests=requests)

    @classmethod
    def verified(cls, reason: str = "caller passed the challenge", code: str = "verified", **details: Any) -> Verdict:
        return cls(Outcome.VERIFIED, reason, code, details=details)

    @classmethod
    def route(cls, target: Instruction | str, reason: str = "", code: str = "", **details: Any) -> Verdict:
        action = Instruction.parse(target) if isinstance(target, str) else target
        return cls(Outcome.ROUTE, reason, code, action=action, details=details)

    @classmethod
    def reject(cls, reason: str, code: str = "", action: Instruction | str | None = Hangup("CALL_REJECTED"),
               **details: Any) -> Verdict:
        instruction = Instruction.parse(action) if isinstance(action, str) else action
        return cls(Outcome.REJECT, reason, code, action=instruction, details=details)

    def challenge_requests(self) -> tuple[ChallengeRequest, ...]:
        """What this CHALLENGE asks of the challenging stage: its typed requests, else its reason."""
        return self.requests or (ChallengeRequest.other(self.reason),)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "outcome": self.outcome.value, "code": self.code, "reason": self.reason,
                "action": None if self.action is None else str(self.action), "enforced": self.enforced,
                "details": self.details, "elapsed_ms": round(self.elapsed_ms, 3)}
