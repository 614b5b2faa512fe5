import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from melt.acoustics.audio import SAMPLE_RATE, AudioError, extract_audio, read_audio, wav_name
from melt.corpus.schema import read_table
from melt.errors import MeltError

from .espeak import require_tools, synthesise


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """3 s-ish of espeak speech at 22.05 kHz, espeak's native rate, to exercise resampling."""
    require_tools("espeak-ng", "sox")
    folder = tmp_path_factory.mktemp("speech")
    return synthesise(folder / "speech.wav", "Hello there, how are you doing today?", rate=22050)


def to_video(source: Path, target: Path) -> Path:
    """An MP4 with a video track and AAC audio, like MELD.Raw's clips."""
    require_tools("ffmpeg")
    target.parent.mkdir(parents=True, exist_ok=True)
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=64x64:r=10"]
    command += ["-i", str(source), "-shortest", "-c:v", "libx264", "-c:a", "aac", "-ar", "44100", str(target)]
    subprocess.run(command, check=True, capture_output=True)
    return target


def test_reads_wav_resampled_to_16k_mono(speech):
    signal = read_audio(speech)
    info = soundfile.info(speech)
    assert info.samplerate == 22050
    assert signal.dtype == np.float32 and signal.ndim == 1
    assert len(signal) == pytest.approx(info.duration * SAMPLE_RATE, abs=2)


def test_reads_flac_mp3_stereo_and_mp4_with_the_same_duration(speech, tmp_path):
    reference = len(read_audio(speech)) / SAMPLE_RATE
    flac = tmp_path / "s.flac"
    subprocess.run(["sox", str(speech), str(flac)], check=True)
    stereo = tmp_path / "stereo.wav"
    subprocess.run(["sox", str(speech), "-c", "2", str(stereo)], check=True)
    mp3 = tmp_path / "s.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(speech), str(mp3)], check=True)
    mp4 = to_video(speech, tmp_path / "clip.mp4")
    for path, tolerance in [(flac, 0.001), (stereo, 0.001), (mp3, 0.1), (mp4, 0.1)]:
        signal = read_audio(path)
        assert signal.ndim == 1
        assert len(signal) / SAMPLE_RATE == pytest.approx(reference, abs=tolerance), path.name
        assert np.abs(signal).max() > 0.05, path.name


def test_stereo_is_averaged_not_first_channel(tmp_path):
    left = np.full(16000, 0.5, dtype=np.float32)
    right = np.full(16000, 0.1, dtype=np.float32)
    path = tmp_path / "lr.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert read_audio(path) == pytest.approx(np.full(16000, 0.3), abs=1e-6)


@pytest.fixture
def bad_files(speech, tmp_path) -> dict[str, Path]:
    data = speech.read_bytes()
    files = {
        "truncated": tmp_path / "truncated.wav",
        "header_only_cut": tmp_path / "cut_header.wav",
        "empty": tmp_path / "empty.wav",
        "not_audio": tmp_path / "notes.wav",
        "silent": tmp_path / "silent.wav",
        "corrupt_mp4": tmp_path / "broken.mp4",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["header_only_cut"].write_bytes(data[:30])
    files["empty"].write_bytes(b"")
    files["not_audio"].write_text("this is not audio\n" * 20)
    soundfile.write(files["silent"], np.zeros(16000, dtype=np.float32), 16000)
    files["corrupt_mp4"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return files


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated WAV"),
        ("header_only_cut", "no data chunk"),
        ("empty", "empty file"),
        ("not_audio", "not readable audio"),
        ("silent", "silent"),
        ("corrupt_mp4", "not readable audio"),
    ],
)
def test_bad_audio_raises_a_clear_error_naming_the_file(bad_files, kind, reason):
    with pytest.raises(AudioError, match=reason) as caught:
        read_audio(bad_files[kind])
    assert isinstance(caught.value, MeltError)
    assert str(bad_files[kind]) in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        read_audio(tmp_path / "nope.wav")


def test_wav_name_keeps_ids_inside_the_output_folder():
    assert wav_name("train/dia0_utt0") == Path("train/dia0_utt0.wav")
    assert ".." not in wav_name("../../etc/passwd").parts
    assert not wav_name("/etc/passwd").is_absolute()
    assert wav_name("a b:c") == Path("a+20b+3Ac.wav")


def test_distinct_ids_never_share_a_wav_name():
    ids = [
        "a b",
        "a_b",
        "a?b",
        "a+b",
        "a+20b",
        "a/b",
        "a//b",
        "/a/b",
        "a/b/",
        "a.b",
        "é",
        "e",
        "x" * 400,
        "x" * 401,
    ]
    names = [wav_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    # a folder named like a WAV cannot clash with the WAV of another id
    assert wav_name("a/b.wav/c").parent != wav_name("a/b")
    assert all(len(part.encode()) < 255 for name in names for part in name.parts)


@pytest.fixture
def two_clips(speech, tmp_path) -> tuple[Path, Path]:
    """A long and a short clip, to tell apart by their WAV's length."""
    require_tools("espeak-ng", "sox")
    clips = tmp_path / "clips"
    clips.mkdir()
    long = clips / "dia1_utt0.wav"
    long.write_bytes(speech.read_bytes())
    short = synthesise(clips / "dia2_utt0.wav", "Hi.", speed=250)
    return long, short


def test_ids_that_used_to_collide_get_their_own_audio(two_clips, tmp_path):
    long, short = two_clips
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame(
        {
            "id": ["a b", "a_b", "a?b"],
            "text": ["x", "y", "z"],
            "dialogue_id": [1, 2, 1],
            "utterance_id": [0, 0, 0],
        }
    ).to_csv(corpus, index=False)
    table = extract_audio(corpus, long.parent, tmp_path / "wav", progress=False).table.set_index("id")
    assert table["audio"].nunique() == 3
    expected = {"a b": long, "a_b": short, "a?b": long}
    for utterance, clip in expected.items():
        wav = corpus.parent / table.at[utterance, "audio"]
        assert soundfile.info(wav).duration == pytest.approx(soundfile.info(clip).duration, abs=0.01), (
            utterance
        )


def test_a_reused_wav_is_checked_against_its_clip(two_clips, tmp_path):
    long, short = two_clips
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"id": ["u1"], "text": ["x"], "dialogue_id": [1], "utterance_id": [0]}).to_csv(
        corpus, index=False
    )
    out = tmp_path / "wav"
    first = extract_audio(corpus, long.parent, out, table_out=tmp_path / "t.csv", progress=False).table
    wav = out / "u1.wav"
    assert first.at[0, "duration"] == pytest.approx(soundfile.info(long).duration, abs=0.01)
    made = wav.stat().st_mtime_ns

    # an unchanged clip is not decoded again
    extract_audio(corpus, long.parent, out, table_out=tmp_path / "t.csv", progress=False)
    assert wav.stat().st_mtime_ns == made

    # the clip is replaced by another one that looks older than the WAV: the WAV must not be reused
    long.write_bytes(short.read_bytes())
    old = wav.stat().st_mtime - 3600
    os.utime(long, (old, old))
    again = extract_audio(corpus, long.parent, out, table_out=tmp_path / "t.csv", progress=False).table
    assert again.at[0, "duration"] == pytest.approx(soundfile.info(short).duration, abs=0.01)
    assert soundfile.info(wav).duration == pytest.approx(soundfile.info(short).duration, abs=0.01)

    # a WAV changed behind melt's back is made again too
    wav.write_bytes(b"RIFF garbage")
    extract_audio(corpus, long.parent, out, table_out=tmp_path / "t.csv", progress=False)
    assert soundfile.info(wav).duration == pytest.approx(soundfile.info(short).duration, abs=0.01)


@pytest.fixture
def meld_raw(speech, tmp_path) -> tuple[Path, Path]:
    """A MELD.Raw-like folder: the same clip name in two split folders, macOS `._` files, a corrupt clip and a
    silent one; plus a corpus table referring to them and to a clip that does not exist."""
    require_tools("espeak-ng", "sox", "ffmpeg")
    raw = tmp_path / "MELD.Raw"
    short = synthesise(tmp_path / "short.wav", "Hi.", speed=200)
    to_video(speech, raw / "train" / "train_splits" / "dia0_utt0.mp4")
    to_video(short, raw / "test" / "output_repeated_splits_test" / "dia0_utt0.mp4")
    (raw / "train" / "train_splits" / "._dia0_utt0.mp4").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (raw / "train" / "train_splits" / "dia1_utt0.mp4").write_bytes(b"not a video at all")
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    to_video(silent, raw / "train" / "train_splits" / "dia3_utt0.mp4")
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame(
        {
            "id": [
                "train/dia0_utt0",
                "test/dia0_utt0",
                "train/dia1_utt0",
                "train/dia2_utt0",
                "train/dia3_utt0",
            ],
            "split": ["train", "test", "train", "train", "train"],
            "text": ["hello there", "hi", "x", "y", "z"],
            "dialogue_id": [0, 0, 1, 2, 3],
            "utterance_id": [0, 0, 0, 0, 0],
            "duration": [9.9, 9.9, 9.9, 9.9, 9.9],
            "duration_source": ["timestamps"] * 5,
        }
    ).to_csv(corpus, index=False)
    return raw, corpus


def test_extract_audio_converts_meld_clips_and_records_bad_ones(meld_raw, speech, tmp_path):
    raw, corpus = meld_raw
    out = tmp_path / "wav"
    result = extract_audio(corpus, raw, out, workers=2, progress=False)

    table = read_table(corpus)  # written back over the corpus by default
    by_id = table.set_index("id")
    train = out / "train" / "dia0_utt0.wav"
    test = out / "test" / "dia0_utt0.wav"
    info = soundfile.info(train)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    # each split got its own clip: the test clip is the short "Hi."
    assert soundfile.info(test).duration < info.duration / 2
    assert by_id.at["train/dia0_utt0", "duration"] == pytest.approx(soundfile.info(speech).duration, abs=0.1)
    assert by_id.at["train/dia0_utt0", "duration_source"] == "audio"
    assert (corpus.parent / by_id.at["train/dia0_utt0", "audio"]).resolve() == train.resolve()
    assert not Path(by_id.at["train/dia0_utt0", "audio"]).is_absolute()

    problems = result.problems.set_index("id")["reason"]
    assert set(problems.index) == {"train/dia1_utt0", "train/dia2_utt0", "train/dia3_utt0"}
    assert "not readable audio" in problems["train/dia1_utt0"]
    assert "no clip named dia2_utt0" in problems["train/dia2_utt0"]
    assert "silent" in problems["train/dia3_utt0"]
    # failed rows keep their timestamp duration and no audio path, with the reason in the table
    assert pd.isna(by_id.at["train/dia1_utt0", "audio"])
    assert by_id.at["train/dia1_utt0", "duration"] == 9.9
    assert by_id.at["train/dia1_utt0", "duration_source"] == "timestamps"
    assert "silent" in by_id.at["train/dia3_utt0", "audio_problem"]
    assert (out / "audio_problems.csv").exists()
    assert result.converted == 2


def test_extract_audio_reuses_wavs_newer_than_their_clip(meld_raw, tmp_path):
    raw, corpus = meld_raw
    out = tmp_path / "wav"
    extract_audio(corpus, raw, out, table_out=tmp_path / "with_audio.csv", progress=False)
    target = out / "train" / "dia0_utt0.wav"
    before = target.stat().st_mtime_ns
    table = extract_audio(corpus, raw, out, table_out=tmp_path / "with_audio.csv", progress=False).table
    assert target.stat().st_mtime_ns == before
    assert table.set_index("id").at["train/dia0_utt0", "duration_source"] == "audio"


def test_extract_audio_names_a_missing_clips_folder(meld_raw, tmp_path):
    _raw, corpus = meld_raw
    with pytest.raises(MeltError, match="clips folder not found"):
        extract_audio(corpus, tmp_path / "nowhere", tmp_path / "wav", progress=False)


def test_cli_audio_extract(meld_raw, tmp_path):
    raw, corpus = meld_raw
    table_out = tmp_path / "out" / "corpus_audio.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "melt",
            "audio",
            "extract",
            str(corpus),
            "--clips",
            str(raw),
            "--out",
            str(tmp_path / "out" / "wav"),
            "--table-out",
            str(table_out),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "2 of 5 utterances have audio" in done.stdout and "3 skipped" in done.stdout
    table = read_table(table_out).set_index("id")
    # paths are relative to the written table's folder
    assert table.at["test/dia0_utt0", "audio"] == "wav/test/dia0_utt0.wav"
    assert pd.read_csv(corpus)["duration_source"].eq("timestamps").all()  # the input was left alone
