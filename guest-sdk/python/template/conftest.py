# Puts the Python guest SDK on the import path for `python -m pytest` (set AGGREGATE_SDK_PYTHON
# to use another copy of guest-sdk/python).
import os
import sys

SDK = os.environ.get("AGGREGATE_SDK_PYTHON", "__SDK__")
if SDK not in sys.path:
    sys.path.insert(0, SDK)
