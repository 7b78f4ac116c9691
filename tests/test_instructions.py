"""How a decided call's instructions reach FreeSWITCH: few applications, same effect.

Every application FreeSWITCH runs is a queued message, a CHANNEL_EXECUTE / EXECUTE_COMPLETE pair
carrying every channel variable, and log lines; through a real FreeSWITCH a routed call's dozen
``set`` / ``export`` applications cost more of its CPU than the route (bench/realfs.py). So each
run of variables is folded into one ``multiset``, with ``export_vars`` written as ``export``
would have written it.
"""

from __future__ import annotations

import pytest

from fsguard.rules import customers
from fsguard.call.call import fold_variables
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle


def items(multiset_arg: str) -> list[str]:
    assert multiset_arg.startswith("^^")
    return multiset_arg[3:].split(multiset_arg[2])


def test_a_run_of_sets_and_exports_becomes_one_multiset_before_the_application_after_it():
    export_vars: list[str] = []
    out = fold_variables([("export", "fsguard_risk=10"), ("set", "RECORD_STEREO=true"),
                          ("export", "fsguard_vip=false"), ("record_session", "/r/a.wav"),
                          ("transfer", "default XML queues")], export_vars)

    assert [app for app, _ in out] == ["multiset", "record_session", "transfer"]
    assert set(items(out[0][1])) == {"fsguard_risk=10", "RECORD_STEREO=true", "fsguard_vip=false",
                                     "export_vars=fsguard_risk,fsguard_vip"}
    assert export_vars == ["fsguard_risk", "fsguard_vip"]


def test_export_vars_keeps_the_dialplans_names_and_earlier_flushes():
    export_vars = ["sip_h_X-Account"]  # what the dialplan exported before fsguard
    fold_variables([("export", "fsguard_risk=0"), ("pre_answer", "")], export_vars)
    out = fold_variables([("export", "fsguard_risk=30"), ("export", "fsguard_region=US-NY"),
                          ("transfer", "default XML queues")], export_vars)

    assert "export_vars=sip_h_X-Account,fsguard_risk,fsguard_region" in items(out[0][1])
    assert "fsguard_risk=30" in items(out[0][1])


def test_variables_after_a_recording_join_the_fold_before_it_unless_the_recording_reads_them():
    out = fold_variables([("set", "RECORD_STEREO=true"), ("record_session", "/r/a.wav"), ("export", "fsguard_vip=true"),
                          ("set", "cc_base_score=600"), ("callcenter", "vip@default")], [])
    assert [app for app, _ in out] == ["multiset", "record_session", "callcenter"]
    assert "cc_base_score=600" in items(out[0][1]) and "RECORD_STEREO=true" in items(out[0][1])

    out = fold_variables([("set", "a=1"), ("set", "b=2"), ("record_session", "/r/a.wav"), ("set", "RECORD_STEREO=false"),
                          ("transfer", "default XML queues")], [])
    assert out[1:] == [("record_session", "/r/a.wav"), ("set", "RECORD_STEREO=false"), ("transfer", "default XML queues")]


def test_a_later_value_replaces_an_earlier_one_in_the_fold():
    out = fold_variables([("set", "a=1"), ("set", "b=2"), ("set", "a=3")], [])
    assert sorted(items(out[0][1])) == ["a=3", "b=2"]


def test_the_delimiter_is_one_no_value_contains():
    out = fold_variables([("set", "cc_export_vars=x,y"), ("set", "region=A|B"), ("set", "name=~tilde")], [])
    app, arg = out[0]
    assert app == "multiset" and arg[2] not in "|~"
    assert items(arg) == ["cc_export_vars=x,y", "region=A|B", "name=~tilde"]


def test_values_no_delimiter_can_split_are_sent_one_by_one():
    values = [("set", f"v{i}={'|~`^;#'}") for i in range(2)]
    assert fold_variables(values, []) == values


def test_a_single_variable_and_nolocal_exports_are_sent_as_written():
    export_vars: list[str] = []
    assert fold_variables([("export", "a=1"), ("answer", "")], export_vars) == [("export", "a=1"), ("answer", "")]
    assert export_vars == ["a"]  # as FreeSWITCH's export leaves it, for the next fold
    assert fold_variables([("set", "a=1"), ("answer", "")], []) == [("set", "a=1"), ("answer", "")]
    nolocal = ("export", "nolocal:execute_on_answer=playback ivr/consent.wav")
    assert fold_variables([nolocal, ("answer", "")], []) == [nolocal, ("answer", "")]


@pytest.mark.parametrize("start, apps", [
    ("bridge", ["multiset", "callcenter"]),                     # record_session is FreeSWITCH's to run at the bridge
    ("route", ["multiset", "record_session", "callcenter"]),
])
def test_a_routed_call_through_the_whole_chain_takes_two_applications_three_recording_from_the_route(
        settings, start_guard, db, start, apps):
    """Screening, outbound, verification, recording and routing all set variables; FreeSWITCH
    runs one multiset (and record_session, when the recording starts with the route) and the
    route, and the agent's leg still gets every export."""
    settings.policy.stages = ["screening", "outbound", "verification", "recording", "routing"]
    settings.recording.consent = False
    settings.recording.start = start
    with db.begin() as session:
        customers.save(session, ["+12125550123"], customers.normalise_customer(
            {"name": "Ada", "account_id": "A-1001", "vip": True}))
    guard = start_guard(settings)
    result = FakeFreeSWITCH(guard.address, time_scale=0.005).call(Caller(ani="12125550123", dnis="8005550100"))
    settle(guard)

    assert result.ok and result.outcome == "routed", result.violations
    assert [app for app, _ in result.apps] == apps
    assert ("execute_on_pre_bridge_fsguard_recording" in result.variables) == (start == "bridge")
    assert result.exported["fsguard_customer_id"] == "A-1001" and result.exported["fsguard_vip"] == "true"
    assert result.variables["RECORD_STEREO"] == "true"
    assert set(result.variables["export_vars"].split(",")) == set(result.exported)
    assert "fsguard_route_rule" in result.variables["cc_export_vars"].split(",")
