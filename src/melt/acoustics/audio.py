"""Reading utterance audio as 16 kHz mono, and turning a folder of corpus clips into WAV files.

Every reader failure becomes an `AudioError` carrying a short reason, so batch code can record the reason and go
on with the next file instead of aborting.
"""

from __future__ import annotations

import os
import re
import shutil
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


def read_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, *, offset: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """The file's audio as float32 mono at `sample_rate`; raises `AudioError` for a missing, empty, truncated,
    undecodable or silent file. `offset` and `duration` (seconds) read only that part, without decoding the
    rest of the file (the silence check then applies to that part)."""
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
            signal, rate = _read_soundfile(path, offset, duration)
        except AudioError as first:
            # libsndfile rejects some valid files (e.g. WAV with exotic codecs) that ffmpeg decodes.
            try:
                signal, rate = _read_ffmpeg(path, sample_rate, offset, duration)
            except AudioError:
                raise first from None
    else:
        signal, rate = _read_ffmpeg(path, sample_rate, offset, duration)
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


def _read_soundfile(path: Path, offset: float = 0.0, duration: float | None = None) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        start, frames = 0, -1
        if offset or duration is not None:
            native = soundfile.info(str(path)).samplerate
            start = round(offset * native)
            frames = -1 if duration is None else max(round(duration * native), 0)
        data, rate = soundfile.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"not readable audio ({_last_line(str(exc))})", file=path) from exc
    return data.mean(axis=1, dtype=np.float32), int(rate)


def _read_ffmpeg(
    path: Path, sample_rate: int, offset: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            f"ffmpeg is not installed; it is needed to decode {path.suffix or 'this'} files", file=path
        )
    part = ["-ss", f"{offset:.6f}"] if offset else []
    part += ["-t", f"{duration:.6f}"] if duration is not None else []
    command = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        *part,
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
    """libsndfile silently reads a truncated WAV as a shorter one; the header check reports a cut-off download
    instead of letting it be analysed."""
    from melt.corpus.audio_files import AudioFileError, wav_header

    try:
        wav_header(path)
    except AudioFileError as exc:
        raise AudioError(exc.reason, file=path) from None


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


_SAFE_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]")
#: Longest file name part written as is; longer ones are cut and end in a hash of the whole part.
_MAX_PART = 150
#: Where `melt audio extract` records which clip each WAV came from, to reuse a WAV only for its own clip.
SOURCES_FILE = ".melt-audio-sources.json"


def wav_name(utterance_id: str) -> Path:
    """The WAV path (relative to the output folder) of one id: `train/dia0_utt0` -> `train/dia0_utt0.wav`.

    Distinct ids always get distinct names: `/` separates folders, letters, digits, `_`, `.` and `-` stay, and
    every other character becomes `+` and its UTF-8 bytes in hex (`a b` -> `a+20b`, `a?b` -> `a+3Fb`, `a+b` ->
    `a+2Bb`); an empty part is `+`, a part `.` or `..` is escaped, so nothing escapes the output folder."""
    pieces = str(utterance_id).split("/")
    parts = [_escape_part(piece, folder=i < len(pieces) - 1) for i, piece in enumerate(pieces)]
    return Path(*parts[:-1], parts[-1] + ".wav")


def _escape_part(part: str, *, folder: bool) -> str:
    if not part:
        return "+"
    if part in (".", ".."):
        return part.replace(".", "+2E")  # would leave the folder
    escaped = "".join(
        c if _SAFE_NAME_CHARS.match(c) else "".join(f"+{b:02X}" for b in c.encode()) for c in part
    )
    if folder and escaped.lower().endswith(".wav"):
        escaped = (
            escaped[:-4] + "+2E" + escaped[-3:]
        )  # a folder `x.wav` would clash with the WAV of the id `x`
    if len(escaped) > _MAX_PART:
        import hashlib

        # `~` never appears in an escaped part, so a cut name cannot equal an uncut one.
        escaped = escaped[:_MAX_PART] + "~" + hashlib.sha256(part.encode()).hexdigest()[:16]
    return escaped


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
    `audio_problem`; the batch goes on. Each id has its own WAV name (`wav_name`). A WAV already in `out_dir` is
    reused only when `out_dir/.melt-audio-sources.json` records that it was made from this very clip (same path,
    size and modification time) and the WAV itself is unchanged; otherwise the clip is decoded again, so reruns
    only decode new or changed clips. `audio` holds paths relative to the written table's folder when the WAVs
    lie below it.
    """
    from melt.corpus.audio_files import AudioFileError, header_duration
    from melt.corpus.schema import read_table, write_table

    corpus = Path(corpus)
    clips = Path(clips)
    out_dir = Path(out_dir)
    table_out = Path(table_out) if table_out is not None else corpus
    table = read_table(corpus)
    index = index_clips(clips)
    sources = _read_sources(out_dir)

    def convert(position: int) -> tuple[str | None, float | None, str | None, str | None, dict | None]:
        row = table.iloc[position]
        source = None
        try:
            source = find_clip(row, index, clips)
            name = wav_name(row["id"])
            target = out_dir / name
            made_from = _stamp(source, "source")
            if target.is_file() and sources.get(name.as_posix()) == {**made_from, **_stamp(target, "wav")}:
                try:
                    return str(target), header_duration(target), str(source), None, None
                except AudioFileError:
                    pass  # an unreadable WAV is made again
            signal = read_audio(source)
            write_wav(target, signal)
            record = {name.as_posix(): {**made_from, **_stamp(target, "wav")}}
            return str(target), len(signal) / SAMPLE_RATE, str(source), None, record
        except AudioError as exc:
            return None, None, str(source) if source else None, exc.reason, None

    results = _map_with_progress(convert, range(len(table)), workers, "Extracting audio", progress)
    for *_, record in results:
        sources.update(record or {})
    _write_sources(out_dir, sources)
    table = table.copy()
    problems = []
    problem_column = []
    for position, (target, seconds, source, reason, _record) in enumerate(results):
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


def _stamp(path: Path, prefix: str) -> dict:
    """What identifies a file's content cheaply: where it is, its size and modification time."""
    stat = path.stat()
    return {
        f"{prefix}": str(path.resolve()),
        f"{prefix}_size": stat.st_size,
        f"{prefix}_mtime_ns": stat.st_mtime_ns,
    }


def _read_sources(out_dir: Path) -> dict[str, dict]:
    import json

    try:
        sources = json.loads((out_dir / SOURCES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: every WAV is made again
    return sources if isinstance(sources, dict) else {}


def _write_sources(out_dir: Path, sources: dict[str, dict]) -> None:
    import json

    from melt.corpus.schema import atomic_write

    text = json.dumps(sources, indent=1, sort_keys=True)
    atomic_write(out_dir / SOURCES_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
