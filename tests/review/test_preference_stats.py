"""The preference report's statistics against textbook values and scipy."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from melt.review.stats import binomial_test_half, pairwise_agreement, wilson_interval


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


def test_pairwise_agreement():
    share, pairs = pairwise_agreement([["a", "a", "b"], ["b", "b"], ["a"]])
    assert pairs == 4 and share == pytest.approx(2 / 4)
