"""Agreement among raters, shared by every stage that has several raters per item: annotation panels
(melt.annotate), human and panel raters (melt.analysis, melt.ambiguity) and preference answers (melt.review).

It sits at the top of the package, below every stage, so each can import it without importing another stage.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np


def rating_counts(
    ratings: Iterable[Sequence[Hashable]], categories: Sequence[Hashable] | None = None
) -> np.ndarray:
    """The (items × categories) matrix of how many raters put each item in each category, from each item's
    list of ratings. `categories` fixes the columns (ratings outside them are left out); by default the sorted
    set of the ratings."""
    items = [list(r) for r in ratings]
    if categories is None:
        categories = sorted({c for item in items for c in item}, key=str)
    column = {c: j for j, c in enumerate(categories)}
    counts = np.zeros((len(items), len(column)))
    for i, item in enumerate(items):
        for rating in item:
            j = column.get(rating)
            if j is not None:
                counts[i, j] += 1
    return counts


def fleiss_kappa(counts: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Fleiss' κ from an (items × categories) matrix: `counts[i][c]` raters put item i in category c.

    κ = (P̄ − P_e) / (1 − P_e), with P_i = (Σ_c n_ic² − n_i) / (n_i (n_i − 1)) the agreement among item i's
    n_i raters, P̄ their mean and P_e = Σ_c p_c² from the pooled category shares p_c. Items may have different
    numbers of raters (the usual generalisation; with equal n_i this is Fleiss 1971); items with fewer than two
    are ignored, as they hold no pair. NaN when no item has two ratings, or when every rating is the same
    category (P_e = 1: κ is 0/0, undefined)."""
    matrix = np.asarray(counts, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"expected an items × categories matrix, got shape {matrix.shape}")
    raters = matrix.sum(axis=1)
    matrix, raters = matrix[raters >= 2], raters[raters >= 2]
    if not len(matrix):
        return float("nan")
    observed = float((((matrix**2).sum(axis=1) - raters) / (raters * (raters - 1))).mean())
    shares = matrix.sum(axis=0) / raters.sum()
    expected = float((shares**2).sum())
    if expected >= 1 - 1e-12:
        return float("nan")
    return (observed - expected) / (1 - expected)


def items_with_pairs(counts: Sequence[Sequence[float]] | np.ndarray) -> int:
    """How many items have at least two ratings (the items Fleiss' κ is computed over)."""
    matrix = np.asarray(counts, dtype=float)
    return int((matrix.sum(axis=1) >= 2).sum()) if matrix.ndim == 2 else 0
