"""Given/when/then tests of the Python bank account: every rule and message of the Rust one."""

import importlib.util
import os

import pytest

from aggregate_sdk import ApplyError, Codec, Event, Invalid, RawEvent, Rejected
from aggregate_sdk.testing import given
from bank_account import BankAccount

OPENED = Event("opened", {"owner": "alice"})


def account(balance, owner="alice", opened=True):
    return {"opened": opened, "owner": owner, "balance": balance}


def test_open_a_new_account():
    (
        given(BankAccount)
        .when("open", {"owner": "alice"})
        .then([OPENED])
        .then_state(account(0))
    )


def test_opening_twice_is_rejected():
    (
        given(BankAccount, [OPENED])
        .when("open", {"owner": "bob"})
        .then_error(Rejected("account is already open (owner alice)"))
        .then_state(account(0))
    )


@pytest.mark.parametrize("owner", ["", " ", "\t\n "])
def test_owner_must_not_be_empty(owner):
    given(BankAccount).when("open", {"owner": owner}).then_error(
        Invalid("owner must not be empty")
    )


def test_emptiness_is_checked_before_the_open_check():
    given(BankAccount, [OPENED]).when("open", {"owner": " "}).then_error(
        Invalid("owner must not be empty")
    )


def test_deposit_increases_the_balance():
    (
        given(BankAccount, [OPENED, Event("deposited", {"amount": 50})])
        .when("deposit", {"amount": 25})
        .then([Event("deposited", {"amount": 25})])
        .then_state(account(75))
    )


def test_deposit_to_an_unopened_account_is_rejected():
    given(BankAccount).when("deposit", {"amount": 10}).then_error(
        Rejected("account is not open")
    )


def test_withdraw_from_an_unopened_account_is_rejected():
    given(BankAccount).when("withdraw", {"amount": 10}).then_error(
        Rejected("account is not open")
    )


@pytest.mark.parametrize("amount", [0, -5, -1])
@pytest.mark.parametrize("command_type", ["deposit", "withdraw"])
def test_amounts_must_be_positive(command_type, amount):
    given(BankAccount, [OPENED, Event("deposited", {"amount": 100})]).when(
        command_type, {"amount": amount}
    ).then_error(Invalid(f"amount must be positive, got {amount}"))


@pytest.mark.parametrize("command_type", ["deposit", "withdraw"])
def test_positivity_is_checked_before_the_open_check(command_type):
    given(BankAccount).when(command_type, {"amount": 0}).then_error(
        Invalid("amount must be positive, got 0")
    )


def test_withdraw_within_the_balance():
    (
        given(BankAccount, [OPENED, Event("deposited", {"amount": 100})])
        .when("withdraw", {"amount": 100})
        .then([Event("withdrawn", {"amount": 100})])
        .then_state(account(0))
    )


def test_withdraw_beyond_the_balance_is_rejected():
    (
        given(
            BankAccount,
            [OPENED, Event("deposited", {"amount": 100}), Event("withdrawn", {"amount": 30})],
        )
        .when("withdraw", {"amount": 71})
        .then_rejected("insufficient funds")
        .then_error(Rejected("insufficient funds: balance 70, requested 71"))
        .then_state(account(70))
    )


def test_the_demo_story():
    codec = Codec(BankAccount)
    state = codec.init()
    outcomes = []
    for command_type, payload in [
        ("open", '{"owner":"Ada"}'),
        ("deposit", '{"amount":100}'),
        ("withdraw", '{"amount":30}'),
        ("withdraw", '{"amount":500}'),
        ("deposit", '{"amount":-1}'),
        ("deposit", '{"amount":12}'),
    ]:
        try:
            events = codec.decide(state, command_type, payload)
        except (Rejected, Invalid) as e:
            outcomes.append(e)
            continue
        state = codec.apply(state, events)
    assert outcomes == [
        Rejected("insufficient funds: balance 70, requested 500"),
        Invalid("amount must be positive, got -1"),
    ]
    assert state == '{"opened":true,"owner":"Ada","balance":82}'


def test_missing_amount_is_invalid():
    given(BankAccount, [OPENED]).when("deposit", {}).then_invalid("missing field `amount`")


def test_missing_owner_is_invalid():
    given(BankAccount).when("open", {}).then_invalid("missing field `owner`")


@pytest.mark.parametrize("amount", ["ten", 1.5, True, None, [1], {"n": 1}, 100.0])
@pytest.mark.parametrize("command_type", ["deposit", "withdraw"])
def test_amount_of_the_wrong_type_is_invalid(command_type, amount):
    given(BankAccount, [OPENED]).when(command_type, {"amount": amount}).then_invalid(
        "invalid type for field `amount`: expected integer"
    )


def test_amount_beyond_int64_is_invalid():
    given(BankAccount, [OPENED]).when("deposit", '{"amount": 9223372036854775808}').then_invalid(
        "field `amount`"
    )
    given(BankAccount, [OPENED]).when("deposit", {"amount": 9223372036854775807}).then(
        [Event("deposited", {"amount": 9223372036854775807})]
    )


def test_owner_of_the_wrong_type_is_invalid():
    given(BankAccount).when("open", {"owner": 7}).then_invalid(
        "invalid type for field `owner`: expected string, got integer 7"
    )


@pytest.mark.parametrize("payload", ["[]", '"x"', "7", "null"])
def test_payload_must_be_a_json_object(payload):
    given(BankAccount, [OPENED]).when("deposit", payload).then_invalid("must be a JSON object")


def test_payload_must_be_json():
    given(BankAccount, [OPENED]).when("deposit", "{amount").then_invalid(
        "payload of `deposit` command is not JSON"
    )


def test_unknown_command_is_invalid():
    outcome = given(BankAccount, [OPENED]).when("close", {})
    outcome.then_invalid("unknown").then_invalid("close")


def test_commands_carry_extra_fields_without_harm():
    given(BankAccount, [OPENED]).when("deposit", {"amount": 5, "note": "x", "type": "y"}).then(
        [Event("deposited", {"amount": 5})]
    )


def test_wire_format_of_state_and_events():
    codec = Codec(BankAccount)
    assert codec.init() == '{"opened":false,"owner":"","balance":0}'
    events = codec.decide('{"opened":true,"owner":"alice","balance":0}', "deposit", '{"amount":7}')
    assert events == [RawEvent("deposited", 1, '{"amount":7}')]
    events = codec.decide(codec.init(), "open", '{"owner":"Zoë"}')
    assert events == [RawEvent("opened", 1, '{"owner":"Zoë"}')]


def test_apply_folds_a_batch_oldest_first():
    codec = Codec(BankAccount)
    state = codec.apply(
        codec.init(),
        [
            RawEvent("opened", 1, '{"owner":"bo"}'),
            RawEvent("deposited", 1, '{"amount":10}'),
            RawEvent("withdrawn", 1, '{"amount":4}'),
            RawEvent("deposited", 1, '{"amount":1}'),
        ],
    )
    assert state == '{"opened":true,"owner":"bo","balance":7}'


def test_apply_refuses_an_unknown_event_naming_it():
    codec = Codec(BankAccount)
    with pytest.raises(ApplyError, match="closed"):
        codec.apply(codec.init(), [RawEvent("closed", 1, "{}")])


def test_app_module_exports_the_component():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
    spec = importlib.util.spec_from_file_location("bank_account_app", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    world = app.WitWorld()
    wit = app.WitWorld.bindings
    assert wit.native
    assert world.init() == '{"opened":false,"owner":"","balance":0}'
    command = wit.Command("c1", "withdraw", '{"amount": 5}', "t", "a", [])
    with pytest.raises(wit.Err) as refused:
        world.decide(world.init(), command)
    assert refused.value.value == wit.Rejected("account is not open")
    command = wit.Command("c2", "open", '{"owner": "ann"}', "t", "a", [])
    events = world.decide(world.init(), command)
    assert events == [wit.Event("opened", 1, '{"owner":"ann"}')]
    assert world.apply(world.init(), events) == '{"opened":true,"owner":"ann","balance":0}'
    with pytest.raises(wit.Err) as failed:
        world.apply(world.init(), [wit.Event("frozen", 1, "{}")])
    assert "frozen" in failed.value.value
