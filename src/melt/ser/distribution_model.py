"""Training on emotion distributions (soft targets) and scoring predicted distributions per ambiguity tertile.

Targets come from a distributions table, normally `melt ambiguity`'s `distributions.parquet`: an `id` column and
one column per source and label (`human_anger`, `synthetic_anger`, `combined_anger`, ...), NaN where a source has
no vote for an utterance. `read_distributions` takes one source's columns; rows of the corpus whose id is not in
the file, or whose distribution is undefined, are skipped and listed.

`train_distribution_model` trains the distributional head (`melt.ser.heads.DistributionHead`) with a
distributional loss (`melt.ser.losses`) on a feature cache:

1. a speaker-independent share of the training speakers is held out for model selection (lowest validation JSD);
2. with DiME-Aug, new rows are mixed from the remaining training rows only (`melt.ser.dime`); their audio is
   written as WAV files and goes through the feature cache like any other;
3. `pooling="mean"`: the head on the cache's per-layer means (layer weights learned; the fast path).
   `pooling="attention"`: the layer weights are fixed first by a mean-pooled head trained on the same rows and
   targets (where the weighted sum is exact and costs seconds), then the frames mixed with those weights are
   cached (`melt.ser.frames`) and the attention-pooled head is trained on them. Both stages keep the epoch
   with the lowest validation JSD.

`predict_distributions` and `score_distributions` give a model's distributions for a table and their scores
against a reference source (by default `human`) with the functions of `melt.ambiguity.metrics`, per tertile of
the scored utterances' human ambiguity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from melt import __version__
from melt.ambiguity.distributions import ambiguity, tertiles
from melt.ambiguity.evaluate import score_by_tertile
from melt.ambiguity.metrics import SUM_TOLERANCE, bhattacharyya, jensen_shannon
from melt.corpus.schema import atomic_write, check_ids, read_any, write_table
from melt.errors import MeltError
from melt.ser.cache import FeatureCache, extract_features, lookup
from melt.ser.dime import DimeResult, DimeSettings, dime_augment, neighbour_features
from melt.ser.frames import FrameStore, FrameViews
from melt.ser.heads import ATTENTION_HEADS, DistributionHead
from melt.ser.losses import ENTROPY_WEIGHT, distribution_loss, jsd_score, renormalised
from melt.ser.model import TrainedModel, load_corpus, load_model, save_model
from melt.ser.training import PooledViews, TrainSettings, fit, held_out_rows, predict_logits

SOURCES: tuple[str, ...] = ("human", "synthetic", "combined")
#: Utterances per forward pass when predicting from frames (a batch holds every frame of its utterances).
FRAME_BATCH = 16
#: Frames of the training batches are cut to this many seconds (the paper crops training audio to 5 s).
CROP_SECONDS = 5.0
METRIC_FILE = "metrics.csv"


class DistributionOptions(BaseModel):
    """How a distributional model is trained (besides the `TrainSettings` shared with the label models)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("human", description="the distributions' source: the column prefix, e.g. human")
    loss: Literal["jsd-entropy", "soft-ce", "kl"] = "jsd-entropy"
    entropy_weight: float = Field(ENTROPY_WEIGHT, ge=0, description="λ of jsd-entropy (the paper: 0.08)")
    pooling: Literal["attention", "mean"] = "attention"
    blocks: int = Field(1, ge=0, description="residual LayerNorm/Linear/Dropout/GELU blocks")
    heads: int = Field(ATTENTION_HEADS, ge=1, description="attention heads of the pooling")
    crop_seconds: float | None = Field(
        CROP_SECONDS, gt=0, description="training frames cut to this length at random (None: whole)"
    )
    dime: DimeSettings | None = Field(None, description="DiME-Aug on the training part (None: off)")
    batch_seconds: float = Field(60.0, gt=0, description="padded audio per backbone pass (frames, new rows)")


@dataclass
class Distributions:
    """One source's distributions per id: `values` [ids, labels], rows of NaN where undefined."""

    ids: np.ndarray
    labels: list[str]
    values: np.ndarray
    source: str
    file: str
    #: the file's `ambiguity` column (human votes' normalised entropy), NaN where absent
    ambiguity: np.ndarray

    def lookup(self, ids: pd.Series) -> tuple[np.ndarray, list[str | None]]:
        """Rows for `ids` [n, labels] (NaN where missing) and the reason a row has none."""
        position = {key: i for i, key in enumerate(self.ids)}
        values = np.full((len(ids), len(self.labels)), np.nan)
        reasons: list[str | None] = []
        for row, key in enumerate(ids.astype(str)):
            i = position.get(key)
            if i is None:
                reasons.append(f"id not in the distributions file {self.file}")
            elif np.isnan(self.values[i]).any():
                reasons.append(f"no {self.source} distribution (no vote on the label set)")
            else:
                values[row] = self.values[i]
                reasons.append(None)
        return values, reasons

    def ambiguity_of(self, ids: pd.Series) -> np.ndarray:
        position = {key: i for i, key in enumerate(self.ids)}
        return np.array([self.ambiguity[position[k]] if k in position else np.nan for k in ids.astype(str)])


def sources_in(frame: pd.DataFrame) -> list[str]:
    """Source prefixes of a distributions table's columns (`human` of `human_anger`, ...)."""
    found = [c.split("_", 1)[0] for c in frame.columns if "_" in c and c.split("_", 1)[0] in SOURCES]
    return list(dict.fromkeys(found))


def read_distributions(
    distributions: str | Path | pd.DataFrame, source: str = "human", *, name: str | None = None
) -> Distributions:
    """One source's distributions from a table with `id` and `<source>_<label>` columns.

    A cell that is not a number, a negative probability, a row with some labels NaN and others not, or a row
    summing to something other than 1 is a MeltError naming the file, row and column; a row NaN in every label
    of the source is undefined (no votes) and skipped later."""
    if isinstance(distributions, pd.DataFrame):
        frame, file = distributions.reset_index(drop=True), name or "<distributions>"
    else:
        file = str(distributions)
        if not Path(distributions).is_file():
            raise MeltError("distributions file not found (make one with `melt ambiguity`)", file=file)
        frame = read_any(distributions)
    if "id" not in frame.columns:
        raise MeltError(f"no `id` column; found {list(frame.columns)[:8]}", file=file)
    check_ids(frame, source=file)
    prefix = f"{source}_"
    columns = [
        c
        for c in frame.columns
        if c.startswith(prefix) and c != f"{source}_raters" and c != f"{source}_weight"
    ]
    if not columns:
        found = sources_in(frame)
        raise MeltError(
            f"no {source} distribution: no column named {prefix}<label> (sources found: {found or 'none'})",
            file=file,
        )
    labels = [c[len(prefix) :] for c in columns]
    values = np.empty((len(frame), len(columns)))
    for k, column in enumerate(columns):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise MeltError(
                f"not a number: {frame[column].iloc[row]!r}", file=file, row=row + 1, column=column
            )
        values[:, k] = numbers.to_numpy(dtype=float, na_value=np.nan)
    missing = np.isnan(values)
    partial = missing.any(axis=1) & ~missing.all(axis=1)
    if partial.any():
        row = int(partial.argmax())
        column = columns[int(missing[row].argmax())]
        raise MeltError(
            f"the {source} distribution is missing this label but not the others",
            file=file,
            row=row + 1,
            column=column,
        )
    negative = np.nan_to_num(values) < 0
    if negative.any():
        row = int(negative.any(axis=1).argmax())
        column = columns[int(negative[row].argmax())]
        raise MeltError(
            f"negative probability {values[row, columns.index(column)]}",
            file=file,
            row=row + 1,
            column=column,
        )
    defined = ~missing.all(axis=1)
    sums = values[defined].sum(axis=1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(defined)[off.argmax()])
        raise MeltError(
            f"the {source} distribution sums to {values[row].sum():.6g}, not 1 (columns {columns[0]}..{columns[-1]}; "
            "give probabilities, e.g. the distributions.parquet of `melt ambiguity`)",
            file=file,
            row=row + 1,
        )
    if not defined.any():
        raise MeltError(f"every {source} distribution is empty (NaN)", file=file)
    ambiguity_values = (
        pd.to_numeric(frame["ambiguity"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if "ambiguity" in frame.columns
        else np.full(len(frame), np.nan)
    )
    return Distributions(
        ids=frame["id"].astype(str).to_numpy(),
        labels=labels,
        values=values,
        source=source,
        file=file,
        ambiguity=ambiguity_values,
    )


def restrict(values: np.ndarray, labels: list[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows over `classes` only, renormalised; (values, rows that keep some probability). Rows with none left (or
    NaN) are NaN."""
    index = [labels.index(c) for c in classes]
    kept = values[:, index]
    total = kept.sum(axis=1, keepdims=True)
    usable = (np.isfinite(total) & (total > 0))[:, 0]
    out = np.full_like(kept, np.nan)
    out[usable] = kept[usable] / total[usable]
    return out, usable


def parse_classes(classes: str | list[str] | None, labels: list[str], *, file: str) -> list[str]:
    if classes is None:
        return list(labels)
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    wanted = [c.strip() for c in dict.fromkeys(items) if c.strip()]
    unknown = [c for c in wanted if c not in labels]
    if unknown:
        raise MeltError(f"--classes {unknown} not among the distribution's labels {labels}", file=file)
    if len(wanted) < 2:
        raise MeltError(f"a distribution needs at least two classes; {wanted} is all there is", file=file)
    return wanted


@dataclass
class TargetRows:
    """The corpus rows with a target distribution and features."""

    rows: pd.DataFrame
    targets: np.ndarray
    digests: list[str]
    pooled: np.ndarray
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["id", "audio", "reason"]))


def target_rows(
    cache: FeatureCache, table: pd.DataFrame, distributions: Distributions, classes: list[str], base: Path
) -> TargetRows:
    """`table`'s rows that have a distribution (restricted to `classes`, renormalised) and pooled features; the
    others listed with the reason."""
    values, reasons = distributions.lookup(table["id"])
    restricted, usable = restrict(np.nan_to_num(values, nan=0.0), distributions.labels, classes)
    for row, reason in enumerate(reasons):
        if reason is None and not usable[row]:
            reasons[row] = f"no {distributions.source} probability on the classes {classes}"
    keep = np.array([r is None for r in reasons], dtype=bool)
    skipped = [
        {"id": str(table["id"].iloc[i]), "audio": _audio(table, i), "reason": reasons[i]}
        for i in np.flatnonzero(~keep)
    ]
    rows = table[keep].reset_index(drop=True)
    found = lookup(cache, rows, root=base)
    skipped += found.problems.to_dict("records")
    present = found.present
    return TargetRows(
        rows=rows[present].reset_index(drop=True),
        targets=restricted[keep][present],
        digests=[d for d, p in zip(found.digests, present, strict=True) if p],
        pooled=found.whole,
        skipped=pd.DataFrame(skipped, columns=["id", "audio", "reason"]),
    )


def _audio(table: pd.DataFrame, row: int) -> str | None:
    if "audio" not in table.columns or pd.isna(table["audio"].iloc[row]):
        return None
    return str(table["audio"].iloc[row])


def train_distribution_model(
    features: FeatureCache | str | Path,
    corpus: str | Path | pd.DataFrame,
    distributions: str | Path | pd.DataFrame | Distributions,
    out_dir: str | Path | None,
    *,
    options: DistributionOptions | None = None,
    settings: TrainSettings | None = None,
    classes: str | list[str] | None = None,
    root: str | Path | None = None,
    validation_speakers: list[str] | None = None,
    layer_weights: np.ndarray | None = None,
    dime_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> TrainedModel:
    """Train the distributional head on `corpus`'s rows with a distribution of `options.source` (module docstring).

    `classes` restricts the head to some of the distribution's labels (rows renormalised over them).
    `validation_speakers` overrides the seeded choice of held-out speakers; `layer_weights` (attention pooling)
    fixes the frame mix instead of a first stage, so several models share one frame store. DiME-Aug writes its rows
    and audio to `dime_dir` (default `out_dir/dime`)."""
    options = options or DistributionOptions()
    settings = settings or TrainSettings()
    cache = features if isinstance(features, FeatureCache) else FeatureCache.open(features)
    if options.pooling == "attention" and cache.manifest["backbone"].get("kind") == "EgemapsBackbone":
        raise MeltError(
            "attention pooling needs an SSL backbone's frames; eGeMAPS functionals have none (use --pooling mean)",
            file=cache.folder,
        )
    table, base, source = load_corpus(corpus, root)
    if not isinstance(distributions, Distributions):
        distributions = read_distributions(distributions, options.source)
    wanted = parse_classes(classes, distributions.labels, file=distributions.file)
    found = target_rows(cache, table, distributions, wanted, base)
    if len(found.rows) < 2:
        reasons = found.skipped["reason"].value_counts().head(3)
        shown = "; ".join(f"{n} × {r}" for r, n in reasons.items()) or "no rows"
        raise MeltError(
            f"fewer than two training rows have a distribution and features ({shown})", file=source
        )

    is_validation, rule = held_out_rows(found.rows, settings, validation_speakers, source=source)
    train_index = np.flatnonzero(~is_validation)
    val_index = np.flatnonzero(is_validation)
    train_targets = found.targets[train_index]
    train_pooled = found.pooled[train_index]
    train_digests = [found.digests[i] for i in train_index]

    dime_result: DimeResult | None = None
    if options.dime is not None:
        out_dime = Path(dime_dir) if dime_dir is not None else (Path(out_dir) / "dime" if out_dir else None)
        if out_dime is None:
            raise MeltError("DiME-Aug needs a folder for the augmented audio (out_dir or dime_dir)")
        dime_result, new_pooled, new_digests = _augment(
            cache,
            found.rows.iloc[train_index],
            train_targets,
            wanted,
            out_dime,
            base,
            options,
            device,
            progress,
        )
        train_targets = np.vstack([train_targets, dime_result.distributions])
        train_pooled = np.concatenate([train_pooled, new_pooled])
        train_digests += new_digests

    torch.manual_seed(settings.seed)
    loss = distribution_loss(options.loss, options.entropy_weight)
    validation_pooled = (
        (PooledViews(found.pooled[val_index]), found.targets[val_index]) if len(val_index) else None
    )
    standardise = bool(cache.manifest["backbone"].get("standardise", False))
    frames_info = None
    stage_one = None
    if options.pooling == "mean":
        head = _head(cache, wanted, settings, options, "mean", standardise)
        head.fit_standardisation(torch.from_numpy(train_pooled))
        result = fit(
            head, PooledViews(train_pooled), train_targets, settings=settings, loss=loss,
            validation=validation_pooled, score=jsd_score, device=device, progress=progress,
            description=f"Training ({options.source} distributions)",
        )  # fmt: skip
    else:
        if layer_weights is None:
            first = _head(cache, wanted, settings, options, "mean", False)
            stage_one = fit(
                first, PooledViews(train_pooled), train_targets, settings=settings, loss=loss,
                validation=validation_pooled, score=jsd_score, device=device, progress=progress,
                description="Layer weights (mean-pooled stage)",
            )  # fmt: skip
            layer_weights = first.layer_weights.weights().detach().cpu().numpy()
        store = FrameStore.create(cache, layer_weights)
        frame_rows = pd.concat(
            [found.rows[["id", "audio"]]]
            + ([dime_result.rows[["id", "audio"]]] if dime_result is not None else []),
            ignore_index=True,
        )
        _extract(cache, store, frame_rows, base, options, device, progress)
        crop = options.crop_seconds
        train_data = FrameViews(store, train_digests, crop_seconds=crop)
        validation = None
        if len(val_index):
            validation = (FrameViews(store, [found.digests[i] for i in val_index]), found.targets[val_index])
        head = _head(cache, wanted, settings, options, "attention", False)
        head.fix_layer_weights(store.weights)
        result = fit(
            head, train_data, train_targets, settings=settings, loss=loss, validation=validation,
            score=jsd_score, eval_batch_size=FRAME_BATCH, device=device, progress=progress,
            description=f"Training ({options.source} distributions, attention)",
        )  # fmt: skip
        frames_info = {"mix": store.mix, "weights": store.weights.tolist(), "dtype": "float16"}
    head.cpu()
    mass = train_targets.sum(axis=0)
    info = {
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "finetuned": False,
        "target": "distribution",
        "classes": wanted,
        "head": head.config(),
        "backbone": cache.manifest["backbone"],
        "features": {k: cache.manifest[k] for k in ("fingerprint", "pooling", "crop_seconds", "crop_seed")},
        "frames": frames_info,
        "corpus": source,
        "distributions": distributions.file,
        "options": options.model_dump(),
        "settings": settings.model_dump(),
        "n_train": len(train_index),
        "n_augmented": 0 if dime_result is None else len(dime_result.rows),
        "n_validation": len(val_index),
        "train_mass": {c: round(float(m), 6) for c, m in zip(wanted, mass, strict=True)},
        "classes_without_mass": [c for c, m in zip(wanted, mass, strict=True) if m <= 0],
        "dime": None if dime_result is None else dime_result.counts.to_dict("records"),
        "validation": rule,
        "best_epoch": result.best_epoch,
        "best_validation_jsd": None if np.isnan(result.best_score) else -result.best_score,
        "layer_stage_best_epoch": None if stage_one is None else stage_one.best_epoch,
        "skipped": len(found.skipped),
    }
    model = TrainedModel(head=head, classes=wanted, info=info, fit=result)
    if out_dir is not None:
        save_model(model, out_dir, skipped=found.skipped)
    return model


def _head(
    cache, classes, settings: TrainSettings, options: DistributionOptions, pooling: str, standardise: bool
):
    return DistributionHead(
        cache.num_layers, cache.dim, len(classes), pooling=pooling, hidden=settings.hidden,
        dropout=settings.dropout, blocks=options.blocks, heads=options.heads, standardise=standardise,
    )  # fmt: skip


def _augment(
    cache: FeatureCache,
    rows: pd.DataFrame,
    targets: np.ndarray,
    classes: list[str],
    out: Path,
    base: Path,
    options: DistributionOptions,
    device: str,
    progress: bool,
) -> tuple[DimeResult, np.ndarray, list[str]]:
    """DiME-Aug on the training rows; the new rows' pooled features through the cache."""
    from melt.ser.backbones import load_backbone

    rows = rows.reset_index(drop=True)
    if cache.manifest["backbone"].get("kind") == "EgemapsBackbone":
        neighbours_cache = cache
    else:
        neighbours_cache = FeatureCache.create(cache.folder / "dime-egemaps", load_backbone("egemaps"))
    features = neighbour_features(rows, neighbours_cache, root=base)
    result = dime_augment(rows, targets, features, classes, out, root=base, settings=options.dime)
    if not len(result.rows):
        return result, np.empty((0, cache.num_layers, cache.dim), dtype=np.float32), []
    extraction = extract_features(
        result.rows, cache.backbone(device), cache, batch_seconds=options.batch_seconds, progress=progress
    )
    if len(extraction.problems):
        first = extraction.problems.iloc[0]
        raise MeltError(f"no features for augmented audio ({first['reason']})", file=first["audio"])
    found = lookup(cache, result.rows)
    return result, found.whole, [d for d in found.digests if d is not None]


def _extract(
    cache: FeatureCache,
    store: FrameStore,
    rows: pd.DataFrame,
    base: Path,
    options,
    device: str,
    progress: bool,
) -> None:
    missing = [d is None or d not in store for d in lookup(cache, rows, root=base).digests]
    if not any(missing):
        return
    result = extract_features(
        rows[np.array(missing)], cache.backbone(device), cache, root=base, frames=store,
        batch_seconds=options.batch_seconds, progress=progress,
    )  # fmt: skip
    if len(result.problems):
        first = result.problems.iloc[0]
        raise MeltError(f"no frames for {first['id']} ({first['reason']})", file=first["audio"])


# --- prediction and scoring -------------------------------------------------------------------------------------


def is_distributional(model: TrainedModel) -> bool:
    return model.info.get("target") == "distribution"


def predict_distributions(
    model: TrainedModel,
    cache: FeatureCache,
    rows: pd.DataFrame,
    *,
    root: str | Path = ".",
    device: str = "cpu",
    progress: bool = False,
    batch_seconds: float = 60.0,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(predicted distributions of the rows with features [present, classes], present mask, skipped rows)."""
    if cache.manifest["fingerprint"] != model.info["features"]["fingerprint"]:
        raise MeltError(
            f"the model was trained on features of {model.info['backbone']['name']!r}; this cache holds "
            f"{cache.backbone_name!r} ({cache.manifest['fingerprint']})",
            file=cache.folder,
        )
    found = lookup(cache, rows, root=root)
    present = found.present.copy()
    if model.info["head"].get("pooling") == "attention":
        store = FrameStore.create(cache, model.info["frames"]["weights"])
        keep = rows[present].reset_index(drop=True)
        options = DistributionOptions(batch_seconds=batch_seconds)
        _extract(cache, store, keep, Path(root), options, device, progress)
        data = FrameViews(store, [d for d, p in zip(found.digests, present, strict=True) if p])
        logits = predict_logits(model.head, data, batch_size=FRAME_BATCH)
    else:
        logits = predict_logits(model.head, PooledViews(found.whole))
    probabilities = (
        renormalised(torch.softmax(logits, dim=1).numpy())
        if len(logits)
        else np.zeros((0, len(model.classes)))
    )
    return probabilities, present, found.problems


def score_distributions(
    predicted: np.ndarray,
    reference: np.ndarray,
    ambiguity_values: np.ndarray,
    ids: np.ndarray,
    *,
    name: str = "model",
) -> tuple[pd.DataFrame, np.ndarray]:
    """metrics per tertile (low / medium / high / all) of the utterances' human ambiguity, with the functions of
    `melt.ambiguity.metrics`; tertiles are cut over these utterances. Returns (metrics, tertile per row)."""
    tertile = tertiles(np.asarray(ambiguity_values, dtype=float), np.asarray(ids).astype(str))
    metrics = pd.DataFrame(score_by_tertile("model", name, predicted, reference, tertile, 10))
    return metrics.drop(columns=["protocol"]), tertile


def reference_ambiguity(distributions: Distributions, ids: pd.Series, reference: np.ndarray) -> np.ndarray:
    """The human ambiguity of each row: the file's `ambiguity` column (as `melt ambiguity` computed it) where it
    has one, else the normalised entropy ('present' norm) of the reference distribution."""
    values = distributions.ambiguity_of(ids)
    missing = np.isnan(values)
    if missing.any():
        values[missing] = ambiguity(reference[missing])
    return values


@dataclass
class DistributionEvaluation:
    #: source, tertile, n, jsd, bc, r2, ece, acc, f1_macro, f1_weighted, entropy
    metrics: pd.DataFrame
    #: id, tertile, ambiguity, jsd, bc, p_<class>..., ref_<class>...
    predictions: pd.DataFrame
    summary: dict[str, Any]
    skipped: pd.DataFrame


def evaluate_distribution_model(
    model: TrainedModel | str | Path,
    features: FeatureCache | str | Path,
    corpus: str | Path | pd.DataFrame,
    distributions: str | Path | pd.DataFrame | Distributions,
    out_dir: str | Path | None = None,
    *,
    reference: str = "human",
    root: str | Path | None = None,
    device: str = "cpu",
) -> DistributionEvaluation:
    """Score a distributional model's predictions against the `reference` distributions of `corpus`'s rows, per
    tertile of their human ambiguity. The reference is restricted to the model's classes and renormalised; rows
    without a reference (or with no probability on the classes) are left out and counted."""
    if not isinstance(model, TrainedModel):
        model = load_model(model)
    if not is_distributional(model):
        raise MeltError(
            "this model was trained on labels: evaluate it without --distributions", file=model.folder
        )
    cache = features if isinstance(features, FeatureCache) else FeatureCache.open(features)
    table, base, source = load_corpus(corpus, root)
    if not isinstance(distributions, Distributions):
        distributions = read_distributions(distributions, reference)
    missing = [c for c in model.classes if c not in distributions.labels]
    if missing:
        raise MeltError(
            f"the {reference} distributions have no column for the model's classes {missing}",
            file=distributions.file,
        )
    found = target_rows(cache, table, distributions, model.classes, base)
    if not len(found.rows):
        reasons = "; ".join(f"{n} × {r}" for r, n in found.skipped["reason"].value_counts().head(3).items())
        raise MeltError(f"no row to score ({reasons})", file=source)
    predicted, present, problems = predict_distributions(model, cache, found.rows, root=base, device=device)
    rows, targets = found.rows[present].reset_index(drop=True), found.targets[present]
    values = reference_ambiguity(distributions, rows["id"], targets)
    metrics, tertile = score_distributions(
        predicted, targets, values, rows["id"].to_numpy(), name=model.info["options"]["source"]
    )
    predictions = prediction_table(rows["id"], tertile, values, predicted, targets, model.classes)
    summary = {
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(model.folder) if model.folder else None,
        "corpus": source,
        "distributions": distributions.file,
        "reference": reference,
        "classes": model.classes,
        "scored": len(rows),
        "skipped": int(len(found.skipped) + len(problems)),
        "tertiles": "cut over the scored utterances by their human ambiguity (low / medium / high)",
        "metrics": json.loads(metrics.to_json(orient="records")),
    }
    skipped = pd.concat([found.skipped, problems], ignore_index=True)
    evaluation = DistributionEvaluation(
        metrics=metrics, predictions=predictions, summary=summary, skipped=skipped
    )
    if out_dir is not None:
        out = Path(out_dir)
        try:
            write_table(metrics, out / METRIC_FILE)
            write_table(predictions, out / "predictions.csv")
            if len(skipped):
                write_table(skipped, out / "skipped.csv")
            text = json.dumps(summary, indent=2, default=str) + "\n"
            atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as exc:
            raise MeltError(f"cannot write the evaluation ({exc.strerror or exc})", file=out) from exc
    return evaluation


def prediction_table(
    ids: pd.Series, tertile: np.ndarray, ambiguity_values: np.ndarray, predicted: np.ndarray, reference: np.ndarray,
    classes: list[str],
) -> pd.DataFrame:  # fmt: skip
    frame = pd.DataFrame(
        {
            "id": ids.astype("string").to_numpy(),
            "tertile": pd.Series(tertile, dtype="string"),
            "ambiguity": ambiguity_values,
            "jsd": jensen_shannon(predicted, reference) if len(predicted) else np.zeros(0),
            "bc": bhattacharyya(predicted, reference) if len(predicted) else np.zeros(0),
        }
    )
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = predicted[:, k]
    for k, name in enumerate(classes):
        frame[f"ref_{name}"] = reference[:, k]
    return frame
