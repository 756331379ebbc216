"""Write an event-sourced aggregate in plain Python and export it as an Aggregate Host component.

An aggregate is a pure decider. Write a class with three methods over plain values:

- ``init(self)`` returns the state of an aggregate without events: a dict (or a dataclass);
- ``decide(self, state, command)`` returns a list of `Event`s, or raises `Rejected(message)`
  (a business rule refused the command) or `Invalid(message)` (the command is malformed);
- ``apply(self, state, event)`` folds one event into the state and returns it (or returns
  `None` after mutating it in place); ``raise event.unknown()`` for a type it does not know.

Optional hooks: ``schema_versions = {"deposited": 2}`` (or a ``schema_version(self, event)``
method) gives the version recorded with produced events; ``upcast(self, event_type,
schema_version, payload)`` rewrites older stored payloads before `apply` sees them;
``load_state(self, value)`` / ``dump_state(self, state)`` convert custom state types.

Then, at the top level of the module componentize-py builds::

    WitWorld = aggregate_sdk.export(MyAggregate)

`Command` has the command's `type`, `payload` (dict), `id`, `tenant_id`, `aggregate_id` and
`metadata` (dict), and typed getters that raise `Invalid` naming the field:
``command.int("amount")``, ``command.str("owner")``, ``bool``, ``number``, ``list``, ``dict``.
Unknown command types: ``raise command.unknown()``. Test natively with `aggregate_sdk.testing`.

Only the standard library is used, so the package imports natively too; inside the component
`export` uses the bindings componentize-py generates, outside it stand-ins of the same shape.
"""

from .codec import ApplyError, Codec, RawEvent
from .export import export
from .model import Aggregate, Command, DecideError, Event, Invalid, Rejected, UnknownEvent

__all__ = [
    "Aggregate",
    "ApplyError",
    "Codec",
    "Command",
    "DecideError",
    "Event",
    "Invalid",
    "RawEvent",
    "Rejected",
    "UnknownEvent",
    "export",
]
