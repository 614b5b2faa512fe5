"""The statistics of the preference report, written out so their definitions are explicit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import combinations
from statistics import NormalDist


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_test_half(successes: int, n: int) -> float:
    """Exact two-sided binomial test of `successes` in `n` against p = 0.5: the probability of an outcome at
    least as unlikely as the one observed (for p = 0.5, twice the smaller tail, at most 1). nan for n = 0."""
    if n == 0:
        return float("nan")
    smaller = min(successes, n - successes)
    term, tail = 1, 0
    for i in range(smaller + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2**n)


def pairwise_agreement(ratings: Iterable[Sequence[str]]) -> tuple[float, int]:
    """Share of agreeing pairs among all pairs of ratings of the same item; (share, pairs)."""
    agree = pairs = 0
    for rating in ratings:
        for x, y in combinations(rating, 2):
            pairs += 1
            agree += x == y
    return (agree / pairs if pairs else float("nan")), pairs
