"""Frame-level features for attention pooling: the layer-weighted hidden states of every frame, cached.

Attention pooling needs every frame, not the per-layer means of the pooled cache. Storing every layer of every
frame costs layers × dim × 2 bytes per frame in float16 (a base model: 13 × 768 × 2 B × 50 frames/s ≈ 3.6 GB per
hour of audio; a large one 9 GB) and training would read all of it every epoch. So the layers are mixed first,
with weights fixed from a first stage (a mean-pooled head trained on the cheap pooled cache, where the weighted
sum is exact, see `melt.ser.distribution_model`), and only the mixed frames are stored: dim × 2 bytes per frame
(base: 277 MB per hour of audio, large: 369 MB; docs/ser.md has the measured figures).

A `FrameStore` lives inside a feature cache's folder, next to the `pooled-*` shards, one per set of layer weights
(`frames-<mix>`, mix = a hash of the float32 weights; the weights are in `frames-<mix>.json`). Entries are keyed
like the pooled cache's, by the SHA-256 of the audio file. A shard is two files: `frames-<mix>-<stamp>.npy`
(float16 [frames, dim], all its utterances' frames one after the other, read memory-mapped) and, written after
it, `frames-<mix>-<stamp>.index.npz` (keys, offsets, lengths, samples). A shard counts only once its index exists,
so an interrupted extraction loses at most the shard being written, and a rerun computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melt import __version__
from melt.acoustics.audio import SAMPLE_RATE
from melt.corpus.schema import atomic_write
from melt.errors import MeltError
from melt.ser.cache import FeatureCache

FRAMES = "frames"
INDEX_SUFFIX = ".index.npz"
DTYPE = np.float16


def mix_id(weights: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(weights, dtype=np.float32).tobytes()).hexdigest()[:12]


class FrameStore:
    """One feature cache's frames mixed with one set of layer weights. Open with `FrameStore.create`."""

    def __init__(self, cache: FeatureCache, weights: Sequence[float]):
        self.cache = cache
        self.folder = cache.folder
        self.weights = np.asarray(weights, dtype=np.float32)
        self.mix = mix_id(self.weights)
        self.prefix = f"{FRAMES}-{self.mix}"
        self._where: dict[str, tuple[int, int, int]] = {}  # key -> (shard, offset, length)
        self._samples: dict[str, int] = {}
        self._data: list[np.ndarray] = []
        self._buffer: list[tuple[str, int, np.ndarray]] = []
        self._load_index()

    @classmethod
    def create(cls, cache: FeatureCache, weights: Sequence[float]) -> FrameStore:
        """The store of `cache` for these layer weights (one per layer of the cache's backbone, summing to 1)."""
        values = np.asarray(weights, dtype=np.float32)
        if cache.manifest["backbone"].get("kind") == "EgemapsBackbone":
            raise MeltError(
                "attention pooling needs an SSL backbone's frames; eGeMAPS functionals have none (use --pooling "
                "mean)",
                file=cache.folder,
            )
        if values.shape != (cache.num_layers,) or not np.all(np.isfinite(values)) or (values < 0).any():
            raise MeltError(
                f"layer weights must be {cache.num_layers} non-negative numbers, got {values.tolist()}",
                file=cache.folder,
            )
        if abs(float(values.sum()) - 1) > 1e-3:
            raise MeltError(f"layer weights must sum to 1, got {values.sum():.6f}", file=cache.folder)
        description = cache.folder / f"{FRAMES}-{mix_id(values)}.json"
        if not description.exists():
            text = json.dumps(
                {
                    "weights": values.tolist(),
                    "dtype": np.dtype(DTYPE).name,
                    "dim": cache.dim,
                    "backbone": cache.manifest["backbone"]["name"],
                    "fingerprint": cache.manifest["fingerprint"],
                    "melt_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            try:
                atomic_write(description, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
            except OSError as exc:
                raise MeltError(
                    f"cannot write the frame store ({exc.strerror or exc})", file=description
                ) from exc
        return cls(cache, values)

    # --- reading ---------------------------------------------------------------------------------------------

    def _indexes(self) -> list[Path]:
        return sorted(
            p for p in self.folder.glob(f"{self.prefix}-*{INDEX_SUFFIX}") if not p.name.startswith(".")
        )

    def _load_index(self) -> None:
        for index in self._indexes():
            data_path = index.with_name(index.name[: -len(INDEX_SUFFIX)] + ".npy")
            try:
                with np.load(index, allow_pickle=False) as found:
                    keys = [str(k) for k in found["keys"]]
                    offsets, lengths, samples = found["offsets"], found["lengths"], found["samples"]
                data = np.load(data_path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:  # numpy and zipfile raise several unrelated types for a damaged file
                raise MeltError(
                    f"unreadable frame shard ({exc}); delete {index.name} and rerun to recompute its utterances",
                    file=index,
                ) from exc
            end = int((offsets + lengths).max()) if len(keys) else 0
            if data.ndim != 2 or data.shape[1] != self.cache.dim or data.shape[0] < end:
                raise MeltError(
                    f"frame shard of shape {data.shape} where {end} frames × {self.cache.dim} were indexed; delete "
                    f"{index.name} and rerun",
                    file=data_path,
                )
            shard = len(self._data)
            self._data.append(data)
            for key, offset, length, n in zip(keys, offsets, lengths, samples, strict=True):
                if key not in self._where:
                    self._where[key] = (shard, int(offset), int(length))
                    self._samples[key] = int(n)

    def __contains__(self, key: str) -> bool:
        return key in self._where or any(k == key for k, _, _ in self._buffer)

    def __len__(self) -> int:
        return len(self._where)

    def frames(self, key: str) -> np.ndarray:
        """[frames, dim] float16, memory-mapped."""
        shard, offset, length = self._where[key]
        return self._data[shard][offset : offset + length]

    def length(self, key: str) -> int:
        return self._where[key][2]

    def samples(self, key: str) -> int:
        return self._samples[key]

    def nbytes(self) -> int:
        """Bytes of frames on disk (the data files of the indexed shards)."""
        return sum(int(d.nbytes) for d in self._data)

    # --- writing ---------------------------------------------------------------------------------------------

    def add(self, key: str, samples: int, frames: np.ndarray) -> None:
        self._buffer.append((key, int(samples), np.asarray(frames, dtype=DTYPE)))

    def flush(self) -> Path | None:
        if not self._buffer:
            return None
        keys = np.array([k for k, _, _ in self._buffer])
        lengths = np.array([len(f) for _, _, f in self._buffer], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        samples = np.array([n for _, n, _ in self._buffer], dtype=np.int64)
        data = np.concatenate([f for _, _, f in self._buffer]).astype(DTYPE)
        stem = f"{self.prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        data_path = self.folder / f"{stem}.npy"
        index_path = self.folder / f"{stem}{INDEX_SUFFIX}"

        def write_data(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.save(handle, data)

        def write_index(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, keys=keys, offsets=offsets, lengths=lengths, samples=samples)

        try:
            # the index last: a shard without one (interrupted between the two) is never read
            atomic_write(data_path, write_data)
            atomic_write(index_path, write_index)
        except OSError as exc:
            raise MeltError(f"cannot write a frame shard ({exc.strerror or exc})", file=data_path) from exc
        shard = len(self._data)
        self._data.append(np.load(data_path, mmap_mode="r", allow_pickle=False))
        for key, offset, length, n in zip(keys, offsets, lengths, samples, strict=True):
            self._where.setdefault(str(key), (shard, int(offset), int(length)))
            self._samples.setdefault(str(key), int(n))
        self._buffer.clear()
        return data_path


class FrameViews:
    """A training data source of frames: `batch` gives (frames [B, T, dim] float32 zero-padded, mask [B, T]).

    In training (with `rng`), an utterance longer than `crop_seconds` is cut to a random window of that length,
    one per epoch (the paper crops training audio to 5 s; here the frames are cropped, so the transformer saw the
    whole utterance); without `rng` (validation, prediction) every frame is used."""

    def __init__(self, store: FrameStore, keys: Sequence[str], *, crop_seconds: float | None = None):
        self.store = store
        self.keys = list(keys)
        self.crop_seconds = crop_seconds

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: np.ndarray) -> FrameViews:
        return FrameViews(self.store, [self.keys[i] for i in indices], crop_seconds=self.crop_seconds)

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None) -> tuple[torch.Tensor, ...]:
        pieces = []
        for i in indices:
            key = self.keys[int(i)]
            frames = self.store.frames(key)
            if rng is not None and self.crop_seconds:
                seconds = self.store.samples(key) / SAMPLE_RATE
                window = (
                    int(np.ceil(len(frames) * self.crop_seconds / seconds)) if seconds > 0 else len(frames)
                )
                if len(frames) > window:
                    start = int(rng.integers(0, len(frames) - window + 1))
                    frames = frames[start : start + window]
            pieces.append(frames)
        longest = max(len(p) for p in pieces)
        out = np.zeros((len(pieces), longest, self.store.cache.dim), dtype=np.float32)
        mask = np.zeros((len(pieces), longest), dtype=bool)
        for row, frames in enumerate(pieces):
            out[row, : len(frames)] = frames
            mask[row, : len(frames)] = True
        return torch.from_numpy(out), torch.from_numpy(mask)


def describe(store: FrameStore) -> dict[str, Any]:
    return {"mix": store.mix, "weights": store.weights.round(6).tolist(), "dtype": np.dtype(DTYPE).name}
