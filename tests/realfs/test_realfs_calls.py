"""What FreeSWITCH 1.10.12 does with the calls fsguard decides: routing to an agent, hard blocks
through real SIP INVITEs, the unbilled challenge, withheld and anonymous callers.

Every assertion about the call reads FreeSWITCH's own events (CHANNEL_EXECUTE,
CHANNEL_PROGRESS_MEDIA, CHANNEL_ANSWER, CHANNEL_BRIDGE, CHANNEL_HANGUP_COMPLETE with billsec and
hangup_cause) or the SIP responses it sent.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest

from fsguard.rules import lists
from fsguard.service.app import App
from fsguard.config import packaged_sound
from fsguard_testing.freeswitch import CallPlacer, Event, EventSocketClient, RealFreeSWITCH, sip_invite

CALLER = "12125550101"
BLOCKED = "13125550166"
SOFT = "13125550121"


def block(app: App, number: str, level: int, **kwargs: str) -> None:
    with app.db.begin() as session:
        lists.add(session, lists.make_spec(number, kind="block", level=level, **kwargs))


def answered(client: EventSocketClient, uuid: str) -> list[Event]:
    return client.find("CHANNEL_ANSWER", where={"Unique-ID": uuid})


def hangup(client: EventSocketClient, uuid: str, timeout: float = 15.0) -> Event:
    return client.wait_for("CHANNEL_HANGUP_COMPLETE", where={"Unique-ID": uuid}, timeout=timeout)


def executed(client: EventSocketClient, uuid: str, app: str, timeout: float = 10.0) -> Event:
    return client.wait_for("CHANNEL_EXECUTE", where={"Unique-ID": uuid, "Application": app}, timeout=timeout)


def agent_ready(client: EventSocketClient, agent: str = "1000@default") -> None:
    client.api(f"callcenter_config agent set wrap_up_time {agent} 0")
    client.api(f"callcenter_config agent set max_no_answer {agent} 0")
    client.api(f"callcenter_config agent set state {agent} Waiting")
    assert "+OK" in client.api(f"callcenter_config agent set status {agent} Available")


BOTH_DATABASES = pytest.mark.parametrize("realfs_settings", ["sqlite", "postgresql"], indirect=True)


# ===================================================================== routed to an agent


@BOTH_DATABASES
def test_ordinary_caller_is_queued_and_talks_to_a_logged_in_agent(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app = start_fsguard()
    agent_ready(fs_events)
    a_leg, b_leg = placer.loopback(CALLER)

    queue = executed(fs_events, b_leg, "callcenter")
    assert queue.get("Application-Data") == "support@default"
    bridge = fs_events.wait_for("CHANNEL_BRIDGE", where={"Unique-ID": b_leg}, timeout=15)
    agent_leg = bridge["Other-Leg-Unique-ID"]
    agent_answer = fs_events.wait_for("CHANNEL_ANSWER", where={"Unique-ID": agent_leg})
    # the agent's own channel (a SIP phone, not a loopback leg) ...
    assert agent_answer["Channel-Name"].startswith("sofia/lab/agent-1000@")
    # ... carries what fsguard learned, through cc_export_vars
    assert agent_answer.var("fsguard_verified") == "unknown"  # not challenged
    assert agent_answer.var("fsguard_route_rule") == "default"
    assert agent_answer.var("fsguard_risk") is not None
    assert agent_answer.var("cc_agent") == "1000@default"
    # fsguard answered to play the consent prompt (recording.consent_media = "answer"), then routed
    apps = fs_events.applications(b_leg)
    names = [name for name, _ in apps]
    # the dialplan's own (socket_resume=true, so that fsguard may let go of the routed call), then fsguard
    assert apps[0] == ("set", "socket_resume=true") and names[1] == "socket"
    assert names.index("answer") < names.index("playback") < names.index("transfer") < names.index("callcenter")
    # the default notice is fsguard's own, played from the installed package (fsguard:consent-en.wav)
    assert ("playback", packaged_sound(app.settings.recording.consent_prompt)) in apps

    fs_events.api(f"uuid_kill {a_leg}")
    end = hangup(fs_events, b_leg)
    assert end.var("cc_agent") == "1000@default"
    assert end.var("cc_queue_answered_epoch") not in (None, "0")


# ===================================================================== hard blocks over SIP


@BOTH_DATABASES
@pytest.mark.parametrize("action, status, cause", [
    (None, 603, "CALL_REJECTED"),
    ("busy", 486, "USER_BUSY"),
])
def test_hard_blocked_caller_is_refused_before_answer_with_the_entrys_cause(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, freeswitch: RealFreeSWITCH,
        action: str | None, status: int, cause: str) -> None:
    app = start_fsguard()
    block(app, "+" + BLOCKED, 8, reason="fraud ring", **({"action": action} if action else {}))

    call = sip_invite(freeswitch.ports.sip, user=BLOCKED, display="Bob")

    assert call.final.status == status
    assert 200 not in call.statuses and 183 not in call.statuses
    end = fs_events.wait_for("CHANNEL_HANGUP_COMPLETE", where={"variable_sip_call_id": call.call_id})
    assert end.var("hangup_cause") == cause
    assert end.var("billsec") == "0"
    assert not answered(fs_events, end.uuid)
    assert not fs_events.find("CHANNEL_PROGRESS_MEDIA", where={"Unique-ID": end.uuid})
    assert ("socket", f"{freeswitch.ports.socket_target} async full") in fs_events.applications(end.uuid)


@pytest.mark.parametrize("display", [
    "Eve%0ACaller-Caller-ID-Number%3A%2012125550101",
    "Eve%0D%0ACaller-Caller-ID-Number%3A%2012125550101",
])
def test_crafted_display_name_cannot_unblock_a_hard_blocked_caller(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, freeswitch: RealFreeSWITCH,
        display: str) -> None:
    app = start_fsguard()
    block(app, "+" + BLOCKED, 9)

    call = sip_invite(freeswitch.ports.sip, user=BLOCKED, display=display)

    assert call.final.status == 603
    end = fs_events.wait_for("CHANNEL_HANGUP_COMPLETE", where={"variable_sip_call_id": call.call_id})
    # FreeSWITCH itself decoded the display name: the newline is in the caller id name ...
    assert "\n" in end.get("Caller-Caller-ID-Name", "")
    assert end["Caller-Caller-ID-Number"] == BLOCKED
    assert end.var("hangup_cause") == "CALL_REJECTED"
    assert not answered(fs_events, end.uuid)
    # ... and fsguard screened the true number (its row is committed with the writer's next batch)
    assert app.writer.wait_idle(5)
    with app.db.begin() as session:
        from fsguard.store.models import CallRecord
        row = session.get(CallRecord, end.uuid)
        assert row is not None and row.ani == "+" + BLOCKED and row.outcome == "rejected"


# ===================================================================== the unbilled challenge


def _challenge(fs_events: EventSocketClient, b_leg: str) -> str:
    """The code FreeSWITCH played in early media (digits/N.wav), checked to be unanswered then."""
    playback = executed(fs_events, b_leg, "playback")
    progress = fs_events.wait_for("CHANNEL_PROGRESS_MEDIA", where={"Unique-ID": b_leg})
    assert progress.timestamp_us <= playback.timestamp_us
    assert not answered(fs_events, b_leg), "the code must be played before the answer (unbilled)"
    digits = re.findall(r"digits/(\d)\.wav", playback["Application-Data"])
    assert digits, playback["Application-Data"]
    code_length = len(digits) // 2  # played twice (verification.code_repeats)
    return "".join(digits[:code_length])


def test_soft_blocked_caller_hears_the_code_in_early_media_keys_it_and_is_routed(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app = start_fsguard()
    block(app, "+" + SOFT, 2, reason="complaints")
    a_leg, b_leg = placer.loopback(SOFT)

    code = _challenge(fs_events, b_leg)
    collect = executed(fs_events, b_leg, "play_and_get_digits")
    answer = fs_events.wait_for("CHANNEL_ANSWER", where={"Unique-ID": b_leg})
    assert answer.timestamp_us <= collect.timestamp_us
    fs_events.api(f"uuid_recv_dtmf {b_leg} {code}")

    route = executed(fs_events, b_leg, "transfer")
    assert route["Application-Data"] == "default XML queues"
    done = fs_events.wait_for("CHANNEL_EXECUTE_COMPLETE",
                              where={"Unique-ID": b_leg, "Application": "play_and_get_digits"})
    assert done.get("variable_read_result") == "success"
    fs_events.api(f"uuid_kill {a_leg}")
    assert hangup(fs_events, b_leg).var("fsguard_verified") == "true"


@pytest.mark.parametrize("keys", ["wrong", None])
def test_soft_blocked_caller_without_the_code_is_hung_up_inside_the_guard_interval(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, placer: CallPlacer,
        keys: str | None) -> None:
    app = start_fsguard()
    guard = app.settings.verification.guard_interval
    block(app, "+" + SOFT, 3)
    a_leg, b_leg = placer.loopback(SOFT)

    code = _challenge(fs_events, b_leg)
    executed(fs_events, b_leg, "play_and_get_digits")
    if keys == "wrong":
        wrong = "".join(str((int(d) + 1) % 10) for d in code)
        fs_events.api(f"uuid_recv_dtmf {b_leg} {wrong}")

    end = hangup(fs_events, b_leg, timeout=guard + 10)
    assert end.var("hangup_cause") == app.settings.verification.fail_cause
    answer = fs_events.find("CHANNEL_ANSWER", where={"Unique-ID": b_leg})[0]
    # FreeSWITCH's own clocks: billsec (whole seconds) and the answer-to-hangup time
    assert int(end.var("billsec") or 0) < guard
    assert (end.timestamp_us - answer.timestamp_us) / 1e6 < guard
    assert not fs_events.find("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application": "transfer"})


# ===================================================================== withheld and anonymous


def test_withheld_caller_is_screened_on_the_network_number_and_routed(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, placer: CallPlacer) -> None:
    start_fsguard()
    a_leg, b_leg = placer.loopback("16175550131", variables={"origination_privacy": "hide_number"})

    route = executed(fs_events, b_leg, "transfer")
    assert route["Application-Data"] == "default XML queues"
    assert not fs_events.find("CHANNEL_EXECUTE", where={"Unique-ID": b_leg, "Application": "play_and_get_digits"})
    create = fs_events.find("CHANNEL_CREATE", where={"Unique-ID": b_leg})[0]
    assert create.get("Caller-Privacy-Hide-Number") == "true"


def test_withheld_caller_on_the_block_list_is_still_refused(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app = start_fsguard()
    block(app, "+16175550132", 7)
    a_leg, b_leg = placer.loopback("16175550132", variables={"origination_privacy": "hide_number"})

    end = hangup(fs_events, b_leg)
    assert end.var("hangup_cause") == "CALL_REJECTED"
    assert not answered(fs_events, b_leg)


def test_anonymous_caller_is_challenged_by_default(
        start_fsguard: Callable[..., App], fs_events: EventSocketClient, placer: CallPlacer) -> None:
    app = start_fsguard()
    assert app.settings.screening.anonymous_action == "challenge"
    a_leg, b_leg = placer.loopback("anonymous")

    _challenge(fs_events, b_leg)
    end = hangup(fs_events, b_leg, timeout=app.settings.verification.guard_interval + 10)
    assert end.var("hangup_cause") == app.settings.verification.fail_cause


def test_anonymous_caller_is_refused_when_the_policy_says_reject(
        start_fsguard: Callable[..., App], realfs_settings, fs_events: EventSocketClient,
        placer: CallPlacer) -> None:
    realfs_settings.screening.anonymous_action = "reject"
    start_fsguard(realfs_settings)
    a_leg, b_leg = placer.loopback("anonymous")

    end = hangup(fs_events, b_leg)
    assert end.var("hangup_cause") == "CALL_REJECTED"
    assert not answered(fs_events, b_leg)
    assert not fs_events.find("CHANNEL_PROGRESS_MEDIA", where={"Unique-ID": b_leg})
