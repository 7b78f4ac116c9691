"""What a channel says about itself: its variables, its caller profile, and the event headers they make.

FreeSWITCH describes a channel in every event with the same blocks, in this order: the event's
own headers (``Event-Name``, ``Core-UUID``, timestamps, ``Event-Sequence``), the channel's state
(``Channel-State``, ``Answer-State``, codecs), the caller profile (``Caller-*``; empty fields left
out), then every channel variable (``variable_*``).  The connect reply (CHANNEL_DATA) adds the
same profile as ``Channel-*`` first.  Values are URL-encoded once (:mod:`fsguard_testing.wire`);
``getvar`` answers the raw value, which is how caller-controlled text reaches a target unencoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import lru_cache
from uuid import uuid4

from fsguard_testing import wire

#: (Event-Calling-File, Event-Calling-Function, Event-Calling-Line-Number) as in FreeSWITCH 1.10.12.
CALLING: dict[str, tuple[str, str, str]] = {
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", "2021"),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", "2944"),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", "2967"),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", "3846"),
    "CHANNEL_PROGRESS_MEDIA": ("switch_channel.c", "switch_channel_perform_mark_pre_answered", "3560"),
    "CHANNEL_PROGRESS": ("switch_channel.c", "switch_channel_perform_mark_ring_ready_value", "3374"),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", "3445"),
    "CHANNEL_HANGUP_COMPLETE": ("switch_core_state_machine.c", "switch_core_session_reporting_state", "943"),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", "1002"),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", "1213"),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", "2408"),
    "CHANNEL_BRIDGE": ("switch_ivr_bridge.c", "audio_bridge_on_exchange_media", "1530"),
    "CHANNEL_UNBRIDGE": ("switch_ivr_bridge.c", "audio_bridge_on_exchange_media", "1622"),
    "DTMF": ("switch_channel.c", "switch_channel_dequeue_dtmf", "677"),
    "RECORD_START": ("switch_ivr_async.c", "record_callback", "1390"),
    "RECORD_STOP": ("switch_ivr_async.c", "record_callback", "1530"),
    "BACKGROUND_JOB": ("mod_event_socket.c", "api_exec", "1572"),
}

#: Variables whose value a caller controls (SIP From, display name...): ``getvar`` of these
#: returns raw, possibly CR/LF-bearing text (captures 09a/09b/14d).
CALLER_CONTROLLED_VARIABLES = frozenset(
    {
        "caller_id_name", "caller_id_number", "effective_caller_id_name", "effective_caller_id_number",
        "ani", "aniii", "channel_name", "chan_name", "origination_caller_id_name",
        "origination_caller_id_number", "username", "caller_id", "sip_user_agent",
        "sip_from_display", "sip_from_user", "sip_from_user_stripped", "sip_from_uri", "sip_full_from",
        "sip_contact_user", "sip_contact_uri", "sip_full_via", "sip_full_to", "sip_to_user",
        "sip_req_user", "sip_req_uri", "sip_call_id", "switch_r_sdp",
    }
)
_CALLER_CONTROLLED_PREFIXES = ("sip_h_", "sip_i_", "sip_p-", "sip_from_", "sip_full_", "sip_contact_", "sip_via_")

_PROFILE_FIELDS_SOFIA = (
    "Direction", "Logical-Direction", "Username", "Dialplan", "Caller-ID-Name", "Caller-ID-Number",
    "Orig-Caller-ID-Name", "Orig-Caller-ID-Number", "Network-Addr",
)
_PROFILE_FIELDS_LOOPBACK = (
    "Direction", "Logical-Direction", "Dialplan", "Caller-ID-Name", "Caller-ID-Number", "Orig-Caller-ID-Name",
    "Orig-Caller-ID-Number", "Callee-ID-Name", "Callee-ID-Number",
)
_PROFILE_FIELDS_COMMON = (
    "ANI", "Destination-Number", "Unique-ID", "Source", "Transfer-Source", "Context", "RDNIS", "Channel-Name",
    "Profile-Index",
    "Profile-Created-Time", "Channel-Created-Time", "Channel-Answered-Time", "Channel-Progress-Time",
    "Channel-Progress-Media-Time", "Channel-Hangup-Time", "Channel-Transfer-Time", "Channel-Resurrect-Time",
    "Channel-Bridged-Time", "Channel-Last-Hold", "Channel-Hold-Accum", "Screen-Bit", "Privacy-Hide-Name",
    "Privacy-Hide-Number",
)


@lru_cache(maxsize=8)
def _profile_names(prefix: str, sofia: bool) -> tuple[str, ...]:
    fields = (_PROFILE_FIELDS_SOFIA if sofia else _PROFILE_FIELDS_LOOPBACK) + _PROFILE_FIELDS_COMMON
    return tuple(f"{prefix}-{f}" for f in fields)


def is_caller_controlled(name: str, value: str | None = None) -> bool:
    """Is ``name`` a variable the caller can put arbitrary text into?"""
    lname = name.lower()
    if lname in CALLER_CONTROLLED_VARIABLES or lname.startswith(_CALLER_CONTROLLED_PREFIXES):
        return True
    return value is not None and ("\r" in value or "\n" in value)


class ChannelVariables:
    """The channel's variables and caller profile, and its events' headers (a part of
    :class:`~fsguard_testing.fakeswitch.channel.Channel`)."""

    def __init__(self) -> None:
        super().__init__()
        self.vars: dict[str, str | list[str]] = {}
        self.profile: dict[str, str] = {}
        self._vars_bytes: bytes | None = None  # serialised variable block, until a variable changes
        self._profile_cache: tuple[tuple, bytes] | None = None
        self.channel_name = ""
        self.source = "mod_sofia"
        self.sofia = True
        self.read_codec = ("PCMU", "8000", "64000")
        self.created_us = 0

    def _setup_channel(self) -> None:
        c = self.caller
        created = c.created_us if c.created_us is not None else self._us(0.0)
        self.created_us = created
        if c.channel_data_raw is not None:
            self._adopt_channel_data(c.channel_data_raw)
            return
        sofia = c.endpoint != "loopback"
        ani = c.ani
        if c.channel_name is not None:
            chan = c.channel_name
        elif sofia:
            chan = f"sofia/lab/{ani}@{c.network_addr}"
        else:
            chan = f"loopback/{c.dnis}-b"
        self.channel_name = chan
        self.read_codec = ("PCMU", "8000", "64000") if sofia else ("L16", "8000", "128000")
        self.source = "mod_sofia" if sofia else "mod_loopback"
        self.sofia = sofia
        self.profile = {
            "Caller-ID-Name": c.name,
            "Caller-ID-Number": ani,
            "ANI": c.network_ani if c.network_ani is not None else ani,
            "Destination-Number": c.dnis,
            "Context": c.context,
        }
        self.vars = self._initial_variables()
        self._vars_bytes = None

    def _initial_variables(self) -> dict[str, str | list[str]]:
        c, sim = self.caller, self.sim
        session_id = str(c.session_id if c.session_id is not None else next(sim._session_ids))
        v: dict[str, str | list[str]] = {"direction": "inbound", "uuid": self.uuid, "session_id": session_id}
        if self.sofia:
            user = c.sip_from_user if c.sip_from_user is not None else c.ani
            host = c.network_addr
            tag = f"{self.rng.getrandbits(32):08x}"
            v.update(
                {
                    "sip_from_user": user,
                    "sip_from_uri": f"{user}@{host}",
                    "sip_from_host": host,
                    "video_media_flow": "disabled",
                    "text_media_flow": "disabled",
                    "channel_name": self.channel_name,
                    "sip_call_id": f"{self.rng.getrandbits(64):016x}@{host}",
                    "sip_local_network_addr": sim.ipv4,
                    "sip_network_ip": host,
                    "sip_network_port": "5060",
                    "sip_invite_stamp": str(self.created_us),
                    "sip_received_ip": host,
                    "sip_received_port": "5060",
                    "sip_via_protocol": "udp",
                    "sip_from_user_stripped": user,
                    "sip_from_tag": tag,
                    "sofia_profile_name": "lab",
                    "sofia_profile_url": f"sip:mod_sofia@{sim.ipv4}:5060",
                    "recovery_profile_name": "lab",
                }
            )
            v.update(c.variables)
            v["sip_full_via"] = f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{self.rng.getrandbits(32):08x};rport=5060"
            if c.name:
                v["sip_from_display"] = c.name
                v["sip_full_from"] = f'"{c.name}" <sip:{user}@{host}>;tag={tag}'
            else:
                v["sip_full_from"] = f"<sip:{user}@{host}>;tag={tag}"
            dnis, me = c.dnis, f"{sim.ipv4}:5060"
            v.update(
                {
                    "sip_full_to": f"<sip:{dnis}@{me}>",
                    "sip_req_user": dnis,
                    "sip_req_port": "5060",
                    "sip_req_uri": f"{dnis}@{me}",
                    "sip_req_host": sim.ipv4,
                    "sip_to_user": dnis,
                    "sip_to_port": "5060",
                    "sip_to_uri": f"{dnis}@{me}",
                    "sip_to_host": sim.ipv4,
                    "sip_contact_user": user,
                    "sip_contact_port": "5060",
                    "sip_contact_uri": f"{user}@{host}:5060",
                    "sip_contact_host": host,
                    "sip_via_host": host,
                    "sip_via_port": "5060",
                    "sip_via_rport": "5060",
                    "max_forwards": "70",
                    "switch_r_sdp": (
                        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
                    ),
                    "ep_codec_string": "CORE_PCM_MODULE.PCMU@8000h@20i@64000b",
                    "rtp_use_codec_string": "PCMU,PCMA",
                    "remote_video_media_flow": "inactive",
                    "remote_text_media_flow": "inactive",
                    "remote_audio_media_flow": "sendrecv",
                    "audio_media_flow": "sendrecv",
                    "remote_media_ip": host,
                    "remote_media_port": "40000",
                    "rtp_audio_recv_pt": "0",
                    "rtp_use_codec_name": "PCMU",
                    "rtp_use_codec_rate": "8000",
                    "rtp_use_codec_ptime": "20",
                    "rtp_use_codec_channels": "1",
                    "rtp_last_audio_codec_string": "PCMU@8000h@20i@1c",
                    "read_codec": "PCMU",
                    "original_read_codec": "PCMU",
                    "read_rate": "8000",
                    "original_read_rate": "8000",
                    "write_codec": "PCMU",
                    "write_rate": "8000",
                    "dtmf_type": "rfc2833",
                    "endpoint_disposition": "RECEIVED",
                }
            )
        else:
            v.update(
                {
                    "channel_name": self.channel_name,
                    "read_codec": "L16",
                    "read_rate": "8000",
                    "write_codec": "L16",
                    "write_rate": "8000",
                    "origination_caller_id_number": c.ani,
                    **({"origination_caller_id_name": c.name} if c.name else {}),
                    "other_loopback_leg_uuid": c.loopback_leg_uuid or str(uuid4()),
                    "loopback_leg": "B",
                }
            )
            v.update(c.variables)
        v["DP_MATCH"] = [c.dnis, c.dnis]
        v["call_uuid"] = self.uuid
        v["current_application_data"] = sim.socket_data
        v["current_application"] = "socket"
        v["socket_host"] = self.result.target[0] if self.result.target else "127.0.0.1"
        return v

    def _adopt_channel_data(self, raw: bytes) -> None:
        """Use a captured CHANNEL_DATA verbatim, and take the channel's identity from it."""
        ev = wire.Event.from_plain(raw)
        get = lambda k, d="": str(ev.get(k, d))  # noqa: E731
        self.uuid = get("Unique-ID", self.uuid)
        self.result.uuid = self.uuid
        self.channel_name = get("Channel-Name", "loopback/unknown")
        self.source = get("Caller-Source", "mod_loopback")
        self.sofia = self.source == "mod_sofia"
        self.read_codec = (get("Channel-Read-Codec-Name", "L16"), get("Channel-Read-Codec-Rate", "8000"),
                           get("Channel-Read-Codec-Bit-Rate", "128000"))
        self.profile = {
            "Caller-ID-Name": get("Caller-Caller-ID-Name"),
            "Caller-ID-Number": get("Caller-Caller-ID-Number"),
            "ANI": get("Caller-ANI"),
            "Destination-Number": get("Caller-Destination-Number"),
            "Context": get("Caller-Context"),
        }
        created = get("Caller-Channel-Created-Time")
        if created.isdigit():
            self.created_us = int(created)
        self.vars = {k[len("variable_"):]: v for k, v in ev.headers if k.startswith("variable_")}
        self._vars_bytes = None

    def _setvar(self, name: str, value: str | list[str] | None) -> None:
        """Set a channel variable the way FreeSWITCH does: re-setting moves it to the end."""
        self.vars.pop(name, None)
        if value is not None and value != "":
            self.vars[name] = value
        self._vars_bytes = None

    def getvar(self, name: str) -> str:
        """switch_channel_get_variable: variables first, then the caller profile."""
        v = self.vars.get(name)
        if v is not None:
            return v if isinstance(v, str) else wire.serialize_value(v)
        profile_names = {
            "caller_id_name": "Caller-ID-Name",
            "caller_id_number": "Caller-ID-Number",
            "ani": "ANI",
            "destination_number": "Destination-Number",
            "context": "Context",
        }
        if name in profile_names:
            return self.profile.get(profile_names[name], "")
        if name == "uuid":
            return self.uuid
        if name in ("channel_name", "chan_name"):
            return self.channel_name
        return ""

    def _profile_block(self, prefix: str) -> list[tuple[str, str]]:
        """The caller profile as ``<prefix>-Name`` headers (switch_caller_profile_event_set_data).

        Like FreeSWITCH, a string field that is empty is left out (a caller without a caller id
        name has no ``Caller-Caller-ID-Name`` at all: fs-1.10.12 captures). After a transfer the
        channel runs on a new profile: index 2, Transfer-Source, RDNIS, the transfer's dialplan
        name, and a Channel-Transfer-Time of 0 (the old profile's time is not reported).
        """
        c, p = self.caller, self.profile
        hide = "true" if c.privacy else "false"
        name, number, created = p["Caller-ID-Name"], p["Caller-ID-Number"], str(self.created_us)
        values = ["inbound", "inbound"]
        if self.sofia:
            values += [c.sip_from_user if c.sip_from_user is not None else c.ani, p.get("Dialplan", "XML"), name,
                       number, name, number, c.network_addr]
        else:
            values += [p.get("Dialplan", "xml"), name, number, name, number, "Outbound Call", c.context]
        values += [
            p["ANI"], p["Destination-Number"], self.uuid, self.source, p.get("Transfer-Source", ""), p["Context"],
            p.get("RDNIS", ""), self.channel_name, p.get("Profile-Index", "1"),
            created, created, self._time_us(self.answered_t), self._time_us(self.progress_t),
            self._time_us(self.early_t), self._time_us(self.hangup_t if self.state == "CS_REPORTING" else None),
            "0", "0", self._time_us(self.bridged_t), "0", "0", "true", hide, hide,
        ]
        return [(k, v) for k, v in zip(_profile_names(prefix, self.sofia), values) if v != ""]

    def _channel_block(self) -> list[tuple[str, str]]:
        h = [
            ("Channel-State", self.state),
            ("Channel-Call-State", self.call_state),
            ("Channel-State-Number", str(self.state_number)),
            ("Channel-Name", self.channel_name),
            ("Unique-ID", self.uuid),
            ("Call-Direction", "inbound"),
            ("Presence-Call-Direction", "inbound"),
            ("Channel-HIT-Dialplan", "true"),
            ("Channel-Call-UUID", self.uuid),
            ("Answer-State", self.answer_state),
        ]
        if self.hung_up and self.cause:
            h.append(("Hangup-Cause", self.cause))
        name, rate, bits = self.read_codec
        h += [
            ("Channel-Read-Codec-Name", name),
            ("Channel-Read-Codec-Rate", rate),
            ("Channel-Read-Codec-Bit-Rate", bits),
            ("Channel-Write-Codec-Name", name),
            ("Channel-Write-Codec-Rate", rate),
            ("Channel-Write-Codec-Bit-Rate", bits),
        ]
        return h

    def _base_headers(self, name: str) -> list[tuple[str, str | list[str]]]:
        sim = self.sim
        us = self._us()
        secs = us / 1_000_000
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
        gmt = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(secs))
        file, func, line = CALLING.get(name, ("switch_channel.c", "switch_channel_event_set_data", "0"))
        return [
            ("Event-Name", name),
            ("Core-UUID", sim.core_uuid),
            ("FreeSWITCH-Hostname", sim.hostname),
            ("FreeSWITCH-Switchname", sim.hostname),
            ("FreeSWITCH-IPv4", sim.ipv4),
            ("FreeSWITCH-IPv6", sim.ipv6),
            ("Event-Date-Local", local),
            ("Event-Date-GMT", gmt),
            ("Event-Date-Timestamp", str(us)),
            ("Event-Calling-File", file),
            ("Event-Calling-Function", func),
            ("Event-Calling-Line-Number", line),
            ("Event-Sequence", str(next(sim._event_seq))),
        ]

    def build_event(
        self,
        name: str,
        *,
        pre: Iterable[tuple[str, str]] = (),
        post: Iterable[tuple[str, str]] = (),
        with_vars: bool = True,
    ) -> list[tuple[str, str | list[str]]]:
        """The header list of a channel event, in FreeSWITCH's order."""
        h = self._base_headers(name)
        h.extend(pre)
        h.extend(self._channel_block())
        h.extend(self._profile_block("Caller"))
        if with_vars:
            h.extend(("variable_" + k, v) for k, v in self.vars.items())
        h.extend(post)
        return h

    def connect_reply(self) -> bytes:
        """The CHANNEL_DATA reply to ``connect`` (always the plain serialisation)."""
        if self.caller.channel_data_raw is not None:
            return self.caller.channel_data_raw
        h = self._base_headers("CHANNEL_DATA")
        h.extend(self._profile_block("Channel"))
        h.extend(self._channel_block())
        h.extend(self._profile_block("Caller"))
        h.extend(("variable_" + k, v) for k, v in self.vars.items())
        h += [
            ("Content-Type", "command/reply"),
            ("Reply-Text", "+OK\n"),
            ("Socket-Mode", "async" if self.sim.mode == "async" else "static"),
            ("Control", "full"),
        ]
        return wire.serialize_event(h)

    def _plain_event(
        self, name: str, pre: Iterable[tuple[str, str]], post: Iterable[tuple[str, str]], with_vars: bool
    ) -> bytes:
        """build_event() + serialize_event(), reusing the serialised profile and variables.

        Every channel event repeats ~100 unchanged headers; serialising them once per change
        instead of once per event keeps the simulator light under load.
        """
        head = self._base_headers(name)
        head.extend(pre)
        head.extend(self._channel_block())
        times = (self.answered_t, self.progress_t, self.early_t, self.state == "CS_REPORTING", self.bridged_t,
                 tuple(self.profile.items()))
        if self._profile_cache is None or self._profile_cache[0] != times:
            self._profile_cache = (times, wire.serialize_headers(self._profile_block("Caller")))
        parts = [wire.serialize_headers(head), self._profile_cache[1]]
        if with_vars:
            if self._vars_bytes is None:
                self._vars_bytes = wire.serialize_headers([("variable_" + k, v) for k, v in self.vars.items()])
            parts.append(self._vars_bytes)
        parts.append(wire.serialize_headers(list(post)))
        parts.append(b"\n")
        return b"".join(parts)
