"""TESS, RAVDESS and CREMA-D in their release layouts, with real espeak-ng audio."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import soundfile

from corpora import CremadClip, Prosody, RavdessClip, TessClip, make_cremad, make_ravdess, make_tess
from melt.corpus.emotion_corpora import load_cremad, load_ravdess, load_tess
from melt.corpus.folds import speaker_overlap
from melt.corpus.schema import read_table, votes_of
from melt.errors import MeltError

HIGH = Prosody(pitch=80, amplitude=150, speed=240)

# --- TESS --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tess(speech, tmp_path_factory):
    root = tmp_path_factory.mktemp("tess") / "TESS Toronto emotional speech set data"
    clips = [TessClip(e) for e in ("angry", "ps", "neutral", "fear")]
    clips += [TessClip(e, word="dog", speaker="YAF") for e in ("happy", "sad", "disgust", "Angry")]
    clips += [TessClip("ps", word="dog", prosody=HIGH)]
    built = make_tess(root, clips, speech)
    # Kaggle's TESS holds a second, identical copy of every folder one level down.
    shutil.copytree(root / "OAF_angry", root / "TESS Toronto emotional speech set data" / "OAF_angry")
    (root / "OAF_angry" / "._OAF_back_angry.wav").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "OAF_angry" / "OAF_back_angry (1).wav").write_bytes(
        (root / "OAF_angry" / "OAF_back_angry.wav").read_bytes()
    )
    (root / "README.txt").write_text("Toronto emotional speech set\n")
    # The release misnames one file (OA_ for OAF_), and copies of it differ in the case of names.
    shutil.copy(root / "OAF_neutral" / "OAF_back_neutral.wav", root / "OAF_neutral" / "OA_bite_neutral.wav")
    shutil.copytree(root / "YAF_Angry", root / "TESS Toronto emotional speech set data" / "yaf_angry")
    (root / "TESS Toronto emotional speech set data" / "yaf_angry" / "YAF_dog_Angry.wav").rename(
        root / "TESS Toronto emotional speech set data" / "yaf_angry" / "yaf_DOG_angry.wav"
    )
    return root, built


def test_tess_labels_speakers_text_and_durations(tess):
    root, built = tess
    table = load_tess(root).set_index("id")
    assert len(table) == 10
    assert table.at["tess/OAF_back_ps", "label"] == "surprise"
    assert table.at["tess/OAF_back_ps", "label_original"] == "ps"
    # file names come in any case; ids are written in one, so the two copies are one utterance
    assert table.at["tess/YAF_dog_angry", "label"] == "anger"
    assert table.at["tess/YAF_dog_angry", "label_original"] == "angry"
    assert table.at["tess/YAF_dog_angry", "audio"].lower().endswith("yaf_angry/yaf_dog_angry.wav")
    # the release's OA_bite_neutral.wav is OAF's
    assert table.at["tess/OAF_bite_neutral", "speaker"] == "OAF"
    assert table.at["tess/OAF_bite_neutral", "text"] == "Say the word bite"
    assert table.at["tess/YAF_dog_happy", "label"] == "joy"
    assert table.at["tess/OAF_back_fear", "label"] == "fear"
    assert set(table["speaker"]) == {"OAF", "YAF"} and set(table["gender"]) == {"F"}
    assert table.at["tess/OAF_back_angry", "text"] == "Say the word back"
    wav = built.set_index("name").at["OAF_dog_ps", "wav"]
    assert table.at["tess/OAF_dog_ps", "audio"] == str(wav.resolve())
    assert table.at["tess/OAF_dog_ps", "duration"] == pytest.approx(soundfile.info(wav).duration, abs=1e-3)
    # two speakers: one fold each, never shared
    assert sorted(table.groupby("speaker")["fold"].unique().map(list).sum()) == [1, 2]
    assert speaker_overlap(table.reset_index(), parts="fold").empty
    notes = " | ".join(table.attrs["melt"]["notes"])
    assert "2 identical duplicate" in notes
    assert "1 file(s) skipped, not named like OAF_back_angry.wav" in notes and "(1).wav" in notes
    assert "1 file(s) named OA_/YA_ read as OAF/YAF's: OAF_neutral/OA_bite_neutral.wav" in notes


def test_tess_unreadable_and_conflicting_files(tess, tmp_path):
    root, _ = tess
    copy = tmp_path / "tess"
    shutil.copytree(root, copy)
    (copy / "YAF_Sad" / "YAF_bad_sad.wav").write_text("this is not audio\n")
    (copy / "YAF_Sad" / "YAF_void_sad.wav").write_bytes(b"")
    table = load_tess(copy).set_index("id")
    assert table.at["tess/YAF_bad_sad", "audio_problem"].startswith("not readable audio")
    assert table.at["tess/YAF_void_sad", "audio_problem"].startswith("empty file (0 bytes)")
    assert pd.isna(table.at["tess/YAF_bad_sad", "audio"]) and pd.isna(
        table.at["tess/YAF_bad_sad", "duration"]
    )
    assert table["audio"].notna().sum() == 10
    # the same name with different audio in two folders: either could be right
    other = copy / "TESS Toronto emotional speech set data" / "OAF_angry" / "OAF_back_angry.wav"
    other.unlink()
    other.write_bytes((copy / "OAF_Pleasant_surprise" / "OAF_dog_ps.wav").read_bytes())
    with pytest.raises(MeltError, match="two different files are both 'OAF_back_angry'"):
        load_tess(copy)


def test_tess_nothing_matches(tmp_path, melt_cli):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "clip01.wav").write_bytes(b"RIFF")
    done = melt_cli("corpus", "tess", tmp_path, "--out", tmp_path / "t.csv")
    assert done.code == 2 and len(done.stderr.strip().splitlines()) == 1
    assert (
        "expected .wav files named like OAF_back_angry.wav" in done.stderr and "holds: audio" in done.stderr
    )


# --- RAVDESS -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ravdess(speech, tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess") / "Audio_Speech_Actors_01-24"
    clips = [
        RavdessClip("neutral", actor=1),
        RavdessClip("calm", actor=1),
        RavdessClip("calm", actor=2, intensity=2),
        RavdessClip("happy", actor=1, intensity=2, statement=2, prosody=HIGH),
        RavdessClip("sad", actor=2),
        RavdessClip("angry", actor=2, intensity=2, prosody=HIGH),
        RavdessClip("fearful", actor=3),
        RavdessClip("disgust", actor=4),
        RavdessClip("surprised", actor=4, repetition=2),
        RavdessClip("happy", actor=3, channel=2),  # song
        RavdessClip("happy", actor=3, modality=1),  # audio-video
    ]
    built = make_ravdess(root, clips, speech)
    (root / "Actor_03" / "03-01-09-01-01-01-03.wav").write_bytes(b"RIFF")  # no emotion 09
    return root, built


def test_ravdess_drops_calm_maps_codes_and_actors(ravdess):
    root, built = ravdess
    table = load_ravdess(root).set_index("id")
    assert len(table) == 7
    assert "calm" not in set(table["label_original"])
    assert table["label"].to_dict() == {
        "ravdess/03-01-01-01-01-01-01": "neutral",
        "ravdess/03-01-03-02-02-01-01": "joy",
        "ravdess/03-01-04-01-01-01-02": "sadness",
        "ravdess/03-01-05-02-01-01-02": "anger",
        "ravdess/03-01-06-01-01-01-03": "fear",
        "ravdess/03-01-07-01-01-01-04": "disgust",
        "ravdess/03-01-08-01-01-02-04": "surprise",
    }
    row = table.loc["ravdess/03-01-03-02-02-01-01"]
    assert (row["speaker"], row["gender"], row["intensity"]) == ("Actor_01", "M", "strong")
    assert row["text"] == "Dogs are sitting by the door" and row["label_original"] == "happy"
    assert table.at["ravdess/03-01-04-01-01-01-02", "gender"] == "F"
    wav = built.set_index("name").at["03-01-05-02-01-01-02", "wav"]
    assert table.at["ravdess/03-01-05-02-01-01-02", "duration"] == pytest.approx(
        soundfile.info(wav).duration, abs=1e-3
    )
    notes = " | ".join(table.attrs["melt"]["notes"])
    assert "2 calm utterance(s) dropped" in notes
    assert "2 file(s) skipped: not audio-only speech" in notes
    assert "03-01-09-01-01-01-03.wav" in notes
    # 4 actors -> 4 speaker-independent folds (k = 5 capped at the number of actors)
    assert table["fold"].nunique() == 4 and speaker_overlap(table.reset_index(), parts="fold").empty


def test_ravdess_keep_calm(ravdess, tmp_path, melt_cli):
    root, _ = ravdess
    out = tmp_path / "ravdess.csv"
    done = melt_cli("corpus", "ravdess", root, "--keep-calm", "--out", out)
    assert done.code == 0, done.stderr
    table = read_table(out).set_index("id")
    assert len(table) == 9
    assert table.at["ravdess/03-01-02-02-01-01-02", "label"] == "calm"
    assert table.at["ravdess/03-01-02-02-01-01-02", "label_original"] == "calm"
    assert "calm 2" in done.stdout  # reported as a label outside the seven


# --- CREMA-D -----------------------------------------------------------------------------------------------------

VOICE, FACE, AUDIOVISUAL = 1, 2, 3


@pytest.fixture(scope="module")
def cremad(speech, tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad") / "CREMA-D"
    clips = [
        CremadClip(
            "ANG",
            level="HI",
            responses=(
                ("r1", "A", VOICE),
                ("r2", "D", VOICE),
                ("r3", "A", FACE),
                ("r4", "N", AUDIOVISUAL),
                ("r5", "A", VOICE),
                ("r5", "S", VOICE),  # the same rater twice: one weight split over both answers
            ),
            prosody=HIGH,
        ),
        CremadClip("HAP", level="LO", responses=(("r1", "H", VOICE), ("r2", "N", VOICE))),
        CremadClip("SAD", actor=1002, sentence="TIE"),
        CremadClip("NEU", actor=1002, sentence="DFA", responses=(("r9", "N", FACE),)),
        CremadClip("FEA", actor=1003),
        CremadClip("DIS", actor=1003, level="MD"),
    ]
    built = make_cremad(root, clips, speech, demographics={1001: "Male", 1002: "Female"})
    (root / "AudioMP3").mkdir()
    (root / "AudioMP3" / "1001_IEO_ANG_HI.mp3").write_bytes(b"ID3")  # not read: WAV only
    return root, built


def test_cremad_labels_levels_genders(cremad):
    root, built = cremad
    table = load_cremad(root).set_index("id")
    assert len(table) == 6
    assert table["label"].to_dict() == {
        "cremad/1001_IEO_ANG_HI": "anger",
        "cremad/1001_IEO_HAP_LO": "joy",
        "cremad/1002_TIE_SAD_XX": "sadness",
        "cremad/1002_DFA_NEU_XX": "neutral",
        "cremad/1003_IEO_FEA_XX": "fear",
        "cremad/1003_IEO_DIS_MD": "disgust",
    }
    assert table.at["cremad/1001_IEO_ANG_HI", "intensity"] == "HI"
    assert table.at["cremad/1001_IEO_ANG_HI", "label_original"] == "ANG"
    assert table.at["cremad/1002_TIE_SAD_XX", "text"] == "That is exactly what happened"
    assert table.at["cremad/1001_IEO_ANG_HI", "gender"] == "M"
    assert table.at["cremad/1002_TIE_SAD_XX", "gender"] == "F"
    assert pd.isna(table.at["cremad/1003_IEO_FEA_XX", "gender"])  # not in VideoDemographics.csv
    assert table["votes"].isna().all()
    wav = built.set_index("name").at["1001_IEO_ANG_HI", "wav"]
    assert table.at["cremad/1001_IEO_ANG_HI", "duration"] == pytest.approx(
        soundfile.info(wav).duration, abs=1e-3
    )
    assert table["fold"].nunique() == 3 and speaker_overlap(table.reset_index(), parts="fold").empty


def test_cremad_votes_from_finished_responses(cremad, tmp_path, melt_cli):
    root, _ = cremad
    responses = root / "finishedResponses.csv"
    table = load_cremad(root, votes=responses).set_index("id")
    assert json.loads(table.at["cremad/1001_IEO_ANG_HI", "votes"]) == {
        "r1": {"anger": 1.0},
        "r2": {"disgust": 1.0},
        "r5": {"anger": 0.5, "sadness": 0.5},
    }
    assert json.loads(table.at["cremad/1001_IEO_HAP_LO", "votes"]) == {
        "r1": {"joy": 1.0},
        "r2": {"neutral": 1.0},
    }
    assert pd.isna(table.at["cremad/1002_DFA_NEU_XX", "votes"])  # face responses only
    every = load_cremad(root, votes=responses, vote_channel="all").set_index("id")
    assert set(json.loads(every.at["cremad/1001_IEO_ANG_HI", "votes"])) == {"r1", "r2", "r3", "r4", "r5"}
    assert json.loads(every.at["cremad/1002_DFA_NEU_XX", "votes"]) == {"r9": {"neutral": 1.0}}
    # the release's file read through the CLI, with a byte-order mark as some editors save it
    bom = tmp_path / "finishedResponses.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + responses.read_bytes())
    out = tmp_path / "cremad.parquet"
    done = melt_cli("corpus", "cremad", root, "--votes", bom, "--out", out)
    assert done.code == 0, done.stderr
    assert "have no voice responses" in done.stdout
    assert sum(bool(v) for v in votes_of(read_table(out))) == 2


def test_cremad_bad_votes_files(cremad, tmp_path, melt_cli):
    root, _ = cremad
    lines = (root / "finishedResponses.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], lines[2].replace('"D"', '"Q"')]) + "\n")
    done = melt_cli("corpus", "cremad", root, "--votes", bad, "--out", tmp_path / "t.csv")
    assert done.code == 2 and "row 2, column 'respEmo': unknown response 'Q'" in done.stderr
    wrong = tmp_path / "tabulatedVotes.csv"
    wrong.write_text('"","A","D","fileName"\n"1",1,0,"1001_IEO_ANG_HI"\n')
    done = melt_cli("corpus", "cremad", root, "--votes", wrong, "--out", tmp_path / "t.csv")
    assert done.code == 2 and "expected CREMA-D's finishedResponses.csv" in done.stderr
    done = melt_cli(
        "corpus", "cremad", root, "--votes", tmp_path / "missing.csv", "--out", tmp_path / "t.csv"
    )
    assert done.code == 2 and "file not found" in done.stderr
    done = melt_cli("corpus", "cremad", root, "--vote-channel", "smell", "--out", tmp_path / "t.csv")
    assert done.code == 2 and "--vote-channel takes voice, face, audiovisual or all" in done.stderr
