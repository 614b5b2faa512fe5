"""Train and evaluate an emotion classifier on a corpus table and a feature cache; model folders.

`train_model` keeps the rows whose label (normalised with the MELT label set) is among the classes, looks up
their features, holds out a speaker-independent share of the training speakers for model selection, trains the
head (`training.fit`) and writes a model folder:

- `head.pt` (state dict), `model.json` (classes, head config, backbone identity, settings, data counts, the
  validation speakers, the best epoch, melt version and date), `layer_weights.csv`, `curve.csv`,
  `training_curve.png`, `skipped.csv` (rows without usable audio, with the reason).

`evaluate_model` scores a model on a table: UAR (mean recall over the classes present), ACC, macro-F1,
per-class recall, the confusion matrix and per-utterance predictions with class probabilities.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melt import __version__
from melt.analysis.metrics import classification_scores, confusion_matrix, recall_per_class
from melt.corpus.labels import MELT_LABEL_SET
from melt.corpus.schema import atomic_write, read_table, require_columns, write_table
from melt.errors import MeltError
from melt.ser import plots
from melt.ser.cache import FeatureCache, lookup
from melt.ser.heads import PooledHead, build_head
from melt.ser.training import FitResult, PooledViews, TrainSettings, fit, held_out_rows, predict_logits

MODEL_JSON = "model.json"
HEAD_WEIGHTS = "head.pt"


@dataclass
class TrainedModel:
    head: torch.nn.Module
    classes: list[str]
    info: dict[str, Any]
    folder: Path | None = None
    fit: FitResult | None = None

    def layer_weights(self) -> np.ndarray:
        return self.head.layer_weights.weights().detach().cpu().numpy()


@dataclass
class Evaluation:
    #: uar, acc, f1, n, per_class_recall {class: recall}, excluded {label: rows}, skipped (rows without audio)
    metrics: dict[str, Any]
    #: id, label, predicted, p_<class>... for every scored row
    predictions: pd.DataFrame
    confusion: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_corpus(
    corpus: str | Path | pd.DataFrame, root: str | Path | None = None
) -> tuple[pd.DataFrame, Path, str]:
    """(table, folder that relative audio paths start from, name for messages)."""
    if isinstance(corpus, pd.DataFrame):
        if "id" not in corpus.columns:
            raise MeltError("corpus table has no `id` column")
        # a table read from a file and passed on (e.g. by the CLI) names the file in messages
        source = str(corpus.attrs.get("source", "<table>"))
        table, base = corpus.reset_index(drop=True), Path(root or ".")
    else:
        path = Path(corpus)
        table, base, source = read_table(path), Path(root) if root is not None else path.parent, str(path)
    if table.empty:
        raise MeltError("the corpus table has no rows", file=source)
    return table, base, source


def normalised_labels(table: pd.DataFrame, column: str, *, source: str) -> pd.Series:
    """The label column normalised with the MELT label set (happy → joy, ...; other labels lower-cased)."""
    require_columns(table, [column], source=source, purpose="training or evaluating on labels")
    return MELT_LABEL_SET.normalize_series(table[column].astype("object"))


def _parse_classes(classes: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    if classes is None:
        return None
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    cleaned = [MELT_LABEL_SET.normalize(c) for c in items]
    cleaned = [c for c in dict.fromkeys(cleaned) if c]
    if not cleaned:
        raise MeltError("--classes names no class")
    return cleaned


def labelled_rows(
    table: pd.DataFrame,
    label_values: pd.Series,
    classes: str | list[str] | tuple[str, ...] | None,
    *,
    minimum: int,
    source: str,
    column: str,
) -> tuple[list[str], pd.DataFrame, pd.Series]:
    """The head's classes (`classes`, default every label in the column) and the rows holding one of them, with
    their labels; fewer than two classes, or a class under `minimum` rows, is an error."""
    wanted = _parse_classes(classes) or sorted(label_values.dropna().unique())
    if not wanted:
        raise MeltError("no labelled rows", file=source, column=column)
    if len(wanted) < 2:
        raise MeltError(
            f"a classifier needs at least two classes; {wanted} is all there is", file=source, column=column
        )
    keep = label_values.isin(wanted).to_numpy()
    check_class_counts(label_values, wanted, minimum=minimum, source=source, column=column)
    return wanted, table[keep].reset_index(drop=True), label_values[keep].reset_index(drop=True)


def check_class_counts(
    labels: pd.Series, classes: list[str], *, minimum: int, source: str, column: str
) -> None:
    """One clear error when the classes share nothing with the labels or a class has too few rows. `labels` are
    all the rows' labels, so that the error can show the ones found."""
    counts = labels.value_counts()
    present = [c for c in classes if counts.get(c, 0) > 0]
    if not present:
        found = ", ".join(f"{k} ({v})" for k, v in counts.head(8).items()) or "none"
        raise MeltError(
            f"none of the classes {classes} occurs among the training labels (found: {found})",
            file=source,
            column=column,
        )
    few = {c: int(counts.get(c, 0)) for c in classes if counts.get(c, 0) < minimum}
    if few:
        shown = ", ".join(f"{c}: {n}" for c, n in few.items())
        raise MeltError(
            f"too few training rows per class ({shown}; at least {minimum} needed): drop the class from "
            "--classes / the test classes, or lower --min-per-class",
            file=source,
            column=column,
        )


def train_model(
    features: FeatureCache | str | Path,
    corpus: str | Path | pd.DataFrame,
    labels: str,
    out_dir: str | Path | None,
    *,
    classes: str | list[str] | None = None,
    settings: TrainSettings | None = None,
    root: str | Path | None = None,
    validation_speakers: list[str] | None = None,
    device: str = "cpu",
    plots_too: bool = True,
    progress: bool = True,
) -> TrainedModel:
    """Train the paper's head on cached features of `corpus`'s rows labelled in column `labels`.

    `classes` fixes the head's outputs (default: every label in the column); rows with other labels are left
    out. `validation_speakers` overrides the seeded choice of held-out speakers (the experiment passes the same
    speakers to every label source, so their models are selected on the same utterances).
    """
    settings = settings or TrainSettings()
    cache = features if isinstance(features, FeatureCache) else FeatureCache.open(features)
    table, base, source = load_corpus(corpus, root)
    label_values = normalised_labels(table, labels, source=source)
    wanted, rows, row_labels = labelled_rows(
        table, label_values, classes, minimum=settings.min_per_class, source=source, column=labels
    )

    found = lookup(cache, rows, root=base, with_crops=True)
    if not found.present.any():
        reasons = found.problems["reason"].value_counts().head(3)
        shown = "; ".join(f"{n} × {r}" for r, n in reasons.items())
        raise MeltError(f"no training row has features ({shown})", file=source)
    rows = rows[found.present].reset_index(drop=True)
    row_labels = row_labels[found.present].reset_index(drop=True)
    check_class_counts(row_labels, wanted, minimum=settings.min_per_class, source=source, column=labels)
    targets = row_labels.map({c: i for i, c in enumerate(wanted)}).to_numpy(dtype=np.int64)

    is_validation, rule = held_out_rows(rows, settings, validation_speakers, source=source)
    data = PooledViews(found.views, found.view_offsets, found.view_counts)
    train_index = np.flatnonzero(~is_validation)
    val_index = np.flatnonzero(is_validation)
    train_data = data.subset(train_index)
    validation = None
    if len(val_index):
        validation = (PooledViews(found.whole[val_index]), targets[val_index])

    torch.manual_seed(settings.seed)
    head = PooledHead(
        cache.num_layers,
        cache.dim,
        len(wanted),
        hidden=settings.hidden,
        dropout=settings.dropout,
        standardise=bool(cache.manifest["backbone"].get("standardise", False)),
    )
    head.fit_standardisation(train_data.views)
    result = fit(
        head,
        train_data,
        targets[train_index],
        settings=settings,
        validation=validation,
        device=device,
        progress=progress,
        description=f"Training ({labels})",
    )
    head.cpu()
    counts = row_labels.iloc[train_index].value_counts()
    info = {
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "finetuned": False,
        "classes": wanted,
        "head": head.config(),
        "backbone": cache.manifest["backbone"],
        "features": {k: cache.manifest[k] for k in ("fingerprint", "pooling", "crop_seconds", "crop_seed")},
        "corpus": source,
        "labels": labels,
        "settings": settings.model_dump(),
        "n_train": len(train_index),
        "n_validation": len(val_index),
        "train_counts": {c: int(counts.get(c, 0)) for c in wanted},
        "rows_with_crops": int((found.view_counts[train_index] > 1).sum()),
        "validation": rule,
        "best_epoch": result.best_epoch,
        "best_validation_uar": None if np.isnan(result.best_score) else result.best_score,
        "skipped": int((~found.present).sum()),
    }
    model = TrainedModel(head=head, classes=wanted, info=info, fit=result)
    if out_dir is not None:
        save_model(model, out_dir, skipped=found.problems, plots_too=plots_too)
    return model


def save_model(
    model: TrainedModel, out_dir: str | Path, *, skipped: pd.DataFrame | None = None, plots_too: bool = True
) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.head.state_dict().items()}
        # saved to a buffer: torch.save names its archive's records after the file, and the temporary file's
        # name is random, so the same weights would give different bytes
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(out / HEAD_WEIGHTS, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        weights = model.layer_weights()
        write_table(
            pd.DataFrame({"layer": range(len(weights)), "weight": weights}), out / "layer_weights.csv"
        )
        if model.fit is not None:
            write_table(model.fit.curve, out / "curve.csv")
            if plots_too:
                plots.training_curve(model.fit.curve, model.fit.best_epoch, out / "training_curve.png")
        if skipped is not None:
            write_table(skipped, out / "skipped.csv")
        # model.json last: a folder with it is complete
        text = json.dumps(model.info, indent=2, default=str) + "\n"
        atomic_write(out / MODEL_JSON, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise MeltError(f"cannot write the model ({exc.strerror or exc})", file=out) from exc
    model.folder = out
    return out


def load_model(folder: str | Path) -> TrainedModel:
    folder = Path(folder)
    info_path = folder / MODEL_JSON
    if not info_path.is_file():
        raise MeltError(f"not a model folder: no {MODEL_JSON} (train one with `melt ser train`)", file=folder)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        head = build_head(info["head"])
        head.load_state_dict(torch.load(folder / HEAD_WEIGHTS, map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise MeltError(f"unreadable model folder ({exc})", file=folder) from exc
    head.eval()
    return TrainedModel(head=head, classes=list(info["classes"]), info=info, folder=folder)


def evaluate_model(
    model: TrainedModel | str | Path,
    features: FeatureCache | str | Path | None,
    corpus: str | Path | pd.DataFrame,
    out_dir: str | Path | None = None,
    *,
    labels: str = "label",
    root: str | Path | None = None,
    device: str = "auto",
    plots_too: bool = True,
) -> Evaluation:
    """Score `model` on the rows of `corpus` whose label is among its classes; rows with other labels are
    counted in `excluded`, rows without usable audio in `skipped`. A fine-tuned model computes its features
    from the audio (no cache)."""
    if not isinstance(model, TrainedModel):
        model = load_model(model)
    table, base, source = load_corpus(corpus, root)
    truth = normalised_labels(table, labels, source=source)
    scored = truth.isin(model.classes).to_numpy()
    excluded = truth[~scored].fillna("<missing>").value_counts()
    if not scored.any():
        found = ", ".join(f"{k} ({v})" for k, v in truth.value_counts().head(8).items()) or "none"
        raise MeltError(
            f"the test labels share no class with the model's classes {model.classes} (found: {found})",
            file=source,
            column=labels,
        )
    rows = table[scored].reset_index(drop=True)
    truth = truth[scored].reset_index(drop=True)
    whole, present, skipped = _test_features(model, features, rows, base, device)
    if not present.any():
        reasons = "; ".join(f"{n} × {r}" for r, n in skipped["reason"].value_counts().head(3).items())
        raise MeltError(f"no test row has features ({reasons})", file=source)
    rows = rows[present].reset_index(drop=True)
    truth = truth[present].reset_index(drop=True)
    logits = predict_logits(model.head, PooledViews(whole))
    probabilities = torch.softmax(logits, dim=1).numpy()
    predicted = [model.classes[i] for i in probabilities.argmax(axis=1)]
    reference = truth.tolist()
    scores = classification_scores(reference, predicted, model.classes)
    recall = recall_per_class(reference, predicted, model.classes)
    matrix = confusion_matrix(reference, predicted, model.classes)
    predictions = pd.DataFrame({"id": rows["id"].astype("string"), "label": truth, "predicted": predicted})
    for i, name in enumerate(model.classes):
        predictions[f"p_{name}"] = probabilities[:, i]
    metrics = {
        **scores,
        "n": len(rows),
        "per_class_recall": {c: (None if np.isnan(v) else float(v)) for c, v in recall.items()},
        "classes": model.classes,
        "excluded": {str(k): int(v) for k, v in excluded.items()},
        "skipped": len(skipped),
        "corpus": source,
        "labels": labels,
        "model": str(model.folder) if model.folder else None,
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    evaluation = Evaluation(metrics=metrics, predictions=predictions, confusion=matrix, skipped=skipped)
    if out_dir is not None:
        write_evaluation(evaluation, out_dir, plots_too=plots_too)
    return evaluation


def _test_features(model: TrainedModel, features, rows: pd.DataFrame, base: Path, device: str):
    """(whole-utterance features of the present rows, present mask, skipped rows)."""
    if model.info.get("finetuned"):
        from melt.ser.finetune import pooled_on_the_fly

        return pooled_on_the_fly(model, rows, base, device=device)
    if features is None:
        raise MeltError("--features is needed: the model was trained on cached features")
    cache = features if isinstance(features, FeatureCache) else FeatureCache.open(features)
    expected = model.info["features"]["fingerprint"]
    if cache.manifest["fingerprint"] != expected:
        raise MeltError(
            f"the model was trained on features of {model.info['backbone']['name']!r} ({expected}); this cache "
            f"holds {cache.backbone_name!r} ({cache.manifest['fingerprint']})",
            file=cache.folder,
        )
    found = lookup(cache, rows, root=base)
    return found.whole, found.present, found.problems


def write_evaluation(evaluation: Evaluation, out_dir: str | Path, *, plots_too: bool = True) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_table(evaluation.predictions, out / "predictions.csv")
        if len(evaluation.skipped):
            write_table(evaluation.skipped, out / "skipped.csv")
        if plots_too:
            m = evaluation.metrics
            title = f"UAR {m['uar']:.3f} · ACC {m['acc']:.3f} · F1 {m['f1']:.3f} (n = {m['n']})"
            plots.confusion(evaluation.confusion, out / "confusion.png", title)
        text = json.dumps(evaluation.metrics, indent=2, default=str) + "\n"
        atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise MeltError(f"cannot write the evaluation ({exc.strerror or exc})", file=out) from exc
    return out
