"""Emotion distributions, ambiguity and distribution metrics (Scaling Ambiguity); see docs/ambiguity.md.

    from melt.ambiguity import AmbiguityConfig, analyse_ambiguity, write_ambiguity
    result = analyse_ambiguity(table, "panel_run/", AmbiguityConfig(synthetic_weight=0.5))
    result.metrics  # protocol, source, tertile, n, jsd, bc, r2, ece, acc, f1_macro, f1_weighted, entropy
    write_ambiguity(result, "amb/")

The metric functions on (n × K) arrays live in `melt.ambiguity.metrics`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melt.ambiguity.config import AmbiguityConfig
    from melt.ambiguity.evaluate import AmbiguityResult, analyse_ambiguity
    from melt.ambiguity.report import write_ambiguity

__all__ = ["AmbiguityConfig", "AmbiguityResult", "analyse_ambiguity", "write_ambiguity"]

_HOME = {
    "AmbiguityConfig": "melt.ambiguity.config",
    "AmbiguityResult": "melt.ambiguity.evaluate",
    "analyse_ambiguity": "melt.ambiguity.evaluate",
    "write_ambiguity": "melt.ambiguity.report",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that `melt --help` does not pay for pandas and numpy.
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'melt.ambiguity' has no attribute {name!r}")
