"""Real test audio: espeak-ng speech with controlled pitch, amplitude and speed, resampled by sox."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: Everyday sitcom-style lines (written for melt) for the synthetic corpora of the tests and bench/acoustics.py.
SENTENCES = [
    "I can't believe you did that to me again.",
    "Could this meeting be any longer than it already is?",
    "We were on a break, and everybody knows it.",
    "She is moving to Paris next week with her sister.",
    "The coffee shop was closed when we finally got there.",
    "Nobody told me the party started at seven o'clock.",
]


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (Debian: apt-get install espeak-ng sox ffmpeg)")


def synthesise(
    path: Path,
    text: str,
    *,
    voice: str = "en-us",
    pitch: int = 55,
    amplitude: int = 100,
    speed: int = 175,
    rate: int = 16000,
) -> Path:
    """espeak-ng speech resampled by sox to `rate` Hz mono 16-bit WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.wav")
    options = ["-v", voice, "-p", str(pitch), "-a", str(amplitude), "-s", str(speed)]
    subprocess.run(["espeak-ng", *options, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(path)], check=True, capture_output=True
    )
    raw.unlink()
    return path
