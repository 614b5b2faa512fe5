import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melt.acoustics.check import bin_values, check_descriptions, run_check
from melt.acoustics.features import VOICED_SEGMENTS_PER_SEC
from melt.errors import MeltError

ATTRIBUTES = ("pitch", "loudness", "rhythm_speed")
#: Free-text descriptions in the style of the paper's GPT-4o answers, by attribute and level.
PHRASES = {
    "pitch": {
        "low": ["deep and low", "a low-pitched rumble", "deeper than usual"],
        "mid": ["normal pitch", "moderate, neither high nor low", "medium"],
        "high": ["high-pitched", "shrill and squeaky", "slightly higher than normal"],
    },
    "loudness": {
        "low": ["soft, almost a whisper", "quiet", "hushed and subdued"],
        "mid": ["moderate volume", "conversational, not too loud", "normal"],
        "high": ["loud", "shouting", "booming, at the top of his lungs"],
    },
    "rhythm_speed": {
        "low": ["slow and deliberate", "drawn-out", "unhurried"],
        "mid": ["steady, moderate pace", "normal speed", "neither fast nor slow"],
        "high": ["fast", "rapid-fire", "hurried and quick"],
    },
}


def matching_annotations(controls: pd.DataFrame, *, structured: bool = False) -> pd.DataFrame:
    rows = []
    for position, control in enumerate(controls.itertuples(index=False)):
        row = {"id": control.id, "emotion": "neutral", "status": "ok"}
        for attribute in ATTRIBUTES:
            level = getattr(control, attribute)
            if structured:
                row[attribute] = {"mid": "medium"}.get(level, level)
            else:
                options = PHRASES[attribute][level]
                row[attribute] = options[position % len(options)]
        rows.append(row)
    return pd.DataFrame(rows)


def uar(result, attribute, split):
    return result.summary["attributes"][attribute]["splits"][split]["uar"]


@pytest.mark.parametrize("structured", [False, True])
def test_descriptions_matching_the_controls_score_high(espeak_corpus, espeak_features, structured):
    annotations = matching_annotations(espeak_corpus.controls, structured=structured)
    result = check_descriptions(annotations, espeak_features[0])
    for attribute in ATTRIBUTES:
        for split in ("train", "test"):
            figures = result.summary["attributes"][attribute]["splits"][split]
            assert figures["n"] == 30 and figures["unknown"] == 0
            assert figures["uar"] >= 0.9, (attribute, split, figures)
            assert figures["acc"] >= 0.9 and figures["f1"] >= 0.9


def test_shuffled_descriptions_score_near_chance(espeak_corpus, espeak_features):
    annotations = matching_annotations(espeak_corpus.controls)
    rng = np.random.default_rng(0)
    scores = {attribute: [] for attribute in ATTRIBUTES}
    for _ in range(20):
        shuffled = annotations.copy()
        for attribute in ATTRIBUTES:
            shuffled[attribute] = rng.permutation(shuffled[attribute].to_numpy())
        result = check_descriptions(shuffled, espeak_features[0])
        for attribute in ATTRIBUTES:
            scores[attribute] += [uar(result, attribute, "train"), uar(result, attribute, "test")]
    for attribute, values in scores.items():
        assert abs(np.mean(values) - 1 / 3) < 0.07, (attribute, np.mean(values))
        assert max(values) < 0.75, attribute


def test_per_speaker_bins_remove_the_speakers_range(espeak_corpus, espeak_features):
    # Both voices in one split: the female voice sits about an octave higher, so split-wide pitch bins mostly
    # measure who speaks; per-speaker bins measure the controls again.
    features = espeak_features[0].assign(split="all")
    annotations = matching_annotations(espeak_corpus.controls)
    by_split = check_descriptions(annotations, features, per="split")
    by_speaker = check_descriptions(annotations, features, per="speaker")
    assert uar(by_split, "pitch", "all") < 0.7
    assert uar(by_speaker, "pitch", "all") >= 0.9
    assert set(by_speaker.summary["attributes"]["pitch"]["thresholds"]) == {"all / ross", "all / rachel"}


def test_counts_not_ok_unknown_and_unbinned_rows(espeak_corpus, espeak_features):
    annotations = matching_annotations(espeak_corpus.controls)
    train = annotations["id"].str.startswith("train/")
    annotations.loc[train.idxmax(), "status"] = "invalid"
    annotations.loc[annotations.index[train][1:3], "pitch"] = ["varies a lot", "medium-high"]
    stranger = {
        "id": "train/not_in_features",
        "status": "ok",
        "pitch": "high",
        "loudness": "loud",
        "rhythm_speed": "fast",
    }
    annotations = pd.concat([annotations, pd.DataFrame([stranger])], ignore_index=True)
    result = check_descriptions(annotations, espeak_features[0])
    pitch = result.summary["attributes"]["pitch"]
    figures = pitch["splits"]["train"]
    assert (figures["rows"], figures["not_ok"], figures["unknown"], figures["unbinned"], figures["n"]) == (
        31,
        1,
        2,
        1,
        27,
    )
    assert sum(sum(row.values()) for row in figures["confusion"].values()) == 27
    assert {e["description"] for e in pitch["unknown_examples"]} == {"varies a lot", "medium-high"}
    assert result.summary["attributes"]["loudness"]["splits"]["train"]["unknown"] == 0
    rows = result.rows.set_index(["attribute", "id"])
    assert rows.at[("pitch", "train/not_in_features"), "outcome"] == "unbinned"
    assert rows.at[("pitch", "train/not_in_features"), "split"] == "train"  # from the id prefix


def test_rate_feature_can_be_changed(espeak_corpus, espeak_features):
    annotations = matching_annotations(espeak_corpus.controls)
    result = check_descriptions(
        annotations, espeak_features[0], feature_columns={"rhythm_speed": VOICED_SEGMENTS_PER_SEC}
    )
    entry = result.summary["attributes"]["rhythm_speed"]
    assert entry["feature"] == VOICED_SEGMENTS_PER_SEC
    # VoicedSegmentsPerSec tracks speed only loosely across sentences: above chance, below the syllable rate.
    assert (
        0.4
        < entry["splits"]["train"]["uar"]
        < uar(check_descriptions(annotations, espeak_features[0]), "rhythm_speed", "train")
    )


def test_bin_values_30_40_30_and_small_groups():
    values = pd.Series([*range(1, 11), 1.0, 2.0, 3.0])
    groups = pd.Series(["a"] * 10 + ["b"] * 3)
    bins, thresholds = bin_values(values, groups, min_group=10)
    assert bins[:10].tolist() == ["low"] * 3 + ["mid"] * 4 + ["high"] * 3
    assert bins[10:].isna().all()
    assert set(thresholds) == {"a"}
    assert thresholds["a"] == pytest.approx([3.7, 7.3])


def test_run_check_writes_summary_pngs_and_report(espeak_corpus, espeak_features, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # a run folder made elsewhere: nothing but annotations.csv with id and the description columns
    matching_annotations(espeak_corpus.controls).drop(columns=["status", "emotion"]).to_csv(
        run / "annotations.csv", index=False
    )
    out = tmp_path / "check"
    run_check(run, espeak_features[1], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per"] == "split"
    figures = summary["attributes"]["loudness"]["splits"]["test"]
    assert set(figures) >= {"n", "unknown", "uar", "acc", "f1", "confusion"}
    assert figures["confusion"]["low"]["low"] >= 8
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"confusion_{a}_{s}.png" for a in ATTRIBUTES for s in ("train", "test"))
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = (out / "report.html").read_text()
    assert "<h2>Acoustic check</h2>" in html and html.count("data:image/png;base64,") == 6
    assert "uar" in (out / "report.md").read_text()
    rows = pd.read_csv(out / "rows.csv")
    assert len(rows) == 3 * len(espeak_corpus.controls) and set(rows["outcome"]) == {"scored"}


def test_missing_or_bad_inputs_are_clear_errors(espeak_features, tmp_path):
    features = espeak_features[0]
    with pytest.raises(MeltError, match=r"no annotations\.parquet or annotations\.csv"):
        run_check(tmp_path, espeak_features[1], tmp_path / "out")
    with pytest.raises(MeltError, match="no description column"):
        check_descriptions(pd.DataFrame({"id": ["a"], "emotion": ["joy"]}), features)
    duplicated = pd.DataFrame({"id": ["train/dia0_utt0", "train/dia0_utt0"], "pitch": ["low", "high"]})
    with pytest.raises(MeltError, match=r"row 2, column 'id': duplicate id"):
        check_descriptions(duplicated, features, annotations_source="ann.csv")
    with pytest.raises(MeltError, match=r"syllables_per_sec.*text"):
        check_descriptions(
            pd.DataFrame({"id": ["x"], "rhythm_speed": ["fast"]}),
            features.drop(columns=["syllables_per_sec"]),
        )
    with pytest.raises(MeltError, match="speaker"):
        check_descriptions(
            pd.DataFrame({"id": ["x"], "pitch": ["low"]}), features.drop(columns=["speaker"]), per="speaker"
        )


def melt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "melt", *args], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )


def test_cli_extract_and_check(espeak_corpus, espeak_features, tmp_path):
    # A copy of the session's features file is the cache, so the extraction reuses every row.
    features = tmp_path / "features.parquet"
    shutil.copy(espeak_features[1], features)
    done = melt(
        "acoustics",
        "extract",
        str(espeak_corpus.table_path),
        "--out",
        str(features),
        "--workers",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "60 of 60 utterances have features (0 files processed, 60 reused" in done.stdout

    run = tmp_path / "run"
    run.mkdir()
    matching_annotations(espeak_corpus.controls, structured=True).to_parquet(run / "annotations.parquet")
    done = melt(
        "acoustics",
        "check",
        str(run),
        "--features",
        str(features),
        "--out",
        str(tmp_path / "out"),
        "--per",
        "speaker",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "rhythm_speed" in done.stdout and (tmp_path / "out" / "report.html").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["per"] == "speaker"


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    done = melt("acoustics", "check", str(tmp_path), "--features", "nope.parquet", "--out", "o", cwd=tmp_path)
    assert done.returncode == 2
    assert "no annotations.parquet or annotations.csv" in done.stderr
    assert "Traceback" not in done.stderr
