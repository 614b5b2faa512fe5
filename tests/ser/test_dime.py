"""DiME-Aug on real audio: the counts of the formula, same-class nearest neighbours, the mixing rules, determinism,
and the training part only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melt.acoustics.audio import read_audio
from melt.ser.backbones import load_backbone
from melt.ser.cache import FeatureCache
from melt.ser.dime import LEXICAL_FEATURES, DimeSettings, dime_augment, neighbour_features
from melt.ser.distribution_model import read_distributions

from .corpora import GRADED_LABELS


@pytest.fixture(scope="module")
def graded_inputs(graded_corpus, graded_distributions, tmp_path_factory):
    """The graded corpus's rows, their human distributions and their audio + text features."""
    table = graded_corpus.table
    values, reasons = read_distributions(graded_distributions, "human").lookup(table["id"])
    assert all(r is None for r in reasons)
    cache = FeatureCache.create(tmp_path_factory.mktemp("dime_egemaps"), load_backbone("egemaps"))
    features = neighbour_features(table, cache)
    return table, values, features


def _zscores(features: np.ndarray) -> np.ndarray:
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    return (features - mean) / np.where(std > 1e-12, std, 1.0)


def test_features_are_egemaps_and_lexical(graded_inputs):
    table, _, features = graded_inputs
    assert features.shape == (len(table), 88 + len(LEXICAL_FEATURES))
    assert np.isfinite(features).all()
    words = features[:, 88]
    assert words.tolist() == [len(str(t).split()) for t in table["text"]]


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.9])
def test_counts_follow_the_formula_and_parents_are_same_class_nearest_neighbours(
    graded_inputs, tmp_path, ratio
):
    table, values, features = graded_inputs
    result = dime_augment(
        table, values, features, list(GRADED_LABELS), tmp_path, settings=DimeSettings(ratio=ratio)
    )
    # the argmax, ties (a 2-2 split of four raters) to the label that comes first
    classes = (values >= values.max(axis=1, keepdims=True) - 1e-9).argmax(axis=1)
    counts = np.bincount(classes, minlength=3)
    expected = {
        label: max(0, math.floor(ratio * counts.max() + 1e-9) - counts[k])
        for k, label in enumerate(GRADED_LABELS)
    }
    added = result.rows["label"].value_counts().to_dict()
    assert {label: added.get(label, 0) for label in GRADED_LABELS} == expected
    assert result.counts.set_index("label")["added"].to_dict() == expected
    assert sum(expected.values()) > 0 or ratio == 0.3  # at 0.3 no class of this corpus is below ⌊0.3 · 37⌋

    # parents: both of the row's class, and b among the 3 nearest rows of a's class to a
    scaled = _zscores(features)
    index = {identifier: i for i, identifier in enumerate(table["id"])}
    for row in result.rows.itertuples():
        a, b = index[row.parent_a], index[row.parent_b]
        c = GRADED_LABELS.index(row.label)
        assert classes[a] == classes[b] == c and a != b
        members = np.flatnonzero(classes == c)
        members = members[members != a]
        distances = np.linalg.norm(scaled[members] - scaled[a], axis=1)
        assert b in members[np.argsort(distances, kind="stable")[:3]]


def test_mixed_audio_text_and_distribution(graded_inputs, tmp_path):
    table, values, features = graded_inputs
    result = dime_augment(
        table, values, features, list(GRADED_LABELS), tmp_path, settings=DimeSettings(ratio=0.9)
    )
    index = {identifier: i for i, identifier in enumerate(table["id"])}
    mixed = result.rows[[f"p_{label}" for label in GRADED_LABELS]].to_numpy()
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(mixed, result.distributions)
    for k, row in enumerate(result.rows.itertuples()):
        a, b = index[row.parent_a], index[row.parent_b]
        x_a, x_b = read_audio(table["audio"].iloc[a]), read_audio(table["audio"].iloc[b])
        audio = read_audio(row.audio)
        length = min(len(x_a), len(x_b))
        assert len(audio) == length and row.duration == pytest.approx(length / 16000)
        expected = (1 - row.alpha) * x_a[:length] + row.alpha * x_b[:length]
        assert np.abs(audio - expected).max() < 2 / 32768  # 16-bit PCM
        p = (1 - row.alpha) * values[a] + row.alpha * values[b]
        np.testing.assert_allclose(mixed[k], p / p.sum())
        assert row.text == table["text"].iloc[a if row.alpha < 0.5 else b]
        assert 0 <= row.alpha < 1
    saved = pd.read_parquet(tmp_path / "dime.parquet")
    assert saved["id"].tolist() == result.rows["id"].tolist()
    assert {"parent_a", "parent_b", "alpha"} <= set(saved.columns)


def test_deterministic_for_a_seed(graded_inputs, tmp_path):
    table, values, features = graded_inputs
    runs = [
        dime_augment(
            table,
            values,
            features,
            list(GRADED_LABELS),
            tmp_path / name,
            settings=DimeSettings(ratio=0.9, seed=seed),
        )
        for name, seed in (("a", 3), ("b", 3), ("c", 4))
    ]
    columns = ["id", "parent_a", "parent_b", "alpha", "text"]
    pd.testing.assert_frame_equal(runs[0].rows[columns], runs[1].rows[columns])
    for first, second in zip(runs[0].rows["audio"], runs[1].rows["audio"], strict=True):
        assert Path(first).read_bytes() == Path(second).read_bytes()
    assert (
        not runs[0]
        .rows[["parent_a", "parent_b", "alpha"]]
        .equals(runs[2].rows[["parent_a", "parent_b", "alpha"]])
    )


def test_single_class_and_classes_too_small_to_mix(graded_inputs, tmp_path):
    table, _, features = graded_inputs
    # every row one class: the majority is the class itself, nothing to add
    one = np.tile([1.0, 0.0, 0.0], (len(table), 1))
    result = dime_augment(
        table, one, features, list(GRADED_LABELS), tmp_path / "one", settings=DimeSettings(ratio=1.0)
    )
    assert result.rows.empty and result.counts["added"].sum() == 0
    # a class of one row has no neighbour, an empty class nothing: no rows for them, said so
    skewed = np.tile([1.0, 0.0, 0.0], (len(table), 1))
    skewed[0] = [0.0, 1.0, 0.0]
    result = dime_augment(
        table, skewed, features, list(GRADED_LABELS), tmp_path / "few", settings=DimeSettings()
    )
    notes = result.counts.set_index("label")
    assert notes.loc["neutral", "added"] == 0 and "single row" in notes.loc["neutral", "note"]
    assert notes.loc["sadness", "added"] == 0 and "no row" in notes.loc["sadness", "note"]
    assert result.rows.empty
    # a class of two rows mixes them with each other
    skewed[1] = [0.0, 1.0, 0.0]
    result = dime_augment(
        table, skewed, features, list(GRADED_LABELS), tmp_path / "two", settings=DimeSettings()
    )
    pairs = set(zip(result.rows["parent_a"], result.rows["parent_b"], strict=True))
    first, second = table["id"].iloc[0], table["id"].iloc[1]
    assert pairs <= {(first, second), (second, first)}
    assert (result.rows["label"] == "neutral").sum() == math.floor(0.3 * (len(table) - 2) + 1e-9) - 2
