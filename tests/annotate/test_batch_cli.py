"""`melt annotate --batch` as a user runs it: real processes against the loopback batch server, killed with
SIGKILL at each step, interrupted while waiting, cancelled, and rerun."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from annotate_helpers import corpus_table
from batch_helpers import answered_twice, run_json

from batch_server import FakeBatchServer
from melt.corpus.schema import write_table
from openai_server import expected_emotion
from timing import scaled

KEY = "sk-melt-batch-9Tq3Wv5Xy7Zb2"
pytestmark = pytest.mark.timeout(300)


def setup(tmp_path: Path, n: int = 8, texts: list[str] | None = None) -> tuple[Path, Path, Path]:
    texts = texts or [f"Batch command line {i}." for i in range(n)]
    corpus = write_table(corpus_table(texts), tmp_path / "corpus.parquet")
    settings = tmp_path / "batch.yaml"
    settings.write_text("batch_poll: 0.1\nbatch_poll_max: 0.5\nbackoff_base: 0.05\n")
    return corpus, tmp_path / "run", settings


def melt(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "melt", "annotate", *map(str, args)]


def annotate(corpus: Path, out: Path, settings: Path, server: FakeBatchServer, *extra: str) -> list[str]:
    return melt(corpus, "--out", out, "--base-url", server.base_url, "--config", settings, "--timeout", "30",
                "--quiet", *extra)  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": KEY, "COLUMNS": "200"}


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=scaled(timeout),
                          stdin=subprocess.DEVNULL)  # fmt: skip


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended early: {process.communicate()}")
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def input_files(server: FakeBatchServer) -> list:
    return [f for f in server.files.values() if f.purpose == "batch"]


def files_containing(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_batch_submits_and_exits_3_then_the_run_folder_alone_collects(tmp_path):
    corpus, out, settings = setup(tmp_path)
    with FakeBatchServer(api_key=KEY) as server:
        first = run(annotate(corpus, out, settings, server, "--batch"))
        assert first.returncode == 3, first.stderr
        assert "submitted 8 request(s) to the Batch API in 1 batch(es)" in first.stdout
        assert "rerun this command" in first.stdout and f"melt annotate {out}" in first.stdout
        assert set(pd.read_parquet(out / "annotations.parquet")["status"]) == {"pending"}
        second = run(melt(out, "--wait"))  # the run folder alone: its run.json names the corpus and settings
        assert second.returncode == 0, second.stderr + second.stdout
        assert "collected 8 repl(ies) from 1 batch(es)" in second.stdout
        table = pd.read_parquet(out / "annotations.parquet")
        assert list(table["emotion"]) == [expected_emotion(f"Batch command line {i}.") for i in range(8)]
        assert all(call["auth"] == f"Bearer {KEY}" for call in server.calls)
        assert len(server.created_batches()) == 1
    assert run_json(out)["batch"]["mode"] == "batch"
    assert files_containing(out, KEY) == []
    assert KEY not in first.stdout + first.stderr + second.stdout + second.stderr


@pytest.mark.parametrize("point", ["uploading", "upload", "create", "created", "retrieve", "download"])
def test_kill_9_at_each_step_then_a_rerun_finishes_without_a_second_batch(tmp_path, point):
    """uploading: the intent is recorded, the file never reached the server; upload: the file is stored but its
    id never reached the process; create: the file is recorded, the batch never created; created: the batch
    exists but its id never reached the process; retrieve: while polling; download: half-way through the output
    file."""
    corpus, out, settings = setup(tmp_path, n=6)
    with FakeBatchServer(api_key=KEY) as server:
        server.hold(point)
        process = start(annotate(corpus, out, settings, server, "--batch", "--wait"))
        try:
            wait_for(lambda: server.reached(point), process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=scaled(30))
        assert process.returncode == -signal.SIGKILL
        server.release(point, proceed=point not in ("uploading", "create"))
        rerun = run(annotate(corpus, out, settings, server, "--batch", "--wait"))
        assert rerun.returncode == 0, rerun.stderr + rerun.stdout
        assert len(server.created_batches()) == 1
        assert len(input_files(server)) == 1
        assert answered_twice(server) == [] and len(server.batch_answers()) == 6
        table = pd.read_parquet(out / "annotations.parquet")
        assert set(table["status"]) == {"ok"}
        this = run_json(out)["batch"]["this_invocation"]
        assert this["adopted"] == (1 if point == "created" else 0)
        assert this["created"] == (1 if point in ("uploading", "upload", "create") else 0)
        assert this["abandoned"] == (1 if point == "uploading" else 0)
    assert list((out / "batches").glob("*")) == []


def test_wait_shows_the_batches_progress_on_stderr(tmp_path):
    corpus, out, settings = setup(tmp_path, n=5)
    with FakeBatchServer(api_key=KEY, in_progress=2.0) as server:
        result = run(melt(corpus, "--out", out, "--base-url", server.base_url, "--config", settings, "--batch",
                          "--wait"))  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    shown = re.findall(r"batches .*? (\d+)/(\d+) .*?(validating|in_progress|finalizing); next check \d\d:\d\d:\d\d",
                       result.stderr)  # fmt: skip
    assert shown and all(total == "5" for _, total, _ in shown), result.stderr
    assert "collected 5 repl(ies) from 1 batch(es)" in result.stdout


def test_an_orphan_the_account_list_does_not_show_yet_is_cancelled_once_it_appears(tmp_path):
    """Killed after the batch was created, before its id was recorded; the account's list hides new batches for
    a while, so the rerun cannot adopt the orphan and creates another. Its checks keep looking for batches of the
    same requests and cancel the orphan as soon as the list shows it (here, while it is still validating, so
    nothing was answered twice)."""
    corpus, out, settings = setup(tmp_path, n=6)
    with FakeBatchServer(api_key=KEY, validating=scaled(600)) as server:
        server.hold("created")
        process = start(annotate(corpus, out, settings, server, "--batch", "--wait"))
        try:
            wait_for(lambda: server.reached("created"), process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=scaled(30))
        server.list_lag = 1e9  # the account's list shows no batch
        server.release("created")
        [orphan] = server.created_batches()
        rerun = start(annotate(corpus, out, settings, server, "--batch", "--wait"))
        try:
            wait_for(lambda: len(server.created_batches()) == 2, rerun)
            server.list_lag = 0.0
            wait_for(lambda: server._object(orphan)["status"] == "cancelled", rerun)
            server.validating = 0.2  # the kept batch may now run
            stdout, stderr = rerun.communicate(timeout=scaled(120))
        finally:
            if rerun.poll() is None:
                rerun.kill()
        assert rerun.returncode == 0, stderr + stdout
        kept = server.created_batches()[1]
        assert server._object(kept)["status"] == "completed"
        assert answered_twice(server) == [] and len(server.batch_answers()) == 6
        assert set(pd.read_parquet(out / "annotations.parquet")["status"]) == {"ok"}
        notes = run_json(out)["batch"]["this_invocation"]["notes"]
        assert any(f"batch {orphan.id} repeated batch {kept.id}" in note for note in notes)


def test_cancel_through_the_run_folder_then_a_live_rerun_sends_the_rest(tmp_path):
    corpus, out, settings = setup(tmp_path, n=10)
    with FakeBatchServer(api_key=KEY, in_progress=3.0) as server:
        assert run(annotate(corpus, out, settings, server, "--batch")).returncode == 3
        cancelled = run(melt(out, "--cancel-batch", "--wait", "--quiet"))
        assert cancelled.returncode == 0, cancelled.stderr + cancelled.stdout
        assert "cancelled 1 batch(es)" in cancelled.stdout
        [batch] = server.created_batches()
        assert server._object(batch)["status"] == "cancelled"
        kept = len(server.batch_answers())
        rerun = run(melt(out, "--live", "--quiet"))
        assert rerun.returncode == 0, rerun.stderr + rerun.stdout
        live = [e for e in server.entries() if e.get("text") and e.get("via") != "batch"]
        assert len(live) == 10 - kept
        assert answered_twice(server) == []
        assert len(server.created_batches()) == 1
    assert run_json(out)["batch"]["mode"] == "live"


def test_a_stuck_batch_is_waited_for_less_and_less_often_until_ctrl_c_then_cancelled(tmp_path):
    corpus, out, settings = setup(tmp_path, n=4)
    with FakeBatchServer(api_key=KEY, faults={"stuck-finalizing"}) as server:
        process = start(annotate(corpus, out, settings, server, "--batch", "--wait"))
        wait_for(
            lambda: len([c for c in server.calls if c.get("batch_id") and c["method"] == "GET"]) >= 6, process
        )
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=scaled(60))
        assert process.returncode == 130, stderr
        assert "SIGINT" in stderr
        assert set(pd.read_parquet(out / "annotations.parquet")["status"]) == {"pending"}
        assert "1 batch(es) in progress" in stdout and "--cancel-batch" in stdout
        polls = [c["time"] for c in server.calls if c.get("batch_id") and c["method"] == "GET"]
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        assert max(gaps) >= 0.4 > 0.1 <= min(gaps)  # from batch_poll 0.1 s, doubling up to 0.5 s
        assert server._object(server.created_batches()[0])["status"] == "finalizing"
        cancelled = run(melt(out, "--cancel-batch", "--wait"))
        assert cancelled.returncode == 0, cancelled.stderr
        collected = run(melt(out))
        assert collected.returncode == 0, collected.stderr + collected.stdout
        assert len(server.created_batches()) == 1 and answered_twice(server) == []


def test_a_different_configuration_is_refused_on_a_folder_with_batches(tmp_path):
    corpus, out, settings = setup(tmp_path, n=3)
    with FakeBatchServer(api_key=KEY, in_progress=60.0) as server:
        assert run(annotate(corpus, out, settings, server, "--batch")).returncode == 3
        other = run(annotate(corpus, out, settings, server, "--batch", "--temperature", "0.3"))
        assert other.returncode == 2
        assert "temperature (--temperature) was 1.0, now 0.3" in other.stderr
        assert "Traceback" not in other.stderr
        assert len(server.created_batches()) == 1


def test_the_dry_run_shows_the_batch_price(tmp_path):
    corpus, out, settings = setup(tmp_path, n=20)
    with FakeBatchServer(api_key=KEY) as server:
        live = run(annotate(corpus, out, settings, server, "--dry-run"))
        batch = run(annotate(corpus, out, settings, server, "--dry-run", "--batch"))
    assert live.returncode == batch.returncode == 0
    assert "through the Batch API" in batch.stdout and "Batch API price" in batch.stdout

    def cost(text: str) -> float:
        return float(re.search(r"cost \(estimate\)[^$]*\$([0-9.]+)", text).group(1))

    assert cost(batch.stdout) == pytest.approx(cost(live.stdout) / 2, rel=1e-3)
    assert not out.exists() or not any(out.iterdir())


def test_batch_without_a_server_is_one_clear_error(tmp_path):
    corpus, out, _ = setup(tmp_path, n=2)
    env = {k: v for k, v in environment().items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(melt(corpus, "--out", out, "--batch"), capture_output=True, text=True, env=env,
                            timeout=scaled(60), stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 2
    assert "--batch needs an OpenAI-compatible server" in result.stderr and "Traceback" not in result.stderr
    missing = run(melt(corpus, "--batch"))
    assert missing.returncode == 2 and "--out is required" in missing.stderr


def test_help_names_the_batch_options_with_their_choices_and_defaults():
    result = run(melt("--help"))
    text = " ".join(result.stdout.split())
    for option in ("--batch", "--live", "--wait", "--batch-repair", "--cancel-batch"):
        assert option in text
    assert "<batch|live>" in text and "[default: batch]" in text
