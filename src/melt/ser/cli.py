"""`melt ser ...`: thin commands over `melt.ser`. torch and transformers are imported inside the commands."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console

ser_app = typer.Typer(
    help="Speech emotion recognition on SSL backbones: features, training, evaluation, the Table 3 protocol.",
    no_args_is_help=True,
)

_console = Console(highlight=False, soft_wrap=True)
_errors = Console(stderr=True, highlight=False)


RESUMABLE = "interrupted: finished work is kept; rerun the same command to continue"


@contextlib.contextmanager
def _interruptible(message: str = RESUMABLE):
    """Ctrl-C exits 130 and SIGTERM 143, after the running code's `finally` blocks wrote what was finished."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    except KeyboardInterrupt:
        _errors.print(message)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rows(table, split: str | None, *, default_train: bool, source: str):
    """The rows of `split` (default for training: the train split when the table has one, else every row)."""
    from melt.errors import MeltError

    if "split" not in table.columns or (split is None and not default_train) or split == "all":
        if split not in (None, "all") and "split" not in table.columns:
            raise MeltError(f"--split {split}: the table has no split column", file=source)
        return table, "all rows"
    values = table["split"].astype("string").str.lower()
    wanted = (split or "train").lower()
    chosen = (values == wanted).fillna(False).to_numpy()
    if not chosen.any():
        if split is None:
            return table, "all rows (no train split)"
        found = ", ".join(sorted(values.dropna().unique())[:8])
        raise MeltError(f"--split {split}: no such rows (splits: {found})", file=source, column="split")
    return table[chosen].reset_index(drop=True), f"split {wanted}"


@ser_app.command("features")
def features_command(
    corpus: Path = typer.Argument(..., help="Corpus table (CSV or Parquet) with an audio column."),
    backbone: str = typer.Option(
        ...,
        "--backbone",
        help="Hugging Face model name (e.g. microsoft/wavlm-base-plus), a local folder saved with "
        "save_pretrained, or egemaps.",
    ),
    out: Path = typer.Option(..., "--out", help="Feature cache folder (one backbone per folder; resumable)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu or cuda."),
    crops: int = typer.Option(
        0,
        "--crops",
        min=0,
        help="Also cache K random crops of each training utterance (one drawn per epoch).",
    ),
    crop_seconds: float = typer.Option(5.0, "--crop-seconds", min=0.1, help="Crop length (the paper: 5 s)."),
    batch_seconds: float = typer.Option(
        60.0, "--batch-seconds", min=1.0, help="Padded audio per batch, in seconds (memory per forward pass)."
    ),
    files_per_shard: int = typer.Option(
        64, "--files-per-shard", min=1, help="Files per shard written: an interruption loses at most these."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Per utterance and layer, the backbone's mean-pooled hidden state, cached by audio content.

    Crops are cut from the rows of the train split (every row when the table has no split column). A rerun
    computes only what is missing; an interrupted run keeps every finished shard.
    """
    from melt.corpus.schema import write_table
    from melt.ser.backbones import load_backbone
    from melt.ser.cache import FeatureCache, extract_features
    from melt.ser.model import load_corpus

    table, base, source = load_corpus(corpus)
    crop_rows = None
    if crops and "split" in table.columns and (table["split"].astype("string").str.lower() == "train").any():
        crop_rows = (table["split"].astype("string").str.lower() == "train").fillna(False).tolist()
    model = load_backbone(backbone, device=device)
    cache = FeatureCache.create(out, model, crop_seconds=crop_seconds)
    with _interruptible():
        result = extract_features(
            table,
            model,
            cache,
            root=base,
            crops=crops,
            crop_rows=crop_rows,
            batch_seconds=batch_seconds,
            files_per_shard=files_per_shard,
            progress=not quiet,
        )
    have = len(table) - len(result.problems)
    _console.print(
        f"{have} of {len(table)} utterances have features in {out} ({result.computed} entries computed, "
        f"{result.reused} utterances already cached)"
    )
    if len(result.problems):
        listed = out / f"problems_{Path(source).stem}.csv"
        write_table(result.problems, listed)
        _console.print(f"[yellow]{len(result.problems)} skipped[/] (listed in {listed}):")
        for reason, count in result.problems["reason"].value_counts().head(5).items():
            _console.print(f"  {count} × {reason}")


@ser_app.command("train")
def train_command(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus table with the audio and the labels."),
    labels: str = typer.Option(..., "--labels", help="Label column to train on, e.g. label or llm_label."),
    out: Path = typer.Option(..., "--out", help="Model folder: head.pt, model.json, curves, layer weights."),
    features: Path | None = typer.Option(
        None, "--features", help="Feature cache from `melt ser features` (not with --finetune)."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated classes of the head (default: every label in the column)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Rows to train on: a split name or all (default: train when the table has it)."
    ),
    epochs: int = typer.Option(100, "--epochs", min=1, help="Training epochs (the paper: 100)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (the paper: 1e-3)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Mini-batch size (the paper: 32)."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of initialisation, batch order, dropout, validation split."
    ),
    hidden: int = typer.Option(256, "--hidden", min=1, help="Width of the head's hidden layer."),
    dropout: float = typer.Option(0.2, "--dropout", min=0.0, max=0.99, help="Dropout (the paper: 0.2)."),
    validation_fraction: float = typer.Option(
        0.1, "--validation-fraction", min=0.0, max=0.9, help="Share of training speakers for model selection."
    ),
    min_per_class: int = typer.Option(
        5, "--min-per-class", min=1, help="Fewest training rows a class needs."
    ),
    finetune: bool = typer.Option(
        False, "--finetune", help="Train backbone and head end to end on the audio (no cache; for GPUs)."
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="With --finetune: the backbone to fine-tune."
    ),
    backbone_lr: float | None = typer.Option(
        None, "--backbone-lr", help="With --finetune: the backbone's learning rate (default: --lr)."
    ),
    crop_seconds: float = typer.Option(5.0, "--crop-seconds", min=0.1, help="With --finetune: crop length."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the paper's head (weighted sum of layers → Linear → ReLU → Dropout → Linear) on one label column.

    The model of the epoch with the best UAR on held-out training speakers is kept.
    """
    from melt.errors import MeltError
    from melt.ser.backbones import resolve_device
    from melt.ser.model import load_corpus, train_model
    from melt.ser.training import TrainSettings

    settings = TrainSettings(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        hidden=hidden,
        dropout=dropout,
        validation_fraction=validation_fraction,
        min_per_class=min_per_class,
    )
    table, base, source = load_corpus(corpus)
    rows, which = _rows(table, split, default_train=True, source=source)
    with _interruptible("interrupted: training stopped, no model was written"):
        if finetune:
            if backbone is None:
                raise MeltError("--finetune needs --backbone (the model to fine-tune)")
            from melt.ser.finetune import finetune_model

            model = finetune_model(
                backbone,
                rows,
                labels,
                out,
                classes=classes,
                settings=settings,
                backbone_lr=backbone_lr,
                crop_seconds=crop_seconds,
                root=base,
                device=device,
                progress=not quiet,
            )
        else:
            if features is None:
                raise MeltError("--features is needed (a cache from `melt ser features`), or use --finetune")
            model = train_model(
                features,
                rows,
                labels,
                out,
                classes=classes,
                settings=settings,
                root=base,
                device=resolve_device(device),
                progress=not quiet,
            )
    info = model.info
    best = info["best_validation_uar"]
    _console.print(
        f"trained on {info['n_train']} rows of {source} ({which}; {info['skipped']} without usable audio), "
        f"classes {', '.join(model.classes)}; validation: {info['validation']}"
    )
    shown = f"{best:.4f}" if best is not None else "n/a"
    _console.print(f"kept epoch {info['best_epoch']} (validation UAR {shown}); written to {out}")


@ser_app.command("evaluate")
def evaluate_command(
    model_dir: Path = typer.Argument(..., help="Model folder from `melt ser train`."),
    corpus: Path = typer.Option(..., "--corpus", help="Test corpus table."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, predictions.csv, confusion.png."),
    features: Path | None = typer.Option(
        None, "--features", help="Feature cache holding the test audio (not needed for a fine-tuned model)."
    ),
    labels: str = typer.Option("label", "--labels", help="Column of the test labels."),
    split: str | None = typer.Option(
        None, "--split", help="Only the rows of this split (default: every row)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (fine-tuned models)."),
) -> None:
    """UAR, ACC, macro-F1, per-class recall, confusion matrix and per-utterance probabilities on a test corpus.

    Rows whose label is not among the model's classes are left out and counted.
    """
    from melt.ser.model import evaluate_model, load_corpus

    table, base, source = load_corpus(corpus)
    rows, _which = _rows(table, split, default_train=False, source=source)
    evaluation = evaluate_model(model_dir, features, rows, out, labels=labels, root=base, device=device)
    m = evaluation.metrics
    _console.print(f"UAR {m['uar']:.4f}  ACC {m['acc']:.4f}  F1 {m['f1']:.4f}  on {m['n']} utterances")
    recall = ", ".join(f"{c} {v:.3f}" for c, v in m["per_class_recall"].items() if v is not None)
    _console.print(f"recall per class: {recall}")
    if m["excluded"]:
        shown = ", ".join(f"{k} ({v})" for k, v in list(m["excluded"].items())[:8])
        _console.print(f"left out (label not among the classes): {shown}")
    if m["skipped"]:
        _console.print(
            f"[yellow]{m['skipped']} skipped[/] (no usable audio; listed in {out / 'skipped.csv'})"
        )
    _console.print(f"written to {out}")


@ser_app.command("experiment")
def experiment_command(
    config: Path = typer.Argument(
        ..., help="YAML: train {corpus, labels}, test {name: table}, backbones, seeds."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (features, runs, results, table, report)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override training.epochs."),
    seeds: str | None = typer.Option(None, "--seeds", help="Override seeds, e.g. 0,1,2."),
    device: str | None = typer.Option(None, "--device", help="Override device: auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """The MELT paper's Table 3 protocol over label sources × backbones × test corpora × seeds.

    Resumable: a rerun skips finished runs and cached features.
    """
    from melt.errors import MeltError
    from melt.ser.experiment import ExperimentConfig, run_experiment

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError as exc:
            raise MeltError(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
    settings = ExperimentConfig.load(config, epochs=epochs, seeds=seed_list, device=device)
    with _interruptible():
        result = run_experiment(settings, out, progress=not quiet, log=lambda line: _errors.print(line))
    _console.print(result.table_markdown, markup=False)
    if len(result.comparison):
        for row in result.comparison.itertuples(index=False):
            _console.print(
                f"{row.backbone} / {row.test}: UAR {row.labels_a} − {row.labels_b} = {row.diff:+.4f} "
                f"(95 % CI {row.ci_low:+.4f} … {row.ci_high:+.4f}, p = {row.p_value:.3f})"
            )
    _console.print(f"written to {out} (results.csv, table.md, comparison.csv, report.html)")
