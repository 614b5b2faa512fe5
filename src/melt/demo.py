"""`melt demo`: the whole pipeline on the bundled example corpus."""

from __future__ import annotations


def demo_command() -> None:
    """Run the pipeline on the bundled example corpus and print where the report is."""
    raise NotImplementedError
