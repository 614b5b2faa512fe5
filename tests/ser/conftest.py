"""Session fixtures of the SER tests: tiny random-weight SSL backbones saved like hub models, and espeak-ng
emotion corpora (built once per session; torch and transformers are imported here once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from .corpora import TEST_VOICES, TRAIN_VOICES, emotion_corpus

pytest.importorskip("torch", reason="the SER tests need the `ser` extra (make install)")
pytest.importorskip("transformers", reason="the SER tests need the `ser` extra (make install)")


def _tiny(kind: str, folder: Path) -> Path:
    """A 2-layer, 32-wide model of `kind` (wav2vec2, hubert, wavlm, data2vec) with random weights, saved with its feature extractor config exactly as
    a hub checkpoint is laid out (config.json, model.safetensors, preprocessor_config.json)."""
    import torch
    from transformers import (
        Data2VecAudioConfig,
        Data2VecAudioModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WavLMConfig,
        WavLMModel,
    )

    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed({"wav2vec2": 1, "hubert": 2, "wavlm": 3, "data2vec": 4}[kind])
    if kind == "wav2vec2":  # like wav2vec2-base: group-norm CNN, no attention mask
        model = Wav2Vec2Model(Wav2Vec2Config(**common, feat_extract_norm="group"))
        extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    elif kind == "data2vec":  # layer-norm CNN, but stacked positional convolutions
        del common["num_conv_pos_embeddings"]
        model = Data2VecAudioModel(
            Data2VecAudioConfig(**common, num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
        )
        extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    elif kind == "hubert":  # layer-norm variant (like hubert-large)
        model = HubertModel(HubertConfig(**common, feat_extract_norm="layer", do_stable_layer_norm=True))
        extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    else:  # like wavlm-base-plus: layer-norm CNN, attention mask, no normalisation
        model = WavLMModel(WavLMConfig(**common, feat_extract_norm="layer", do_stable_layer_norm=True))
        extractor = Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True)
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = folder / f"tiny-{kind}"
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("backbones")
    return {kind: _tiny(kind, folder) for kind in ("wav2vec2", "hubert", "wavlm", "data2vec")}


@dataclass
class EmotionCorpora:
    train: pd.DataFrame
    test: pd.DataFrame
    train_path: Path
    test_path: Path


@pytest.fixture(scope="session")
def emotion_corpora(tmp_path_factory) -> EmotionCorpora:
    """Training: three voices × three emotions × 4 clips; test: two other voices × three emotions × 3 clips."""
    train_dir = tmp_path_factory.mktemp("emo_train")
    test_dir = tmp_path_factory.mktemp("emo_test")
    train = emotion_corpus(train_dir, corpus="espeak_a", voices=TRAIN_VOICES, per_emotion=4, seed=1)
    test = emotion_corpus(
        test_dir, corpus="espeak_b", voices=TEST_VOICES, per_emotion=3, seed=2, split="test"
    )
    return EmotionCorpora(train, test, train_dir / "corpus.parquet", test_dir / "corpus.parquet")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine run several times faster on one thread than on two busy ones."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
