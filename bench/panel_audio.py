"""What a panel with `--audio` costs the client, against the same panel on the transcripts alone.

    .venv/bin/python bench/panel_audio.py [--utterances 60] [--annotators 8] [--seconds 6] [--latency 0.05]

Both runs send every request to a loopback OpenAI-compatible server (tests/openai_server.py, in its own process,
so it does not compete with the client for the GIL; it decodes each audio part, which costs the server, not the
client). The baseline is the text-only panel measured in the same run; the audio panel adds reading each
utterance's recording (44.1 kHz stereo here, so it is resampled to 16 kHz mono), WAV encoding and base64 for every
request. Encoded clips are cached (`melt.annotate.audio.CLIP_CACHE`): a panel's annotators ask about the same
utterance one after another. The figures are client CPU per request and wall time; the ratio is audio / text.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "bench"))

from annotate_throughput import start_server  # noqa: E402
from melt.annotate import AnnotateConfig, run_annotation  # noqa: E402
from melt.corpus.schema import conform  # noqa: E402


def corpus(n: int, seconds: float, folder: Path) -> pd.DataFrame:
    """n utterances, each with its own recording: noise bursts at 44.1 kHz stereo, loud or soft in turn."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        level = 0.5 if i % 2 == 0 else 0.02
        signal = (level * rng.standard_normal((int(44_100 * seconds), 2))).clip(-1, 1).astype(np.float32)
        path = folder / f"utt{i:04d}.wav"
        soundfile.write(path, signal, 44_100, subtype="PCM_16")
        rows.append({"id": f"utt{i:04d}", "speaker": f"S{i % 4}", "text": f"Line {i}: we were on a break.",
                     "audio": str(path)})  # fmt: skip
    return conform(pd.DataFrame(rows))


def measure(table: pd.DataFrame, base_url: str, args: argparse.Namespace, folder: Path, audio: bool) -> dict:
    config = AnnotateConfig(
        base_url=base_url, model="Qwen/Qwen2-Audio-7B-Instruct", panel="scaling-ambiguity",
        annotators=args.annotators, audio=audio, concurrency=args.concurrency, timeout=60,
    )  # fmt: skip
    cpu, wall = time.process_time(), time.perf_counter()
    result = run_annotation(table, config, folder / ("audio" if audio else "text"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.complete and (result.votes["status"] == "ok").all(), "the server answers every request"
    requests = result.stats.completed
    return {"requests": requests, "seconds": wall, "cpu_ms_per_request": 1000 * cpu / requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=60)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each recording")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server takes per reply")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="melt-bench-") as tmp:
        folder = Path(tmp)
        table = corpus(args.utterances, args.seconds, folder)
        server, base_url = start_server(
            folder, "--latency", str(args.latency), "--log", str(folder / "server.jsonl")
        )
        try:
            text = measure(table, base_url, args, folder, audio=False)
            audio = measure(table, base_url, args, folder, audio=True)
        finally:
            server.terminate()
            server.wait()
    print(
        f"panel of {args.annotators}, {args.utterances} utterances of {args.seconds:g} s (44.1 kHz stereo), "
        f"server latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}; "
        f"1-min load average {load:.2f} before the run"
    )
    print(f"{'':>10} {'requests':>9} {'seconds':>8} {'CPU ms/request':>15}")
    for name, r in (("text", text), ("audio", audio)):
        print(f"{name:>10} {r['requests']:>9} {r['seconds']:>8.2f} {r['cpu_ms_per_request']:>15.2f}")
    print(
        f"audio / text: wall {audio['seconds'] / text['seconds']:.2f}x, "
        f"client CPU per request {audio['cpu_ms_per_request'] / text['cpu_ms_per_request']:.2f}x"
    )


if __name__ == "__main__":
    main()
