"""Waits in tests scale with the machine (see `timeout_factor` in tests/conftest.py, which sets the factor)."""

import os


def scaled(seconds: float) -> float:
    """`seconds` times the test time-limit factor: a limit against hangs, never a measure of speed."""
    return seconds * float(os.environ.get("MELT_TEST_TIMEOUT_FACTOR") or 1)
