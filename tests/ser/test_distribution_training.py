"""Training on emotion distributions: the commands, what beats what, bad inputs, and the distribution experiment
end to end, on an IEMOCAP-layout corpus of graded espeak-ng prosody with rater votes and a simulated panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from melt.errors import MeltError
from melt.ser.backbones import load_backbone
from melt.ser.cache import FeatureCache, extract_features
from melt.ser.distribution_model import (
    DistributionOptions,
    evaluate_distribution_model,
    read_distributions,
    train_distribution_model,
)
from melt.ser.training import TrainSettings

from .corpora import GRADED_LABELS, argmax_distributions

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def egemaps_cache(graded_corpus, tmp_path_factory) -> FeatureCache:
    backbone = load_backbone("egemaps")
    cache = FeatureCache.create(tmp_path_factory.mktemp("graded_egemaps"), backbone)
    assert extract_features(graded_corpus.table, backbone, cache, progress=False).problems.empty
    return cache


@pytest.fixture(scope="module")
def wavlm_cache(graded_corpus, tiny_backbones, tmp_path_factory) -> FeatureCache:
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    cache = FeatureCache.create(tmp_path_factory.mktemp("graded_wavlm"), backbone)
    extract_features(graded_corpus.table, backbone, cache, progress=False)
    cache.use_backbone(backbone)
    return cache


def _folds(table: pd.DataFrame, test_fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    in_test = (table["fold"] == test_fold).to_numpy()
    return table[~in_test].reset_index(drop=True), table[in_test].reset_index(drop=True)


def test_distributions_beat_argmax_labels_on_jsd(
    graded_corpus, graded_distributions, egemaps_cache, tmp_path
):
    """Same features, head, seeds and held-out session: trained on the human distributions, the model's predicted
    distributions come closer (JSD) to the held-out raters' than when trained on the argmax labels of the same
    distributions (one-hot targets, cross-entropy)."""
    onehot = argmax_distributions(graded_distributions, tmp_path / "onehot.parquet")
    train, test = _folds(graded_corpus.table, 3)
    options = DistributionOptions(pooling="mean")
    scores = {"distributions": [], "argmax": []}
    for seed in (0, 1, 2):
        settings = TrainSettings(epochs=60, seed=seed)
        for name, file, loss in (
            ("distributions", graded_distributions, "jsd-entropy"),
            ("argmax", onehot, "soft-ce"),
        ):
            model = train_distribution_model(
                egemaps_cache, train, file, None, options=options.model_copy(update={"loss": loss}),
                settings=settings, progress=False,
            )  # fmt: skip
            evaluation = evaluate_distribution_model(model, egemaps_cache, test, graded_distributions)
            scores[name].append(evaluation.metrics.set_index("tertile").loc["all", "jsd"])
    assert np.mean(scores["distributions"]) < np.mean(scores["argmax"]) - 0.02, scores
    assert all(d < a for d, a in zip(scores["distributions"], scores["argmax"], strict=True)), scores


def test_train_and_evaluate_commands_with_attention_and_dime(
    graded_corpus, graded_distributions, wavlm_cache, tmp_path, melt_cli
):
    train, test = _folds(graded_corpus.table, 3)
    train.to_parquet(tmp_path / "train.parquet")
    test.to_parquet(tmp_path / "test.parquet")
    model = tmp_path / "model"
    result = melt_cli(
        "ser", "train", "--features", wavlm_cache.folder, "--corpus", tmp_path / "train.parquet", "--out", model,
        "--target", "distribution", "--distributions", graded_distributions, "--source", "combined", "--dime",
        "--dime-ratio", "0.9", "--epochs", "4", "--device", "cpu", "--quiet", env=ONE_THREAD,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert re.search(
        r"trained on \d+ rows .* combined distributions over anger, neutral, sadness", result.stdout
    )
    info = json.loads((model / "model.json").read_text())
    assert info["target"] == "distribution" and info["options"]["source"] == "combined"
    assert info["options"]["loss"] == "jsd-entropy" and info["options"]["entropy_weight"] == 0.08
    assert info["head"]["kind"] == "distribution" and info["head"]["pooling"] == "attention"
    assert info["n_augmented"] > 0 and info["frames"]["dtype"] == "float16"
    assert sum(info["frames"]["weights"]) == pytest.approx(1.0, abs=1e-5)
    # the augmented rows: a table with their parents and α, their audio, and their features in the same cache
    dime = pd.read_parquet(model / "dime" / "dime.parquet")
    assert len(dime) == info["n_augmented"] and dime["audio"].map(lambda p: Path(p).is_file()).all()
    validation = set(info["validation"].removeprefix("speakers ").removesuffix(" (given)").split(", "))
    speaker = dict(zip(graded_corpus.table["id"], graded_corpus.table["speaker"], strict=True))
    parents = set(dime["parent_a"]) | set(dime["parent_b"])
    assert parents <= set(train["id"])  # never the held-out session
    assert not {speaker[p] for p in parents} & validation  # never the validation speakers
    cache = FeatureCache.open(wavlm_cache.folder)
    from melt.ser.cache import lookup

    assert lookup(cache, dime).present.all()
    assert list(wavlm_cache.folder.glob(f"frames-{info['frames']['mix']}-*.index.npz"))

    evaluated = melt_cli(
        "ser", "evaluate", model, "--features", wavlm_cache.folder, "--corpus", tmp_path / "test.parquet",
        "--distributions", graded_distributions, "--out", tmp_path / "eval", "--device", "cpu", env=ONE_THREAD,
    )  # fmt: skip
    assert evaluated.code == 0, evaluated.stderr
    for tertile in ("low", "medium", "high", "all"):
        assert re.search(rf"{tertile}: n +\d+  JSD 0\.\d{{4}}  BC 0\.\d{{4}}", evaluated.stdout), (
            evaluated.stdout
        )
    metrics = pd.read_csv(tmp_path / "eval" / "metrics.csv")
    assert metrics["tertile"].tolist() == ["low", "medium", "high", "all"]
    assert metrics.set_index("tertile").loc["all", "n"] == len(test)
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    probabilities = predictions[[f"p_{label}" for label in GRADED_LABELS]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    from melt.ambiguity.metrics import jensen_shannon

    reference = predictions[[f"ref_{label}" for label in GRADED_LABELS]].to_numpy()
    assert metrics.set_index("tertile").loc["all", "jsd"] == pytest.approx(
        jensen_shannon(probabilities, reference).mean(), rel=1e-6
    )
    # a distributional model needs a reference to be scored against
    missing = melt_cli(
        "ser", "evaluate", model, "--features", wavlm_cache.folder, "--corpus", tmp_path / "test.parquet",
        "--out", tmp_path / "eval2", "--device", "cpu", env=ONE_THREAD,
    )  # fmt: skip
    assert missing.code == 2 and "give --distributions" in missing.stderr


def test_bad_distribution_files_are_one_clear_error(
    graded_corpus, graded_distributions, egemaps_cache, tmp_path
):
    frame = pd.read_parquet(graded_distributions)
    train, _ = _folds(graded_corpus.table, 3)
    settings = TrainSettings(epochs=2)
    mean = DistributionOptions(pooling="mean")

    def bad(edited: pd.DataFrame, pattern: str, **kwargs) -> None:
        path = tmp_path / "bad.csv"
        edited.to_csv(path, index=False)
        kwargs.setdefault("options", mean)
        with pytest.raises(MeltError, match=pattern):
            train_distribution_model(
                egemaps_cache, train, path, None, settings=settings, progress=False, **kwargs
            )

    bad(
        frame.assign(human_anger=frame["human_anger"] + 0.5),
        r"bad\.csv, row 1: the human distribution sums to 1\.5",
    )
    nan = frame.copy()
    nan.loc[3, "human_neutral"] = np.nan
    bad(nan, r"row 4, column 'human_neutral'.*missing this label")
    negative = frame.copy()
    negative.loc[2, "human_sadness"] = -0.1
    bad(negative, r"row 3, column 'human_sadness': negative")
    text = frame.assign(human_anger=frame["human_anger"].astype(object).where(frame.index != 5, "lots"))
    bad(text, r"row 6.*not a number")
    bad(
        frame.drop(columns=[c for c in frame.columns if c.startswith("human_")]),
        r"no human distribution.*synthetic",
    )
    bad(frame, r"--classes \['joy'\] not among", classes="anger,joy")
    bad(frame, r"eGeMAPS functionals have none", options=DistributionOptions(pooling="attention"))
    with pytest.raises(MeltError, match="distributions file not found"):
        read_distributions(tmp_path / "nowhere.parquet")
    from melt.ser.model import train_model

    hard = train_model(
        egemaps_cache, train, "label", None, settings=TrainSettings(epochs=1, min_per_class=2), progress=False
    )
    with pytest.raises(MeltError, match="trained on labels"):
        evaluate_distribution_model(hard, egemaps_cache, train, graded_distributions)


def test_missing_ids_undefined_rows_and_classes_without_mass(
    graded_corpus, graded_distributions, egemaps_cache, tmp_path
):
    """Ids missing from the file and rows NaN for the source are skipped and listed; a class no training row gives
    any probability is kept (the head learns it is absent) and named."""
    frame = pd.read_parquet(graded_distributions)
    train, _ = _folds(graded_corpus.table, 3)
    dropped = set(train["id"].iloc[:3])
    frame = frame[~frame["id"].isin(dropped)].copy()
    synthetic = [f"synthetic_{label}" for label in GRADED_LABELS]
    frame.loc[frame["id"] == train["id"].iloc[5], synthetic] = np.nan
    # sadness only in rows outside the training folds
    in_train = frame["id"].isin(train["id"]) & frame["synthetic_sadness"].notna()
    frame.loc[in_train, "synthetic_neutral"] += frame.loc[in_train, "synthetic_sadness"]
    frame.loc[in_train, "synthetic_sadness"] = 0.0
    path = tmp_path / "distributions.parquet"
    frame.to_parquet(path)
    model = train_distribution_model(
        egemaps_cache, train, path, tmp_path / "model", options=DistributionOptions(source="synthetic", pooling="mean"),
        settings=TrainSettings(epochs=3), progress=False,
    )  # fmt: skip
    skipped = pd.read_csv(tmp_path / "model" / "skipped.csv")
    reasons = dict(zip(skipped["id"], skipped["reason"], strict=True))
    assert set(reasons) == dropped | {train["id"].iloc[5]}
    assert all("not in the distributions file" in reasons[i] for i in dropped)
    assert "no synthetic distribution" in reasons[train["id"].iloc[5]]
    assert model.info["skipped"] == 4 and model.info["classes_without_mass"] == ["sadness"]
    assert model.info["n_train"] + model.info["n_validation"] == len(train) - 4


def test_distribution_experiment_end_to_end(
    graded_corpus, graded_distributions, tiny_backbones, tmp_path, melt_cli
):
    config = {
        "distributions": {"graded": {"table": str(graded_corpus.table_path), "distributions": str(graded_distributions)}},
        "backbones": [str(tiny_backbones["wavlm"])],
        "seeds": [0, 1],
        "dime_ratio": 0.9,
        "training": {"epochs": 3},
    }  # fmt: skip
    path = tmp_path / "distributions.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = melt_cli(
        "ser", "experiment", path, "--out", out, "--quiet", "--device", "cpu", env=ONE_THREAD, timeout=600
    )
    assert result.code == 0, result.stderr

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 3 * 2 * 2 * 4  # targets × DiME-Aug × seeds × (three tertiles and all)
    assert set(results["target"]) == {"human", "synthetic", "combined"} and set(results["dime"]) == {
        "with",
        "without",
    }
    totals = results.pivot_table(index=["target", "dime", "seed"], columns="tertile", values="n")
    assert (totals[["low", "medium", "high"]].sum(axis=1) == totals["all"]).all()
    assert (totals["all"] == len(graded_corpus.table)).all()  # every session held out once
    assert results[["jsd", "bc"]].apply(lambda c: c.between(0, 1)).all().all()
    folds = pd.read_csv(out / "folds.csv")
    assert set(folds["fold"]) == {1, 2, 3}

    table = (out / "table.md").read_text()
    assert "graded JS ↓" in table and "graded BC ↑" in table and "graded high JS ↓" in table
    assert table.count("**") >= 2 * 8 and "random 80/20" in table
    report = (out / "report.html").read_text()
    assert "0.302" in report and "0.757" in report  # the paper's figures, quoted
    assert "random 80/20" in report and report.count("data:image/png;base64") >= 2
    assert (out / "jsd.png").stat().st_size > 1000 and (out / "bc.png").stat().st_size > 1000

    # one frame store per held-out fold, shared by every target, seed and DiME setting of that fold
    features = next((out / "features").iterdir())
    assert len(list(features.glob("frames-*.json"))) == 3
    augmented = list((out / "runs").rglob("with/seed0/dime/dime.parquet"))
    assert len(augmented) == 3 * 3
    for table_path in augmented:
        rows = pd.read_parquet(table_path)
        run_fold = int(table_path.parts[-6].removeprefix("fold"))
        held_out = set(graded_corpus.table.loc[graded_corpus.table["fold"] == run_fold, "id"])
        assert not (set(rows["parent_a"]) | set(rows["parent_b"])) & held_out
    counts = pd.read_csv(out / "dime_counts.csv")
    assert (counts["added"] == np.maximum(0, counts["goal"] - counts["rows"])).all()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["corpora"]["graded"]["classes"] == list(GRADED_LABELS)
    assert "random 80/20" in provenance["split"]

    # a rerun reuses every finished run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("run.json")}
    assert len(stamps) == 3 * 3 * 2 * 2
    again = melt_cli(
        "ser", "experiment", path, "--out", out, "--quiet", "--device", "cpu", env=ONE_THREAD, timeout=600
    )
    assert again.code == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), results)


def test_distribution_experiment_bad_configs(graded_corpus, graded_distributions, tmp_path):
    from melt.ser.distribution_experiment import run_distribution_experiment
    from melt.ser.experiment import load_experiment

    def config(**changes) -> Path:
        data = {
            "distributions": {"graded": {"table": str(graded_corpus.table_path), "distributions": str(graded_distributions)}},
            "backbones": ["egemaps"],
            "pooling": "mean",
            **changes,
        }  # fmt: skip
        path = tmp_path / f"config{len(list(tmp_path.glob('*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    with pytest.raises(MeltError, match="egemaps has no frames"):
        load_experiment(config(pooling="attention"))
    with pytest.raises(MeltError, match=r"targets \['llm'\]"):
        load_experiment(config(targets=["human", "llm"]))
    no_folds = tmp_path / "no_folds.parquet"
    graded_corpus.table.drop(columns=["fold"]).to_parquet(no_folds)
    bad = config(
        distributions={"graded": {"table": str(no_folds), "distributions": str(graded_distributions)}}
    )
    with pytest.raises(MeltError, match="speaker-independent folds"):
        run_distribution_experiment(load_experiment(bad), tmp_path / "o", progress=False)
    with pytest.raises(MeltError, match="have no column for"):
        run_distribution_experiment(
            load_experiment(config(classes=["anger", "joy"])), tmp_path / "o", progress=False
        )


def test_distribution_experiment_redoes_what_changed_audio_or_distributions_affect(
    graded_corpus, graded_distributions, tiny_backbones, tmp_path
):
    """A finished run, and a fold's frame mix, are reused only while the audio content and the distributions they
    were made from are unchanged: after clips are re-recorded in place, or the distributions file changes, a rerun
    gives exactly what a fresh run gives."""
    import shutil

    from melt.ser.distribution_experiment import run_distribution_experiment
    from melt.ser.experiment import load_experiment

    table = graded_corpus.table.copy()
    (tmp_path / "audio").mkdir()
    table["audio"] = [str(Path(shutil.copy(p, tmp_path / "audio" / Path(p).name))) for p in table["audio"]]
    table.to_parquet(tmp_path / "table.parquet", index=False)
    shutil.copy(graded_distributions, tmp_path / "distributions.parquet")
    config = {
        "distributions": {"graded": {"table": "table.parquet", "distributions": "distributions.parquet"}},
        "backbones": [str(tiny_backbones["wavlm"])], "targets": ["human"], "dime": [False], "seeds": [0],
        "folds": [3], "training": {"epochs": 3}, "device": "cpu",
    }  # fmt: skip
    path = tmp_path / "distributions.yaml"
    path.write_text(yaml.safe_dump(config))

    def run(out: str) -> pd.DataFrame:
        return run_distribution_experiment(load_experiment(path), tmp_path / out, progress=False).results

    before = run("out")
    # re-recorded in place: the held-out session's angriest and saddest clips swap their audio
    held_out = table[table["fold"] == 3]
    grades = held_out["id"].map(graded_corpus.grades)
    first, second = held_out["audio"].loc[grades.idxmax()], held_out["audio"].loc[grades.idxmin()]
    a, b = Path(first).read_bytes(), Path(second).read_bytes()
    Path(first).write_bytes(b)
    Path(second).write_bytes(a)
    rerun, fresh = run("out"), run("fresh_audio")
    pd.testing.assert_frame_equal(rerun, fresh, check_exact=True)
    assert not np.array_equal(before["jsd"].to_numpy(), fresh["jsd"].to_numpy())
    # other human distributions for the training folds: the frame mix is fitted again
    argmax_distributions(graded_distributions, tmp_path / "distributions.parquet")
    rerun, fresh = run("out"), run("fresh_distributions")
    pd.testing.assert_frame_equal(rerun, fresh, check_exact=True)
