"""How close one set of emotion distributions comes to another, on plain numpy arrays.

Every function takes `predicted` and `reference` as arrays of shape (n, K): one row per utterance, one column per
label in the label set's order, each row a probability distribution (non-negative, summing to 1). Nothing here
needs torch or scikit-learn, so `melt ambiguity` and a training loop (detach and `.numpy()` first) share the same
definitions.

Row-wise measures (`jensen_shannon`, `bhattacharyya`, `entropy`, `normalised_entropy`) return n values; corpus-level
measures (`r2`, `expected_calibration_error`, `accuracy`, `f1_macro`, `f1_weighted`) return one float, NaN when
they are undefined (no rows). `distribution_scores` gives all of them for one (predicted, reference) pair, the way
`metrics.csv` reports them. docs/ambiguity.md has the formulas and how to read each one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

#: Two probabilities closer than this count as a tie for the argmax (sums of fractional votes are inexact).
TIE_TOLERANCE = 1e-9
#: How far a row may sum from 1 before it is refused.
SUM_TOLERANCE = 1e-6
#: The measures `distribution_scores` returns, in the order of metrics.csv.
SCORE_NAMES: tuple[str, ...] = ("jsd", "bc", "r2", "ece", "acc", "f1_macro", "f1_weighted", "entropy")


def check_distributions(values: object, name: str = "distributions") -> np.ndarray:
    """`values` as a float (n, K) array; ValueError unless every row is a probability distribution."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected an (n, K) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values (row {_first_row(~np.isfinite(array))})")
    if (array < 0).any():
        raise ValueError(f"{name}: negative probability (row {_first_row(array < 0)})")
    off = np.abs(array.sum(axis=1) - 1) > SUM_TOLERANCE
    if off.any():
        row = int(off.argmax())
        raise ValueError(f"{name}: row {row} sums to {array[row].sum():.6g}, not 1")
    return array


def _first_row(mask: np.ndarray) -> int:
    return int(mask.any(axis=1).argmax())


def _pair(predicted: object, reference: object) -> tuple[np.ndarray, np.ndarray]:
    p = check_distributions(predicted, "predicted")
    q = check_distributions(reference, "reference")
    if p.shape != q.shape:
        raise ValueError(f"predicted {p.shape} and reference {q.shape} differ in shape")
    return p, q


def _plogp_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p · log2(p / q) elementwise, 0 where p = 0 (the limit), for q > 0 wherever p > 0."""
    positive = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, p * np.log2(np.where(positive, p, 1) / np.where(positive, q, 1)), 0.0)


def jensen_shannon(predicted: object, reference: object) -> np.ndarray:
    """Jensen–Shannon divergence per row, log base 2, so in [0, 1]: ½·KL(P‖M) + ½·KL(Q‖M) with M = (P + Q)/2.

    0 for identical rows, 1 for rows with disjoint support. (scipy's `jensenshannon` returns the square root of
    this, the JS *distance*.)"""
    p, q = _pair(predicted, reference)
    mixture = (p + q) / 2
    divergence = 0.5 * _plogp_ratio(p, mixture).sum(axis=1) + 0.5 * _plogp_ratio(q, mixture).sum(axis=1)
    return np.clip(divergence, 0.0, 1.0)


def bhattacharyya(predicted: object, reference: object) -> np.ndarray:
    """Bhattacharyya coefficient per row, Σ_c √(p_c · q_c), in [0, 1]: 1 for identical rows, 0 for disjoint ones."""
    p, q = _pair(predicted, reference)
    return np.clip(np.sqrt(p * q).sum(axis=1), 0.0, 1.0)


def entropy(distributions: object, base: float = 2) -> np.ndarray:
    """Shannon entropy per row, −Σ p_c log p_c (0·log 0 = 0); bits by default."""
    p = check_distributions(distributions)
    terms = np.zeros_like(p)
    positive = p > 0
    terms[positive] = p[positive] * np.log(p[positive])
    return np.maximum(-terms.sum(axis=1) / np.log(base), 0.0)


def normalised_entropy(distributions: object, norm: Literal["present", "classes"] = "present") -> np.ndarray:
    """Entropy per row divided by its maximum, in [0, 1]: the ambiguity of an utterance's votes.

    `present` (the Scaling Ambiguity code): divided by log of the number of labels with p_c > 0, and 0 when only
    one label is present, so any even split (50/50, or 1/3 each over three labels) scores 1.
    `classes`: divided by log K, so a 50/50 split over two of seven labels scores log 2 / log 7 ≈ 0.36."""
    p = check_distributions(distributions)
    h = entropy(p, base=np.e)
    if norm == "classes":
        if p.shape[1] < 2:
            raise ValueError("normalised entropy over classes needs at least two classes")
        return np.clip(h / np.log(p.shape[1]), 0.0, 1.0)
    if norm != "present":
        raise ValueError(f"norm must be 'present' or 'classes', not {norm!r}")
    present = (p > 0).sum(axis=1)
    out = np.zeros(len(p))
    several = present > 1
    out[several] = h[several] / np.log(present[several])
    return np.clip(out, 0.0, 1.0)


def argmax(distributions: object) -> np.ndarray:
    """Index of the most probable label per row; ties (within 1e-9) go to the label that comes first in the set."""
    p = np.asarray(distributions, dtype=float)
    return (p >= p.max(axis=1, keepdims=True) - TIE_TOLERANCE).argmax(axis=1)


def r2(predicted: object, reference: object) -> float:
    """R² per class, averaged uniformly over classes (what `sklearn.metrics.r2_score(reference, predicted)` gives).

    For class c: 1 − Σ_i (q_ic − p_ic)² / Σ_i (q_ic − mean_c q)². A class whose reference is constant scores 1 when
    predicted exactly and 0 otherwise (scikit-learn's `force_finite`). NaN for fewer than two rows."""
    p, q = _pair(predicted, reference)
    if len(p) < 2:
        return float("nan")
    residual = ((q - p) ** 2).sum(axis=0)
    spread = ((q - q.mean(axis=0)) ** 2).sum(axis=0)
    per_class = np.ones(p.shape[1])
    varying = spread != 0
    per_class[varying] = 1 - residual[varying] / spread[varying]
    per_class[~varying & (residual != 0)] = 0.0
    return float(per_class.mean())


def reliability(predicted: object, reference: object, bins: int = 10) -> pd.DataFrame:
    """The reliability table behind ECE: one row per equal-width bin of confidence over [0, 1].

    Confidence is the predicted distribution's largest probability; a row is correct when its argmax equals the
    reference's argmax (ties by label-set order). Bin b holds confidences in (b/bins, (b+1)/bins], the first bin
    also 0. Columns: lower, upper, count, confidence (mean), accuracy (NaN for an empty bin)."""
    p, q = _pair(predicted, reference)
    confidence = p.max(axis=1)
    correct = (argmax(p) == argmax(q)).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    # Against the edges themselves, not ⌈confidence·bins⌉: 0.7·10 is 7.000000000000001 in floating point.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        mean_accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "confidence": mean_confidence,
            "accuracy": mean_accuracy,
        }
    )


def expected_calibration_error(predicted: object, reference: object, bins: int = 10) -> float:
    """ECE = Σ_b (n_b / n) · |accuracy_b − confidence_b| over `bins` equal-width bins (see `reliability`)."""
    return calibration_error(reliability(predicted, reference, bins))


def calibration_error(table: pd.DataFrame) -> float:
    """ECE from a `reliability` table (so pooled tables, e.g. over seeds, give theirs)."""
    total = table["count"].sum()
    if total == 0:
        return float("nan")
    used = table[table["count"] > 0]
    return float((used["count"] / total * (used["accuracy"] - used["confidence"]).abs()).sum())


def accuracy(predicted: object, reference: object) -> float:
    """Share of rows whose argmax equals the reference's argmax (ties by label-set order)."""
    p, q = _pair(predicted, reference)
    return float((argmax(p) == argmax(q)).mean()) if len(p) else float("nan")


def _f1_per_class(predicted: object, reference: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1 of the argmax per class, the reference's support per class, and which classes occur in either."""
    p, q = _pair(predicted, reference)
    classes = p.shape[1]
    guess, truth = argmax(p), argmax(q)
    matrix = np.bincount(truth * classes + guess, minlength=classes * classes).reshape(classes, classes)
    support = matrix.sum(axis=1).astype(float)
    predicted_count = matrix.sum(axis=0).astype(float)
    present = (support + predicted_count) > 0
    f1 = np.zeros(classes)
    f1[present] = 2 * np.diag(matrix)[present] / (support[present] + predicted_count[present])
    return f1, support, present


def f1_macro(predicted: object, reference: object) -> float:
    """Mean F1 of the argmax over the classes that occur in the reference or prediction argmaxes (as scikit-learn's
    `f1_score(average="macro")` with its default labels)."""
    f1, _, present = _f1_per_class(predicted, reference)
    return float(f1[present].mean()) if present.any() else float("nan")


def f1_weighted(predicted: object, reference: object) -> float:
    """F1 of the argmax per class, weighted by each class's share of the reference argmaxes."""
    f1, support, _ = _f1_per_class(predicted, reference)
    total = support.sum()
    return float((f1 * support).sum() / total) if total else float("nan")


def distribution_scores(predicted: object, reference: object, bins: int = 10) -> dict[str, float]:
    """All measures of `predicted` against `reference`, as the columns of metrics.csv: jsd and bc (means over
    rows), r2, ece, acc, f1_macro, f1_weighted, and entropy (mean entropy of `predicted`, in bits)."""
    p, q = _pair(predicted, reference)
    if not len(p):
        return dict.fromkeys(SCORE_NAMES, float("nan"))
    return {
        "jsd": float(jensen_shannon(p, q).mean()),
        "bc": float(bhattacharyya(p, q).mean()),
        "r2": r2(p, q),
        "ece": expected_calibration_error(p, q, bins),
        "acc": accuracy(p, q),
        "f1_macro": f1_macro(p, q),
        "f1_weighted": f1_weighted(p, q),
        "entropy": float(entropy(p).mean()),
    }
