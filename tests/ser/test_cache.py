"""The feature cache: exact, keyed by content, resumable, and strict about what it holds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile

from melt.acoustics.audio import read_audio
from melt.errors import MeltError
from melt.ser.backbones import load_backbone
from melt.ser.cache import FeatureCache, crop_key, extract_features, lookup


@pytest.fixture(scope="module")
def small_table(emotion_corpora) -> pd.DataFrame:
    return emotion_corpora.train.iloc[::4].reset_index(drop=True)  # 12 utterances


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_cached_features_equal_features_computed_on_the_fly(tiny_backbones, small_table, tmp_path, kind):
    backbone = load_backbone(tiny_backbones[kind], device="cpu")
    cache = FeatureCache.create(tmp_path / "cache", backbone)
    result = extract_features(small_table, backbone, cache, files_per_shard=5, progress=False)
    assert result.computed == len(small_table) and result.reused == 0 and result.problems.empty
    assert len(list((tmp_path / "cache").glob("pooled-*.npz"))) == 3  # 5 + 5 + 2 files

    reopened = FeatureCache.open(tmp_path / "cache")
    found = lookup(reopened, small_table)
    assert found.present.all()
    direct = np.concatenate([backbone.pooled([read_audio(p)]) for p in small_table["audio"]])
    np.testing.assert_allclose(found.whole, direct, rtol=1e-4, atol=1e-5)

    again = extract_features(small_table, backbone, reopened, progress=False)
    assert again.computed == 0 and again.reused == len(small_table)


def test_same_audio_under_two_ids_is_computed_once(tiny_backbones, small_table, tmp_path):
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    copy = tmp_path / "copy.wav"
    shutil.copy(small_table["audio"].iloc[0], copy)
    table = pd.concat(
        [small_table.iloc[:3], pd.DataFrame({"id": ["dup"], "audio": [str(copy)], "label": ["anger"]})],
        ignore_index=True,
    )
    cache = FeatureCache.create(tmp_path / "cache", backbone)
    result = extract_features(table, backbone, cache, progress=False)
    assert result.computed == 3
    found = lookup(cache, table)
    np.testing.assert_array_equal(found.whole[0], found.whole[3])


def test_a_file_rewritten_with_its_old_size_and_time_is_hashed_again(tiny_backbones, small_table, tmp_path):
    """The hash memo may skip reading an unchanged file, but a file whose content changed is read again even when
    its size and modification time are the old ones (a same-length clip re-rendered, its time restored by cp -p,
    rsync -t or tar): its features are the new audio's."""
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    clip = tmp_path / "clip.wav"
    first, second = small_table["audio"].iloc[0], small_table["audio"].iloc[1]
    signal, rate = soundfile.read(first, dtype="float32")
    soundfile.write(clip, signal, rate, subtype="PCM_16")
    table = pd.DataFrame({"id": ["clip"], "audio": [str(clip)]})
    cache = FeatureCache.create(tmp_path / "cache", backbone)
    extract_features(table, backbone, cache, progress=False)
    stamp = clip.stat()
    other, _ = soundfile.read(second, dtype="float32")
    soundfile.write(clip, np.resize(other, len(signal)), rate, subtype="PCM_16")  # same length, same size
    os.utime(clip, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert clip.stat().st_size == stamp.st_size and clip.stat().st_mtime_ns == stamp.st_mtime_ns
    result = extract_features(table, backbone, FeatureCache.open(tmp_path / "cache"), progress=False)
    assert result.computed == 1
    found = lookup(FeatureCache.open(tmp_path / "cache"), table)
    np.testing.assert_allclose(found.whole[0], backbone.pooled([read_audio(clip)])[0], rtol=1e-4, atol=1e-5)


def test_bad_audio_is_listed_and_skipped(tiny_backbones, small_table, tmp_path):
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    nan = tmp_path / "nan.wav"
    signal_with_nan = np.full(16000, 0.1, dtype=np.float32)
    signal_with_nan[100] = np.nan
    soundfile.write(nan, signal_with_nan, 16000, subtype="FLOAT")
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, 0.3 * np.sin(np.arange(200) / 3.0).astype(np.float32), 16000)
    not_audio = tmp_path / "text.wav"
    not_audio.write_text("hello")
    bad = pd.DataFrame(
        {
            "id": ["nan", "silent", "tiny", "text", "missing", "none"],
            "audio": [str(nan), str(silent), str(tiny), str(not_audio), str(tmp_path / "gone.wav"), None],
        }
    )
    table = pd.concat([small_table.iloc[:2][["id", "audio"]], bad], ignore_index=True)
    cache = FeatureCache.create(tmp_path / "cache", backbone)
    result = extract_features(table, backbone, cache, progress=False)
    assert result.computed == 2
    reasons = dict(zip(result.problems["id"], result.problems["reason"], strict=True))
    assert set(reasons) == {"nan", "silent", "tiny", "text", "missing", "none"}
    assert "NaN" in reasons["nan"]
    assert "silent" in reasons["silent"]
    assert "too short for the backbone" in reasons["tiny"]
    assert "not readable audio" in reasons["text"] or "WAV" in reasons["text"]
    assert reasons["missing"] == "file not found"
    assert reasons["none"] == "no audio path"
    # training later learns why a row has no features
    found = lookup(cache, table)
    assert found.present.tolist() == [True, True] + [False] * 6
    assert "silent" in found.problems.set_index("id").loc["silent", "reason"]


def test_crops_are_cached_for_long_utterances_only_and_reproducibly(tiny_backbones, small_table, tmp_path):
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    cache = FeatureCache.create(tmp_path / "cache", backbone, crop_seconds=1.5)
    rows = [True] * 6 + [False] * (len(small_table) - 6)
    extract_features(small_table, backbone, cache, crops=3, crop_rows=rows, progress=False)
    found = lookup(cache, small_table, with_crops=True)
    long = (small_table["duration"] > 1.5).to_numpy()
    assert long[:6].any()
    expected_views = [3 if (row and is_long) else 1 for row, is_long in zip(rows, long, strict=True)]
    assert found.view_counts.tolist() == expected_views
    digest = found.digests[int(np.flatnonzero(long[:6])[0])]
    crops = cache.get([crop_key(digest, k) for k in range(3)])
    assert not np.allclose(crops[0], crops[1])  # different random windows
    assert cache.samples(crop_key(digest, 0)) == 24000

    again = FeatureCache.create(tmp_path / "again", backbone, crop_seconds=1.5)
    extract_features(small_table.iloc[:6], backbone, again, crops=3, progress=False)
    np.testing.assert_allclose(
        again.get([crop_key(digest, k) for k in range(3)]), crops, rtol=1e-5, atol=1e-6
    )


def test_a_cache_refuses_another_backbone_or_other_settings(tiny_backbones, small_table, tmp_path):
    wavlm = load_backbone(tiny_backbones["wavlm"], device="cpu")
    FeatureCache.create(tmp_path / "cache", wavlm)
    with pytest.raises(MeltError, match="fingerprint"):
        FeatureCache.create(tmp_path / "cache", load_backbone(tiny_backbones["hubert"], device="cpu"))
    with pytest.raises(MeltError, match="crop_seconds"):
        FeatureCache.create(tmp_path / "cache", wavlm, crop_seconds=3.0)


def test_missing_or_damaged_caches_are_clear_errors(tiny_backbones, small_table, tmp_path):
    with pytest.raises(MeltError, match="features folder not found"):
        FeatureCache.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeltError, match=r"no manifest\.json"):
        FeatureCache.open(tmp_path / "empty")
    backbone = load_backbone(tiny_backbones["wavlm"], device="cpu")
    cache = FeatureCache.create(tmp_path / "cache", backbone)
    extract_features(small_table.iloc[:2], backbone, cache, progress=False)
    shard = next((tmp_path / "cache").glob("pooled-*.npz"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(MeltError, match="unreadable feature shard"):
        FeatureCache.open(tmp_path / "cache")
    manifest = tmp_path / "cache" / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(MeltError, match="unreadable cache manifest"):
        FeatureCache.open(tmp_path / "cache")


def test_a_shard_from_another_cache_is_refused(tiny_backbones, small_table, tmp_path):
    first = load_backbone(tiny_backbones["wavlm"], device="cpu")
    cache = FeatureCache.create(tmp_path / "a", first)
    extract_features(small_table.iloc[:2], first, cache, progress=False)
    egemaps = load_backbone("egemaps")
    other = FeatureCache.create(tmp_path / "b", egemaps)
    extract_features(small_table.iloc[:2], egemaps, other, progress=False)
    shutil.copy(next((tmp_path / "b").glob("pooled-*.npz")), tmp_path / "a" / "pooled-zzz.npz")
    with pytest.raises(MeltError, match="belongs to another cache"):
        FeatureCache.open(tmp_path / "a")


def test_interrupted_extraction_keeps_finished_shards_and_resumes(tiny_backbones, emotion_corpora, tmp_path):
    """A real SIGTERM to a running `melt ser features`: exit 143, finished shards kept, the rerun computes only
    the rest."""
    out = tmp_path / "cache"
    command = [
        sys.executable,
        "-m",
        "melt",
        "ser",
        "features",
        str(emotion_corpora.train_path),
        "--backbone",
        str(tiny_backbones["hubert"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--files-per-shard",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not list(out.glob("pooled-*.npz")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"finished before it could be interrupted: {process.communicate()}"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    kept = FeatureCache.open(out)
    assert 0 < len(kept) < len(emotion_corpora.train)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    kept_shards = {p: p.stat().st_mtime_ns for p in out.glob("pooled-*.npz")}

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in kept_shards} == kept_shards
    # every utterance is in exactly one shard: nothing finished before the interruption was computed again
    entries = [str(k) for shard in out.glob("pooled-*.npz") for k in np.load(shard)["keys"]]
    assert len(entries) == len(set(entries)) == len(emotion_corpora.train)
    assert json.loads((out / "manifest.json").read_text())["backbone"]["name"] == str(
        tiny_backbones["hubert"]
    )
