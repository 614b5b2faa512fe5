"""LLM annotation runs: `run_annotation(table, AnnotateConfig(...), out_dir)`; see docs/annotate.md."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melt.annotate.config import AnnotateConfig
    from melt.annotate.run import (
        CostEstimate,
        RunInterrupted,
        RunResult,
        cancel_batches,
        estimate_run,
        load_corpus,
        run_annotation,
    )

__all__ = [
    "AnnotateConfig",
    "CostEstimate",
    "RunInterrupted",
    "RunResult",
    "cancel_batches",
    "estimate_run",
    "load_corpus",
    "run_annotation",
]

_HOME = {"AnnotateConfig": "melt.annotate.config"} | {
    name: "melt.annotate.run" for name in __all__ if name != "AnnotateConfig"
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that `melt --help` does not pay for pandas, the HTTP client and llama.cpp.
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'melt.annotate' has no attribute {name!r}")
