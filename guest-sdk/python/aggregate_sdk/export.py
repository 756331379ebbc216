"""`export(Aggregate)`: the class componentize-py instantiates as the component's exports."""

from __future__ import annotations

from types import SimpleNamespace

from .codec import ApplyError, Codec
from .model import DecideError, Invalid


def bindings() -> SimpleNamespace:
    """The generated bindings inside a component, or the native stand-ins outside one."""
    try:
        import wit_world
        from componentize_py_types import Err
    except ImportError:
        from . import _native_wit as wit_world

        Err = wit_world.Err
        native = True
    else:
        native = False
    return SimpleNamespace(
        native=native,
        WitWorld=wit_world.WitWorld,
        Command=wit_world.Command,
        Event=wit_world.Event,
        Rejected=wit_world.DecideError_Rejected,
        Invalid=wit_world.DecideError_Invalid,
        Err=Err,
    )


def export(aggregate):
    """The `WitWorld` class of the component: ``WitWorld = export(MyAggregate)`` at the top level
    of the module componentize-py builds. `aggregate` is a class (instantiated once, without
    arguments) or an instance."""
    codec = Codec(aggregate)
    wit = bindings()
    Event = wit.Event
    Err = wit.Err
    WitRejected = wit.Rejected
    WitInvalid = wit.Invalid

    class WitWorld(wit.WitWorld):
        def init(self) -> str:
            return codec.init()

        def decide(self, state: str, command) -> list:
            try:
                raw = codec.decide(
                    state,
                    command.command_type,
                    command.payload,
                    command_id=command.command_id,
                    tenant_id=command.tenant_id,
                    aggregate_id=command.aggregate_id,
                    metadata=command.metadata,
                )
            except Invalid as e:
                raise Err(WitInvalid(e.message)) from None
            except DecideError as e:
                raise Err(WitRejected(e.message)) from None
            return [Event(r.event_type, r.schema_version, r.payload) for r in raw]

        def apply(self, state: str, events: list) -> str:
            try:
                return codec.apply(state, events)
            except ApplyError as e:
                raise Err(str(e)) from None

    WitWorld.codec = codec
    WitWorld.bindings = wit
    return WitWorld
