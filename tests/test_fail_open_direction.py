"""Failing open follows the call's direction, end to end through the real socket (the simulator
plays FreeSWITCH), on SQLite and PostgreSQL.

An inbound call that fsguard cannot decide goes to ``policy.fail_open_route`` (the inbound queue);
an agent's outbound call goes where it was going: dialled with ``policy.fail_open_route_outbound``
("dial" = ``outbound.dial_target``, as the outbound stage dials a number it lets through). The
three places that let a call go undecided are covered: a stage that fails (``Pipeline._failure``),
over capacity (``App.refuse``) and the end of the drain at shutdown (``App._shutdown``).
"""

from __future__ import annotations

import gevent
import pytest

from fsguard.store import records
from fsguard.service.app import App
from fsguard.call.call import direction_of
from fsguard.call.failopen import fail_open_for
from fsguard.config import ConfigError, Settings, load_settings
from fsguard.call.pipeline import STAGES, Pipeline, Stage, Verdict
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle, wait_for

NUMBER = "+15557654321"
DIALLED = f"bridge sofia/gateway/carrier/{NUMBER}"
QUEUE = "transfer default XML queues"


class Explodes(Stage):
    name = "explodes"

    def run(self, call):
        raise RuntimeError("a bug in a stage")


class Slow(Stage):
    """A prompt that outlasts the drain: the call is still being decided at shutdown."""

    name = "slow"

    def run(self, call):
        call.play("ivr/long_prompt.wav")
        return Verdict.carry_on()


@pytest.fixture(autouse=True)
def test_stages(monkeypatch):
    monkeypatch.setitem(STAGES, "explodes", f"{__name__}:Explodes")
    monkeypatch.setitem(STAGES, "slow", f"{__name__}:Slow")


def agent(dnis: str = NUMBER, **kw) -> Caller:
    """An agent at extension 1001 dialling out, marked outbound by the dialplan."""
    fields = {"ani": "1001", "name": "Agent Smith", "dnis": dnis, "context": "agents",
              "variables": {"fsguard_direction": "outbound"}, "talk_time": 5.0, "ring_time": 1.0}
    fields.update(kw)
    return Caller(**fields)


def simulator(guard, time_scale: float = 0.005) -> FakeFreeSWITCH:
    return FakeFreeSWITCH(guard.address, time_scale=time_scale)


def dialled(result, number: str = NUMBER) -> bool:
    return (result.outcome == "routed" and result.route == f"bridge sofia/gateway/carrier/{number}"
            and ("bridge", f"sofia/gateway/carrier/{number}") in result.apps
            and not any(app == "transfer" for app, _ in result.apps))


# ------------------------------------------------------------------ a stage fails


@pytest.fixture
def failing(settings):
    settings.policy.stages = ["explodes", "outbound", "routing"]
    return settings


def test_outbound_call_fails_open_to_its_own_route_when_a_stage_fails(failing, start_guard, db):
    guard = start_guard()
    result = simulator(guard).call(agent())
    assert dialled(result), result
    assert result.ok, result.violations
    settle(guard)
    call = records.find_call(db, result.uuid)
    assert (call.direction, call.outcome, call.action) == ("outbound", "failed_open", DIALLED)
    (error,) = [v for v in call.verdicts if v.outcome == "error"]
    assert error.stage == "explodes" and "RuntimeError" in error.details["error"]


def test_inbound_call_still_fails_open_to_the_queue(failing, start_guard, db):
    guard = start_guard()
    result = simulator(guard).call(Caller(ani="12125550100", dnis="5000"))
    assert result.outcome == "routed" and result.route == QUEUE, result
    assert not any(app == "bridge" for app, _ in result.apps)
    settle(guard)
    call = records.find_call(db, result.uuid)
    assert (call.direction, call.outcome, call.action) == ("inbound", "failed_open", QUEUE)


def test_a_call_from_an_outbound_context_fails_open_dialled(failing, start_guard, db):
    """No fsguard_direction variable: node.outbound_contexts decides, as for Call.direction."""
    failing.node.outbound_contexts = ["agents"]
    guard = start_guard()
    result = simulator(guard).call(agent("5557654321", variables={}))
    assert dialled(result), result
    settle(guard)
    assert records.find_call(db, result.uuid).direction == "outbound"


def test_the_dialplan_variable_overrides_the_context(failing, start_guard, db):
    """A call in an outbound context that the dialplan marks inbound fails open to the queue."""
    failing.node.outbound_contexts = ["agents"]
    guard = start_guard()
    result = simulator(guard).call(agent(variables={"fsguard_direction": "inbound"}))
    assert result.outcome == "routed" and result.route == QUEUE, result


def test_the_outbound_route_is_configurable(failing, start_guard, db):
    failing.policy.fail_open_route_outbound = "transfer {digits} XML direct"
    failing.validate()
    guard = start_guard()
    result = simulator(guard).call(agent("(555) 765-4321"))
    assert result.route == "transfer 15557654321 XML direct", result
    inbound = simulator(guard).call(Caller())
    assert inbound.route == QUEUE


def test_a_dialled_string_that_is_not_a_number_is_never_put_in_a_dial_string(failing, start_guard, db):
    guard = start_guard()
    result = simulator(guard).call(agent("1001@evil.example;transport=tcp"))
    assert result.outcome == "hungup" and result.hangup_cause == "INVALID_NUMBER_FORMAT", result
    assert not any(app in ("bridge", "transfer") for app, _ in result.apps)
    settle(guard)
    assert records.find_call(db, result.uuid).outcome == "failed_open"


def test_an_extension_of_plain_digits_is_dialled_as_it_is(failing, start_guard):
    guard = start_guard()
    result = simulator(guard).call(agent("4711"))
    assert dialled(result, "4711"), result


def test_failing_closed_still_hangs_up_an_outbound_call(failing, start_guard):
    failing.policy.on_error = "closed"
    guard = start_guard()
    result = simulator(guard).call(agent())
    assert result.outcome == "hungup" and result.hangup_cause == "NORMAL_TEMPORARY_FAILURE", result
    assert not any(app == "bridge" for app, _ in result.apps)


# ------------------------------------------------------------------ over capacity


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_over_capacity_a_call_gets_its_directions_fail_open_route(direction, settings, start_guard):
    settings.esl.max_calls = 2
    guard = start_guard()
    fs = simulator(guard)
    held = [fs.spawn(Caller(talk_time=200)) for _ in range(2)]
    wait_for(lambda: len(guard.app.held) == 2)
    refused = fs.call(agent() if direction == "outbound" else Caller())
    if direction == "outbound":
        assert dialled(refused), refused
    else:
        assert refused.outcome == "routed" and refused.route == QUEUE, refused
    assert refused.ok, refused.violations
    metrics = guard.app.metrics
    assert metrics.over_capacity.labels(reason="over_capacity")._value.get() == 1
    assert metrics.calls.labels(direction=direction, outcome="over_capacity")._value.get() == 1
    action = "bridge" if direction == "outbound" else "transfer"
    assert metrics.call_actions.labels(direction=direction, action=action)._value.get() == 1
    for g in held:
        assert g.get(timeout=10).outcome == "routed"


def test_over_capacity_an_outbound_context_call_is_dialled(settings, start_guard):
    settings.esl.max_calls = 1
    settings.node.outbound_contexts = ["agents"]
    guard = start_guard()
    fs = simulator(guard)
    held = fs.spawn(Caller(talk_time=200))
    wait_for(lambda: len(guard.app.held) == 1)
    refused = fs.call(agent("5557654321", variables={}))
    assert dialled(refused), refused
    assert held.get(timeout=10).outcome == "routed"


# ------------------------------------------------------------------ shutdown


def shut_down_while_deciding(guard, caller: Caller):
    """Start a call, stop fsguard while the call is still being decided, return its result."""
    fs = simulator(guard, time_scale=0.01)
    pending = fs.spawn(caller)
    wait_for(lambda: len(guard.app.deciding) == 1)
    guard.server.stop(drain=0.2)
    return pending.get(timeout=10)


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_a_call_still_in_a_stage_at_shutdown_takes_its_directions_route(direction, settings, start_guard, db):
    settings.policy.stages = ["slow", "outbound", "routing"]
    guard = start_guard()
    prompts = {"ivr/long_prompt.wav": 500.0}
    caller = agent(playback_durations=prompts) if direction == "outbound" else Caller(playback_durations=prompts)
    result = shut_down_while_deciding(guard, caller)
    if direction == "outbound":
        assert dialled(result), result
    else:
        assert result.outcome == "routed" and result.route == QUEUE, result
    call = records.find_call(db, result.uuid)
    assert call.outcome == "failed_open" and [v.code for v in call.verdicts] == ["error.shutdown"]


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_at_shutdown_before_the_call_is_built_the_route_comes_from_the_channel_data(direction, settings,
                                                                                  start_guard, monkeypatch):
    """fsguard is stopped between the connect reply and building the Call: ``_shutdown`` has only
    the channel data to tell an agent's call from a caller's."""
    def stuck(self, session):
        gevent.sleep(600)

    monkeypatch.setattr(App, "_call", stuck)
    guard = start_guard()
    result = shut_down_while_deciding(guard, agent() if direction == "outbound" else Caller())
    if direction == "outbound":
        assert dialled(result), result
    else:
        assert result.outcome == "routed" and result.route == QUEUE, result
    assert guard.app.metrics.over_capacity.labels(reason="shutdown")._value.get() == 1


def test_at_shutdown_with_the_call_built_but_not_decided_its_direction_is_used(settings, start_guard,
                                                                              monkeypatch):
    """Stopped after the Call was built but before the pipeline returned (outside its stages)."""
    settings.node.outbound_contexts = ["agents"]

    def stuck(self, call):
        gevent.sleep(600)

    monkeypatch.setattr(Pipeline, "decide", stuck)
    guard = start_guard()
    result = shut_down_while_deciding(guard, agent(variables={}))
    assert dialled(result), result


# ------------------------------------------------------------------ the setting and the rule


def test_direction_of_is_calls_rule():
    assert direction_of({"variable_fsguard_direction": "OUTBOUND", "Caller-Context": "public"}) == "outbound"
    assert direction_of({"variable_fsguard_direction": "inbound", "Caller-Context": "default"}) == "inbound"
    assert direction_of({"variable_fsguard_direction": "sideways", "Caller-Context": "default"}) == "outbound"
    assert direction_of({"Caller-Context": "agents"}, ["agents"]) == "outbound"
    assert direction_of({"Caller-Context": "public"}, ["agents"]) == "inbound"
    assert direction_of({}) == "inbound"


def test_the_default_dials_with_outbound_dial_target():
    s = Settings()
    assert s.policy.fail_open_route_outbound == "dial"
    s.outbound.dial_target = "bridge sofia/gateway/backup/{digits}"
    s.validate()
    assert str(fail_open_for(s.policy, "outbound", NUMBER, s.outbound)) == "bridge sofia/gateway/backup/15557654321"
    assert str(fail_open_for(s.policy, "inbound", NUMBER, s.outbound)) == QUEUE
    s.node.default_region = "GB"
    assert str(fail_open_for(s.policy, "outbound", "020 7946 0000", s.outbound, "GB")) == \
        "bridge sofia/gateway/backup/442079460000"


@pytest.mark.parametrize("value,message", [
    ("transfer {agent} XML direct", "unknown placeholder 'agent'"),
    ("hangup NORMAL_CLEARING", "expected '<transfer|callcenter|bridge> <argument>'"),
    ("dial please", "expected '<transfer|callcenter|bridge> <argument>'"),
    ("bridge sofia/gateway/x/{number}\nhangup", "line breaks"),
])
def test_a_bad_outbound_route_is_refused_at_start_naming_the_key(value, message):
    with pytest.raises(ConfigError, match="policy.fail_open_route_outbound") as err:
        load_settings(env={"FSGUARD_POLICY_FAIL_OPEN_ROUTE_OUTBOUND": value})
    assert message in str(err.value)


def test_the_outbound_route_can_be_set_from_the_environment():
    settings = load_settings(env={"FSGUARD_POLICY_FAIL_OPEN_ROUTE_OUTBOUND": "transfer {digits} XML direct"})
    assert str(fail_open_for(settings.policy, "outbound", NUMBER, settings.outbound)) == "transfer 15557654321 XML direct"
