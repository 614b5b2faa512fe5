"""Benchmark: seconds of audio processed per wall-clock second by eGeMAPS extraction.

Compares, on the same espeak-ng corpus and in one run:
  - a plain loop over `opensmile.Smile.process_file` (the baseline),
  - `melt acoustics extract` with 1 worker and with 2 workers (the API call the command makes, in-process, cache
    off, so every file is processed; it includes content hashing and writing the Parquet file).
Targets: 1 worker within 10 % of the plain loop; 2 workers at least 1.7x it.
Each method runs `--repeats` times, interleaved so background load hits all alike; the best run counts.

    .venv/bin/python bench/acoustics.py [--files 120] [--repeats 3] [--dir FOLDER]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# The same espeak-ng + sox synthesis the tests use.
sys.path.insert(0, str(REPO / "tests" / "acoustics"))
from espeak import SENTENCES, synthesise  # noqa: E402


def make_corpus(folder: Path, files: int) -> Path:
    """`files` espeak-ng utterances (16 kHz mono WAV via sox) and a corpus table pointing at them."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool} on PATH")
    rows = []
    for i in range(files):
        rows.append(
            {
                "id": f"bench/utt{i}",
                "split": "bench",
                "text": SENTENCES[i % len(SENTENCES)] + " " + SENTENCES[(i + 1) % len(SENTENCES)],
                "audio": f"wav/utt{i}.wav",
                "pitch": 35 + (i * 7) % 50,
                "speed": 120 + (i * 13) % 140,
            }
        )

    def make(row: dict) -> None:
        target = folder / row["audio"]
        if not target.exists():
            synthesise(target, row["text"], pitch=row["pitch"], speed=row["speed"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(make, rows))
    table = folder / "corpus.csv"
    pd.DataFrame(rows)[["id", "split", "text", "audio"]].to_csv(table, index=False)
    return table


def plain_loop(paths: list[Path]) -> None:
    import opensmile

    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
    )
    for path in paths:
        smile.process_file(str(path))


def melt_extract(table: Path, out: Path, workers: int) -> None:
    from melt.acoustics.features import extract_features

    features = extract_features(table, out, workers=workers, cache=False, progress=False)
    if features["error"].notna().any():
        raise SystemExit(f"extraction failed: {features['error'].dropna().unique()[:3]}")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes are joined before it is read)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, help="corpus folder to reuse between runs (default: a temp folder)"
    )
    args = parser.parse_args()

    import soundfile

    folder = args.dir or Path(tempfile.mkdtemp(prefix="melt-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    table = make_corpus(folder, args.files)
    paths = sorted((folder / "wav").glob("utt*.wav"))[: args.files]
    audio_seconds = sum(soundfile.info(p).duration for p in paths)
    print(
        f"corpus: {len(paths)} files, {audio_seconds:.1f} s of audio ({time.perf_counter() - started:.1f} s to make)"
    )

    # Warm-up: imports and openSMILE's first configuration happen outside the timings.
    plain_loop(paths[:2])
    melt_extract(table, folder / "warmup.parquet", 1)

    methods = {
        "plain loop (Smile.process_file)": lambda: plain_loop(paths),
        "melt acoustics extract, 1 worker": lambda: melt_extract(table, folder / "w1.parquet", 1),
        "melt acoustics extract, 2 workers": lambda: melt_extract(table, folder / "w2.parquet", 2),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, run in methods.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - start_cpu)

    baseline = audio_seconds / min(times["plain loop (Smile.process_file)"])
    print(f"\n{'method':<36} {'best s':>8} {'median s':>9} {'CPU s':>7} {'audio s/s':>10} {'vs loop':>8}")
    for name, values in times.items():
        rate = audio_seconds / min(values)
        median = sorted(values)[len(values) // 2]
        best_cpu = cpu[name][values.index(min(values))]
        print(
            f"{name:<36} {min(values):>8.2f} {median:>9.2f} {best_cpu:>7.2f} {rate:>10.1f} {rate / baseline:>7.2f}x"
        )
    # Other processes on the machine take cores from the 2-worker run first; the load average shows them.
    print(
        f"\nload average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    one = audio_seconds / min(times["melt acoustics extract, 1 worker"]) / baseline
    two = audio_seconds / min(times["melt acoustics extract, 2 workers"]) / baseline
    print(f"\ntarget 1 worker >= 0.90x loop: {one:.2f}x {'PASS' if one >= 0.9 else 'FAIL'}")
    print(f"target 2 workers >= 1.70x loop: {two:.2f}x {'PASS' if two >= 1.7 else 'FAIL'}")
    if args.dir is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
