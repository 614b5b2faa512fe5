"""Backbones loaded by path exactly as a hub name would be: every hidden state pooled over the valid frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melt.acoustics.audio import read_audio
from melt.errors import MeltError
from melt.ser.backbones import EGEMAPS, load_backbone, masked_mean


@pytest.fixture(scope="module")
def signals(emotion_corpora) -> list[np.ndarray]:
    """Three real utterances of different lengths."""
    paths = emotion_corpora.train.sort_values("duration")["audio"].iloc[[0, 20, -1]]
    found = [read_audio(p) for p in paths]
    assert len({len(s) for s in found}) == 3
    return found


MODEL_TYPES = {"wav2vec2": "wav2vec2", "hubert": "hubert", "wavlm": "wavlm", "data2vec": "data2vec-audio"}


@pytest.mark.parametrize("kind", list(MODEL_TYPES))
def test_loads_by_path_with_every_hidden_state(tiny_backbones, kind):
    backbone = load_backbone(tiny_backbones[kind], device="cpu")
    assert backbone.num_layers == 3  # CNN/embedding output + 2 transformer layers
    assert backbone.dim == 32
    assert backbone.fingerprint.startswith("sha256:")
    assert backbone.description()["model_type"] == MODEL_TYPES[kind]
    # found by trying: group norm (wav2vec2-base-like) and data2vec-audio's positional convolutions leak padding
    assert backbone.can_pad() is (kind in ("hubert", "wavlm"))


@pytest.mark.parametrize("kind", list(MODEL_TYPES))
def test_masked_padding_gives_the_unpadded_pooled_vector(tiny_backbones, signals, kind):
    backbone = load_backbone(tiny_backbones[kind], device="cpu")
    together = backbone.pooled(signals)
    alone = np.concatenate([backbone.pooled([s]) for s in signals])
    assert together.shape == (3, 3, 32)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    # the layers differ from each other: the pooled vectors are hidden states, not one repeated tensor
    assert not np.allclose(together[:, 0], together[:, -1])


def test_padded_batch_is_really_padded_and_masked(tiny_backbones, signals):
    """The layer-norm model runs the three signals in one padded forward pass, and the frame mask comes from the
    model's own output-length formula; without the mask the padding would leak into the mean."""
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    values, mask = backbone.batch_inputs(signals)
    assert mask is not None and values.shape[1] == max(len(s) for s in signals)
    with torch.inference_mode():
        states, frames = backbone.hidden_states(values, mask)
        expected = backbone.model._get_feat_extract_output_lengths(torch.tensor([len(s) for s in signals]))
        assert frames.sum(dim=1).tolist() == expected.tolist()
        unmasked = states.mean(dim=2).numpy()
        masked = masked_mean(states, frames).numpy()
    alone = backbone.pooled([signals[0]])[0]
    np.testing.assert_allclose(masked[0], alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(unmasked[0], alone, atol=1e-3)


def test_group_norm_model_would_change_under_padding(tiny_backbones, signals):
    """Why wav2vec2-base-like models never share a padded batch: their group-norm CNN normalises over the
    padding too, so even masked, the valid frames change."""
    backbone = load_backbone(tiny_backbones["wav2vec2"], device="cpu")
    short, long = signals[0], signals[2]
    values = torch.zeros(1, len(long))
    values[0, : len(short)] = torch.from_numpy(backbone.prepare(short))
    mask = torch.zeros(1, len(long), dtype=torch.long)
    mask[0, : len(short)] = 1
    with torch.inference_mode():
        states, frames = backbone.hidden_states(values, mask)
        padded = masked_mean(states, frames).numpy()[0]
    assert not np.allclose(padded, backbone.pooled([short])[0], atol=1e-3)


def test_egemaps_backbone_is_one_layer_of_88_functionals(signals):
    backbone = load_backbone("egemaps")
    assert backbone.name == EGEMAPS and backbone.standardise
    pooled = backbone.pooled(signals[:2])
    assert pooled.shape == (2, 1, 88)
    assert np.isfinite(pooled).all()


def test_unloadable_hub_name_says_it_needs_a_local_path_or_the_hub(monkeypatch, tmp_path):
    """Not cached, hub unreachable (a closed port on this machine stands for the missing network): one error
    naming the backbone and what would make it load, at once rather than after half a minute of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(MeltError) as error:
        load_backbone("microsoft/wavlm-base-plus", device="cpu")
    message = str(error.value)
    assert "microsoft/wavlm-base-plus" in message
    assert "local folder" in message and ("hub" in message)


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(MeltError, match="no such model folder"):
        load_backbone(str(tmp_path / "models" / "nothing" / "here"), device="cpu")


def test_folder_without_a_speech_model_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(folder)
    with pytest.raises(MeltError, match="not a speech SSL model"):
        load_backbone(folder, device="cpu")


def test_cuda_request_without_a_gpu_is_a_clear_error(tiny_backbones):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MeltError, match="no CUDA GPU"):
        load_backbone(tiny_backbones["wavlm"], device="cuda")


def test_long_signals_are_pooled_over_windows(tiny_backbones, signals, monkeypatch):
    """Attention memory grows with the square of the length, so a signal over MAX_SECONDS is cut into
    near-equal windows and its vector is their frame-weighted mean."""
    import melt.ser.backbones as backbones

    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    long = signals[2]
    monkeypatch.setattr(backbones, "MAX_SECONDS", 1)
    windows = np.array_split(long, -(-len(long) // 16000))
    assert len(windows) >= 2
    pooled = backbone.pooled([signals[0][:12000], long])
    means, frames = zip(*(backbone._pooled_batch([w]) for w in windows), strict=True)
    weights = np.concatenate(frames) / np.concatenate(frames).sum()
    np.testing.assert_allclose(
        pooled[1], np.tensordot(weights, np.concatenate(means), axes=1), rtol=1e-4, atol=1e-5
    )
    monkeypatch.setattr(backbones, "MAX_SECONDS", 60)
    whole = backbone.pooled([long])[0]
    assert not np.allclose(pooled[1], whole, atol=1e-4)  # windows are an approximation, used only when needed
