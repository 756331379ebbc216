"""Given/when/then tests of the `__NAME__` aggregate (no WebAssembly): `python -m pytest`."""

import pytest

from aggregate_sdk import ApplyError, Event, Invalid, Rejected
from aggregate_sdk.testing import given

from app import MAX_VALUE, Counter, State


def test_add_by_default_one():
    given(Counter).when("add").then([Event("added", {"by": 1})]).then_state(State(1))


def test_add_adds_up_but_never_past_the_largest_value():
    (
        given(Counter, [Event("added", {"by": 2})])
        .when("add", {"by": 3})
        .then([Event("added", {"by": 3})])
        .then_state({"value": 5})
    )
    (
        given(Counter, [Event("added", {"by": MAX_VALUE - 1})])
        .when("add")
        .then([Event("added", {"by": 1})])
        .then_state(State(9223372036854775807))
    )
    given(Counter, [Event("added", {"by": MAX_VALUE})]).when("add", {"by": 1}).then_error(
        Rejected("counter would overflow: value 9223372036854775807, adding 1")
    )
    overflow = "counter would overflow: value 9223372036854775807, added 1"
    with pytest.raises(ApplyError, match=overflow):
        given(Counter, [Event("added", {"by": MAX_VALUE}), Event("added", {"by": 1})])


def test_by_must_be_a_positive_integer():
    given(Counter).when("add", {"by": 0}).then_error(Invalid("by must be positive, got 0"))
    given(Counter).when("add", {"by": "two"}).then_invalid("field `by`")


def test_reset():
    given(Counter, [Event("added", {"by": 4})]).when("reset").then(
        [Event("reset")]
    ).then_state(State(0))
    given(Counter).when("reset").then_error(Rejected("counter is already 0"))


def test_unknown_commands_are_invalid():
    given(Counter).when("decrement").then_invalid("unknown command type `decrement`")
