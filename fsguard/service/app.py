"""The application: settings, database, metrics and the pipeline, and what happens to one call.

``App.handle`` is the life of a call inside fsguard, top to bottom:

    connect (channel data) -> pipeline decides and instructs FreeSWITCH -> decision written down
    -> follow the call to its end (on the socket, or let go of it and learn the end from the
    node's end watcher: service/ends.py) -> end written down -> exit and close

Whatever fails, the socket is closed and FreeSWITCH has had an instruction (``resume`` is sent
with ``connect``, or the dialplan set ``socket_resume=true``, so even a socket closed without one
hands the call back to the dialplan).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import gevent
import structlog

from fsguard.call.call import Call, IdentityTrust, direction_of
from fsguard.call.failopen import fail_open_for
from fsguard.call.inputs import LiveInputs, utc_now
from fsguard.call.instructions import Hangup
from fsguard.call.pipeline import Decision, Pipeline, ShuttingDown
from fsguard.call.results import CallEnd
from fsguard.config import Settings
from fsguard.esl.session import CallGone, ESLError, OutboundSession, ProtocolError
from fsguard.service import calls
from fsguard.service.ends import NODE_VARIABLE, RELEASE_VARIABLES, EndWatcher, let_go, route_and_close
from fsguard.service.metrics import Metrics
from fsguard.store import records
from fsguard.store.db import Database, DatabaseError
from fsguard.store.writer import Ticket
from fsguard.rules import regions
from fsguard.rules.snapshot import PolicySnapshot

log = structlog.get_logger("fsguard")


class App:
    def __init__(self, settings: Settings, db: Database | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        regions.load()   # before the first call, not during it (0.4 s of place names)
        self.db = db or Database(settings.database)
        self.metrics = metrics or Metrics()
        self.writer = records.make_writer(self.db, retry_seconds=settings.database.write_retry_seconds,
                                          gather_seconds=settings.database.write_gather_seconds,
                                          on_error=self.metrics.db_errors.inc)
        #: lists, customers and freezes in memory: a decision reads no more from the database
        self.policy = PolicySnapshot(self.db, writer=self.writer,
                                     on_refresh_failed=self.metrics.policy_refresh_failures.inc)
        self.metrics.watch_policy(self.policy)
        self.pipeline = Pipeline.from_settings(self)
        self.identity_trust = _identity_trust(settings)
        #: the time stages decide at (business hours): the wall clock, or a test's
        self.clock: Callable[[], datetime] = utc_now
        #: calls still being decided / calls routed and followed to their end
        self.deciding: set[gevent.Greenlet] = set()
        self.held: set[gevent.Greenlet] = set()
        #: set when the server drains: calls decided from then on are not followed to their end
        self.stopping = False
        #: the node's end-of-call watcher (esl.follow_ends = "inbound"; started by the server)
        self.ends = EndWatcher(settings.esl, settings.node.id)

    def reload(self, settings: Settings) -> None:
        """Take a new policy (SIGHUP). Calls in progress finish with the pipeline they started with.
        If the new stages cannot be built (a stage refuses its settings), nothing changes."""
        previous, self.settings = self.settings, settings
        try:
            self.pipeline = Pipeline.from_settings(self)
        except Exception:
            self.settings = previous
            raise
        self.identity_trust = _identity_trust(settings)

    def session_for(self, sock: Any) -> OutboundSession:
        esl = self.settings.esl
        return OutboundSession(sock, command_timeout=esl.command_timeout, max_frame_bytes=esl.max_frame_bytes,
                               event_format=esl.event_format, log=log, connect_timeout=esl.connect_timeout,
                               resume=esl.follow_ends != "inbound")

    def connect(self, session: OutboundSession) -> bool:
        """Start the session (``connect`` and the rest, waiting ``esl.connect_timeout`` for the reply).

        False, with the socket closed, when the peer never answers or does not speak the Event
        Socket: such a connection was never a call, so it never took a call's slot."""
        try:
            session.start()
            return True
        except ProtocolError as exc:
            log.warning("esl.connect_failed", error=str(exc), kind="ProtocolError")
            self.metrics.esl_errors.labels(kind="ProtocolError").inc()
        except (ESLError, OSError) as exc:
            log.info("esl.connect_failed", error=str(exc), kind=type(exc).__name__)
            self.metrics.esl_errors.labels(kind=type(exc).__name__).inc()
        session.close()
        return False

    def handle(self, session: OutboundSession) -> None:
        """Everything fsguard does with one channel. Never raises."""
        me = gevent.getcurrent()
        started_at = datetime.now(timezone.utc)
        structlog.contextvars.clear_contextvars()
        call: Call | None = None
        decision: Decision | None = None
        end: CallEnd | None = None
        written: Ticket | None = None
        self.deciding.add(me)
        self.metrics.active_calls.inc()
        try:
            if not session.started:
                session.start()
            call = self._call(session)
            answered_at_connect = session.channel.get("Answer-State") == "answered"
            decision = self.pipeline.decide(call)
            self.metrics.decision_seconds.observe((decision.decision_ms or 0) / 1000)
            written = calls.record_decision(self.writer, call, decision, self.settings.node.id, started_at)
            call.forget_channel_data()
            self.deciding.discard(me)
            if not self.stopping and (decision.outcome != "abandoned" or not session.hangup_complete):
                self.held.add(me)
                max_seconds = self.settings.esl.max_call_seconds
                if not self.ends.follow(session, max_seconds, answered_at_connect=answered_at_connect):
                    session.wait_for_end(max_seconds)
            elif self.stopping and not session.hungup:
                # decided while shutting down: not followed, but the socket goes only when its
                # close cannot reset the call under the route (service/ends.py)
                let_go(session, self._hold_seconds("shutdown"))
            end = self._end(session)
            for stage in decision.ran:
                try:
                    stage.after_call(call, end)
                except DatabaseError as exc:
                    session.log.error("stage.after_call_failed", stage=stage.name, error=str(exc).splitlines()[0])
                except Exception as exc:  # noqa: BLE001
                    session.log.error("stage.after_call_failed", stage=stage.name, error=str(exc), exc_info=True)
            # last: once this row is committed, so is everything the stages queued before it
            written = calls.record_end(self.writer, call.uuid, end)
        except ShuttingDown:
            self._shutdown(session, call, decision)
        except ProtocolError as exc:
            log.warning("esl.protocol_error", error=str(exc))
            self.metrics.esl_errors.labels(kind="ProtocolError").inc()
        except (CallGone, ESLError) as exc:
            log.info("esl.session_ended", error=str(exc), phase="held" if decision else "deciding")
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down
            log.error("call.failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            if decision is None:   # failed before an instruction: the call still gets its route
                self._fail_open(session, call, "error")
        finally:
            self.deciding.discard(me)
            self.held.discard(me)
            self.metrics.active_calls.dec()
            try:
                if written is not None:
                    # what FreeSWITCH sees ended, an operator can look up (the wait is bounded: a
                    # database that is down must not hold the call's slot for long)
                    written.wait(self.settings.database.write_wait_seconds)
            except (ShuttingDown, gevent.GreenletExit):
                pass
            finally:
                session.close()
                self._canonical_line(call, decision, end)

    def _call(self, session: OutboundSession) -> Call:
        node = self.settings.node
        call = Call(session, default_region=node.default_region, outbound_contexts=node.outbound_contexts,
                    trust=self.identity_trust, inputs=LiveInputs(self.clock))
        structlog.contextvars.bind_contextvars(uuid=call.uuid, ani=call.ani or call.presented_number, dnis=call.dnis)
        call.log = session.log = log
        if not session.resume_sent:   # a socket that sent ``resume`` is held (see service/ends.py)
            call.route_variables = {NODE_VARIABLE: node.id, RELEASE_VARIABLES[0]: RELEASE_VARIABLES[1]}
        gevent.getcurrent().fsguard_call = weakref.ref(call)   # the console's "live calls" page reads it
        return call

    def _end(self, session: OutboundSession) -> CallEnd:
        return CallEnd.from_event(session.hangup_complete or session.hangup_event or {},
                                  hangup_cause=session.hangup_cause, answered=session.answered)

    def _shutdown(self, session: OutboundSession, call: Call | None, decision: Decision | None) -> None:
        """The drain time is over: a call still being decided takes the fail-open route (its
        direction's: an agent's outbound call is dialled, an inbound call goes to the queue)."""
        if decision is None:
            self._fail_open(session, call, "shutdown")

    def _fail_open(self, session: OutboundSession, call: Call | None, reason: str) -> None:
        """A call that has no instruction yet (shutdown, a failure outside the pipeline) takes
        its direction's fail-open route (fail-closed: the configured hang-up)."""
        if session.started and not session.hungup and not session.eof and not session.closed:
            settings = self.settings
            if call is not None:
                direction, dnis, region = call.direction, call.dnis, call.region
            else:
                direction = direction_of(session.channel, settings.node.outbound_contexts)
                dnis, region = session.channel.get("Caller-Destination-Number", ""), settings.node.default_region
            route = fail_open_for(settings.policy, direction, dnis, settings.outbound, region)
            if reason != "shutdown" and settings.policy.on_error == "closed":
                route = Hangup(settings.policy.fail_closed_cause)
            try:
                route_and_close(session, route.app, route.arg, self._hold_seconds(reason))
                if reason == "shutdown":
                    log.warning("call.released_at_shutdown", action=str(route), direction=direction)
                    self.metrics.over_capacity.labels(reason="shutdown").inc()
                else:
                    log.warning("call.released_after_error", action=str(route), direction=direction)
            except (ESLError, OSError) as exc:
                log.error("call.fail_open_route_failed", reason=reason, error=str(exc))

    def _hold_seconds(self, reason: str) -> float:
        """How long a socket whose close would reset the call under its last route is held: at
        shutdown only as long as the server waits for its calls (it then kills them), else as
        long as a held call."""
        esl = self.settings.esl
        return max(esl.command_timeout, 1.0) if reason == "shutdown" else esl.max_call_seconds

    def refuse(self, session: OutboundSession, reason: str) -> None:
        """Over capacity or shutting down: connect, give the fail-open route at once, close as
        soon as closing cannot reset the call under it (service/ends.py: route_and_close).

        The route is the call's direction's (read from the channel data, without building a Call):
        an agent's outbound call is dialled, an inbound call goes to the fail-open queue."""
        settings = self.settings
        direction, route, instruction = "unknown", None, None
        try:
            if not session.started:
                session.start()
            structlog.contextvars.bind_contextvars(uuid=session.uuid)
            direction = direction_of(session.channel, settings.node.outbound_contexts)
            instruction = fail_open_for(settings.policy, direction, session.channel.get("Caller-Destination-Number", ""),
                                        settings.outbound, settings.node.default_region)
            route = str(instruction)
            route_and_close(session, instruction.app, instruction.arg, self._hold_seconds(reason))
            log.warning("call.refused", reason=reason, action=route, direction=direction)
        except (ESLError, OSError) as exc:
            log.error("call.refuse_failed", reason=reason, error=str(exc))
        finally:
            self.metrics.over_capacity.labels(reason=reason).inc()
            self.metrics.calls.labels(direction=direction, outcome=reason).inc()
            self.metrics.call_action(direction, instruction)
            session.close()
            structlog.contextvars.clear_contextvars()

    def _canonical_line(self, call: Call | None, decision: Decision | None, end: CallEnd | None) -> None:
        """One line per call with the whole outcome: what an operator greps for."""
        if call is None:
            structlog.contextvars.clear_contextvars()
            return
        outcome = decision.outcome if decision else "failed"
        self.metrics.count(self.metrics.calls, call.direction, outcome)
        self.metrics.call_action(call.direction, call.final_action)
        log.info("call", direction=call.direction, outcome=outcome, action=decision.action if decision else None,
                 decision_ms=round(decision.decision_ms, 3) if decision and decision.decision_ms else None,
                 verdicts=[f"{v.stage}:{v.outcome.value}{'' if v.enforced else '(shadow)'}:{v.code}"
                           for v in (decision.verdicts if decision else [])],
                 risk=call.risk, hangup_cause=end.hangup_cause if end else None,
                 billsec=end.billsec if end else None, **call.end_notes)
        structlog.contextvars.clear_contextvars()


def _identity_trust(settings: Settings) -> IdentityTrust:
    screening = settings.screening
    return IdentityTrust(screening.trusted_networks, screening.trusted_gateways)

