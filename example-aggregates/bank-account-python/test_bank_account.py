"""Given/when/then tests of the Python bank account: every rule and message of the Rust one."""

import importlib.util
import os

import pytest

from aggregate_sdk import ApplyError, Codec, Event, Invalid, RawEvent, Rejected
from aggregate_sdk.testing import given
from bank_account import MAX_BALANCE, BankAccount, add_to_balance

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


def test_the_maximum_balance_is_what_javascript_holds_exactly():
    # 2^53 - 1: JavaScript's Number.MAX_SAFE_INTEGER, the limit the parity table uses.
    assert MAX_BALANCE == 9007199254740991
    assert int(float(MAX_BALANCE)) == MAX_BALANCE
    assert int(float(MAX_BALANCE + 2)) != MAX_BALANCE + 2


def test_deposits_fill_the_balance_up_to_the_maximum():
    (
        given(BankAccount, [OPENED, Event("deposited", {"amount": MAX_BALANCE - 1})])
        .when("deposit", {"amount": 1})
        .then([Event("deposited", {"amount": 1})])
        .then_state(account(MAX_BALANCE))
    )
    (
        given(BankAccount, [OPENED])
        .when("deposit", '{"amount": 9007199254740991}')
        .then([Event("deposited", {"amount": 9007199254740991})])
        .then_state(account(9007199254740991))
    )


def test_a_deposit_that_would_overflow_the_balance_is_rejected():
    (
        given(BankAccount, [OPENED, Event("deposited", {"amount": MAX_BALANCE})])
        .when("deposit", {"amount": 1})
        .then_error(
            Rejected(
                "balance would overflow: balance 9007199254740991, requested 1, "
                "maximum 9007199254740991"
            )
        )
        .then_state(account(MAX_BALANCE))
    )
    (
        given(
            BankAccount,
            [
                OPENED,
                Event("deposited", {"amount": MAX_BALANCE - 5}),
                Event("withdrawn", {"amount": 5}),
            ],
        )
        .when("deposit", '{"amount": 4503599627370498}')
        .then_rejected(
            "balance would overflow: balance 9007199254740981, requested 4503599627370498"
        )
        .then_state(account(MAX_BALANCE - 10))
    )


def test_a_withdrawal_makes_room_for_a_deposit_again():
    (
        given(
            BankAccount,
            [
                OPENED,
                Event("deposited", {"amount": MAX_BALANCE}),
                Event("withdrawn", {"amount": 1}),
            ],
        )
        .when("deposit", {"amount": 1})
        .then([Event("deposited", {"amount": 1})])
        .then_state(account(MAX_BALANCE))
    )


@pytest.mark.parametrize("amount", [2**53, 9223372036854775807])
@pytest.mark.parametrize("command_type", ["deposit", "withdraw"])
def test_amounts_beyond_the_maximum_are_invalid(command_type, amount):
    # The story of the bug (in Rust): 2^63 - 1 and then 1 wrapped the balance.
    (
        given(BankAccount, [OPENED, Event("deposited", {"amount": 100})])
        .when(command_type, {"amount": amount})
        .then_error(Invalid(f"amount must be at most 9007199254740991, got {amount}"))
        .then_state(account(100))
    )


def test_balance_arithmetic_is_checked():
    assert add_to_balance(MAX_BALANCE - 1, 1) == MAX_BALANCE
    assert add_to_balance(MAX_BALANCE, 1) is None
    assert add_to_balance(1, 9223372036854775807) is None
    assert add_to_balance(0, -MAX_BALANCE) == -MAX_BALANCE
    assert add_to_balance(-MAX_BALANCE, -1) is None


def raw(event_type, amount):
    return RawEvent(event_type, 1, f'{{"amount":{amount}}}')


@pytest.mark.parametrize(
    "history, message",
    [
        (
            [raw("deposited", 9007199254740991), raw("deposited", 1)],
            "balance 9007199254740991, deposited 1",
        ),
        (
            [raw("deposited", 1), raw("deposited", 9223372036854775807)],
            "balance 1, deposited 9223372036854775807",
        ),
        (
            [raw("withdrawn", 9007199254740991), raw("withdrawn", 1)],
            "balance -9007199254740991, withdrawn 1",
        ),
    ],
)
def test_apply_refuses_a_history_that_would_overflow(history, message):
    codec = Codec(BankAccount)
    with pytest.raises(ApplyError) as failed:
        codec.apply(codec.init(), history)
    assert str(failed.value).endswith(f": balance would overflow: {message}"), str(failed.value)


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
