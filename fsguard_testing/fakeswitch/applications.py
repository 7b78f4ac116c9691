"""The dialplan applications a target runs on the channel with ``sendmsg`` execute.

Each application is a generator method ``_app_<name>`` on the channel: it acts (answers,
sets variables, fires events), and yields how many channel seconds pass before it goes on, so
a playback takes its time and a caller's key press can interrupt a prompt.  Media
applications pre-answer as switch_ivr_play_file() does and set the variables FreeSWITCH sets
(``playback_*``, ``read_result``, ``current_application_response``); routing applications
(transfer, bridge, callcenter...) take the call out of the target's hands.  Applications in
:data:`NOOP_APPS` run and do nothing; any other name is "Invalid Application".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from uuid import uuid4

from fsguard_testing.fakeswitch.core import TICK, atoi, cause_name, split_args, switch_true

#: SIP response codes of the ``respond`` application -> hang-up cause (sofia_glue_sip_cause_to_freeswitch).
SIP_CAUSES = {
    400: "NORMAL_TEMPORARY_FAILURE", 401: "CALL_REJECTED", 402: "CALL_REJECTED", 403: "CALL_REJECTED",
    404: "UNALLOCATED_NUMBER", 405: "SERVICE_UNAVAILABLE", 407: "CALL_REJECTED", 408: "RECOVERY_ON_TIMER_EXPIRE",
    410: "NUMBER_CHANGED", 480: "NO_USER_RESPONSE", 484: "INVALID_NUMBER_FORMAT", 486: "USER_BUSY",
    487: "ORIGINATOR_CANCEL", 488: "INCOMPATIBLE_DESTINATION", 500: "NORMAL_TEMPORARY_FAILURE",
    502: "NETWORK_OUT_OF_ORDER", 503: "NORMAL_TEMPORARY_FAILURE", 504: "RECOVERY_ON_TIMER_EXPIRE",
    600: "USER_BUSY", 603: "CALL_REJECTED", 604: "NO_ROUTE_DESTINATION", 606: "INCOMPATIBLE_DESTINATION",
}

#: Applications the simulator knows; anything else is "Invalid Application" (capture badapp.txt).
NOOP_APPS = frozenset(
    {
        "log", "info", "event", "ring_ready", "set_user", "hash", "limit", "db", "push", "unshift",
        "set_global", "set_profile_var", "privacy", "stop_record_session", "displace_session",
        "stop_displace_session", "bind_meta_app", "bind_digit_action", "clear_digit_action",
        "start_dtmf", "stop_dtmf", "start_dtmf_generate", "stop_dtmf_generate", "send_display",
        "redirect", "deflect", "wait_for_answer", "set_zombie_exec", "verbose_events", "socket",
        "break", "lua", "javascript", "python", "presence", "chat", "send_dtmf", "flush_dtmf",
        "detect_speech", "play_fsv", "record_fsv", "sched_broadcast", "sched_cancel", "sched_transfer",
        "set_audio_level", "soft_hold", "hold", "unhold", "mkdir", "rename", "system", "bgsystem",
        "jitterbuffer", "media_reset", "three_way", "strftime", "enable_heartbeat", "enable_keepalive",
        "unbind_meta_app", "capture", "cng_plc", "check_acl", "eval", "export_vars",
    }
)
#: Applications that stop on CF_BREAK (uuid_break, or the break application run from their loop).
BREAKABLE_APPS = frozenset(
    {"playback", "endless_playback", "say", "phrase", "speak", "sleep", "play_and_get_digits", "read", "echo"}
)
#: Applications that take the call out of the socket application: the target has decided.
ROUTING_APPS = frozenset({"transfer", "callcenter", "bridge", "fifo", "conference", "voicemail", "valet_park"})
#: ``say`` methods that read a number out digit by digit: the caller hears a code it can key back.
_SAY_METHODS_WITH_DIGITS = ("iterated", "pronounced")


@dataclass
class AppRun:
    """An application queued by sendmsg or running on the channel."""

    name: str
    arg: str
    event_uuid: str
    loops: int = 1
    gen: Iterator[float] | None = None
    on_abort: Callable[[], None] | None = None  # sets the variables of an interrupted run
    on_break: Callable[[], None] | None = None  # the same for a run stopped by uuid_break / break
    after_complete: Callable[[], None] | None = None  # e.g. transfer: the channel leaves the socket app
    reply: Callable[[str], None] | None = None  # static mode: the sendmsg reply waits for the app
    event_lock: bool = False  # "event-lock: true": no queued event runs nested inside this app
    pending_break: AppRun | None = None  # a "break" queued behind it: runs at its first frame


class Applications:
    """The applications, and the media they play (a part of :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def __init__(self) -> None:
        super().__init__()
        self._last_digits = ""  # the last read attempt's digits and status (see _collect)
        self._last_status = "failure"
        self.record_started: float | None = None  # record_session's media bug, until the hang-up

    # ------------------------------------------------------------------ media

    def _files(self, arg: str) -> list[str]:
        arg = arg.strip()
        while arg.startswith("{") and "}" in arg:
            arg = arg[arg.index("}") + 1 :]
        if arg.startswith("file_string://"):
            return [f for f in arg[len("file_string://") :].split("!") if f]
        return [arg] if arg else []

    def _duration(self, item: str) -> float:
        for table in (self.caller.playback_durations, self.sim.playback_durations):
            if item in table:
                return table[item]
        if item.startswith("silence_stream://"):
            ms = atoi(item[len("silence_stream://") :])
            return ms / 1000 if ms > 0 else self.sim.playback_duration
        m = re.match(r"tone_stream://%\((\d+),(\d+)", item)
        if m:
            return (int(m.group(1)) + int(m.group(2))) / 1000
        return self.sim.playback_duration

    def _play(self, items: list[str]) -> Iterator[float]:
        """Play files in order; the caller hears each as it starts."""
        total = 0.0
        for item in items:
            if self.hung_up:
                return
            self._hear(item)
            d = self._duration(item)
            total += d
            yield d
        ms = int(total * 1000)
        self._setvar("playback_last_offset_pos", str(ms * 8))
        self._setvar("playback_seconds", str(ms // 1000))
        self._setvar("playback_ms", str(ms))
        self._setvar("playback_samples", str(ms * 8))

    def _collect(
        self, prompt: list[str], min_d: int, max_d: int, timeout: float, terminators: str, digit_timeout: float
    ) -> Iterator[float]:
        """One read attempt: play the prompt (a key press interrupts it) and collect keys.

        ``timeout`` runs from the end of the prompt to the first key, ``digit_timeout``
        between keys.  Sets ``self._last_digits`` and ``self._last_status``: "success",
        "timeout" (no key) or "failure" (too few keys).
        """
        start = self.clock
        keys = self._caller_keys()
        presses = [(start + self.caller.digit_delay + i * self.caller.inter_digit, k) for i, k in enumerate(keys)]
        t = start
        for item in prompt:
            if presses and presses[0][0] <= t:
                break  # barge-in: the rest of the prompt is not played
            self._hear(item)
            t += self._duration(item)
        prompt_end = min(t, presses[0][0]) if presses else t
        got = ""
        complete = False
        deadline = prompt_end + timeout
        self._last_digits, self._last_status = "", "failure"
        for when, key in presses:
            if when > deadline:
                break
            if when > self.clock:
                yield when - self.clock
            if self.hung_up:
                return
            self._dtmf(key)
            if key in terminators:
                complete = True
                break
            got += key
            if len(got) >= max_d:
                complete = True
                break
            deadline = max(when, prompt_end) + digit_timeout
        if not complete and deadline > self.clock:
            yield deadline - self.clock  # the caller stopped keying: wait out the timeout
            if self.hung_up:
                return
        self._last_digits = got
        if len(got) >= min_d and (got or min_d == 0):
            self._last_status = "success"
        else:
            self._last_status = "timeout" if not got else "failure"

    # ------------------------------------------------------------------ answering

    def _app_answer(self, run: AppRun) -> Iterator[float]:
        self._answer()
        return
        yield 0.0

    def _app_pre_answer(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()
        return
        yield 0.0

    def _app_ring_ready(self, run: AppRun) -> Iterator[float]:
        if self.progress_t is None and self.answered_t is None:
            self.progress_t = self.clock
            self.emit("CHANNEL_PROGRESS")
        return
        yield 0.0

    def _app_respond(self, run: AppRun) -> Iterator[float]:
        code = atoi(run.arg)
        if code == 183:
            self._pre_answer()
        elif code in (180, 181, 182):
            if self.progress_t is None:
                self.progress_t = self.clock
                self.emit("CHANNEL_PROGRESS")
        elif code == 200:
            self._answer()
        elif code >= 300:
            self._hangup(SIP_CAUSES.get(code, "NORMAL_UNSPECIFIED"), by="target")
        return
        yield 0.0

    # ------------------------------------------------------------------ prompts and digits

    def _app_playback(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()  # switch_ivr_play_file() pre-answers (verified in source)
        run.on_abort = lambda: self._setvar("current_application_response", "PLAYBACK ERROR")
        run.on_break = lambda: self._setvar("current_application_response", "FILE PLAYED")
        yield from self._play(self._files(run.arg))
        self._setvar("current_application_response", "FILE PLAYED")

    def _app_endless_playback(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()
        files = self._files(run.arg)
        while files and not self.hung_up:
            yield from self._play(files)

    def _app_phrase(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()
        yield from self._play(["phrase:" + run.arg])

    def _app_speak(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()
        yield from self._play(["speak:" + run.arg])

    def _app_say(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()
        item = "say:" + run.arg
        self._hear(item)
        parts = run.arg.split(" ", 3)
        if len(parts) == 4:
            method, text = parts[2].lower(), parts[3]
            first, _, rest = text.partition(" ")
            if first.lower() in ("masculine", "feminine", "neuter") and rest:
                text = rest
            digits = re.sub(r"\D", "", text)
            if method in _SAY_METHODS_WITH_DIGITS and digits:
                self.heard_code = digits
        self.digit_run_open = False
        words = len(re.sub(r"\D", "", run.arg)) or len(run.arg.split())
        known = item in self.caller.playback_durations or item in self.sim.playback_durations
        yield self._duration(item) if known else max(0.2, 0.3 * words)

    def _app_play_and_get_digits(self, run: AppRun) -> Iterator[float]:
        args = split_args(run.arg)
        if len(args) < 9:
            self.result.violations.append(f"play_and_get_digits needs 9+ arguments, got {run.arg!r}")
            return
        min_d, max_d, tries = atoi(args[0]), atoi(args[1]), max(1, atoi(args[2]))
        timeout = atoi(args[3]) / 1000
        terminators = args[4] if args[4] not in ("none", "''") else ""
        prompt, invalid, var, regex = args[5], args[6], args[7], args[8]
        digit_timeout = atoi(args[9]) / 1000 if len(args) > 9 and atoi(args[9]) > 0 else timeout
        try:
            pattern = re.compile(regex) if regex else None
        except re.error:
            self.result.violations.append(f"play_and_get_digits regexp does not compile: {regex!r}")
            pattern = None
        self._pre_answer()

        def aborted() -> None:
            self._setvar("read_result", "failure")

        run.on_abort = run.on_break = aborted
        status = "failure"
        for attempt in range(tries):
            self._setvar(var, None)
            yield from self._collect(self._files(prompt), min_d, max_d, timeout, terminators, digit_timeout)
            if self.hung_up:
                return
            got, status = self._last_digits, self._last_status
            if status == "success" and (pattern is None or pattern.search(got)):
                self._setvar("read_result", "success")
                self._setvar(var, got)
                return
            if status == "success":
                status = "failure"
            self._setvar("read_result", status)
            if invalid and invalid not in ("''", "silence_stream://0"):
                yield from self._play(self._files(invalid))
            elif attempt + 1 < tries:
                yield TICK
        self._setvar("read_result", status)

    def _app_read(self, run: AppRun) -> Iterator[float]:
        args = split_args(run.arg)
        if len(args) < 6:
            self.result.violations.append(f"read needs 6+ arguments, got {run.arg!r}")
            return
        min_d, max_d, prompt, var = atoi(args[0]), atoi(args[1]), args[2], args[3]
        timeout = atoi(args[4]) / 1000
        terminators = args[5]
        digit_timeout = atoi(args[6]) / 1000 if len(args) > 6 and atoi(args[6]) > 0 else timeout
        self._pre_answer()
        run.on_abort = run.on_break = lambda: self._setvar("read_result", "failure")
        yield from self._collect(self._files(prompt), min_d, max_d, timeout, terminators, digit_timeout)
        if self.hung_up:
            return
        self._setvar("read_result", self._last_status)
        self._setvar(var, self._last_digits or None)

    def _app_sleep(self, run: AppRun) -> Iterator[float]:
        yield atoi(run.arg) / 1000

    # ------------------------------------------------------------------ variables

    def _app_set(self, run: AppRun) -> Iterator[float]:
        name, sep, value = run.arg.partition("=")
        if sep and name:
            self._setvar(name.strip(), value)
        return
        yield 0.0

    def _app_unset(self, run: AppRun) -> Iterator[float]:
        self._setvar(run.arg.strip(), None)
        return
        yield 0.0

    def _app_multiset(self, run: AppRun) -> Iterator[float]:
        text, delim = run.arg, " "
        if text.startswith("^^") and len(text) > 2:
            delim, text = text[2], text[3:]
        values = {}
        for item in text.split(delim):
            name, sep, value = item.partition("=")
            if sep and name:
                self._setvar(name.strip(), value)
                values[name.strip()] = value
        # the variables named in export_vars go to a bridged leg, as ``export`` sends them
        listed = values.get("export_vars")
        for name in (listed.split(",") if listed else []):
            if name in values:
                self.result.exported[name] = values[name]
        return
        yield 0.0

    def _app_export(self, run: AppRun) -> Iterator[float]:
        text = run.arg
        local = True
        if text.startswith("nolocal:"):
            local, text = False, text[len("nolocal:") :]
        name, sep, value = text.partition("=")
        if sep and name:
            name = name.strip()
            self.result.exported[name] = value  # what the target asked for
            if not value:
                # switch_channel_export_variable with no value: the variable is unset and not
                # added to export_vars (fs-1.10.12: ``export fsguard_customer_id=``)
                self._setvar(name, None)
                return
            if local:
                self._setvar(name, value)
            # appended each time, repeats included (fs-1.10.12: fsguard_risk twice)
            current = self.vars.get("export_vars")
            self._setvar("export_vars", f"{current},{name}" if isinstance(current, str) and current else name)
        return
        yield 0.0

    # ------------------------------------------------------------------ recording, hang-up, waiting

    def _app_record_session(self, run: AppRun) -> Iterator[float]:
        self._pre_answer()  # a media bug needs media
        path = run.arg.strip()
        self.result.recordings.append(path)
        if self.record_started is None:
            self.record_started = self.clock
        self.emit("RECORD_START", post=[("Record-File-Path", path)])
        return
        yield 0.0

    def _app_sched_hangup(self, run: AppRun) -> Iterator[float]:
        args = run.arg.split()
        if args:
            secs = atoi(args[0].lstrip("+"))
            cause = cause_name(args[1]) if len(args) > 1 else "ALLOTTED_TIMEOUT"
            self._after(secs, lambda: self._hangup(cause or "ALLOTTED_TIMEOUT", by="target"))
        return
        yield 0.0

    def _app_hangup(self, run: AppRun) -> Iterator[float]:
        text = run.arg.strip() or "NORMAL_CLEARING"
        cause = cause_name(text)
        if cause is None:
            self.result.violations.append(f"unknown hangup cause {text!r}")
            cause = "NORMAL_CLEARING"
        self._hangup(cause, by="target")
        return
        yield 0.0

    def _app_park(self, run: AppRun) -> Iterator[float]:
        while not self.hung_up:
            yield 3600.0

    def _app_echo(self, run: AppRun) -> Iterator[float]:
        self._answer()
        while not self.hung_up:
            yield 3600.0

    # ------------------------------------------------------------------ routing

    def _app_transfer(self, run: AppRun) -> Iterator[float]:
        args = run.arg.split()
        while args and args[0].startswith("-"):
            args.pop(0)
        ext = args[0] if args else ""
        dp = args[1] if len(args) > 1 else "XML"
        ctx = args[2] if len(args) > 2 else self.profile.get("Context", self.caller.context)
        self._route(f"transfer {ext} {dp} {ctx}")
        self._transfer_profile(ext, dp, ctx)
        run.after_complete = self._after_transfer
        return
        yield 0.0

    def _transfer_profile(self, ext: str, dialplan: str, context: str) -> None:
        """switch_ivr_session_transfer: a new caller profile and the transfer variables, before the
        transfer's own CHANNEL_EXECUTE_COMPLETE (shared/transfer.txt, fs-1.10.12/routed.all-events.txt)."""
        self.transfer_t = self.clock
        p = self.profile
        source = f"{int(self._us() // 1_000_000)}:{uuid4()}:bl_xfer:{ext}/{context}/{dialplan}"
        p["RDNIS"] = p.get("RDNIS") or p["Destination-Number"]
        p["Transfer-Source"] = source
        p["Dialplan"] = dialplan
        p["Profile-Index"] = str(int(p.get("Profile-Index", "1")) + 1)
        p["Destination-Number"] = ext
        p["Context"] = context
        forwards = atoi(str(self.vars.get("max_forwards", ""))) - 1 if self.vars.get("max_forwards") else 70
        self._setvar("max_forwards", str(forwards))
        history = self.vars.get("transfer_history")
        self._setvar("transfer_history", [*([history] if isinstance(history, str) else history or []), source]
                     if history else source)
        self._setvar("transfer_source", source)
        self.state_number = 2  # the state machine goes back to CS_ROUTING

    def _after_transfer(self) -> None:
        """The channel leaves the socket application; events keep coming (transfer.txt)."""
        self.emit("CHANNEL_UNPARK")
        self._complete_socket_app()
        # FreeSWITCH reports the call state RINGING in this CHANNEL_STATE (transfer.txt, fs-1.10.12)
        call_state, self.call_state = self.call_state, "RINGING"
        self.state, self.state_number = "CS_ROUTING", 2
        self.emit("CHANNEL_STATE", with_vars=False)
        self.call_state = call_state
        self.state, self.state_number = "CS_EXECUTE", 4
        self.emit("CHANNEL_STATE", with_vars=False)
        self.queue.clear()
        self._answer()  # the queue extension answers the caller
        self._after(self.caller.talk_time, self._talk_over, "caller")

    def _execute_on(self, prefix: str) -> None:
        """switch_channel_execute_on: every variable whose name begins with ``prefix`` is an
        ``app arg`` run now, in its own CHANNEL_EXECUTE / _COMPLETE pair (a bridge runs
        ``execute_on_pre_bridge*`` as it starts: switch_ivr_bridge.c)."""
        for name, value in list(self.vars.items()):
            if not name.lower().startswith(prefix) or not isinstance(value, str) or not value.strip():
                continue
            app, _, arg = value.strip().partition(" ")
            run = AppRun(app, arg, str(uuid4()))
            post = [("Application", app)] + ([("Application-Data", arg)] if arg else [])
            self.result.apps.append((app, arg))
            self.emit("CHANNEL_EXECUTE", post=post + [("Application-UUID", run.event_uuid)])
            handler = getattr(self, f"_app_{app.lower()}", None)
            if handler is not None:
                for _ in handler(run):   # the applications run this way start something and return
                    pass
            self.emit("CHANNEL_EXECUTE_COMPLETE",
                      post=post + [("Application-Response", "_none_"), ("Application-UUID", run.event_uuid)])

    def _app_callcenter(self, run: AppRun) -> Iterator[float]:
        self._route(f"{run.name} {run.arg.strip()}")
        if run.name.lower() == "callcenter":
            self._setvar("cc_queue", run.arg.strip())
        self._answer()  # mod_callcenter (fifo, conference...) answers the caller
        end = self.clock + self.caller.talk_time
        while not self.hung_up and self.clock < end:
            yield end - self.clock
        if not self.hung_up:
            self._hangup("NORMAL_CLEARING", by="caller")

    _app_fifo = _app_callcenter

    _app_conference = _app_callcenter

    _app_voicemail = _app_callcenter

    _app_valet_park = _app_callcenter

    def _app_bridge(self, run: AppRun) -> Iterator[float]:
        c = self.caller
        self._route(f"bridge {run.arg.strip()}")
        yield max(0.0, c.ring_time)
        if self.hung_up:
            return
        if not c.answered_by_far_end:
            cause = cause_name(c.far_end_cause) or "NO_ANSWER"
            if cause == "NORMAL_CLEARING":
                cause = "NO_ANSWER"
            self._setvar("originate_disposition", cause)
            self._setvar("originate_failed_cause", cause)
            self._setvar("DIALSTATUS", {"USER_BUSY": "BUSY", "NO_ANSWER": "NOANSWER"}.get(cause, cause))
            if switch_true(str(self.vars.get("continue_on_fail", ""))):
                return
            self._hangup(cause, by="far_end")
            return
        other = str(uuid4())
        self._answer()
        self.bridged_t = self.clock
        self._setvar("bridge_to", other)
        self._setvar("last_bridge_to", other)
        self.emit("CHANNEL_BRIDGE", post=[("Bridge-A-Unique-ID", self.uuid), ("Bridge-B-Unique-ID", other)])
        self._execute_on("execute_on_pre_bridge")
        yield max(0.0, c.talk_time)
        if self.hung_up:
            return
        cause = cause_name(c.far_end_cause) or "NORMAL_CLEARING"
        self._setvar("last_bridge_hangup_cause", cause)
        self._setvar("bridge_hangup_cause", cause)
        self.emit("CHANNEL_UNBRIDGE", post=[("Bridge-A-Unique-ID", self.uuid), ("Bridge-B-Unique-ID", other)])
        self._hangup(cause, by="far_end")
