"""Benchmark: the bootstrap confidence intervals of `melt compare` on the published MELT train labels (7,024 pairs,
MELD vs GPT-4o), against two baselines measured in the same run:

  - naive: per resample, draw the pair indices and compute each statistic with the reference functions of
    `melt.analysis.metrics` (cohen_kappa, krippendorff_alpha_nominal, unweighted_average_recall, macro_f1,
    accuracy): what a straightforward implementation does;
  - indices: all resamples' pair indices drawn at once and counted into confusion matrices with one bincount,
    then scored with `metrics.pair_statistics` (vectorised, but O(resamples × n));
  - melt: `melt.analysis.compare.bootstrap`, which draws each resample's confusion matrix as a multinomial over
    the K × K cells (O(resamples × K²), whatever n).

The naive baseline runs `--naive` resamples and is scaled to `--resamples`; the others run all of them. Each is
timed `--repeats` times; the best counts. Prints the 1-minute load average.

    .venv/bin/python bench/compare_bootstrap.py [--data ../shared/data] [--resamples 1000] [--naive 50]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melt.analysis import metrics
from melt.analysis.compare import INTERVAL_STATISTICS, bootstrap, compare_labels


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def naive(reference: np.ndarray, candidate: np.ndarray, resamples: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(reference)
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        ref, cand = reference[rows].tolist(), candidate[rows].tolist()
        metrics.cohen_kappa(ref, cand)
        metrics.krippendorff_alpha_nominal(list(zip(ref, cand, strict=True)))
        metrics.unweighted_average_recall(ref, cand)
        metrics.macro_f1(ref, cand)
        metrics.accuracy(ref, cand)


def by_indices(codes: np.ndarray, classes: int, resamples: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(codes)
    rows = rng.integers(0, n, (resamples, n))
    cells = codes[rows] + (np.arange(resamples)[:, None] * classes * classes)
    counts = np.bincount(cells.ravel(), minlength=resamples * classes * classes)
    metrics.pair_statistics(counts.reshape(resamples, classes, classes))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MELT_SHARED_DATA", repo.parent / "shared" / "data"))
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=50, help="resamples of the naive baseline (scaled up)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    table = pd.read_csv(args.data / "melt" / "meld_train.csv")
    comparison = compare_labels(table["Emotion"], table["llm_label"])
    matrix = comparison.transition().to_numpy()
    classes = len(matrix)
    position = {label: i for i, label in enumerate(comparison.classes)}
    reference = np.array(comparison.reference)
    candidate = np.array(comparison.candidate)
    codes = np.array([position[r] * classes + position[c] for r, c in zip(reference, candidate, strict=True)])

    naive_time = best_of(1, lambda: naive(reference, candidate, args.naive, 0)) * args.resamples / args.naive
    indices_time = best_of(args.repeats, lambda: by_indices(codes, classes, args.resamples, 0))
    melt_time = best_of(args.repeats, lambda: bootstrap(matrix, resamples=args.resamples, seed=0))
    intervals = bootstrap(matrix, resamples=args.resamples, seed=0)

    print(f"bootstrap CIs of {', '.join(INTERVAL_STATISTICS)} on {comparison.n:,} pairs, {classes} classes, "
          f"{args.resamples:,} resamples (1-min load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    print(f"  naive (per resample, reference functions): {naive_time:8.3f} s  (scaled from {args.naive})")
    print(
        f"  indices (all at once, bincount):          {indices_time:8.3f} s  ({naive_time / indices_time:6.0f}× faster)"
    )
    print(f"  melt (multinomial over the cells):        {melt_time:8.3f} s  ({naive_time / melt_time:6.0f}× faster than naive, "
          f"{indices_time / melt_time:.0f}× faster than indices)")  # fmt: skip
    kappa = intervals["cohen_kappa"]
    print(f"  κ 95 % CI {kappa['low']:.4f} – {kappa['high']:.4f}")


if __name__ == "__main__":
    main()
