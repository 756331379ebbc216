"""The `__NAME__` aggregate: a counter to start from.

| command     | payload       | event                    |
| ----------- | ------------- | ------------------------ |
| `add`       | `{"by": 2}`   | `added {"by": 2}`        |
| `reset`     | `{}`          | `reset {}`               |

`by` is optional (default 1) and must be positive (otherwise invalid); resetting a counter that
is already 0, and an `add` that would take it past `MAX_VALUE`, are rejected. State:
`{"value": 2}`.

Test: `python -m pytest`. Build: `aggregate-host build .` (componentize-py builds this module,
`app`, with the Python guest SDK on its path; see the SDK's README).
"""

from dataclasses import dataclass

from aggregate_sdk import Aggregate, Event, Invalid, Rejected, export


# Python integers never overflow, but the state is read by other programs: keep the counter
# within a signed 64-bit integer, the range of the SDK's `command.int` (and of Rust's and Go's).
MAX_VALUE = 2**63 - 1


@dataclass
class State:
    value: int = 0


class Counter(Aggregate):
    def init(self) -> State:
        return State()

    def decide(self, state: State, command) -> list:
        if command.type == "add":
            by = command.int("by", default=1)
            if by <= 0:
                raise Invalid(f"by must be positive, got {by}")
            if state.value + by > MAX_VALUE:
                raise Rejected(f"counter would overflow: value {state.value}, adding {by}")
            return [Event("added", {"by": by})]
        if command.type == "reset":
            if state.value == 0:
                raise Rejected("counter is already 0")
            return [Event("reset")]
        raise command.unknown()

    def apply(self, state: State, event: Event) -> State:
        if event.type == "added":
            by = event.payload["by"]
            if not -MAX_VALUE - 1 <= state.value + by <= MAX_VALUE:
                raise ValueError(f"counter would overflow: value {state.value}, added {by}")
            state.value += by
        elif event.type == "reset":
            state.value = 0
        else:
            raise event.unknown()
        return state


# The component's exports: componentize-py instantiates `WitWorld`.
WitWorld = export(Counter)
