"""Is one label source really better than another? Paired tests on UAR over the same test utterances.

Two systems A and B (e.g. the same backbone trained on MELT and on MELD labels) are scored on the same test
utterances with several seeds each. The statistic is the UAR difference averaged over seeds,
d = mean_s (UAR(A_s) − UAR(B_s)).

- 95 % confidence interval: paired bootstrap over test utterances. Each resample draws n utterances with
  replacement (the same draw for A, B and every seed), recomputes d (UAR over the classes present in the
  resample), and the interval is the 2.5th–97.5th percentile of the resampled d* (percentile bootstrap).
- `p_value` (two-sided, the bootstrap's own test, consistent with the interval): the bootstrap distribution
  shifted to the null, p = (1 + #{|d* − d| ≥ |d|}) / (R + 1) (Efron & Tibshirani 1993, §16.4; the paired
  bootstrap test of Koehn 2004 / Berg-Kirkpatrick et al. 2012).
- `p_randomisation` (two-sided): paired approximate randomisation. Under "A's and B's predictions are
  exchangeable", each utterance's two predictions (for every seed) may be swapped; R random swap patterns give
  the null distribution of d and p = (1 + #{|d_r| ≥ |d|}) / (R + 1). It is more conservative when the two
  systems disagree on many utterances in both directions (the swaps then spread d widely), because it asks
  whether the predictions are interchangeable, not how much the UAR difference varies over test sets. For UAR
  with the class counts fixed, swapping is linear in the per-utterance correctness, so the R patterns cost one
  matrix product.

Seeds are pooled rather than treated as independent samples: the unit of resampling is the test utterance,
which is where the uncertainty of a cross-corpus score lies (the seeds' spread is in `table.md`).
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 2000


def uar(truth: np.ndarray, correct: np.ndarray) -> float:
    """UAR from class codes and a correctness indicator per utterance (classes present in `truth`)."""
    classes = np.unique(truth)
    return float(np.mean([correct[truth == c].mean() for c in classes])) if len(classes) else math.nan


def paired_uar_difference(
    truth: np.ndarray,
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """`truth` [n] class codes; `correct_a`, `correct_b` [seeds, n] booleans (prediction == truth).
    Returns uar_a, uar_b (means over seeds), diff, ci_low, ci_high, p_value, p_randomisation."""
    truth = np.asarray(truth)
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape != b.shape or a.shape[1] != len(truth):
        raise ValueError(f"shapes differ: truth {truth.shape}, A {a.shape}, B {b.shape}")
    n = len(truth)
    uar_a = float(np.mean([uar(truth, row) for row in a]))
    uar_b = float(np.mean([uar(truth, row) for row in b]))
    observed = uar_a - uar_b
    if n == 0:
        return {
            "uar_a": uar_a,
            "uar_b": uar_b,
            "diff": observed,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p_value": math.nan,
        }
    rng = np.random.default_rng(seed)
    classes, codes = np.unique(truth, return_inverse=True)
    onehot = np.zeros((n, len(classes)))
    onehot[np.arange(n), codes] = 1.0
    # per utterance, the seed-averaged difference in correctness
    delta = (a - b).mean(axis=0)

    diffs = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(size, n))
        weights = np.zeros((size, n))
        np.add.at(weights, (np.repeat(np.arange(size), n), draws.ravel()), 1.0)
        per_class_total = weights @ onehot  # [size, classes]
        per_class_delta = weights @ (onehot * delta[:, None])
        present = per_class_total > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            recall_delta = np.where(present, per_class_delta / per_class_total, 0.0)
        diffs[start : start + size] = recall_delta.sum(axis=1) / present.sum(axis=1)
    ci_low, ci_high = np.percentile(diffs, [2.5, 97.5])
    tolerance = 1e-12  # equal differences computed along two paths must count as equal
    p_bootstrap = (1 + int(np.sum(np.abs(diffs - observed) >= abs(observed) - tolerance))) / (resamples + 1)

    # approximate randomisation: d_r = Σ_i w_i (1 − 2 z_i) δ_i with w_i = 1 / (classes · n_class(i))
    counts = onehot.sum(axis=0)
    contribution = delta / (len(classes) * counts[codes])
    null = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        signs = 1.0 - 2.0 * (rng.random((size, n)) < 0.5)
        null[start : start + size] = signs @ contribution
    p_randomisation = (1 + int(np.sum(np.abs(null) >= abs(observed) - tolerance))) / (resamples + 1)
    return {
        "uar_a": uar_a,
        "uar_b": uar_b,
        "diff": observed,
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "p_value": float(p_bootstrap),
        "p_randomisation": float(p_randomisation),
    }
