"""Benchmark: audio durations for a whole corpus, from the WAV header vs libsndfile's header vs decoding.

Builds a TESS-sized corpus (2,800 files by default) in TESS's layout from a few espeak-ng syntheses hard-linked
under every file name (tests/corpora.py), then, in one run and interleaved `--repeats` times (best run counts):
  - decoding every file with soundfile.read (the baseline: what measuring by decoding costs),
  - soundfile.info on every file (libsndfile parses the header),
  - melt.corpus.audio_files.header_duration on every file (what the loaders use),
  - load_tess on the corpus (the whole loader: walk, names, header reads, folds, table).
Prints seconds and the speed-up over decoding, with the 1-minute load average.

    .venv/bin/python bench/corpus_durations.py [--files 2800] [--repeats 3] [--dir FOLDER]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from corpora import Prosody, Speech, TessClip, make_tess  # noqa: E402

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")


def build(folder: Path, files: int) -> Path:
    root = folder / "TESS"
    if root.exists():
        return root
    speech = Speech(folder / "speech")
    prosodies = [Prosody(pitch=35 + 6 * i, speed=140 + 20 * i) for i in range(4)]
    clips = [
        TessClip(
            EMOTIONS[i % 7],
            word=f"w{i // 14}",
            speaker=("OAF", "YAF")[(i // 7) % 2],
            prosody=prosodies[i % 4],
        )
        for i in range(files)
    ]
    make_tess(root, clips, speech)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    import soundfile

    from melt.corpus.audio_files import header_duration
    from melt.corpus.emotion_corpora import load_tess

    folder = args.dir or Path(tempfile.mkdtemp(prefix="melt-bench-durations-"))
    root = build(folder, args.files)
    paths = sorted(root.rglob("*.wav"))
    methods = {
        "decode (soundfile.read)": lambda: [len(soundfile.read(p)[0]) for p in paths],
        "soundfile.info": lambda: [soundfile.info(str(p)).duration for p in paths],
        "header_duration": lambda: [header_duration(p) for p in paths],
        "load_tess (whole loader)": lambda: load_tess(root),
    }
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            best[name] = min(best[name], time.perf_counter() - start)
    table = load_tess(root)
    assert len(table) == len(paths) and table["duration"].notna().all()
    baseline = best["decode (soundfile.read)"]
    print(
        f"{len(paths)} files in {root}; best of {args.repeats}; 1-min load average {os.getloadavg()[0]:.2f}"
    )
    for name, seconds in best.items():
        print(f"  {name:26s} {seconds:7.3f} s  {baseline / seconds:6.1f}x faster than decoding")


if __name__ == "__main__":
    main()
