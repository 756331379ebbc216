"""The component's entry module: componentize-py builds `app` and instantiates `WitWorld`."""

import aggregate_sdk
from hostile import Hostile

WitWorld = aggregate_sdk.export(Hostile)
