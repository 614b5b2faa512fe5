"""Reading utterance audio as 16 kHz mono, and turning a folder of corpus clips into WAV files.

Every reader failure becomes an `AudioError` carrying a short reason, so batch code can record the reason and go
on with the next file instead of aborting.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from melt.errors import MeltError

SAMPLE_RATE = 16_000
#: A file whose loudest sample stays below this (in dBFS) holds no usable speech.
SILENCE_DBFS = -60.0
#: Extensions libsndfile reads directly; anything else (MP4, MKV, M4A, ...) goes through ffmpeg.
_SOUNDFILE_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au"}
MEDIA_EXTENSIONS = _SOUNDFILE_EXTENSIONS | {".mp4", ".m4a", ".mkv", ".mov", ".avi", ".webm", ".aac", ".opus"}


class AudioError(MeltError):
    """A file that cannot be used as utterance audio; `reason` is the short text batches record."""

    def __init__(self, reason: str, *, file: str | Path | None = None):
        self.reason = reason
        super().__init__(reason, file=file)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The file's audio as float32 mono at `sample_rate`; raises `AudioError` for a missing, empty, truncated,
    undecodable or silent file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("file not found" if not path.exists() else "not a file", file=path)
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)", file=path)
    suffix = path.suffix.lower()
    if suffix in (".wav", ".wave"):
        _check_wav_header(path)
    if suffix in _SOUNDFILE_EXTENSIONS:
        try:
            signal, rate = _read_soundfile(path)
        except AudioError as first:
            # libsndfile rejects some valid files (e.g. WAV with exotic codecs) that ffmpeg decodes.
            try:
                signal, rate = _read_ffmpeg(path, sample_rate)
            except AudioError:
                raise first from None
    else:
        signal, rate = _read_ffmpeg(path, sample_rate)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        divisor = np.gcd(rate, sample_rate)
        signal = resample_poly(signal, sample_rate // divisor, rate // divisor).astype(np.float32)
    if signal.size == 0:
        raise AudioError("no audio samples", file=path)
    if not np.all(np.isfinite(signal)):
        raise AudioError("audio holds NaN or infinite samples", file=path)
    peak = float(np.max(np.abs(signal)))
    if peak == 0 or 20 * np.log10(peak) < SILENCE_DBFS:
        level = "digital silence" if peak == 0 else f"peak {20 * np.log10(peak):.0f} dBFS"
        raise AudioError(f"silent ({level}, below {SILENCE_DBFS:.0f} dBFS)", file=path)
    return signal


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"not readable audio ({_last_line(str(exc))})", file=path) from exc
    return data.mean(axis=1, dtype=np.float32), int(rate)


def _read_ffmpeg(path: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            f"ffmpeg is not installed; it is needed to decode {path.suffix or 'this'} files", file=path
        )
    command = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
    ]
    completed = subprocess.run([*command, "-f", "f32le", "-"], capture_output=True, check=False)
    if completed.returncode != 0:
        message = (
            _last_line(completed.stderr.decode("utf-8", "replace")) or f"exit status {completed.returncode}"
        )
        # ffmpeg prefixes its messages with the input path; the path is already in the error.
        message = message.removeprefix(f"{path}: ")
        raise AudioError(f"not readable audio ({message})", file=path)
    return np.frombuffer(completed.stdout, dtype="<f4").astype(np.float32), sample_rate


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _check_wav_header(path: Path) -> None:
    """libsndfile silently reads a truncated WAV as a shorter one; compare the data chunk's declared size with the
    bytes actually present so a cut-off download is reported instead of analysed."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return  # not RIFF/WAVE: let the decoders say what it is
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                # Streaming writers leave the size at 0 or 0xFFFFFFFF; RF64 keeps the real one elsewhere.
                if chunk_size in (0, 0xFFFFFFFF) or head[:4] == b"RF64":
                    return
                present = size - offset - 8
                if present < chunk_size:
                    raise AudioError(
                        f"truncated WAV: header declares {chunk_size} bytes of audio, file holds {present}",
                        file=path,
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)
    raise AudioError("WAV file has no data chunk (truncated or corrupt header)", file=path)


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in the file, measured from its decoded samples."""
    return len(read_audio(path)) / SAMPLE_RATE


def write_wav(path: str | Path, signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write 16-bit PCM WAV atomically."""
    import soundfile

    from melt.corpus.schema import atomic_write

    return atomic_write(
        path, lambda tmp: soundfile.write(tmp, signal, sample_rate, subtype="PCM_16", format="WAV")
    )


# --- `melt audio extract`: corpus clips -> 16 kHz WAV named by corpus id -------------------------------------

_CLIP_KEY = re.compile(r"dia(\d+)_utt(\d+)$", re.IGNORECASE)


@dataclass
class AudioExtraction:
    """The corpus table with `audio`, `duration` and `audio_problem` filled, and the rows that failed."""

    table: pd.DataFrame
    problems: pd.DataFrame  # id, source, reason

    @property
    def converted(self) -> int:
        return int(self.table["audio_problem"].isna().sum())


def index_clips(clips: str | Path) -> dict[str, list[Path]]:
    """Media files under `clips` by lower-cased stem. macOS `._*` resource forks, which MELD's archive carries
    next to every clip, are skipped."""
    clips = Path(clips)
    if not clips.is_dir():
        raise MeltError("clips folder not found" if not clips.exists() else "not a folder", file=clips)
    index: dict[str, list[Path]] = {}
    for root, _dirs, files in os.walk(clips):
        for name in files:
            if name.startswith("._"):
                continue
            path = Path(root) / name
            if path.suffix.lower() in MEDIA_EXTENSIONS:
                index.setdefault(path.stem.lower(), []).append(path)
    return index


def find_clip(row: pd.Series, index: dict[str, list[Path]], clips: Path) -> Path:
    """The clip of one corpus row: MELD names clips `dia{D}_utt{U}`, and repeats names across split folders
    (`train_splits`, `dev_splits_complete`, `output_repeated_splits_test`), so the split picks among them."""
    if pd.notna(row.get("dialogue_id")) and pd.notna(row.get("utterance_id")):
        stem = f"dia{int(row['dialogue_id'])}_utt{int(row['utterance_id'])}"
    else:
        match = _CLIP_KEY.search(str(row["id"]))
        stem = match.group(0).lower() if match else str(row["id"]).rsplit("/", 1)[-1].lower()
    candidates = index.get(stem.lower(), [])
    split = row.get("split")
    if len(candidates) > 1 and isinstance(split, str) and split:
        in_split = [p for p in candidates if any(split.lower() in part.lower() for part in _parts(p, clips))]
        candidates = in_split or candidates
    if not candidates:
        raise AudioError(f"no clip named {stem}.* under {clips}")
    if len(candidates) > 1:
        shown = ", ".join(str(p.relative_to(clips)) for p in candidates[:3])
        raise AudioError(f"{len(candidates)} clips match {stem} ({shown}); keep one per split folder")
    return candidates[0]


def _parts(path: Path, root: Path) -> tuple[str, ...]:
    return path.relative_to(root).parent.parts


def wav_name(utterance_id: str) -> Path:
    """`train/dia0_utt0` -> `train/dia0_utt0.wav`; anything that could escape the output folder is replaced."""
    parts = [re.sub(r"[^A-Za-z0-9_.+-]", "_", part) for part in str(utterance_id).split("/") if part]
    parts = [part if part not in (".", "..") else "_" for part in parts]
    return Path(*parts).with_suffix(".wav") if parts else Path("_.wav")


def extract_audio(
    corpus: str | Path,
    clips: str | Path,
    out_dir: str | Path,
    *,
    table_out: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> AudioExtraction:
    """Decode each row's clip to `out_dir/<id>.wav` (16 kHz mono PCM) and fill `audio`, `duration` and
    `duration_source` = "audio"; write the table to `table_out` (default: over `corpus`, atomically).

    A row whose clip is missing, corrupt, empty or silent keeps `audio` empty and gets the reason in
    `audio_problem`; the batch goes on. A WAV newer than its clip is reused, so reruns only decode new clips.
    `audio` holds paths relative to the written table's folder when the WAVs lie below it.
    """
    from melt.corpus.schema import read_table, write_table

    corpus = Path(corpus)
    clips = Path(clips)
    out_dir = Path(out_dir)
    table_out = Path(table_out) if table_out is not None else corpus
    table = read_table(corpus)
    index = index_clips(clips)

    def convert(position: int) -> tuple[str | None, float | None, str | None, str | None]:
        row = table.iloc[position]
        source = None
        try:
            source = find_clip(row, index, clips)
            target = out_dir / wav_name(row["id"])
            if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
                import soundfile

                info = soundfile.info(target)
                return str(target), info.frames / info.samplerate, str(source), None
            signal = read_audio(source)
            write_wav(target, signal)
            return str(target), len(signal) / SAMPLE_RATE, str(source), None
        except AudioError as exc:
            return None, None, str(source) if source else None, exc.reason

    results = _map_with_progress(convert, range(len(table)), workers, "Extracting audio", progress)
    table = table.copy()
    problems = []
    problem_column = []
    for position, (target, seconds, source, reason) in enumerate(results):
        if reason is not None:
            problems.append({"id": table.at[position, "id"], "source": source, "reason": reason})
            problem_column.append(reason)
            continue
        table.at[position, "audio"] = _relative_to(Path(target), table_out.parent)
        table.at[position, "duration"] = round(seconds, 4)
        table.at[position, "duration_source"] = "audio"
        problem_column.append(None)
    table["audio_problem"] = pd.Series(problem_column, dtype="string")
    write_table(table, table_out)
    problem_table = pd.DataFrame(problems, columns=["id", "source", "reason"])
    if len(problem_table):
        write_table(problem_table, out_dir / "audio_problems.csv")
    return AudioExtraction(table=table, problems=problem_table)


def _relative_to(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def _map_with_progress(function: Callable, items, workers: int, label: str, progress: bool) -> list:
    """Threads suffice: the work is ffmpeg subprocesses and libsndfile calls, both outside the GIL."""
    from rich.progress import Progress

    items = list(items)
    results: list = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, Progress(disable=not progress) as bar:
        task = bar.add_task(label, total=len(items))
        futures = {pool.submit(function, item): position for position, item in enumerate(items)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.advance(task)
    return results
