"""Paired comparison of two label sources: the vectorised statistics against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from melt.ser.stats import paired_uar_difference, uar


def _loop(truth, a, b, resamples, seed):
    rng = np.random.default_rng(seed)
    n = len(truth)
    boot = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        boot.append(np.mean([uar(truth[idx], a[s][idx]) - uar(truth[idx], b[s][idx]) for s in range(len(a))]))
    null = []
    for _ in range(resamples):
        swap = rng.random(n) < 0.5
        a2, b2 = np.where(swap, b, a), np.where(swap, a, b)
        null.append(np.mean([uar(truth, a2[s]) - uar(truth, b2[s]) for s in range(len(a))]))
    observed = np.mean([uar(truth, a[s]) - uar(truth, b[s]) for s in range(len(a))])
    return observed, np.percentile(boot, [2.5, 97.5]), np.mean(np.abs(null) >= abs(observed) - 1e-12)


def test_matches_a_plain_loop():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 4, 60)
    a = rng.random((3, 60)) < 0.6
    b = rng.random((3, 60)) < 0.4
    result = paired_uar_difference(truth, a, b, resamples=3000, seed=1)
    observed, (low, high), p_random = _loop(truth, a, b, 3000, seed=2)
    assert result["diff"] == pytest.approx(observed)
    assert result["uar_a"] - result["uar_b"] == pytest.approx(observed)
    assert result["ci_low"] == pytest.approx(low, abs=0.03)
    assert result["ci_high"] == pytest.approx(high, abs=0.03)
    assert result["p_randomisation"] == pytest.approx(p_random, abs=0.03)
    assert result["ci_low"] < observed < result["ci_high"]


def test_a_clear_difference_is_significant_and_none_is_not():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 100)
    better = rng.random((2, 400)) < 0.8
    worse = rng.random((2, 400)) < 0.4
    clear = paired_uar_difference(truth, better, worse, resamples=2000)
    assert clear["diff"] > 0.3 and clear["ci_low"] > 0.25
    assert clear["p_value"] < 0.01 and clear["p_randomisation"] < 0.01
    same = paired_uar_difference(truth, better, better, resamples=2000)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0
    assert same["p_value"] == 1.0 and same["p_randomisation"] == 1.0


def test_bootstrap_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(3), 40)
    for shift in (0.0, 0.1, 0.25):
        a = rng.random((2, 120)) < 0.5 + shift
        b = rng.random((2, 120)) < 0.5
        result = paired_uar_difference(truth, a, b, resamples=4000)
        excludes_zero = result["ci_low"] > 0 or result["ci_high"] < 0
        if result["p_value"] < 0.04:
            assert excludes_zero, result
        if result["p_value"] > 0.06:
            assert not excludes_zero, result


def test_tables_give_no_spread_for_a_single_seed():
    """With one seed the standard deviation over seeds is undefined: the tables show the mean alone, not
    "± 0.0000", which would read as a perfectly stable result."""
    import pandas as pd

    from melt.ser.distribution_experiment import result_tables
    from melt.ser.experiment import table3_frame

    labels = pd.DataFrame(
        {"backbone": "egemaps", "labels": ["human", "llm"], "test": "ravdess", "seed": 0, "classes": 3,
         "uar": [0.5, 0.6], "acc": [0.5, 0.6], "f1": [0.4, 0.5]}
    )  # fmt: skip
    table = table3_frame(labels, ["ravdess"])
    assert table["ravdess (3 cl) UAR"].tolist() == ["0.5000", "**0.6000**"]
    two_seeds = pd.concat([labels, labels.assign(seed=1, uar=[0.7, 0.6])], ignore_index=True)
    assert table3_frame(two_seeds, ["ravdess"])["ravdess (3 cl) UAR"].tolist() == [
        "**0.6000 ± 0.1414**",
        "**0.6000 ± 0.0000**",
    ]
    distributions = pd.DataFrame(
        {"backbone": "b", "corpus": "c", "target": ["human", "synthetic"], "dime": "without", "seed": 0,
         "tertile": "all", "jsd": [0.3, 0.2], "bc": [0.7, 0.8]}
    )  # fmt: skip
    overall, _ = result_tables(distributions, ["c"])
    assert overall["c JS ↓"].tolist() == ["0.3000", "**0.2000**"]
