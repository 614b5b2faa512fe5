"""`melt ser experiment` end to end, the other commands through the real CLI, and fine-tuning on the CPU."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from melt.cli import app

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def experiment_inputs(emotion_corpora, tmp_path_factory) -> Path:
    """Two label sources (human `label`, and an `llm_label` that relabels some rows and leaves one out) of a
    CREMA-D layout, and two test corpora in other layouts and voices: RAVDESS (three classes) and TESS (anger and
    sadness plus a pleasant surprise the training labels lack, its labels in another column)."""
    folder = tmp_path_factory.mktemp("experiment_inputs")
    train = emotion_corpora.train.copy()
    flips = np.random.default_rng(0).random(len(train)) < 0.25
    train["llm_label"] = train["label"].where(~flips, "neutral")
    train.loc[0, "llm_label"] = None
    train.to_parquet(folder / "train.parquet", index=False)
    emotion_corpora.test.to_parquet(folder / "test_three.parquet", index=False)
    emotion_corpora.tess.rename(columns={"label": "emotion"}).to_parquet(
        folder / "test_two.parquet", index=False
    )
    return folder


def _config(folder: Path, backbones: list[str], **extra) -> Path:
    config = {
        "train": {"corpus": "train.parquet", "labels": {"human": "label", "llm": "llm_label"}},
        "test": {"three": "test_three.parquet", "two": {"table": "test_two.parquet", "labels": "emotion"}},
        "backbones": backbones,
        "seeds": [0, 1],
        "in_domain": True,
        "training": {"epochs": 3, "min_per_class": 2},
        "resamples": 500,
        **extra,
    }
    path = folder / f"experiment_{len(list(folder.glob('experiment_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_experiment_end_to_end(experiment_inputs, tiny_backbones, tmp_path, melt_cli):
    config = _config(experiment_inputs, [str(tiny_backbones["wav2vec2"]), str(tiny_backbones["wavlm"])])
    out = tmp_path / "out"
    result = melt_cli(
        "ser", "experiment", config, "--out", out, "--quiet", "--device", "cpu", env=ONE_THREAD, timeout=600
    )
    assert result.code == 0, result.stderr

    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == [
        "backbone",
        "labels",
        "test",
        "seed",
        "n_train",
        "n_test",
        "classes",
        "uar",
        "acc",
        "f1",
    ]
    assert len(results) == 2 * 2 * 3 * 2  # backbones × label sources × (two tests + in-domain) × seeds
    assert set(results["test"]) == {"three", "two", "in_domain"}
    assert results.groupby("test")["classes"].max().to_dict() == {"three": 3, "two": 2, "in_domain": 3}
    assert set(results.loc[results["test"] == "two", "n_test"]) == {12}  # 13 rows, the surprise left out
    assert results[["uar", "acc", "f1"]].apply(lambda c: c.between(0, 1)).all().all()

    # the fair comparison: the row llm_label leaves out is not in the human-label training data either
    run = next((out / "runs").glob("tiny-wav2vec2*/human/three/seed0/model/model.json"))
    info = json.loads(run.read_text())
    assert info["n_train"] + info["n_validation"] == 47
    assert info["classes"] == ["anger", "neutral", "sadness"]
    two_classes = json.loads(
        next((out / "runs").glob("tiny-wav2vec2*/llm/two/seed0/model/model.json")).read_text()
    )
    assert two_classes["classes"] == ["anger", "sadness"] and two_classes["head"]["num_classes"] == 2
    assert two_classes["validation"] == info["validation"]  # both sources selected on the same speakers

    # features once per corpus and backbone, shared by every run; the training row one source leaves out is not
    # extracted
    caches = sorted((out / "features").iterdir())
    assert len(caches) == 2
    for cache in caches:
        keys = [str(k) for shard in cache.glob("pooled-*.npz") for k in np.load(shard)["keys"]]
        assert len(keys) == len(set(keys)) == 47 + 18 + 13

    table = (out / "table.md").read_text()
    header = table.splitlines()[0]
    assert "three (3 cl) UAR" in header and "two (2 cl) UAR" in header and "in_domain (3 cl) UAR" in header
    body = [line.split(" | ")[2:] for line in table.splitlines()[2:6]]
    for column in zip(*body, strict=True):
        assert sum("**" in cell for cell in column) >= 1  # the best of each column in bold
    assert re.search(r"\d\.\d{4} ± \d\.\d{4}", table)

    comparison = pd.read_csv(out / "comparison.csv")
    assert len(comparison) == 2 * 2  # per backbone and cross-corpus test, human vs llm
    assert set(comparison["labels_a"]) == {"human"} and set(comparison["labels_b"]) == {"llm"}
    assert (comparison["ci_low"] <= comparison["diff"] + 1e-9).all()
    assert (comparison["diff"] <= comparison["ci_high"] + 1e-9).all()
    assert comparison["p_value"].between(0, 1).all()

    report = (out / "report.html").read_text()
    assert "MELT paper, Table 3" in report and "0.4568" in report  # quoted as reference
    assert report.count("data:image/png;base64") >= 2
    provenance = json.loads((out / "provenance.json").read_text())
    train_path = experiment_inputs / "train.parquet"
    assert provenance["inputs"]["train"]["sha256"] == hashlib.sha256(train_path.read_bytes()).hexdigest()
    assert provenance["melt_version"] and provenance["settings"]["training"]["epochs"] == 3
    assert provenance["test_rows_excluded"]["two"] == {"surprise": 1}
    folds = pd.read_csv(out / "folds.csv")
    assert set(folds["fold"]) == {1, 2, 3, 4}


def test_experiment_bad_inputs_are_one_line(experiment_inputs, tmp_path, melt_cli):
    disjoint = experiment_inputs / "test_disjoint.parquet"
    table = pd.read_parquet(experiment_inputs / "test_three.parquet").assign(label="joy")
    table.to_parquet(disjoint, index=False)
    config = _config(experiment_inputs, ["egemaps"], test={"joyful": "test_disjoint.parquet"})
    result = melt_cli("ser", "experiment", config, "--out", tmp_path / "out", "--quiet")
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "share nothing with the training labels" in lines[0], result.stderr

    from melt.errors import MeltError
    from melt.ser.experiment import ExperimentConfig, run_experiment

    missing = _config(
        experiment_inputs, ["egemaps"], train={"corpus": "train.parquet", "labels": ["label", "gpt"]}
    )
    with pytest.raises(MeltError, match=r"missing column\(s\) \['gpt'\]"):
        run_experiment(ExperimentConfig.load(missing), tmp_path / "o2", progress=False)
    same = _config(experiment_inputs, ["egemaps"], test={"self": "train.parquet"})
    with pytest.raises(MeltError, match="use `in_domain: true`"):
        run_experiment(ExperimentConfig.load(same), tmp_path / "o3", progress=False)
    # names that would share a run folder, or a test that would be pooled with the in-domain scores
    for clash, pattern in (
        ({"test": {"in_domain": "test_three.parquet"}}, "in_domain"),
        ({"test": {"rav dess": "test_three.parquet", "rav_dess": "test_two.parquet"}}, "same folder"),
        (
            {"train": {"corpus": "train.parquet", "labels": {"a/b": "label", "a_b": "llm_label"}}},
            "same folder",
        ),
    ):
        with pytest.raises(MeltError, match=pattern):
            ExperimentConfig.load(_config(experiment_inputs, ["egemaps"], **clash))
    broken = experiment_inputs / "broken.yaml"
    broken.write_text("train: {corpus: train.parquet}\nbackbones: []\n")
    with pytest.raises(MeltError, match="invalid experiment config"):
        ExperimentConfig.load(broken)


def test_unloadable_backbone_on_the_command_line(emotion_corpora, tmp_path, melt_cli):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"), **ONE_THREAD}
    result = melt_cli(
        "ser",
        "features",
        emotion_corpora.test_path,
        "--backbone",
        "facebook/hubert-base-ls960",
        "--out",
        tmp_path / "f",
        env=env,
    )
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "facebook/hubert-base-ls960" in lines[0] and "local folder" in lines[0] and "hub" in lines[0]


def test_features_train_evaluate_commands(emotion_corpora, tmp_path):
    runner = CliRunner()
    features = tmp_path / "features"
    for corpus in (emotion_corpora.train_path, emotion_corpora.test_path):
        done = runner.invoke(
            app, ["ser", "features", str(corpus), "--backbone", "egemaps", "--out", str(features), "-q"]
        )
        assert done.exit_code == 0, done.output
    assert "0 entries computed" not in done.output
    again = runner.invoke(
        app,
        [
            "ser",
            "features",
            str(emotion_corpora.test_path),
            "--backbone",
            "egemaps",
            "--out",
            str(features),
            "-q",
        ],
    )
    assert "0 entries computed, 18 utterances already cached" in again.output.replace("\n", " ")
    model = tmp_path / "model"
    trained = runner.invoke(
        app,
        ["ser", "train", "--features", str(features), "--corpus", str(emotion_corpora.train_path), "--labels", "label",
         "--out", str(model), "--epochs", "20", "--min-per-class", "2", "--seed", "1", "-q"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "all rows (no train split)" in trained.output and "validation: speakers" in trained.output
    evaluated = runner.invoke(
        app, ["ser", "evaluate", str(model), "--features", str(features), "--corpus", str(emotion_corpora.test_path),
              "--out", str(tmp_path / "eval")],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert re.search(r"UAR [01]\.\d{4}  ACC [01]\.\d{4}  F1 [01]\.\d{4}  on 18 utterances", evaluated.output)
    assert (tmp_path / "eval" / "confusion.png").is_file()


def test_finetune_on_cpu_for_one_epoch(emotion_corpora, tiny_backbones, tmp_path):
    """Backbone and head trained end to end on the audio: the transformer changes, the CNN stays frozen, and the
    saved model evaluates without a feature cache."""
    from safetensors.numpy import load_file

    from melt.ser.finetune import finetune_model
    from melt.ser.model import evaluate_model
    from melt.ser.training import TrainSettings

    model = finetune_model(
        tiny_backbones["wavlm"],
        emotion_corpora.train.iloc[::2],
        "label",
        tmp_path / "ft",
        settings=TrainSettings(epochs=1, batch_size=8, min_per_class=2),
        crop_seconds=1.5,
        device="cpu",
        progress=False,
    )
    assert model.info["finetuned"] and model.info["n_train"] > 0
    before = load_file(tiny_backbones["wavlm"] / "model.safetensors")
    after = load_file(tmp_path / "ft" / "backbone" / "model.safetensors")
    cnn = [k for k in before if k.startswith("feature_extractor.")]
    transformer = [k for k in before if k.startswith("encoder.layers.")]
    assert cnn and all(np.array_equal(before[k], after[k]) for k in cnn)
    assert any(not np.array_equal(before[k], after[k]) for k in transformer)
    evaluation = evaluate_model(tmp_path / "ft", None, emotion_corpora.test, tmp_path / "eval", device="cpu")
    assert evaluation.metrics["n"] == 18 and 0 <= evaluation.metrics["uar"] <= 1
    assert os.path.isfile(tmp_path / "eval" / "predictions.csv")


def test_a_rerun_with_other_settings_recomputes_and_the_same_settings_reuse(experiment_inputs, tmp_path):
    from melt.ser.experiment import ExperimentConfig, run_experiment

    config = _config(
        experiment_inputs, ["egemaps"], seeds=[0], in_domain=False, test={"three": "test_three.parquet"}
    )
    out = tmp_path / "out"
    first = run_experiment(ExperimentConfig.load(config), out, progress=False)
    run_json = next((out / "runs").rglob("run.json"))
    stamp = run_json.stat().st_mtime_ns
    run_experiment(ExperimentConfig.load(config), out, progress=False)
    assert run_json.stat().st_mtime_ns == stamp
    changed = run_experiment(ExperimentConfig.load(config, epochs=5), out, progress=False)
    assert run_json.stat().st_mtime_ns != stamp
    assert json.loads(run_json.read_text())["key"] != ""
    assert len(changed.results) == len(first.results) == 2

    single = experiment_inputs / "test_single.parquet"
    pd.read_parquet(experiment_inputs / "test_three.parquet").query("label == 'anger'").to_parquet(single)
    one_class = _config(experiment_inputs, ["egemaps"], test={"anger_only": "test_single.parquet"})
    from melt.errors import MeltError

    with pytest.raises(MeltError, match="single class"):
        run_experiment(ExperimentConfig.load(one_class), tmp_path / "o", progress=False)


def _copy_with_audio(table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The table with its audio files copied into `folder` (so a test may change them)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    copied = table.copy()
    copied["audio"] = [str(Path(shutil.copy(p, folder / Path(p).name))) for p in table["audio"]]
    return copied


def _swap_audio(first: str, second: str) -> None:
    a, b = Path(first).read_bytes(), Path(second).read_bytes()
    Path(first).write_bytes(b)
    Path(second).write_bytes(a)


def test_a_changed_test_audio_file_redoes_the_runs_that_used_it(experiment_inputs, emotion_corpora, tmp_path):
    """Features are keyed by audio content and so must finished runs be: after test clips are re-recorded (here:
    anger and sadness clips swap their audio, the table unchanged), a rerun gives what a fresh run gives, not the
    old scores."""
    from melt.ser.experiment import ExperimentConfig, run_experiment

    test = _copy_with_audio(emotion_corpora.test, tmp_path / "audio")
    test.to_parquet(tmp_path / "test.parquet", index=False)
    train = {"corpus": str(experiment_inputs / "train.parquet"), "labels": ["label"]}
    config = _config(
        experiment_inputs, ["egemaps"], train=train, seeds=[0], in_domain=False,
        test={"three": str(tmp_path / "test.parquet")}, training={"epochs": 40, "min_per_class": 2},
    )  # fmt: skip
    before = run_experiment(ExperimentConfig.load(config), tmp_path / "out", progress=False).results
    angry = test.loc[test["label"] == "anger", "audio"].tolist()
    sad = test.loc[test["label"] == "sadness", "audio"].tolist()
    for a, s in zip(angry, sad, strict=True):
        _swap_audio(a, s)
    rerun = run_experiment(ExperimentConfig.load(config), tmp_path / "out", progress=False).results
    fresh = run_experiment(ExperimentConfig.load(config), tmp_path / "fresh", progress=False).results
    pd.testing.assert_frame_equal(rerun, fresh)
    assert fresh["uar"].iloc[0] != before["uar"].iloc[0]
