"""The JSON mapping between an aggregate's Python values and the component's wire format.

`Codec` is exactly what the exported component runs (`export` only converts the WIT records to
and from these calls), so native tests through it exercise the same mapping as the host does:

- state: `init()`'s value (a dict, any JSON value, or a dataclass instance) as compact JSON;
- command: `command-type` plus a payload that must be a JSON object, else `Invalid`;
- events: `Event.type` becomes `event-type`, `Event.payload` (a dict) the JSON `payload`, and
  `schema-version` is the event's own or the aggregate's `schema_version(event)` (default 1);
- apply: each stored payload goes through `upcast(type, version, payload)`, then `apply`; any
  failure becomes an `ApplyError` whose message names the event type.

A bug the host cannot be blamed for (state that does not decode in `decide`, an event that is
not an `Event` with a dict payload) raises `TypeError`/`ValueError`, which the host sees as a
trap, like a panic in a Rust guest. `MemoryError` (the host's memory limit) always escapes.
"""

from __future__ import annotations

import dataclasses
import json

from .model import Command, Event, Invalid

U32_MAX = 2**32 - 1


class RawEvent:
    """An event as it crosses the component boundary (the WIT `event` record)."""

    __slots__ = ("event_type", "schema_version", "payload")

    def __init__(self, event_type: str, schema_version: int, payload: str):
        self.event_type = event_type
        self.schema_version = schema_version
        self.payload = payload

    def __eq__(self, other):
        if not isinstance(other, RawEvent):
            return NotImplemented
        return (self.event_type, self.schema_version, self.payload) == (
            other.event_type,
            other.schema_version,
            other.payload,
        )

    __hash__ = None

    def __repr__(self):
        return f"RawEvent({self.event_type!r}, {self.schema_version}, {self.payload!r})"


class ApplyError(Exception):
    """Why `apply` failed; its message is the WIT error string."""


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


# Built once: `json.loads`/`json.dumps` with options build a new decoder/encoder on every call,
# which costs fuel in the guest.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_json(text: str):
    """Parse JSON text strictly (no NaN or Infinity)."""
    return _DECODER.decode(text)


def to_json(value) -> str:
    """Compact JSON text (no spaces, UTF-8 kept as is), as a Rust guest would write it."""
    return _ENCODER.encode(value)


class Codec:
    """Runs an aggregate (a class, instantiated once without arguments, or an instance) on JSON."""

    def __init__(self, aggregate):
        self.aggregate = aggregate() if isinstance(aggregate, type) else aggregate
        for name in ("init", "decide", "apply"):
            if not callable(getattr(self.aggregate, name, None)):
                raise TypeError(f"{type(self.aggregate).__name__} has no method `{name}`")
        self._state_class = None

    # -- state ----------------------------------------------------------------------------

    def state_class(self):
        """The type of `init()`'s value: states of a dataclass type are decoded into it."""
        if self._state_class is None:
            self._state_class = type(self.aggregate.init())
        return self._state_class

    def encode_state(self, state) -> str:
        dump = getattr(self.aggregate, "dump_state", None)
        if dump is not None:
            state = dump(state)
        elif dataclasses.is_dataclass(state) and not isinstance(state, type):
            state = dataclasses.asdict(state)
        return to_json(state)

    def decode_state(self, text: str):
        """The state value of JSON `text`; `ValueError` naming the problem if it does not fit."""
        try:
            value = parse_json(text)
        except ValueError as e:
            raise ValueError(f"state is not valid JSON: {e}") from None
        load = getattr(self.aggregate, "load_state", None)
        if load is not None:
            return load(value)
        cls = self.state_class()
        if dataclasses.is_dataclass(cls):
            if not isinstance(value, dict):
                raise ValueError(f"state is not a valid {cls.__name__}: expected a JSON object")
            try:
                return cls(**value)
            except TypeError as e:
                raise ValueError(f"state is not a valid {cls.__name__}: {e}") from None
        return value

    def init(self) -> str:
        """The initial state as JSON (the component's `init`)."""
        return self.encode_state(self.aggregate.init())

    # -- decide ---------------------------------------------------------------------------

    def decode_command(
        self,
        command_type: str,
        payload: str,
        *,
        command_id: str = "",
        tenant_id: str = "",
        aggregate_id: str = "",
        metadata=(),
    ) -> Command:
        """Builds the `Command`; `Invalid` when the payload is not a JSON object."""
        try:
            value = parse_json(payload)
        except ValueError as e:
            raise Invalid(f"payload of `{command_type}` command is not JSON: {e}") from None
        if not isinstance(value, dict):
            raise Invalid(f"payload of `{command_type}` command must be a JSON object")
        return Command(
            command_type,
            value,
            id=command_id,
            tenant_id=tenant_id,
            aggregate_id=aggregate_id,
            metadata=dict(metadata),
        )

    def decide(
        self,
        state: str,
        command_type: str,
        payload: str,
        *,
        command_id: str = "",
        tenant_id: str = "",
        aggregate_id: str = "",
        metadata=(),
    ) -> list:
        """Decides a command in the JSON `state` (the component's `decide`): a list of
        `RawEvent`, or raises `Rejected`/`Invalid`."""
        decoded = self.decode_state(state)
        command = self.decode_command(
            command_type,
            payload,
            command_id=command_id,
            tenant_id=tenant_id,
            aggregate_id=aggregate_id,
            metadata=metadata,
        )
        events = self.aggregate.decide(decoded, command)
        if events is None:
            raise TypeError(
                f"decide of `{command_type}` returned None; return a list of events "
                "(an empty list for none)"
            )
        return [self.encode_event(e) for e in events]

    def encode_event(self, event: Event) -> RawEvent:
        """The wire form of `event`: its own schema version or the aggregate's."""
        if not isinstance(event, Event):
            raise TypeError(f"decide must return Event values, got {event!r}")
        if not isinstance(event.type, str) or not event.type:
            raise TypeError(f"event type must be a non-empty string, got {event.type!r}")
        if not isinstance(event.payload, dict):
            raise TypeError(
                f"payload of `{event.type}` event must be a dict, got {type(event.payload).__name__}"
            )
        version = event.schema_version
        if version is None:
            hook = getattr(self.aggregate, "schema_version", None)
            if hook is not None:
                version = hook(event)
            else:
                version = getattr(self.aggregate, "schema_versions", {}).get(event.type, 1)
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= U32_MAX:
            raise TypeError(f"schema version of `{event.type}` must be a u32, got {version!r}")
        return RawEvent(event.type, version, to_json(event.payload))

    # -- apply ----------------------------------------------------------------------------

    def decode_event(self, raw) -> Event:
        """The `Event` of a stored event (anything with `event_type`, `schema_version` and
        `payload`), its payload upcast; `ApplyError` naming the event type on failure."""
        name = raw.event_type
        version = raw.schema_version
        try:
            payload = parse_json(raw.payload)
        except ValueError as e:
            raise ApplyError(f"payload of `{name}` event is not JSON: {e}") from None
        upcast = getattr(self.aggregate, "upcast", None)
        if upcast is not None:
            try:
                payload = upcast(name, version, payload)
            except MemoryError:
                raise  # the memory limit: a trap, not an answer
            except Exception as e:  # noqa: BLE001 - reported through apply's error result
                raise ApplyError(
                    f"cannot upcast `{name}` event from schema version {version}: {_message(e)}"
                ) from None
        if not isinstance(payload, dict):
            raise ApplyError(f"payload of `{name}` event must be a JSON object")
        return Event(name, payload, schema_version=version)

    def apply(self, state: str, events) -> str:
        """Folds `events` (oldest first) into the JSON `state` and returns the new state as JSON
        (the component's `apply`); raises `ApplyError`."""
        try:
            current = self.decode_state(state)
        except ValueError as e:
            raise ApplyError(str(e)) from None
        for raw in events:
            event = self.decode_event(raw)
            try:
                result = self.aggregate.apply(current, event)
            except MemoryError:
                raise  # the memory limit: a trap, not an answer
            except Exception as e:  # noqa: BLE001 - reported through apply's error result
                raise ApplyError(
                    f"cannot apply `{event.type}` event (schema version {event.schema_version}): "
                    f"{_message(e)}"
                ) from None
            if result is not None:
                current = result
        try:
            return self.encode_state(current)
        except (TypeError, ValueError) as e:
            raise ApplyError(f"state does not serialize to JSON: {e}") from None


def _message(error: Exception) -> str:
    if isinstance(error, KeyError) and error.args:
        return f"missing key {error.args[0]!r}"
    text = str(error)
    return text if text else type(error).__name__

