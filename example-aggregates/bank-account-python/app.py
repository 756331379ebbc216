"""The component's entry module: componentize-py builds `app` and instantiates `WitWorld`."""

import aggregate_sdk
from bank_account import BankAccount

WitWorld = aggregate_sdk.export(BankAccount)
