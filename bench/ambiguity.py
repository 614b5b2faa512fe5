"""Benchmark: `melt ambiguity` on an IEMOCAP-sized corpus (10,039 utterances, 3–5 raters each) with a panel.

Baseline, measured in the same run: reading the two inputs (corpus Parquet with its votes JSON parsed, and
votes.parquet), which any analysis has to do. Reported as multiples of it:
  - `analyse_ambiguity`: distributions, ambiguity, tertiles, agreement, the paper's protocol, split-half over the
    seeds, the saturation curve;
  - `write_ambiguity`: metrics.csv, summary.json, distributions.parquet, the four plots, the report.
Each runs `--repeats` times (best counts); peak resident memory of the process at the end.

    .venv/bin/python bench/ambiguity.py [--utterances 10039] [--annotators 8] [--seeds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise", "frustration", "other")


def make_inputs(folder: Path, utterances: int, annotators: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    rows, panel = [], []
    for i in range(utterances):
        truth = LABELS[rng.integers(len(LABELS))]
        votes = {}
        for r in range(3 + rng.integers(3)):
            label = truth if rng.random() < 0.6 else LABELS[rng.integers(len(LABELS))]
            votes[f"E{r}"] = (
                {label: 0.5, LABELS[rng.integers(7)]: 0.5} if rng.random() < 0.2 else {label: 1.0}
            )
        rows.append({"id": f"Ses{i // 2000 + 1:02d}_{i:05d}", "text": "...", "votes": json.dumps(votes)})
        for a in range(annotators):
            ok = rng.random() > 0.03
            panel.append(
                {
                    "id": rows[-1]["id"],
                    "annotator": a,
                    "persona": f"focus {a % 5}",
                    "temperature": 0.2 + 0.08 * (a % 10),
                    "label": (truth if rng.random() < 0.5 else LABELS[rng.integers(7)]) if ok else None,
                    "status": "ok" if ok else "invalid",
                    "reason": None if ok else "unparseable",
                }
            )
    corpus = folder / "corpus.parquet"
    pd.DataFrame(rows).to_parquet(corpus)
    (folder / "run").mkdir(exist_ok=True)
    pd.DataFrame(panel).to_parquet(folder / "run" / "votes.parquet")
    return corpus, folder / "run"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--utterances", type=int, default=10039)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from melt.ambiguity import AmbiguityConfig, analyse_ambiguity, write_ambiguity
    from melt.corpus.schema import read_table, votes_of

    folder = Path(tempfile.mkdtemp(prefix="melt-bench-ambiguity-"))
    corpus, run = make_inputs(folder, args.utterances, args.annotators)
    config = AmbiguityConfig(seeds=list(range(args.seeds)))
    table = read_table(corpus)

    def read_inputs() -> None:
        votes_of(read_table(corpus))
        pd.read_parquet(run / "votes.parquet")

    result = None

    def analyse() -> None:
        nonlocal result
        result = analyse_ambiguity(table, run, config)

    def write() -> None:
        write_ambiguity(result, folder / "out", corpus_path=corpus, votes_path=run)

    methods = {
        "read the inputs (baseline)": read_inputs,
        "analyse_ambiguity": analyse,
        "write_ambiguity": write,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - start)
    baseline = min(times["read the inputs (baseline)"])
    print(
        f"{args.utterances} utterances, {len(result.human.rater)} human rater votes, panel of {args.annotators}, "
        f"{args.seeds} seeds, {config.saturation_draws} draws per panel size"
    )
    print(f"\n{'step':<30} {'best s':>8} {'median s':>9} {'vs baseline':>12}")
    for name, values in times.items():
        median = sorted(values)[len(values) // 2]
        print(f"{name:<30} {min(values):>8.3f} {median:>9.3f} {min(values) / baseline:>11.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak:.0f} MB")
    print(
        f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
