"""A bank account aggregate: the Python twin of example-aggregates/bank-account (Rust).

| command    | payload              | event                         |
| ---------- | -------------------- | ----------------------------- |
| `open`     | `{"owner": "alice"}` | `opened {"owner": "alice"}`   |
| `deposit`  | `{"amount": 100}`    | `deposited {"amount": 100}`   |
| `withdraw` | `{"amount": 30}`     | `withdrawn {"amount": 30}`    |

Rules: amounts must be positive, at most `MAX_BALANCE`, and the owner non-empty (otherwise
invalid); opening an account twice, depositing to or withdrawing from an account that is not
open, withdrawing more than the balance and depositing past `MAX_BALANCE` ("balance would
overflow") are rejected.

State: `{"opened": true, "owner": "alice", "balance": 70}` (balance in minor units).

Python integers never overflow, so the limit is explicit: every sum on a balance is checked
(`add_to_balance`), and `apply` refuses, naming the event, a history that would leave
±`MAX_BALANCE` (never one this aggregate decided).
"""

from aggregate_sdk import Aggregate, Event, Invalid, Rejected

# The largest balance an account holds, and so the largest amount: 2^53 - 1, the largest integer
# that every language of this example represents exactly (JavaScript numbers are doubles) and
# that any JSON reader of the state reads exactly. The bank account behaves the same in Rust, Go,
# JavaScript and Python (tests/parity/bank-account.yaml), so its limit is the one they all share.
MAX_BALANCE = 2**53 - 1


def add_to_balance(balance: int, delta: int):
    """`balance + delta`, or None when the sum would leave ±MAX_BALANCE."""
    total = balance + delta
    return total if -MAX_BALANCE <= total <= MAX_BALANCE else None


def positive(amount: int) -> int:
    """An amount is positive and at most MAX_BALANCE (checked before the account is open)."""
    if amount <= 0:
        raise Invalid(f"amount must be positive, got {amount}")
    if amount > MAX_BALANCE:
        raise Invalid(f"amount must be at most {MAX_BALANCE}, got {amount}")
    return amount


def fold(state: dict, delta: int, what: str) -> dict:
    balance = add_to_balance(state["balance"], delta)
    if balance is None:
        raise ValueError(f"balance would overflow: balance {state['balance']}, {what}")
    state["balance"] = balance
    return state


def require_open(state: dict) -> None:
    if not state["opened"]:
        raise Rejected("account is not open")


class BankAccount(Aggregate):
    def init(self) -> dict:
        return {"opened": False, "owner": "", "balance": 0}

    def decide(self, state: dict, command) -> list:
        if command.type == "open":
            owner = command.str("owner")
            if not owner.strip():
                raise Invalid("owner must not be empty")
            if state["opened"]:
                raise Rejected(f"account is already open (owner {state['owner']})")
            return [Event("opened", {"owner": owner})]
        if command.type == "deposit":
            amount = positive(command.int("amount"))
            require_open(state)
            if add_to_balance(state["balance"], amount) is None:
                raise Rejected(
                    f"balance would overflow: balance {state['balance']}, requested {amount}, "
                    f"maximum {MAX_BALANCE}"
                )
            return [Event("deposited", {"amount": amount})]
        if command.type == "withdraw":
            amount = positive(command.int("amount"))
            require_open(state)
            if amount > state["balance"]:
                raise Rejected(
                    f"insufficient funds: balance {state['balance']}, requested {amount}"
                )
            return [Event("withdrawn", {"amount": amount})]
        raise command.unknown()

    def apply(self, state: dict, event: Event) -> dict:
        if event.type == "opened":
            state["opened"] = True
            state["owner"] = event.payload["owner"]
        elif event.type == "deposited":
            amount = event.payload["amount"]
            fold(state, amount, f"deposited {amount}")
        elif event.type == "withdrawn":
            amount = event.payload["amount"]
            fold(state, -amount, f"withdrawn {amount}")
        else:
            raise event.unknown()
        return state
