"""Benchmark: generation speed of melt's `local` backend against calling llama-cpp-python directly.

Same model (the bundled Gemma 3 270M unless --model), same prompt (melt's paper prompt for the first utterance
of the bundled example corpus), same answer schema, same settings (greedy, --max-tokens, the cores), one run:

  direct     `Llama.create_chat_completion(response_format={"type": "json_object", "schema": ...})` on a
             stock `llama_cpp.Llama`: llama-cpp-python's own grammar sampling
  checked    `create_chat_completion(grammar=...)` on the Llama melt loads, whose sampler checks one token
             against the grammar instead of the whole vocabulary (see GrammarCheckedSampler)
  melt       `await LocalBackend.complete(ChatRequest)`: the backend the engine calls, with its prompt
             token count, context check, grammar cache and worker thread

melt vs checked is the overhead of the backend itself (target <= 5 %); melt vs direct is what a user gets over
the obvious way of calling llama-cpp-python. Greedy decoding makes all three generate the same tokens, which
the benchmark checks. Each Llama has seen the prompt once before timing, so every timed call reuses its
cached prompt and the time is generation; the rounds are interleaved so background load hits all alike, and
each variant's median round counts.

    .venv/bin/python bench/local_llm.py [--rounds 5] [--direct-rounds 1] [--max-tokens 200] [--model PATH.gguf]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from importlib.resources import files
from pathlib import Path

from melt.annotate.run import load_corpus
from melt.llm.base import ChatRequest
from melt.llm.local import SAMPLING, LocalBackend, available_cores, open_llama
from melt.prompts import PromptConfig, build_messages, response_format


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of checked and melt")
    parser.add_argument(
        "--direct-rounds", type=int, default=1, help="timed calls of direct (slow: ~1 token/s on 2 cores)"
    )
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default: the bundled model)")
    args = parser.parse_args()

    config = PromptConfig()
    table = load_corpus(files("melt") / "data" / "example_corpus.csv", config).head(1)
    messages = next(iter(build_messages(table, config).values()))
    fmt = response_format(config)
    schema = fmt["json_schema"]["schema"]
    request = ChatRequest(
        messages=tuple(messages), temperature=0.0, seed=1, max_tokens=args.max_tokens, response_format=fmt
    )

    backend = LocalBackend(args.model)
    threads = backend.n_threads
    n_ctx = 2048
    checked_llm = open_llama(backend.model_path, n_ctx=n_ctx, n_threads=threads)
    direct_llm = open_llama(backend.model_path, n_ctx=n_ctx, n_threads=threads, stock_sampler=True)
    # The same chat formatting as the backend, so that all three see the same prompt tokens.
    asyncio.run(backend.complete(request))  # loads the backend's model, and caches the prompt
    for llm in (checked_llm, direct_llm):
        llm.chat_handler = backend._llm.chat_handler
    grammar = backend._grammar(backend._llm, fmt)
    common = dict(messages=messages, temperature=0.0, seed=1, max_tokens=args.max_tokens, **SAMPLING)

    # llama.cpp's OpenMP thread team belongs to the thread that calls it: two calling threads means two
    # teams of spinning workers on the same cores. The backend calls from its own worker thread, so the direct
    # calls are made on that same thread, leaving the Python wrapper as the only difference.
    def on_worker_thread(fn):
        return lambda: backend._executor.submit(fn).result()

    @on_worker_thread
    def run_direct():
        out = direct_llm.create_chat_completion(
            response_format={"type": "json_object", "schema": schema}, **common
        )
        return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"]

    @on_worker_thread
    def run_checked():
        out = checked_llm.create_chat_completion(grammar=grammar, **common)
        return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"]

    def run_melt():
        reply = asyncio.run(backend.complete(request))
        return reply.content, reply.completion_tokens

    variants = {"direct": run_direct, "checked": run_checked, "melt": run_melt}
    print(
        f"model {backend.model}, {threads} threads ({available_cores()} cores available), "
        f"prompt {backend._count_prompt_tokens(backend._llm, messages)} tokens, "
        f"max_tokens {args.max_tokens}, greedy",
        flush=True,
    )
    # Warm-up: the prompt enters each Llama's cache, and the first decode pays for page faults.
    contents = {name: fn()[0] for name, fn in variants.items() if name != "melt"}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(max(args.rounds, args.direct_rounds)):
        for name, fn in variants.items():
            if round_ >= (args.direct_rounds if name == "direct" else args.rounds):
                continue
            start = time.perf_counter()
            content, tokens = fn()
            seconds = time.perf_counter() - start
            speeds[name].append(tokens / seconds)
            contents.setdefault(name, content)
            assert content == contents[name], f"{name} generated different text across rounds"
            print(
                f"  round {round_ + 1} {name:8s} {tokens} tokens in {seconds:6.2f} s = {tokens / seconds:6.2f} tok/s"
            )
    same = len(set(contents.values())) == 1
    print(f"all three generated the same text: {same}")

    median = {name: statistics.median(v) for name, v in speeds.items()}
    print("\nmedian tokens per second")
    for name, value in median.items():
        print(f"  {name:8s} {value:7.2f}")
    overhead = 1 - median["melt"] / median["checked"]
    print(f"\nmelt backend overhead vs the same Llama called directly: {overhead:+.1%} (target <= 5 %)")
    print(
        f"melt backend vs stock llama-cpp-python grammar sampling: {median['melt'] / median['direct']:.1f}x"
    )
    asyncio.run(backend.aclose())
    checked_llm.close()
    direct_llm.close()
    if not same:
        raise SystemExit("the variants generated different text: the comparison is not like for like")


if __name__ == "__main__":
    main()
