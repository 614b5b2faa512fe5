"""The classification module of the MELT paper (§4.2.1) on a learned weighted sum of hidden states.

`LayerWeights` mixes the layers with softmax weights (all zero logits at the start, so every layer counts the same
at first). `PooledHead` takes the per-layer pooled vectors [batch, layers, dim] of the feature cache:
weighted sum → (standardisation, for eGeMAPS) → Linear → ReLU → Dropout → Linear, one output per class.

`DistributionHead` is the distributional head of Scaling Ambiguity (SPEC §4): the weighted sum of layers, pooled
over frames by multi-head attention (or, with `pooling="mean"`, the mean-pooled cache's vectors), then
Linear → residual blocks of LayerNorm → Linear → Dropout → GELU → Linear, one output per class; its softmax is the
predicted distribution.

A head is any `torch.nn.Module` whose `forward` takes the tensors a training data source yields and returns one
row of logits per item, with a `config()` dict that rebuilds it through `build_head`; `fit` and the model folders
need nothing more.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The paper does not give the hidden width; 256 is s3prl's projector size for the same task.
HIDDEN = 256
DROPOUT = 0.2


class LayerWeights(nn.Module):
    """Softmax-normalised weights over layers, learned; `forward` sums [..., layers, dim] to [..., dim]."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        return torch.einsum("l,...ld->...d", self.weights(), layers)


class _LayerMixingHead(nn.Module):
    """Layer weights over the backbone's hidden states, and an optional standardisation of the mixed features."""

    def __init__(self, num_layers: int, dim: int, standardise: bool):
        super().__init__()
        self.standardise = standardise
        self.layer_weights = LayerWeights(num_layers)
        # fitted on the training data by `fit_standardisation`; identity until then
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def fit_standardisation(self, features: torch.Tensor) -> None:
        """Mean and standard deviation of the weighted inputs' dimensions over the training items [n, layers,
        dim]; only used when `standardise` (a single layer, so the weights are fixed at 1)."""
        if not self.standardise:
            return
        with torch.no_grad():
            mixed = self.layer_weights(features)
            self.mean.copy_(mixed.mean(dim=0))
            std = mixed.std(dim=0, unbiased=False)
            # a constant feature (e.g. a voicing statistic that never varies) must not divide by zero
            self.scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))


class PooledHead(_LayerMixingHead):
    """The paper's head on mean-pooled per-layer features."""

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_classes: int,
        *,
        hidden: int = HIDDEN,
        dropout: float = DROPOUT,
        standardise: bool = False,
    ):
        super().__init__(num_layers, dim, standardise)
        self.num_layers, self.dim, self.num_classes = num_layers, dim, num_classes
        self.hidden, self.dropout = hidden, dropout
        self.classifier = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        mixed = self.layer_weights(pooled)
        if self.standardise:
            mixed = (mixed - self.mean) / self.scale
        return self.classifier(mixed)

    def config(self) -> dict[str, Any]:
        return {
            "kind": "pooled",
            "num_layers": self.num_layers,
            "dim": self.dim,
            "num_classes": self.num_classes,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "standardise": self.standardise,
        }


POOLINGS: tuple[str, ...] = ("attention", "mean")
#: Attention heads of the pooling (the paper's code: 8); fewer when the width is not a multiple of 8.
ATTENTION_HEADS = 8


class AttentionPooling(nn.Module):
    """Multi-head attention of one learned query over the valid frames: [B, T, D] (+ mask [B, T]) -> [B, D]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        frames = self.norm(frames)
        query = self.query.expand(frames.shape[0], 1, frames.shape[2])
        padding = None if mask is None else ~mask.bool()
        pooled, _ = self.attention(query, frames, frames, key_padding_mask=padding, need_weights=False)
        return pooled[:, 0]


class ResidualBlock(nn.Module):
    """x + GELU(Dropout(Linear(LayerNorm(x))))."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.Dropout(dropout), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def attention_heads(dim: int, wanted: int = ATTENTION_HEADS) -> int:
    """The largest of wanted, wanted/2, ... 1 that divides the width (multi-head attention needs it)."""
    heads = wanted
    while heads > 1 and dim % heads:
        heads //= 2
    return max(heads, 1)


class DistributionHead(_LayerMixingHead):
    """The distributional head on the weighted sum of hidden states.

    `pooling="attention"`: `forward(frames, mask)` with frames [B, layers, T, D] (per-layer hidden states: the
    layer weights are learned) or [B, T, D] (frames the cache already mixed with fixed layer weights, see
    `melt.ser.frames`; the head's own weights are then those, frozen) and mask [B, T] of valid frames.
    `pooling="mean"`: `forward(pooled)` with the cache's per-layer means [B, layers, D] (exact for the mean, as for
    `PooledHead`). Returns logits [B, classes]."""

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_classes: int,
        *,
        pooling: str = "attention",
        hidden: int = HIDDEN,
        dropout: float = DROPOUT,
        blocks: int = 1,
        heads: int = ATTENTION_HEADS,
        standardise: bool = False,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        super().__init__(num_layers, dim, standardise)
        self.num_layers, self.dim, self.num_classes = num_layers, dim, num_classes
        self.pooling, self.hidden, self.dropout, self.blocks = pooling, hidden, dropout, blocks
        self.heads = attention_heads(dim, heads)
        self.pool = AttentionPooling(dim, self.heads) if pooling == "attention" else None
        self.projection = nn.Linear(dim, hidden)
        self.body = nn.Sequential(*(ResidualBlock(hidden, dropout) for _ in range(blocks)))
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, num_classes))

    def fix_layer_weights(self, weights) -> None:
        """Use these layer weights (e.g. those the frame cache mixed with) and stop learning them."""
        values = torch.as_tensor(weights, dtype=torch.float32)
        with torch.no_grad():
            self.layer_weights.logits.copy_(torch.log(values.clamp_min(1e-12)))
        self.layer_weights.logits.requires_grad_(False)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pool is None:
            pooled = self.layer_weights(features)
        else:
            frames = features
            if frames.dim() == 4:  # [B, layers, T, D]: mix the layers here
                frames = torch.einsum("l,bltd->btd", self.layer_weights.weights(), frames)
            pooled = self.pool(frames, mask)
        if self.standardise:
            pooled = (pooled - self.mean) / self.scale
        return self.output(self.body(self.projection(pooled)))

    def config(self) -> dict[str, Any]:
        return {
            "kind": "distribution",
            "num_layers": self.num_layers,
            "dim": self.dim,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "blocks": self.blocks,
            "heads": self.heads,
            "standardise": self.standardise,
        }


HEADS: dict[str, type[nn.Module]] = {"pooled": PooledHead, "distribution": DistributionHead}


def build_head(config: dict[str, Any]) -> nn.Module:
    """A head from its `config()`."""
    options = dict(config)
    kind = options.pop("kind")
    return HEADS[kind](**options)
