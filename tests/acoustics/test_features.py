import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile

from melt.acoustics.audio import AudioError
from melt.acoustics.features import (
    LOUDNESS,
    PITCH,
    SYLLABLES_PER_SEC,
    VOICED_SEGMENTS_PER_SEC,
    count_syllables,
    extract_features,
    feature_names,
    process_file,
    process_files,
)
from melt.errors import MeltError

from .espeak import synthesise

CONTROL_FEATURES = [("pitch", PITCH), ("loudness", LOUDNESS), ("rhythm_speed", SYLLABLES_PER_SEC)]


def with_controls(espeak_corpus, features):
    return features.merge(espeak_corpus.controls.drop(columns=["split", "speaker"]), on="id")


@pytest.mark.parametrize(
    ("control", "feature"), [*CONTROL_FEATURES, ("rhythm_speed", VOICED_SEGMENTS_PER_SEC)]
)
def test_features_rise_with_the_espeak_controls(espeak_corpus, espeak_features, control, feature):
    table = with_controls(espeak_corpus, espeak_features[0])
    for split, part in table.groupby("split"):
        means = part.groupby(control)[feature].mean()
        assert means["low"] < means["mid"] < means["high"], (split, means.to_dict())


@pytest.mark.parametrize(("control", "feature"), CONTROL_FEATURES)
def test_control_levels_do_not_overlap_within_a_split(espeak_corpus, espeak_features, control, feature):
    # What makes UAR >= 0.9 possible: every low item measures below every mid item, and so on.
    table = with_controls(espeak_corpus, espeak_features[0])
    for split, part in table.groupby("split"):
        by_level = part.groupby(control)[feature]
        assert by_level.max()["low"] < by_level.min()["mid"], split
        assert by_level.max()["mid"] < by_level.min()["high"], split


def test_features_table_layout(espeak_corpus, espeak_features):
    features, path = espeak_features
    assert path.exists()
    assert len(features) == len(espeak_corpus.controls)
    names = feature_names()
    assert len(names) == 88 and PITCH in names and LOUDNESS in names
    assert list(features.columns[:9]) == [
        "id",
        "split",
        "speaker",
        "audio",
        "audio_sha256",
        "duration",
        "syllables",
        SYLLABLES_PER_SEC,
        "error",
    ]
    assert features["error"].isna().all()
    assert set(features["split"]) == {"train", "test"}
    first = features.iloc[0]
    info = soundfile.info(espeak_corpus.folder / first["audio"])
    assert first["duration"] == pytest.approx(info.duration, abs=1e-3)
    assert first[SYLLABLES_PER_SEC] == pytest.approx(first["syllables"] / first["duration"])
    # the parquet on disk is the same table
    on_disk = pd.read_parquet(path)
    assert on_disk["id"].tolist() == features["id"].tolist()
    assert np.allclose(on_disk[PITCH], features[PITCH])


def test_parallel_workers_give_the_same_numbers_as_process_file(espeak_corpus, espeak_features):
    features = espeak_features[0]  # extracted with two worker processes
    for position in (0, 31, 59):
        row = features.iloc[position]
        single = process_file(espeak_corpus.folder / row["audio"])
        assert np.allclose(single.to_numpy(), row[feature_names()].to_numpy(dtype=float), equal_nan=True)


def test_process_files_indexes_by_path_and_records_bad_files(espeak_corpus, tmp_path):
    good = espeak_corpus.folder / "wav" / "train" / "dia0_utt0.wav"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    frame = process_files([good, empty], workers=2)
    assert frame.index.tolist() == [str(good), str(empty)]
    assert pd.isna(frame.at[str(good), "error"]) and frame.at[str(good), PITCH] > 0
    assert frame.at[str(empty), "error"] == "empty file (0 bytes)"
    assert np.isnan(frame.at[str(empty), PITCH])


def test_process_file_raises_for_bad_audio(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("hello")
    with pytest.raises(AudioError, match="not readable audio"):
        process_file(path)


@pytest.fixture
def small_corpus(espeak_corpus, tmp_path):
    """Four espeak files copied into a fresh folder, with their corpus rows."""
    table = pd.read_csv(espeak_corpus.table_path).head(4)
    for audio in table["audio"]:
        (tmp_path / audio).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(espeak_corpus.folder / audio, tmp_path / audio)
    path = tmp_path / "corpus.csv"
    table.to_csv(path, index=False)
    return path, table


def test_rerun_only_processes_new_or_changed_files(small_corpus, tmp_path):
    path, table = small_corpus
    out = tmp_path / "features.parquet"
    first = extract_features(path, out, workers=1, progress=False)
    assert first.attrs["melt"] == {"processed": 4, "reused": 0}

    again = extract_features(path, out, workers=1, progress=False)
    assert again.attrs["melt"] == {"processed": 0, "reused": 4}
    assert np.allclose(again[feature_names()], first[feature_names()])

    # change one file's content (a much higher pitch) and add a new row
    changed = tmp_path / table.at[1, "audio"]
    synthesise(changed, table.at[1, "text"], pitch=95)
    synthesise(tmp_path / "wav" / "new.wav", "A new utterance here.")
    grown = pd.concat(
        [
            table,
            pd.DataFrame(
                [
                    {
                        "id": "train/new",
                        "split": "train",
                        "text": "A new utterance here.",
                        "audio": "wav/new.wav",
                    }
                ]
            ),
        ]
    )
    grown.to_csv(path, index=False)
    third = extract_features(path, out, workers=2, progress=False)
    assert third.attrs["melt"] == {"processed": 2, "reused": 3}
    assert third.at[1, PITCH] > first.at[1, PITCH] + 2  # semitones: the change was picked up
    assert third.at[0, PITCH] == first.at[0, PITCH]
    assert third["error"].isna().all()

    fresh = extract_features(path, out, workers=1, progress=False, cache=False)
    assert fresh.attrs["melt"]["processed"] == 5


def test_a_batch_with_bad_files_records_reasons_and_goes_on(small_corpus, tmp_path):
    path, table = small_corpus
    good = (tmp_path / table.at[0, "audio"]).read_bytes()
    bad = {
        "truncated.wav": good[: len(good) // 3],
        "empty.wav": b"",
        "notes.wav": b"just some text, not audio\n" * 10,
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    soundfile.write(tmp_path / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    extra = pd.DataFrame(
        {
            "id": ["b/trunc", "b/empty", "b/notes", "b/silent", "b/missing", "b/none"],
            "text": ["x"] * 6,
            "audio": ["truncated.wav", "empty.wav", "notes.wav", "silent.wav", "gone.wav", None],
        }
    )
    pd.concat([table, extra]).to_csv(path, index=False)
    features = extract_features(path, tmp_path / "f.parquet", workers=2, progress=False).set_index("id")
    errors = features["error"]
    assert errors[table["id"]].isna().all()
    assert features.loc[table["id"], PITCH].notna().all()
    assert "truncated WAV" in errors["b/trunc"]
    assert errors["b/empty"] == "empty file (0 bytes)"
    assert "not readable audio" in errors["b/notes"]
    assert "silent" in errors["b/silent"]
    assert errors["b/missing"] == "file not found"
    assert errors["b/none"] == "no audio path"
    assert features.loc[extra["id"], PITCH].isna().all()


def test_corpus_without_audio_column_is_a_clear_error(tmp_path):
    path = tmp_path / "corpus.csv"
    pd.DataFrame({"id": ["a"], "text": ["hi"]}).to_csv(path, index=False)
    with pytest.raises(MeltError, match=r"missing column\(s\) \['audio'\]") as caught:
        extract_features(path, tmp_path / "f.parquet", progress=False)
    assert str(path) in str(caught.value)


def test_duplicate_ids_name_the_row(tmp_path):
    path = tmp_path / "corpus.csv"
    pd.DataFrame({"id": ["a", "a"], "text": ["hi", "ho"], "audio": ["x.wav", "y.wav"]}).to_csv(
        path, index=False
    )
    with pytest.raises(MeltError, match="row 2, column 'id'"):
        extract_features(path, tmp_path / "f.parquet", progress=False)


@pytest.mark.parametrize(
    ("text", "syllables"), [("Hello there", 3), ("I can't believe it", 5), ("", 0), ("Make the table", 4)]
)
def test_count_syllables(text, syllables):
    assert count_syllables(text) == syllables
