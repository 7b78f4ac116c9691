"""Prometheus metrics, in a registry of their own so that several apps (tests) do not collide.

Served as Prometheus text on the admin HTTP server's ``/metrics`` (see docs/operations.rst for the
list and what to alert on). Labels are bounded: stage names, outcomes, rule codes, dialplan
applications and hang-up causes, never numbers or uuids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fsguard import __version__
from fsguard.call.instructions import Instruction

# no *_created series: they double the scrape and no dashboard reads them
disable_created_metrics()

if TYPE_CHECKING:
    from fsguard.call.verdict import Verdict

#: how a challenge can end (fsguard_challenges_total{outcome})
CHALLENGE_OUTCOMES = ("passed", "wrong", "no_input", "abandoned")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_* (CPU seconds, resident memory, open file descriptors, start time) and
        # python_* (version, garbage collections): what every Prometheus dashboard expects
        ProcessCollector(registry=r)
        r.register(PLATFORM_COLLECTOR)
        r.register(GC_COLLECTOR)
        self.challenges = Counter(
            "fsguard_challenges", "Verification challenges by how they ended: passed, wrong (a wrong code), "
            "no_input (nothing keyed in the window), abandoned (the caller hung up)", ["outcome"], registry=r)
        for outcome in CHALLENGE_OUTCOMES:   # every series exists from the start: rates and alerts see 0
            self.challenges.labels(outcome=outcome)
        self._writer = _WriterCollector()
        r.register(self._writer)
        self.calls = Counter("fsguard_calls", "Calls taken, by direction and outcome", ["direction", "outcome"],
                             registry=r)
        self.verdicts = Counter("fsguard_verdicts", "Stage verdicts by stage and outcome; enforced=false is shadow mode",
                                ["stage", "outcome", "enforced"], registry=r)
        self.decision_seconds = Histogram(
            "fsguard_decision_seconds", "From the connect reply to FreeSWITCH's final instruction",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.active_calls = Gauge("fsguard_active_calls", "Calls currently held by fsguard", registry=r)
        self.db_errors = Counter("fsguard_database_errors", "Database errors", registry=r)
        self.esl_errors = Counter("fsguard_esl_errors", "Event Socket errors", ["kind"], registry=r)
        self.auto_blocks = Counter("fsguard_auto_blocks", "Numbers blocked automatically", ["reason"], registry=r)
        self.over_capacity = Counter("fsguard_over_capacity", "Calls refused for capacity or shutdown",
                                     ["reason"], registry=r)
        self.call_actions = Counter(
            "fsguard_call_actions", "Final instructions given to FreeSWITCH, by direction and application "
            "(transfer, callcenter, bridge; hangup with its cause; none when the caller left first)",
            ["direction", "action"], registry=r)
        self.rule_verdicts = Counter(
            "fsguard_rule_verdicts", "Stage verdicts by rule code; enforced=false counts what shadow mode would "
            "have done", ["stage", "code", "outcome", "enforced"], registry=r)
        self.policy_refresh_failures = Counter(
            "fsguard_policy_refresh_failures", "Refreshes of the in-process policy (lists, customers, freezes) "
            "that could not read the database; the last snapshot was kept", registry=r)
        self.policy_age = Gauge("fsguard_policy_age_seconds", "Seconds since the in-process policy was last known "
                                "current", registry=r)
        self.reloads = Counter("fsguard_config_reloads", "Policy reloads (SIGHUP), by result", ["result"],
                               registry=r)
        self.reviews = Counter("fsguard_reviews", "Recordings reviewed for phrases, by result (done, skipped, "
                               "failed, dropped) and direction", ["state", "direction"], registry=r)
        self.review_hits = Counter("fsguard_review_hits", "Phrases heard by the review, by phrase and action",
                                   ["phrase", "action"], registry=r)
        self.review_seconds = Counter("fsguard_review_audio_seconds", "Seconds of audio listened to by the review",
                                      registry=r)
        self.review_backlog = Gauge("fsguard_review_backlog", "Recordings waiting for review", registry=r)
        self.info = Gauge("fsguard_info", "Always 1; labels tell the node id and fsguard version",
                          ["node", "version"], registry=r)
        #: (metric, label values) -> its child: the per-call counters are found in one dict lookup
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def count(self, metric: Counter, *values: str) -> None:
        """Add one to ``metric``'s series for ``values`` (in the order its labels were declared).

        ``labels()`` checks and joins its arguments at every call: eight per call cost 90 us of
        CPU through the switch. The label sets are bounded (see the module docstring), so the
        children are kept."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        child.inc()

    def verdict(self, verdict: Verdict) -> None:
        enforced = "true" if verdict.enforced else "false"
        outcome = verdict.outcome.value
        self.count(self.verdicts, verdict.stage, outcome, enforced)
        if verdict.code:
            self.count(self.rule_verdicts, verdict.stage, verdict.code, outcome, enforced)
        if verdict.stage == "verification":
            ended = challenge_outcome(verdict)
            if ended is not None:
                self.count(self.challenges, ended)

    def watch_policy(self, snapshot: Any) -> None:
        """fsguard_policy_age_seconds reads the snapshot's age (-1 until it is loaded)."""
        self.policy_age.set_function(lambda: -1.0 if snapshot.age() is None else snapshot.age())

    def watch_writer(self, writer: Any) -> None:
        """Report the call writer's backlog and abandoned rows (read at each scrape)."""
        self._writer.writer = writer

    def call_action(self, direction: str, action: Instruction | None) -> None:
        """Count the final instruction by application: ``transfer``, ``callcenter``, ``hangup CALL_REJECTED``.

        A routing target's argument (queue, agent, extension) is left out to keep the label set
        small; a hang-up keeps its cause, which is what tells a rejection from a failure.
        """
        if action is None:
            label = "none"
        elif action.hangs_up and action.arg:
            label = f"hangup {action.arg.split()[0]}"
        else:
            label = action.app
        self.count(self.call_actions, direction, label)

    def node(self, node_id: str) -> None:
        self.info.labels(node=node_id, version=__version__).set(1)


def challenge_outcome(verdict: Verdict) -> str | None:
    """How a challenge the verification stage ran ended, or None for a verdict that is no
    challenge's end (shadow mode, a replay, a stage that let the call through)."""
    if verdict.details.get("replayed"):
        return None
    if verdict.outcome.value == "abandoned":
        return "abandoned"
    if verdict.code == "verification.passed":
        return "passed"
    if verdict.code == "verification.failed":
        outcome = str(verdict.details.get("outcome") or "")
        return outcome if outcome in CHALLENGE_OUTCOMES else "wrong"
    return None


class _WriterCollector(Collector):
    """The group-commit writer's state at scrape time: rows waiting for the database, and rows
    given up on (logged whole as db.write_abandoned for an operator to replay)."""

    def __init__(self) -> None:
        self.writer: Any = None

    def collect(self) -> Iterator[Metric]:
        writer = self.writer
        backlog = GaugeMetricFamily("fsguard_writer_backlog", "Call rows queued for the database, not yet written")
        backlog.add_metric([], float(len(writer.queue)) if writer is not None else 0.0)
        yield backlog
        written = CounterMetricFamily("fsguard_writer_rows_written", "Call rows written to the database")
        written.add_metric([], float(getattr(writer, "rows_written", 0)))
        yield written
        abandoned = CounterMetricFamily(
            "fsguard_writer_abandoned", "Call rows given up on after database.write_retry_seconds (or at "
            "shutdown), each logged whole as db.write_abandoned")
        abandoned.add_metric([], float(getattr(writer, "abandoned", 0)))
        yield abandoned
