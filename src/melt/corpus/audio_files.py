"""Audio lengths from file headers, for loaders that point a table at thousands of files.

Reading the header costs one small read per file, where decoding the audio would cost the whole file. A broken
file raises `AudioFileError` with a short `reason`, so a loader can list it and go on with the next one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from melt.errors import MeltError

#: WAVE format tags whose frames are `data bytes / block align`: PCM, IEEE float, A-law, mu-law, extensible.
_FRAMED_FORMATS = {0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE}
#: Streaming writers leave the data size at one of these and never come back to fix it.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF}


class AudioFileError(MeltError):
    """A file whose header does not give a usable length; `reason` is the short text tables record."""

    def __init__(self, reason: str, *, file: str | Path | None = None):
        self.reason = reason
        super().__init__(reason, file=file)


@dataclass(frozen=True)
class WavHeader:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def wav_header(path: str | Path) -> WavHeader | None:
    """The header of a RIFF/WAVE file; None for anything else (RF64, compressed WAVE codecs, other formats),
    which `header_duration` leaves to libsndfile. Raises `AudioFileError` for a WAVE file that is cut off or
    has no usable `fmt ` or `data` chunk."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        fmt: tuple[int, int, int, int] | None = None
        data: tuple[int, int] | None = None  # (offset of the samples, declared size)
        offset = 12
        while offset + 8 <= size and (fmt is None or data is None):
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"fmt ":
                body = handle.read(16)
                if len(body) < 16:
                    break  # cut off inside the header: reported below as a missing data chunk
                tag, channels, rate, _byte_rate, block_align = struct.unpack("<HHIIH", body[:14])
                fmt = (tag, channels, rate, block_align)
            elif chunk_id == b"data":
                data = (offset + 8, chunk_size)
                if chunk_size in _UNKNOWN_SIZES:
                    break  # the samples run to the end of the file
            offset += 8 + chunk_size + (chunk_size & 1)
    if data is None:
        raise AudioFileError("WAV file has no data chunk (truncated or corrupt header)", file=path)
    start, declared = data
    present = size - start
    if declared in _UNKNOWN_SIZES:
        declared = present
    elif present < declared:
        raise AudioFileError(
            f"truncated WAV: header declares {declared} bytes of audio, file holds {present}", file=path
        )
    if fmt is None:
        raise AudioFileError("WAV file has no fmt chunk (corrupt header)", file=path)
    tag, channels, rate, block_align = fmt
    if tag not in _FRAMED_FORMATS:
        return None
    if rate == 0 or channels == 0 or block_align == 0:
        raise AudioFileError(
            f"WAV header is corrupt ({rate} Hz, {channels} channels, block align {block_align})", file=path
        )
    return WavHeader(sample_rate=rate, channels=channels, frames=declared // block_align)


def header_duration(path: str | Path) -> float:
    """Seconds of audio in a file, from its header; raises `AudioFileError` when the file cannot give one
    (missing, empty, cut off, not audio, no samples)."""
    path = Path(path)
    if not path.exists():
        raise AudioFileError("file not found", file=path)
    if not path.is_file():
        raise AudioFileError("not a file", file=path)
    try:
        if path.stat().st_size == 0:
            raise AudioFileError("empty file (0 bytes)", file=path)
        header = wav_header(path)
    except PermissionError as exc:
        raise AudioFileError("permission denied", file=path) from exc
    except OSError as exc:
        raise AudioFileError(f"cannot read ({exc.strerror or exc})", file=path) from exc
    if header is not None:
        frames, rate = header.frames, header.sample_rate
    else:
        frames, rate = _soundfile_frames(path)
    if frames <= 0:
        raise AudioFileError("no audio samples", file=path)
    return frames / rate


def _soundfile_frames(path: Path) -> tuple[int, int]:
    try:
        import soundfile
    except ImportError as exc:
        raise AudioFileError(
            f"reading {path.suffix or 'this'} headers needs soundfile: pip install 'melt-toolkit[acoustics]'",
            file=path,
        ) from exc
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        message = lines[-1].removeprefix(f"Error opening {str(path)!r}: ")
        raise AudioFileError(f"not readable audio ({message})", file=path) from exc
    return int(info.frames), int(info.samplerate)


@dataclass
class Measured:
    """Durations of a list of files, None where the file gave a reason instead."""

    durations: list[float | None]
    reasons: list[str | None]


def measure(paths: Sequence[str | Path], *, progress: bool = False) -> Measured:
    """`header_duration` of every path, with a progress bar on stderr when asked."""
    from rich.progress import Progress

    from melt import terminal

    durations: list[float | None] = []
    reasons: list[str | None] = []
    with Progress(console=terminal.console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("Reading audio headers", total=len(paths))
        for path in paths:
            try:
                durations.append(header_duration(path))
                reasons.append(None)
            except AudioFileError as exc:
                durations.append(None)
                reasons.append(exc.reason)
            bar.advance(task)
    return Measured(durations=durations, reasons=reasons)
