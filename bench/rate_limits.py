"""`melt annotate` under rate limits, against a fault-free run measured in the same invocation.

    .venv/bin/python bench/rate_limits.py [--utterances 3000] [--latency 0.02] [--concurrency 64]

Each scenario is a loopback server (tests/openai_server.py, in its own process) with a fixed reply latency:

- fault-free: every request answered;
- (a) sporadic 429s: 2 % of requests, chosen at random, get HTTP 429 with `Retry-After: 1`;
- (b) a token bucket of 200 requests/s (bursts of up to `--burst`), refusing the excess with 429 and
  `retry-after-ms` (the time until the next request is allowed); once with OpenAI's `x-ratelimit-*` headers on
  every reply (what OpenAI sends), once without (the client has only the 429s to go by).

Targets (issue 8): (a) at least 50 % of the fault-free throughput; (b) at least 75 % of the bucket's rate, with
429s on at most 10 % of the requests sent. Each run starts from an empty run folder; times are whole
`run_annotation` calls. The machine's load changes the figures: the 1-minute load average is printed before
and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from annotate_throughput import corpus, start_server  # noqa: E402
from melt.annotate import AnnotateConfig, run_annotation  # noqa: E402


def measure(name: str, table, base_url: str, concurrency: int, folder: Path) -> dict:
    config = AnnotateConfig(
        base_url=base_url,
        model="gpt-4o-2024-08-06",
        concurrency=concurrency,
        timeout=30,
        max_retries=30,
        backoff_max=60,
    )
    wall = time.perf_counter()
    result = run_annotation(table, config, folder / f"run-{name}")
    wall = time.perf_counter() - wall
    done = int((result.annotations["status"] == "ok").sum())
    limited = result.stats.retries.get("HTTP 429", 0)
    return {
        "name": name,
        "seconds": wall,
        "rate": done / wall,
        "ok": done,
        "sent": result.stats.sent,
        "429": limited,
        "share_429": limited / max(result.stats.sent, 1),
        "lowest_limit": result.stats.lowest_concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the server takes per reply")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bucket-rate", type=float, default=200.0, help="(b): requests per second")
    parser.add_argument("--burst", type=float, default=200.0, help="(b): the bucket's size, in requests")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (fault-free always runs)")
    args = parser.parse_args()

    table = corpus(args.utterances)
    latency = ["--latency", str(args.latency)]
    bucket = ["--token-bucket-rate", str(args.bucket_rate), "--token-bucket-burst", str(args.burst)]
    scenarios = {
        "fault-free": latency,
        "a: 2% 429s, Retry-After 1": [*latency, "--rate-limit-fraction", "0.02", "--retry-after", "1"],
        "b: bucket, x-ratelimit headers": [*latency, *bucket, "--ratelimit-headers"],
        "b: bucket, 429s only": [*latency, *bucket],
    }
    if args.only:
        scenarios = {k: v for k, v in scenarios.items() if k == "fault-free" or k.split(":")[0] in args.only}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="melt-bench-") as tmp:
        folder = Path(tmp)
        for i, (name, options) in enumerate(scenarios.items()):
            server, base_url = start_server(folder, *options, name=f"s{i}")
            try:
                results.append(measure(f"s{i}", table, base_url, args.concurrency, folder) | {"name": name})
            finally:
                server.terminate()
                server.wait()
    load_after = os.getloadavg()[0]

    print(
        f"melt annotate under rate limits: loopback server, {args.latency * 1000:.0f} ms per reply, "
        f"{args.utterances} utterances, -j {args.concurrency}, {cores} cores; 1-min load average "
        f"{load_before:.2f} before, {load_after:.2f} after"
    )
    print(
        f"{'scenario':<32} {'seconds':>8} {'utt/s':>8} {'sent':>6} {'429s':>6} {'429 %':>6} {'lowest -j':>9}"
    )
    for r in results:
        print(
            f"{r['name']:<32} {r['seconds']:>8.2f} {r['rate']:>8.1f} {r['sent']:>6} {r['429']:>6} "
            f"{r['share_429']:>6.1%} {r['lowest_limit']:>9}"
        )
    baseline = results[0]["rate"]
    for r in results[1:]:
        if r["name"].startswith("a"):
            print(f"(a) throughput vs fault-free: {r['rate'] / baseline:.1%} (target >= 50 %)")
        else:
            print(
                f"({r['name']}) rate vs the bucket's {args.bucket_rate:g}/s: {r['rate'] / args.bucket_rate:.1%} "
                f"(target >= 75 %), 429s on {r['share_429']:.1%} of requests (target <= 10 %)"
            )


if __name__ == "__main__":
    main()
