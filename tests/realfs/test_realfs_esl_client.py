"""fsguard's inbound Event Socket client on a real FreeSWITCH: what an end-of-call watcher needs."""

from __future__ import annotations

from fsguard.esl.client import FreeSWITCHAPI
from fsguard_testing.freeswitch import CallPlacer, RealFreeSWITCH


def test_the_inbound_client_receives_a_channels_end_while_its_api_commands_are_answered(
        freeswitch: RealFreeSWITCH, placer: CallPlacer) -> None:
    """Subscribed to CHANNEL_HANGUP_COMPLETE and filtered on one channel, the client is told of
    that channel's end only, with its cause; the api commands around it get their own answers."""
    a_leg, _b_leg = placer.loopback("12125550166", dnis="agent-1", context="agents")
    other, _ = placer.loopback("12125550167", dnis="agent-2", context="agents")
    with FreeSWITCHAPI(freeswitch.esl_address, "ClueCon", timeout=10) as fs:
        fs.subscribe("CHANNEL_HANGUP_COMPLETE")
        fs.filter("Unique-ID", a_leg)
        assert fs.api(f"uuid_exists {a_leg}") == "true"
        assert fs.api(f"uuid_kill {other} CALL_REJECTED").startswith("+OK")
        assert fs.api(f"uuid_kill {a_leg} USER_BUSY").startswith("+OK")
        assert "ready" in fs.api("status")
        end = fs.next_event(10)
        assert end is not None
        assert (end["Event-Name"], end["Unique-ID"], end["variable_hangup_cause"]) == (
            "CHANNEL_HANGUP_COMPLETE", a_leg, "USER_BUSY")
        assert fs.next_event(0.5) is None   # the other channel's end was filtered out by FreeSWITCH
