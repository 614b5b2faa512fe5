"""Review of issue 8 (adversarial): the run folder's identity, pacing from rate-limit headers, a signal during the
final write, and the Python API's settings.

Real loopback server (tests/openai_server.py, replies scripted per test), real subprocesses and signals. Each
test once failed on a defect the review found.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import yaml
from annotate_helpers import corpus_table, fast_config
from scripted_server import (
    ScriptedServer,
    answer,
    completion,
    environment,
    melt_command,
    send,
    utterance_text,
)

from melt.annotate import AnnotateConfig, run_annotation
from melt.corpus.schema import write_table
from melt.errors import MeltError
from timing import scaled

pytestmark = pytest.mark.timeout(600)


# -- 1. settings that decide nothing about the replies still claim the folder -----------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"context_turns": 3},  # the `melt` template never shows context lines: its requests are the same
        {
            "repair": False
        },  # decides only whether invalid answers are re-asked, like --samples decides how many
        {"response_format": "json_schema"},  # what `auto` used on this server: the very same requests
    ],
    ids=["context-turns-with-the-melt-template", "repair", "response-format-auto-to-what-auto-chose"],
)
def test_a_setting_that_changes_no_request_does_not_claim_the_folder(tmp_path, change):
    table = corpus_table([f"Identity line {i}." for i in range(3)])
    with ScriptedServer() as server:
        first = run_annotation(table, fast_config(server), tmp_path / "run")
        assert first.response_format == "json_schema"
        sent_before = len(server.bodies)
        try:
            again = run_annotation(table, fast_config(server, **change), tmp_path / "run")
        except MeltError as exc:
            pytest.fail(f"{change} was refused although no request changes: {exc}")
        assert len(server.bodies) == sent_before  # every reply came from the store
    assert again.stats.cached == 3


# -- 2. two servers that differ only in their URL's query are taken for one -------------------------------------------


def test_base_urls_that_differ_in_their_query_are_different_configurations(tmp_path):
    """`?api-version=` (Azure OpenAI) or a gateway's routing parameter decide the replies; the identity masks every
    query value as *** so both URLs are the same server and the first one's replies are reused for the second."""
    table = corpus_table([f"Query line {i}." for i in range(3)])
    secret = "qk-never-show-me-4471"
    with ScriptedServer() as server:
        old = f"{server.base_url}?api-version=2024-02-01&api-key={secret}"
        new = f"{server.base_url}?api-version=2025-04-01&api-key={secret}"
        run_annotation(table, fast_config(server, base_url=old), tmp_path / "run")
        sent_before = len(server.bodies)
        with pytest.raises(MeltError) as caught:
            run_annotation(table, fast_config(server, base_url=new), tmp_path / "run")
        assert len(server.bodies) == sent_before
    assert "base_url" in str(caught.value) and secret not in str(caught.value)


# -- 3. pacing from x-ratelimit headers: a limit used up for a moment stalls the run for minutes ----------------------


def test_a_rate_limit_used_up_for_a_moment_does_not_stall_the_run(tmp_path):
    """For two seconds the server says no request is left and the limit is whole again in 10 s, without its size
    (`x-ratelimit-limit-requests` absent); after that it says plenty are left. The pacer spaces every request by
    the whole reset time (remaining / reset with remaining counted as 1), and the requests already waiting keep
    the sleeps they were given (10 s, 20 s, ... 80 s at -j 8), holding their places, when later replies say the
    limit is back."""
    started: dict[str, float] = {}
    arrivals: list[float] = []

    def script(server, body, handler):
        if not utterance_text(body):
            return False
        with server._lock:
            t0 = started.setdefault("t0", time.monotonic())
            arrivals.append(time.monotonic() - t0)
        used_up = time.monotonic() - t0 < 2
        headers = {
            "x-ratelimit-remaining-requests": "0" if used_up else "5000",
            "x-ratelimit-reset-requests": "10s" if used_up else "0s",
        }
        return send(handler, completion(json.dumps(answer(body))), headers)

    texts = [f"Paced line {i}." for i in range(24)]
    with ScriptedServer(script=script) as server:
        result = run_annotation(
            corpus_table(texts), fast_config(server, concurrency=8, timeout=5), tmp_path / "run"
        )
    assert result.complete
    # Everything can go once the limit is whole again, 10 s after it was used up.
    late = [round(t, 1) for t in arrivals if t > 12 + scaled(10)]
    assert late == [], f"requests still spaced by the reset time long after the limit was back: {late}"


# -- 4. SIGTERM during the final write is swallowed: exit 3, not 143 ------------------------------------------------


def test_sigterm_during_the_final_write_still_ends_with_143(tmp_path):
    """The handlers are kept during the write so that a signal cannot split the tables; but when they are removed
    the pending signal is dropped: the process ends as if nothing had been asked (exit 3 here, run.json says not
    interrupted). A supervisor that sent SIGTERM cannot tell."""
    corpus = write_table(
        corpus_table([f"Write line {i}." for i in range(40_000)]), tmp_path / "corpus.parquet"
    )
    settings = tmp_path / "prices.yaml"
    settings.write_text(yaml.safe_dump({"prices": {"m": {"input": 1000.0, "output": 1000.0}}}))
    out = tmp_path / "run"
    with ScriptedServer() as server:
        # A budget too small for one request: the run stops at once and writes 40,000 pending rows.
        command = melt_command("annotate", corpus, "--out", out, "--base-url", server.base_url, "--model", "m",
                               "--quiet", "--config", settings, "--max-cost", "0.0001")  # fmt: skip
        process = subprocess.Popen(
            command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + scaled(240)
        while not (out.exists() and any(p.name.endswith(".tmp") for p in out.iterdir())):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"never saw the final write begin: {process.communicate()}")
            time.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=scaled(120))
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert process.returncode == 143, (process.returncode, stderr[-500:])


# -- 5. the Python API does not take labels as the list the docs offer ---------------------------------------------


def test_labels_as_a_list_in_python_as_in_yaml():
    """docs/annotate.md: `labels` is "a list, or {labels: [...], synonyms: {...}}" and every flag is a field of
    AnnotateConfig; `AnnotateConfig.load` (YAML) takes a list, the constructor a notebook uses raises a pydantic
    error instead."""
    config = AnnotateConfig(labels=["joy", "anger", "neutral"])
    assert list(config.labels.labels) == ["joy", "anger", "neutral"]
