"""MSP-Podcast in its release layout, with real espeak-ng audio, and both published forms of its detailed labels."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import soundfile

from corpora import MspClip, make_msppodcast
from melt.corpus.emotion_corpora import load_msppodcast
from melt.corpus.folds import speaker_overlap
from melt.corpus.labels import MELT_LABEL_SET
from melt.corpus.schema import read_table

CLIPS = [
    MspClip("A", speaker="127", annotations=(("W1", "Angry"), ("W2", "Angry"), ("W3", "Contempt"))),
    MspClip("C", speaker="127", gender="Female", annotations=(("W1", "Contempt"), ("W4", "Other-Concerned"))),
    MspClip(
        "X", speaker="Unknown", gender="Unknown", split="Test1", annotations=(("W1", "Happy"), ("W2", "Sad"))
    ),
    MspClip("O", speaker="310", gender="Male", split="Development"),
    MspClip("N", speaker="310", gender="Male", split="Development", transcribed=False),
    MspClip("H", speaker="44", split="Test2", valence=6.2, arousal=5.5, dominance=4.8),
    MspClip("S", speaker="44", annotations=(("W9", "Sad"),)),
    MspClip("U", speaker="58", split="Test3"),
    MspClip("F", speaker="58"),
    MspClip("D", speaker="73"),
]


@pytest.fixture(scope="module", params=["rows", "emodetail"])
def msp(request, speech, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"msp_{request.param}") / "MSP-PODCAST-Publish-1.12"
    built = make_msppodcast(root, CLIPS, speech, detailed=request.param)
    return root, built


def test_labels_splits_speakers_and_dimensions(msp):
    root, built = msp
    table = load_msppodcast(root).set_index("id")
    assert len(table) == len(CLIPS)
    names = list(built["name"])
    labels = dict(zip(names, table.loc[[f"msppodcast/{n}" for n in names], "label"], strict=True))
    assert list(labels.values()) == [
        "anger",
        "contempt",
        "no_agreement",
        "other",
        "neutral",
        "joy",
        "sadness",
        "surprise",
        "fear",
        "disgust",
    ]
    # contempt, other and no agreement are their own labels, flagged as outside the seven
    off = {label for label in table["label"] if not MELT_LABEL_SET.is_known(label)}
    assert off == {"contempt", "other", "no_agreement"}
    first, third, sixth = (table.loc[f"msppodcast/{names[i]}"] for i in (0, 2, 5))
    assert first["label_original"] == "A" and third["label_original"] == "X"
    assert (sixth["valence"], sixth["arousal"], sixth["dominance"]) == (6.2, 5.5, 4.8)
    assert table.loc[[f"msppodcast/{n}" for n in names], "split"].tolist() == [
        "train",
        "train",
        "test1",
        "dev",
        "dev",
        "test2",
        "train",
        "test3",
        "train",
        "train",
    ]
    assert pd.isna(third["speaker"]) and pd.isna(third["gender"])  # "Unknown"
    assert first["speaker"] == "127" and first["gender"] == "F"
    assert table.at[f"msppodcast/{names[3]}", "gender"] == "M"
    assert first["text"] == CLIPS[0].text
    assert pd.isna(table.at[f"msppodcast/{names[4]}", "text"])
    wav = built.at[0, "wav"]
    assert first["audio"] == str(wav.resolve())
    assert first["duration"] == pytest.approx(soundfile.info(wav).duration, abs=1e-3)
    # unknown speakers get no fold; the known ones are kept apart
    assert pd.isna(third["fold"]) and table["fold"].notna().sum() == len(CLIPS) - 1
    assert speaker_overlap(table.reset_index(), parts="fold").empty


def test_per_annotator_votes(msp):
    root, built = msp
    table = load_msppodcast(root).set_index("id")
    names = list(built["name"])
    votes = {
        n: json.loads(v) if isinstance(v, str) else None
        for n, v in zip(names, table.loc[[f"msppodcast/{n}" for n in names], "votes"], strict=True)
    }
    assert votes[names[0]] == {"W1": {"anger": 1.0}, "W2": {"anger": 1.0}, "W3": {"contempt": 1.0}}
    assert votes[names[1]] == {"W1": {"contempt": 1.0}, "W4": {"other": 1.0}}  # Other-<free text> is other
    assert votes[names[2]] == {"W1": {"joy": 1.0}, "W2": {"sadness": 1.0}}
    assert votes[names[3]] is None
    assert any("have no annotations in labels_detailed.csv" in n for n in table.attrs["melt"]["notes"])


def test_cli_and_missing_audio(msp, tmp_path, melt_cli):
    root, built = msp
    copy = tmp_path / "msp"
    shutil.copytree(root, copy)
    (copy / "Audios" / f"{built.at[1, 'name']}.wav").unlink()
    out = tmp_path / "msp.parquet"
    done = melt_cli("corpus", "msppodcast", copy, "--out", out)
    assert done.code == 0, done.stderr
    assert "1 × file not found" in done.stdout
    assert "contempt" in done.stdout and "no_agreement" in done.stdout  # reported as outside the label set
    table = read_table(out)
    assert table["audio"].isna().sum() == 1 and table["duration_source"].eq("audio").sum() == len(CLIPS) - 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: shutil.rmtree(r / "Labels"), "expected Labels/labels_consensus.csv"),
        (
            lambda r: (r / "Labels" / "labels_consensus.csv").write_text(
                "FileName,EmoClass\nMSP-PODCAST_0001_0001.wav,A\nMSP-PODCAST_0001_0002.wav,Z\n"
            ),
            "row 2, column 'EmoClass': unknown EmoClass 'Z'",
        ),
        (
            lambda r: (r / "Labels" / "labels_consensus.csv").write_text(
                "FileName,EmoClass,EmoVal\nMSP-PODCAST_0001_0001.wav,A,high\n"
            ),
            "row 1, column 'EmoVal': expected a number, found 'high'",
        ),
        (
            lambda r: (r / "Labels" / "labels_detailed.csv").write_text("FileName,Rating\nx.wav,3\n"),
            "expected FileName with EmoDetail",
        ),
    ],
)
def test_clear_errors(msp, tmp_path, melt_cli, damage, message):
    root, _ = msp
    copy = tmp_path / "damaged"
    shutil.copytree(root, copy)
    damage(copy)
    done = melt_cli("corpus", "msppodcast", copy, "--out", tmp_path / "t.csv")
    assert done.code == 2 and "Traceback" not in done.stderr
    assert message in done.stderr
