"""Speaker-independent folds, the speaker-overlap check, and `melt corpus describe`."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from corpora import IemocapUtterance, make_iemocap
from melt.corpus.emotion_corpora import load_iemocap
from melt.corpus.folds import assign_folds, speaker_overlap
from melt.corpus.schema import read_table, write_table
from melt.errors import MeltError

SIZES = {"s1": 50, "s2": 40, "s3": 30, "s4": 30, "s5": 20, "s6": 10, "s7": 10, "s8": 5, "s9": 5}


def speakers_table(sizes: dict[str, int] = SIZES) -> pd.DataFrame:
    speakers = [s for s, n in sizes.items() for _ in range(n)]
    return pd.DataFrame({"id": [f"u{i}" for i in range(len(speakers))], "text": "x", "speaker": speakers})


def test_folds_keep_speakers_whole_and_balance_utterances():
    table = speakers_table()
    folds = assign_folds(table, by="speaker", k=3, seed=0)
    assert folds.notna().all() and set(folds) == {1, 2, 3}
    assert table.assign(fold=folds).groupby("speaker")["fold"].nunique().max() == 1
    sizes = folds.value_counts()
    # largest-first dealing keeps the folds within one (small) speaker of each other: 65/65/70 here
    assert sizes.max() - sizes.min() <= 10
    assert speaker_overlap(table.assign(fold=folds), parts="fold").empty


def test_folds_are_reproducible_and_seeded():
    table = speakers_table({f"s{i}": 10 for i in range(10)})  # all ties: the seed decides
    first = assign_folds(table, k=5, seed=1)
    assert first.equals(assign_folds(table, k=5, seed=1))
    assert any(not first.equals(assign_folds(table, k=5, seed=s)) for s in range(2, 6))
    assert (first.value_counts() == 20).all()


def test_missing_speakers_get_no_fold_and_impossible_k_is_an_error():
    table = speakers_table({"a": 3, "b": 2})
    table.loc[0, "speaker"] = None
    folds = assign_folds(table, k=2)
    assert pd.isna(folds[0]) and folds[1:].notna().all()
    with pytest.raises(MeltError, match=r"2 distinct speaker value.*cannot fill 3 folds"):
        assign_folds(table, k=3)
    with pytest.raises(MeltError, match="no 'session' column"):
        assign_folds(table, by="session", k=2)


def test_sessions_give_leave_one_session_out():
    table = pd.DataFrame(
        {"id": [f"u{i}" for i in range(12)], "text": "x", "session": [1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5, 5]}
    )
    table["speaker"] = [f"Ses0{s}{'F' if i % 2 else 'M'}" for i, s in enumerate(table["session"])]
    folds = assign_folds(table, by="session", k=5)
    assert folds.tolist() == table["session"].tolist()


def test_overlap_finds_speakers_in_two_parts():
    table = speakers_table({"a": 2, "b": 2, "c": 2}).assign(
        split=["train", "test", "train", "train", "dev", "test"]
    )
    overlap = speaker_overlap(table, parts="split")
    assert overlap.to_dict("records") == [
        {"part_a": "dev", "part_b": "test", "shared": 1, "speakers": "c", "utterances": 2},
        {"part_a": "test", "part_b": "train", "shared": 1, "speakers": "a", "utterances": 2},
    ]


def test_cli_folds_and_overlap(tmp_path, melt_cli):
    path = tmp_path / "t.csv"
    write_table(speakers_table(), path)
    out = tmp_path / "folds.parquet"
    done = melt_cli("corpus", "folds", path, "--by", "speaker", "--k", "4", "--seed", "3", "--out", out)
    assert done.code == 0, done.stderr
    table = read_table(out)
    assert table["fold"].dtype == "Int64" and set(table["fold"]) == {1, 2, 3, 4}
    assert table.groupby("speaker")["fold"].nunique().max() == 1
    done = melt_cli("corpus", "overlap", out)
    assert done.code == 0 and "no speaker is in two folds (4 folds, 9 speakers)" in done.stdout
    leaky = table.copy()
    leaky.loc[0, "fold"] = 1 if leaky.loc[0, "fold"] != 1 else 2  # one utterance of s1 moved to another fold
    write_table(leaky, tmp_path / "leaky.csv")
    done = melt_cli("corpus", "overlap", tmp_path / "leaky.csv")
    assert done.code == 1 and "s1" in done.stdout and "share speakers" in done.stdout
    done = melt_cli("corpus", "folds", path, "--k", "12", "--out", tmp_path / "x.csv")
    assert done.code == 2 and "cannot fill 12 folds" in done.stderr
    done = melt_cli("corpus", "folds", path, "--by", "dialogue", "--out", tmp_path / "x.csv")
    assert done.code == 2 and "--by takes speaker or session" in done.stderr
    done = melt_cli("corpus", "overlap", path, "--between", "split")
    assert done.code == 2 and "no two parts to compare" in done.stderr


def test_describe_writes_json_and_figures(speech, tmp_path, melt_cli):
    utterances = [
        IemocapUtterance("ang", {"E1": "Anger;", "E2": "Anger; Frustration;"}, text="Go away."),
        IemocapUtterance(
            "neu", {"E1": "Neutral;", "E2": "Neutral;", "E3": "Sadness;"}, speaker="M", text="Okay."
        ),
        IemocapUtterance("sad", {"E1": "Sadness;"}, dialog="Ses02F_impro03", text="Okay."),
        IemocapUtterance("hap", dialog="Ses02F_impro03", speaker="M", text="Go away.", audio=False),
    ]
    make_iemocap(tmp_path / "iemocap", utterances, speech)
    table_path = tmp_path / "iemocap.csv"
    table = load_iemocap(tmp_path / "iemocap")
    write_table(table, table_path)
    done = melt_cli("corpus", "describe", table_path, "--out", tmp_path / "describe")
    assert done.code == 0, done.stderr
    assert "4 utterances, 4 speakers" in done.stdout and "labels per fold" in done.stdout
    description = json.loads((tmp_path / "describe" / "describe.json").read_text())
    assert description["utterances"] == 4 and description["speakers"] == 4
    assert description["labels_per_fold"] == {"1": {"anger": 1, "neutral": 1}, "2": {"joy": 1, "sadness": 1}}
    assert description["votes"]["raters_per_utterance"] == {"1": 1, "2": 1, "3": 1}
    assert description["votes"]["multi_label_raters"] == 1
    assert description["duration"]["known"] == 3 and description["duration"]["missing"] == 1
    assert sum(description["duration"]["histogram"]["counts"]) == 3
    assert description["hours"] == pytest.approx(table["duration"].sum() / 3600, abs=1e-4)
    assert description["audio"]["problems"] == {"file not found": 1}
    assert description["made_by"]["melt"] and description["made_by"]["table"] == str(table_path.resolve())
    for name in ("durations.png", "labels.png", "votes.png"):
        assert (tmp_path / "describe" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_describe_keeps_the_folds_of_several_corpora_apart():
    """Each corpus numbers its own folds: in a table of two corpora, fold 1 of one is not fold 1 of the other."""
    from melt.corpus.describe import describe_table
    from melt.corpus.schema import conform

    one = speakers_table({"a": 2, "b": 1}).assign(
        corpus="tess", label=["anger", "anger", "joy"], fold=[1, 1, 2]
    )
    two = speakers_table({"c": 1, "d": 2}).assign(
        id=lambda t: "r/" + t["id"], corpus="ravdess", label=["joy", "fear", "fear"], fold=[1, 2, 2]
    )
    description = describe_table(conform(pd.concat([one, two], ignore_index=True)))
    assert description["labels_per_fold"] == {
        "ravdess 1": {"joy": 1},
        "ravdess 2": {"fear": 2},
        "tess 1": {"anger": 2},
        "tess 2": {"joy": 1},
    }
    assert description["speakers_per_fold"] == {"ravdess 1": 1, "ravdess 2": 1, "tess 1": 1, "tess 2": 1}
    # one corpus: plain fold numbers, as before
    assert set(describe_table(conform(one))["labels_per_fold"]) == {"1", "2"}
