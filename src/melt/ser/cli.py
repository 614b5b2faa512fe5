"""`melt ser ...`: thin commands over `melt.ser`. torch and transformers are imported inside the commands."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Literal

import typer

from melt import terminal

ser_app = terminal.command_group(
    "Speech emotion recognition on SSL backbones: features, training, evaluation, the Table 3 protocol."
)

_console = terminal.console()
_errors = terminal.console(stderr=True)


Device = Literal["auto", "cpu", "cuda"]

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
        metavar="[NAME|FOLDER|egemaps]",
        help="Hugging Face model name (e.g. microsoft/wavlm-base-plus), a local folder saved with "
        "save_pretrained, or egemaps.",
    ),
    out: Path = typer.Option(..., "--out", help="Feature cache folder (one backbone per folder; resumable)."),
    device: Device = typer.Option("auto", "--device", help="auto: a GPU when present, else the CPU."),
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
    from melt.outputs import check_output_folder
    from melt.ser.backbones import load_backbone
    from melt.ser.cache import FeatureCache, extract_features
    from melt.ser.model import load_corpus

    check_output_folder(out)
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
    out: Path = typer.Option(..., "--out", help="Model folder: head.pt, model.json, curves, layer weights."),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Label column to train on, e.g. label or llm_label (--target label).",
        show_default="none: needed with --target label",
    ),
    target: Literal["label", "distribution"] = typer.Option(
        "label",
        "--target",
        help="label: one label per row (--labels); distribution: soft targets (--distributions).",
    ),
    distributions: Path | None = typer.Option(
        None,
        "--distributions",
        help="With --target distribution: distributions.parquet of `melt ambiguity` (id, <source>_<label> columns).",
        show_default="none",
    ),
    source: Literal["human", "synthetic", "combined"] = typer.Option(
        "human",
        "--source",
        help="With --target distribution: the distributions' source (their columns' prefix).",
    ),
    loss: Literal["jsd-entropy", "soft-ce", "kl"] = typer.Option(
        "jsd-entropy", "--loss", help="With --target distribution: the loss (jsd-entropy is the paper's)."
    ),
    entropy_weight: float = typer.Option(
        0.08, "--entropy-weight", min=0.0, help="λ of jsd-entropy: JSD + λ · mean entropy of the prediction."
    ),
    pooling: Literal["attention", "mean"] = typer.Option(
        "attention",
        "--pooling",
        help="With --target distribution: attention over cached layer-weighted frames, or the mean-pooled cache.",
    ),
    dime: bool = typer.Option(
        False,
        "--dime/--no-dime",
        help="With --target distribution: DiME-Aug on the training rows (not validation).",
    ),
    dime_ratio: float = typer.Option(
        0.30,
        "--dime-ratio",
        min=0.0,
        max=1.0,
        help="DiME-Aug: classes brought up to ⌊r · largest class⌋ rows.",
    ),
    dime_neighbours: int = typer.Option(
        3, "--dime-neighbours", min=1, help="DiME-Aug: k nearest rows in the class."
    ),
    features: Path | None = typer.Option(
        None,
        "--features",
        help="Feature cache from `melt ser features` (not with --finetune).",
        show_default="none",
    ),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Comma-separated classes of the head.",
        show_default="every label in the column, or of the distribution",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Rows to train on: a split name or all.",
        show_default="train when the table has it",
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
        None, "--backbone", help="With --finetune: the backbone to fine-tune.", show_default="none"
    ),
    backbone_lr: float | None = typer.Option(
        None, "--backbone-lr", help="With --finetune: the backbone's learning rate.", show_default="--lr"
    ),
    crop_seconds: float = typer.Option(
        5.0,
        "--crop-seconds",
        min=0.1,
        help="With --finetune or --pooling attention: training audio (frames) cut to this length at random.",
    ),
    device: Device = typer.Option("auto", "--device", help="auto: a GPU when present, else the CPU."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the paper's head (weighted sum of layers → Linear → ReLU → Dropout → Linear) on one label column,
    or with --target distribution the distributional head on per-utterance emotion distributions.

    Labels: the model of the epoch with the best UAR on held-out training speakers is kept. Distributions: the
    one with the lowest validation JSD; attention pooling fixes the layer weights with a mean-pooled first stage
    and caches the layer-weighted frames in the features folder (the backbone is loaded again for them).
    """
    from melt.errors import MeltError
    from melt.outputs import check_output_folder
    from melt.ser.backbones import resolve_device
    from melt.ser.model import load_corpus, train_model
    from melt.ser.training import TrainSettings

    check_output_folder(out)
    if target == "distribution":
        if distributions is None:
            raise MeltError("--target distribution needs --distributions FILE (from `melt ambiguity`)")
        if finetune:
            raise MeltError("--finetune trains on labels only; use --features with --target distribution")
    elif labels is None:
        raise MeltError("--labels COLUMN is needed (or --target distribution --distributions FILE)")

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
    table, base, source_name = load_corpus(corpus)
    rows, which = _rows(table, split, default_train=True, source=source_name)
    rows.attrs["source"] = source_name
    with _interruptible("interrupted: training stopped, no model was written (cached features are kept)"):
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
        elif target == "distribution":
            if features is None:
                raise MeltError("--features is needed (a cache from `melt ser features`)")
            _train_distributions(
                features, rows, distributions, out, settings, classes=classes, base=base, source=source,
                loss=loss, entropy_weight=entropy_weight, pooling=pooling, dime=dime, dime_ratio=dime_ratio,
                dime_neighbours=dime_neighbours, crop_seconds=crop_seconds, device=resolve_device(device),
                quiet=quiet, which=which, corpus_name=source_name,
            )  # fmt: skip
            return
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
        f"trained on {info['n_train']} rows of {source_name} ({which}; {info['skipped']} without usable audio), "
        f"classes {', '.join(model.classes)}; validation: {info['validation']}"
    )
    shown = f"{best:.4f}" if best is not None else "n/a"
    _console.print(f"kept epoch {info['best_epoch']} (validation UAR {shown}); written to {out}")


def _train_distributions(
    features, rows, distributions, out, settings, *, classes, base, source, loss, entropy_weight, pooling, dime,
    dime_ratio, dime_neighbours, crop_seconds, device, quiet, which, corpus_name,
) -> None:  # fmt: skip
    from pydantic import ValidationError

    from melt.errors import MeltError
    from melt.ser.dime import DimeSettings
    from melt.ser.distribution_model import DistributionOptions, train_distribution_model

    try:
        options = DistributionOptions(
            source=source,
            loss=loss,
            entropy_weight=entropy_weight,
            pooling=pooling,
            dime=DimeSettings(ratio=dime_ratio, neighbours=dime_neighbours, seed=settings.seed)
            if dime
            else None,
        )
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MeltError(problems) from exc
    model = train_distribution_model(
        features, rows, distributions, out, options=options, settings=settings, classes=classes, root=base,
        device=device, progress=not quiet,
    )  # fmt: skip
    info = model.info
    best = info["best_validation_jsd"]
    listed = f", listed in {out / 'skipped.csv'}" if info["skipped"] else ""
    _console.print(
        f"trained on {info['n_train']} rows of {corpus_name} ({which}; {info['skipped']} skipped{listed}) with "
        f"{source} distributions over {', '.join(model.classes)}; {info['n_augmented']} DiME-Aug rows; "
        f"validation: {info['validation']}"
    )
    if info["classes_without_mass"]:
        _console.print(
            f"[yellow]note[/]: no training row gives any probability to {info['classes_without_mass']}"
        )
    shown = f"{best:.4f}" if best is not None else "n/a"
    _console.print(f"kept epoch {info['best_epoch']} (validation JSD {shown}); written to {out}")


@ser_app.command("evaluate")
def evaluate_command(
    model_dir: Path = typer.Argument(..., help="Model folder from `melt ser train`."),
    corpus: Path = typer.Option(..., "--corpus", help="Test corpus table."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, predictions.csv, confusion.png."),
    features: Path | None = typer.Option(
        None,
        "--features",
        help="Feature cache holding the test audio (not needed for a fine-tuned model).",
        show_default="none",
    ),
    labels: str = typer.Option("label", "--labels", help="Column of the test labels."),
    split: str | None = typer.Option(
        None, "--split", help="Only the rows of this split.", show_default="every row"
    ),
    distributions: Path | None = typer.Option(
        None,
        "--distributions",
        help="A distributional model: the reference distributions (distributions.parquet).",
        show_default="none",
    ),
    reference: Literal["human", "synthetic", "combined"] = typer.Option(
        "human",
        "--reference",
        help="With --distributions: the source scored against.",
    ),
    device: Device = typer.Option(
        "auto", "--device", help="auto: a GPU when present, else the CPU (fine-tuned models, frames)."
    ),
) -> None:
    """UAR, ACC, macro-F1, per-class recall, confusion matrix and per-utterance probabilities on a test corpus.

    Rows whose label is not among the model's classes are left out and counted. A distributional model is scored
    with --distributions: JSD, BC, R², ECE, accuracy, F1, entropy per tertile of human ambiguity.
    """
    from melt.errors import MeltError
    from melt.outputs import check_output_folder
    from melt.ser.model import evaluate_model, load_corpus, load_model

    check_output_folder(out)
    table, base, source = load_corpus(corpus)
    rows, _which = _rows(table, split, default_train=False, source=source)
    rows.attrs["source"] = source
    model = load_model(model_dir)
    if model.info.get("target") == "distribution" or distributions is not None:
        if distributions is None:
            raise MeltError(
                "this model predicts distributions: give --distributions FILE to score it against"
            )
        if features is None:
            raise MeltError("--features is needed (the cache the model was trained on)")
        from melt.ser.backbones import resolve_device
        from melt.ser.distribution_model import evaluate_distribution_model

        with _interruptible("interrupted: nothing was written (cached frames are kept)"):
            result = evaluate_distribution_model(
                model, features, rows, distributions, out, reference=reference, root=base,
                device=resolve_device(device),
            )  # fmt: skip
        for row in result.metrics.itertuples(index=False):
            _console.print(
                f"{row.tertile:>6}: n {row.n:4d}  JSD {row.jsd:.4f}  BC {row.bc:.4f}  R² {row.r2:.4f}  "
                f"ECE {row.ece:.4f}  ACC {row.acc:.4f}  F1 {row.f1_macro:.4f}"
            )
        if len(result.skipped):
            _console.print(
                f"[yellow]{len(result.skipped)} rows left out[/] (listed in {out / 'skipped.csv'})"
            )
        _console.print(f"written to {out}")
        return
    evaluation = evaluate_model(model, features, rows, out, labels=labels, root=base, device=device)
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
        ...,
        help="YAML: train {corpus, labels}, test {name: table}, backbones, seeds; or distributions {name: {table, "
        "distributions}}, targets, dime, backbones, seeds.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (features, runs, results, table, report)."),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Override training.epochs.", show_default="the YAML's"
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Override seeds, e.g. 0,1,2.", show_default="the YAML's"
    ),
    device: Device | None = typer.Option(
        None, "--device", help="Override the device.", show_default="the YAML's"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """The MELT paper's Table 3 protocol over label sources × backbones × test corpora × seeds, or, when the YAML
    has `distributions:`, distribution experiments: targets × DiME-Aug × seeds on speaker-independent folds,
    scored per tertile of human ambiguity (docs/ser.md).

    Resumable: a rerun skips finished runs and cached features.
    """
    from melt.errors import MeltError
    from melt.outputs import check_output_folder
    from melt.ser.experiment import load_experiment, run_experiment

    check_output_folder(out)
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError as exc:
            raise MeltError(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
    settings = load_experiment(config, epochs=epochs, seeds=seed_list, device=device)
    if hasattr(settings, "distributions"):
        from melt.ser.distribution_experiment import run_distribution_experiment

        with _interruptible():
            outcome = run_distribution_experiment(
                settings, out, progress=not quiet, log=lambda line: _errors.print(line)
            )
        _console.print(outcome.table_markdown, markup=False)
        _console.print(f"written to {out} (results.csv, folds.csv, table.md, jsd.png, bc.png, report.html)")
        return
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
