"""IEMOCAP in its release layout, with real espeak-ng audio: labels, votes, speakers, V/A/D, durations, folds."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import soundfile

from corpora import IemocapUtterance, Prosody, make_iemocap
from melt.corpus.emotion_corpora import load_iemocap
from melt.corpus.folds import speaker_overlap
from melt.corpus.schema import COLUMNS, read_table, votes_of
from melt.errors import MeltError

LOW = Prosody(pitch=35, amplitude=60, speed=140)
HIGH = Prosody(pitch=80, amplitude=160, speed=260)

UTTERANCES = [
    IemocapUtterance("neu", {"E1": "Neutral;", "E2": "Neutral;", "F1": "Neutral state;"}, text="Excuse me."),
    IemocapUtterance(
        "ang",
        {"E1": "Anger; Frustration;", "E2": "Anger;", "E3": "Frustration;"},
        speaker="M",
        text="Go away.",
        prosody=HIGH,
        vad=(1.5, 4.0, 4.5),
    ),
    IemocapUtterance("exc", {"E1": "Excited;", "E2": "Happiness; Excited;"}, text="Yes!", prosody=HIGH),
    IemocapUtterance("fru", {"E1": "Frustration;"}, speaker="M", text="Go away."),
    IemocapUtterance("hap", {"E1": "Happiness;"}, text="Yes!", transcribed=False),
    IemocapUtterance(
        "xxx",
        {"E1": "Sadness;", "E2": "Other:gloomy;", "E3": "Anger; Fear; Surprise;"},
        speaker="M",
        text="Fine.",
    ),
    IemocapUtterance(
        "sad", {"E4": "Sadness;"}, dialog="Ses02M_script01_1", text="Fine.", prosody=LOW, vad=(1.5, 2.0, 3.5)
    ),
    IemocapUtterance(
        "sad", {"E4": "Sadness;"}, dialog="Ses02M_script01_1", speaker="M", text="Fine.", audio=False
    ),
    IemocapUtterance("sur", dialog="Ses02M_script01_1", text="Yes!"),
    IemocapUtterance("oth", dialog="Ses02M_script01_1", text="Yes!"),
]


@pytest.fixture(scope="module")
def iemocap(speech, tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    built = make_iemocap(root, UTTERANCES, speech)
    return root, built


def test_four_classes_labels_speakers_and_text(iemocap):
    root, _ = iemocap
    table = load_iemocap(root)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    by_id = table.set_index("id")
    # fru, xxx, sur and oth are outside the 4-class convention; exc and hap both become joy
    assert set(by_id.index) == {
        "iemocap/Ses01F_impro01_F000",
        "iemocap/Ses01F_impro01_M000",
        "iemocap/Ses01F_impro01_F001",
        "iemocap/Ses01F_impro01_F002",
        "iemocap/Ses02M_script01_1_F000",
        "iemocap/Ses02M_script01_1_M000",
    }
    assert by_id["label"].to_dict() == {
        "iemocap/Ses01F_impro01_F000": "neutral",
        "iemocap/Ses01F_impro01_M000": "anger",
        "iemocap/Ses01F_impro01_F001": "joy",
        "iemocap/Ses01F_impro01_F002": "joy",
        "iemocap/Ses02M_script01_1_F000": "sadness",
        "iemocap/Ses02M_script01_1_M000": "sadness",
    }
    assert by_id.at["iemocap/Ses01F_impro01_F001", "label_original"] == "exc"
    assert by_id.at["iemocap/Ses01F_impro01_F002", "label_original"] == "hap"
    # speaker = session + the gender of the speaking actor (last letter group), not of the dialogue's owner
    assert by_id.at["iemocap/Ses01F_impro01_M000", "speaker"] == "Ses01M"
    assert by_id.at["iemocap/Ses02M_script01_1_F000", "speaker"] == "Ses02F"
    assert by_id.at["iemocap/Ses02M_script01_1_F000", "gender"] == "F"
    assert by_id.at["iemocap/Ses01F_impro01_M000", "text"] == "Go away."
    assert pd.isna(by_id.at["iemocap/Ses01F_impro01_F002", "text"])  # no transcript line
    assert any("transcriptions" in note for note in table.attrs["melt"]["notes"])
    assert set(table["corpus"]) == {"iemocap"}
    assert by_id.at["iemocap/Ses02M_script01_1_F000", "dialogue"] == "Ses02M_script01_1"


def test_votes_weigh_each_rater_one(iemocap):
    root, _ = iemocap
    table = load_iemocap(root).set_index("id")
    votes = dict(zip(table.index, votes_of(table.reset_index()), strict=True))
    assert votes["iemocap/Ses01F_impro01_M000"] == {
        "E1": {"anger": 0.5, "frustration": 0.5},
        "E2": {"anger": 1.0},
        "E3": {"frustration": 1.0},
    }
    # two labels that both map to joy add up to the rater's single weight
    assert votes["iemocap/Ses01F_impro01_F001"] == {"E1": {"joy": 1.0}, "E2": {"joy": 1.0}}
    # the actor's self-evaluation (C-F1) is not an evaluator's vote: it is kept apart in self_votes
    assert votes["iemocap/Ses01F_impro01_F000"] == {"E1": {"neutral": 1.0}, "E2": {"neutral": 1.0}}
    assert json.loads(table.at["iemocap/Ses01F_impro01_F000", "self_votes"]) == {"F1": {"neutral": 1.0}}
    assert pd.isna(table.at["iemocap/Ses01F_impro01_M000", "self_votes"])
    # the dimensional A- lines are not votes, and the stored text is the documented JSON
    assert json.loads(table.at["iemocap/Ses02M_script01_1_F000", "votes"]) == {"E4": {"sadness": 1.0}}


#: The first two turns of the release's Session1/dialog/EmoEvaluation/Ses01F_impro01.txt as it is laid out: the
#: actor's self-evaluation (C-F1, A-F1) follows the evaluators' lines, and the [V, A, D] triple is the mean of the
#: evaluators' A- lines alone (F000: E3 3/2/2 and E4 2/3/3 give 2.5/2.5/2.5; with F1's 3/2/1 it would not).
RELEASE_BLOCK = (
    "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\r\n\r\n"
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\r\n"
    "C-E2:\tNeutral;\t()\r\nC-E3:\tNeutral;\t()\r\nC-E4:\tNeutral;\t()\r\nC-F1:\tNeutral;\t(curious)\r\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\r\n"
    "A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)\r\n"
    "A-F1:\tval 3; act 2; dom  1;\t()\r\n\r\n"
    "[10.0100 - 11.3925]\tSes01F_impro01_M000\tfru\t[2.0000, 3.5000, 3.0000]\r\n"
    "C-E2:\tFrustration; Anger;\t(; irritated (a bit))\r\nC-E3:\tOther:annoyed;\t()\r\n"
    "C-E4:\tNeutral state;\t()\r\nC-M1:\tAnger;\t()\r\n"
    "A-E2:\tval 2; act 4; dom  3;\t()\r\nA-E4:\tval 2; act 3; dom  3;\t()\r\nA-M1:\tval 1; act 5; dom  5;\t()\r\n"
)


def test_self_evaluations_of_the_release_are_not_votes(iemocap, tmp_path):
    root, _ = iemocap
    copy = tmp_path / "release"
    shutil.copytree(root, copy)
    (copy / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt").write_bytes(RELEASE_BLOCK.encode())
    table = load_iemocap(copy, classes="all").set_index("id")
    female, male = table.loc["iemocap/Ses01F_impro01_F000"], table.loc["iemocap/Ses01F_impro01_M000"]
    assert json.loads(female["votes"]) == {
        "E2": {"neutral": 1.0},
        "E3": {"neutral": 1.0},
        "E4": {"neutral": 1.0},
    }
    assert json.loads(female["self_votes"]) == {"F1": {"neutral": 1.0}}
    assert json.loads(male["votes"]) == {
        "E2": {"frustration": 0.5, "anger": 0.5},
        "E3": {"other": 1.0},
        "E4": {"neutral": 1.0},
    }
    assert json.loads(male["self_votes"]) == {"M1": {"anger": 1.0}}
    assert (female["valence"], female["arousal"], female["dominance"]) == (2.5, 2.5, 2.5)
    assert male["speaker"] == "Ses01M" and male["label"] == "frustration"


def test_all_classes_keep_off_set_labels_and_multi_label_weights(iemocap):
    root, _ = iemocap
    table = load_iemocap(root, classes="all").set_index("id")
    assert len(table) == len(UTTERANCES)
    assert table.at["iemocap/Ses01F_impro01_M001", "label"] == "frustration"
    assert table.at["iemocap/Ses01F_impro01_M002", "label"] == "no_agreement"
    assert table.at["iemocap/Ses02M_script01_1_F001", "label"] == "surprise"
    assert table.at["iemocap/Ses02M_script01_1_F002", "label"] == "other"
    votes = json.loads(table.at["iemocap/Ses01F_impro01_M002", "votes"])
    assert votes["E2"] == {"other": 1.0}
    assert votes["E3"] == pytest.approx({"anger": 1 / 3, "fear": 1 / 3, "surprise": 1 / 3})
    assert all(sum(weights.values()) == pytest.approx(1.0) for v in votes_of(table) for weights in v.values())


def test_vad_durations_audio_and_folds(iemocap):
    root, built = iemocap
    table = load_iemocap(root).set_index("id")
    row = table.loc["iemocap/Ses01F_impro01_M000"]
    assert (row["valence"], row["arousal"], row["dominance"]) == (1.5, 4.0, 4.5)
    wavs = built.set_index("utt_id")["wav"]
    for utt in ("Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses02M_script01_1_F000"):
        audio = table.at[f"iemocap/{utt}", "audio"]
        assert audio == str(wavs[utt].resolve())
        assert table.at[f"iemocap/{utt}", "duration"] == pytest.approx(
            soundfile.info(audio).duration, abs=1e-3
        )
        assert table.at[f"iemocap/{utt}", "duration_source"] == "audio"
    # slow low speech lasts longer than the same words fast
    assert table.at["iemocap/Ses02M_script01_1_F000", "duration"] > 0.5
    missing = table.loc["iemocap/Ses02M_script01_1_M000"]
    assert pd.isna(missing["audio"]) and pd.isna(missing["duration"])
    assert missing["audio_problem"].startswith("file not found: Session2/sentences/wav/Ses02M_script01_1/")
    # leave one session out: fold = session, and no speaker in two folds
    assert table["fold"].to_dict() == table["session"].to_dict()
    assert set(table["fold"]) == {1, 2}
    assert speaker_overlap(table.reset_index(), parts="fold").empty


def test_an_unreadable_wav_is_listed_not_fatal(iemocap, tmp_path):
    root, _ = iemocap
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    wav = copy / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav"
    data = wav.read_bytes()
    wav.unlink()  # the copy may be a hard link to the shared synthesis: never write through it
    wav.write_bytes(data[: len(data) // 2])
    table = load_iemocap(copy).set_index("id")
    assert table.at["iemocap/Ses01F_impro01_F000", "audio_problem"].startswith("truncated WAV")
    assert table["audio"].notna().sum() == 4


def test_bom_and_cli_round_trip(iemocap, tmp_path, melt_cli):
    root, _ = iemocap
    copy = tmp_path / "bom"
    shutil.copytree(root, copy)
    evaluation = copy / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    evaluation.write_bytes(b"\xef\xbb\xbf" + evaluation.read_bytes())
    out = tmp_path / "iemocap.parquet"
    done = melt_cli("corpus", "iemocap", copy, "--out", out)
    assert done.code == 0, done.stderr
    assert "1 × file not found" in done.stdout and "transcriptions" in done.stdout
    table = read_table(out)
    assert len(table) == 6 and table["votes"].notna().all()
    assert table["fold"].dtype == "Int64" and table["valence"].dtype == "Float64"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda r: (r / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt").write_text(
                "% header\n\n[6.29 - oops]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n"
            ),
            "Ses01F_impro01.txt: line 3: expected '[start - end]",
        ),
        (
            lambda r: (r / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt").write_text(
                "[1.0 - 2.0]\tSes01F_impro01_F000\tjoyful\t[2.5, 2.5, 2.5]\n"
            ),
            "line 1: unknown IEMOCAP label 'joyful'",
        ),
        (
            lambda r: shutil.copy(
                r / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt",
                r / "Session1/dialog/EmoEvaluation/Ses01F_impro01_copy.txt",
            ),
            "annotated twice",
        ),
    ],
)
def test_clear_errors(iemocap, tmp_path, melt_cli, damage, message):
    root, _ = iemocap
    copy = tmp_path / "damaged"
    shutil.copytree(root, copy)
    damage(copy)
    done = melt_cli("corpus", "iemocap", copy, "--out", tmp_path / "t.csv")
    assert done.code == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert message in done.stderr
    assert not (tmp_path / "t.csv").exists()


def test_wrong_root_says_what_was_expected_where(iemocap, tmp_path, melt_cli):
    root, _ = iemocap
    done = melt_cli("corpus", "iemocap", root.parent, "--out", tmp_path / "t.csv")
    assert done.code == 2
    assert "expected Session1..5/dialog/EmoEvaluation/<dialog>.txt" in done.stderr
    assert "IEMOCAP_full_release" in done.stderr  # what the folder holds instead
    with pytest.raises(MeltError, match=r"no IEMOCAP annotations: expected Session1\.\.5"):
        load_iemocap(root / "Session2")
    done = melt_cli("corpus", "iemocap", tmp_path / "nowhere", "--out", tmp_path / "t.csv")
    assert done.code == 2 and "folder not found" in done.stderr
    done = melt_cli("corpus", "iemocap", root, "--classes", "5", "--out", tmp_path / "t.csv")
    assert done.code == 2 and "--classes takes 4 or all" in done.stderr
