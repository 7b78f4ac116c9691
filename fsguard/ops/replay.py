"""Deciding stored calls again under a changed policy: what ``fsguard replay`` does.

A new rule is rolled out without fear when one knows what it would have done to last week's
traffic. For every stored call (oldest first), replay builds the call again from its record
(``inputs`` is what ``Call.describe()`` stored, stage facts included), runs the NEW
configuration's pipeline over it, and compares, stage by stage, the verdict stored then with the
verdict given now (outcome and rule code, and whether it was enforced), and the final outcome.

Nothing is done to anyone and nothing is kept:

* the call is a :class:`ReplayCall`: built from the record's values, its channel a stand-in on
  which every action (answer, play, collect, route, hang-up) does nothing;
* the facts the stages were given then (counters, the STIR/SHAKEN result, what the CRM said, the
  time, the caller's answer to a challenge) come back through the call's input port
  (:class:`fsguard.call.inputs.ReplayedInputs`); what the record does not hold is fetched live;
* each call's database work runs in a transaction of its own that is rolled back when the call
  is done, so stages read today's lists and tables and their writes vanish.

Stages have no replay branch: they ask ``call.inputs`` for their facts (see docs/operations.rst).
"""

from __future__ import annotations

import sys
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import structlog
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from fsguard.call.call import Call
from fsguard.call.inputs import ReplayedInputs
from fsguard.call.pipeline import Decision, Pipeline
from fsguard.call.results import Collected, Played
from fsguard.call.verdict import Verdict
from fsguard.config import Settings
from fsguard.rules import numbers
from fsguard.rules.snapshot import PolicySnapshot
from fsguard.service.metrics import Metrics
from fsguard.store.db import Database
from fsguard.store.models import CallRecord, StageVerdict

log = structlog.get_logger("fsguard.ops.replay")

#: the keys of Call.describe() itself; anything else in ``inputs`` was stored by a stage
BASE_INPUTS = frozenset({"ani", "presented", "network", "asserted", "peer", "caller_name", "dnis", "direction",
                         "context", "privacy", "anonymous", "ani_valid"})
#: calls read per query (and verdicts fetched per IN list)
BATCH = 1000
#: example calls kept per difference
EXAMPLES = 3


# ---------------------------------------------------------------- the call


class ReplaySession:
    """The channel of a replayed call: answers every command at once and does nothing."""

    hungup = False
    eof = False
    closed = False
    answered = False
    on_event = None

    def __init__(self, log: Any) -> None:
        self.channel: dict[str, str] = {}
        self.log = log
        self.dtmf: list[str] = []

    def execute(self, app: str, arg: str = "", *, wait: bool = True, timeout: float | None = None) -> dict[str, str]:
        return {}

    def send_apps(self, apps: list[tuple[str, str]], *, then_set: Mapping[str, str] | None = None) -> None:
        pass

    def break_media(self) -> None:
        pass

    def close(self) -> None:
        pass


class ReplayCall(Call):
    """A stored call, built again from its record as the stages saw it.

    The caller comes from the record's values (no channel is rebuilt); the facts the stages were
    given then come back through a :class:`ReplayedInputs` port (the verification outcome as
    ``verified``); every action does nothing, and a sound "plays".
    """

    def __init__(self, record: Mapping[str, Any], settings: Settings, log: Any = None) -> None:
        inputs: dict[str, Any] = dict(record.get("inputs") or {})
        self.session = ReplaySession(log)  # type: ignore[assignment]
        self.log = log
        self.channel = {}
        self.uuid = record["uuid"]
        self.caller_name = inputs.get("caller_name", record.get("caller_name") or "")
        self.presented_number = inputs.get("presented", record.get("ani_raw") or "")
        self.dnis = inputs.get("dnis", record.get("dnis") or "")
        self.context = inputs.get("context", record.get("context") or "")
        self.variables, self.sip_headers = {}, {}
        self.privacy, self.privacy_name = bool(inputs.get("privacy")), False
        self.region = settings.node.default_region
        # an untrusted assertion is screening's input, replayed through the port
        self.asserted_number, self.identity_trusted, self.asserted_e164 = "", False, None
        network = inputs.get("network") or ""
        self.network_number = network if network and not numbers.is_anonymous(network) else self.presented_number
        self._read_numbers()
        if record.get("ani") and self.ani != record["ani"]:
            # the number as it was decided on, even if the region setting changed since
            self.ani = record["ani"]
        direction = str(inputs.get("direction", record.get("direction") or "")).lower()
        if direction not in ("inbound", "outbound"):
            direction = "outbound" if self.context in settings.node.outbound_contexts else "inbound"
        self.direction = direction
        stored = {k: v for k, v in inputs.items() if k not in BASE_INPUTS}
        self._begin(ReplayedInputs({**stored, "verified": record.get("verified")},
                                   started_at=record.get("started_at")))

    def play(self, sound: str, *, timeout: float = 120.0) -> Played:
        return Played(True)

    def collect(self, **options: Any) -> Collected:
        return Collected()


# ------------------------------------------------------------ the database


class ReplayDatabase(Database):
    """A Database whose transactions are all undone: one transaction per replayed call, rolled back.

    Stages write with ``with db.begin() as s:`` as usual; here every such block joins the call's
    transaction (so a stage sees what an earlier stage of the same call wrote), and :meth:`undo`
    rolls the whole call back. The transaction is held for one call at a time only, so a live
    fsguard writing to the same database is not kept waiting.
    """

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        if self.is_sqlite:
            # pysqlite opens transactions by itself and cannot roll back a released savepoint
            # unless SQLAlchemy emits BEGIN itself (SQLAlchemy's documented recipe)
            @event.listens_for(self.engine, "connect")
            def _no_pysqlite_transactions(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None

            @event.listens_for(self.engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN")

        self.conn = self.engine.connect()
        # "rollback_only": a stage's commit leaves the call's transaction open (no SAVEPOINT round
        # trips); a stage's failure rolls the call's transaction back, and the next stage of the
        # call starts a new one
        self.sessions = sessionmaker(bind=self.conn, join_transaction_mode="rollback_only",
                                     expire_on_commit=False)
        self._tx: Any = None

    @contextmanager
    def begin(self) -> Iterator[Session]:
        if self._tx is None or not self._tx.is_active:
            self._tx = self.conn.begin()
        with self.sessions.begin() as session:
            yield session

    def undo(self) -> None:
        """Roll back everything the last call did."""
        if self._tx is not None:
            tx, self._tx = self._tx, None
            if tx.is_active:
                tx.rollback()

    def dispose(self) -> None:
        self.undo()
        self.conn.close()
        super().dispose()


class ReplayApp:
    """What a stage can reach through ``self.app`` during a replay."""

    def __init__(self, settings: Settings, db: ReplayDatabase) -> None:
        self.settings = settings
        self.db = db
        self.metrics = Metrics()
        #: the policy as it is now (loaded at the first replayed call)
        self.policy = PolicySnapshot(db)
        self.deciding: set[Any] = set()
        self.held: set[Any] = set()
        self.stopping = False
        self.pipeline = Pipeline.from_settings(self)  # type: ignore[arg-type]


# ------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Said:
    """What one stage said about a call: outcome, rule code, and whether it was enforced."""

    outcome: str
    code: str = ""
    enforced: bool = True

    def __str__(self) -> str:
        text = self.outcome if self.enforced else f"would {self.outcome}"
        return f"{text} {self.code}" if self.code else text


NOT_RUN = Said("not run")
#: a stage that lets the call by without a word decides nothing: the same as not running
PASSED = Said("continue")


@dataclass
class Difference:
    stage: str
    rule: str
    was: str
    now: str
    calls: int = 0
    examples: list[str] = field(default_factory=list)
    #: the first error message when the new verdict is an error
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {"stage": self.stage, "rule": self.rule, "was": self.was, "now": self.now, "calls": self.calls,
                "examples": self.examples}
        if self.note:
            data["note"] = self.note
        return data


@dataclass
class Report:
    """The result of a replay, for people (``str``) and for scripts (``as_dict``)."""

    since: datetime | None
    until: datetime | None
    policy: str
    stages: list[str]
    calls: int = 0
    #: calls whose final outcome or instruction differs
    changed: int = 0
    #: calls on which at least one stage said something else (even if the outcome is the same)
    stage_changed: int = 0
    erased: int = 0
    abandoned: int = 0
    elapsed: float = 0.0
    final: dict[tuple[str, str], Difference] = field(default_factory=dict)
    differences: dict[tuple[str, str, str, str], Difference] = field(default_factory=dict)
    compared: Tally[str] = field(default_factory=Tally)
    changed_by_stage: Tally[str] = field(default_factory=Tally)

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    def _add(self, table: dict[Any, Difference], key: Any, diff: Difference, uuid: str, note: str | None) -> None:
        entry = table.setdefault(key, diff)
        entry.calls += 1
        if len(entry.examples) < EXAMPLES:
            entry.examples.append(uuid)
        if note and not entry.note:
            entry.note = note

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "policy": self.policy, "stages": self.stages,
            "calls": self.calls, "changed": self.changed, "stage_changed": self.stage_changed,
            "not_compared": {"erased": self.erased},
            "caller_left_during_a_stage": self.abandoned,
            "elapsed_seconds": round(self.elapsed, 3), "calls_per_second": round(self.rate, 1),
            "final": [d.as_dict() for d in _by_count(self.final)],
            "stages_compared": {stage: {"compared": n, "changed": self.changed_by_stage[stage]}
                                for stage, n in self.compared.items()},
            "differences": [d.as_dict() for d in _by_count(self.differences)],
        }

    def __str__(self) -> str:
        span = (f"{_when(self.since)} to {_when(self.until) if self.until else 'now'}" if self.since else "all time")
        lines = [f"Replayed {self.calls:,} calls ({span}) against {self.policy}",
                 f"  stages now: {' -> '.join(self.stages) or '(none)'}; "
                 f"{self.elapsed:.1f} s, {self.rate:,.0f} calls/s", ""]
        share = f" ({100 * self.changed / self.calls:.1f}%)" if self.calls else ""
        lines.append(f"Calls decided differently: {self.changed:,}{share}")
        for d in _by_count(self.final):
            lines.append(f"  {d.was} -> {d.now}: {d.calls:,}   e.g. {', '.join(d.examples)}")
        if self.differences:
            lines += ["", f"Calls on which a stage said something else: {self.stage_changed:,}", "",
                      "By stage and rule:"]
            rows = [[d.stage, d.rule, d.was, d.now, f"{d.calls:,}", ", ".join(d.examples)]
                    for d in _by_count(self.differences)]
            lines += _table(rows, ["stage", "rule", "was", "now", "calls", "examples"])
            notes = [d for d in _by_count(self.differences) if d.note]
            for d in notes:
                lines.append(f"  {d.stage} {d.now}: {d.note}")
        if self.compared:
            lines += ["", "Stages compared: " + "; ".join(
                f"{stage} {self.changed_by_stage[stage]:,} of {n:,} changed" for stage, n in self.compared.items())]
        skipped = []
        if self.erased:
            skipped.append(f"{self.erased:,} erased calls were skipped")
        if self.abandoned:
            skipped.append(f"{self.abandoned:,} callers hung up during a stage: compared up to that stage")
        if skipped:
            lines += ["", "Note: " + "; ".join(skipped) + "."]
        return "\n".join(lines)


def _by_count(table: dict[Any, Difference]) -> list[Difference]:
    return sorted(table.values(), key=lambda d: (-d.calls, d.stage, d.rule, d.was, d.now))


def _when(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else ""


def _table(rows: list[list[str]], headers: list[str]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(headers)] + [fmt(r) for r in rows]


def compare(report: Report, record: Mapping[str, Any], stored: list[Mapping[str, Any]], decision: Decision) -> None:
    """Count how the new decision differs from the stored one, stage by stage and in the end."""
    uuid = record["uuid"]
    old = list(stored)
    new: list[Verdict] = list(decision.verdicts)
    final_comparable = True
    left = next((i for i, v in enumerate(old) if v["outcome"] == "abandoned"), None)
    if left is not None:
        # the caller hung up during that stage: what would have come after it is unknown
        report.abandoned += 1
        stage_left = old[left]["stage"]
        old = old[:left]
        cut = next((i for i, v in enumerate(new) if v.stage == stage_left), None)
        if cut is not None:
            new = new[:cut]
            final_comparable = False
    was = {v["stage"]: Said(v["outcome"], v["code"] or "", bool(v["enforced"])) for v in old}
    now = {v.stage: Said(v.outcome.value, v.code, v.enforced) for v in new}
    notes = {v.stage: str(v.details.get("error")) for v in new if v.outcome.value == "error" and v.details}
    stage_change = False
    for stage in list(dict.fromkeys([*now, *was])):
        before, after = was.get(stage, NOT_RUN), now.get(stage, NOT_RUN)
        report.compared[stage] += 1
        if before == after or {before, after} == {NOT_RUN, PASSED}:
            continue
        stage_change = True
        report.changed_by_stage[stage] += 1
        rule = after.code or before.code or "-"
        key = (stage, rule, str(before), str(after))
        report._add(report.differences, key, Difference(stage, rule, str(before), str(after)), uuid,
                    notes.get(stage))
    report.stage_changed += stage_change
    old_final = record.get("outcome") or "unknown"
    if final_comparable and (old_final != decision.outcome or (record.get("action") or None) != decision.action):
        report.changed += 1
        if old_final == decision.outcome:
            key = (f"{old_final} to {record.get('action')}", f"{decision.outcome} to {decision.action}")
        else:
            key = (old_final, decision.outcome)
        report._add(report.final, key, Difference("final", "", key[0], key[1]), uuid, None)


# ------------------------------------------------------------------ the run


def _stored_calls(db: Database, since: datetime | None, until: datetime | None,
                  limit: int | None) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Stored calls oldest first, with their verdicts, streamed (``yield_per``) in batches."""
    calls = CallRecord.__table__
    verdicts = StageVerdict.__table__
    stmt = select(calls.c.uuid, calls.c.started_at, calls.c.direction, calls.c.ani, calls.c.ani_raw,
                  calls.c.caller_name, calls.c.dnis, calls.c.context, calls.c.inputs, calls.c.verified,
                  calls.c.outcome, calls.c.action, calls.c.erased).order_by(calls.c.started_at, calls.c.uuid)
    if since is not None:
        stmt = stmt.where(calls.c.started_at >= since)
    if until is not None:
        stmt = stmt.where(calls.c.started_at < until)
    if limit is not None:
        stmt = stmt.limit(limit)
    with db.engine.connect() as conn, db.engine.connect() as vconn:
        result = conn.execution_options(yield_per=BATCH).execute(stmt)
        for rows in result.partitions():
            batch = [dict(r._mapping) for r in rows]
            by_call: dict[str, list[dict[str, Any]]] = {r["uuid"]: [] for r in batch}
            vstmt = (select(verdicts.c.call_uuid, verdicts.c.stage, verdicts.c.outcome, verdicts.c.code,
                            verdicts.c.enforced)
                     .where(verdicts.c.call_uuid.in_(list(by_call))).order_by(verdicts.c.call_uuid, verdicts.c.seq))
            for v in vconn.execute(vstmt):
                by_call[v.call_uuid].append(dict(v._mapping))
            vconn.rollback()
            for record in batch:
                yield record, by_call[record["uuid"]]


def count_calls(db: Database, since: datetime | None, until: datetime | None) -> int:
    stmt = select(func.count()).select_from(CallRecord)
    if since is not None:
        stmt = stmt.where(CallRecord.started_at >= since)
    if until is not None:
        stmt = stmt.where(CallRecord.started_at < until)
    with db.begin() as session:
        return int(session.scalar(stmt) or 0)


def replay(db: Database, settings: Settings, *, since: datetime | None = None, until: datetime | None = None,
           limit: int | None = None, policy_name: str = "the current configuration",
           progress: Callable[[int], None] | None = None) -> Report:
    """Re-decide the stored calls from ``since`` to ``until`` with ``settings``'s pipeline.

    One call at a time: the time goes into the stages' own queries and Python, and running
    several calls at once in gevent did not make it faster (measured on PostgreSQL).
    """
    app = ReplayApp(settings, ReplayDatabase(db.settings))
    report = Report(since, until, policy_name, [s.name for s in app.pipeline.stages])
    quiet = structlog.get_logger("fsguard.ops.replay.call")
    started = time.perf_counter()
    try:
        for record, stored in _stored_calls(db, since, until, limit):
            if record["erased"]:
                report.erased += 1
            else:
                call = ReplayCall(record, settings, log=quiet)
                try:
                    decision = app.pipeline.decide(call)
                finally:
                    app.db.undo()
                report.calls += 1
                compare(report, record, stored, decision)
            if progress is not None:
                progress(report.calls + report.erased)
    finally:
        report.elapsed = time.perf_counter() - started
        app.db.dispose()
    return report


class ProgressBar:
    """``[#######.............]  35%  350,000/1,000,000 calls  9,800/s  ETA 1m06s`` on a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.width = width
        self.started = self.shown = time.monotonic()   # the first line after 0.2 s, with a real rate

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.shown < 0.2 and done < self.total:
            return
        self.shown = now
        fraction = min(done / self.total, 1.0)
        rate = done / (now - self.started) if now > self.started else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        bar = "#" * int(fraction * self.width)
        self.stream.write(f"\r[{bar:<{self.width}}] {fraction:4.0%}  {done:,}/{self.total:,} calls  "
                          f"{rate:,.0f}/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r" + " " * (self.width + 70) + "\r")
        self.stream.flush()
