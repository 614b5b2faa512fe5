"""`melt annotate` as a user runs it: a subprocess against the loopback server, killed with SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from annotate_helpers import FakeOpenAIServer, corpus_table

from melt.annotate.store import STORE_NAME
from melt.corpus.schema import write_table
from openai_server import expected_emotion
from timing import scaled

KEY = "sk-melt-test-4f9Qx7TzUu2Wk"


def melt_command(corpus: Path, out: Path, server: FakeOpenAIServer, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "melt", "annotate", str(corpus), "--out", str(out), "--base-url", server.base_url,
        "--model", "gpt-4o-mini", "--timeout", "2", *extra,
    ]  # fmt: skip


def run(command: list[str], key: str = KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": key, "COLUMNS": "200"}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=scaled(120), stdin=subprocess.DEVNULL
    )


def files_containing(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_kill_9_mid_run_loses_only_requests_in_flight(tmp_path):
    texts = [f"Kill test line {i}." for i in range(240)]
    corpus = write_table(corpus_table(texts), tmp_path / "corpus.parquet")
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.05, api_key=KEY) as server:
        command = melt_command(corpus, out, server, "--concurrency", "4", "--quiet")
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (
            len([e for e in list(server.log) if e.get("status") == 200]) < 60
            and process.poll() is None
            and (time.monotonic() < deadline)
        ):
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.2)  # let the server finish the replies that were in flight
        before = [e for e in server.entries(status=200) if e.get("text")]  # the format probe left out
        with sqlite3.connect(out / STORE_NAME) as db:
            stored = db.execute(
                "SELECT COUNT(*) FROM requests WHERE status = 'done' AND turn >= 0"
            ).fetchone()[0]
        # 60 replies were sent (the probe's among them); up to 4 may not have been stored when the process died.
        assert 55 <= stored < 240

        last_before = max(e["n"] for e in server.entries())
        finished = run(command)
        after = [e for e in server.entries() if e["n"] > last_before and e.get("text")]

    assert finished.returncode == 0, finished.stderr
    table = pd.read_parquet(out / "annotations.parquet")
    assert len(table) == 240 and (table["status"] == "ok").all()
    assert list(table["emotion"]) == [expected_emotion(t) for t in texts]
    # The rerun asked exactly for what the store lacked ...
    assert len(after) == 240 - stored
    # ... so a request answered before the kill was sent again only if its reply had not been stored yet:
    # at most the 4 in flight.
    resent = {e["key"] for e in before} & {e["key"] for e in after}
    assert len(resent) <= 4
    assert len(before) - len(resent) <= stored


def test_cli_summary_outputs_and_the_key_appears_nowhere(tmp_path):
    texts = [
        "[[429]] Rate limited once.",
        "[[500]] Server error once.",
        "[[offlabel-always]] Off label.",
        "Plain.",
    ]
    corpus = write_table(corpus_table(texts), tmp_path / "corpus.csv")
    out = tmp_path / "run"
    with FakeOpenAIServer(api_key=KEY, retry_after="0.2") as server:
        result = run(melt_command(corpus, out, server, "--max-retries", "3"))
    assert result.returncode == 0, result.stderr
    for line in ("utterances", "retries", "cost this run", "answer format"):
        assert line in result.stdout
    assert "2 (HTTP 429 1, HTTP 500 1)" in result.stdout
    table = pd.read_csv(out / "annotations.csv")
    assert list(table["status"]) == ["ok", "ok", "invalid", "ok"]
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["config"]["api_key_env"] == "OPENAI_API_KEY"
    assert run_json["this_invocation"]["retries"] == {"HTTP 429": 1, "HTTP 500": 1}
    assert files_containing(out, KEY) == []
    assert KEY not in result.stdout + result.stderr


def test_a_refused_key_is_one_line_without_the_key(tmp_path):
    corpus = write_table(corpus_table(["Plain."]), tmp_path / "corpus.csv")
    wrong = "sk-melt-wrong-9Lp2Vd8sNq"
    with FakeOpenAIServer(api_key=KEY) as server:
        result = run(melt_command(corpus, tmp_path / "run", server), key=wrong)
    assert result.returncode == 2
    assert "401" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert files_containing(tmp_path / "run", wrong) == []


def test_dry_run_and_budget_stop_from_the_cli(tmp_path):
    corpus = write_table(corpus_table([f"Line {i}." for i in range(20)]), tmp_path / "corpus.parquet")
    out = tmp_path / "run"
    with FakeOpenAIServer(api_key=KEY) as server:
        dry = run(melt_command(corpus, out, server, "--dry-run", "--samples", "2"))
        assert server.entries() == []
        stopped = run(
            melt_command(corpus, out, server, "--max-cost", "0.0002", "--max-tokens", "100", "-j", "1")
        )
        resumed = run(melt_command(corpus, out, server, "--max-tokens", "100"))
    assert dry.returncode == 0, dry.stderr
    assert "nothing sent" in dry.stdout and "40" in dry.stdout
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped by --max-cost" in stopped.stdout and "rerun to continue" in stopped.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert (pd.read_parquet(out / "annotations.parquet")["status"] == "ok").all()


pytestmark = pytest.mark.timeout(120)
