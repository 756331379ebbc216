"""Stand-ins for componentize-py's generated bindings, used when they are not importable.

Natively (plain `pytest`) there is no `wit_world` module; these classes have the same shape as
the generated `wit_world.Command`, `wit_world.Event`, `wit_world.DecideError_Rejected`,
`wit_world.DecideError_Invalid` and `componentize_py_types.Err`, so the exported `WitWorld`
class can be exercised without WebAssembly.
"""

from dataclasses import dataclass, field


@dataclass
class Command:
    command_id: str
    command_type: str
    payload: str
    tenant_id: str = ""
    aggregate_id: str = ""
    metadata: list = field(default_factory=list)


@dataclass
class Event:
    event_type: str
    schema_version: int
    payload: str


@dataclass
class DecideError_Rejected:  # noqa: N801 - same name as the generated class
    value: str


@dataclass
class DecideError_Invalid:  # noqa: N801 - same name as the generated class
    value: str


@dataclass(frozen=True)
class Err(Exception):
    value: object


class WitWorld:
    pass
