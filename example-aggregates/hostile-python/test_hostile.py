"""Native tests of the hostile guest's well-behaved commands (and that `raise` really raises).

`spin` and `hog` never return by design; they are exercised through the host, with fuel and
memory limits, not here.
"""

import importlib.util
import json
import os

import pytest

from aggregate_sdk import Codec, Event
from aggregate_sdk.testing import given
from hostile import Hostile


def test_init_is_an_empty_object():
    assert Codec(Hostile).init() == "{}"


def test_ok_is_done():
    given(Hostile).when("ok").then([Event("done", {})]).then_state({})


@pytest.mark.parametrize("size", [0, 1, 1000, 1 << 20])
def test_echo_returns_a_string_of_the_requested_size(size):
    outcome = given(Hostile).when("echo", {"size": size})
    outcome.then([Event("echoed", {"data": "x" * size})])
    (raw,) = outcome.raw_events
    assert len(json.loads(raw.payload)["data"].encode()) == size
    assert len(raw.payload) == size + len('{"data":""}')


def test_echo_needs_a_non_negative_integer_size():
    given(Hostile).when("echo", {}).then_invalid("missing field `size`")
    given(Hostile).when("echo", {"size": "big"}).then_invalid("field `size`")
    given(Hostile).when("echo", {"size": -1}).then_invalid("must not be negative")


def test_refusals_on_request():
    given(Hostile).when("reject").then_rejected("rejected on request")
    given(Hostile).when("invalid").then_invalid("invalid on request")
    given(Hostile).when("explode").then_invalid("unknown command type `explode`")
    given(Hostile).when("ok", "[]").then_invalid("must be a JSON object")


def test_raise_escapes_as_an_uncaught_exception():
    with pytest.raises(RuntimeError, match="boom"):
        given(Hostile).when("raise")


def test_apply_keeps_the_empty_state():
    given(Hostile, [Event("done", {}), Event("echoed", {"data": "x"}), Event("whatever")]).when(
        "ok"
    ).then_state({})


def test_app_module_exports_the_component():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
    spec = importlib.util.spec_from_file_location("hostile_app", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    world = app.WitWorld()
    command = app.WitWorld.bindings.Command("c", "ok", "{}", "t", "a", [])
    events = world.decide(world.init(), command)
    assert [(e.event_type, e.schema_version, e.payload) for e in events] == [("done", 1, "{}")]
