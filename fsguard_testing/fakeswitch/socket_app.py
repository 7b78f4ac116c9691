"""The socket application on the channel: parked, it runs the applications the target queues.

``<action application="socket" data="host:port async full"/>`` parks the channel (CHANNEL_PARK)
once ``connect`` is answered; each ``sendmsg`` execute is queued, and the park loop runs it on
the next 20 ms media tick, with whatever is queued right behind it on the same tick
(switch_ivr_parse_all_events), each between CHANNEL_EXECUTE and CHANNEL_EXECUTE_COMPLETE
carrying the sendmsg's ``Event-UUID`` as ``Application-UUID``.  Without ``event-lock`` a
``break`` queued behind a media application runs nested inside it and stops it, as in
FreeSWITCH; another media application queued so is a violation (FreeSWITCH would nest it, the
simulator runs it after).  When the target's socket goes, the queued applications still run;
a channel left with no instruction and no ``resume`` stays ringing in the socket application:
"stranded".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from uuid import uuid4

from fsguard_testing.fakeswitch.applications import BREAKABLE_APPS, NOOP_APPS, AppRun
from fsguard_testing.fakeswitch.clock import Timer
from fsguard_testing.fakeswitch.core import TICK

#: Applications whose loop parses queued events: without event-lock, an execute queued behind
#: them runs NESTED inside them (switch_ivr_parse_all_events), not after them.
_EVENT_PARSING_APPS = BREAKABLE_APPS | {"park"}


class SocketApplication:
    """The park loop and the queue of applications (a part of :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = False
        self.resume = False  # the target sent ``resume``: the dialplan goes on when the socket goes
        self.in_socket_app = True
        self.queue: deque[AppRun] = deque()
        self.current: AppRun | None = None
        self.app_ran = False
        self.start_timer: Timer | None = None
        self.socket_app_uuid = str(uuid4())  # the socket application's own Application-UUID
        self.last_app: tuple[str, str] | None = None

    def _park(self) -> None:
        if self.hung_up or self.parked:
            return
        self.parked = True
        self.emit("CHANNEL_PARK")
        self._schedule_start()

    def _complete_socket_app(self) -> None:
        if not self.in_socket_app:
            return
        self.in_socket_app = False
        self.emit(
            "CHANNEL_EXECUTE_COMPLETE",
            post=[
                ("Application", "socket"),
                ("Application-Data", self.sim.socket_data),
                ("Application-Response", "_none_"),
                ("Application-UUID", self.socket_app_uuid),
            ],
        )

    def _enqueue(self, run: AppRun, send: Callable[[str], None]) -> None:
        """Queue an application a target sent, to run when the park loop takes it (or nested, for ``break``)."""
        r = self.result
        app = run.name
        if self.hung_up:
            send("+OK")  # FreeSWITCH queues it on a dead channel; nothing runs (caller_hangup.txt)
            return
        if self.routed and not self.in_socket_app:
            r.violations.append(f"execute {app!r} after the call left the socket application (routed)")
            send("+OK")
            return
        ahead = self.queue[-1] if self.queue else self.current
        if ahead is not None and not ahead.event_lock and self.sim.mode == "async":
            ahead_name = ahead.name.lower()
            if app.lower() == "break" and ahead_name in BREAKABLE_APPS:
                # The app ahead parses queued events in its loop and so runs "break" nested,
                # at its next frame, instead of after itself.
                send("+OK")
                if ahead is self.current:
                    self._after(TICK, self._nested_break, run, ahead)
                else:
                    ahead.pending_break = run
                return
            if ahead_name in _EVENT_PARSING_APPS and app.lower() in _EVENT_PARSING_APPS:
                r.violations.append(
                    f"execute {app!r} queued behind {ahead.name!r} without event-lock: FreeSWITCH would run it "
                    f"nested inside {ahead.name!r} (the simulator runs it after)"
                )
        if self.sim.mode != "async":
            run.reply = send
            self.queue.append(run)
            # static mode: the reply (and reading the next command) waits for the app
            self.read_paused = self.parked
            self._schedule_start(immediate=True)
            return
        send("+OK")
        self.queue.append(run)
        self._schedule_start()

    def _schedule_start(self, immediate: bool = False) -> None:
        if self.current or not self.queue or self.hung_up or not self.parked:
            return
        if self.start_timer and not self.start_timer.cancelled:
            return
        self.start_timer = self._after(0.0 if immediate else TICK, self._start_next_app)

    def _start_next_app(self) -> None:
        self.start_timer = None
        if self.current or self.hung_up or not self.queue:
            return
        run = self.queue.popleft()
        name = run.name.lower()
        handler = getattr(self, f"_app_{name}", None)
        known = handler is not None or name in NOOP_APPS
        if not known or name in {a.lower() for a in self.caller.unknown_apps}:
            # switch_core_session_execute_application: "Invalid Application" -> the channel is
            # hung up, no CHANNEL_EXECUTE(_COMPLETE) for it (badapp.txt).
            self.result.violations.append(f"unknown application {run.name!r}")
            self._hangup("DESTINATION_OUT_OF_ORDER", by="freeswitch")
            self._sync_done(run)
            return
        self.current = run
        self.app_ran = True
        self.result.apps.append((run.name, run.arg))
        self.last_app = (run.name, run.arg)
        self._setvar("current_application_response", None)
        self._setvar("current_loop", "1")
        self._setvar("total_loops", str(run.loops))
        self._setvar("current_application", run.name)
        self._setvar("current_application_data", run.arg or None)
        post = [("Application", run.name)]
        if run.arg:
            post.append(("Application-Data", run.arg))
        post.append(("Application-UUID", run.event_uuid))
        self.emit("CHANNEL_EXECUTE", post=post)
        self._setvar("current_application_data", run.arg or None)
        self._setvar("current_application", run.name)
        if run.pending_break is not None:
            self._after(TICK, self._nested_break, run.pending_break, run)
        run.gen = handler(run) if handler is not None else iter(())
        self._step(run)

    def _step(self, run: AppRun) -> None:
        if self.current is not run or run.gen is None:
            return
        try:
            delay = next(run.gen)
        except StopIteration:
            if self.current is run:
                self._complete(run)
            return
        if self.current is not run:  # aborted (hang-up) while this step ran
            run.gen.close()
            return
        self._after(delay, self._step, run)

    def _complete(self, run: AppRun, aborted: bool = False) -> None:
        self.current = None
        response = self.vars.get("current_application_response")
        post = [("Application", run.name)]
        if run.arg:
            post.append(("Application-Data", run.arg))
        post += [("Application-Response", response if isinstance(response, str) else "_none_"),
                 ("Application-UUID", run.event_uuid)]
        self.emit("CHANNEL_EXECUTE_COMPLETE", post=post)
        self._setvar("current_loop", None)
        self._setvar("total_loops", None)
        self._sync_done(run)
        if run.after_complete and not aborted:
            run.after_complete()
        if self.socket_gone and not self.queue and not self.hung_up and not self.routed:
            self._decide_after_close()
            return
        # switch_ivr_parse_all_events runs every queued execute back to back: the next one starts
        # now, on the same media tick, not on the next (fs-1.10.12: eleven routing apps, one tick)
        self._schedule_start(immediate=True)

    def _sync_done(self, run: AppRun) -> None:
        if run.reply is not None:
            run.reply("+OK")
            run.reply = None
            self.read_paused = False

    def _break_current(self, flush: bool = False, stop: bool = True) -> None:
        """CF_BREAK: the running media application stops now (uuid_break, break).

        ``flush`` (``uuid_break <uuid> all``) also drops the queued sendmsg applications,
        as switch_core_session_flush_private_events() does.
        """
        if flush:
            for queued in self.queue:
                self._sync_done(queued)
            self.queue.clear()
        run = self.current
        if not stop or run is None or run.name.lower() not in BREAKABLE_APPS:
            return
        if run.on_break:
            run.on_break()
        self._complete(run)
        if run.gen is not None and not getattr(run.gen, "gi_running", False):
            run.gen.close()

    def _nested_break(self, run: AppRun, victim: AppRun) -> None:
        """``break`` sent while a media app runs: its loop executes it at once (nested)."""
        if self.hung_up or self.current is not victim:
            return  # the app ended first; FreeSWITCH would run break as an ordinary no-op
        post = [("Application", run.name)] + ([("Application-Data", run.arg)] if run.arg else [])
        self.result.apps.append((run.name, run.arg))
        self.emit("CHANNEL_EXECUTE", post=post + [("Application-UUID", run.event_uuid)])
        self.emit("CHANNEL_EXECUTE_COMPLETE",
                  post=post + [("Application-Response", "_none_"), ("Application-UUID", run.event_uuid)])
        self._break_current(flush=run.arg.strip().lower() == "all")

    def _abort_current(self) -> None:
        """The channel went down while an application ran: it completes now."""
        run = self.current
        if run is None:
            return
        if run.on_abort:
            run.on_abort()
        self._complete(run, aborted=True)
        if run.gen is not None and not getattr(run.gen, "gi_running", False):
            run.gen.close()

    # ------------------------------------------------------------------ the target's socket is gone

    def _after_socket_gone(self) -> None:
        """The target is gone (closed, exit, or FreeSWITCH closed): what happens to the call?"""
        if self.socket_gone:
            return
        self.socket_gone = True
        self.read_paused = False
        if self.finished:
            return
        if self.hung_up:
            self._end()
            return
        if not self.connected:
            self._stranded("the socket closed before connect; the channel stays parked in the socket application")
            return
        if self.current or self.queue:
            # socket_function() runs the queued applications (switch_ivr_parse_all_events)
            # after the park ends; decide once they are done (see _complete).
            if not self.parked:
                self._park()
            return
        if self.routed:
            return  # the call goes on elsewhere until it ends
        self._decide_after_close()

    def _decide_after_close(self) -> None:
        r = self.result
        if self.sim.mode != "async" or self.resume or self.app_ran:
            if r.outcome is None:
                r.outcome = "fallback"
            self._end()
        else:
            self._stranded("closed without any instruction: the ringing channel is left in the socket application")

    def _stranded(self, why: str) -> None:
        self.result.violations.append(why)
        if self.result.outcome is None:
            self.result.outcome = "stranded"
        self._end()
