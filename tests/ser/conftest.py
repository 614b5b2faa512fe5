"""Session fixtures of the SER tests: tiny random-weight SSL backbones saved like hub models, and espeak-ng
emotion corpora (built once per session; torch and transformers are imported here once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from corpora import Speech

from .corpora import GradedCorpus, acted_corpora, graded_iemocap, write_distributions

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
    tess: pd.DataFrame
    tess_path: Path


@pytest.fixture(scope="session")
def ser_speech(tmp_path_factory) -> Speech:
    return Speech(tmp_path_factory.mktemp("ser_speech"))


@pytest.fixture(scope="session")
def emotion_corpora(tmp_path_factory, ser_speech) -> EmotionCorpora:
    """Training: a CREMA-D layout, four actors × three emotions × 4 clips (load_cremad); test: a RAVDESS layout,
    two other actors × three emotions × 3 clips (load_ravdess), and a TESS layout, two speakers × anger and
    sadness × 3 words and one pleasant surprise (load_tess)."""
    folder = tmp_path_factory.mktemp("acted")
    train, test, tess = acted_corpora(folder, ser_speech)
    paths = {name: folder / f"{name}.parquet" for name in ("cremad", "ravdess", "tess")}
    return EmotionCorpora(train, test, paths["cremad"], paths["ravdess"], tess, paths["tess"])


@pytest.fixture(scope="session")
def graded_corpus(tmp_path_factory, ser_speech) -> GradedCorpus:
    """An IEMOCAP layout (load_iemocap) of graded sad-to-angry prosody with rater votes and a panel."""
    return graded_iemocap(tmp_path_factory.mktemp("graded"), ser_speech)


@pytest.fixture(scope="session")
def graded_distributions(graded_corpus, tmp_path_factory) -> Path:
    """The graded corpus's distributions.parquet, made by `melt ambiguity`'s API."""
    return write_distributions(graded_corpus, tmp_path_factory.mktemp("graded_amb"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine run several times faster on one thread than on two busy ones."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
