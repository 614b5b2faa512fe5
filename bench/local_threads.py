"""How many CPU threads llama.cpp should use when the machine is busy: tokens per second of the bundled model at
each thread count, alone and beside competitors that each keep one core busy.

    .venv/bin/python bench/local_threads.py [--threads 1 2] [--competitors 0 1 2] [--repeats 3]

llama.cpp's threads meet at a barrier after every step of every token; a thread that the scheduler takes away
holds up all the others, so on a machine whose cores are all in use, more threads can be much slower than
fewer. Each configuration generates the same greedy reply to melt's paper prompt (the backend's own path:
`LocalBackend.complete_sync`, grammar-constrained) `--repeats` times; the median is reported, against the
single-thread figure measured in the same run. Competitors are busy-looping processes started by this script
(the machine's other load comes on top: the 1-minute load average is printed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import pandas as pd

from melt.annotate import AnnotateConfig
from melt.annotate.run import prompt_config
from melt.corpus.schema import conform
from melt.llm.base import ChatRequest
from melt.llm.local import LocalBackend
from melt.prompts import build_messages, response_format


def burn(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        for _ in range(100_000):
            pass


def request() -> ChatRequest:
    prompt = prompt_config(AnnotateConfig())
    table = conform(
        pd.DataFrame(
            [{"id": "x", "speaker": "Ross", "text": "We were on a break!", "season": 3, "episode": 15}]
        )
    )
    messages = build_messages(table, prompt)["x"]
    return ChatRequest(
        messages=tuple(messages), temperature=0.0, max_tokens=120, response_format=response_format(prompt)
    )


def measure(threads: int, repeats: int, ask: ChatRequest) -> list[float]:
    backend = LocalBackend(n_threads=threads)
    backend.complete_sync(ask)  # load and warm up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        reply = backend.complete_sync(ask)
        rates.append(reply.completion_tokens / (time.perf_counter() - started))
    backend._unload()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ask = request()
    cores = len(os.sched_getaffinity(0))
    print(
        f"bundled model, greedy, 120 max tokens, {cores} cores; 1-min load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'competitors':>11} {'threads':>7} {'tokens/s':>9} {'vs 1 thread':>11}  load")
    for competitors in args.competitors:
        stop = multiprocessing.Event()
        burners = [multiprocessing.Process(target=burn, args=(stop,)) for _ in range(competitors)]
        for process in burners:
            process.start()
        try:
            time.sleep(1.0)
            medians = {}
            for threads in args.threads:
                medians[threads] = statistics.median(measure(threads, args.repeats, ask))
                base = medians.get(1)
                ratio = f"{medians[threads] / base:.2f}x" if base else "-"
                print(
                    f"{competitors:>11} {threads:>7} {medians[threads]:>9.2f} {ratio:>11}  "
                    f"{os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        finally:
            stop.set()
            for process in burners:
                process.join()


if __name__ == "__main__":
    main()
