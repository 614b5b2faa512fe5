"""Client CPU per request: live requests against a Batch API run of the same corpus, on loopback servers.

    .venv/bin/python bench/batch.py [--utterances 5000] [--concurrency 64]

Both runs go to the loopback test server (tests/batch_server.py, in its own process, so it does not compete
with the client for the GIL) and start from an empty run folder. The live run sends every request at
`--concurrency` with no reply latency; the batch run (`batch_wait`) does what a user's two invocations do:
the engine's pass, the JSONL lines, the upload, polling, the download, matching by custom_id, storing every
reply, and the engine's second pass that validates them. What is compared is the client's CPU time
(`time.process_time`: the server's work and the batch's waiting are not in it), measured in the same
invocation, and the batch's wall time apart from its waiting for the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from annotate_throughput import corpus, start_server  # noqa: E402
from melt.annotate import AnnotateConfig, run_annotation  # noqa: E402


def measure(table, config: AnnotateConfig, out: Path) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    result = run_annotation(table, config, out)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert result.complete, result.annotations["status"].value_counts()
    return {"cpu_s": cpu, "wall_s": wall, "cpu_ms_per_request": 1000 * cpu / len(table)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--in-progress", type=float, default=1.0, help="seconds each batch is in_progress")
    args = parser.parse_args()
    table = corpus(args.utterances)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, base_url = start_server(
            folder, "--in-progress", str(args.in_progress), script="batch_server.py"
        )
        try:
            common = {"base_url": base_url, "model": "gpt-4o-2024-08-06", "timeout": 60.0}
            live = measure(table, AnnotateConfig(**common, concurrency=args.concurrency), folder / "live")
            batch_config = AnnotateConfig(
                **common, batch=True, batch_wait=True, batch_poll=0.2, batch_poll_max=0.2
            )
            batch = measure(table, batch_config, folder / "batch")
            run = json.loads((folder / "batch" / "run.json").read_text())
            size = sum(b["bytes"] for b in run["batch"]["batches"])
        finally:
            server.terminate()
            server.wait()
    print(f"{args.utterances} utterances, 1-min load average {os.getloadavg()[0]:.2f}")
    print(f"{'run':<8}{'CPU s':>8}{'wall s':>9}{'CPU ms/request':>16}")
    for name, figures in (("live", live), ("batch", batch)):
        print(
            f"{name:<8}{figures['cpu_s']:>8.2f}{figures['wall_s']:>9.2f}{figures['cpu_ms_per_request']:>16.3f}"
        )
    print(f"batch / live CPU per request: {batch['cpu_s'] / live['cpu_s']:.2f}")
    print(f"batch input: {size / len(table):.0f} bytes per request (JSONL)")


if __name__ == "__main__":
    main()
