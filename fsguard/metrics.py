"""Prometheus metrics, in a registry of their own so that several apps (tests) do not collide."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from fsguard.pipeline import Verdict


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.calls = Counter("fsguard_calls", "Calls taken, by direction and outcome", ["direction", "outcome"],
                             registry=r)
        self.verdicts = Counter("fsguard_verdicts", "Stage verdicts", ["stage", "outcome", "enforced"], registry=r)
        self.decision_seconds = Histogram(
            "fsguard_decision_seconds", "From the connect reply to FreeSWITCH's final instruction",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.active_calls = Gauge("fsguard_active_calls", "Calls currently held by fsguard", registry=r)
        self.db_errors = Counter("fsguard_database_errors", "Database errors", registry=r)
        self.esl_errors = Counter("fsguard_esl_errors", "Event Socket errors", ["kind"], registry=r)
        self.auto_blocks = Counter("fsguard_auto_blocks", "Numbers blocked automatically", ["reason"], registry=r)
        self.over_capacity = Counter("fsguard_over_capacity", "Calls refused for capacity or shutdown",
                                     ["reason"], registry=r)

    def verdict(self, verdict: Verdict) -> None:
        self.verdicts.labels(stage=verdict.stage, outcome=verdict.outcome.value,
                             enforced="true" if verdict.enforced else "false").inc()
