"""`export`: the WitWorld class maps SDK values and errors to the WIT shapes (natively, against
the stand-in bindings, which have the generated classes' names and fields)."""

import pytest

from aggregate_sdk import Aggregate, Event, Invalid, Rejected, export


class Box(Aggregate):
    schema_versions = {"put": 4}

    def init(self):
        return {"items": []}

    def decide(self, state, command):
        if command.type == "put":
            return [Event("put", {"item": command.str("item")}), Event("counted")]
        if command.type == "full":
            raise Rejected("box is full")
        if command.type == "crash":
            raise KeyError("bug")
        raise command.unknown()

    def apply(self, state, event):
        if event.type == "put":
            state["items"].append(event.payload["item"])
        elif event.type != "counted":
            raise event.unknown()
        return state


@pytest.fixture
def world():
    return export(Box)()


def command(wit, command_type, payload="{}"):
    return wit.Command("id-1", command_type, payload, "tenant", "agg", [("k", "v")])


def test_outside_a_component_the_stand_ins_are_used():
    wit = export(Box).bindings
    assert wit.native
    assert wit.Rejected.__name__ == "DecideError_Rejected"
    assert wit.Invalid.__name__ == "DecideError_Invalid"


def test_init_decide_apply(world):
    wit = type(world).bindings
    assert world.init() == '{"items":[]}'
    events = world.decide(world.init(), command(wit, "put", '{"item": "pen"}'))
    assert events == [wit.Event("put", 4, '{"item":"pen"}'), wit.Event("counted", 1, "{}")]
    assert all(isinstance(e, wit.Event) for e in events)
    assert world.apply(world.init(), events) == '{"items":["pen"]}'


def test_refusals_become_err_of_the_decide_error_variant(world):
    wit = type(world).bindings
    with pytest.raises(wit.Err) as refused:
        world.decide(world.init(), command(wit, "full"))
    assert refused.value.value == wit.Rejected("box is full")
    with pytest.raises(wit.Err) as refused:
        world.decide(world.init(), command(wit, "put", "[]"))
    assert refused.value.value == wit.Invalid("payload of `put` command must be a JSON object")
    with pytest.raises(wit.Err) as refused:
        world.decide(world.init(), command(wit, "put"))
    assert refused.value.value == wit.Invalid("invalid `put` command: missing field `item`")


def test_apply_failures_become_err_strings(world):
    wit = type(world).bindings
    with pytest.raises(wit.Err) as failed:
        world.apply(world.init(), [wit.Event("melted", 1, "{}")])
    assert failed.value.value == (
        "cannot apply `melted` event (schema version 1): unknown event type `melted`"
    )


def test_bugs_escape_uncaught(world):
    wit = type(world).bindings
    with pytest.raises(KeyError):
        world.decide(world.init(), command(wit, "crash"))


def test_a_base_decide_error_is_a_rejection():
    from aggregate_sdk import DecideError

    class Odd(Box):
        def decide(self, state, command):
            raise DecideError("plain")

    world = export(Odd())()
    wit = type(world).bindings
    with pytest.raises(wit.Err) as refused:
        world.decide("{}", command(wit, "x"))
    assert refused.value.value == wit.Rejected("plain")
    assert not isinstance(refused.value.value, wit.Invalid)


def test_invalid_is_not_a_rejection():
    assert not isinstance(Invalid("x"), Rejected)
