"""The API commands a target sends with ``api`` / ``bgapi`` (mod_commands): status, uuid_* on this channel.

Only the channel's own uuid is known (any other: ``-ERR No such channel!``).  ``uuid_getvar``
answers the raw value as ``getvar`` does; ``uuid_setvar`` and ``uuid_setvar_multi`` answer
``+OK`` for a channel that has not begun to hang up (FreeSWITCH's session lock refuses one that
has: ``-ERR No such channel!``); ``uuid_break`` stops the running media application on
its next frame, after the reply has gone out; ``uuid_transfer`` takes the call out of the
socket application as the ``transfer`` application does.
"""

from __future__ import annotations

from fsguard_testing.fakeswitch.core import TICK, cause_name
from fsguard_testing.fakeswitch.variables import is_caller_controlled


class ApiCommands:
    """``api`` and ``bgapi`` (a part of :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def _api(self, text: str) -> str:
        cmd, _, arg = text.partition(" ")
        lc = cmd.lower()
        args = arg.split()
        if lc == "status":
            return (
                "UP 0 years, 0 days, 0 hours, 1 minute, 0 seconds, 0 milliseconds, 0 microseconds\n"
                "FreeSWITCH (Version 1.10.12-release  64bit) is ready\n"
                f"{self.sim.calls_started} session(s) since startup\n"
                f"{self.sim.active} session(s) - peak {self.sim.peak}, last 5min {self.sim.peak} \n"
                "0 session(s) per Sec out of max 1000, peak 2, last 5min 2 \n"
                "4000 session(s) max\nmin idle cpu 0.00/99.00\nCurrent Stack Size/Max 240K/8192K\n"
            )
        if lc == "hostname":
            return self.sim.hostname
        if lc in ("eval", "expand", "echo"):
            return arg
        if lc.startswith("uuid_"):
            if not args or args[0] != self.uuid:
                return "-ERR No such channel!\n"
            if lc == "uuid_exists":
                return "false" if self.hung_up else "true"
            if self.hung_up:
                return "-ERR No such channel!\n"
            if lc == "uuid_getvar" and len(args) > 1:
                value = self.getvar(args[1])
                if is_caller_controlled(args[1], value):
                    self.result.violations.append(f"uuid_getvar of caller-controlled variable {args[1]!r} (reply is raw)")
                return value or "_undef_"
            if lc == "uuid_setvar" and len(args) > 1:
                self._setvar(args[1], arg.split(" ", 2)[2] if len(args) > 2 else None)
                return "+OK\n"
            if lc == "uuid_setvar_multi" and len(args) > 1:
                # name=value;name=value... (mod_commands splits on ';', then on the first '=')
                names = 0
                for item in arg.split(" ", 1)[1].split(";"):
                    name, _, value = item.partition("=")
                    if name:
                        self._setvar(name, value)
                        names += 1
                if names:
                    return "+OK\n"
                return "-USAGE: <uuid> <var>=<value>;<var>=<value>...\n"
            if lc == "uuid_kill":
                self._decided()
                cause = cause_name(args[1]) if len(args) > 1 else None
                self._hangup(cause or "NORMAL_CLEARING", by="target")
                return "+OK"
            if lc == "uuid_transfer" and len(args) > 1:
                self._decided()
                dp = args[2] if len(args) > 2 else "XML"
                ctx = args[3] if len(args) > 3 else self.profile.get("Context", "default")
                self._route(f"transfer {args[1]} {dp} {ctx}")
                self._transfer_profile(args[1], dp, ctx)
                if self.current:
                    self._abort_current()
                self._after_transfer()
                return "+OK"
            if lc == "uuid_record" and len(args) > 2:
                if args[1] == "start":
                    self.result.recordings.append(args[2])
                return "+OK Success"
            if lc == "uuid_break":
                # The queued events are flushed at once; the running app sees CF_BREAK on
                # its next frame, after this reply has gone out.
                if len(args) > 1 and args[1].lower() == "all":
                    self._break_current(flush=True, stop=False)
                self._after(TICK, self._break_current)
                return "+OK"
            if lc == "uuid_broadcast" and len(args) > 1:
                self._hear(args[1])
                return "+OK Message sent successfully"
            if lc == "uuid_dump":
                return "\n".join(f"{k}: {v}" for k, v in self.vars.items())
            if lc in ("uuid_answer", "uuid_pre_answer"):
                (self._answer if lc == "uuid_answer" else self._pre_answer)()
                return "+OK"
        return f"-ERR {cmd} Command not found!\n"
