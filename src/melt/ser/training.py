"""The training loop: any head, any loss, targets as arrays; model selection on a validation set.

`fit(head, train, targets, loss=..., validation=..., settings=...)` trains with Adam on mini-batches drawn from a
data source (anything with `__len__` and `batch(indices, rng) -> tuple of tensors`), keeps the state of the epoch
with the best validation score, and returns the training curve. Targets are a numpy array: class indices
(int) for `cross_entropy`, or per-item distributions (float [n, classes]) for a distributional loss; `score`
turns validation probabilities and targets into a number to maximise (default: UAR of the argmax).

Determinism: everything random (initialisation, batch order, dropout, crop draws) comes from `settings.seed`, so
a CPU run repeats bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from melt.errors import MeltError


class TrainSettings(BaseModel):
    """The paper's training settings as defaults (MELT §4.3)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    hidden: int = Field(256, ge=1, description="width of the head's hidden layer (not given by the paper)")
    dropout: float = Field(0.2, ge=0, lt=1)
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the training speakers held out for model selection"
    )
    min_per_class: int = Field(5, ge=1, description="fewest training rows a class needs")


class DataSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None) -> tuple[torch.Tensor, ...]: ...


class PooledViews:
    """Pooled features [views, layers, dim] with each item's views (`offsets`, `counts`): in training one view
    per item is drawn per epoch (a crop); without `rng` the item's first view is used."""

    def __init__(
        self, views: np.ndarray, offsets: np.ndarray | None = None, counts: np.ndarray | None = None
    ):
        self.views = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))
        n = len(views) if offsets is None else len(offsets)
        self.offsets = (
            np.arange(n, dtype=np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
        )
        self.counts = np.ones(n, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def subset(self, indices: np.ndarray) -> PooledViews:
        rows = [np.arange(o, o + c) for o, c in zip(self.offsets[indices], self.counts[indices], strict=True)]
        take = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        counts = self.counts[indices]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts
        return PooledViews(self.views[torch.from_numpy(take)].numpy(), offsets, counts)

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None) -> tuple[torch.Tensor, ...]:
        pick = self.offsets[indices]
        if rng is not None:
            pick = pick + (rng.random(len(indices)) * self.counts[indices]).astype(np.int64)
        return (self.views[torch.from_numpy(pick)],)

    def first_views(self) -> torch.Tensor:
        return self.views[torch.from_numpy(self.offsets)]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, targets)


def uar_score(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Unweighted average recall of the argmax over the classes present in `targets` (class indices)."""
    predicted = probabilities.argmax(axis=1)
    classes = np.unique(targets)
    return (
        float(np.mean([np.mean(predicted[targets == c] == c) for c in classes])) if len(classes) else math.nan
    )


@dataclass
class FitResult:
    #: epoch, train_loss, val_loss, val_score (NaN without validation)
    curve: pd.DataFrame
    best_epoch: int
    best_score: float


@contextlib.contextmanager
def _cpu_threads(device: str, threads: int | None):
    if device != "cpu" or threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_tensor(targets: np.ndarray) -> torch.Tensor:
    array = np.asarray(targets)
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float32))


def fit(
    head: nn.Module,
    train: DataSource,
    targets: np.ndarray,
    *,
    settings: TrainSettings,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
    validation: tuple[DataSource, np.ndarray] | None = None,
    score: Callable[[np.ndarray, np.ndarray], float] = uar_score,
    parameters: list[dict[str, Any]] | None = None,
    eval_batch_size: int = 256,
    device: str = "cpu",
    cpu_threads: int | None = 1,
    progress: bool = False,
    description: str = "Training",
) -> FitResult:
    """Train `head` in place with Adam (on `parameters`, optimiser parameter groups, default all of `head`'s at
    `settings.lr`); on return it holds the weights of the epoch with the best validation score (the last epoch
    without validation). Equal scores go to the lower validation loss, then to the earlier epoch.

    `cpu_threads` caps torch's threads on the CPU while training: a head's matrices are so small that thread
    hand-offs cost more than they save (a step takes 0.6 ms on one thread and 5–30 ms on two busy cores); None
    keeps torch's setting (fine-tuning a backbone gains from threads)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with _cpu_threads(device, cpu_threads):
        if len(train) == 0:
            raise MeltError("no training rows")
        torch.manual_seed(settings.seed)
        rng = np.random.default_rng(settings.seed)
        head.to(device)
        optimiser = torch.optim.Adam(parameters or head.parameters(), lr=settings.lr)
        target_tensor = _as_tensor(targets)
        records = []
        best: tuple[float, float, int] | None = None  # (score, -val_loss, epoch)
        best_state: dict[str, Any] | None = None
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            task = bar.add_task(description, total=settings.epochs)
            for epoch in range(1, settings.epochs + 1):
                head.train()
                order = rng.permutation(len(train))
                total, count = 0.0, 0
                for start in range(0, len(order), settings.batch_size):
                    indices = order[start : start + settings.batch_size]
                    inputs = tuple(t.to(device) for t in train.batch(indices, rng))
                    optimiser.zero_grad()
                    value = loss(head(*inputs), target_tensor[torch.from_numpy(indices)].to(device))
                    value.backward()
                    optimiser.step()
                    total += float(value.detach()) * len(indices)
                    count += len(indices)
                record = {
                    "epoch": epoch,
                    "train_loss": total / count,
                    "val_loss": math.nan,
                    "val_score": math.nan,
                }
                if validation is not None and len(validation[0]):
                    logits = predict_logits(head, validation[0], batch_size=eval_batch_size, device=device)
                    val_targets = validation[1]
                    record["val_loss"] = float(loss(logits, _as_tensor(val_targets)))
                    record["val_score"] = score(torch.softmax(logits, dim=1).numpy(), val_targets)
                    key = (record["val_score"], -record["val_loss"], -epoch)
                    if best is None or key > best:
                        best = key
                        best_state = copy.deepcopy(head.state_dict())
                records.append(record)
                bar.advance(task)
        if best_state is not None:
            head.load_state_dict(best_state)
            best_epoch, best_score = -best[2], best[0]
        else:
            best_epoch, best_score = settings.epochs, math.nan
        head.eval()
        return FitResult(
            curve=pd.DataFrame.from_records(records), best_epoch=best_epoch, best_score=best_score
        )


def predict_logits(
    head: nn.Module, data: DataSource, *, batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """Logits for every item of `data` (first views: whole utterances), in eval mode, on the CPU."""
    head.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            indices = np.arange(start, min(start + batch_size, len(data)))
            inputs = tuple(t.to(device) for t in data.batch(indices, None))
            out.append(head(*inputs).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def validation_split(
    speakers: Sequence[object] | None, *, fraction: float, seed: int
) -> tuple[np.ndarray, str]:
    """Boolean mask of validation rows and a description of the rule used.

    Speaker-independent: speakers in a seeded random order join the validation set while it stays within
    `fraction` of the rows, until it holds at least that share; when every speaker alone is larger, the smallest
    speaker is taken. Rows without a speaker (e.g. MSP-Podcast's "Unknown") stay in training: they may be anyone,
    so none of them can be held out as an unseen speaker. Without speakers (or with fewer than two known ones) a
    random `fraction` of the rows is used, and the description says that this is not speaker-independent.
    """
    n = 0 if speakers is None else len(speakers)
    rng = np.random.default_rng([seed, 7])
    mask = np.zeros(n, dtype=bool)
    if fraction <= 0 or n == 0:
        return mask, "none"
    names = pd.Series(list(speakers), dtype="string")
    counts = names.value_counts()  # known speakers only
    if len(counts) < 2:
        size = max(1, round(fraction * n)) if n > 1 else 0
        mask[rng.permutation(n)[:size]] = True
        return (
            mask,
            "random utterances (no speaker column, or fewer than two speakers): not speaker-independent",
        )
    target = fraction * n
    chosen: list[str] = []
    total = 0
    for speaker in rng.permutation(sorted(counts.index)):
        if total >= target:
            break
        if total + counts[speaker] <= target * 1.5 and len(chosen) < len(counts) - 1:
            chosen.append(str(speaker))
            total += int(counts[speaker])
    if not chosen:
        chosen = [str(counts.sort_values(kind="stable").index[0])]
    mask = names.isin(chosen).fillna(False).to_numpy(dtype=bool)
    unknown = int(names.isna().sum())
    kept = f" ({unknown} rows without a speaker kept in training)" if unknown else ""
    return mask, f"speakers {', '.join(sorted(chosen))}{kept}"


def held_out_rows(
    rows: pd.DataFrame, settings: TrainSettings, validation_speakers: list[str] | None, *, source: object
) -> tuple[np.ndarray, str]:
    """The validation mask of `rows` and its rule: the given speakers, or `validation_split`'s seeded choice."""
    speakers = rows["speaker"] if "speaker" in rows.columns else None
    if validation_speakers is not None and speakers is not None:
        is_validation = speakers.astype("string").isin(validation_speakers).fillna(False).to_numpy()
        rule = f"speakers {', '.join(sorted(validation_speakers))} (given)"
    else:
        is_validation, rule = validation_split(
            None if speakers is None else speakers.tolist(),
            fraction=settings.validation_fraction,
            seed=settings.seed,
        )
    if is_validation.all():
        raise MeltError(
            "the validation speakers hold every training row; nothing left to train on", file=source
        )
    return is_validation, rule
