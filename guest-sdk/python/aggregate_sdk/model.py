"""The author-facing types: commands, events, decide errors and the optional `Aggregate` base."""

from __future__ import annotations

import builtins

_MISSING = object()

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class DecideError(Exception):
    """Why `decide` produced no events. Raise `Rejected` or `Invalid`, not this class itself."""

    kind = "rejected"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = builtins.str(message)

    def __eq__(self, other):
        return (
            isinstance(other, DecideError)
            and self.kind == other.kind
            and self.message == other.message
        )

    def __hash__(self):
        return hash((self.kind, self.message))

    def __repr__(self):
        return f"{type(self).__name__}({self.message!r})"


class Rejected(DecideError):
    """A business rule refused the command (the host answers 422 with the message)."""

    kind = "rejected"


class Invalid(DecideError):
    """The command is malformed (the host answers 400 with the message)."""

    kind = "invalid"


class UnknownEvent(Exception):
    """Raised by `apply` for an event type it does not know (`raise event.unknown()`)."""


def describe(value) -> builtins.str:
    """How a JSON value is named in error messages, e.g. `string "ten"` or `float 1.5`."""
    if value is None:
        return "null"
    if isinstance(value, builtins.bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, builtins.int):
        return f"integer {value}"
    if isinstance(value, builtins.float):
        return f"float {value!r}"
    if isinstance(value, builtins.str):
        return "string " + _quote(value)
    if isinstance(value, builtins.list):
        return "array"
    if isinstance(value, builtins.dict):
        return "object"
    return type(value).__name__


def _quote(text: builtins.str) -> builtins.str:
    if len(text) > 40:
        text = text[:40] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Command:
    """A command: its `type`, its `payload` (a dict) and where it comes from.

    The typed getters (`int`, `str`, `bool`, `number`, `list`, `dict`) read one payload field and
    raise `Invalid` naming the field when it is missing or of the wrong type, e.g.
    ``invalid `deposit` command: missing field `amount```. Pass ``default=`` to make a field
    optional (the default is returned when the field is missing or null).
    """

    __slots__ = ("type", "payload", "id", "tenant_id", "aggregate_id", "metadata")

    def __init__(
        self,
        type: str,
        payload: dict | None = None,
        *,
        id: str = "",
        tenant_id: str = "",
        aggregate_id: str = "",
        metadata: dict | None = None,
    ):
        self.type = type
        self.payload = {} if payload is None else payload
        self.id = id
        self.tenant_id = tenant_id
        self.aggregate_id = aggregate_id
        self.metadata = {} if metadata is None else metadata

    def __repr__(self):
        return f"Command({self.type!r}, {self.payload!r})"

    def invalid(self, message: str) -> Invalid:
        """An `Invalid` error about this command: ``invalid `<type>` command: <message>``."""
        return Invalid(f"invalid `{self.type}` command: {message}")

    def unknown(self) -> Invalid:
        """The error for a command type the aggregate does not handle: ``raise command.unknown()``."""
        return Invalid(f"unknown command type `{self.type}`")

    def get(self, name: str, default=None):
        """The raw JSON value of field `name`, or `default` when it is missing."""
        return self.payload.get(name, default)

    def _field(self, name, default, accept, expected):
        value = self.payload.get(name)
        if value is None:
            if default is not _MISSING:
                return default
            if name not in self.payload:
                raise self.invalid(f"missing field `{name}`")
        if not accept(value):
            raise self.invalid(
                f"invalid type for field `{name}`: expected {expected}, got {describe(value)}"
            )
        return value

    def int(self, name: str, default=_MISSING) -> int:
        """Field `name` as a 64-bit integer (a JSON number without fraction; not a boolean)."""
        value = self._field(name, default, _is_int, "integer")
        if _is_int(value) and not INT64_MIN <= value <= INT64_MAX:
            raise self.invalid(
                f"invalid value for field `{name}`: integer {value} is out of range for int64"
            )
        return value

    def number(self, name: str, default=_MISSING) -> float:
        """Field `name` as a number (integer or float; not a boolean)."""
        return self._field(name, default, _is_number, "number")

    def str(self, name: str, default=_MISSING) -> str:
        """Field `name` as a string."""
        return self._field(name, default, _is_str, "string")

    def bool(self, name: str, default=_MISSING) -> bool:
        """Field `name` as a boolean."""
        return self._field(name, default, _is_bool, "boolean")

    def list(self, name: str, default=_MISSING) -> list:
        """Field `name` as a list (JSON array)."""
        return self._field(name, default, _is_list, "array")

    def dict(self, name: str, default=_MISSING) -> dict:
        """Field `name` as a dict (JSON object)."""
        return self._field(name, default, _is_dict, "object")


def _is_int(v):
    return isinstance(v, builtins.int) and not isinstance(v, builtins.bool)


def _is_number(v):
    return isinstance(v, (builtins.int, builtins.float)) and not isinstance(v, builtins.bool)


def _is_str(v):
    return isinstance(v, builtins.str)


def _is_bool(v):
    return isinstance(v, builtins.bool)


def _is_list(v):
    return isinstance(v, builtins.list)


def _is_dict(v):
    return isinstance(v, builtins.dict)


class Event:
    """An event: its `type` (e.g. ``"deposited"``) and `payload` (a dict, JSON object).

    `schema_version` is the version of the payload's schema. In `decide` leave it `None` and the
    aggregate's `schema_version(event)` (default 1) is recorded; in `apply` it is the version the
    event was stored with (its payload already went through `upcast`). Two events are equal when
    type and payload are equal and, if both carry one, their schema versions.
    """

    __slots__ = ("type", "payload", "schema_version")

    def __init__(self, type: str, payload: dict | None = None, *, schema_version: int | None = None):
        self.type = type
        self.payload = {} if payload is None else payload
        self.schema_version = schema_version

    def __eq__(self, other):
        if not isinstance(other, Event):
            return NotImplemented
        if self.type != other.type or self.payload != other.payload:
            return False
        if self.schema_version is None or other.schema_version is None:
            return True
        return self.schema_version == other.schema_version

    __hash__ = None

    def __repr__(self):
        if self.schema_version is None:
            return f"Event({self.type!r}, {self.payload!r})"
        return f"Event({self.type!r}, {self.payload!r}, schema_version={self.schema_version})"

    def unknown(self) -> UnknownEvent:
        """The error for an event type `apply` does not handle: ``raise event.unknown()``."""
        return UnknownEvent(f"unknown event type `{self.type}`")


class Aggregate:
    """Optional base class with the defaults of every hook. Any object with `init`, `decide` and
    `apply` works; the other hooks are looked up and default to what is written here."""

    #: Schema version of each event type produced by `decide`; types not listed are version 1.
    schema_versions: dict = {}

    def init(self):
        """The state of an aggregate without events: a dict (or a dataclass instance)."""
        return {}

    def decide(self, state, command: Command) -> list:
        """The events `command` produces in `state`; raise `Rejected` or `Invalid` to refuse."""
        raise command.unknown()

    def apply(self, state, event: Event):
        """Fold one event into `state`; return the new state (or `None` to keep the mutated one)."""
        raise event.unknown()

    def schema_version(self, event: Event) -> int:
        """The schema version recorded with an event `decide` produced."""
        return self.schema_versions.get(event.type, 1)

    def upcast(self, event_type: str, schema_version: int, payload: dict) -> dict:
        """Rewrite a stored payload of an older `schema_version` into today's shape."""
        return payload
