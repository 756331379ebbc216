"""A bank account aggregate: the Python twin of example-aggregates/bank-account (Rust).

| command    | payload              | event                         |
| ---------- | -------------------- | ----------------------------- |
| `open`     | `{"owner": "alice"}` | `opened {"owner": "alice"}`   |
| `deposit`  | `{"amount": 100}`    | `deposited {"amount": 100}`   |
| `withdraw` | `{"amount": 30}`     | `withdrawn {"amount": 30}`    |

Rules: amounts must be positive and the owner non-empty (otherwise invalid); opening an account
twice, depositing to or withdrawing from an account that is not open, and withdrawing more than
the balance are rejected.

State: `{"opened": true, "owner": "alice", "balance": 70}` (balance in minor units).
"""

from aggregate_sdk import Aggregate, Event, Invalid, Rejected


def positive(amount: int) -> int:
    if amount <= 0:
        raise Invalid(f"amount must be positive, got {amount}")
    return amount


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
            state["balance"] += event.payload["amount"]
        elif event.type == "withdrawn":
            state["balance"] -= event.payload["amount"]
        else:
            raise event.unknown()
        return state
