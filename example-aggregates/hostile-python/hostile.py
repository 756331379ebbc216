"""A misbehaving Python aggregate for the host's sandboxing tests.

State is always `{}`. Commands (`command-type`, JSON-object payload):

| command   | payload         | behaviour                                                          |
| --------- | --------------- | ------------------------------------------------------------------ |
| `ok`      | `{}`            | one event `done` `{}`                                              |
| `echo`    | `{"size": n}`   | one event `echoed` `{"data": "xx…"}` whose string is n bytes       |
| `reject`  | `{}`            | rejected `"rejected on request"`                                   |
| `invalid` | `{}`            | invalid `"invalid on request"`                                     |
| `spin`    | `{}`            | loops forever (fuel / epoch deadline)                              |
| `hog`     | `{}`            | allocates 1 MiB bytearrays forever, keeping them (memory limit)    |
| `raise`   | `{}`            | an uncaught `RuntimeError("boom")`: the component traps            |

Through the host: `spin` ends at the fuel or time limit, `hog` at the memory limit (CPython
raises `MemoryError`, which escapes and traps), `raise` prints its traceback to the guest's
stderr and traps ("Python function threw an unexpected exception": a guest fault, HTTP 500);
the instance is discarded each time.

Any other command type is invalid (`unknown command type …`). `apply` accepts every event and
keeps the state `{}`.
"""

from aggregate_sdk import Aggregate, Event, Invalid, Rejected

CHUNK = 1 << 20

# Module level, so nothing the `hog` command allocated is ever freed.
HOARD = []


class Hostile(Aggregate):
    def init(self) -> dict:
        return {}

    def decide(self, state: dict, command) -> list:
        kind = command.type
        if kind == "ok":
            return [Event("done", {})]
        if kind == "echo":
            size = command.int("size")
            if size < 0:
                raise command.invalid(f"`size` must not be negative, got {size}")
            return [Event("echoed", {"data": "x" * size})]
        if kind == "reject":
            raise Rejected("rejected on request")
        if kind == "invalid":
            raise Invalid("invalid on request")
        if kind == "spin":
            spins = 0
            while True:
                spins += 1
        if kind == "hog":
            while True:
                HOARD.append(bytearray(CHUNK))
        if kind == "raise":
            raise RuntimeError("boom")
        raise command.unknown()

    def apply(self, state: dict, event: Event) -> dict:
        return state
