"""The classification module of the MELT paper (§4.2.1) on a learned weighted sum of hidden states.

`LayerWeights` mixes the layers with softmax weights (all zero logits at the start, so every layer counts the same
at first). `PooledHead` takes the per-layer pooled vectors [batch, layers, dim] of the feature cache:
weighted sum → (standardisation, for eGeMAPS) → Linear → ReLU → Dropout → Linear, one output per class.

A head is any `torch.nn.Module` whose `forward` takes the tensors a training data source yields and returns one
row of logits per item, with a `config()` dict that rebuilds it through `build_head`; `fit` and the model folders
need nothing more. Heads on other inputs (e.g. attention pooling over frame features) follow the same shape.
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


class PooledHead(nn.Module):
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
        super().__init__()
        self.num_layers, self.dim, self.num_classes = num_layers, dim, num_classes
        self.hidden, self.dropout, self.standardise = hidden, dropout, standardise
        self.layer_weights = LayerWeights(num_layers)
        # fitted on the training data by `fit_standardisation`; identity until then
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.classifier = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

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


HEADS: dict[str, type[nn.Module]] = {"pooled": PooledHead}


def build_head(config: dict[str, Any]) -> nn.Module:
    """A head from its `config()`."""
    options = dict(config)
    kind = options.pop("kind")
    return HEADS[kind](**options)
