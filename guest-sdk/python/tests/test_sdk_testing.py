"""The given/when/then helper: it passes when it should and fails with both sides when not."""

import pytest

from aggregate_sdk import Aggregate, Event, Invalid, RawEvent, Rejected
from aggregate_sdk.testing import given


class Lamp(Aggregate):
    schema_versions = {"switched": 2}

    def init(self):
        return {"on": False, "switches": 0}

    def decide(self, state, command):
        if command.type == "switch":
            on = command.bool("on")
            if on == state["on"]:
                raise Rejected(f"already {'on' if on else 'off'}")
            return [Event("switched", {"on": on})]
        if command.type == "whoami":
            return [Event("me", {"tenant": command.tenant_id, "meta": command.metadata})]
        raise command.unknown()

    def apply(self, state, event):
        if event.type == "switched":
            state["on"] = event.payload["on"]
            state["switches"] += 1
            return state
        raise event.unknown()

    def upcast(self, event_type, schema_version, payload):
        if event_type == "switched" and schema_version == 1:
            return {"on": payload["state"] == "on"}
        return payload


ON = Event("switched", {"on": True})


def test_then_and_then_state_pass():
    outcome = given(Lamp).when("switch", {"on": True}).then([ON]).then_state(
        {"on": True, "switches": 1}
    )
    assert outcome.events == [Event("switched", {"on": True}, schema_version=2)]
    assert outcome.state == {"on": True, "switches": 1}


def test_given_events_are_applied_in_order():
    scenario = given(Lamp, [ON, Event("switched", {"on": False}), ON])
    assert scenario.state == {"on": True, "switches": 3}


def test_given_old_schema_versions_are_upcast():
    scenario = given(Lamp, [Event("switched", {"state": "on"}, schema_version=1)])
    assert scenario.state == {"on": True, "switches": 1}
    scenario = given(Lamp, [RawEvent("switched", 1, '{"state":"off"}'), ("switched", {"on": True})])
    assert scenario.state == {"on": True, "switches": 2}


def test_then_checks_schema_versions_when_given():
    given(Lamp).when("switch", {"on": True}).then([Event("switched", {"on": True}, schema_version=2)])
    with pytest.raises(AssertionError):
        given(Lamp).when("switch", {"on": True}).then(
            [Event("switched", {"on": True}, schema_version=1)]
        )


def test_then_fails_on_other_events():
    with pytest.raises(AssertionError, match="produced") as failed:
        given(Lamp).when("switch", {"on": True}).then([Event("switched", {"on": False})])
    assert "'on': True" in str(failed.value) and "'on': False" in str(failed.value)
    with pytest.raises(AssertionError):
        given(Lamp).when("switch", {"on": True}).then([])
    with pytest.raises(AssertionError):
        given(Lamp).when("switch", {"on": True}).then([ON, ON])


def test_then_fails_when_decide_refused():
    with pytest.raises(AssertionError, match="already on"):
        given(Lamp, [ON]).when("switch", {"on": True}).then([ON])


def test_then_state_fails_on_another_state():
    with pytest.raises(AssertionError, match="the state is"):
        given(Lamp).when("switch", {"on": True}).then_state({"on": True, "switches": 2})


def test_then_state_after_a_refusal_is_the_given_state():
    given(Lamp, [ON]).when("switch", {"on": True}).then_state({"on": True, "switches": 1})


def test_error_checks():
    outcome = given(Lamp, [ON]).when("switch", {"on": True})
    outcome.then_rejected().then_rejected("already").then_error(Rejected("already on"))
    with pytest.raises(AssertionError):
        outcome.then_rejected("off")
    with pytest.raises(AssertionError):
        outcome.then_invalid()
    with pytest.raises(AssertionError):
        outcome.then_error(Invalid("already on"))
    with pytest.raises(AssertionError):
        outcome.then_error(Rejected("already"))

    invalid = given(Lamp).when("switch", {"on": "yes"})
    invalid.then_invalid("invalid type for field `on`: expected boolean")
    with pytest.raises(AssertionError):
        invalid.then_rejected()

    with pytest.raises(AssertionError, match="expected Rejected"):
        given(Lamp).when("switch", {"on": True}).then_rejected()


def test_raw_and_non_object_payloads():
    given(Lamp).when("switch", '{"on": true}').then([ON])
    given(Lamp).when("switch", "[]").then_invalid("must be a JSON object")
    given(Lamp).when("switch", [1, 2]).then_invalid("must be a JSON object")
    given(Lamp).when("switch", "{").then_invalid("is not JSON")
    given(Lamp).when("nope").then_invalid("unknown command type `nope`")


def test_command_context_reaches_decide():
    given(Lamp).when("whoami", tenant_id="acme", metadata={"k": "v"}).then(
        [Event("me", {"tenant": "acme", "meta": {"k": "v"}})]
    )
