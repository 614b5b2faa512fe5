"""LLM annotation runs: `run_annotation(table, AnnotateConfig(...), out_dir)`; see docs/annotate.md."""

from melt.annotate.config import AnnotateConfig
from melt.annotate.run import CostEstimate, RunResult, estimate_run, load_corpus, run_annotation

__all__ = ["AnnotateConfig", "CostEstimate", "RunResult", "estimate_run", "load_corpus", "run_annotation"]
