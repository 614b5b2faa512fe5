"""Metrics against independent reference implementations (scikit-learn, the `krippendorff` package) and hand
computations on small cases."""

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score

from melt.analysis import metrics

REF = ["joy", "joy", "anger", "neutral", "neutral", "neutral", "sadness", "anger", "joy", "fear"]
CAND = ["joy", "neutral", "anger", "neutral", "joy", "neutral", "neutral", "surprise", "joy", "fear"]


def test_cohen_kappa_matches_hand_computation():
    # 2x2: agree on 20 yes + 15 no of 50; p_o = .7, p_e = (25*30 + 25*20)/2500 = .5 -> kappa .4
    ref = ["yes"] * 25 + ["no"] * 25
    cand = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert metrics.cohen_kappa(ref, cand) == pytest.approx(0.4)


def test_cohen_kappa_matches_scikit_learn():
    assert metrics.cohen_kappa(REF, CAND) == pytest.approx(cohen_kappa_score(REF, CAND))


def test_krippendorff_alpha_matches_reference_package():
    rng = np.random.default_rng(7)
    labels = ["a", "b", "c", "d"]
    units = []
    for _ in range(40):
        truth = rng.integers(4)
        units.append([labels[truth] if rng.random() < 0.7 else labels[rng.integers(4)] for _ in range(3)])
    units[3][1] = None  # a missing rating
    codes = {v: i for i, v in enumerate(labels)}
    matrix = np.array([[codes[v] if v is not None else np.nan for v in unit] for unit in units]).T
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert metrics.krippendorff_alpha_nominal(units) == pytest.approx(expected)


def test_krippendorff_alpha_hand_case():
    # Krippendorff's textbook-style case: perfect agreement gives 1, systematic disagreement < 0.
    assert metrics.krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["c", "c"]]) == 1.0
    assert metrics.krippendorff_alpha_nominal([["a", "b"], ["b", "a"]]) < 0


def test_classification_scores_match_scikit_learn():
    scores = metrics.classification_scores(REF, CAND)
    present = sorted(set(REF))
    assert scores["acc"] == pytest.approx(accuracy_score(REF, CAND))
    assert scores["uar"] == pytest.approx(recall_score(REF, CAND, labels=present, average="macro"))
    assert scores["f1"] == pytest.approx(f1_score(REF, CAND, average="macro"))


def test_confusion_matrix_orientation():
    matrix = metrics.confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    assert matrix.loc["a", "b"] == 1  # rows are the reference
    assert matrix.loc["b", "a"] == 0
    assert int(matrix.to_numpy().sum()) == 3
