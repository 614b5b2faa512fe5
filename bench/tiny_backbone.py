"""What the SER benchmarks share: a small random-weight backbone saved as a hub checkpoint, and peak memory."""

from __future__ import annotations

import resource
from pathlib import Path


def rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_backbone(folder: Path) -> Path:
    """A 4-layer, 256-wide wav2vec 2.0 (layer-norm CNN, attention mask) with random weights, saved under `folder`
    as a hub checkpoint is laid out: big enough for extraction to cost what it costs, small enough for a CPU."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(256,) * 7,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    model_dir = folder / "backbone-4x256"
    Wav2Vec2Model(config).save_pretrained(model_dir)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(model_dir)
    return model_dir
