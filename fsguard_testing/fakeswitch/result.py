"""What happened to one simulated channel, as FreeSWITCH saw it: :class:`SimResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

Outcome = str  # "routed" | "hungup" | "caller_hangup" | "fallback" | "stranded" | "refused" | "protocol_error"


@dataclass
class SimResult:
    """What happened to one simulated channel."""

    uuid: str
    outcome: Outcome | None = None
    route: str | None = None  # "transfer default XML queues", "callcenter support@default", "bridge ..."
    hangup_cause: str | None = None
    hangup_by: str | None = None  # "target" | "caller" | "far_end" | "freeswitch"
    answered: bool = False
    early_media: bool = False
    billsec: float = 0.0  # channel seconds from answer to hang-up
    heard: list[str] = field(default_factory=list)
    dtmf: str = ""  # digits the caller keyed (that FreeSWITCH collected)
    apps: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    late_commands: list[str] = field(default_factory=list)  # received after the channel hung up
    variables: dict[str, str] = field(default_factory=dict)
    exported: dict[str, str] = field(default_factory=dict)
    recordings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    event_names: list[str] = field(default_factory=list)
    events_sent: int = 0
    bytes_sent: int = 0
    target: tuple[str, int] | None = None
    linger: int | None = None  # what the target asked for: -1 (linger), N, or None
    started_at: float | None = None  # monotonic timestamps
    connected_at: float | None = None  # TCP connected
    connect_reply_at: float | None = None  # CHANNEL_DATA sent
    decided_at: float | None = None  # first routing / hang-up command received
    ended_at: float | None = None

    @property
    def decision_latency(self) -> float | None:
        """Real seconds from TCP connect to the first routing or hang-up command."""
        if self.decided_at is None or self.connected_at is None:
            return None
        return self.decided_at - self.connected_at

    @property
    def ok(self) -> bool:
        """No protocol violations and not a failure outcome."""
        return not self.violations and self.outcome not in ("stranded", "protocol_error", None)
