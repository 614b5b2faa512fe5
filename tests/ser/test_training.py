"""The head, the training loop and evaluation on real features of real (espeak-ng) speech."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from melt.errors import MeltError
from melt.ser.backbones import load_backbone
from melt.ser.cache import FeatureCache, extract_features
from melt.ser.model import evaluate_model, load_model, train_model
from melt.ser.training import TrainSettings, validation_split

FAST = TrainSettings(epochs=30, min_per_class=2)


@pytest.fixture(scope="module")
def egemaps_cache(emotion_corpora, tmp_path_factory) -> FeatureCache:
    backbone = load_backbone("egemaps")
    cache = FeatureCache.create(tmp_path_factory.mktemp("egemaps_cache"), backbone)
    for table in (emotion_corpora.train, emotion_corpora.test):
        assert extract_features(table, backbone, cache, progress=False).problems.empty
    return cache


@pytest.fixture(scope="module")
def wav2vec2_cache(emotion_corpora, tiny_backbones, tmp_path_factory) -> FeatureCache:
    backbone = load_backbone(tiny_backbones["wav2vec2"], device="cpu")
    cache = FeatureCache.create(tmp_path_factory.mktemp("w2v_cache"), backbone)
    for table in (emotion_corpora.train, emotion_corpora.test):
        extract_features(table, backbone, cache, progress=False)
    return cache


def test_layer_weights_start_equal_sum_to_one_and_are_learned(wav2vec2_cache, emotion_corpora, tmp_path):
    from melt.ser.heads import PooledHead

    fresh = PooledHead(3, 32, 3)
    np.testing.assert_allclose(fresh.layer_weights.weights().detach().numpy(), [1 / 3] * 3)
    model = train_model(
        wav2vec2_cache, emotion_corpora.train, "label", tmp_path / "m", settings=FAST, progress=False
    )
    weights = model.layer_weights()
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(weights - 1 / 3).max() > 1e-3  # moved away from equal
    saved = pd.read_csv(tmp_path / "m" / "layer_weights.csv")
    np.testing.assert_allclose(saved["weight"], weights, rtol=1e-5)
    for name in ("head.pt", "model.json", "curve.csv", "training_curve.png", "layer_weights.csv"):
        assert (tmp_path / "m" / name).is_file(), name
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["settings"]["lr"] == 1e-3 and info["settings"]["batch_size"] == 32
    assert info["head"]["dropout"] == 0.2
    curve = pd.read_csv(tmp_path / "m" / "curve.csv")
    assert len(curve) == 30 and curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]


def test_head_follows_the_classes(wav2vec2_cache, emotion_corpora):
    model = train_model(
        wav2vec2_cache,
        emotion_corpora.train,
        "label",
        None,
        classes="sadness,anger",
        settings=FAST.model_copy(update={"epochs": 2}),
        progress=False,
    )
    assert model.classes == ["sadness", "anger"]
    assert model.head.classifier[-1].out_features == 2
    assert model.head.classifier[0].in_features == 32
    assert model.info["n_train"] + model.info["n_validation"] == 32  # the neutral rows are left out
    evaluation = evaluate_model(model, wav2vec2_cache, emotion_corpora.test)
    assert evaluation.metrics["excluded"] == {"neutral": 6}
    assert list(evaluation.predictions.columns) == ["id", "label", "predicted", "p_sadness", "p_anger"]
    np.testing.assert_allclose(evaluation.predictions[["p_sadness", "p_anger"]].sum(axis=1), 1.0, rtol=1e-5)


def test_training_is_deterministic_for_a_seed(wav2vec2_cache, emotion_corpora):
    settings = FAST.model_copy(update={"epochs": 5})

    def state(seed: int) -> dict[str, torch.Tensor]:
        model = train_model(
            wav2vec2_cache,
            emotion_corpora.train,
            "label",
            None,
            settings=settings.model_copy(update={"seed": seed}),
            progress=False,
        )
        return model.head.state_dict()

    first, second, other = state(3), state(3), state(4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_model_folder_repeats_byte_for_byte(egemaps_cache, emotion_corpora, tmp_path):
    """Two CPU runs with one seed write the same weights file, byte for byte (not only equal tensors), and the
    same curve and layer weights."""
    settings = FAST.model_copy(update={"epochs": 3})
    for name in ("a", "b"):
        train_model(
            egemaps_cache, emotion_corpora.train, "label", tmp_path / name, settings=settings, progress=False
        )
    for file in ("head.pt", "curve.csv", "layer_weights.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_validation_speakers_are_held_out_whole():
    speakers = ["a"] * 50 + ["b"] * 30 + ["c"] * 12 + ["d"] * 8 + ["e"] * 100
    mask, rule = validation_split(speakers, fraction=0.1, seed=0)
    chosen = {s for s, m in zip(speakers, mask, strict=True) if m}
    assert all(m for s, m in zip(speakers, mask, strict=True) if s in chosen)  # no speaker on both sides
    assert 0.04 <= mask.mean() <= 0.15
    assert rule.startswith("speakers")
    mask, rule = validation_split([None] * 20, fraction=0.1, seed=0)
    assert mask.sum() == 2 and "not speaker-independent" in rule


def test_rows_without_a_speaker_do_not_make_the_split_speaker_dependent():
    """MSP-Podcast's "Unknown" speakers load as missing: those rows stay in training, and the validation set is
    still made of whole known speakers (not a random share of utterances with every speaker on both sides)."""
    speakers = ["a"] * 30 + ["b"] * 30 + ["c"] * 30 + ["d"] * 10 + [None] * 5
    for seed in range(5):
        mask, rule = validation_split(speakers, fraction=0.1, seed=seed)
        chosen = {s for s, m in zip(speakers, mask, strict=True) if m}
        trained = {s for s, m in zip(speakers, mask, strict=True) if not m}
        assert chosen and None not in chosen and not chosen & trained, (seed, chosen)
        assert rule.startswith("speakers") and "5 rows without a speaker" in rule
    # a single known speaker cannot be split by speaker: a random share, said so
    mask, rule = validation_split(["a"] * 20 + [None] * 5, fraction=0.2, seed=0)
    assert mask.sum() == 5 and "not speaker-independent" in rule


def test_egemaps_generalises_across_corpora_and_shuffled_labels_do_not(egemaps_cache, emotion_corpora):
    """Trained on a CREMA-D layout, tested on a RAVDESS layout (each read by its loader; other speakers, voices and
    sentences): prosody carries the emotion, so eGeMAPS generalises; with the training labels shuffled the same
    pipeline falls to chance (1/3)."""
    real, shuffled = [], []
    for seed in (0, 1, 2):
        settings = TrainSettings(epochs=60, min_per_class=2, seed=seed)
        model = train_model(
            egemaps_cache, emotion_corpora.train, "label", None, settings=settings, progress=False
        )
        real.append(evaluate_model(model, egemaps_cache, emotion_corpora.test).metrics["uar"])
        table = emotion_corpora.train.copy()
        table["label"] = np.random.default_rng(seed).permutation(table["label"].to_numpy())
        model = train_model(egemaps_cache, table, "label", None, settings=settings, progress=False)
        shuffled.append(evaluate_model(model, egemaps_cache, emotion_corpora.test).metrics["uar"])
    assert np.mean(real) >= 0.6, real
    assert np.mean(shuffled) <= 0.5, shuffled
    assert np.mean(real) - np.mean(shuffled) >= 0.2


def test_evaluation_outputs(egemaps_cache, emotion_corpora, tmp_path):
    model = train_model(
        egemaps_cache, emotion_corpora.train, "label", tmp_path / "model", settings=FAST, progress=False
    )
    evaluation = evaluate_model(
        tmp_path / "model", egemaps_cache.folder, emotion_corpora.test, tmp_path / "eval"
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"uar", "acc", "f1", "per_class_recall", "n", "classes"}
    assert metrics["n"] == 18
    recall = metrics["per_class_recall"]
    assert metrics["uar"] == pytest.approx(np.mean(list(recall.values())))
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert len(predictions) == 18
    assert metrics["acc"] == pytest.approx((predictions["label"] == predictions["predicted"]).mean())
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    assert evaluation.confusion.to_numpy().sum() == 18
    reloaded = load_model(tmp_path / "model")
    assert reloaded.classes == model.classes
    np.testing.assert_allclose(reloaded.layer_weights(), model.layer_weights())


def test_bad_training_input_is_one_clear_error(egemaps_cache, wav2vec2_cache, emotion_corpora, tmp_path):
    train = emotion_corpora.train
    with pytest.raises(MeltError, match=r"missing column.*'llm_label'"):
        train_model(egemaps_cache, train, "llm_label", None, settings=FAST, progress=False)
    with pytest.raises(MeltError, match=r"none of the classes.*found: (anger|neutral|sadness) \(16\)"):
        train_model(egemaps_cache, train, "label", None, classes="joy,fear", settings=FAST, progress=False)
    with pytest.raises(MeltError, match=r"too few training rows per class.*anger: 1"):
        few = pd.concat([train[train["label"] != "anger"], train[train["label"] == "anger"].iloc[:1]])
        train_model(egemaps_cache, few, "label", None, settings=FAST, progress=False)
    with pytest.raises(MeltError, match="at least two classes"):
        train_model(
            egemaps_cache, train[train["label"] == "anger"], "label", None, settings=FAST, progress=False
        )
    with pytest.raises(MeltError, match="no rows"):
        train_model(egemaps_cache, train.iloc[:0], "label", None, settings=FAST, progress=False)
    with pytest.raises(MeltError, match="no labelled rows"):
        train_model(egemaps_cache, train.assign(label=None), "label", None, settings=FAST, progress=False)
    disjoint = emotion_corpora.test.assign(label="joy")
    model = train_model(
        egemaps_cache, train, "label", None, settings=FAST.model_copy(update={"epochs": 2}), progress=False
    )
    with pytest.raises(MeltError, match="share no class"):
        evaluate_model(model, egemaps_cache, disjoint)
    with pytest.raises(MeltError, match="trained on features of 'egemaps'"):
        evaluate_model(model, wav2vec2_cache, emotion_corpora.test)
    missing_audio = train.assign(audio=[str(tmp_path / "gone.wav")] * len(train))
    with pytest.raises(MeltError, match=r"no training row has features.*file not found"):
        train_model(egemaps_cache, missing_audio, "label", None, settings=FAST, progress=False)


def test_rows_without_audio_are_skipped_and_listed(egemaps_cache, emotion_corpora, tmp_path):
    table = emotion_corpora.train.copy()
    table.loc[[0, 5], "audio"] = str(tmp_path / "gone.wav")
    model = train_model(
        egemaps_cache,
        table,
        "label",
        tmp_path / "m",
        settings=FAST.model_copy(update={"epochs": 2}),
        progress=False,
    )
    assert model.info["skipped"] == 2
    skipped = pd.read_csv(tmp_path / "m" / "skipped.csv")
    assert skipped["id"].tolist() == table["id"].iloc[[0, 5]].tolist()
    assert set(skipped["reason"]) == {"file not found"}
