"""`melt compare`."""

from __future__ import annotations


def compare_command() -> None:
    """Compare two label sources (not yet implemented)."""
    raise NotImplementedError
