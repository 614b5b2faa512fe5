"""The attention-pooled distributional head on cached frames versus recomputing the backbone every epoch.

    .venv/bin/python bench/distributions.py [--epochs 5] [--threads N]

One run, same data for every measurement: the tests' graded IEMOCAP-layout corpus (72 espeak-ng utterances, read
by `load_iemocap`, distributions from `melt ambiguity`'s API) and a random-weight wav2vec 2.0 of 4 transformer
layers × 256 (CNN 7 × 256 channels, layer norm), saved and loaded by path.

1. extract: the pooled cache, then the layer-weighted frames (float16, memory-mapped) into a frame store; the
   store's bytes per hour of audio are measured and scaled to base (768) and large (1024) widths (bytes grow
   with the width; the frame rate, 50 per second, is the same for these models);
2. cached: the distributional head (attention pooling, one residual block, jsd-entropy) trained for `--epochs`
   epochs on the cached frames (`FrameViews`, 5-s crops);
3. recomputed: the same head and loss, every epoch recomputing the frozen backbone's hidden states of each batch
   (per-layer states [B, layers, T, dim], the layer weights learned in the head), i.e. training without a frame
   cache.

Each phase runs in its own process, so its peak resident memory (ru_maxrss) is its own; the increase over the
process's memory after loading is printed too. Ratios are against the cached run of the same invocation, with
the 1-minute load average (the machine may be shared).
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

FRAMES_PER_SECOND = 50  # wav2vec 2.0 / HuBERT / WavLM: a frame per 320 samples at 16 kHz


def make_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """The corpus table, its distributions file and the saved backbone."""
    sys.path.insert(0, str(REPO / "tests"))
    from transformers.utils import logging

    from corpora import Speech
    from ser.corpora import graded_iemocap, write_distributions

    logging.disable_progress_bar()
    (folder / "speech").mkdir()
    corpus = graded_iemocap(folder / "corpus", Speech(folder / "speech"))
    distributions = write_distributions(corpus, folder / "corpus")
    model_dir = save_backbone(folder)
    seconds = float(corpus.table["duration"].sum())
    print(f"corpus: {len(corpus.table)} utterances, {seconds:.1f} s of audio", file=sys.stderr)
    return corpus.table_path, distributions, model_dir


def phase(name: str, corpus: Path, distributions: Path, backbone: Path, cache_dir: Path, epochs: int) -> dict:
    """One measurement, in this process."""
    import numpy as np
    import pandas as pd
    import torch

    from melt.ser.backbones import load_backbone
    from melt.ser.cache import FeatureCache, extract_features, lookup
    from melt.ser.distribution_model import read_distributions
    from melt.ser.frames import FrameStore, FrameViews
    from melt.ser.heads import DistributionHead
    from melt.ser.losses import distribution_loss
    from melt.ser.training import TrainSettings, fit

    table = pd.read_parquet(corpus)
    audio_seconds = float(table["duration"].sum())
    model = load_backbone(str(backbone), device="cpu")
    weights = np.full(model.num_layers, 1 / model.num_layers, dtype=np.float32)
    targets, _ = read_distributions(distributions, "human").lookup(table["id"])
    settings = TrainSettings(epochs=epochs, seed=0)
    loss = distribution_loss("jsd-entropy")
    baseline = rss_mb()
    if name == "extract":
        started = time.perf_counter()
        cache = FeatureCache.create(cache_dir, model)
        extract_features(table, model, cache, progress=False)
        pooled_seconds = time.perf_counter() - started
        store = FrameStore.create(cache, weights)
        started = time.perf_counter()
        result = extract_features(table, model, cache, frames=store, progress=False)
        assert result.problems.empty, result.problems
        frames = sum(store.length(k) for k in lookup(cache, table).digests)
        return {
            "pooled_seconds": pooled_seconds,
            "frames_seconds": time.perf_counter() - started,
            "audio_seconds": audio_seconds,
            "frames": frames,
            "frame_bytes": store.nbytes(),
            "disk_bytes": sum(p.stat().st_size for p in cache_dir.glob("frames-*")),
            "dim": model.dim,
            "rss": rss_mb(),
            "baseline": baseline,
        }
    torch.manual_seed(0)
    head = DistributionHead(model.num_layers, model.dim, targets.shape[1])
    if name == "cached":
        cache = FeatureCache.open(cache_dir)
        store = FrameStore(cache, weights)
        head.fix_layer_weights(weights)
        data = FrameViews(store, lookup(cache, table).digests, crop_seconds=5.0)
        started = time.perf_counter()
        fit(head, data, targets, settings=settings, loss=loss)
        return {
            "seconds": time.perf_counter() - started,
            "epochs": epochs,
            "rss": rss_mb(),
            "baseline": baseline,
        }

    # recompute: every batch's per-layer hidden states from the frozen backbone, then the head's step
    from melt.acoustics.audio import read_audio

    signals = [read_audio(p) for p in table["audio"]]

    class Recomputed:
        """A data source that runs the backbone on each batch (what training without a frame cache costs)."""

        def __len__(self) -> int:
            return len(signals)

        def batch(self, indices, rng):
            with torch.inference_mode():
                values, mask = model.batch_inputs([signals[i] for i in indices])
                states, frames = model.hidden_states(values, mask)
            return states.clone(), frames.clone()

    started = time.perf_counter()
    fit(head, Recomputed(), targets, settings=settings, loss=loss)
    return {
        "seconds": time.perf_counter() - started,
        "epochs": epochs,
        "rss": rss_mb(),
        "baseline": baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed in each training phase")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)

    if args.phase:
        corpus, distributions, backbone, cache_dir = (Path(p) for p in args.inputs)
        print(json.dumps(phase(args.phase, corpus, distributions, backbone, cache_dir, args.epochs)))
        return

    with tempfile.TemporaryDirectory(prefix="melt-bench-distributions-") as tmp:
        folder = Path(tmp)
        corpus, distributions, backbone = make_inputs(folder)
        cache_dir = folder / "cache"
        results = {}
        for name in ("extract", "cached", "recompute"):
            command = [sys.executable, __file__, "--phase", name, "--inputs", str(corpus), str(distributions),
                       str(backbone), str(cache_dir), "--epochs", str(args.epochs)]  # fmt: skip
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"phase {name} failed:\n{done.stderr}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])

    import torch

    extract, cached, recompute = results["extract"], results["cached"], results["recompute"]
    hours = extract["audio_seconds"] / 3600
    per_hour = extract["frame_bytes"] / hours
    per_frame = extract["frame_bytes"] / extract["frames"]
    cached_epoch = cached["seconds"] / cached["epochs"]
    recompute_epoch = recompute["seconds"] / recompute["epochs"]
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average (1 min) {load:.2f}, torch threads "
          f"{args.threads or torch.get_num_threads()}")  # fmt: skip
    print(f"backbone: random wav2vec 2.0, 4 layers × 256, CNN 7 × 256; {extract['audio_seconds']:.1f} s of audio, "
          f"{extract['frames']} frames ({extract['frames'] / extract['audio_seconds']:.1f} per second)")  # fmt: skip
    print(f"extraction: pooled cache {extract['pooled_seconds']:.2f} s, frames {extract['frames_seconds']:.2f} s; "
          f"peak RSS {extract['rss']:.0f} MB (+{extract['rss'] - extract['baseline']:.0f} MB)")  # fmt: skip
    print(f"frame store: {extract['frame_bytes'] / 1e6:.2f} MB of frames ({extract['disk_bytes'] / 1e6:.2f} MB on disk "
          f"with indexes) = {per_frame:.0f} B per frame = {per_hour / 1e6:.0f} MB per hour of audio at width "
          f"{extract['dim']}; scaled: base (768) {per_hour / extract['dim'] * 768 / 1e6:.0f} MB/h, large (1024) "
          f"{per_hour / extract['dim'] * 1024 / 1e6:.0f} MB/h; every layer of every frame instead (float16): base "
          f"{13 * 768 * 2 * FRAMES_PER_SECOND * 3600 / 1e9:.1f} GB/h")  # fmt: skip
    print(f"attention head, epoch on cached frames: {cached_epoch:.3f} s; peak RSS {cached['rss']:.0f} MB "
          f"(+{cached['rss'] - cached['baseline']:.0f} MB)")  # fmt: skip
    print(f"attention head, epoch recomputing the backbone: {recompute_epoch:.3f} s; peak RSS {recompute['rss']:.0f} MB "
          f"(+{recompute['rss'] - recompute['baseline']:.0f} MB)")  # fmt: skip
    print(f"frame cache speed-up per epoch: {recompute_epoch / cached_epoch:.1f}×; with the frames' extraction paid "
          f"once, 60 epochs (the paper's cap): {60 * recompute_epoch / (60 * cached_epoch + extract['frames_seconds']):.1f}×")  # fmt: skip


if __name__ == "__main__":
    main()
