"""End-to-end fine-tuning: the SSL backbone and the head trained together on audio (no feature cache).

The paper fine-tuned its backbones (16 kHz audio randomly cropped or padded to 5 s, Adam, lr 1e-3, batch 32).
Here every epoch draws a new random crop of each utterance longer than the crop length; shorter ones are used
whole, padding masked for backbones that take an attention mask. The CNN feature encoder stays frozen (the usual
practice: it holds no emotion-specific information and is the most expensive part to back-propagate through),
layerdrop is off (the weighted sum needs every layer). Validation and testing use whole utterances, one forward
pass per utterance for group-norm backbones. Meant for a GPU; it runs on a CPU for small models.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from melt.acoustics.audio import SAMPLE_RATE, AudioError, read_audio
from melt.errors import MeltError
from melt.ser.backbones import HuggingFaceBackbone, masked_mean
from melt.ser.cache import CROP_SECONDS, audio_paths
from melt.ser.heads import PooledHead
from melt.ser.model import (
    TrainedModel,
    check_class_counts,
    labelled_rows,
    load_corpus,
    normalised_labels,
    save_model,
)
from melt.ser.training import TrainSettings, fit, held_out_rows

BACKBONE_FOLDER = "backbone"


class SSLClassifier(nn.Module):
    """Backbone → every hidden state → mean over valid frames → the paper's head (weighted sum inside)."""

    def __init__(self, backbone: HuggingFaceBackbone, head: PooledHead):
        super().__init__()
        self.backbone = backbone
        self.ssl = backbone.model
        self.head = head

    def pooled(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, layers, dim] from zero-padded input values and their lengths in samples."""
        if self.backbone.can_pad() or bool((lengths == lengths[0]).all()):
            mask = None
            if not bool((lengths == values.shape[1]).all()):
                mask = (
                    torch.arange(values.shape[1], device=values.device)[None, :] < lengths[:, None]
                ).long()
            states, frames = self.backbone.hidden_states(values, mask)
            return masked_mean(states, frames)
        # group norm: padding would change every frame, so unequal lengths go through one at a time
        return torch.cat(
            [self.pooled(values[i : i + 1, : int(n)], lengths[i : i + 1]) for i, n in enumerate(lengths)]
        )

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(values, lengths))


class AudioCrops:
    """Signals as a training data source: with an rng, a random crop of `crop_samples` per long signal."""

    def __init__(self, signals: list[np.ndarray], backbone: HuggingFaceBackbone, crop_samples: int):
        self.signals = signals
        self.backbone = backbone
        self.crop_samples = crop_samples

    def __len__(self) -> int:
        return len(self.signals)

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None) -> tuple[torch.Tensor, ...]:
        pieces = []
        for i in indices:
            signal = self.signals[int(i)]
            if rng is not None and len(signal) > self.crop_samples:
                start = int(rng.integers(0, len(signal) - self.crop_samples + 1))
                signal = signal[start : start + self.crop_samples]
            pieces.append(self.backbone.prepare(signal))
        lengths = torch.tensor([len(p) for p in pieces])
        values = torch.zeros(len(pieces), int(lengths.max()))
        for k, piece in enumerate(pieces):
            values[k, : len(piece)] = torch.from_numpy(piece)
        return values, lengths


def _read_signals(
    rows: pd.DataFrame, base: Path, min_samples: int
) -> tuple[list[np.ndarray | None], pd.DataFrame]:
    signals: list[np.ndarray | None] = []
    problems = []
    for row_id, path in zip(rows["id"].astype(str), audio_paths(rows, base), strict=True):
        reason = None
        signal = None
        if path is None:
            reason = "no audio path"
        else:
            try:
                signal = read_audio(path)
                if len(signal) < min_samples:
                    reason = f"too short for the backbone ({1000 * len(signal) / SAMPLE_RATE:.0f} ms)"
                    signal = None
            except AudioError as exc:
                reason = exc.reason
        signals.append(signal)
        if reason:
            problems.append({"id": row_id, "audio": str(path) if path else None, "reason": reason})
    return signals, pd.DataFrame(problems, columns=["id", "audio", "reason"])


def finetune_model(
    backbone: str | Path,
    corpus: str | Path | pd.DataFrame,
    labels: str,
    out_dir: str | Path | None,
    *,
    classes: str | list[str] | None = None,
    settings: TrainSettings | None = None,
    backbone_lr: float | None = None,
    crop_seconds: float = CROP_SECONDS,
    root: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> TrainedModel:
    """Fine-tune `backbone` (hub name or local folder) and the head on `corpus`'s audio. `backbone_lr` defaults to
    the head's lr (the paper's single lr); a lower one (e.g. 1e-5) is the common choice for large backbones."""
    settings = settings or TrainSettings()
    ssl = HuggingFaceBackbone(str(backbone), device=device)
    table, base, source = load_corpus(corpus, root)
    label_values = normalised_labels(table, labels, source=source)
    wanted, rows, row_labels = labelled_rows(
        table, label_values, classes, minimum=settings.min_per_class, source=source, column=labels
    )
    signals, skipped = _read_signals(rows, base, ssl.min_samples)
    present = np.array([s is not None for s in signals])
    if not present.any():
        raise MeltError("no training row has usable audio", file=source)
    rows, row_labels = rows[present].reset_index(drop=True), row_labels[present].reset_index(drop=True)
    signals = [s for s in signals if s is not None]
    check_class_counts(row_labels, wanted, minimum=settings.min_per_class, source=source, column=labels)
    targets = row_labels.map({c: i for i, c in enumerate(wanted)}).to_numpy(dtype=np.int64)
    is_validation, rule = held_out_rows(rows, settings, None, source=source)
    train_index, val_index = np.flatnonzero(~is_validation), np.flatnonzero(is_validation)

    torch.manual_seed(settings.seed)
    head = PooledHead(ssl.num_layers, ssl.dim, len(wanted), hidden=settings.hidden, dropout=settings.dropout)
    if hasattr(ssl.model, "freeze_feature_encoder"):
        ssl.model.freeze_feature_encoder()
    classifier = SSLClassifier(ssl, head)
    parameters = [
        {"params": list(head.parameters()), "lr": settings.lr},
        {"params": [p for p in ssl.model.parameters() if p.requires_grad], "lr": backbone_lr or settings.lr},
    ]
    crop_samples = round(crop_seconds * SAMPLE_RATE)
    train_data = AudioCrops([signals[i] for i in train_index], ssl, crop_samples)
    validation = None
    if len(val_index):
        validation = (AudioCrops([signals[i] for i in val_index], ssl, crop_samples), targets[val_index])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = fit(
            classifier,
            train_data,
            targets[train_index],
            settings=settings,
            validation=validation,
            parameters=parameters,
            eval_batch_size=4,
            device=ssl.device,
            cpu_threads=None,
            progress=progress,
            description=f"Fine-tuning ({labels})",
        )
    ssl.model.eval()
    head.cpu()
    counts = row_labels.iloc[train_index].value_counts()
    description = ssl.description()
    info = {
        "finetuned": True,
        "classes": wanted,
        "head": head.config(),
        "backbone": {**description, "fine-tuned from": str(backbone)},
        "features": {"fingerprint": description["fingerprint"], "crop_seconds": crop_seconds},
        "corpus": source,
        "labels": labels,
        "settings": settings.model_dump(),
        "backbone_lr": backbone_lr or settings.lr,
        "n_train": len(train_index),
        "n_validation": len(val_index),
        "train_counts": {c: int(counts.get(c, 0)) for c in wanted},
        "validation": rule,
        "best_epoch": result.best_epoch,
        "best_validation_uar": None if np.isnan(result.best_score) else result.best_score,
        "skipped": len(skipped),
    }
    from melt import __version__

    info["melt_version"] = __version__
    model = TrainedModel(head=head, classes=wanted, info=info, fit=result)
    if out_dir is not None:
        out = Path(out_dir)
        try:
            ssl.model.save_pretrained(out / BACKBONE_FOLDER)
            ssl.feature_extractor.save_pretrained(out / BACKBONE_FOLDER)
        except OSError as exc:
            raise MeltError(
                f"cannot write the fine-tuned backbone ({exc.strerror or exc})", file=out
            ) from exc
        save_model(model, out, skipped=skipped)
    return model


def pooled_on_the_fly(model: TrainedModel, rows: pd.DataFrame, base: Path, *, device: str = "auto"):
    """Whole-utterance pooled features of `rows` from a fine-tuned model's own backbone: (features of the rows
    with usable audio, present mask, skipped rows)."""
    if model.folder is None:
        raise MeltError("a fine-tuned model is evaluated from its folder (save it first)")
    ssl = HuggingFaceBackbone(str(model.folder / BACKBONE_FOLDER), device=device)
    signals, skipped = _read_signals(rows, base, ssl.min_samples)
    present = np.array([s is not None for s in signals])
    usable = [s for s in signals if s is not None]
    pooled = [ssl.pooled([s]) for s in usable]  # batch 1 and full length, as the paper tests
    whole = np.concatenate(pooled) if pooled else np.empty((0, ssl.num_layers, ssl.dim), dtype=np.float32)
    return whole, present, skipped
