"""One simulated channel: its state, its answer and hang-up, and the greenlet that drives it.

A :class:`Channel` is one call on the fake FreeSWITCH.  Its parts, one module each, are what
it plays: the target's connection (:mod:`.event_socket`), the API commands (:mod:`.api`), the
socket application's park loop (:mod:`.socket_app`), the dialplan applications
(:mod:`.applications`), the caller (:mod:`.caller`), its variables and event headers
(:mod:`.variables`) and its clock (:mod:`.clock`).  This module holds what is the channel's
own: the call state (ringing, early media, answered, hung up), the hang-up and its events in
FreeSWITCH's order, the billing variables, and the loop's start and end.

One greenlet per channel does everything: it reads the target's commands with a socket timeout
equal to the time of the next scheduled channel event, so there are no polling sleeps.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from fsguard_testing import wire
from fsguard_testing.fakeswitch.api import ApiCommands
from fsguard_testing.fakeswitch.applications import Applications
from fsguard_testing.fakeswitch.caller import Caller, CallerBehaviour
from fsguard_testing.fakeswitch.clock import ChannelClock
from fsguard_testing.fakeswitch.core import Q850, switch_true
from fsguard_testing.fakeswitch.event_socket import FIRST_PACKET_TIMEOUT, EventSocket
from fsguard_testing.fakeswitch.result import SimResult
from fsguard_testing.fakeswitch.socket_app import SocketApplication
from fsguard_testing.fakeswitch.variables import ChannelVariables

if TYPE_CHECKING:
    from fsguard_testing.fakeswitch import FakeFreeSWITCH


class Channel(EventSocket, ApiCommands, SocketApplication, Applications, CallerBehaviour, ChannelVariables,
              ChannelClock):
    """One simulated channel: its state, its socket, and the loop that drives both.

    Subclass it to change what FreeSWITCH does on a channel (e.g. write the file record_session
    names), and give a :class:`~fsguard_testing.fakeswitch.FakeFreeSWITCH` subclass a ``call``
    that runs it.
    """

    def __init__(self, sim: FakeFreeSWITCH, caller: Caller) -> None:
        self.sim = sim
        self.caller = caller
        self.result = SimResult(uuid=caller.uuid)
        self.rng = random.Random(sim._rng.random())
        self.finished = False
        self.uuid = caller.uuid
        self.state = "CS_EXECUTE"
        self.state_number = 4
        self.call_state = "RINGING"
        self.answer_state = "ringing"
        self.answered_t: float | None = None
        self.early_t: float | None = None
        self.progress_t: float | None = None
        self.hangup_t: float | None = None
        self.transfer_t: float | None = None
        self.bridged_t: float | None = None
        self.hung_up = False
        self.cause: str | None = None
        self.routed = False
        super().__init__()  # each part's own state (EventSocket, ..., ChannelClock: they read self.sim)

    def run(self) -> SimResult:
        """Dial the target and play the call to its end; what happened, even when the target misbehaved."""
        r = self.result
        r.started_at = time.monotonic()
        try:
            if not self._connect():
                r.outcome = "refused"
                return r
            self._setup_channel()
            if self.caller.hangup_after is not None:
                self._at(self.caller.hangup_after, self._caller_hangup)
            self.first_packet_timer = self._after_real(
                self.sim.target_wait(FIRST_PACKET_TIMEOUT), self._first_packet_timeout
            )
            self._after_real(self.sim.target_wait(self.sim.max_call_time), self._call_cap)
            self._loop()
        except Exception as exc:  # never let a simulator bug hang or kill the caller's test silently
            r.violations.append(f"simulator error: {exc!r}")
            if r.outcome is None:
                r.outcome = "protocol_error"
            raise
        finally:
            self._close_socket()
            self._finalize()
        return r

    def _end(self) -> None:
        self.finished = True

    def _call_cap(self) -> None:
        if self.finished:
            return
        self.result.violations.append(f"call did not end within {self.sim.max_call_time:g} channel seconds")
        if self.result.outcome is None:
            self.result.outcome = "protocol_error"
        self._fs_close(final=True)
        self._end()

    # ------------------------------------------------------------------ call state

    def _pre_answer(self) -> None:
        if self.answered_t is not None or self.early_t is not None or self.hung_up:
            return
        self.early_t = self.clock
        self.answer_state = "early"
        self._setvar("endpoint_disposition", "EARLY MEDIA")
        self.emit("CHANNEL_PROGRESS_MEDIA")
        self.call_state = "EARLY"

    def _answer(self) -> None:
        if self.answered_t is not None or self.hung_up:
            return
        self.answered_t = self.clock
        self.answer_state = "answered"
        self.emit("CHANNEL_ANSWER")
        # switch_channel_perform_mark_answered sets it after firing the event (fs-1.10.12 captures)
        self._setvar("endpoint_disposition", "ANSWER")
        self.call_state = "ACTIVE"

    def _route(self, route: str) -> None:
        self.routed = True
        self.result.route = route
        if self.result.outcome is None:
            self.result.outcome = "routed"

    # ------------------------------------------------------------------ hang-up

    def _hangup(self, cause: str, *, by: str) -> None:
        """The channel goes down: events in FreeSWITCH's order, then linger or close."""
        if self.hung_up:
            return
        r = self.result
        self.hung_up = True
        self.hangup_t = self.clock
        self.cause = cause
        r.hangup_cause = cause
        r.hangup_by = by
        if r.outcome is None:
            r.outcome = {"target": "hungup", "caller": "caller_hangup", "far_end": "routed"}.get(by, "protocol_error")
        self.answer_state = "hangup"
        self.state_number = 10
        for queued in self.queue:
            self._sync_done(queued)  # static mode: release a reply waiting on a queued app
        self.queue.clear()
        lingering = self.linger is not None and self.connected
        notice_sent = False
        place = self._linger_notice_place(by)
        if lingering and place == "before_hangup":
            self._linger_notice()
            notice_sent = True
        self.emit("CHANNEL_HANGUP")
        if lingering and not notice_sent and place == "after_hangup":
            self._linger_notice()
            notice_sent = True
        # Without linger a caller hang-up closes the socket at once (03c); a hang-up the
        # target asked for still flushes the final events first (09b, 12).
        if lingering or by == "target" or not self.connected:
            if self.current:
                self._abort_current()
            if self.in_socket_app and self.connected:
                if self.sim.mode == "async":
                    self.emit("CHANNEL_UNPARK")  # the socket application's park loop ends
                self._complete_socket_app()
            self.state = "CS_HANGUP"
            self.emit("CHANNEL_STATE", with_vars=False)
            self.state, self.state_number, self.call_state = "CS_REPORTING", 11, "HANGUP"
            self.emit("CHANNEL_STATE", with_vars=False)
            self._billing_variables()
            self.emit("CHANNEL_HANGUP_COMPLETE", pre=[("Hangup-Cause", cause)])
        else:
            self.current = None
            self.state, self.state_number, self.call_state = "CS_REPORTING", 11, "HANGUP"
            self._billing_variables()
        if self.sim.inbound_events is not None:
            self.sim.inbound_events.channel_ended(self)
        self._linger_or_close(lingering, notice_sent)

    def _billing_variables(self) -> None:
        end = self.hangup_t if self.hangup_t is not None else self.clock
        start = 0.0

        def stamp(t: float) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._us(t) / 1_000_000))

        def us(t: float | None) -> int:
            return 0 if t is None else self._us(t)

        answered = self.answered_t
        set_ = self._setvar
        if self.record_started is not None:
            # the media bug closes at the hang-up: 8 kHz, 16 bit, two channels with RECORD_STEREO
            ms = int((end - self.record_started) * 1000)
            channels = 2 if switch_true(str(self.vars.get("RECORD_STEREO", ""))) else 1
            set_("record_file_size", str(44 + ms * 8 * 2 * channels))
            set_("record_samples", str(ms * 8))
            set_("record_seconds", str(ms // 1000))
            set_("record_ms", str(ms))
            set_("record_completion_cause", "success-silence")  # the lab's callers are silent
        set_("hangup_cause", self.cause)
        set_("hangup_cause_q850", str(Q850.get(self.cause or "", 0)))
        set_("digits_dialed", self.collected_digits or "none")
        set_("start_stamp", stamp(start))
        set_("profile_start_stamp", stamp(start))
        if answered is not None:
            set_("answer_stamp", stamp(answered))
        if self.early_t is not None:
            set_("progress_media_stamp", stamp(self.early_t))
        set_("end_stamp", stamp(end))
        for name, t in (
            ("start", start), ("profile_start", start), ("answer", answered), ("bridge", self.bridged_t),
            ("last_hold", None), ("hold_accum", None), ("resurrect", None), ("progress", self.progress_t),
            ("progress_media", self.early_t), ("end", end),
        ):
            if name == "hold_accum":
                set_("hold_accum_seconds", "0")
                set_("hold_accum_usec", "0")
                set_("hold_accum_ms", "0")
                continue
            set_(f"{name}_epoch", str(us(t) // 1_000_000))
            set_(f"{name}_uepoch", str(us(t)))
        if self.last_app:
            set_("last_app", self.last_app[0])
            set_("last_arg", self.last_app[1] or None)
        set_("caller_id", f'"{self.profile.get("Caller-ID-Name", "")}" <{self.profile.get("Caller-ID-Number", "")}>')
        dur = end - start
        bill = end - answered if answered is not None else 0.0
        answer_in = answered - start if answered is not None else 0.0
        progress_in = self.progress_t - start if self.progress_t is not None else 0.0
        media_in = self.early_t - start if self.early_t is not None else 0.0
        # flow_billsec runs from the start like duration, but only for a call that was answered
        values = {"duration": dur, "billsec": bill, "progresssec": progress_in, "answersec": answer_in,
                  "waitsec": 0.0, "progress_mediasec": media_in, "flow_billsec": dur if answered is not None else 0.0}
        for name, secs in values.items():
            set_(name, str(int(secs)))
        for name, secs in values.items():
            base = "mduration" if name == "duration" else name[:-3] + "msec"
            set_(base, str(int(secs * 1000)))
        for name, secs in values.items():
            base = "uduration" if name == "duration" else name[:-3] + "usec"
            set_(base, str(int(secs * 1_000_000)))
        if not self.sofia:
            set_("is_loopback", "1")  # mod_loopback marks its legs at the end (fs-1.10.12 captures)
        else:
            # mod_sofia says how the SIP dialog ended (fs-1.10.12/hard_block_sip: send_refuse)
            ours = self.result.hangup_by != "caller"
            set_("sip_hangup_disposition", ("send_bye" if ours else "recv_bye") if answered is not None
                 else ("send_refuse" if ours else "recv_cancel"))

    def _finalize(self) -> None:
        r = self.result
        r.ended_at = time.monotonic()
        r.answered = self.answered_t is not None
        r.early_media = self.early_t is not None
        end = self.hangup_t if self.hangup_t is not None else self.clock
        # to the microsecond, as FreeSWITCH's epochs are: 1.5 s of simulated time must not read 1.4999999999999996
        r.billsec = round(max(0.0, end - self.answered_t), 6) if self.answered_t is not None else 0.0
        r.variables = {k: (v if isinstance(v, str) else wire.serialize_value(v)) for k, v in self.vars.items()}
        if r.outcome is None:
            r.outcome = "protocol_error"
