# Lets pytest import `aggregate_sdk` from this checkout and this directory's modules.
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.join(HERE, os.pardir, os.pardir, "guest-sdk", "python")
for path in (os.path.normpath(SDK), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)
