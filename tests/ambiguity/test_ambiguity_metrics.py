"""The distribution metrics against hand computations and independent implementations (scipy, scikit-learn)."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, f1_score, r2_score

from melt.ambiguity import metrics


def random_distributions(rng, n, k, zeros=True):
    values = rng.dirichlet(np.full(k, 0.7), size=n)
    if zeros:  # real vote distributions have many empty labels
        values[rng.random((n, k)) < 0.4] = 0
        values[values.sum(axis=1) == 0, 0] = 1
        values /= values.sum(axis=1, keepdims=True)
    return values


def test_jensen_shannon_hand_computed():
    # P = (½, ½), Q = (1, 0): M = (¾, ¼).
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    value = metrics.jensen_shannon([[0.5, 0.5]], [[1.0, 0.0]])
    assert value[0] == pytest.approx(expected)
    assert value[0] == pytest.approx(0.311278, abs=1e-6)


def test_jensen_shannon_matches_scipy_and_stays_in_bounds():
    rng = np.random.default_rng(3)
    p, q = random_distributions(rng, 400, 7), random_distributions(rng, 400, 7)
    ours = metrics.jensen_shannon(p, q)
    # scipy returns the JS distance, the square root of the divergence.
    assert ours == pytest.approx(jensenshannon(p, q, base=2, axis=1) ** 2, abs=1e-12)
    assert (ours >= 0).all() and (ours <= 1).all()
    assert metrics.jensen_shannon(p, p) == pytest.approx(np.zeros(400), abs=1e-12)
    disjoint = metrics.jensen_shannon([[1, 0, 0], [0.5, 0.5, 0]], [[0, 0.3, 0.7], [0, 0, 1]])
    assert disjoint == pytest.approx([1.0, 1.0])


def test_bhattacharyya_hand_computed_and_identity():
    assert metrics.bhattacharyya([[0.5, 0.5]], [[1.0, 0.0]])[0] == pytest.approx(math.sqrt(0.5))
    assert metrics.bhattacharyya([[0.2, 0.8]], [[0.8, 0.2]])[0] == pytest.approx(2 * math.sqrt(0.16))
    rng = np.random.default_rng(4)
    p = random_distributions(rng, 200, 5)
    assert metrics.bhattacharyya(p, p) == pytest.approx(np.ones(200))
    q = random_distributions(rng, 200, 5)
    assert metrics.bhattacharyya(p, q) == pytest.approx(np.sqrt(p * q).sum(axis=1))
    assert metrics.bhattacharyya([[1, 0]], [[0, 1]])[0] == 0


def test_entropy_matches_scipy():
    rng = np.random.default_rng(5)
    p = random_distributions(rng, 100, 7)
    assert metrics.entropy(p) == pytest.approx(scipy_entropy(p, base=2, axis=1))
    assert metrics.entropy(p, base=math.e) == pytest.approx(scipy_entropy(p, axis=1))


def test_normalised_entropy_two_norms():
    seven = np.zeros((4, 7))
    seven[0, :2] = 0.5  # a 50/50 split
    seven[1, 3] = 1  # unanimous
    seven[2] = 1 / 7  # uniform
    seven[3, :3] = [0.5, 0.25, 0.25]
    present = metrics.normalised_entropy(seven, "present")
    classes = metrics.normalised_entropy(seven, "classes")
    assert present[0] == pytest.approx(1.0)  # the paper's rule: any even split is maximally ambiguous
    assert classes[0] == pytest.approx(math.log(2) / math.log(7))
    assert present[1] == 0 and classes[1] == 0
    assert present[2] == pytest.approx(1.0) and classes[2] == pytest.approx(1.0)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert present[3] == pytest.approx(h / math.log(3))
    assert classes[3] == pytest.approx(h / math.log(7))
    with pytest.raises(ValueError, match="norm"):
        metrics.normalised_entropy(seven, "bits")


def test_r2_matches_scikit_learn_including_constant_classes():
    rng = np.random.default_rng(6)
    p, q = random_distributions(rng, 50, 6), random_distributions(rng, 50, 6)
    assert metrics.r2(p, q) == pytest.approx(r2_score(q, p, multioutput="uniform_average"))
    # A class nobody voted for: constant reference, predicted exactly (1) or not (0), as scikit-learn does.
    q[:, 5] = 0
    q /= q.sum(axis=1, keepdims=True)
    assert metrics.r2(p, q) == pytest.approx(r2_score(q, p))
    p[:, 5] = 0
    p /= p.sum(axis=1, keepdims=True)
    assert metrics.r2(p, q) == pytest.approx(r2_score(q, p))
    assert metrics.r2(q, q) == 1.0
    assert math.isnan(metrics.r2(p[:1], q[:1]))


def test_expected_calibration_error_constructed_case():
    predicted = [[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65]]
    reference = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [0.2, 0.8]]
    # bin (0.9, 1]: accuracy ½, confidence .95 -> gap .45; bin (0.6, 0.7]: accuracy 1, confidence .65 -> gap .35.
    assert metrics.expected_calibration_error(predicted, reference) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    table = metrics.reliability(predicted, reference)
    assert table["count"].tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert table.loc[6, "accuracy"] == 1.0 and table.loc[9, "accuracy"] == 0.5
    # Confidence on a bin edge goes to the bin it closes (0.7 is in (0.6, 0.7], not (0.7, 0.8]).
    assert metrics.reliability([[0.7, 0.3]], [[1.0, 0.0]])["count"].tolist()[6] == 1
    perfect = np.eye(3)
    assert metrics.expected_calibration_error(perfect, perfect) == 0.0


def test_argmax_ties_follow_the_label_order():
    # Reference tie: the first label wins, so a prediction of label 0 is correct, of label 1 is not.
    reference = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]
    predicted = [[0.8, 0.2, 0.0], [0.2, 0.8, 0.0]]
    assert metrics.argmax(reference).tolist() == [0, 0]
    assert metrics.accuracy(predicted, reference) == 0.5
    # Float sums that should tie still do.
    third = [[1 / 3 + 1 / 3 - 1 / 3, 1 / 3, 1 / 3]]
    assert metrics.argmax(third).tolist() == [0]


def test_accuracy_and_f1_match_scikit_learn():
    rng = np.random.default_rng(8)
    p, q = random_distributions(rng, 300, 7), random_distributions(rng, 300, 7)
    truth, guess = q.argmax(axis=1), p.argmax(axis=1)
    assert metrics.accuracy(p, q) == pytest.approx(accuracy_score(truth, guess))
    assert metrics.f1_macro(p, q) == pytest.approx(f1_score(truth, guess, average="macro"))
    assert metrics.f1_weighted(p, q) == pytest.approx(f1_score(truth, guess, average="weighted"))
    # A class that only the prediction uses counts in macro-F1 (as scikit-learn's default labels) with F1 0.
    p2 = np.array([[0, 0, 1.0], [1.0, 0, 0]])
    q2 = np.array([[1.0, 0, 0], [1.0, 0, 0]])
    assert metrics.f1_macro(p2, q2) == pytest.approx(f1_score([0, 0], [2, 0], average="macro"))
    assert metrics.f1_weighted(p2, q2) == pytest.approx(f1_score([0, 0], [2, 0], average="weighted"))


def test_distribution_scores_collects_every_measure():
    rng = np.random.default_rng(9)
    p, q = random_distributions(rng, 40, 4), random_distributions(rng, 40, 4)
    scores = metrics.distribution_scores(p, q)
    assert tuple(scores) == metrics.SCORE_NAMES
    assert scores["jsd"] == pytest.approx(metrics.jensen_shannon(p, q).mean())
    assert scores["bc"] == pytest.approx(metrics.bhattacharyya(p, q).mean())
    assert scores["entropy"] == pytest.approx(metrics.entropy(p).mean())
    empty = metrics.distribution_scores(np.zeros((0, 4)), np.zeros((0, 4)))
    assert all(math.isnan(v) for v in empty.values())


def test_distributions_are_checked():
    with pytest.raises(ValueError, match=r"row 1 sums to 0\.9"):
        metrics.jensen_shannon([[1, 0], [0.5, 0.4]], [[1, 0], [1, 0]])
    with pytest.raises(ValueError, match="NaN"):
        metrics.bhattacharyya([[np.nan, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="negative"):
        metrics.entropy([[1.5, -0.5]])
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.r2([[1, 0]], [[1, 0, 0]])
