"""The MELT paper's Table 3 protocol: label sources × backbones × test corpora × seeds.

For every backbone, label source, test corpus and seed: train only on the utterances that every compared label
source labels (the paper's fair comparison), keep the training rows whose label is among the test corpus's
classes, size the head to those classes, and test on every test-corpus utterance of those classes. Features
are extracted once per corpus and backbone into `OUT/features/<backbone>/` and shared by every run; each run's
model and predictions live in `OUT/runs/...`, and a rerun skips the runs already finished.

Outputs: `results.csv`, `table.md` (the shape of the paper's Table 3: mean ± std over seeds, best per column in
bold), `comparison.csv` (paired tests of label sources, see `melt.ser.stats`), `report.html` / `report.md` with
the plots and the paper's own Table 3 quoted as reference, `provenance.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from melt import __version__
from melt.acoustics.features import file_sha256
from melt.corpus.labels import MELT_LABEL_SET
from melt.corpus.schema import atomic_write, read_table, require_columns, write_table
from melt.errors import MeltError
from melt.ser.cache import CROP_SECONDS
from melt.ser.stats import RESAMPLES
from melt.ser.training import TrainSettings

#: MELT paper, Table 3 (UAR / ACC / F1 per test corpus; MELT vs MELD training labels). Quoted as reference only.
PAPER_TABLE3 = pd.DataFrame(
    [
        ("wav2vec 2.0 Base", "MELT", 0.3805, 0.4262, 0.3610, 0.3407, 0.3407, 0.2567, 0.2835, 0.2284, 0.1799, 0.2789, 0.2712, 0.2269),
        ("wav2vec 2.0 Base", "MELD", 0.3565, 0.4014, 0.3152, 0.2857, 0.2857, 0.1614, 0.2284, 0.1691, 0.0877, 0.2752, 0.2607, 0.2034),
        ("wav2vec 2.0 Aud", "MELT", 0.4991, 0.4899, 0.4870, 0.2946, 0.2946, 0.1926, 0.2753, 0.2200, 0.1534, 0.2328, 0.2194, 0.1748),
        ("wav2vec 2.0 Aud", "MELD", 0.4347, 0.4523, 0.4181, 0.2943, 0.2943, 0.2063, 0.2292, 0.1699, 0.0849, 0.2017, 0.1819, 0.0986),
        ("Hubert Base", "MELT", 0.3675, 0.4079, 0.3415, 0.3107, 0.3107, 0.1879, 0.3013, 0.2516, 0.2047, 0.2419, 0.2327, 0.1697),
        ("Hubert Base", "MELD", 0.3296, 0.3771, 0.2930, 0.2511, 0.2511, 0.1730, 0.2433, 0.1851, 0.1577, 0.2380, 0.2202, 0.1526),
        ("WavLM Base+", "MELT", 0.4568, 0.4887, 0.4575, 0.3114, 0.3114, 0.2372, 0.3244, 0.2724, 0.2174, 0.3135, 0.3007, 0.2480),
        ("WavLM Base+", "MELD", 0.4188, 0.4570, 0.4102, 0.3114, 0.3114, 0.2405, 0.2827, 0.2276, 0.1553, 0.3069, 0.2912, 0.2018),
    ],
    columns=[
        "backbone", "labels",
        "IEMOCAP (4 cl) UAR", "IEMOCAP ACC", "IEMOCAP F1",
        "TESS (7 cl) UAR", "TESS ACC", "TESS F1",
        "RAVDESS (7 cl) UAR", "RAVDESS ACC", "RAVDESS F1",
        "CREMA-D (6 cl) UAR", "CREMA-D ACC", "CREMA-D F1",
    ],
)  # fmt: skip

IN_DOMAIN = "in_domain"


class TrainSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus: Path
    #: label sources to compare: a list of columns, or {display name: column}
    labels: dict[str, str]

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = {str(v): str(v) for v in value}
        return value


class TestCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: Path
    #: the head's classes (default: the test labels that the training label sources also use)
    classes: list[str] | None = None
    #: the column of the test table holding its labels
    labels: str = "label"


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: TrainSource
    test: dict[str, TestCorpus] = Field(default_factory=dict)
    backbones: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    in_domain: bool = Field(
        False, description="also evaluate on the training corpus's own test split or folds"
    )
    training: TrainSettings = Field(default_factory=TrainSettings)
    crops: int = Field(
        0, ge=0, description="random crops cached per training utterance (one drawn per epoch)"
    )
    crop_seconds: float = Field(CROP_SECONDS, gt=0)
    batch_seconds: float = Field(60.0, gt=0, description="padded audio per extraction batch")
    device: str = "auto"
    resamples: int = Field(RESAMPLES, ge=100, description="bootstrap resamples and randomisation rounds")

    @field_validator("test", mode="before")
    @classmethod
    def _tests(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"table": v} if isinstance(v, str | Path) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _distinct_folders(self) -> ExperimentConfig:
        if IN_DOMAIN in self.test:
            raise ValueError(f"a test corpus may not be called {IN_DOMAIN!r}: use `in_domain: true`")
        for kind, names in (("test corpora", self.test), ("label sources", self.train.labels)):
            seen: dict[str, str] = {}
            for name in names:
                other = seen.setdefault(_slug(name), name)
                if other != name:
                    raise ValueError(
                        f"{kind} {other!r} and {name!r} would share the same folder {_slug(name)!r}"
                    )
        return self

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> ExperimentConfig:
        """The YAML file's settings; relative paths are relative to the file's folder. `overrides` that are not
        None replace top-level keys; `epochs` replaces training.epochs."""
        path = Path(path)
        config = validated_config(cls, read_yaml(path), overrides, path)
        base = path.parent
        config.train.corpus = _resolve(config.train.corpus, base)
        for test in config.test.values():
            test.table = _resolve(test.table, base)
        config.backbones = [
            str(_resolve(Path(b), base)) if _looks_local(b, base) else b for b in config.backbones
        ]
        config.backbones = list(dict.fromkeys(config.backbones))
        if not config.test and not config.in_domain:
            raise MeltError("nothing to evaluate: give test corpora or in_domain: true", file=path)
        return config


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MeltError("experiment config not found", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MeltError(f"not valid YAML ({exc})", file=path) from exc
    if not isinstance(data, dict):
        raise MeltError("expected a mapping with train, test, backbones, seeds", file=path)
    return data


def validated_config(cls, data: dict[str, Any], overrides: dict[str, Any], path: Path):
    """`cls` from the YAML mapping with `overrides` (not None) on top; `epochs` replaces training.epochs."""
    overrides = dict(overrides)
    epochs = overrides.pop("epochs", None)
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    if epochs is not None:
        data["training"] = {**(data.get("training") or {}), "epochs": epochs}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise MeltError(f"invalid experiment config: {problems}", file=path) from exc


def load_experiment(path: str | Path, **overrides: Any):
    """The experiment a YAML file describes: a distribution experiment (`melt.ser.distribution_experiment`) when
    it has a `distributions` key, else the Table 3 protocol."""
    path = Path(path)
    if "distributions" in read_yaml(path):
        from melt.ser.distribution_experiment import DistributionExperimentConfig

        return DistributionExperimentConfig.load(path, **overrides)
    return ExperimentConfig.load(path, **overrides)


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def _looks_local(name: str, base: Path) -> bool:
    return name.startswith((".", "/", "~")) or (base / name).is_dir()


def backbone_slug(name: str) -> str:
    """A folder name for a backbone: the hub name, or a local folder's name plus a short hash of its path."""
    if Path(name).is_absolute():
        return f"{Path(name).name}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "_"


@dataclass
class _Test:
    name: str
    table: pd.DataFrame
    base: Path
    source: str
    classes: list[str]
    labels: str
    #: test labels outside the classes (or missing) -> rows, left out of the scores
    excluded: dict[str, int]


@dataclass
class ExperimentResult:
    results: pd.DataFrame
    comparison: pd.DataFrame
    table_markdown: str
    out_dir: Path


def run_experiment(
    config: ExperimentConfig, out_dir: str | Path, *, progress: bool = True, log=print
) -> ExperimentResult:
    """Run (or resume) every run of the protocol and write the outputs into `out_dir`."""
    from melt.ser.backbones import load_backbone, resolve_device
    from melt.ser.cache import FeatureCache, audio_content_key, extract_features
    from melt.ser.model import evaluate_model, train_model
    from melt.ser.training import validation_split

    out = Path(out_dir)
    device = resolve_device(config.device)
    train_table = read_table(config.train.corpus)
    train_source = str(config.train.corpus)
    sources = config.train.labels
    train_labels = {}
    for name, column in sources.items():
        require_columns(train_table, [column], source=train_source, purpose=f"label source {name!r}")
        train_labels[name] = MELT_LABEL_SET.normalize_series(train_table[column].astype("object"))
    labelled_by_all = np.logical_and.reduce([s.notna().to_numpy() for s in train_labels.values()])
    if not labelled_by_all.any():
        raise MeltError(
            f"no utterance is labelled by every label source {list(sources.values())}", file=train_source
        )
    split = train_table["split"].astype("string").str.lower() if "split" in train_table.columns else None
    is_test = (
        (split == "test").fillna(False).to_numpy() if split is not None else np.zeros(len(train_table), bool)
    )
    is_train = (
        (split == "train").fillna(False).to_numpy() if split is not None else np.zeros(len(train_table), bool)
    )
    # the corpus's own training split when it has one, else every row outside a test split
    training_rows = labelled_by_all & (is_train if is_train.any() else ~is_test)
    if not training_rows.any():
        raise MeltError(
            "no training rows (labelled by every source, outside the test split)", file=train_source
        )
    vocabulary = set().union(*(set(s[training_rows].dropna()) for s in train_labels.values()))
    tests = [_load_test(name, spec, config, vocabulary) for name, spec in config.test.items()]
    in_domain = (
        _in_domain_plan(train_table, training_rows, labelled_by_all & is_test) if config.in_domain else None
    )

    started = datetime.now(UTC).isoformat(timespec="seconds")
    inputs = _inputs(config)
    records: list[dict[str, Any]] = []
    fold_records: list[dict[str, Any]] = []
    predictions: dict[tuple[str, str, str, int], pd.DataFrame] = {}
    layer_weights: dict[str, list[list[float]]] = {}
    backbone_info: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    train_base = config.train.corpus.parent
    training_table = train_table[training_rows].reset_index(drop=True)
    speakers = training_table["speaker"].tolist() if "speaker" in training_table.columns else None

    for backbone_name in config.backbones:
        slug = backbone_slug(backbone_name)
        features_dir = out / "features" / slug
        backbone = load_backbone(backbone_name, device=device)
        cache = FeatureCache.create(features_dir, backbone, crop_seconds=config.crop_seconds, crop_seed=0)
        backbone_info[backbone_name] = cache.manifest["backbone"]
        extract_rows = training_rows | (in_domain.test_rows if in_domain is not None else False)
        jobs = [("train", train_table[extract_rows], train_base, training_rows[extract_rows])]
        jobs += [(t.name, t.table, t.base, None) for t in tests]
        for corpus_name, table, base, crop_rows in jobs:
            result = extract_features(
                table,
                backbone,
                cache,
                root=base,
                crops=config.crops if crop_rows is not None else 0,
                crop_rows=crop_rows,
                batch_seconds=config.batch_seconds,
                progress=progress,
            )
            if len(result.problems):
                listed = features_dir / f"problems_{_slug(corpus_name)}.csv"
                write_table(result.problems, listed)
                skipped[f"{backbone_name} / {corpus_name}"] = len(result.problems)
                log(
                    f"{backbone_name} / {corpus_name}: {len(result.problems)} rows skipped (missing or unusable "
                    f"audio), listed in {listed}"
                )
        del backbone  # the backbone's memory is not needed for training heads
        # a finished run is reused only for the same audio, not just the same tables (a clip re-recorded in place)
        train_audio = audio_content_key(train_table[extract_rows], train_base, cache.folder)
        test_audio = {t.name: audio_content_key(t.table, t.base, cache.folder) for t in tests}

        for seed in config.seeds:
            settings = config.training.model_copy(update={"seed": seed})
            mask, rule = validation_split(speakers, fraction=settings.validation_fraction, seed=seed)
            # every label source is selected on the same held-out speakers
            validation_speakers = None
            if rule.startswith("speakers"):
                validation_speakers = sorted({str(s) for s in np.asarray(speakers, dtype=object)[mask]})
            trained: dict[tuple[str, tuple[str, ...]], Any] = {}
            common = {
                "settings": settings.model_dump(),
                "fingerprint": cache.manifest["fingerprint"],
                "crops": config.crops,
                "crop_seconds": config.crop_seconds,
                "train": inputs["train"]["sha256"],
                "train_audio": train_audio,
                "validation": validation_speakers,
            }
            for source_name, column in sources.items():
                for test in tests:
                    run_dir = out / "runs" / slug / _slug(source_name) / _slug(test.name) / f"seed{seed}"
                    run_key = _key(
                        common,
                        column=column,
                        classes=test.classes,
                        test=inputs[f"test:{test.name}"]["sha256"],
                        test_audio=test_audio[test.name],
                        test_labels=test.labels,
                    )
                    record, frame = _finished(run_dir, run_key)
                    if record is None:
                        key = (source_name, tuple(test.classes))
                        context = f"backbone {backbone_name}, labels {source_name}, test {test.name}"
                        if key not in trained:  # tests with the same classes share one model
                            trained[key] = _with_context(
                                context,
                                train_model,
                                cache,
                                training_table,
                                column,
                                run_dir / "model",
                                classes=test.classes,
                                settings=settings,
                                root=train_base,
                                validation_speakers=validation_speakers,
                                device=device,
                                plots_too=False,
                                progress=progress,
                            )
                        model = trained[key]
                        evaluation = _with_context(
                            context,
                            evaluate_model,
                            model,
                            cache,
                            test.table,
                            run_dir,
                            labels=test.labels,
                            root=test.base,
                            device=device,
                            plots_too=False,
                        )
                        record = _record(backbone_name, source_name, test.name, seed, model, evaluation)
                        record["classes"] = len(test.classes)
                        record["key"] = run_key
                        _write_json(run_dir / "run.json", record)
                        frame = evaluation.predictions
                    records.append(record)
                    predictions[(backbone_name, source_name, test.name, seed)] = frame
                    layer_weights.setdefault(f"{_short(backbone_name)} · {source_name}", []).append(
                        record["layer_weights"]
                    )
                if in_domain is not None:
                    run_dir = out / "runs" / slug / _slug(source_name) / IN_DOMAIN / f"seed{seed}"
                    run_key = _key(common, column=column, in_domain=in_domain.description)
                    record, folds = _with_context(
                        f"backbone {backbone_name}, labels {source_name}, in-domain",
                        _in_domain_run,
                        in_domain,
                        train_table,
                        column,
                        cache,
                        settings,
                        run_dir,
                        train_base,
                        device,
                        progress,
                        run_key,
                    )
                    record.update(backbone=backbone_name, labels=source_name)
                    records.append(record)
                    fold_records += [{**f, "backbone": backbone_name, "labels": source_name} for f in folds]

    results = pd.DataFrame.from_records(records)
    write_table(results[RESULT_COLUMNS], out / "results.csv")
    if fold_records:
        write_table(pd.DataFrame.from_records(fold_records), out / "folds.csv")
    comparison = paired_comparisons(predictions, config, tests)
    write_table(comparison, out / "comparison.csv")
    test_names = [t.name for t in tests] + ([IN_DOMAIN] if in_domain is not None else [])
    table = table3_frame(results, test_names)
    table_md = _markdown(table) + (
        f"\n{_seeds_note(len(config.seeds))}; the best mean of each column in bold. "
        "UAR is the mean recall over the classes, F1 is macro-averaged.\n"
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
        "labelled_by_every_source": int(labelled_by_all.sum()),
        "training_rows": int(training_rows.sum()),
        "test_classes": {t.name: t.classes for t in tests},
        "test_rows_excluded": {t.name: t.excluded for t in tests},
        "skipped_rows": skipped,
        "in_domain": in_domain.description if in_domain is not None else None,
    }
    _write_json(out / "provenance.json", provenance)
    _report(out, results, comparison, table, layer_weights, tests, provenance)
    return ExperimentResult(
        results=results[RESULT_COLUMNS], comparison=comparison, table_markdown=table_md, out_dir=out
    )


RESULT_COLUMNS = ["backbone", "labels", "test", "seed", "n_train", "n_test", "classes", "uar", "acc", "f1"]


def _load_test(name: str, spec: TestCorpus, config: ExperimentConfig, vocabulary: set[str]) -> _Test:
    if spec.table.resolve() == config.train.corpus.resolve():
        raise MeltError(
            f"test corpus {name!r} is the training corpus; use `in_domain: true` for same-corpus evaluation",
            file=spec.table,
        )
    table = read_table(spec.table)
    require_columns(table, [spec.labels], source=spec.table, purpose=f"test corpus {name!r}")
    truth = MELT_LABEL_SET.normalize_series(table[spec.labels].astype("object"))
    present = sorted(truth.dropna().unique())
    if spec.classes:
        classes = [c for c in dict.fromkeys(MELT_LABEL_SET.normalize(c) for c in spec.classes) if c]
    else:
        classes = [c for c in present if c in vocabulary]
    if len(classes) < 2 and set(classes) & vocabulary:
        raise MeltError(
            f"test corpus {name!r} has a single class {classes}: a score on it says nothing (give `classes:`)",
            file=spec.table,
            column=spec.labels,
        )
    if not set(classes) & vocabulary:
        raise MeltError(
            f"test corpus {name!r}: its classes {classes or present} share nothing with the training labels "
            f"{sorted(vocabulary)}",
            file=spec.table,
            column=spec.labels,
        )
    excluded = {
        str(k): int(v) for k, v in truth[~truth.isin(classes)].fillna("<missing>").value_counts().items()
    }
    return _Test(name, table, spec.table.parent, str(spec.table), classes, spec.labels, excluded)


def _record(backbone: str, labels: str, test: str, seed: int, model, evaluation) -> dict[str, Any]:
    return {
        "backbone": backbone,
        "labels": labels,
        "test": test,
        "seed": seed,
        "n_train": model.info["n_train"],
        "n_test": evaluation.metrics["n"],
        "classes": len(model.classes),
        "uar": evaluation.metrics["uar"],
        "acc": evaluation.metrics["acc"],
        "f1": evaluation.metrics["f1"],
        "layer_weights": model.layer_weights().round(6).tolist(),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _short(name: str) -> str:
    return Path(name).name if Path(name).is_absolute() else name


def _key(common: dict[str, Any], **specific: Any) -> str:
    """Everything that decides a run's result: a finished run is reused only when its key is the same."""
    text = json.dumps({**common, **specific}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _with_context(context: str, function, *args, **kwargs):
    """Name the run in a user error raised inside it."""
    try:
        return function(*args, **kwargs)
    except MeltError as exc:
        raise MeltError(f"{context}: {exc.message}", file=exc.file, row=exc.row, column=exc.column) from exc


def _finished(run_dir: Path, key: str) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """A finished run's record and predictions (run.json is written last), if it was made with the same key."""
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        if record.get("key") != key:
            return None, None
        frame = pd.read_csv(
            run_dir / "predictions.csv", dtype={"id": "string", "label": "string", "predicted": "string"}
        )
    except (OSError, ValueError):
        return None, None
    return record, frame


@dataclass
class _InDomainPlan:
    #: "split": train on the training rows, test on the test split; "folds": leave one fold out
    mode: str
    train_rows: np.ndarray
    test_rows: np.ndarray  # rows to extract besides the training rows
    folds: list[Any]
    description: str


def _in_domain_plan(table: pd.DataFrame, training_rows: np.ndarray, test_rows: np.ndarray) -> _InDomainPlan:
    if test_rows.any():
        return _InDomainPlan(
            "split",
            training_rows,
            test_rows,
            [],
            "the training corpus's test split, scored against each source's own labels",
        )
    if "fold" in table.columns:
        folds = sorted(table.loc[training_rows, "fold"].dropna().unique().tolist())
        if len(folds) >= 2:
            return _InDomainPlan(
                "folds",
                training_rows,
                np.zeros(len(table), dtype=bool),
                folds,
                f"leave one fold out over the table's `fold` ({len(folds)} folds), scored against each source's "
                "own labels; the mean over folds is reported",
            )
    raise MeltError(
        "in_domain: true needs a test split (split == test) or at least two folds (`fold` column) among the "
        "training corpus's labelled rows"
    )


def _in_domain_run(
    plan: _InDomainPlan,
    table: pd.DataFrame,
    column: str,
    cache,
    settings: TrainSettings,
    run_dir: Path,
    base: Path,
    device: str,
    progress: bool,
    key: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The same-corpus score of one label source and seed: the test split, or the mean over held-out folds."""
    from melt.ser.model import evaluate_model, train_model

    record, _ = _finished(run_dir, key)
    if record is not None:
        return record, record.pop("folds", [])
    labels = MELT_LABEL_SET.normalize_series(table[column].astype("object"))
    train_rows = plan.train_rows
    if plan.mode == "split":
        pairs = [("test", train_rows, plan.test_rows)]
    else:
        fold = table["fold"]
        pairs = [
            (
                str(f),
                train_rows & (fold != f).fillna(False).to_numpy(),
                train_rows & (fold == f).fillna(False).to_numpy(),
            )
            for f in plan.folds
        ]
    folds = []
    frames = []
    for name, train_mask, test_mask in pairs:
        classes = sorted(set(labels[test_mask].dropna()) & set(labels[train_mask].dropna()))
        if not classes:
            raise MeltError(
                f"in-domain fold {name}: no class occurs in both its training and test rows", column=column
            )
        model = train_model(
            cache,
            table[train_mask].reset_index(drop=True),
            column,
            run_dir / f"model_{_slug(name)}",
            classes=classes,
            settings=settings,
            root=base,
            device=device,
            plots_too=False,
            progress=progress,
        )
        evaluation = evaluate_model(
            model,
            cache,
            table[test_mask].reset_index(drop=True),
            run_dir / f"eval_{_slug(name)}",
            labels=column,
            root=base,
            device=device,
            plots_too=False,
        )
        frames.append(evaluation.predictions)
        fold_record = _record("", "", IN_DOMAIN, settings.seed, model, evaluation)
        fold_record["fold"] = name
        folds.append(fold_record)
    by_fold = pd.DataFrame(folds)
    record = {
        "key": key,
        "test": IN_DOMAIN,
        "seed": settings.seed,
        "n_train": round(by_fold["n_train"].mean()),
        "n_test": int(by_fold["n_test"].sum()),
        "classes": int(by_fold["classes"].max()),
        "uar": float(by_fold["uar"].mean()),
        "acc": float(by_fold["acc"].mean()),
        "f1": float(by_fold["f1"].mean()),
        "layer_weights": np.mean(np.array(by_fold["layer_weights"].tolist()), axis=0).round(6).tolist(),
    }
    fold_rows = [
        {k: v for k, v in f.items() if k not in ("layer_weights", "backbone", "labels")} for f in folds
    ]
    write_table(pd.concat(frames, ignore_index=True), run_dir / "predictions.csv")
    _write_json(run_dir / "run.json", {**record, "folds": fold_rows})
    return record, fold_rows


def paired_comparisons(
    predictions: dict[tuple[str, str, str, int], pd.DataFrame], config: ExperimentConfig, tests: list[_Test]
) -> pd.DataFrame:
    """Every pair of label sources per backbone and test corpus, on the test utterances both scored."""
    from melt.ser.stats import paired_uar_difference

    rows = []
    names = list(config.train.labels)
    for backbone in config.backbones:
        for test in tests:
            for a, b in combinations(names, 2):
                frames_a = [predictions.get((backbone, a, test.name, s)) for s in config.seeds]
                frames_b = [predictions.get((backbone, b, test.name, s)) for s in config.seeds]
                if any(f is None for f in frames_a + frames_b):
                    continue
                ids = set(frames_a[0]["id"])
                for frame in frames_a + frames_b:
                    ids &= set(frame["id"])
                order = sorted(ids)
                truth = frames_a[0].set_index("id").loc[order, "label"].to_numpy()
                correct_a = np.array(
                    [f.set_index("id").loc[order, "predicted"].to_numpy() == truth for f in frames_a]
                )
                correct_b = np.array(
                    [f.set_index("id").loc[order, "predicted"].to_numpy() == truth for f in frames_b]
                )
                stats = paired_uar_difference(truth, correct_a, correct_b, resamples=config.resamples, seed=0)
                rows.append(
                    {
                        "backbone": backbone,
                        "test": test.name,
                        "labels_a": a,
                        "labels_b": b,
                        "n_test": len(order),
                        "seeds": len(config.seeds),
                        **stats,
                    }
                )
    columns = [
        "backbone",
        "test",
        "labels_a",
        "labels_b",
        "n_test",
        "seeds",
        "uar_a",
        "uar_b",
        "diff",
        "ci_low",
        "ci_high",
        "p_value",
        "p_randomisation",
    ]
    return pd.DataFrame(rows, columns=columns)


def table3_frame(results: pd.DataFrame, tests: list[str]) -> pd.DataFrame:
    """Rows backbone × label source, columns UAR / ACC / F1 per test corpus as "mean ± std" over seeds (the mean
    alone for a single seed); the best mean of every column wrapped in ** (bold in Markdown)."""
    grouped = results.groupby(["backbone", "labels", "test"], sort=False)
    mean = grouped[["uar", "acc", "f1"]].mean()
    # NaN for a single seed: no spread to show
    std = grouped[["uar", "acc", "f1"]].std(ddof=1)
    classes = results.groupby("test")["classes"].max()
    systems = list(dict.fromkeys(zip(results["backbone"], results["labels"], strict=True)))
    rows = []
    previous = None
    for backbone, labels in systems:
        row = {"Backbone": _short(backbone) if backbone != previous else "", "Labels": labels}
        previous = backbone
        for test in tests:
            for metric in ("uar", "acc", "f1"):
                column = (
                    f"{test} ({int(classes.get(test, 0))} cl) UAR"
                    if metric == "uar"
                    else f"{test} {metric.upper()}"
                )
                m = mean[metric].get((backbone, labels, test), np.nan)
                if np.isnan(m):
                    row[column] = "–"
                    continue
                values = [mean[metric].get((b, lab, test), np.nan) for b, lab in systems]
                text = _mean_and_spread(m, std[metric].get((backbone, labels, test), np.nan))
                row[column] = f"**{text}**" if np.isclose(m, np.nanmax(values)) else text
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_and_spread(mean: float, std: float) -> str:
    """ "mean ± std", or the mean alone where the standard deviation is undefined (a single seed)."""
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _seeds_note(seeds: int) -> str:
    return f"Mean ± standard deviation over {seeds} seeds" if seeds > 1 else "One seed: means, no spread"


def _markdown(table: pd.DataFrame) -> str:
    align = ["---" if c in ("Backbone", "Labels") else "---:" for c in table.columns]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "opensmile", "numpy", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _inputs(config: ExperimentConfig) -> dict[str, Any]:
    files = {"train": config.train.corpus, **{f"test:{k}": v.table for k, v in config.test.items()}}
    return {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in files.items()}


def _report(out: Path, results, comparison, table: pd.DataFrame, layer_weights, tests, provenance) -> None:
    from melt.analysis.report import Section, write_report
    from melt.ser import plots

    chance = {t.name: 1 / len(t.classes) for t in tests}
    figures = {
        "UAR per test corpus (mean ± std over seeds; dotted: chance)": plots.uar_bars(
            results, out / "uar.png", chance=chance
        )
    }
    mean_weights = {
        k: np.mean(np.array(v), axis=0).tolist() for k, v in layer_weights.items() if len(v[0]) > 1
    }
    if mean_weights:
        figures["Learned layer weights, mean over runs (layer 0: CNN output)"] = plots.layer_weights(
            mean_weights, out / "layer_weights.png"
        )
    # HTML shows no Markdown bold: the best cell of each column is marked with ◆ instead
    shown_table = table.map(lambda v: f"{v[2:-2]} ◆" if isinstance(v, str) and v.startswith("**") else v)
    shown_comparison = comparison.copy()
    shown_comparison["backbone"] = shown_comparison["backbone"].map(_short)
    settings = provenance["settings"]
    train = settings["train"]
    sections = [
        Section(
            "What was run",
            [
                f"Training corpus {provenance['inputs']['train']['path']}: {provenance['labelled_by_every_source']} "
                f"utterances labelled by every label source, {provenance['training_rows']} of them training rows. "
                "Label sources: " + ", ".join(f"{k} (column {v})" for k, v in train["labels"].items()) + ".",
                "Test corpora and their classes: "
                + "; ".join(f"{t.name}: {', '.join(t.classes)}" for t in tests)
                + (f". In-domain: {provenance['in_domain']}." if provenance["in_domain"] else "."),
                f"Seeds {settings['seeds']}; {settings['training']['epochs']} epochs, lr {settings['training']['lr']}, "
                f"batch {settings['training']['batch_size']}, dropout {settings['training']['dropout']}; the model of "
                "the epoch with the best validation UAR on held-out training speakers is kept.",
            ],
        ),
        Section(
            "Results in the shape of the paper's Table 3",
            [
                "Mean ± standard deviation over seeds; ◆ marks the best mean of each column (bold in table.md)."
            ],
            tables={"table.md": shown_table},
        ),
        Section(
            "Paired comparison of label sources",
            [
                "diff = mean over seeds of UAR(labels_a) − UAR(labels_b) on the same test utterances. 95 % CI: paired "
                "bootstrap over test utterances (one resample for both sources and every seed, percentile interval). "
                "p_value: the same bootstrap shifted to the null, two-sided (agrees with the interval). "
                "p_randomisation: paired approximate randomisation (the two sources' predictions swapped per "
                "utterance at random), two-sided; more conservative when the sources disagree on many utterances "
                "in both directions.",
            ],
            tables={"comparison.csv": shown_comparison},
        ),
        Section("Plots", figures=figures),
        Section(
            "Reference: the MELT paper's Table 3",
            [
                "Quoted from the paper (models trained on MELD audio with MELT or MELD labels) for orientation only; "
                "no figure here is computed from it.",
            ],
            tables={"MELT paper, Table 3": PAPER_TABLE3},
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
                "Settings and skipped rows: provenance.json.",
            ],
        ),
    ]
    write_report(out, "SER evaluation: label sources compared across corpora", sections)
