"""The call as a stage sees it: who is calling whom, and what can be done to the channel.

A stage reads like the call flow::

    call.pre_answer()
    played = call.play(prompt)          # Played(ok, reason)
    keyed = call.collect(max_digits=2, timeout=4.0).digits

Every action raises CallGone once the caller has hung up, so a stage never has to check; the
pipeline records the hang-up as the caller abandoning during that stage. The facts a stage
decides on that come from outside the call (lists, customers, the time) it asks of
``call.inputs``, the input port (fsguard/call/inputs.py), live or replayed.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fsguard.call.clock import ChannelClock
from fsguard.call.inputs import LiveInputs
from fsguard.call.instructions import Hangup, Instruction
from fsguard.call.results import Collected, Played
from fsguard.call.verdict import ChallengeRequest
from fsguard.esl.session import CallGone, Headers, OutboundSession
from fsguard.rules import numbers

__all__ = ["Call", "CallGone", "IdentityTrust", "direction_of"]

#: seconds allowed on top of an application's own duration before fsguard gives up on it
APP_MARGIN = 5.0


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "1", "on")


def direction_of(channel: Mapping[str, str], outbound_contexts: Iterable[str] = ("default",)) -> str:
    """``"outbound"`` (an agent dialling out) or ``"inbound"``, from the channel data alone.

    The dialplan's ``fsguard_direction`` variable decides when it says ``inbound`` or
    ``outbound``; otherwise a call from one of ``node.outbound_contexts`` is outbound. This is the
    one rule: :class:`Call` uses it, and so do the paths that answer FreeSWITCH before (or
    without) building a Call (over capacity, shutdown).
    """
    direction = channel.get("variable_fsguard_direction", "").lower()
    if direction in ("inbound", "outbound"):
        return direction
    return "outbound" if channel.get("Caller-Context", "") in tuple(outbound_contexts) else "inbound"


#: channel variables carrying a network-asserted identity, most trusted first
ASSERTED_IDENTITY = ("sip_P-Asserted-Identity", "sip_h_P-Asserted-Identity", "sip_Remote-Party-ID")


class IdentityTrust:
    """Which peers may assert a caller's identity (screening.trusted_networks / trusted_gateways).

    P-Asserted-Identity is a promise between networks that trust each other (RFC 3325): believed
    from the carriers and SBCs an operator names, as Kamailio and carriers do, never from anyone
    who can send an INVITE."""

    def __init__(self, networks: Iterable[str] = (), gateways: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)
        self.gateways = frozenset(g.strip() for g in gateways if g.strip())

    def trusts(self, variables: Mapping[str, str]) -> bool:
        gateway = variables.get("sip_gateway_name", "")
        if gateway and gateway in self.gateways:
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(variables.get("sip_network_ip", "").strip())
        except ValueError:
            return False
        return any(address in network for network in self.networks)


#: applications that only start something (a media bug) and read no variable but their own
#: ``record_*`` / ``RECORD_*`` ones: variables queued after them may be set before them
HOISTABLE = frozenset({"record_session"})
#: the variable that starts a recording at the bridge: FreeSWITCH runs every variable whose name
#: begins with ``execute_on_pre_bridge`` when the leg is bridged (so a dialplan's own is kept)
RECORD_AT_BRIDGE = "execute_on_pre_bridge_fsguard_recording"
#: delimiters ``multiset`` can split on (``^^<c>`` picks one), tried in order
MULTISET_DELIMITERS = "|~`^;#"


def fold_variables(apps: list[tuple[str, str]], export_vars: list[str]) -> list[tuple[str, str]]:
    """The same instructions with each run of ``set`` / ``export`` folded into one ``multiset``.

    In FreeSWITCH every application is a queued message, a CHANNEL_EXECUTE / EXECUTE_COMPLETE
    pair (each carrying every channel variable) and log lines: a routed call's dozen variables
    cost more of FreeSWITCH's CPU than the routing itself. ``export NAME=VALUE`` is ``set`` plus
    NAME appended to ``export_vars`` (what FreeSWITCH copies to a bridged leg), so an export folds
    into the same ``multiset`` with ``export_vars`` rewritten; ``export_vars`` (the channel's, kept
    by the caller across flushes) is updated in place. Order is kept: variables are set before
    the application that follows them (``record_session`` reads RECORD_STEREO), except that the
    variables queued after a ``record_session`` (routing's, after recording's) join the fold before
    it unless they are recording variables. ``export nolocal:...`` (for a bridged leg only) and a
    run no delimiter can split are left as they are.
    """
    out: list[tuple[str, str]] = []
    run: dict[str, str] = {}
    originals: list[tuple[str, str]] = []

    def close_run() -> None:
        if not run:
            return
        items = [f"{k}={v}" for k, v in run.items()]
        if len(originals) == 1:
            out.append(originals[0])  # one application either way: keep it as the stage wrote it
        else:
            delimiter = next((d for d in MULTISET_DELIMITERS if not any(d in item for item in items)), None)
            if delimiter is None:
                out.extend(("set", item) for item in items)
            else:
                out.append(("multiset", f"^^{delimiter}" + delimiter.join(items)))
        run.clear()
        originals.clear()

    deferred: list[tuple[str, str]] = []
    for app, arg in apps:
        name, sep, value = arg.partition("=")
        if app in ("set", "export") and sep and name and not name.startswith("nolocal:"):
            if deferred and name.lower().startswith("record_"):
                close_run()  # a variable the started recording reads: keep it after the recording
                out.extend(deferred)
                deferred.clear()
            run.pop(name, None)  # a later value wins, in its later place
            run[name] = value
            originals.append((app, arg))
            if app == "export" and name not in export_vars:
                export_vars.append(name)
                run.pop("export_vars", None)
                run["export_vars"] = ",".join(export_vars)
            continue
        if app in HOISTABLE and run:
            deferred.append((app, arg))  # the variables after it may go before it, in the same fold
            continue
        close_run()
        out.extend(deferred)
        deferred.clear()
        out.append((app, arg))
    close_run()
    out.extend(deferred)
    return out


class Call:
    """One channel: its facts (read once from the ``connect`` reply) and its actions."""

    def __init__(self, session: OutboundSession, *, default_region: str = "US",
                 outbound_contexts: tuple[str, ...] | list[str] = ("default",), log: Any = None,
                 trust: IdentityTrust | None = None, inputs: LiveInputs | None = None) -> None:
        self.session = session
        self.log = log
        ch = session.channel
        self.channel = ch
        self.uuid: str = ch.get("Unique-ID", "")
        self.caller_name: str = ch.get("Caller-Caller-ID-Name", "")
        #: the number the caller id shows (what a person would see); may be spoofed or withheld
        self.presented_number: str = ch.get("Caller-Caller-ID-Number", "")
        self.dnis: str = ch.get("Caller-Destination-Number", "")
        self.context: str = ch.get("Caller-Context", "")
        self.variables: dict[str, str] = {k[9:]: v for k, v in ch.items() if k.startswith("variable_")}
        self.sip_headers: dict[str, str] = {k[6:]: v for k, v in self.variables.items() if k.startswith("sip_h_")}
        self.privacy: bool = (_flag(ch.get("Caller-Privacy-Hide-Number"))
                              or "number" in self.variables.get("privacy", "").lower()
                              or "id" in self.variables.get("sip_Privacy", "").lower().split(";"))
        self.privacy_name: bool = _flag(ch.get("Caller-Privacy-Hide-Name"))
        self.region = default_region
        #: the number a network asserts (P-Asserted-Identity, Remote-Party-ID), '' when none does
        self.asserted_number: str = self._asserted_number()
        #: whether that assertion comes from a trusted peer (see IdentityTrust)
        self.identity_trusted: bool = bool(self.asserted_number) and trust is not None and trust.trusts(self.variables)
        asserted = numbers.parse(self.asserted_number, default_region) if self.asserted_number else None
        self.asserted_e164: str | None = asserted.e164 if asserted is not None else None
        #: the network's number for the caller: a trusted peer's asserted identity, else the ANI,
        #: else the caller id
        self.network_number: str = self._network_number()
        self._read_numbers()
        self.direction: str = direction_of(ch, outbound_contexts)
        self._begin(inputs or LiveInputs())

    def _read_numbers(self) -> None:
        """The caller's, the caller id's and the dialled number as numbers (``self.region`` for national ones)."""
        number = numbers.parse(self.network_number, self.region)
        self.number = number
        #: the caller in E.164, or None when there is no usable number
        self.ani: str | None = number.e164
        self.anonymous: bool = number.anonymous
        self.ani_valid: bool = number.valid
        self.presented_e164: str | None = numbers.parse(self.presented_number, self.region).e164
        dialled = numbers.parse(self.dnis, self.region)
        self.dnis_e164: str | None = dialled.e164 if dialled.valid else None

    def _begin(self, inputs: LiveInputs) -> None:
        """What the stages learn, for the stages after them and for the agent's screen."""
        #: the input port: the facts from outside the call, live or replayed
        self.inputs = inputs
        self.risk: int = 0
        self.risk_reasons: list[str] = []
        self.verified: bool | None = None
        #: why stages asked that the caller prove they are a person (the verification stage reads them)
        self.challenges: list[ChallengeRequest] = []
        self.facts: dict[str, Any] = {}
        #: what the stages' ``after_call`` hooks concluded, by stage (``recording: complete``), for
        #: the call's one log line: a call leaves one line, not one per stage
        self.end_notes: dict[str, str] = {}
        self.exports: dict[str, str] = {}
        #: the final instruction given to FreeSWITCH, e.g. transfer default XML queues
        self.final_action: Instruction | None = None
        self.answered_by_us: bool = False
        #: when fsguard's answer completed (monotonic), for the clock's floor
        self._answered_at: float | None = None
        self._clock: ChannelClock | None = None
        #: variables and applications queued for the next write to FreeSWITCH
        self._pending: list[tuple[str, str]] = []
        #: variables FreeSWITCH's listener sets once the route is queued (service/ends.py)
        self.route_variables: dict[str, str] = {}
        #: the channel's export_vars as fsguard has left it (the dialplan's, then fsguard's exports)
        self._export_vars: list[str] = [n for n in self.variables.get("export_vars", "").split(",") if n]

    def _asserted_number(self) -> str:
        v = self.variables
        for key in ASSERTED_IDENTITY:
            if v.get(key):
                return numbers.number_from_uri(v[key])
        return ""

    def _network_number(self) -> str:
        if self.asserted_number and self.identity_trusted:
            return self.asserted_number
        ani = self.channel.get("Caller-ANI", "")
        if ani and not numbers.is_anonymous(ani):
            return ani
        return self.presented_number

    # ------------------------------------------------------------- facts

    @property
    def gone(self) -> bool:
        return self.session.hungup

    @property
    def answered(self) -> bool:
        """Whether the leg is answered (by fsguard, or by the dialplan before the socket)."""
        return self.answered_by_us or self.session.answered

    @property
    def dtmf(self) -> list[str]:
        """Digits the caller pressed so far, as DTMF events reported them."""
        return self.session.dtmf

    @property
    def clock(self) -> ChannelClock:
        """The channel's clock, FreeSWITCH's time (started at the first use: it follows events from then on)."""
        if self._clock is None:
            self._clock = ChannelClock(self.session, lambda: self._answered_at)
        return self._clock

    def var(self, name: str, default: str = "") -> str:
        """A channel variable as it was when the call reached fsguard."""
        return self.variables.get(name, default)

    def add_risk(self, points: int, reason: str) -> None:
        self.risk += points
        self.risk_reasons.append(reason)

    def describe(self) -> dict[str, Any]:
        """The inputs the stages saw, for the call record and for ``fsguard replay``: the caller as
        read from the channel, and what the stages were given through the input port."""
        asserted = {"asserted": self.asserted_number, "peer": self.variables.get("sip_network_ip", "")} \
            if self.asserted_number and not self.identity_trusted else {}
        return {"ani": self.ani, "presented": self.presented_number, "network": self.network_number, **asserted,
                "caller_name": self.caller_name, "dnis": self.dnis, "direction": self.direction,
                "context": self.context, "privacy": self.privacy, "anonymous": self.anonymous,
                "ani_valid": self.ani_valid, **self.inputs.recorded}

    def forget_channel_data(self) -> None:
        """Let go of the channel's variables once the call is decided and written down.

        The connect reply carries every channel variable (200-odd headers, held twice: as sent and
        as ``variables``); a call then held in a queue for minutes needs none of them, only its
        uuid and what the stages concluded. At 100 calls a second and 3-minute calls that is
        18,000 calls held at once.
        """
        kept = {"Unique-ID": self.uuid}
        self.channel = self.session.channel = kept
        self.variables = {}
        self.sip_headers = {}

    # ----------------------------------------------------------- actions

    def _run(self, app: str, arg: str = "", *, timeout: float | None = None) -> Headers:
        if self._pending:
            self.flush()
        event = self.session.execute(app, arg, timeout=timeout)
        assert event is not None
        if self.session.hungup:
            raise CallGone(f"caller hung up during {app}")
        return event

    def answer(self) -> None:
        """Answer: from here the call is billed."""
        self._run("answer")
        self.answered_by_us = True
        self._answered_at = time.monotonic()

    def pre_answer(self) -> None:
        """Early media (SIP 183): the caller hears us, nobody pays yet."""
        self._run("pre_answer")

    def play(self, sound: str, *, timeout: float = 120.0) -> Played:
        """Play a file, ``say:`` phrase or tone stream to the caller and wait for it to end.

        Played or not, and FreeSWITCH's reason when not (FILE NOT FOUND, PLAYBACK ERROR)."""
        return Played.from_completion(self._run("playback", sound, timeout=timeout))

    def say(self, text: str, *, lang: str = "en", kind: str = "number", method: str = "iterated",
            timeout: float = 60.0) -> None:
        """Speak with FreeSWITCH's say modules (``say en number iterated 42``)."""
        self._run("say", f"{lang} {kind} {method} {text}", timeout=timeout)

    def collect(self, *, min_digits: int = 1, max_digits: int = 1, timeout: float = 5.0, prompt: str = "silence_stream://250",
                invalid: str = "silence_stream://250", tries: int = 1, terminators: str = "#",
                regex: str = "\\d+", digit_timeout: float | None = None, variable: str = "fsguard_digits") -> Collected:
        """Play ``prompt`` and collect digits (play_and_get_digits); no digits when the caller keys nothing.

        Digits pressed while the prompt plays count. ``timeout`` is per try, in seconds.
        """
        args = [str(min_digits), str(max_digits), str(tries), str(int(timeout * 1000)), terminators or "none",
                prompt, invalid, variable, regex]
        if digit_timeout is not None:
            args.append(str(int(digit_timeout * 1000)))
        event = self._run("play_and_get_digits", " ".join(args), timeout=tries * timeout + APP_MARGIN)
        return Collected(event.get(f"variable_{variable}", ""))

    def set(self, **variables: str) -> None:
        """Set channel variables. Queued: they reach FreeSWITCH in the same write as the next
        application, so a stage may set variables freely without costing round trips."""
        self._pending.extend(("set", f"{k}={v}") for k, v in variables.items())

    def export(self, **variables: str) -> None:
        """Set variables on this leg and the legs it is bridged to (the agent's screen, the CDR).

        Queued like :meth:`set`; what was exported is kept in ``exports`` for the call record.
        """
        self.exports.update(variables)
        # a later stage's value replaces a queued one (screening's risk, then routing's final risk)
        names = {f"{k}=" for k in variables}
        self._pending = [(app, arg) for app, arg in self._pending
                         if app != "export" or arg[:arg.find("=") + 1] not in names]
        self._pending.extend(("export", f"{k}={v}") for k, v in variables.items())

    def record(self, path: str, *, stereo: bool = True, from_bridge: bool = False) -> None:
        """Record the whole call, caller and agent on separate channels when ``stereo``; with
        ``from_bridge`` the recording starts only once the leg is bridged to someone.

        Queued like :meth:`set`: ``record_session`` only starts a media bug and returns, so it goes
        in the same write as the route (or before whatever the next stage plays), not in a round
        trip of its own. From the bridge, it is not run now at all: FreeSWITCH runs the
        ``execute_on_pre_bridge*`` variables' applications when the bridge starts
        (switch_ivr_bridge.c), so a caller waiting in a queue costs no media bug (and no decoding
        of every frame for it) until an agent answers."""
        self._pending.append(("set", f"RECORD_STEREO={'true' if stereo else 'false'}"))
        if from_bridge:
            self._pending.append(("set", f"{RECORD_AT_BRIDGE}=record_session {path}"))
        else:
            self._pending.append(("record_session", path))

    def flush(self, then_set: dict[str, str] | None = None) -> None:
        """Send queued variables and applications now: one write, the variables of each run of
        ``set`` / ``export`` folded into one ``multiset`` (see :func:`fold_variables`); ``then_set``
        set by FreeSWITCH's listener once they are queued (OutboundSession.send_apps)."""
        pending, self._pending = self._pending, []
        self.session.break_media()
        self.session.send_apps(fold_variables(pending, self._export_vars), then_set=then_set)

    def route(self, target: Instruction | str) -> None:
        """Send the call on: ``transfer default XML queues``, ``callcenter support@default``, ``bridge ...``."""
        instruction = Instruction.parse(target) if isinstance(target, str) else target
        self.final_action = instruction
        if instruction.app == "bridge" and not any(a == "set" and v.startswith("hangup_after_bridge=")
                                                   for a, v in self._pending):
            # a bridge ends back in the socket application: without this the caller's (or the
            # agent's) leg stays up, silent, after the far end hangs up (seen on FreeSWITCH 1.10.12)
            self._pending.append(("set", "hangup_after_bridge=true"))
        self._pending.append((instruction.app, instruction.arg))
        # set by the listener as soon as the route is queued: the socket may then be let go
        self.flush(then_set=self.route_variables or None)

    def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """Hang the call up with a cause FreeSWITCH sends back to the carrier."""
        self.final_action = Hangup(cause)
        self._pending.append(("hangup", cause))
        self.flush()

    def instruct(self, instruction: Instruction) -> None:
        """Give FreeSWITCH the call's final instruction: a hang-up or a route."""
        if isinstance(instruction, Hangup) or instruction.hangs_up:
            self.hangup(instruction.arg or "NORMAL_CLEARING")
        else:
            self.route(instruction)
