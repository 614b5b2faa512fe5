"""Losses for training on emotion distributions (soft targets), and the model-selection score.

Every loss takes logits [batch, classes] and target distributions [batch, classes] (rows summing to 1) and returns
the mean over the batch:

- `jsd-entropy` (Scaling Ambiguity): JSD(P, Q) + λ · H(P), P = softmax(logits), Q the target, with
  JSD = ½·KL(P‖M) + ½·KL(Q‖M), M = (P + Q)/2, and H the entropy of the prediction; λ = 0.08 in the paper.
  Natural logarithms, as in the paper's training code: JSD in nats lies in [0, ln 2]; the metrics
  (`melt.ambiguity.metrics.jensen_shannon`) use base 2 and lie in [0, 1], so the loss's JSD term is the
  metric × ln 2.
- `soft-ce`: cross-entropy with the target distribution, −Σ_c q_c log p_c (with one-hot targets: the usual
  cross-entropy).
- `kl`: KL(Q‖P) = Σ_c q_c (log q_c − log p_c): soft-ce minus the target's own entropy (same gradient, a loss
  that reaches 0 when P = Q).

Computed from log-softmax, so a saturated prediction gives finite values and gradients (no log 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

#: λ of the paper's loss (JSD + 0.08 · mean entropy of the prediction).
ENTROPY_WEIGHT = 0.08
LOSSES: tuple[str, ...] = ("jsd-entropy", "soft-ce", "kl")


def _log_target(targets: torch.Tensor) -> torch.Tensor:
    """log q with −inf where q = 0 (those terms carry no weight)."""
    return torch.where(targets > 0, torch.log(targets.clamp_min(1e-38)), torch.full_like(targets, -math.inf))


def jensen_shannon_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """JSD(softmax(logits), targets) per row, natural log (in [0, ln 2])."""
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    log_q = _log_target(targets)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (p * (log_p - log_m)).sum(dim=1)
    # q · (log q − log m) is 0 where q = 0; log q is replaced there so that no inf · 0 is ever formed
    safe_log_q = torch.where(targets > 0, log_q, torch.zeros_like(log_q))
    kl_qm = (targets * (safe_log_q - log_m)).sum(dim=1)
    return 0.5 * (kl_pm + kl_qm)


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in nats."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def jsd_entropy(
    logits: torch.Tensor, targets: torch.Tensor, entropy_weight: float = ENTROPY_WEIGHT
) -> torch.Tensor:
    return jensen_shannon_nats(logits, targets).mean() + entropy_weight * prediction_entropy(logits).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kl_divergence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_q = torch.where(targets > 0, _log_target(targets), torch.zeros_like(targets))
    return (targets * (log_q - torch.log_softmax(logits, dim=1))).sum(dim=1).mean()


def distribution_loss(
    name: str, entropy_weight: float = ENTROPY_WEIGHT
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss called `name` (one of `LOSSES`); `entropy_weight` is λ of jsd-entropy."""
    if name == "jsd-entropy":
        return lambda logits, targets: jsd_entropy(logits, targets, entropy_weight)
    if name == "soft-ce":
        return soft_cross_entropy
    if name == "kl":
        return kl_divergence
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


def jsd_score(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Model selection on distributions: minus the mean JSD (base 2, the metric's definition), to maximise."""
    from melt.ambiguity.metrics import jensen_shannon

    return -float(jensen_shannon(renormalised(probabilities), renormalised(targets)).mean())


def renormalised(values: np.ndarray) -> np.ndarray:
    """Rows in float64 scaled to sum exactly to 1 (softmax in float32 is off by ~1e-7)."""
    array = np.asarray(values, dtype=np.float64)
    return array / array.sum(axis=1, keepdims=True)
