"""Throughput of `melt annotate` against a loopback OpenAI-compatible server with a fixed reply latency.

    .venv/bin/python bench/annotate_throughput.py [--utterances 2000] [--latency 0.2] [--concurrency 64]

The server (tests/openai_server.py) runs in its own process, so it does not compete with the client for the
GIL: the client is what is measured. The server's latency counts from each request's arrival, so its own CPU
time does not lengthen it. Each run starts from an empty run folder, so every utterance is a real
request, and the time is that of the whole `run_annotation` call (building prompts, requests, validation,
the SQLite store, writing the outputs). The ideal rate is concurrency / latency.

The sequential run (concurrency 1, what a simple loop over the corpus achieves) is timed on the first
`--sequential-utterances` utterances by default: its rate does not depend on the corpus size, and 2,000
utterances at 200 ms each would take almost seven minutes. Pass `--sequential-utterances 0` for all of them.
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

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

from melt.annotate import AnnotateConfig, run_annotation  # noqa: E402
from melt.corpus.schema import conform  # noqa: E402

SPEAKERS = ("Ross", "Monica", "Chandler", "Rachel", "Joey", "Phoebe")


def corpus(n: int) -> pd.DataFrame:
    rows = [
        {
            "id": f"train/dia{i // 10}_utt{i % 10}",
            "split": "train",
            "speaker": SPEAKERS[i % len(SPEAKERS)],
            "text": f"Utterance {i}: I just can't believe you would say that to me, of all people.",
            "dialogue_id": i // 10,
            "utterance_id": i % 10,
            "season": 1 + i % 10,
            "episode": 1 + i % 24,
        }
        for i in range(n)
    ]
    return conform(pd.DataFrame(rows))


def start_server(
    folder: Path, *options: str, script: str = "openai_server.py", name: str = "loopback"
) -> tuple[subprocess.Popen, str]:
    """A loopback server of tests/ (`script`, with `options`) in its own process, and its base URL."""
    port_file = folder / f"{name}.port"
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / script), "--port-file", str(port_file), *options],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the loopback server {name} did not start")
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port_file.read_text()}/v1"


def measure(table: pd.DataFrame, base_url: str, concurrency: int, latency: float, folder: Path) -> dict:
    config = AnnotateConfig(base_url=base_url, model="gpt-4o-2024-08-06", concurrency=concurrency, timeout=30)
    cpu, wall = time.process_time(), time.perf_counter()
    result = run_annotation(table, config, folder / f"run-c{concurrency}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert (result.annotations["status"] == "ok").all(), (
        "the benchmark server answers every request correctly"
    )
    rate = len(table) / wall
    ideal = concurrency / latency
    return {
        "concurrency": concurrency,
        "utterances": len(table),
        "seconds": round(wall, 2),
        "utterances_per_s": round(rate, 1),
        "ideal_per_s": round(ideal, 1),
        "fraction_of_ideal": round(rate / ideal, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / result.stats.completed, 3),
        "retries": sum(result.stats.retries.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per reply")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential-utterances", type=int, default=100, help="0: the whole corpus")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    table = corpus(args.utterances)
    # Other work on the machine steals the client's core: the figures are comparable only at a similar load.
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="melt-bench-") as tmp:
        folder = Path(tmp)
        server, base_url = start_server(
            folder, "--latency", str(args.latency), "--log", str(folder / "server.jsonl")
        )
        try:
            sequential = table.head(args.sequential_utterances) if args.sequential_utterances else table
            results = [
                measure(sequential, base_url, 1, args.latency, folder),
                measure(table, base_url, args.concurrency, args.latency, folder),
            ]
        finally:
            server.terminate()
            _, _, usage = os.wait4(server.pid, 0)
            server.returncode = 0
    server_cpu_ms = 1000 * (usage.ru_utime + usage.ru_stime) / sum(r["utterances"] for r in results)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"melt annotate throughput: loopback server, {args.latency * 1000:.0f} ms per reply, {cores} cores, "
        f"1-min load average {load:.2f} before the run"
    )
    header = (
        f"{'concurrency':>11} {'utterances':>10} {'seconds':>8} {'utt/s':>8} {'ideal':>7} {'of ideal':>8}"
    )
    print(header + f" {'CPU ms/request':>14}")
    for r in results:
        print(
            f"{r['concurrency']:>11} {r['utterances']:>10} {r['seconds']:>8.2f} {r['utterances_per_s']:>8.1f} "
            f"{r['ideal_per_s']:>7.1f} {r['fraction_of_ideal']:>8.1%} {r['client_cpu_ms_per_request']:>14.2f}"
        )
    print(f"server CPU per request (its own process): {server_cpu_ms:.2f} ms")
    speedup = results[1]["utterances_per_s"] / results[0]["utterances_per_s"]
    print(f"speed-up of concurrency {args.concurrency} over a sequential loop: {speedup:.1f}x")


if __name__ == "__main__":
    main()
