"""Fleiss' κ, the one implementation every stage uses (annotation panels, ambiguity, preference answers)."""

import math

import numpy as np
import pytest

from melt.agreement import fleiss_kappa, items_with_pairs, rating_counts

#: Fleiss (1971) as reproduced on Wikipedia: 10 subjects, 14 raters, 5 categories; P̄ = 0.378, P_e = 0.213.
TEXTBOOK = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]  # fmt: skip


def test_textbook_example_from_counts_and_from_ratings():
    assert fleiss_kappa(TEXTBOOK) == pytest.approx(0.20993, abs=1e-5)
    ratings = [[str(c) for c, n in enumerate(row) for _ in range(n)] for row in TEXTBOOK]
    counts = rating_counts(ratings)
    assert counts.tolist() == np.asarray(TEXTBOOK, dtype=float).tolist()
    assert fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-5)
    assert items_with_pairs(counts) == 10


def test_unequal_raters_match_a_hand_computation():
    # Item 1: 2 raters agree (P = 1); item 2: 3 raters split 2/1 (P = 2/6); item 3: 1 rater (ignored).
    counts = [[2, 0], [1, 2], [0, 1]]
    observed = (1 + 2 / 6) / 2
    shares = np.array([3, 2]) / 5
    expected = (shares**2).sum()
    assert fleiss_kappa(counts) == pytest.approx((observed - expected) / (1 - expected))
    assert items_with_pairs(counts) == 2


def test_edges():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == 1.0
    kappa = fleiss_kappa(rating_counts([["a", "a"], ["b", "b", "b"], ["a"]]))
    assert kappa == 1.0
    assert math.isnan(fleiss_kappa([[1, 0], [0, 1]]))  # no item with two raters
    assert math.isnan(fleiss_kappa(rating_counts([["a", "a"], ["a", "a", "a"]])))  # one category: 0/0
    assert fleiss_kappa(rating_counts([["a", "b"], ["a", "b"], ["b", "a"]])) < 0  # below chance
    assert math.isnan(fleiss_kappa(np.zeros((0, 3))))
    with pytest.raises(ValueError, match="matrix"):
        fleiss_kappa([1, 2, 3])


def test_rating_counts_with_fixed_categories_leaves_others_out():
    counts = rating_counts([["joy", "anger", "frustration"], []], categories=["anger", "joy", "sadness"])
    assert counts.tolist() == [[1, 1, 0], [0, 0, 0]]
