"""`melt annotate`."""

from __future__ import annotations


def annotate_command() -> None:
    """Annotate a corpus table with an LLM (not yet implemented)."""
    raise NotImplementedError
