# Lets `pytest guest-sdk/python` import `aggregate_sdk` without installing it.
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# The template holds placeholders (`__SDK__`); tests/test_sdk_template.py runs a filled-in copy.
collect_ignore = ["template"]
