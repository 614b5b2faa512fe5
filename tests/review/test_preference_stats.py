"""The preference report's statistics against textbook values and scipy."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from melt.review.stats import binomial_test_half, fleiss_kappa, pairwise_agreement, wilson_interval


def test_wilson_interval_textbook_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (1, 1), (3, 10), (5, 10), (9, 10), (13, 20), (61, 100), (480, 1000)]
)
def test_exact_binomial_test_matches_scipy(k, n):
    assert binomial_test_half(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_binomial_test_without_answers_is_nan():
    assert math.isnan(binomial_test_half(0, 0))


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as reproduced on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = [[str(c) for c, n in enumerate(row) for _ in range(n)] for row in table]
    kappa, items = fleiss_kappa(ratings)
    assert items == 10 and kappa == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_kappa_unequal_raters_and_edges():
    # items with one rating are left out; perfect agreement on two categories gives 1
    kappa, items = fleiss_kappa([["a", "a"], ["b", "b", "b"], ["a"]])
    assert (kappa, items) == (1.0, 2)
    assert math.isnan(fleiss_kappa([["a"], ["b"]])[0])
    assert math.isnan(fleiss_kappa([["a", "a"], ["a", "a", "a"]])[0])  # one category only: undefined
    # systematic disagreement is below chance
    assert fleiss_kappa([["a", "b"], ["a", "b"], ["b", "a"]])[0] < 0


def test_pairwise_agreement():
    share, pairs = pairwise_agreement([["a", "a", "b"], ["b", "b"], ["a"]])
    assert pairs == 4 and share == pytest.approx(2 / 4)
