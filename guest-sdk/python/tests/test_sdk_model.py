"""Command field getters, events and decide errors."""

import pytest

from aggregate_sdk import Command, Event, Invalid, Rejected, UnknownEvent
from aggregate_sdk.model import describe


def cmd(**payload):
    return Command("pay", payload)


def invalid_message(call):
    with pytest.raises(Invalid) as refused:
        call()
    return refused.value.message


def test_getters_return_fields_of_the_right_type():
    c = cmd(n=3, s="x", b=False, f=1.5, l=[1], d={"k": 1}, i=-2)
    assert c.int("n") == 3
    assert c.int("i") == -2
    assert c.str("s") == "x"
    assert c.bool("b") is False
    assert c.number("f") == 1.5
    assert c.number("n") == 3
    assert c.list("l") == [1]
    assert c.dict("d") == {"k": 1}
    assert c.get("s") == "x"
    assert c.get("absent", 9) == 9


def test_missing_fields_are_invalid_naming_the_field():
    for getter in ("int", "str", "bool", "number", "list", "dict"):
        message = invalid_message(lambda: getattr(cmd(), getter)("amount"))
        assert message == "invalid `pay` command: missing field `amount`"


def test_defaults_make_fields_optional():
    assert cmd().int("n", default=7) == 7
    assert cmd(n=None).int("n", default=7) == 7
    assert cmd().str("s", default=None) is None
    assert cmd(n=2).int("n", default=7) == 2


@pytest.mark.parametrize(
    "getter,value,expected",
    [
        ("int", "ten", 'expected integer, got string "ten"'),
        ("int", 1.5, "expected integer, got float 1.5"),
        ("int", 2.0, "expected integer, got float 2.0"),
        ("int", True, "expected integer, got boolean true"),
        ("int", None, "expected integer, got null"),
        ("int", [1], "expected integer, got array"),
        ("number", False, "expected number, got boolean false"),
        ("number", "1", 'expected number, got string "1"'),
        ("str", 7, "expected string, got integer 7"),
        ("str", {}, "expected string, got object"),
        ("bool", 1, "expected boolean, got integer 1"),
        ("list", "abc", 'expected array, got string "abc"'),
        ("dict", [], "expected object, got array"),
    ],
)
def test_wrong_types_are_invalid_naming_field_and_type(getter, value, expected):
    message = invalid_message(lambda: getattr(cmd(amount=value), getter)("amount"))
    assert message == f"invalid `pay` command: invalid type for field `amount`: {expected}"


def test_int_is_bounded_to_int64():
    assert cmd(n=2**63 - 1).int("n") == 2**63 - 1
    assert cmd(n=-(2**63)).int("n") == -(2**63)
    for n in (2**63, -(2**63) - 1, 10**30):
        message = invalid_message(lambda: cmd(n=n).int("n"))
        assert message.startswith("invalid `pay` command: invalid value for field `n`")
        assert "int64" in message


def test_describe_shortens_long_strings():
    assert describe("a" * 100) == 'string "' + "a" * 40 + '..."'
    assert describe('say "hi"') == 'string "say \\"hi\\""'


def test_unknown_and_custom_errors():
    assert Command("close").unknown() == Invalid("unknown command type `close`")
    assert Command("pay").invalid("nope") == Invalid("invalid `pay` command: nope")
    assert isinstance(Event("x").unknown(), UnknownEvent)
    assert str(Event("zapped").unknown()) == "unknown event type `zapped`"


def test_command_defaults():
    c = Command("ping")
    assert (c.payload, c.id, c.tenant_id, c.aggregate_id, c.metadata) == ({}, "", "", "", {})


def test_decide_errors_compare_by_kind_and_message():
    assert Rejected("x") == Rejected("x")
    assert Rejected("x") != Invalid("x")
    assert Rejected("x") != Rejected("y")
    assert Invalid("m").message == "m"
    assert repr(Invalid("m")) == "Invalid('m')"
    assert len({Rejected("x"), Rejected("x"), Invalid("x")}) == 2


def test_event_equality():
    assert Event("a", {"n": 1}) == Event("a", {"n": 1})
    assert Event("a") == Event("a", {})
    assert Event("a", {"n": 1}) != Event("a", {"n": 2})
    assert Event("a") != Event("b")
    # Schema versions count only when both sides have one.
    assert Event("a", schema_version=2) == Event("a")
    assert Event("a", schema_version=2) != Event("a", schema_version=1)
    assert repr(Event("a", {"n": 1}, schema_version=3)) == "Event('a', {'n': 1}, schema_version=3)"
