"""The feature cache: per utterance and layer, the backbone's mean-pooled hidden state, computed once.

A cache is a folder for one backbone and one set of settings, described by `manifest.json` (backbone name and
fingerprint, layers, dim, sample rate, pooling, crop length and seed). Entries are keyed by the SHA-256 of the
audio file's bytes, so the same clip under two ids or in two corpora is computed once, and a changed file is
recomputed. Crops of long utterances are entries `<sha256>:crop<k>`. Entries live in shards
(`pooled-*.npz`: `keys`, `samples`, `pooled` [n, layers, dim] float32), each written atomically after a chunk of
files, so an interrupted extraction keeps every finished shard and a rerun computes only what is missing.
`audio_hashes.parquet` remembers each file's hash by path, size, modification and change time, so reruns
and `melt ser train` do not re-read every file to hash it.

Why mean-pooled per layer is exact for the paper's head: the head sees mean_t(Σ_l w_l h_lt) and its first Linear
is affine, so Σ_l w_l mean_t(h_lt) is the same vector whatever weights w the training learns.

Frame-level features for attention pooling are another kind of shard in the same folder (`frames-<mix>-*`, see
`melt.ser.frames`), keyed the same way; `POOLED` names this kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from melt import __version__
from melt.acoustics.audio import SAMPLE_RATE, AudioError, read_audio
from melt.corpus.schema import atomic_write, write_table
from melt.errors import MeltError
from melt.ser.backbones import MAX_SECONDS, Backbone

if TYPE_CHECKING:
    from melt.ser.frames import FrameStore

MANIFEST = "manifest.json"
HASHES = "audio_hashes.parquet"
#: sha256 -> reason, for audio the last extraction could not use (so training can say why a row has no features)
FAILURES = "failures.parquet"
POOLED = "pooled"
CACHE_FORMAT = 1
#: The paper crops or pads training audio to 5 s.
CROP_SECONDS = 5.0
#: Bytes of shards a FeatureCache keeps in memory once read.
MEMORY_BUDGET = 4 << 30
#: How an utterance becomes one vector per layer (part of a cache's identity).
POOLING = (
    f"mean over valid frames, per layer; utterances over {MAX_SECONDS} s: frame-weighted mean of windows"
)
#: Settings that must match for two extractions to share a cache.
IDENTITY_KEYS = (
    "format",
    "fingerprint",
    "num_layers",
    "dim",
    "sample_rate",
    "pooling",
    "crop_seconds",
    "crop_seed",
)


def crop_key(digest: str, crop: int) -> str:
    return f"{digest}:crop{crop}"


class FeatureCache:
    """One backbone's pooled features, keyed by audio content. Open with `open` (read) or `create` (write)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self._where: dict[str, tuple[Path, int]] = {}
        self._samples: dict[str, int] = {}
        self._buffer: list[tuple[str, int, np.ndarray]] = []
        # shards already read, kept while they fit the budget: an experiment reads the same ones for every run
        self._loaded: dict[Path, np.ndarray] = {}
        self._loaded_bytes = 0
        self._backbone: Backbone | None = None
        self._load_index()

    # --- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path) -> FeatureCache:
        folder = Path(folder)
        if not folder.is_dir():
            raise MeltError(
                "features folder not found (make it with `melt ser features`)"
                if not folder.exists()
                else "not a folder",
                file=folder,
            )
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise MeltError(
                f"not a feature cache: no {MANIFEST} (make it with `melt ser features`)", file=folder
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MeltError(f"unreadable cache manifest ({exc})", file=manifest_path) from exc
        missing = [k for k in IDENTITY_KEYS if k not in manifest]
        if missing or manifest.get("format") != CACHE_FORMAT:
            raise MeltError(
                f"cache manifest of another format (missing {missing}, format {manifest.get('format')!r}); "
                "extract the features again into a new folder",
                file=manifest_path,
            )
        return cls(folder, manifest)

    @classmethod
    def create(
        cls,
        folder: str | Path,
        backbone: Backbone,
        *,
        crop_seconds: float = CROP_SECONDS,
        crop_seed: int = 0,
    ) -> FeatureCache:
        """Open the cache in `folder` for `backbone`, creating it if needed; a folder holding another backbone's
        or other settings' features is refused (mixing them would train on the wrong vectors)."""
        folder = Path(folder)
        manifest = {
            "format": CACHE_FORMAT,
            "backbone": backbone.description(),
            "fingerprint": backbone.fingerprint,
            "num_layers": backbone.num_layers,
            "dim": backbone.dim,
            "sample_rate": SAMPLE_RATE,
            "pooling": POOLING,
            "crop_seconds": float(crop_seconds),
            "crop_seed": int(crop_seed),
            "melt_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if (folder / MANIFEST).exists():
            existing = cls.open(folder)
            differing = {
                k: (existing.manifest[k], manifest[k])
                for k in IDENTITY_KEYS
                if existing.manifest[k] != manifest[k]
            }
            if differing:
                shown = "; ".join(f"{k}: cache has {a!r}, asked {b!r}" for k, (a, b) in differing.items())
                raise MeltError(
                    f"this feature cache holds {existing.manifest['backbone']['name']!r} features with other "
                    f"settings ({shown}); use another folder",
                    file=folder,
                )
            return existing
        if folder.exists() and not folder.is_dir():
            raise MeltError("exists and is not a folder", file=folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
        except OSError as exc:
            raise MeltError(f"cannot write the feature cache ({exc.strerror or exc})", file=folder) from exc
        return cls(folder, manifest)

    # --- reading ---------------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def crop_samples(self) -> int:
        return round(self.manifest["crop_seconds"] * self.manifest["sample_rate"])

    @property
    def backbone_name(self) -> str:
        return str(self.manifest["backbone"]["name"])

    def backbone(self, device: str = "auto") -> Backbone:
        """The backbone this cache was made with (loaded once by its name), for audio the cache does not hold yet
        (augmented rows, frames); refused when its weights are no longer the ones the cache was made with."""
        if self._backbone is None:
            from melt.ser.backbones import load_backbone

            self.use_backbone(load_backbone(self.backbone_name, device=device))
        return self._backbone

    def use_backbone(self, backbone: Backbone) -> None:
        """Use this already loaded backbone for `backbone()` (it must be the cache's)."""
        if backbone.fingerprint != self.manifest["fingerprint"]:
            raise MeltError(
                f"this cache was made with {self.backbone_name!r} ({self.manifest['fingerprint']}); the backbone "
                f"loaded now is {backbone.fingerprint}: extract the features again into a new folder",
                file=self.folder,
            )
        self._backbone = backbone

    def _shards(self) -> list[Path]:
        return sorted(p for p in self.folder.glob(f"{POOLED}-*.npz") if not p.name.startswith("."))

    def _load_index(self) -> None:
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys = [str(k) for k in data["keys"]]
                    samples = data["samples"]
                    shape = data["pooled"].shape
            except Exception as exc:  # numpy and zipfile raise several unrelated types for a damaged file
                raise MeltError(
                    f"unreadable feature shard ({exc}); delete it and rerun `melt ser features` to recompute "
                    "its utterances",
                    file=shard,
                ) from exc
            if shape[1:] != (self.num_layers, self.dim) or len(keys) != shape[0]:
                raise MeltError(
                    f"feature shard of shape {shape} in a cache of {self.num_layers} layers × {self.dim}; it "
                    "belongs to another cache: delete it",
                    file=shard,
                )
            for row, (key, n) in enumerate(zip(keys, samples, strict=True)):
                if key not in self._where:
                    self._where[key] = (shard, row)
                    self._samples[key] = int(n)

    def __contains__(self, key: str) -> bool:
        return key in self._where or any(k == key for k, _, _ in self._buffer)

    def __len__(self) -> int:
        return len(self._where)

    def failures(self) -> dict[str, str]:
        """Audio content the extractions could not use, with the reason."""
        path = self.folder / FAILURES
        if not path.is_file():
            return {}
        try:
            frame = pd.read_parquet(path)
            return dict(zip(frame["sha256"], frame["reason"], strict=True))
        except Exception:  # a damaged list only loses the reasons
            return {}

    def record_failures(self, failures: dict[str, str]) -> None:
        if not failures and not (self.folder / FAILURES).exists():
            return
        merged = {k: v for k, v in self.failures().items() if k not in self._where}
        merged.update(failures)
        frame = pd.DataFrame(list(merged.items()), columns=["sha256", "reason"])
        try:
            write_table(frame, self.folder / FAILURES)
        except OSError as exc:
            raise MeltError(f"cannot write ({exc.strerror or exc})", file=self.folder / FAILURES) from exc

    def samples(self, key: str) -> int:
        """Length in samples of the audio behind an entry."""
        return self._samples[key]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """[len(keys), layers, dim] float32 for entries that are all present (flushed)."""
        missing = [k for k in keys if k not in self._where]
        if missing:
            raise KeyError(f"{len(missing)} entries not in the cache, e.g. {missing[0]}")
        out = np.empty((len(keys), self.num_layers, self.dim), dtype=np.float32)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = self._where[key]
            by_shard.setdefault(shard, []).append((position, row))
        for shard, pairs in by_shard.items():
            pooled = self._loaded.get(shard)
            if pooled is None:
                try:
                    with np.load(shard, allow_pickle=False) as data:
                        pooled = data["pooled"]
                except Exception as exc:  # changed on disk since the index was read
                    raise MeltError(
                        f"unreadable feature shard ({exc}); delete it and rerun", file=shard
                    ) from exc
                if self._loaded_bytes + pooled.nbytes <= MEMORY_BUDGET:
                    self._loaded[shard] = pooled
                    self._loaded_bytes += pooled.nbytes
            positions, rows = zip(*pairs, strict=True)
            out[list(positions)] = pooled[list(rows)]
        return out

    # --- writing ---------------------------------------------------------------------------------------------

    def add(self, key: str, samples: int, pooled: np.ndarray) -> None:
        """Buffer one entry; `flush` writes the buffer as a shard."""
        self._buffer.append((key, int(samples), np.asarray(pooled, dtype=np.float32)))

    def flush(self) -> Path | None:
        if not self._buffer:
            return None
        keys = np.array([k for k, _, _ in self._buffer])
        samples = np.array([n for _, n, _ in self._buffer], dtype=np.int64)
        pooled = np.stack([p for _, _, p in self._buffer])
        shard = self.folder / f"{POOLED}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, keys=keys, samples=samples, pooled=pooled)

        try:
            atomic_write(shard, write)
        except OSError as exc:
            raise MeltError(f"cannot write a feature shard ({exc.strerror or exc})", file=shard) from exc
        for row, key in enumerate(keys):
            self._where.setdefault(str(key), (shard, row))
            self._samples.setdefault(str(key), int(samples[row]))
        self._buffer.clear()
        return shard


# --- audio paths and content hashes ---------------------------------------------------------------------------


def audio_paths(table: pd.DataFrame, base: Path) -> list[Path | None]:
    """Each row's audio file (relative paths against `base`, the table's folder), None where there is none."""
    if "audio" not in table.columns:
        return [None] * len(table)
    paths: list[Path | None] = []
    for value in table["audio"]:
        if pd.isna(value) or not str(value).strip():
            paths.append(None)
            continue
        path = Path(str(value)).expanduser()
        paths.append(path if path.is_absolute() else base / path)
    return paths


def audio_hashes(
    paths: Sequence[Path | None], memo_folder: Path | None
) -> tuple[list[str | None], list[str | None]]:
    """(sha256 or None, reason or None) per path. Hashes of unchanged files (same size, modification time and
    inode change time) come from `memo_folder/audio_hashes.parquet`, which is updated when the folder is
    writable. The change time is there because size and modification time survive a rewrite (same-length audio,
    the time restored by cp -p, rsync -t or tar) while the change time cannot be set back."""
    from melt.acoustics.features import file_sha256

    memo: dict[str, tuple[int, int, int, str]] = {}
    memo_path = memo_folder / HASHES if memo_folder is not None else None
    if memo_path is not None and memo_path.is_file():
        try:
            frame = pd.read_parquet(memo_path)
            memo = {
                p: (int(s), int(m), int(c), h)
                for p, s, m, c, h in zip(
                    frame["path"],
                    frame["size"],
                    frame["mtime_ns"],
                    frame["ctime_ns"],
                    frame["sha256"],
                    strict=True,
                )
            }
        except Exception:  # a damaged memo, or one of an older format, only costs re-hashing
            memo = {}
    hashes: list[str | None] = []
    reasons: list[str | None] = []
    changed = False
    for path in paths:
        if path is None:
            hashes.append(None)
            reasons.append("no audio path")
            continue
        try:
            stat = path.stat()
        except OSError as exc:
            hashes.append(None)
            reasons.append("file not found" if not path.exists() else f"cannot read file ({exc.strerror})")
            continue
        if not path.is_file():
            hashes.append(None)
            reasons.append("not a file")
            continue
        key = str(path.resolve())
        known = memo.get(key)
        if known is not None and known[:3] == (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns):
            hashes.append(known[3])
            reasons.append(None)
            continue
        try:
            digest = file_sha256(path)
        except OSError as exc:
            hashes.append(None)
            reasons.append(f"cannot read file ({exc.strerror})")
            continue
        memo[key] = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest)
        changed = True
        hashes.append(digest)
        reasons.append(None)
    if changed and memo_path is not None:
        frame = pd.DataFrame(
            [(p, *known) for p, known in memo.items()],
            columns=["path", "size", "mtime_ns", "ctime_ns", "sha256"],
        )
        # a read-only cache still works; hashing just repeats next time
        with contextlib.suppress(OSError):
            write_table(frame, memo_path)
    return hashes, reasons


def audio_content_key(table: pd.DataFrame, base: Path, memo_folder: Path | None) -> str:
    """SHA-256 over each row's id and audio content hash (or why it has none): what a run's result depends on
    besides the table's own bytes, since a re-recorded clip keeps its path and its row."""
    hashes, reasons = audio_hashes(audio_paths(table, base), memo_folder)
    ids = table["id"].astype(str) if "id" in table.columns else pd.Series(range(len(table))).astype(str)
    digest = hashlib.sha256()
    for identifier, content, reason in zip(ids, hashes, reasons, strict=True):
        digest.update(f"{identifier}\t{content or reason}\n".encode())
    return digest.hexdigest()


# --- extraction -----------------------------------------------------------------------------------------------


@dataclass
class ExtractionResult:
    """What one extraction did: entries computed and reused, and the rows skipped with the reason."""

    computed: int
    reused: int
    #: id, audio, reason: rows without features (missing, unreadable, silent, too short audio)
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["id", "audio", "reason"]))


@dataclass
class _Item:
    key: str
    signal: np.ndarray
    samples: int  # of the whole utterance (for a crop: of the crop)


def crop_signal(signal: np.ndarray, digest: str, crop: int, crop_samples: int, seed: int) -> np.ndarray:
    """Crop `crop` of an utterance longer than `crop_samples`: a start drawn uniformly, seeded by the audio's
    content, the crop index and the cache's crop seed, so every rerun cuts the same crops."""
    rng = np.random.default_rng([seed, int(digest[:15], 16), crop])
    start = int(rng.integers(0, len(signal) - crop_samples + 1))
    return signal[start : start + crop_samples]


def extract_features(
    table: pd.DataFrame,
    backbone: Backbone,
    cache: FeatureCache,
    *,
    root: str | Path = ".",
    crops: int = 0,
    crop_rows: Sequence[bool] | None = None,
    batch_seconds: float = 60.0,
    files_per_shard: int = 64,
    progress: bool = True,
    frames: FrameStore | None = None,
) -> ExtractionResult:
    """Compute the missing entries of `table`'s audio into `cache`: each utterance whole, and `crops` random
    crops of `cache`'s crop length for the rows of `crop_rows` (default all) longer than that length (a shorter
    utterance's crop is the whole utterance, padding masked, which is its whole entry).

    With `frames` (a `melt.ser.frames.FrameStore` of this cache), the missing layer-weighted frames of each
    utterance go into that store instead (no crops).

    Files are read as 16 kHz mono (`read_audio`); a missing, unreadable, silent, NaN or too short file is
    listed in the result's `problems` and skipped. Batches hold at most `batch_seconds` of padded audio
    (signals sorted by length, so padding stays small). A shard is written after every `files_per_shard`
    files and when interrupted, so a rerun continues where this one stopped.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if crops < 0:
        raise MeltError(f"--crops must be 0 or more, got {crops}")
    if frames is not None and crops:
        raise MeltError("frames are cached for whole utterances only (no crops)")
    target = cache if frames is None else frames
    if batch_seconds <= 0:
        raise MeltError(f"--batch-seconds must be positive, got {batch_seconds}")
    if "audio" not in table.columns:
        raise MeltError(f"the corpus table has no `audio` column (columns: {list(table.columns)})")
    table = table.reset_index(drop=True)
    ids = table["id"].astype(str).tolist() if "id" in table.columns else [str(i) for i in range(len(table))]
    paths = audio_paths(table, Path(root))
    hashes, reasons = audio_hashes(paths, cache.folder)
    wanted_crops = [crops if (crop_rows is None or crop_rows[i]) else 0 for i in range(len(table))]

    # one unit of work per distinct audio content: its whole entry and the crops any of its rows asks for
    work: dict[str, tuple[Path, int]] = {}
    reused = 0
    for i, digest in enumerate(hashes):
        if digest is None:
            continue
        needs_crops = wanted_crops[i] and not (
            digest in cache and cache.samples(digest) <= cache.crop_samples
        )
        missing = digest not in target or (
            needs_crops and any(crop_key(digest, k) not in cache for k in range(wanted_crops[i]))
        )
        if missing:
            path, k = work.get(digest, (paths[i], 0))
            work[digest] = (path, max(k, wanted_crops[i]))
        else:
            reused += 1

    file_problems: dict[str, str] = {}
    computed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    todo = list(work.items())
    with Progress(*columns, console=console, disable=not progress) as bar:
        kind = "Features" if frames is None else "Frames"
        task = bar.add_task(f"{kind} ({backbone.name})", total=len(todo))
        try:
            for start in range(0, len(todo), files_per_shard):
                items: list[_Item] = []
                for digest, (path, n_crops) in todo[start : start + files_per_shard]:
                    try:
                        signal = read_audio(path)
                    except AudioError as exc:
                        file_problems[digest] = exc.reason
                        continue
                    if len(signal) < backbone.min_samples:
                        file_problems[digest] = (
                            f"too short for the backbone ({1000 * len(signal) / SAMPLE_RATE:.0f} ms; at least "
                            f"{1000 * backbone.min_samples / SAMPLE_RATE:.0f} ms)"
                        )
                        continue
                    if digest not in target:
                        items.append(_Item(digest, signal, len(signal)))
                    if n_crops and len(signal) > cache.crop_samples:
                        for k in range(n_crops):
                            if crop_key(digest, k) not in cache:
                                cropped = crop_signal(
                                    signal, digest, k, cache.crop_samples, int(cache.manifest["crop_seed"])
                                )
                                items.append(_Item(crop_key(digest, k), cropped, len(cropped)))
                for batch in _batches(items, batch_seconds, backbone.can_pad()):
                    signals = [item.signal for item in batch]
                    values = (
                        backbone.pooled(signals)
                        if frames is None
                        else backbone.mixed_frames(signals, frames.weights)
                    )
                    for item, vector in zip(batch, values, strict=True):
                        if not np.all(np.isfinite(vector)):
                            file_problems[item.key.split(":")[0]] = (
                                "the backbone gave NaN or infinite features"
                            )
                            continue
                        target.add(item.key, item.samples, vector)
                        computed += 1
                target.flush()
                bar.advance(task, len(todo[start : start + files_per_shard]))
        finally:
            # entries computed before an interruption are kept
            target.flush()
            cache.record_failures(file_problems)

    problems = []
    for i, digest in enumerate(hashes):
        reason = reasons[i] if digest is None else file_problems.get(digest)
        if reason is not None:
            problems.append({"id": ids[i], "audio": str(paths[i]) if paths[i] else None, "reason": reason})
    frame = pd.DataFrame(problems, columns=["id", "audio", "reason"])
    return ExtractionResult(computed=computed, reused=reused, problems=frame)


def _batches(items: list[_Item], batch_seconds: float, can_pad: bool) -> list[list[_Item]]:
    """Sorted by length, cut where the padded batch would exceed the budget (or, for backbones that cannot pad,
    where the length changes). A signal longer than the budget is a batch of its own."""
    budget = batch_seconds * SAMPLE_RATE
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    for item in sorted(items, key=lambda it: len(it.signal)):
        longest = len(item.signal)
        fits = (len(current) + 1) * longest <= budget
        same = not current or can_pad or len(current[-1].signal) == longest
        if current and (not fits or not same):
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


# --- lookup for training and evaluation -----------------------------------------------------------------------


@dataclass
class PooledTable:
    """The pooled features of a table's rows: `whole` [rows, layers, dim] for the rows in `present`, and the
    training views (each row's crops, or its whole utterance) as one array with per-row offsets and counts."""

    present: np.ndarray  # bool per table row: features found
    whole: np.ndarray
    views: np.ndarray
    view_offsets: np.ndarray
    view_counts: np.ndarray
    #: id, audio, reason of the rows without features
    problems: pd.DataFrame
    digests: list[str | None]


def lookup(
    cache: FeatureCache,
    table: pd.DataFrame,
    *,
    root: str | Path = ".",
    with_crops: bool = False,
) -> PooledTable:
    """Find each row's entries. With `with_crops`, a row's training views are its cached crops (all of them,
    one drawn per epoch); rows without crops (shorter than the crop length, or not cropped) use the whole
    utterance."""
    table = table.reset_index(drop=True)
    paths = audio_paths(table, Path(root))
    hashes, reasons = audio_hashes(paths, cache.folder if os.access(cache.folder, os.W_OK) else None)
    present = np.zeros(len(table), dtype=bool)
    problems = []
    failures = cache.failures()
    for i, digest in enumerate(hashes):
        if digest is not None and digest in cache:
            present[i] = True
            continue
        reason = reasons[i] or failures.get(
            digest, "no features in the cache (run `melt ser features` on this table)"
        )
        problems.append(
            {"id": str(table["id"].iloc[i]), "audio": str(paths[i]) if paths[i] else None, "reason": reason}
        )
    keys = [hashes[i] for i in np.flatnonzero(present)]
    whole = cache.get(keys) if keys else np.empty((0, cache.num_layers, cache.dim), dtype=np.float32)
    if with_crops:
        view_keys: list[str] = []
        counts = []
        for digest in keys:
            crops = []
            while crop_key(digest, len(crops)) in cache:
                crops.append(crop_key(digest, len(crops)))
            crops = crops or [digest]
            view_keys += crops
            counts.append(len(crops))
        views = cache.get(view_keys) if view_keys else whole
        view_counts = np.asarray(counts, dtype=np.int64)
    else:
        views = whole
        view_counts = np.ones(len(keys), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(view_counts)[:-1]]).astype(np.int64)
    return PooledTable(
        present=present,
        whole=whole,
        views=views,
        view_offsets=offsets,
        view_counts=view_counts,
        problems=pd.DataFrame(problems, columns=["id", "audio", "reason"]),
        digests=hashes,
    )
