"""SER costs on the CPU: the feature cache against recomputing the backbone, extraction throughput, peak memory.

    .venv/bin/python bench/ser.py [--utterances 48] [--recompute-epochs 5] [--threads N]

One run, same data for every measurement: an espeak-ng emotion corpus in the CREMA-D layout (the tests' builder,
read by `load_cremad`) and a
random-weight wav2vec 2.0 model of 4 transformer layers × 256 (CNN 7 × 256 channels), saved and loaded by path.

1. extraction: `extract_features` into a fresh cache (audio seconds per second);
2. cached: the paper's head trained for 100 epochs on the cached features (`train_model`);
3. recomputed: the same head training where every epoch first recomputes the backbone's pooled hidden states
   of every training utterance (what training without a cache costs, frozen backbone). Its epochs all cost
   the same, so `--recompute-epochs` of them are timed and the total for 100 is extrapolated (say 100 to
   time them all).

Each phase runs in its own process, so its peak resident memory (ru_maxrss) is its own; the increase over the
process's memory after imports is printed too. Ratios are against the cached run measured in the same
invocation, with the 1-minute load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from tiny_backbone import rss_mb, save_backbone  # noqa: E402

EPOCHS = 100


def make_inputs(folder: Path, utterances: int) -> tuple[Path, Path]:
    """The corpus table and the saved backbone."""
    sys.path.insert(0, str(REPO / "tests"))
    from transformers.utils import logging

    from corpora import Speech
    from ser.corpora import CREMAD_ACTORS, acted_corpora

    logging.disable_progress_bar()
    per_emotion = max(1, min(4, utterances // (3 * len(CREMAD_ACTORS))))
    (folder / "speech").mkdir()
    table, _, _ = acted_corpora(folder / "corpus", Speech(folder / "speech"), per_emotion=per_emotion)
    model_dir = save_backbone(folder)
    print(f"corpus: {len(table)} utterances, {table['duration'].sum():.1f} s of audio", file=sys.stderr)
    return folder / "corpus" / "cremad.parquet", model_dir


def phase(name: str, corpus: Path, backbone: Path, cache_dir: Path, recompute_epochs: int) -> dict:
    """One measurement, in this process."""
    import numpy as np
    import pandas as pd

    from melt.ser.backbones import load_backbone
    from melt.ser.cache import FeatureCache, extract_features, lookup
    from melt.ser.heads import PooledHead
    from melt.ser.model import train_model
    from melt.ser.training import PooledViews, TrainSettings, fit

    table = pd.read_parquet(corpus)
    audio_seconds = float(table["duration"].sum())
    settings = TrainSettings(epochs=EPOCHS)
    model = load_backbone(str(backbone), device="cpu")
    baseline = rss_mb()
    started = time.perf_counter()
    if name == "extract":
        cache = FeatureCache.create(cache_dir, model)
        result = extract_features(table, model, cache, root=corpus.parent, progress=False)
        assert result.computed == len(table), result.problems
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "audio_seconds": audio_seconds, "rss": rss_mb(), "baseline": baseline}
    if name == "cached":
        trained = train_model(
            cache_dir, table, "label", None, settings=settings, root=corpus.parent, progress=False
        )
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "epochs": EPOCHS,
            "n_train": trained.info["n_train"],
            "rss": rss_mb(),
            "baseline": baseline,
        }
    # recompute: per epoch, pooled features of every utterance from the backbone, then one epoch of the head
    from melt.acoustics.audio import read_audio

    signals = [read_audio(corpus.parent / p if not Path(p).is_absolute() else p) for p in table["audio"]]
    classes = sorted(table["label"].unique())
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    head = PooledHead(model.num_layers, model.dim, len(classes))
    one_epoch = settings.model_copy(update={"epochs": 1})
    cache = FeatureCache.open(cache_dir)
    reference = lookup(cache, table, root=corpus.parent).whole
    started = time.perf_counter()
    for _ in range(recompute_epochs):
        pooled = np.concatenate([model.pooled(signals[i : i + 8]) for i in range(0, len(signals), 8)])
        fit(head, PooledViews(pooled), targets, settings=one_epoch)
    seconds = time.perf_counter() - started
    # the recomputed features are the cached ones: the comparison is of equal work
    assert np.allclose(pooled, reference, rtol=1e-3, atol=1e-4)
    return {"seconds": seconds, "epochs": recompute_epochs, "rss": rss_mb(), "baseline": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=48, help="corpus size (12, 24, 36 or 48)")
    parser.add_argument("--recompute-epochs", type=int, default=5, help="recomputed epochs timed (100: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)

    if args.phase:
        corpus, backbone, cache_dir = (Path(p) for p in args.inputs)
        print(json.dumps(phase(args.phase, corpus, backbone, cache_dir, args.recompute_epochs)))
        return

    with tempfile.TemporaryDirectory(prefix="melt-bench-ser-") as tmp:
        folder = Path(tmp)
        corpus, backbone = make_inputs(folder, args.utterances)
        cache_dir = folder / "cache"
        results = {}
        for name in ("extract", "cached", "recompute"):
            command = [sys.executable, __file__, "--phase", name, "--inputs", str(corpus), str(backbone), str(cache_dir),
                       "--recompute-epochs", str(args.recompute_epochs)]  # fmt: skip
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"phase {name} failed:\n{done.stderr}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])

    import torch

    extract, cached, recompute = results["extract"], results["cached"], results["recompute"]
    recompute_100 = recompute["seconds"] / recompute["epochs"] * EPOCHS
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average (1 min) {load:.2f}, torch threads "
          f"{args.threads or torch.get_num_threads()}")  # fmt: skip
    print(f"backbone: random wav2vec 2.0, 4 layers × 256, CNN 7 × 256; {extract['audio_seconds']:.1f} s of audio, "
          f"{cached['n_train']} training utterances")  # fmt: skip
    print(f"extraction: {extract['seconds']:.2f} s = {extract['audio_seconds'] / extract['seconds']:.1f} audio s/s; "
          f"peak RSS {extract['rss']:.0f} MB (+{extract['rss'] - extract['baseline']:.0f} MB over imports)")  # fmt: skip
    print(f"head, 100 epochs on cached features: {cached['seconds']:.2f} s; peak RSS {cached['rss']:.0f} MB "
          f"(+{cached['rss'] - cached['baseline']:.0f} MB)")  # fmt: skip
    how = (
        "measured"
        if recompute["epochs"] == EPOCHS
        else f"{recompute['epochs']} epochs measured, extrapolated"
    )
    print(f"head, 100 epochs recomputing the backbone: {recompute_100:.1f} s ({how}); peak RSS "
          f"{recompute['rss']:.0f} MB (+{recompute['rss'] - recompute['baseline']:.0f} MB)")  # fmt: skip
    print(f"cache speed-up for training: {recompute_100 / cached['seconds']:.0f}× (target ≥ 20×); cache + training "
          f"vs recomputing: {recompute_100 / (cached['seconds'] + extract['seconds']):.0f}×")  # fmt: skip


if __name__ == "__main__":
    main()
