"""Distribution experiments (Scaling Ambiguity): which distribution to train on, with or without DiME-Aug, and
where it helps, per ambiguity level.

For every backbone × corpus × held-out fold × seed × target source (human, synthetic, combined) × DiME-Aug (off,
on): train the distributional head on the other folds (speaker-independent: the table's `fold`, IEMOCAP's
sessions), only on utterances that every compared target defines (a fair comparison), and predict the held-out
fold's distributions. A model is always scored against the held-out utterances' `reference` distribution (the
human one), never against its own source. Predictions of all folds are pooled per seed and scored with
`melt.ambiguity.metrics` per tertile of the test utterances' human ambiguity.

With attention pooling, the layer weights of each (backbone, corpus, fold) are fixed once by a mean-pooled head on
the reference distributions of that fold's training rows, so that every target, seed and DiME setting of the fold
shares one frame store (the same features) and the backbone runs once per fold.

The paper (SPEC §4) used a random 80/20 split, which puts a speaker on both sides; these folds do not.

Outputs in OUT: `results.csv` (per backbone, corpus, target, dime, seed, tertile: n and the metrics),
`folds.csv` (per fold, all utterances), `table.md` (JS ↓ / BC ↑ per corpus and target, and per tertile),
`jsd.png` / `bc.png` (per tertile), `report.html` / `report.md` (with the paper's figures quoted as reference),
`provenance.json`; runs in `OUT/runs/...` (resumable), features in `OUT/features/<backbone>/`.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from melt import __version__
from melt.acoustics.features import file_sha256
from melt.ambiguity.distributions import TERTILES
from melt.ambiguity.metrics import SCORE_NAMES
from melt.corpus.schema import atomic_write, read_table, write_table
from melt.errors import MeltError
from melt.ser.dime import NEIGHBOURS, RATIO, DimeSettings
from melt.ser.distribution_model import (
    CROP_SECONDS,
    SOURCES,
    DistributionOptions,
    Distributions,
    read_distributions,
    reference_ambiguity,
    restrict,
    score_distributions,
)
from melt.ser.experiment import (
    _key,
    _looks_local,
    _markdown,
    _mean_and_spread,
    _resolve,
    _seeds_note,
    _short,
    _slug,
    _versions,
    _with_context,
    _write_json,
    backbone_slug,
    read_yaml,
    validated_config,
)
from melt.ser.heads import ATTENTION_HEADS
from melt.ser.losses import ENTROPY_WEIGHT
from melt.ser.training import TrainSettings

#: Scaling Ambiguity's own results (SPEC §4), JS ↓ / BC ↑: a Qwen2-Audio-7B fine-tuned with LoRA on each source,
#: each row scored against the test distributions of its own source, random 80/20 split. Reference only.
PAPER_RESULTS = pd.DataFrame(
    [
        ("IEMOCAP", "human", 0.302, 0.724),
        ("IEMOCAP", "synthetic", 0.431, 0.607),
        ("IEMOCAP", "combined", 0.325, 0.715),
        ("MSP-Podcast", "human", 0.307, 0.719),
        ("MSP-Podcast", "synthetic", 0.373, 0.660),
        ("MSP-Podcast", "combined", 0.274, 0.757),
    ],
    columns=["corpus", "target", "JS ↓", "BC ↑"],
)
RESULT_COLUMNS = ["backbone", "corpus", "target", "dime", "seed", "tertile", "n", *SCORE_NAMES]
PLAIN, AUGMENTED = "without", "with"


class DistributionCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: Path
    #: distributions.parquet of `melt ambiguity` (or any table with id and <source>_<label> columns)
    distributions: Path


class DistributionExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    distributions: dict[str, DistributionCorpus] = Field(min_length=1)
    targets: list[str] = Field(default_factory=lambda: list(SOURCES), min_length=1)
    dime: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    backbones: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    reference: str = Field("human", description="the distribution every model is scored against")
    classes: list[str] | None = Field(None, description="default: the reference distribution's labels")
    pooling: Literal["attention", "mean"] = "attention"
    loss: Literal["jsd-entropy", "soft-ce", "kl"] = "jsd-entropy"
    entropy_weight: float = Field(ENTROPY_WEIGHT, ge=0)
    blocks: int = Field(1, ge=0)
    heads: int = Field(ATTENTION_HEADS, ge=1)
    crop_seconds: float | None = Field(CROP_SECONDS, gt=0)
    dime_ratio: float = Field(RATIO, ge=0, le=1)
    dime_neighbours: int = Field(NEIGHBOURS, ge=1)
    folds: list[Any] | None = Field(None, description="held-out folds to run (default: every fold)")
    training: TrainSettings = Field(default_factory=TrainSettings)
    batch_seconds: float = Field(60.0, gt=0)
    device: str = "auto"

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> DistributionExperimentConfig:
        path = Path(path)
        config = validated_config(cls, read_yaml(path), overrides, path)
        base = path.parent
        for spec in config.distributions.values():
            spec.table = _resolve(spec.table, base)
            spec.distributions = _resolve(spec.distributions, base)
        config.backbones = list(
            dict.fromkeys(
                str(_resolve(Path(b), base)) if _looks_local(b, base) else b for b in config.backbones
            )
        )
        unknown = [t for t in config.targets if t not in SOURCES]
        if unknown:
            raise MeltError(f"targets {unknown}: expected some of {list(SOURCES)}", file=path)
        if config.pooling == "attention" and any(b.strip().lower() == "egemaps" for b in config.backbones):
            raise MeltError(
                "egemaps has no frames for attention pooling: use pooling: mean, or leave egemaps out",
                file=path,
            )
        return config

    def options(self, target: str, dime: bool, seed: int) -> DistributionOptions:
        return DistributionOptions(
            source=target,
            loss=self.loss,
            entropy_weight=self.entropy_weight,
            pooling=self.pooling,
            blocks=self.blocks,
            heads=self.heads,
            crop_seconds=self.crop_seconds,
            dime=DimeSettings(ratio=self.dime_ratio, neighbours=self.dime_neighbours, seed=seed)
            if dime
            else None,
            batch_seconds=self.batch_seconds,
        )


@dataclass
class _Corpus:
    name: str
    table: pd.DataFrame
    base: Path
    source: str
    targets: dict[str, Distributions]
    reference: Distributions
    classes: list[str]
    folds: list[Any]
    #: rows every target defines (on the classes): the training candidates
    trainable: np.ndarray
    #: rows with a reference distribution (on the classes): the test candidates
    testable: np.ndarray
    counts: dict[str, int]


def _load_corpus(name: str, spec: DistributionCorpus, config: DistributionExperimentConfig) -> _Corpus:
    table = read_table(spec.table)
    source = str(spec.table)
    if "fold" not in table.columns or table["fold"].dropna().nunique() < 2:
        raise MeltError(
            f"corpus {name!r}: distribution experiments need speaker-independent folds (a `fold` column with at "
            "least two folds; IEMOCAP's loader sets one per session, `melt corpus folds` adds them)",
            file=source,
        )
    reference = read_distributions(spec.distributions, config.reference)
    targets = {t: read_distributions(spec.distributions, t) for t in config.targets}
    classes = list(config.classes) if config.classes else list(reference.labels)
    for distributions in (reference, *targets.values()):
        missing = [c for c in classes if c not in distributions.labels]
        if missing:
            raise MeltError(
                f"corpus {name!r}: the {distributions.source} distributions have no column for {missing}",
                file=spec.distributions,
            )
    if len(classes) < 2:
        raise MeltError(f"corpus {name!r}: a distribution needs at least two classes, got {classes}")

    def usable(distributions: Distributions) -> np.ndarray:
        values, reasons = distributions.lookup(table["id"])
        _, kept = restrict(np.nan_to_num(values, nan=0.0), distributions.labels, classes)
        return kept & np.array([r is None for r in reasons])

    trainable = np.logical_and.reduce([usable(d) for d in targets.values()])
    testable = usable(reference)
    has_fold = table["fold"].notna().to_numpy()
    folds = sorted(table.loc[has_fold, "fold"].unique().tolist())
    if config.folds is not None:
        wanted = [f for f in folds if f in config.folds or str(f) in {str(v) for v in config.folds}]
        if not wanted:
            raise MeltError(
                f"corpus {name!r}: none of the folds {config.folds} is in the table (folds: {folds})"
            )
        folds = wanted
    if not (trainable & has_fold).any():
        raise MeltError(
            f"corpus {name!r}: no utterance has a distribution of every target {config.targets}", file=source
        )
    counts = {
        "rows": len(table),
        "without_fold": int((~has_fold).sum()),
        "trainable": int((trainable & has_fold).sum()),
        "testable": int((testable & has_fold).sum()),
    }
    return _Corpus(
        name, table, spec.table.parent, source, targets, reference, classes, folds, trainable & has_fold,
        testable & has_fold, counts,
    )  # fmt: skip


@dataclass
class DistributionExperimentResult:
    results: pd.DataFrame
    folds: pd.DataFrame
    table_markdown: str
    out_dir: Path


def run_distribution_experiment(
    config: DistributionExperimentConfig, out_dir: str | Path, *, progress: bool = True, log=print
) -> DistributionExperimentResult:
    """Run (or resume) every run of the distribution experiment and write its outputs into `out_dir`."""
    from melt.ser.backbones import load_backbone, resolve_device
    from melt.ser.cache import FeatureCache, audio_content_key, extract_features

    out = Path(out_dir)
    device = resolve_device(config.device)
    corpora = [_load_corpus(name, spec, config) for name, spec in config.distributions.items()]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    inputs = {
        f"{c.name}:{kind}": {"path": str(path), "sha256": file_sha256(path)}
        for c, spec in zip(corpora, config.distributions.values(), strict=True)
        for kind, path in (("table", spec.table), ("distributions", spec.distributions))
    }
    predictions: dict[tuple[str, str, str, str, int], list[pd.DataFrame]] = {}
    fold_records: list[dict[str, Any]] = []
    dime_counts: list[dict[str, Any]] = []
    backbone_info: dict[str, Any] = {}
    layer_weights: dict[str, list[float]] = {}
    skipped: dict[str, int] = {}
    for backbone_name in config.backbones:
        slug = backbone_slug(backbone_name)
        backbone = load_backbone(backbone_name, device=device)
        cache = FeatureCache.create(out / "features" / slug, backbone)
        cache.use_backbone(backbone)
        backbone_info[backbone_name] = cache.manifest["backbone"]
        for corpus in corpora:
            result = extract_features(
                corpus.table,
                backbone,
                cache,
                root=corpus.base,
                batch_seconds=config.batch_seconds,
                progress=progress,
            )
            if len(result.problems):
                listed = out / "features" / slug / f"problems_{_slug(corpus.name)}.csv"
                write_table(result.problems, listed)
                skipped[f"{backbone_name} / {corpus.name}"] = len(result.problems)
                log(
                    f"{backbone_name} / {corpus.name}: {len(result.problems)} rows skipped (listed in {listed})"
                )
            # what every run and frame mix of this corpus was made from: its files and its audio content (a clip
            # re-recorded in place keeps its row)
            made_from = [
                inputs[f"{corpus.name}:table"]["sha256"],
                inputs[f"{corpus.name}:distributions"]["sha256"],
                audio_content_key(corpus.table, corpus.base, cache.folder),
            ]
            for fold in corpus.folds:
                in_fold = (corpus.table["fold"] == fold).fillna(False).to_numpy()
                train_rows = corpus.table[corpus.trainable & ~in_fold].reset_index(drop=True)
                test_rows = corpus.table[corpus.testable & in_fold].reset_index(drop=True)
                if not len(test_rows) or len(train_rows) < 2:
                    log(
                        f"{corpus.name}: fold {fold} skipped ({len(train_rows)} training, {len(test_rows)} test rows)"
                    )
                    continue
                fold_dir = out / "runs" / slug / _slug(corpus.name) / f"fold{_slug(str(fold))}"
                mix = None
                if config.pooling == "attention":
                    mix = _fold_layer_weights(
                        config, cache, corpus, train_rows, fold_dir, device, progress, made_from
                    )
                    layer_weights[f"{_short(backbone_name)} · {corpus.name} · fold {fold}"] = mix.tolist()
                for seed in config.seeds:
                    settings = config.training.model_copy(update={"seed": seed})
                    speakers = _validation_speakers(train_rows, settings)
                    common = {
                        "settings": settings.model_dump(),
                        "fingerprint": cache.manifest["fingerprint"],
                        "inputs": made_from,
                        "classes": corpus.classes,
                        "reference": config.reference,
                        "fold": str(fold),
                        "validation": speakers,
                        "layer_weights": None if mix is None else mix.tolist(),
                    }
                    for target in config.targets:
                        for dime in config.dime:
                            options = config.options(target, dime, seed)
                            run_dir = (
                                fold_dir / _slug(target) / (AUGMENTED if dime else PLAIN) / f"seed{seed}"
                            )
                            key = _key(common, options=options.model_dump())
                            frame, record = _finished(run_dir, key)
                            if frame is None:
                                context = f"backbone {backbone_name}, corpus {corpus.name}, fold {fold}, target {target}"
                                frame, record = _with_context(
                                    context, _run, config, cache, corpus, train_rows, test_rows, options,
                                    settings, speakers, mix, run_dir, key, device, progress,
                                )  # fmt: skip
                            label = AUGMENTED if dime else PLAIN
                            predictions.setdefault(
                                (backbone_name, corpus.name, target, label, seed), []
                            ).append(frame)
                            fold_records.append(
                                {"backbone": backbone_name, "corpus": corpus.name, "target": target, "dime": label,
                                 "seed": seed, "fold": fold, **record["scores"]}
                            )  # fmt: skip
                            if dime:
                                dime_counts += [
                                    {"backbone": backbone_name, "corpus": corpus.name, "target": target, "seed": seed,
                                     "fold": fold, **row}
                                    for row in record.get("dime") or []
                                ]  # fmt: skip
        del backbone

    if not predictions:
        raise MeltError(
            "no run could be made: every held-out fold lacked test rows with features or training rows (see the "
            "messages above and features/*/problems_*.csv)"
        )
    results = _score_pooled(predictions, corpora)
    write_table(results, out / "results.csv")
    folds = pd.DataFrame.from_records(fold_records)
    write_table(folds, out / "folds.csv")
    dime_table = pd.DataFrame.from_records(dime_counts)
    if len(dime_table):
        write_table(dime_table, out / "dime_counts.csv")
    overall, by_tertile = result_tables(results, [c.name for c in corpora])
    table_md = (
        "## JS ↓ / BC ↑ against the human distribution, all test utterances\n\n"
        + _markdown(overall)
        + "\n## Per tertile of the test utterances' human ambiguity\n\n"
        + _markdown(by_tertile)
        + f"\n{_seeds_note(len(config.seeds))}, predictions of every held-out fold pooled "
        "per seed; best of each column in bold (lowest JS, highest BC). Folds are speaker-independent (the table's "
        "`fold`); the paper used a random 80/20 split.\n"
        + "\n## Reference only: Scaling Ambiguity's own results (never used here)\n\n"
        + _markdown(PAPER_RESULTS.astype(str))
        + "\nQwen2-Audio-7B fine-tuned with LoRA, each source scored against test distributions of its own source, "
        "random 80/20 split: not comparable one to one with the rows above.\n"
    )
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(table_md, encoding="utf-8"))
    provenance = {
        "melt_version": __version__,
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": _versions(),
        "device": device,
        "settings": json.loads(config.model_dump_json()),
        "inputs": inputs,
        "backbones": backbone_info,
        "corpora": {
            c.name: {**c.counts, "classes": c.classes, "folds": [str(f) for f in c.folds]} for c in corpora
        },
        "layer_weights": layer_weights,
        "skipped_rows": skipped,
        "split": "leave one fold out over the table's `fold` (speaker-independent); the paper: random 80/20",
    }
    _write_json(out / "provenance.json", provenance)
    _report(out, results, overall, by_tertile, dime_table, provenance, config)
    return DistributionExperimentResult(results=results, folds=folds, table_markdown=table_md, out_dir=out)


def _validation_speakers(rows: pd.DataFrame, settings: TrainSettings) -> list[str] | None:
    from melt.ser.training import validation_split

    if "speaker" not in rows.columns:
        return None
    speakers = rows["speaker"].tolist()
    mask, rule = validation_split(speakers, fraction=settings.validation_fraction, seed=settings.seed)
    if not rule.startswith("speakers"):
        return None
    return sorted({str(s) for s in np.asarray(speakers, dtype=object)[mask]})


def _fold_layer_weights(
    config, cache, corpus: _Corpus, train_rows, fold_dir: Path, device, progress, made_from: list[str]
) -> np.ndarray:
    """The fold's frame mix: a mean-pooled head on the reference distributions of its training rows (first seed);
    remembered in `fold_dir/layer_weights.json` with the key of what decided it (`made_from`: the corpus's table,
    distributions and audio content)."""
    from melt.ser.distribution_model import train_distribution_model

    settings = config.training.model_copy(update={"seed": config.seeds[0]})
    speakers = _validation_speakers(train_rows, settings)
    key = _key(
        {"settings": settings.model_dump(), "fingerprint": cache.manifest["fingerprint"], "inputs": made_from},
        ids=sorted(train_rows["id"].astype(str)), reference=config.reference, classes=corpus.classes,
        validation=speakers, loss=config.loss, entropy_weight=config.entropy_weight, blocks=config.blocks,
    )  # fmt: skip
    path = fold_dir / "layer_weights.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return np.asarray(saved["weights"], dtype=np.float32)
    except (OSError, ValueError):
        pass
    options = config.options(config.reference, False, config.seeds[0]).model_copy(update={"pooling": "mean"})
    model = train_distribution_model(
        cache, train_rows, corpus.reference, None, options=options, settings=settings, classes=corpus.classes,
        root=corpus.base, validation_speakers=speakers, device=device, progress=progress,
    )  # fmt: skip
    weights = model.layer_weights().astype(np.float32)
    _write_json(path, {"key": key, "weights": weights.tolist(), "best_epoch": model.info["best_epoch"]})
    return weights


def _run(
    config, cache, corpus: _Corpus, train_rows, test_rows, options: DistributionOptions, settings, speakers, mix,
    run_dir: Path, key: str, device: str, progress: bool,
) -> tuple[pd.DataFrame, dict[str, Any]]:  # fmt: skip
    from melt.ser.distribution_model import predict_distributions, prediction_table, train_distribution_model

    model = train_distribution_model(
        cache, train_rows, corpus.targets[options.source], run_dir / "model", options=options, settings=settings,
        classes=corpus.classes, root=corpus.base, validation_speakers=speakers, layer_weights=mix,
        dime_dir=run_dir / "dime", device=device, progress=progress,
    )  # fmt: skip
    predicted, present, _ = predict_distributions(
        model, cache, test_rows, root=corpus.base, device=device, batch_seconds=config.batch_seconds
    )
    rows = test_rows[present].reset_index(drop=True)
    values, _ = corpus.reference.lookup(rows["id"])
    reference, _ = restrict(values, corpus.reference.labels, corpus.classes)
    ambiguity_values = reference_ambiguity(corpus.reference, rows["id"], reference)
    metrics, tertile = score_distributions(predicted, reference, ambiguity_values, rows["id"].to_numpy())
    frame = prediction_table(rows["id"], tertile, ambiguity_values, predicted, reference, corpus.classes)
    all_row = metrics[metrics["tertile"] == "all"].iloc[0]
    record = {
        "key": key,
        "n_train": model.info["n_train"],
        "n_augmented": model.info["n_augmented"],
        "best_epoch": model.info["best_epoch"],
        "scores": {k: (None if pd.isna(all_row[k]) else float(all_row[k])) for k in ("n", *SCORE_NAMES)},
        "dime": model.info["dime"],
    }
    write_table(frame, run_dir / "predictions.csv")
    _write_json(run_dir / "run.json", record)
    return frame, record


def _finished(run_dir: Path, key: str) -> tuple[pd.DataFrame | None, dict[str, Any] | None]:
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        if record.get("key") != key:
            return None, None
        frame = pd.read_csv(run_dir / "predictions.csv", dtype={"id": "string", "tertile": "string"})
    except (OSError, ValueError):
        return None, None
    return frame, record


def _score_pooled(
    predictions: dict[tuple[str, str, str, str, int], list[pd.DataFrame]], corpora: list[_Corpus]
) -> pd.DataFrame:
    """Per backbone, corpus, target, DiME setting and seed: every fold's predictions together, scored per tertile of
    the test utterances' human ambiguity (cut over all of them)."""
    classes = {c.name: c.classes for c in corpora}
    rows = []
    for (backbone, corpus, target, dime, seed), frames in predictions.items():
        frame = pd.concat(frames, ignore_index=True)
        names = classes[corpus]
        predicted = frame[[f"p_{c}" for c in names]].to_numpy(dtype=float)
        reference = frame[[f"ref_{c}" for c in names]].to_numpy(dtype=float)
        predicted = predicted / predicted.sum(axis=1, keepdims=True)
        reference = reference / reference.sum(axis=1, keepdims=True)
        metrics, _ = score_distributions(
            predicted, reference, frame["ambiguity"].to_numpy(dtype=float), frame["id"].to_numpy()
        )
        for record in metrics.drop(columns=["source"]).to_dict("records"):
            rows.append(
                {
                    "backbone": backbone,
                    "corpus": corpus,
                    "target": target,
                    "dime": dime,
                    "seed": seed,
                    **record,
                }
            )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def result_tables(results: pd.DataFrame, corpora: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(all test utterances: JS ↓ and BC ↑ per corpus; per tertile: the same per corpus and tertile), rows backbone ×
    target × DiME-Aug, "mean ± std" over seeds, the best mean of each column wrapped in ** (bold in Markdown)."""
    grouped = results.groupby(["backbone", "corpus", "target", "dime", "tertile"], sort=False)
    mean = grouped[["jsd", "bc"]].mean()
    std = grouped[["jsd", "bc"]].std(ddof=1)  # NaN for a single seed: no spread to show
    systems = list(dict.fromkeys(zip(results["backbone"], results["target"], results["dime"], strict=True)))

    def cell(system, corpus: str, tertile: str, metric: str) -> str:
        backbone, target, dime = system
        key = (backbone, corpus, target, dime, tertile)
        if key not in mean.index:
            return "–"
        value = mean.loc[key, metric]
        column = [
            mean.loc[(b, corpus, t, d, tertile), metric]
            for b, t, d in systems
            if (b, corpus, t, d, tertile) in mean.index
        ]
        best = min(column) if metric == "jsd" else max(column)
        text = _mean_and_spread(value, std.loc[key, metric])
        return f"**{text}**" if np.isclose(value, best) else text

    def table(tertiles: tuple[str, ...]) -> pd.DataFrame:
        rows, previous = [], None
        for system in systems:
            backbone, target, dime = system
            row = {
                "Backbone": _short(backbone) if backbone != previous else "",
                "Target": target,
                "DiME-Aug": dime,
            }
            previous = backbone
            for corpus in corpora:
                for tertile in tertiles:
                    prefix = f"{corpus}" if tertile == "all" else f"{corpus} {tertile}"
                    row[f"{prefix} JS ↓"] = cell(system, corpus, tertile, "jsd")
                    row[f"{prefix} BC ↑"] = cell(system, corpus, tertile, "bc")
            rows.append(row)
        return pd.DataFrame(rows)

    return table(("all",)), table(TERTILES)


def _report(out: Path, results, overall, by_tertile, dime_table, provenance, config) -> None:
    from melt.analysis.report import Section, write_report
    from melt.ser import plots

    figures = {
        "JSD per tertile of human ambiguity (mean ± std over seeds; lower is better)": plots.tertile_bars(
            results, "jsd", out / "jsd.png"
        ),
        "Bhattacharyya coefficient per tertile (mean ± std over seeds; higher is better)": plots.tertile_bars(
            results, "bc", out / "bc.png"
        ),
    }

    def bold_free(table: pd.DataFrame) -> pd.DataFrame:
        return table.map(lambda v: f"{v[2:-2]} ◆" if isinstance(v, str) and v.startswith("**") else v)

    corpora = provenance["corpora"]
    settings = provenance["settings"]
    sections = [
        Section(
            "What was run",
            [
                "Corpora: "
                + "; ".join(
                    f"{name}: {c['trainable']} utterances with every target's distribution (training candidates), "
                    f"{c['testable']} with a {config.reference} distribution (test candidates), classes "
                    f"{', '.join(c['classes'])}, held-out folds {', '.join(c['folds'])}"
                    for name, c in corpora.items()
                )
                + ".",
                f"Targets {', '.join(config.targets)} × DiME-Aug {', '.join('on' if d else 'off' for d in config.dime)} "
                f"× seeds {config.seeds} × backbones {', '.join(_short(b) for b in config.backbones)}. Every model is "
                f"scored against the held-out utterances' {config.reference} distribution, whatever it was trained on.",
                f"Splits: {provenance['split']}. Training uses only utterances that every target defines; the "
                "validation speakers (model selection on the lowest JSD) come from the training folds; DiME-Aug mixes "
                "training rows only.",
                f"Head: the distributional head ({config.pooling} pooling over the weighted sum of hidden states, "
                f"{config.blocks} residual block(s)), loss {config.loss}"
                + (f" (λ = {config.entropy_weight}, natural log)" if config.loss == "jsd-entropy" else "")
                + f"; {settings['training']['epochs']} epochs, lr {settings['training']['lr']}, batch "
                f"{settings['training']['batch_size']}. DiME-Aug: r = {config.dime_ratio}, k = {config.dime_neighbours}.",
                "Metrics: melt.ambiguity.metrics (JSD with log base 2, in [0, 1]); tertiles cut over the test "
                "utterances by their human ambiguity.",
            ],
        ),
        Section(
            "Results in the shape of the paper's table (JS ↓ / BC ↑)",
            ["Mean ± standard deviation over seeds; ◆ marks the best of each column (bold in table.md)."],
            tables={"all test utterances": bold_free(overall), "per tertile": bold_free(by_tertile)},
        ),
        Section("Plots", figures=figures),
    ]
    if len(dime_table):
        summary = (
            dime_table.groupby(["corpus", "target", "label"], sort=False)[["rows", "goal", "added"]]
            .mean()
            .round(1)
            .reset_index()
        )
        sections.append(
            Section(
                "DiME-Aug",
                [
                    "Rows per class before augmentation, the goal ⌊r · n_max⌋ and the rows added (mean over "
                    "backbones, seeds and folds; dime_counts.csv has each run). Each run's mixed rows are in "
                    "runs/.../with/seed<k>/dime/dime.parquet and its audio in dime/audio/."
                ],
                tables={"dime_counts": summary},
            )
        )
    sections += [
        Section(
            "Reference: Scaling Ambiguity's own results",
            [
                "Quoted for orientation only (SPEC §4); no figure here is computed from them. The paper fine-tuned "
                "Qwen2-Audio-7B with LoRA, scored each source against test distributions of its own source (not "
                "always the human one) and used a random 80/20 split that puts speakers on both sides; the runs "
                "above use frozen SSL backbones, the human reference and speaker-independent folds, so the numbers "
                "are not comparable one to one.",
            ],
            tables={"Scaling Ambiguity (JS ↓ / BC ↑)": PAPER_RESULTS},
        ),
        Section(
            "Provenance",
            [
                f"melt {provenance['melt_version']}, started {provenance['started']}, finished "
                f"{provenance['finished']}, device {provenance['device']}, packages {provenance['packages']}.",
                "Inputs: "
                + "; ".join(
                    f"{k}: {v['path']} (sha256 {v['sha256']})" for k, v in provenance["inputs"].items()
                ),
                "Backbones: "
                + "; ".join(f"{k}: {v['fingerprint']}" for k, v in provenance["backbones"].items()),
                "Settings, layer weights and skipped rows: provenance.json.",
            ],
        ),
    ]
    write_report(out, "Emotion distributions: targets and DiME-Aug per ambiguity level", sections)
