"""Given/when/then tests of an aggregate, natively (no WebAssembly), for pytest or any runner.

    from aggregate_sdk import Event
    from aggregate_sdk.testing import given

    def test_deposit():
        (given(BankAccount, [Event("opened", {"owner": "ada"})])
            .when("deposit", {"amount": 5})
            .then([Event("deposited", {"amount": 5})])
            .then_state({"opened": True, "owner": "ada", "balance": 5}))

Everything goes through the same JSON codec as the component: the given events are encoded
(with their schema versions) and applied to `init()`'s state, the command payload is sent as
JSON text, the produced events are decoded back. Failures raise `AssertionError` with both sides.
"""

from __future__ import annotations

import dataclasses
import json

from .codec import Codec, RawEvent, parse_json, to_json
from .model import DecideError, Event, Invalid, Rejected


def given(aggregate, events=()) -> Scenario:
    """A scenario whose state is `init()` with `events` applied. `events` are `Event`s (a set
    `schema_version` is kept, so older versions can be given to test `upcast`), `RawEvent`s, or
    `(type, payload)` tuples."""
    return Scenario(aggregate, events)


def _raw(codec: Codec, event) -> RawEvent:
    if isinstance(event, RawEvent):
        return event
    if isinstance(event, tuple):
        event = Event(*event)
    return codec.encode_event(event)


def _as_event(event) -> Event:
    if isinstance(event, tuple):
        return Event(*event)
    if not isinstance(event, Event):
        raise TypeError(f"expected an Event or a (type, payload) tuple, got {event!r}")
    return event


def _normalize_state(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return parse_json(to_json(value))


class Scenario:
    """The `given` part: an aggregate and the state its history produced."""

    def __init__(self, aggregate, events=()):
        self.codec = Codec(aggregate)
        self.history = [_raw(self.codec, e) for e in events]
        self.state_json = self.codec.apply(self.codec.init(), self.history)

    @property
    def state(self):
        """The given state as its JSON value (a dataclass state is a dict here)."""
        return parse_json(self.state_json)

    def when(
        self,
        command_type: str,
        payload=None,
        *,
        command_id: str = "test-command",
        tenant_id: str = "test-tenant",
        aggregate_id: str = "test-aggregate",
        metadata=None,
    ) -> Outcome:
        """Decide a command. `payload` is a dict (sent as JSON), any other JSON value, or a `str`
        sent verbatim as the JSON text (to test malformed payloads); `None` means ``{}``."""
        if payload is None:
            text = "{}"
        elif isinstance(payload, str):
            text = payload
        else:
            text = json.dumps(payload)
        try:
            raw = self.codec.decide(
                self.state_json,
                command_type,
                text,
                command_id=command_id,
                tenant_id=tenant_id,
                aggregate_id=aggregate_id,
                metadata=list((metadata or {}).items()),
            )
        except DecideError as e:
            return Outcome(self, f"{command_type} {text}", None, e)
        return Outcome(self, f"{command_type} {text}", raw, None)


class Outcome:
    """The `then` part: the events or the error of one `decide`. Every check returns `self`."""

    def __init__(self, scenario: Scenario, command: str, raw_events, error):
        self.scenario = scenario
        self.command = command
        self.raw_events = raw_events
        self.error = error

    @property
    def events(self) -> list:
        """The produced events, decoded from the wire with their schema versions."""
        self._expect_events()
        return [
            Event(r.event_type, parse_json(r.payload), schema_version=r.schema_version)
            for r in self.raw_events
        ]

    @property
    def state_json(self) -> str:
        """The state after applying the produced events (the given state if decide failed)."""
        if self.error is not None:
            return self.scenario.state_json
        return self.scenario.codec.apply(self.scenario.state_json, self.raw_events)

    @property
    def state(self):
        """`state_json` as its JSON value."""
        return parse_json(self.state_json)

    def _expect_events(self):
        if self.error is not None:
            raise AssertionError(
                f"`{self.command}` was expected to produce events but failed: {self.error!r}"
            )

    def then(self, events) -> Outcome:
        """The produced events are exactly `events` (type and payload; schema version too where
        an expected event sets one)."""
        expected = [_as_event(e) for e in events]
        actual = self.events
        if actual != expected:
            raise AssertionError(
                f"`{self.command}` produced\n  {actual!r}\nexpected\n  {expected!r}"
            )
        return self

    then_events = then

    def then_error(self, error: DecideError) -> Outcome:
        """Decide failed with exactly `error`, e.g. ``Rejected("account is not open")``."""
        if self.error != error:
            raise AssertionError(f"`{self.command}`: got {self._outcome()}, expected {error!r}")
        return self

    def then_rejected(self, containing: str = "") -> Outcome:
        """Decide was rejected with a message containing `containing`."""
        return self._then_kind(Rejected, containing)

    def then_invalid(self, containing: str = "") -> Outcome:
        """Decide found the command invalid with a message containing `containing`."""
        return self._then_kind(Invalid, containing)

    def _then_kind(self, kind, containing: str) -> Outcome:
        if not isinstance(self.error, kind) or containing not in self.error.message:
            raise AssertionError(
                f"`{self.command}`: got {self._outcome()}, expected "
                f"{kind.__name__} containing {containing!r}"
            )
        return self

    def then_state(self, expected) -> Outcome:
        """The state after applying the produced events equals `expected` (a dict, JSON value
        or dataclass instance; compared as JSON values)."""
        actual = self.state
        wanted = _normalize_state(expected)
        if actual != wanted:
            raise AssertionError(
                f"after `{self.command}` the state is\n  {actual!r}\nexpected\n  {wanted!r}"
            )
        return self

    def _outcome(self) -> str:
        if self.error is not None:
            return repr(self.error)
        return f"events {self.events!r}"
